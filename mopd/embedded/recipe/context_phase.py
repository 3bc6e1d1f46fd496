"""Step 3 of the recipe (phase 3): every method's teacher contexts. 32 teacher prompts (+ 16 plain questions)
per step from the method mixture (``contexts.mixture_context_example``). Targets: the correct answer where
the context shows one; elsewhere, and for plain questions, the starting model's own sampled answer (minus a
wrong answer the context names), so phase 3 teaches reading contexts, not arithmetic. Own seeds and
optimizer: the result depends only on the weights it starts from. Keeps the last evaluated snapshot whose
no-context accuracy is in ``--p3-band`` (else the closest, with a warning).

Cost per step: 4 sampled generations per own-answer target with the frozen starting model, then one
forward/backward over 48 examples; one ``state_dict`` copy (~4 MB) kept per evaluation.
"""

from __future__ import annotations

import copy
import random
import time

import torch

from mopd.embedded.embedded_task import compute_score
from mopd.embedded.recipe.contexts import chat_prompt, encode_examples, mixture_context_example
from mopd.embedded.recipe.evaluation import EVAL_SEED, Evaluator, generate_answers
from mopd.embedded.recipe.sft_phases import Progress, lm_loss_sum

PHASE3_SEED = 8765


def own_answer_targets(
    reference, tokenizer, plain_prompts: list[str], avoid: list[set[str]], *, seed: int, tries: int = 4
) -> list[str]:
    """Phase-3 targets where no correct answer is shown: the starting model's own sampled answer to the
    plain question, the first of ``tries`` samples that is not a wrong answer the context names (else the
    last). So a context without a success teaches "answer as you would alone, minus the shown mistake" --
    not the arithmetic itself, which would lift the no-context accuracy out of its band."""
    texts = generate_answers(
        reference, tokenizer, [p for p in plain_prompts for _ in range(tries)], sample=True, seed=seed
    )
    targets = []
    for r, names in enumerate(avoid):
        samples = [t.strip() for t in texts[r * tries : (r + 1) * tries]]
        # well-formed (the simulated wrong answers are integers, so the verifier compares them exactly)
        allowed = [
            t
            for t in samples
            if not compute_score(t, "0")["incorrect_format"] and not any(compute_score(t, w)["score"] for w in names)
        ]
        targets.append(allowed[0] if allowed else samples[-1])
    return targets


def train_phase_3(
    model, tok, sft_pool: list[dict], plain_prompts: dict, evaluator: Evaluator, args, progress: Progress
) -> int:
    """Phase 3 on ``model`` in place (left holding the kept snapshot); returns the kept step."""
    torch.manual_seed(PHASE3_SEED)
    rng3 = random.Random(PHASE3_SEED)
    reference = copy.deepcopy(model).eval()  # the starting weights: targets where no success is shown
    opt3 = torch.optim.AdamW(model.parameters(), lr=args.p3_lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched3 = torch.optim.lr_scheduler.LambdaLR(opt3, lambda s: min(1.0, (s + 1) / args.p3_warmup))
    p3_snapshots = []
    for p3_step in range(1, args.p3_steps + 1):
        t0 = time.time()
        progress.step += 1
        step = progress.step
        plain = rng3.sample(sft_pool, args.p3_plain_batch)
        ctx_problems = rng3.sample(sft_pool, args.p3_ctx_batch)
        examples = [mixture_context_example(p, rng3) for p in ctx_problems]
        answers = [p["answer"] for p in ctx_problems]
        own = [r for r, (_, shows_success, _) in enumerate(examples) if not shows_success]
        own_targets = own_answer_targets(
            reference,
            tok,
            [plain_prompts[(p["a"], p["b"])] for p in plain]
            + [plain_prompts[(ctx_problems[r]["a"], ctx_problems[r]["b"])] for r in own],
            [set() for _ in plain] + [examples[r][2] for r in own],
            seed=PHASE3_SEED + step,
        )
        for r, target in zip(own, own_targets[len(plain) :]):
            answers[r] = target
        prompts = [plain_prompts[(p["a"], p["b"])] for p in plain] + [chat_prompt(tok, msgs) for msgs, _, _ in examples]
        ids, labels = encode_examples(tok, prompts, own_targets[: len(plain)] + answers)
        loss, n = lm_loss_sum(model, ids, labels)
        opt3.zero_grad(set_to_none=True)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt3.step()
        sched3.step()
        progress.train_time += time.time() - t0
        losses = {"mix": float(loss.detach()) / n}
        if p3_step % args.p3_eval_every == 0 or p3_step == args.p3_steps:
            t1 = time.time()
            metrics = evaluator.quick_contexts(model, seed=EVAL_SEED + step, n=args.eval_n)
            progress.log(3, losses, metrics, time.time() - t1)
            p3_snapshots.append((step, metrics, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        elif p3_step % 10 == 0:
            progress.log(3, losses)
    lo3, hi3 = args.p3_band
    in_band = [snap for snap in p3_snapshots if lo3 <= snap[1]["nc_sampled"] <= hi3]
    if in_band:
        chosen, metrics, state = in_band[-1]
    else:  # kept, but said: the stats file shows the no-context accuracy it ends with
        chosen, metrics, state = min(
            p3_snapshots, key=lambda s: max(lo3 - s[1]["nc_sampled"], s[1]["nc_sampled"] - hi3)
        )
        print(f"warning: phase 3: no evaluated snapshot had no-context accuracy in {args.p3_band}; keeping the closest")
    model.load_state_dict(state)
    print(f"phase 3: keeping step {chosen} ({metrics})")
    return chosen
