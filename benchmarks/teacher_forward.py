"""The teacher's forward over one real MOPD mini-batch: the plain forward against the shared-prefix one.

    python -m benchmarks.teacher_forward                      # embedded default, CPU, 2 threads
    python -m benchmarks.teacher_forward --json out.json --repeats 9

Trains ``--steps`` MOPD steps of the embedded default in this process (local backend, 16 prompts x 8,
the whole mini-batch in one teacher pass) and keeps the teacher batch of the last step, then times on it,
alternating so that both see the same machine: the plain forward (``forward.response_hidden``) and the
shared-prefix forward (``workers.shared_prefix``, tree of prefixes), checks they agree, and reports the
tokens each runs, the tree, and median milliseconds. The student's forward over the same rows is the
yardstick; the student's own update (forward and backward of its log-probs) is timed plain and with its
prompts shared (``actor.shared_prefix``). Figures go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def capture(steps: int):
    """The teacher-pass input of the last of ``steps`` MOPD steps (one chunk of 128 rows)."""
    from trainer import main as trainer_main
    from workers import actor

    kept: dict = {}
    real = actor.TeacherForward.mini_batch_hidden

    def keep(self, chunks, *args, **kwargs):
        kept["batch"] = chunks[0]
        return real(self, chunks, *args, **kwargs)

    actor.TeacherForward.mini_batch_hidden = keep
    with tempfile.TemporaryDirectory() as run:
        sys.argv = [
            "trainer.main",
            "--config-name",
            "mopd",
            "trainer.backend=local",
            "data.train_batch_size=16",
            "actor_rollout_ref.rollout.n=8",
            "actor_rollout_ref.actor.ppo_mini_batch_size=16",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=128",
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=128",
            f"trainer.total_training_steps={steps}",
            "trainer.test_freq=-1",
            "trainer.val_before_train=false",
            "trainer.save_freq=-1",
            "trainer.logger=[jsonl]",
            "trainer.rollout_data_dir=null",
            "trainer.validation_data_dir=null",
            f"trainer.default_local_dir={run}",
        ]
        trainer_main.main()
    actor.TeacherForward.mini_batch_hidden = real
    return kept["batch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from mopd.core.fused_head import fused_head
    from workers import forward, model_utils, prefix_plan, shared_prefix

    batch = capture(args.steps)
    torch.set_num_threads(args.threads)
    model = model_utils.load_causal_lm(
        model_utils.resolve_model_path("embedded"), dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    teacher = (
        batch.teacher_input_ids,
        batch.teacher_attention_mask,
        batch.teacher_position_ids,
        batch.response_mask,
    )
    student = (batch.input_ids, batch.attention_mask, batch.position_ids, batch.response_mask)
    plan = prefix_plan.plan(model, teacher[0], teacher[1], teacher[3])
    labels = batch.responses[batch.response_mask.bool()]

    def student_update(share: bool) -> list:
        """The student's forward and backward of its token log-probs (actor.shared_prefix on or off)."""

        def fn(hidden, weight, where=None):
            return fused_head(hidden, weight, labels if where is None else labels[where])[0].unsqueeze(-1)

        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            shared_prefix.response_head(model, *student, fn, share=share).sum().backward()
        return [p.grad for p in model.parameters()]

    runs = {
        "plain": lambda: forward.response_hidden(model, *teacher),
        "shared": lambda: shared_prefix.shared_prefix_hidden(model, *teacher, plan),
        "student": lambda: forward.response_hidden(model, *student),
        "student_update_plain": lambda: student_update(False),
        "student_update_shared": lambda: student_update(True),
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        gap = (runs["shared"]() - runs["plain"]()).abs().max().item()
        grad_gap = max(
            (a - b).abs().max().item() for a, b in zip(runs["student_update_plain"](), runs["student_update_shared"]())
        )
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - start)
    plain_tokens, shared_tokens = prefix_plan.shared_tokens(teacher[0], teacher[1], teacher[3])
    ms = {name: 1000 * statistics.median(v) for name, v in seconds.items()}
    figures = {
        "rows": int(teacher[0].shape[0]),
        "teacher_tokens": plain_tokens,
        "shared_tokens": shared_tokens,
        "student_tokens": int(student[1].sum()),
        "tree_nodes": len(plan.tree.length),
        "forwards": plan.forwards,
        "max_abs_difference": gap,
        "median_ms": ms,
        "shared_over_plain": ms["shared"] / ms["plain"],
        "shared_over_student": ms["shared"] / ms["student"],
        "student_shared_tokens": prefix_plan.shared_tokens(student[0], student[1], student[3])[1],
        "student_grad_max_abs_difference": grad_gap,
        "student_update_shared_over_plain": ms["student_update_shared"] / ms["student_update_plain"],
    }
    print(
        f"{figures['rows']} rows: teacher {plain_tokens} tokens, shared-prefix runs {shared_tokens} "
        f"({shared_tokens / plain_tokens:.2f}x; {figures['tree_nodes']} prefix nodes, {plan.forwards} forwards); "
        f"student {figures['student_tokens']} tokens; max |shared - plain| {gap:.1e}"
    )
    for name, value in ms.items():
        print(f"  {name:8s} {value:7.1f} ms")
    print(f"  shared/plain {figures['shared_over_plain']:.2f}  shared/student {figures['shared_over_student']:.2f}")
    print(
        f"  student update (forward + backward of its log-probs): shared prompts run "
        f"{figures['student_shared_tokens']} of {figures['student_tokens']} tokens, "
        f"{figures['student_update_shared_over_plain']:.2f}x the time; max |grad gap| {grad_gap:.1e}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **figures}, indent=1))


if __name__ == "__main__":
    main()
