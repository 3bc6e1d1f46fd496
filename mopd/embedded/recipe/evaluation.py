"""Held-out evaluation of the warm start: sampled/greedy answers without context and per teacher context.

Cost: generation of ``MAX_NEW_TOKENS`` tokens for every prompt, batched ``batch_size`` prompts at a time;
``Evaluator.full`` runs ~8 x 256 plain prompts plus 2 x 256 per context (a minute on 2 cores).
"""

from __future__ import annotations

import random

import torch

from mopd.core.config import SelfDistillationConfig
from mopd.embedded.embedded_task import compute_score, prompt_messages
from mopd.embedded.recipe.contexts import (
    EVAL_CONTEXTS,
    chat_prompt,
    context_messages,
    eval_context_messages,
    eval_group_messages,
    method_configs,
)

EVAL_SEED = 777
MAX_NEW_TOKENS = 6


@torch.no_grad()
def generate_answers(
    model, tokenizer, prompts: list[str], *, sample: bool, seed: int, batch_size: int = 256
) -> list[str]:
    model.eval()
    torch.manual_seed(seed)
    out_texts = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(
            prompts[start : start + batch_size], add_special_tokens=False, padding=True, return_tensors="pt"
        )
        kwargs = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if sample else dict(do_sample=False)
        out = model.generate(
            **enc,
            max_new_tokens=MAX_NEW_TOKENS,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )
        out_texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    model.train()
    return out_texts


def accuracy(texts: list[str], answers: list[str]) -> float:
    return sum(compute_score(t, a)["score"] for t, a in zip(texts, answers)) / max(len(texts), 1)


class Evaluator:
    def __init__(self, tokenizer, test_problems: list[dict], cfg: SelfDistillationConfig):
        self.tok = tokenizer
        self.answers = [p["answer"] for p in test_problems]
        rng = random.Random(EVAL_SEED)
        self.plain = [chat_prompt(tokenizer, prompt_messages(p)) for p in test_problems]
        self.ctx = [chat_prompt(tokenizer, eval_context_messages(p, rng, cfg)) for p in test_problems]
        self.fail_only = [
            chat_prompt(tokenizer, context_messages(p, rng, cfg, n_correct=0, with_feedback=False))
            for p in test_problems
        ]
        configs = method_configs()
        self.per_context = {
            name: [chat_prompt(tokenizer, eval_group_messages(p, rng, configs[kind], k, fb)) for p in test_problems]
            for name, (kind, k, fb, _) in EVAL_CONTEXTS.items()
        }

    def quick(self, model, seed: int, n: int, plain: bool = True) -> dict:
        """Sampled accuracy on the first ``n`` test problems: no context (2 samples each) and with context."""
        out = {}
        if plain:
            out["nc_sampled"] = accuracy(
                generate_answers(model, self.tok, self.plain[:n] * 2, sample=True, seed=seed), self.answers[:n] * 2
            )
        m = n if not plain else n // 2
        out["ctx_sampled"] = accuracy(
            generate_answers(model, self.tok, self.ctx[:m], sample=True, seed=seed + 1), self.answers[:m]
        )
        return out

    def quick_contexts(self, model, seed: int, n: int) -> dict:
        """Phase 3: sampled accuracy without context (``n`` problems x 2) and per method context (``n // 2``)."""
        out = {
            "nc_sampled": accuracy(
                generate_answers(model, self.tok, self.plain[:n] * 2, sample=True, seed=seed), self.answers[:n] * 2
            )
        }
        m = n // 2
        names = list(self.per_context)
        texts = generate_answers(
            model, self.tok, [q for name in names for q in self.per_context[name][:m]], sample=True, seed=seed + 1
        )
        for k, name in enumerate(names):
            out[name] = accuracy(texts[k * m : (k + 1) * m], self.answers[:m])
        return out

    def full(self, model, samples: int = 8) -> dict:
        n = len(self.answers)
        per_context = {"no_context": None}
        for k, (name, prompts) in enumerate(self.per_context.items()):
            per_context[name] = accuracy(
                generate_answers(model, self.tok, prompts * 2, sample=True, seed=EVAL_SEED + 10 + k), self.answers * 2
            )
        sampled = generate_answers(model, self.tok, self.plain * samples, sample=True, seed=EVAL_SEED)
        per_problem = [
            sum(compute_score(sampled[k * n + i], self.answers[i])["score"] for k in range(samples)) for i in range(n)
        ]
        per_context["no_context"] = sum(per_problem) / (n * samples)
        return {
            "context_sampled_acc": per_context,
            "no_context_greedy_acc": accuracy(
                generate_answers(model, self.tok, self.plain, sample=False, seed=0), self.answers
            ),
            "no_context_sampled_acc": sum(per_problem) / (n * samples),
            "no_context_sampled_samples_per_problem": samples,
            "no_context_pass_at_8": sum(c > 0 for c in per_problem) / n,
            "no_context_problems_all_wrong_frac": sum(c == 0 for c in per_problem) / n,
            "no_context_problems_all_right_frac": sum(c == samples for c in per_problem) / n,
            "with_context_sampled_acc": accuracy(
                generate_answers(model, self.tok, self.ctx * 2, sample=True, seed=EVAL_SEED + 1), self.answers * 2
            ),
            "with_context_greedy_acc": accuracy(
                generate_answers(model, self.tok, self.ctx, sample=False, seed=0), self.answers
            ),
            "failure_only_context_sampled_acc": accuracy(
                generate_answers(model, self.tok, self.fail_only * 2, sample=True, seed=EVAL_SEED + 2), self.answers * 2
            ),
        }
