"""Where a training step's time and memory go, for MOPD and GRPO, through the real trainer (CPU or GPU).

    python -m benchmarks.step_breakdown --preset tiny --device cpu
    python -m benchmarks.step_breakdown --preset 0.6b --device cuda --response-length 1024 --json out.json

A Qwen3-shaped model is built from a config (``--preset``; random weights) with the real 151,936-entry
vocabulary through a synthetic tokenizer made here (every vocabulary entry one character, so a decoded
response re-tokenizes to the same length inside the teacher's prompt), on a synthetic task whose reward
marks about half the rollouts successful (a hash of the text), so MOPD's 2-successes-1-failure contexts
form at real lengths. Nothing comes from a hub. Each mode runs in its own process (``trainer.backend=
local``; a clean peak-memory reading) for ``--steps`` steps; figures are medians over the steps after the
first (the first warms up), or the only step.

Figures: per-stage seconds (``timing_s/*``); rollout tokens/s and its fraction of the memory-bandwidth
limit (every decoding step reads the weights once plus the batch's KV cache: weight bytes + KV bytes per
step ÷ device bandwidth); training MFU = (6·N·student tokens + 2·N·teacher tokens) / update seconds /
device peak (N = all parameters, tied embeddings once), with the tokens the forwards ran (each shared
prompt prefix once, padding excluded: ``perf/*_tokens_run``), and beside it the same with the plain
computation's tokens (every row's whole prompt: what the step achieves, not what the device ran); peak
memory (torch-allocated device memory on CUDA, the process's peak RSS on CPU); and MOPD/GRPO ratios. The
device's bandwidth and peak FLOP/s are the vendor's dense bf16 figures for known GPUs, and measured here (a
large copy, a large matmul) on a CPU or an unknown GPU; the table says which.
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

VOCAB_SIZE = 151_936
# Qwen3 shapes (head_dim 128, 8 KV heads, tied embeddings as in the small Qwen3 models).
PRESETS = {
    "tiny": dict(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=16, num_key_value_heads=8, intermediate_size=384
    ),
    "0.6b": dict(
        hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, intermediate_size=3072
    ),
    "1.7b": dict(
        hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, intermediate_size=6144
    ),
    "4b": dict(
        hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, intermediate_size=9728
    ),
}
# Default workload per preset: prompts per step, rollouts per prompt, response tokens, micro-batch.
WORKLOADS = {"tiny": (8, 8, 128, 8), "0.6b": (8, 8, 512, 8), "1.7b": (8, 8, 512, 4), "4b": (8, 8, 512, 2)}
# Gradient checkpointing on CUDA by default only where a micro-batch's activations (bf16, ~1,239-token rows)
# and the float32 weights, gradients and Adam moments (16 bytes a parameter) would crowd an 80 GB card:
# 0.6b ~14 + 10 GB, 1.7b ~14 + 27 GB, 4b ~11 + 64 GB. Checkpointing recomputes each layer's forward in
# backward (~4/3 of the compute, not counted by MFU) and turns off the student's shared prompts.
CHECKPOINTING = {"tiny": False, "0.6b": False, "1.7b": False, "4b": True}
# Vendor figures: (bytes/s of HBM, dense bf16 FLOP/s).
KNOWN_GPUS = {"H200": (4.8e12, 989e12), "GH200": (4.0e12, 989e12), "H100": (3.35e12, 989e12), "A100": (2.0e12, 312e12)}
PROMPT_CHARS = 200  # ≈ 215 tokens once chat-templated, as in the measured H200 run
REWARD_FILE = '''import zlib


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """About half the rollouts succeed: the parity of a hash of the response text."""
    return float(zlib.crc32(solution_str.encode("utf-8")) % 2 == 0)
'''


# ---------------------------------------------------------------------------------------------- setup
def synthetic_alphabet(size: int) -> list[str]:
    """``size`` distinct single characters: printable ASCII first, then private-use and CJK code points
    (no whitespace, no combining marks), so every token is one character and text round-trips."""
    chars = [chr(c) for c in range(0x21, 0x7F)] + [" ", "\n"]
    ranges = [(0xF0000, 0xFFFFE), (0x100000, 0x10FFFE), (0xE000, 0xF900), (0x4E00, 0xA000)]
    for lo, hi in ranges:
        for c in range(lo, hi):
            if len(chars) >= size:
                return chars
            chars.append(chr(c))
    if len(chars) < size:
        raise ValueError(f"cannot make {size} single-character tokens")
    return chars


def write_tokenizer(out: Path, vocab_size: int = VOCAB_SIZE):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from mopd.embedded.tiny_tokenizer import CHAT_TEMPLATE, EOS, PAD, SPECIAL_TOKENS

    unk = "<unk>"
    specials = SPECIAL_TOKENS + [unk]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in synthetic_alphabet(vocab_size - len(specials)):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=unk,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=1 << 20,
    )
    tok.save_pretrained(str(out))
    return tok


def model_config(preset: str, tokenizer):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=VOCAB_SIZE,
        head_dim=128,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=1_000_000.0,
        **PRESETS[preset],
    )


def count_parameters(config) -> int:
    import torch
    from transformers import Qwen3ForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in Qwen3ForCausalLM(config).parameters())


def prepare(workdir: Path, preset: str, num_prompts: int) -> dict:
    """Tokenizer, random-weight model, parquet task and reward file under ``workdir`` (made once)."""
    import pandas as pd
    import torch
    from transformers import Qwen3ForCausalLM

    model_dir = workdir / f"model_{preset}"
    if (model_dir / "config.json").exists():
        from transformers import AutoConfig, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        config = AutoConfig.from_pretrained(str(model_dir))
    else:
        started = time.perf_counter()
        tokenizer = write_tokenizer(model_dir)
        config = model_config(preset, tokenizer)
        torch.manual_seed(0)
        Qwen3ForCausalLM(config).save_pretrained(str(model_dir))
        print(f"[bench] built {preset} model + tokenizer in {time.perf_counter() - started:.1f}s", flush=True)
    alphabet = synthetic_alphabet(VOCAB_SIZE - 4)[96:]  # private-use characters only
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(num_prompts):
        picks = torch.randint(len(alphabet), (PROMPT_CHARS,), generator=generator).tolist()
        question = "Continue: " + "".join(alphabet[j] for j in picks)
        rows.append(
            {
                "data_source": "synthetic_bench",
                "prompt": [{"role": "user", "content": question}],
                "ability": "synthetic",
                "reward_model": {"style": "rule", "ground_truth": "-"},
                "extra_info": {"split": "train", "index": i},
            }
        )
    pd.DataFrame(rows).to_parquet(workdir / "train.parquet")
    (workdir / "reward.py").write_text(REWARD_FILE)
    return {"model": str(model_dir), "params": count_parameters(config), "config": config.to_dict()}


# ---------------------------------------------------------------------------------------------- child
def checkpointing(args) -> bool:
    if args.gradient_checkpointing == "auto":
        return args.device == "cuda" and CHECKPOINTING[args.preset]
    return args.gradient_checkpointing == "on"


def overrides_for(args, workdir: Path, run_dir: Path, model: str) -> list[str]:
    prompts, n, response, micro = args.prompts, args.n, args.response_length, args.micro_batch
    teacher_budget = 256 + 4 * response + 512
    return [
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={workdir / 'train.parquet'}",
        "data.val_files=null",
        f"data.train_batch_size={prompts}",
        "data.max_prompt_length=512",
        f"data.max_response_length={response}",
        f"actor_rollout_ref.rollout.n={n}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={prompts}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro}",
        f"actor_rollout_ref.rollout.name={args.rollout}",
        f"actor_rollout_ref.actor.self_distillation.max_reprompt_len={teacher_budget}",
        f"actor_rollout_ref.model.enable_gradient_checkpointing={str(checkpointing(args)).lower()}",
        f"custom_reward_function.path={workdir / 'reward.py'}",
        f"trainer.total_training_steps={args.steps}",
        "trainer.test_freq=-1",
        "trainer.val_before_train=false",
        "trainer.save_freq=-1",
        "trainer.rollout_data_dir=null",
        "trainer.validation_data_dir=null",
        "trainer.logger=[jsonl]",
        "trainer.backend=local",
        f"trainer.device={args.device}",
        f"trainer.default_local_dir={run_dir}",
        *args.override,
    ]


def run_child(args) -> None:
    """One mode through ``trainer.main.run`` (Hydra compose, typed validation, the real fit loop)."""
    from hydra import compose, initialize_config_dir

    from trainer.main import CONFIG_DIR, run

    workdir = Path(args.workdir)
    run_dir = workdir / f"run_{args.child}"
    if run_dir.exists():  # a reused --workdir: start clean (no appended metrics, no resume)
        import shutil

        shutil.rmtree(run_dir)
    info = json.loads((workdir / "prepared.json").read_text())
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name=args.child, overrides=overrides_for(args, workdir, run_dir, info["model"]))
    run(cfg)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (workdir / f"result_{args.child}.json").write_text(json.dumps(rows))


# ---------------------------------------------------------------------------------------------- figures
def device_limits(device: str, bandwidth: float | None, peak_flops: float | None) -> dict:
    import torch

    name, source = "cpu", "measured"
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        for key, (bw, flops) in KNOWN_GPUS.items():
            if key in name:
                bandwidth, peak_flops, source = bandwidth or bw, peak_flops or flops, "vendor (dense bf16)"
                break
    else:
        import platform

        name = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    if bandwidth is None:
        bandwidth = _measure_bandwidth(device)
    if peak_flops is None:
        peak_flops = _measure_matmul_flops(device)
    return {"name": name, "bandwidth_bytes_per_s": bandwidth, "peak_flops": peak_flops, "source": source}


def _measure_bandwidth(device: str) -> float:
    """Bytes read + written per second by a large tensor copy (best of 5)."""
    import torch

    x = torch.empty(256 * 2**20 // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        t = time.perf_counter()
        y.copy_(x)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * x.numel() * 4 / best


def _measure_matmul_flops(device: str) -> float:
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n = 4096 if device == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def summarize(rows: list[dict], info: dict, limits: dict, args) -> dict:
    measured = rows[1:] if len(rows) > 1 else rows

    def median(key: str) -> float:
        values = [r[key] for r in measured if key in r]
        return float(statistics.median(values)) if values else 0.0

    cfg = info["config"]
    params = info["params"]
    bytes_per_value = 2 if args.device == "cuda" else 4  # compute dtype: bf16 on CUDA, float32 on CPU
    rows_per_step = args.prompts * args.n
    steps = max(1, round(median("response_length/max")))
    prompt_tokens = (median("perf/total_num_tokens") - median("perf/response_num_tokens")) / rows_per_step
    kv_per_token = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * cfg["head_dim"] * bytes_per_value
    # Bytes read over the whole generation: the weights once per decoding step, plus each step's KV cache.
    kv_tokens = rows_per_step * sum(prompt_tokens + t for t in range(steps))
    limit_s = (steps * params * bytes_per_value + kv_tokens * kv_per_token) / limits["bandwidth_bytes_per_s"]
    gen_s, update_s = median("timing_s/gen"), median("timing_s/update_actor")
    tokens_per_s = median("perf/response_num_tokens") / gen_s if gen_s else 0.0
    limit_tokens_per_s = rows_per_step * steps / limit_s

    # Model FLOPs of the plain computation (every row's prompt and response, the teacher's every prompt),
    # and of what the forwards ran (shared prefixes once, padding excluded; falls back to the plain count).
    def model_flops(student_tokens: float, teacher_tokens: float) -> float:  # forward + backward, forward only
        return 6 * params * student_tokens + 2 * params * teacher_tokens

    plain_flops = model_flops(median("perf/total_num_tokens"), median("perf/teacher_num_tokens"))
    run_flops = model_flops(
        median("perf/student_tokens_run") or median("perf/total_num_tokens"),
        median("perf/teacher_tokens_run") or median("perf/teacher_num_tokens"),
    )
    peaks = [
        r.get(k, 0.0)
        for r in rows
        for k in r
        if k.startswith("perf/") and "_peak_" in k and (k.endswith("_allocated_gb") or k.endswith("_rss_gb"))
    ]
    stages = {
        k.removeprefix("timing_s/"): median(k)
        for k in sorted({k for r in measured for k in r})
        if k.startswith("timing_s/")
    }
    return {
        "step_s": median("timing_s/step"),
        "gen_s": gen_s,
        "update_s": update_s,
        "stages_s": stages,
        "rollout_tokens_per_s": tokens_per_s,
        "rollout_limit_tokens_per_s": limit_tokens_per_s,
        "rollout_bandwidth_fraction": tokens_per_s / limit_tokens_per_s if limit_tokens_per_s else 0.0,
        "train_mfu": run_flops / update_s / limits["peak_flops"] if update_s else 0.0,
        "train_plain_equivalent_mfu": plain_flops / update_s / limits["peak_flops"] if update_s else 0.0,
        "peak_memory_gb": max(peaks) if peaks else 0.0,
        "student_tokens": median("perf/total_num_tokens"),
        "teacher_tokens": median("perf/teacher_num_tokens"),
        "student_tokens_run": median("perf/student_tokens_run"),
        "teacher_tokens_run": median("perf/teacher_tokens_run"),
        "response_tokens": median("perf/response_num_tokens"),
        "steps_measured": len(measured),
        "loss": median("actor/loss"),
        "score_mean": median("critic/score/mean"),
    }


def print_table(results: dict, meta: dict) -> None:
    modes = [m for m in ("mopd", "grpo") if m in results]
    print(
        f"\nstep breakdown: preset {meta['preset']} ({meta['params'] / 1e6:.1f} M parameters, vocabulary "
        f"{VOCAB_SIZE}), {meta['prompts']} prompts x {meta['n']} rollouts x {meta['response_length']} tokens, "
        f"rollout {meta['rollout']}, gradient checkpointing {'on' if meta['gradient_checkpointing'] else 'off'}, "
        f"device {meta['device']['name']}"
    )
    print(
        f"limits ({meta['device']['source']}): bandwidth {meta['device']['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s, "
        f"peak {meta['device']['peak_flops'] / 1e12:.1f} TFLOP/s"
    )
    header = f"{'figure':34s}" + "".join(f"{m:>14s}" for m in modes) + ("   mopd/grpo" if len(modes) == 2 else "")
    print(header)
    print("-" * len(header))
    stage_names = sorted({s for m in modes for s in results[m]["stages_s"]}, key=lambda s: (s != "step", s))
    lines = [(f"timing_s/{s}", lambda r, s=s: r["stages_s"].get(s, 0.0), "{:.3f}") for s in stage_names]
    lines += [
        ("rollout tokens/s", lambda r: r["rollout_tokens_per_s"], "{:.0f}"),
        ("rollout bandwidth-limit tokens/s", lambda r: r["rollout_limit_tokens_per_s"], "{:.0f}"),
        ("rollout fraction of bandwidth limit", lambda r: r["rollout_bandwidth_fraction"], "{:.3f}"),
        ("train MFU (FLOPs run)", lambda r: r["train_mfu"], "{:.3f}"),
        ("train MFU (plain-equivalent FLOPs)", lambda r: r["train_plain_equivalent_mfu"], "{:.3f}"),
        ("student tokens / step", lambda r: r["student_tokens"], "{:.0f}"),
        ("student tokens run / step", lambda r: r["student_tokens_run"], "{:.0f}"),
        ("teacher tokens / step", lambda r: r["teacher_tokens"], "{:.0f}"),
        ("teacher tokens run / step", lambda r: r["teacher_tokens_run"], "{:.0f}"),
        ("peak memory GB", lambda r: r["peak_memory_gb"], "{:.2f}"),
    ]
    for name, get, fmt in lines:
        values = [get(results[m]) for m in modes]
        ratio = ""
        if len(modes) == 2 and values[1]:
            ratio = f"{values[0] / values[1]:12.2f}"
        print(f"{name:34s}" + "".join(f"{fmt.format(v):>14s}" for v in values) + ratio)


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--modes", nargs="+", choices=["mopd", "grpo"], default=["mopd", "grpo"])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--prompts", type=int, default=None, help="prompts per step (preset default)")
    p.add_argument("--n", type=int, default=None, help="rollouts per prompt (preset default)")
    p.add_argument("--response-length", type=int, default=None, help="max response tokens (preset default)")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per micro-batch (preset default)")
    p.add_argument("--rollout", default="hf", help="actor_rollout_ref.rollout.name")
    p.add_argument(
        "--gradient-checkpointing",
        choices=["auto", "on", "off"],
        default="auto",
        help="auto: on CUDA for the presets that need it (CHECKPOINTING)",
    )
    p.add_argument("--bandwidth-gbs", type=float, default=None, help="device bandwidth (GB/s) for the limit")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak (TFLOP/s) for MFU")
    p.add_argument("--json", default=None, help="write {mode: figures} here")
    p.add_argument("--workdir", default=None, help="keep the model/task here (default: a temp dir)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per mode")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = WORKLOADS[args.preset]
    for name, value in zip(("prompts", "n", "response_length", "micro_batch"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return 0
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="step_breakdown_")
        workdir = Path(tmp.name)
    info = prepare(workdir, args.preset, args.prompts * args.steps)
    (workdir / "prepared.json").write_text(json.dumps(info))
    limits = device_limits(
        args.device, args.bandwidth_gbs and args.bandwidth_gbs * 1e9, args.peak_tflops and args.peak_tflops * 1e12
    )
    meta = {
        "preset": args.preset,
        "params": info["params"],
        "prompts": args.prompts,
        "n": args.n,
        "response_length": args.response_length,
        "micro_batch": args.micro_batch,
        "rollout": args.rollout,
        "gradient_checkpointing": checkpointing(args),
        "steps": args.steps,
        "device": limits,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    results = {}
    passthrough = list(argv if argv is not None else sys.argv[1:])  # the children get the same flags
    for mode in args.modes:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.step_breakdown",
            *passthrough,
            "--workdir",
            str(workdir),
            "--child",
            mode,
            "--device",
            args.device,
        ]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            TOKENIZERS_PARALLELISM="false",
        )
        print(f"[bench] {mode}: {args.steps} step(s) ...", flush=True)
        started = time.perf_counter()
        done = subprocess.run(cmd, env=env, timeout=args.timeout, cwd=ROOT)
        if done.returncode != 0:
            print(f"[bench] {mode} failed (exit {done.returncode}); see its output above", file=sys.stderr)
            return 1
        rows = json.loads((workdir / f"result_{mode}.json").read_text())
        results[mode] = r = summarize(rows, info, limits, args)
        print(
            f"[bench] {mode}: done in {time.perf_counter() - started:.1f}s | step {r['step_s']:.2f}s gen "
            f"{r['gen_s']:.2f}s update {r['update_s']:.2f}s | rollout {r['rollout_tokens_per_s']:.0f} tok/s "
            f"({r['rollout_bandwidth_fraction']:.3f} of limit) | MFU {r['train_mfu']:.3f} | peak "
            f"{r['peak_memory_gb']:.2f} GB",
            flush=True,
        )
        if args.json:  # written after every mode, so a run cut short keeps what it measured
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({**results, "meta": meta}, indent=1))
    print_table(results, meta)
    if args.json:
        print(f"[bench] wrote {args.json}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
