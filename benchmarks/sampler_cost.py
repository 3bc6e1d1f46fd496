"""Cost of one sampling step over a 151,936-token vocabulary: the ``hf`` rollout's seeded sampler
(inverse-CDF, one uniform per row and step, log-probs included) against the Gumbel-max sampler it
replaced (``V`` uniforms per row and step from each row's generator) and ``torch.multinomial`` (not
seedable per row; a floor). Variants alternate within one run, so the ratios hold on a busy machine.

    python -m benchmarks.sampler_cost [--rows 64] [--vocab 151936] [--device cpu|cuda] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from workers.hf_rollout import SamplingParams, SeededSampler


def gumbel_step(scores: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """The previous sampler: V uniforms per row from that row's generator, argmax of logits + Gumbel
    noise, plus the chosen token's log-prob from a separate log-softmax."""
    logits = scores.float()
    uniform = torch.stack([torch.rand(logits.shape[-1], generator=g, device=logits.device) for g in generators])
    choice = (logits - torch.log(-torch.log(uniform.clamp_(1e-20, 1 - 1e-7)))).argmax(-1)
    torch.log_softmax(logits, -1).gather(-1, choice.unsqueeze(-1))
    return choice


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    device = torch.device(args.device)
    scores = torch.randn(args.rows, args.vocab, device=device) * 3
    params = SamplingParams(max_new_tokens=args.repeats + 1)
    sampler = SeededSampler(list(range(args.rows)), params, device)
    generators = [torch.Generator(device=device).manual_seed(i) for i in range(args.rows)]
    variants = {
        "seeded inverse-CDF (now)": lambda: sampler(None, scores),
        "seeded Gumbel-max (before)": lambda: gumbel_step(scores, generators),
        "torch.multinomial (unseeded floor)": lambda: torch.multinomial(torch.softmax(scores, -1), 1),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            sampler.step = 0
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["seeded Gumbel-max (before)"])
    print(f"one sampling step, {args.rows} rows x {args.vocab} vocabulary on {device}, median of {args.repeats}:")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:36s} {median * 1e3:9.2f} ms   {median / base:6.3f}x of Gumbel-max")


if __name__ == "__main__":
    main()
