"""Peak memory and time of the top-k distillation loss: ours vs the naive full-vocabulary way.

The naive way is what the release does: a float32 log-softmax over sequence x vocabulary for the student
and for the teacher, top-k on the student, gather, divergence, backward. Two pairs are compared:

- from logits: ``naive`` vs ``chunked`` (``mopd.core.losses.topk_divergence``), gradient w.r.t. the student
  logits;
- from hidden states (what training does): ``naive_head`` (logits = hidden @ W.T for student and
  teacher, the entropy the actor logs, then ``naive``) vs ``fused`` (``mopd.core.fused_head``: no logits at
  all; it also returns token log-probs and entropies), gradient w.r.t. the student's hidden states and
  head weight.

Each computes loss = mean over positions, then the gradient (``torch.autograd.grad``: the gradient is
the result, not accumulated).

Each variant runs in its own process so that CPU peak memory (ru_maxrss) is clean; on CUDA the peak of
``torch.cuda.max_memory_allocated`` is used. "Extra" = peak minus the memory held just before the loss
(the two logits tensors). "Working" = extra minus one logits-sized gradient, the result every method
must return.

    python -m benchmarks.distill_loss_memory                     # V=151,936, T=4,096, k=100, fp32, CPU
    python -m benchmarks.distill_loss_memory --dtype bfloat16 --device cuda
    python -m benchmarks.distill_loss_memory --tokens 1024 --hidden 256 --json out.json   # a quick CPU run

``--json`` writes every variant with ``peak_extra_ratio`` and ``time_ratio`` against its naive pair
(``chunked``: ``naive``; ``fused``: ``naive_head``); gradients are included in the peak.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # children run from here (-m)


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


# ours -> the naive computation it replaces
PAIRS = {"chunked": "naive", "fused": "naive_head"}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args) -> dict:
    from mopd.core.fused_head import fused_head
    from mopd.core.losses import topk_divergence

    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    logits_bytes = args.tokens * args.vocab * torch.tensor([], dtype=dtype).element_size()
    # Made in place in the target dtype: no transient copy may raise the process's peak before the run.
    if args.variant in ("naive", "chunked"):
        shape = (1, args.tokens, args.vocab)
        student = torch.randn(shape, device=device, dtype=dtype).mul_(3).requires_grad_(True)
        teacher = torch.randn(shape, device=device, dtype=dtype).mul_(3)
        inputs = (student,)
    else:
        scale = 3.0 / math.sqrt(args.hidden)  # logits of about the same spread as above
        hidden = torch.randn(args.tokens, args.hidden, device=device, dtype=dtype).requires_grad_(True)
        weight = torch.randn(args.vocab, args.hidden, device=device, dtype=dtype).mul_(scale).requires_grad_(True)
        t_hidden = torch.randn(args.tokens, args.hidden, device=device, dtype=dtype)
        t_weight = torch.randn(args.vocab, args.hidden, device=device, dtype=dtype).mul_(scale)
        labels = torch.randint(0, args.vocab, (args.tokens,), device=device)
        inputs = (hidden, weight)

    def run():
        if args.variant == "naive":
            value = naive_divergence(student, teacher, args.alpha, args.topk)
        elif args.variant == "chunked":
            value = topk_divergence(student, teacher, alpha=args.alpha, topk=args.topk, add_tail=True)
        elif args.variant == "naive_head":  # the actor's plain path: logits, entropy metric, divergence
            with torch.no_grad():
                t_logits = t_hidden @ t_weight.t()
            logits = hidden @ weight.t()
            with torch.no_grad():
                log_p = torch.log_softmax(logits.detach().float(), dim=-1)
                _entropy = -(log_p.exp() * log_p).sum(-1)  # computed as training does: part of the memory measured
                del log_p
            value = naive_divergence(logits, t_logits, args.alpha, args.topk)
        else:
            value = fused_head(
                hidden,
                weight,
                labels,
                teacher_hidden=t_hidden,
                teacher_weight=t_weight,
                alpha=args.alpha,
                topk=args.topk,
                add_tail=True,
            )[2]
        loss = value.mean()
        grads = torch.autograd.grad(loss, inputs)
        return loss.item(), grads

    def l1(grads):  # row by row, so checking the result allocates nothing logits-sized
        return float(sum(row.float().abs().sum().item() for g in grads for row in g.reshape(-1, g.shape[-1])))

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
    grad_l1 = l1(grad)  # all gradients
    return dict(
        variant=args.variant, seconds=seconds, extra_bytes=extra, logits_bytes=logits_bytes, loss=loss, grad_l1=grad_l1
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--topk", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size of the head variants (Qwen3-0.6B: 1024)")
    parser.add_argument("--variants", default="naive,chunked,naive_head,fused", help="comma-separated subset")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant; the best time is kept")
    parser.add_argument("--variant", choices=list(PAIRS) + list(PAIRS.values()), help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return

    results = {}
    for variant in args.variants.split(","):
        runs = []
        for _ in range(args.repeats):
            cmd = [sys.executable, "-m", "benchmarks.distill_loss_memory", "--variant", variant] + [
                f"--{k}={v}" for k, v in vars(args).items() if k not in ("variant", "json", "repeats", "variants")
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        best = min(runs, key=lambda r: r["seconds"])
        best["extra_bytes"] = max(r["extra_bytes"] for r in runs)
        results[variant] = best

    gib = 1024**3
    print(
        f"V={args.vocab} T={args.tokens} H={args.hidden} k={args.topk} alpha={args.alpha} dtype={args.dtype} "
        f"device={args.device} threads={args.threads}; one logits tensor = "
        f"{next(iter(results.values()))['logits_bytes'] / gib:.2f} GiB"
    )
    print(f"{'variant':11} {'time s':>8} {'extra GiB':>10} {'vs naive: memory':>17} {'time':>6} {'loss':>12}")
    for ours, naive in PAIRS.items():
        if naive in results:
            results[naive].update(peak_extra_ratio=1.0, time_ratio=1.0)
        if ours in results and naive in results:
            r, b = results[ours], results[naive]
            r.update(
                peak_extra_ratio=r["extra_bytes"] / b["extra_bytes"],
                time_ratio=r["seconds"] / b["seconds"],
                loss_abs_diff=abs(r["loss"] - b["loss"]),
                grad_l1_rel_diff=abs(r["grad_l1"] - b["grad_l1"]) / max(b["grad_l1"], 1e-30),
            )
    for name, r in results.items():
        ratio = f"{r['peak_extra_ratio']:17.3f} {r['time_ratio']:6.2f}" if "peak_extra_ratio" in r else " " * 24
        print(f"{name:11} {r['seconds']:8.2f} {r['extra_bytes'] / gib:10.3f} {ratio} {r['loss']:12.6f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "variants": results}, f, indent=1)


if __name__ == "__main__":
    main()
