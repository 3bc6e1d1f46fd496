"""Seconds per training step on CPU: our GRPO (and MOPD) against TRL's ``GRPOTrainer``, side by side.

Same model (the shipped embedded base), same task (embedded two-digit addition, train split), same batch
(16 prompts x 8 completions = 128 sequences, by default all in one forward/backward on both sides, as TRL's
per_device_train_batch_size runs them; ``--micro-batch 0`` keeps our YAML's 16), one optimizer update per
step, same learning rate and completion length (16 tokens), sampling at temperature 1, no KL term, no
evaluation or checkpoints. Each
framework runs in its own process, one after the other (``--rounds R``: R times, in turn, for a machine
whose speed drifts); the figure is the median of steps 3..N (the first steps include start-up and
allocator warm-up) over all rounds. Ratios are only meaningful within one run:

    pip install trl                              # benchmark-only dependency
    python -m benchmarks.versus_trl --steps 12 --json out.json

Ours runs ``python -m trainer.main`` (``trainer.backend`` as given, default local: one process like TRL)
and reads ``timing_s/step`` from its metrics.jsonl; TRL's step is timed by a callback around
``Trainer.training_step`` boundaries (generation, reward, loss, backward, optimizer).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS, N, NEW_TOKENS, LR = 16, 8, 16, 3e-4


def ours(loss: str, steps: int, backend: str, overrides: list[str], root: Path = ROOT) -> list[float]:
    with tempfile.TemporaryDirectory() as run:
        cmd = [
            sys.executable,
            "-m",
            "trainer.main",
            "--config-name",
            loss,
            f"trainer.backend={backend}",
            f"data.train_batch_size={PROMPTS}",
            f"actor_rollout_ref.rollout.n={N}",
            f"actor_rollout_ref.actor.ppo_mini_batch_size={PROMPTS}",
            f"data.max_response_length={NEW_TOKENS}",
            f"actor_rollout_ref.actor.optim.lr={LR}",
            "actor_rollout_ref.actor.optim.lr_warmup_steps=0",
            f"trainer.total_training_steps={steps}",
            "trainer.test_freq=-1",
            "trainer.val_before_train=false",
            "trainer.save_freq=-1",
            "trainer.logger=[jsonl]",
            "trainer.rollout_data_dir=null",
            "trainer.validation_data_dir=null",
            f"trainer.default_local_dir={run}",
            *overrides,
        ]
        env = dict(os.environ, PYTHONPATH=str(root), RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false")
        result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(f"our {loss} run failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        records = [json.loads(line) for line in open(Path(run) / "metrics.jsonl")]
        return [r["timing_s/step"] for r in records if "timing_s/step" in r]


def trl_child(steps: int, threads: int | None, out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from datasets import Dataset
    from mopd.embedded import embedded_task
    from workers.model_utils import load_tokenizer, resolve_model_path

    if threads:
        torch.set_num_threads(threads)
    path = resolve_model_path("embedded")
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    problems = embedded_task.make_problems("train", PROMPTS * steps, 0)
    data = Dataset.from_list([{"prompt": embedded_task.prompt_messages(p), "answer": p["answer"]} for p in problems])

    def reward(prompts, completions, answer, **_):
        return [
            embedded_task.compute_score(c[0]["content"] if isinstance(c, list) else c, a)["score"]
            for c, a in zip(completions, answer)
        ]

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=PROMPTS * N,
            num_generations=N,
            gradient_accumulation_steps=1,
            steps_per_generation=1,
            num_iterations=1,
            max_completion_length=NEW_TOKENS,
            learning_rate=LR,
            lr_scheduler_type="constant",
            warmup_steps=0,
            beta=0.0,
            temperature=1.0,
            max_steps=steps,
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            bf16=False,
            seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=[StepTimer()],
        )
        trainer.train()
    Path(out).write_text(json.dumps(times))


def trl(steps: int, threads: int | None) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        cmd = [sys.executable, "-m", "benchmarks.versus_trl", "--child-trl", out, "--steps", str(steps)] + (
            ["--threads", str(threads)] if threads else []
        )
        result = subprocess.run(
            cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True
        )
        if result.returncode:
            raise SystemExit(f"TRL run failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--backend", default="local", choices=["local", "ray"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads for TRL (ours: trainer.num_threads)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every variant this many times, in turn; medians over all rounds' steps 3..N",
    )
    parser.add_argument("--skip-mopd", action="store_true")
    parser.add_argument(
        "--baseline-root",
        help="another checkout of this project (e.g. `git archive` of an older "
        "commit): its GRPO/MOPD run in the same session, for before/after ratios",
    )
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override for our runs")
    parser.add_argument(
        "--micro-batch",
        type=int,
        default=PROMPTS * N,
        help="our sequences per forward/backward (and per log-prob/teacher pass); default: all "
        f"{PROMPTS * N}, as TRL's per_device_train_batch_size runs them; 0: the YAML default (16)",
    )
    parser.add_argument(
        "--mopd-variant",
        action="append",
        default=[],
        metavar="NAME=OVERRIDE[,OVERRIDE]",
        help="also time our MOPD with these overrides, e.g. "
        "plain_teacher=actor_rollout_ref.ref.shared_prefix=false (row ours_mopd_NAME)",
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child-trl", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_trl:
        trl_child(args.steps, args.threads, args.child_trl)
        return
    overrides = list(args.override) + ([f"trainer.num_threads={args.threads}"] if args.threads else [])
    if args.micro_batch:
        overrides = [
            f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={args.micro_batch}",
            f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={args.micro_batch}",
            *overrides,
        ]
    base = Path(args.baseline_root).resolve() if args.baseline_root else None
    plan = {
        "trl_grpo": lambda: trl(args.steps, args.threads),
        "ours_grpo": lambda: ours("grpo", args.steps, args.backend, overrides),
    }
    if base:
        plan["before_grpo"] = lambda: ours("grpo", args.steps, args.backend, overrides, base)
    if not args.skip_mopd:
        plan["ours_mopd"] = lambda: ours("mopd", args.steps, args.backend, overrides)
        for variant in args.mopd_variant:
            name, _, extra = variant.partition("=")
            if not name or not extra:
                raise SystemExit(f"--mopd-variant {variant!r}: expected NAME=OVERRIDE[,OVERRIDE]")
            plan[f"ours_mopd_{name}"] = lambda extra=extra: ours(
                "mopd", args.steps, args.backend, overrides + extra.split(",")
            )
        if base:
            plan["before_mopd"] = lambda: ours("mopd", args.steps, args.backend, overrides, base)
    runs: dict[str, list[list[float]]] = {}
    for _ in range(args.rounds):  # rounds alternate the runs, so a machine whose speed drifts biases none
        for name, run in plan.items():
            runs.setdefault(name, []).append(run())
            print(f"{name}: {', '.join(f'{t:.2f}' for t in runs[name][-1])} s/step", flush=True)
    medians = {k: statistics.median(t for times in v for t in times[2:]) for k, v in runs.items()}
    ratios = {"ours_grpo/trl_grpo": medians["ours_grpo"] / medians["trl_grpo"]}
    for name in [k for k in medians if k.startswith("ours_mopd")]:
        ratios[f"{name}/ours_grpo"] = medians[name] / medians["ours_grpo"]
    if "before_grpo" in medians:
        ratios["before_grpo/trl_grpo"] = medians["before_grpo"] / medians["trl_grpo"]
        ratios["ours_grpo/before_grpo"] = medians["ours_grpo"] / medians["before_grpo"]
    if "before_mopd" in medians:
        ratios["before_mopd/before_grpo"] = medians["before_mopd"] / medians["before_grpo"]
        ratios["ours_mopd/before_mopd"] = medians["ours_mopd"] / medians["before_mopd"]
    print(
        f"{PROMPTS} prompts x {N} completions, {NEW_TOKENS} new tokens, lr {LR}, median s/step over steps 3..{args.steps}"
    )
    for k, v in medians.items():
        print(f"  {k:10} {v:7.3f} s/step   (all: {' | '.join(', '.join(f'{t:.2f}' for t in r) for r in runs[k])})")
    for k, v in ratios.items():
        print(f"  {k}: {v:.2f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "seconds": runs, "median": medians, "ratios": ratios}, indent=1)
        )


if __name__ == "__main__":
    main()
