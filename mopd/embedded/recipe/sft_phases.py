"""Step 2 of the recipe: a ~1 M parameter Qwen3 from a config (random init, the project's tokenizer), then
supervised fine-tuning phases 1-2 (see ``mopd.embedded.recipe``): phase 1 on MOPD (2S1F) teacher prompts
until the model copies a shown correct answer, phase 2 with plain questions until the sampled no-context
accuracy reaches the target band. Loss on the answer tokens + ``<|im_end|>`` only.

Cost per step: one forward/backward over (plain + context) examples of ~100-300 tokens each.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch

from mopd.core.config import SelfDistillationConfig
from mopd.embedded.recipe.contexts import chat_prompt, context_messages, encode_examples
from mopd.embedded.recipe.evaluation import EVAL_SEED, Evaluator

TORCH_SEED = 1234
SFT_SEED = 4321
MODEL = dict(
    vocab_size=264,
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=512,
    tie_word_embeddings=True,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    initializer_range=0.02,
)


@dataclass
class Progress:
    """The step counter, training seconds and evaluation history shared by the three phases (phase 3's
    seeds are offsets of the global step, so it continues counting where phase 2 stopped)."""

    started: float
    step: int = 0
    train_time: float = 0.0
    history: list = field(default_factory=list)

    def log(self, phase: int, losses: dict, metrics: dict | None = None, eval_s: float = 0.0) -> None:
        text = "  ".join(f"loss {k} {v:.3f}" for k, v in losses.items())
        if metrics is not None:
            self.history.append(
                {"phase": phase, "step": self.step, **{f"loss_{k}": round(v, 4) for k, v in losses.items()}, **metrics}
            )
            text += "  " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()) + f"  (eval {eval_s:.1f}s)"
        print(
            f"[phase {phase}] step {self.step:4d}  {text}  (train {self.train_time:.0f}s, "
            f"total {time.time() - self.started:.0f}s)",
            flush=True,
        )


def build_base_model(tok):
    """The randomly initialised tiny Qwen3 (sdpa attention, training mode) and its config."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        **MODEL,
        bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config._attn_implementation = "sdpa"
    model = Qwen3ForCausalLM(config)
    model.train()
    return model, config


def lm_loss_sum(model, ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    logits = model(input_ids=ids).logits[:, :-1].float()
    target = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss, int((target != -100).sum())


def train_phases_1_2(
    model,
    tok,
    cfg: SelfDistillationConfig,
    sft_pool: list[dict],
    plain_prompts: dict,
    evaluator: Evaluator,
    args,
    progress: Progress,
) -> tuple[int, int]:
    """Phases 1-2 on ``model`` in place; returns (the chosen step, phase 1's last step)."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup))
    rng = random.Random(SFT_SEED)

    def train_step(n_plain: int, n_ctx: int, require_success: bool = False, ctx_weight: float = 1.0) -> dict:
        plain = rng.sample(sft_pool, n_plain)
        ctx_problems = rng.sample(sft_pool, n_ctx)
        ctx_prompts = [
            chat_prompt(tok, context_messages(p, rng, cfg, require_success=require_success)) for p in ctx_problems
        ]
        losses, total = {}, 0.0
        if plain:
            ids, labels = encode_examples(
                tok, [plain_prompts[(p["a"], p["b"])] for p in plain], [p["answer"] for p in plain]
            )
            loss, n = lm_loss_sum(model, ids, labels)
            total = total + loss / n
            losses["plain"] = float(loss.detach()) / n
        if ctx_problems:
            ids, labels = encode_examples(tok, ctx_prompts, [p["answer"] for p in ctx_problems])
            loss, n = lm_loss_sum(model, ids, labels)
            total = total + ctx_weight * loss / n
            losses["ctx"] = float(loss.detach()) / n
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        return losses

    # Phase 1: teacher prompts only, until the model reads peer context (copies a correct peer).
    for _ in range(args.p1_max_steps):
        t0 = time.time()
        progress.step += 1
        losses = train_step(0, args.p1_ctx_batch, require_success=True)
        progress.train_time += time.time() - t0
        if progress.step >= args.p1_min_steps and progress.step % 20 == 0:
            t1 = time.time()
            metrics = evaluator.quick(model, seed=EVAL_SEED + progress.step, n=args.eval_n // 2, plain=False)
            progress.log(1, losses, metrics, time.time() - t1)
            if metrics["ctx_sampled"] >= args.p1_ctx_acc:
                break
        elif progress.step % 20 == 0:
            progress.log(1, losses)
    p1_steps = progress.step

    # Phase 2: plain questions join; stop when no-context accuracy reaches the target band.
    chosen, snapshots = None, []
    lo, hi = args.band
    for _ in range(args.p2_max_steps):
        t0 = time.time()
        progress.step += 1
        losses = train_step(args.p2_plain_batch, args.p2_ctx_batch, ctx_weight=args.p2_ctx_weight)
        progress.train_time += time.time() - t0
        # Evaluate every 10 steps once the plain loss says the jump is near (every 30 before).
        if progress.step % (10 if losses["plain"] < args.eval_dense_below else 30) == 0:
            t1 = time.time()
            metrics = evaluator.quick(model, seed=EVAL_SEED + progress.step, n=args.eval_n)
            progress.log(2, losses, metrics, time.time() - t1)
            if lo <= metrics["nc_sampled"] <= hi:
                snapshots.append(
                    (progress.step, metrics, {k: v.detach().clone() for k, v in model.state_dict().items()})
                )
            if metrics["nc_sampled"] >= args.target_nc and metrics["ctx_sampled"] >= args.min_ctx:
                chosen = progress.step
                break
            if metrics["nc_sampled"] > hi + 0.05:
                break
    if chosen is None:
        if not snapshots:
            raise SystemExit("no checkpoint reached the target band; adjust the schedule")
        chosen, metrics, state = max(
            snapshots, key=lambda s: (s[1]["ctx_sampled"], -abs(s[1]["nc_sampled"] - args.target_nc))
        )
        model.load_state_dict(state)
        print(f"warning: the stopping rule never fired; keeping the snapshot of step {chosen} ({metrics})")
    return chosen, p1_steps
