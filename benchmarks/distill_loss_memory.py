"""Peak memory and time of the top-k distillation loss: chunked (ours) vs the naive full-vocabulary way.

The naive way is what the release does: a float32 log-softmax over sequence x vocabulary for the student
and for the teacher, top-k on the student, gather, divergence, backward. Ours is
``mopd.losses.topk_divergence``. Both compute loss = mean over positions, then the gradient with
respect to the student logits (``torch.autograd.grad``: the gradient is the result, not accumulated).

Each variant runs in its own process so that CPU peak memory (ru_maxrss) is clean; on CUDA the peak of
``torch.cuda.max_memory_allocated`` is used. "Extra" = peak minus the memory held just before the loss
(the two logits tensors). "Working" = extra minus one logits-sized gradient, the result every method
must return.

    python benchmarks/distill_loss_memory.py                     # V=151,936, T=4,096, k=100, fp32, CPU
    python benchmarks/distill_loss_memory.py --dtype bfloat16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def naive_divergence(student, teacher, alpha: float, topk: int):
    """The release-style computation: full float32 log-softmax for both models held at once."""
    s_all = torch.log_softmax(student.float(), dim=-1)
    with torch.no_grad():
        t_all = torch.log_softmax(teacher.float(), dim=-1)
    index = student.detach().topk(topk, dim=-1).indices
    s = s_all.gather(-1, index)
    t = t_all.gather(-1, index)

    def with_tail(lp):
        mass = torch.logsumexp(lp, dim=-1, keepdim=True).clamp(max=-1e-7)
        return torch.cat([lp, torch.log(-torch.expm1(mass))], dim=-1)

    s, t = with_tail(s), with_tail(t)
    mix = torch.logsumexp(torch.stack([s + math.log(1 - alpha), t + math.log(alpha)]), dim=0)
    kl = lambda p, q: (p.exp() * (p - q)).sum(-1)  # noqa: E731
    return alpha * kl(t, mix) + (1 - alpha) * kl(s, mix)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args) -> dict:
    from mopd.losses import topk_divergence

    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    shape = (1, args.tokens, args.vocab)
    # Made in place in the target dtype: no transient copy may raise the process's peak before the run.
    student = torch.randn(shape, device=device, dtype=dtype).mul_(3).requires_grad_(True)
    teacher = torch.randn(shape, device=device, dtype=dtype).mul_(3)
    logits_bytes = student.numel() * student.element_size()

    def run():
        if args.variant == "naive":
            value = naive_divergence(student, teacher, args.alpha, args.topk)
        else:
            value = topk_divergence(student, teacher, alpha=args.alpha, topk=args.topk, add_tail=True)
        loss = value.mean()
        (grad,) = torch.autograd.grad(loss, student)
        return loss.item(), grad

    def l1(grad):  # row by row, so checking the result allocates nothing logits-sized
        return float(sum(row.float().abs().sum().item() for row in grad.reshape(-1, grad.shape[-1])))

    if device.type == "cuda":
        run()  # warm-up (kernels, allocator); its gradient is freed on return
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        loss, grad = run()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        extra = torch.cuda.max_memory_allocated() - base
    else:
        base = _rss_bytes()
        start = time.perf_counter()
        loss, grad = run()
        seconds = time.perf_counter() - start
        extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    grad_l1 = l1(grad)
    return dict(variant=args.variant, seconds=seconds, extra_bytes=extra, logits_bytes=logits_bytes,
                loss=loss, grad_l1=grad_l1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--topk", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant; the best time is kept")
    parser.add_argument("--variant", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return

    results = {}
    for variant in ("naive", "chunked"):
        runs = []
        for _ in range(args.repeats):
            cmd = [sys.executable, __file__, "--variant", variant] + [
                f"--{k}={v}" for k, v in vars(args).items() if k not in ("variant", "json", "repeats")
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        best = min(runs, key=lambda r: r["seconds"])
        best["extra_bytes"] = max(r["extra_bytes"] for r in runs)
        results[variant] = best

    gib = 1024**3
    naive, ours = results["naive"], results["chunked"]
    grad = ours["logits_bytes"]
    print(f"V={args.vocab} T={args.tokens} k={args.topk} alpha={args.alpha} dtype={args.dtype} "
          f"device={args.device} threads={args.threads}; one logits tensor = {grad / gib:.2f} GiB")
    print(f"{'variant':10} {'time s':>8} {'extra GiB':>10} {'working GiB':>12} {'loss':>12}")
    for name, r in results.items():
        print(f"{name:10} {r['seconds']:8.2f} {r['extra_bytes'] / gib:10.2f} "
              f"{(r['extra_bytes'] - grad) / gib:12.2f} {r['loss']:12.6f}")
    summary = {
        "peak_extra_ratio": ours["extra_bytes"] / naive["extra_bytes"],
        "working_ratio": (ours["extra_bytes"] - grad) / max(naive["extra_bytes"] - grad, 1),
        "time_ratio": ours["seconds"] / naive["seconds"],
        "loss_abs_diff": abs(ours["loss"] - naive["loss"]),
        "grad_l1_rel_diff": abs(ours["grad_l1"] - naive["grad_l1"]) / max(naive["grad_l1"], 1e-30),
    }
    print("chunked / naive: peak extra memory {peak_extra_ratio:.3f}, working memory {working_ratio:.3f}, "
          "time {time_ratio:.2f}x; |loss diff| {loss_abs_diff:.2e}, grad L1 rel diff {grad_l1_rel_diff:.2e}"
          .format(**summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
