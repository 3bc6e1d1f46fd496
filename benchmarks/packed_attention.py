"""Packed sequences under sdpa: padded rows, against packing with transformers' block-diagonal mask, against
packing with attention per sequence (``workers/packed_attention.py``).

    python -m benchmarks.packed_attention                     # embedded model, CPU, 2 threads
    python -m benchmarks.packed_attention --device cuda --dtype bfloat16 --json out.json

Two micro-batches of the embedded default's shapes (random lengths): 16 teacher rows of 150-220 prompt
tokens, and 128 student rows of 28-40; 1-16 response tokens each. Each variant runs ``forward.response_hidden``
(no gradient), in turn, ``--repeats`` times; the figure is the median, the first round dropped. The
variants' hidden states are checked against the padded forward's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def micro_batch(rows: int, prompt: tuple[int, int], response: tuple[int, int], generator, vocab: int = 264):
    """``[left-padded prompt | right-padded response]`` rows with their mask, positions and response mask."""
    prompts = torch.randint(prompt[0], prompt[1] + 1, (rows,), generator=generator)
    responses = torch.randint(response[0], response[1] + 1, (rows,), generator=generator)
    width, reply = int(prompts.max()), int(responses.max())
    prompt_mask = (torch.arange(width) >= width - prompts.unsqueeze(1)).long()
    response_mask = (torch.arange(reply) < responses.unsqueeze(1)).long()
    mask = torch.cat([prompt_mask, response_mask], 1)
    ids = torch.randint(3, vocab, mask.shape, generator=generator) * mask
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0), response_mask


def main() -> None:
    from workers import forward, model_utils, packed_attention

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    path = model_utils.resolve_model_path("embedded")

    def load(attn):
        return model_utils.load_causal_lm(path, dtype=dtype, attn_implementation=attn, device=device).eval()

    variants = {
        "padded": (load("sdpa"), False),
        "packed_with_mask": (load("sdpa"), True),
        "packed_per_sequence": (load(packed_attention.implementation("sdpa", True)), True),
    }
    g = torch.Generator().manual_seed(0)
    batches = {
        "teacher_16x150-220": micro_batch(16, (150, 220), (1, 16), g),
        "student_128x28-40": micro_batch(128, (28, 40), (1, 16), g),
    }
    results = {}
    for name, batch in batches.items():
        ids, mask, pos, response_mask = (t.to(device) for t in batch)
        seconds = {k: [] for k in variants}
        hidden = {}
        for _ in range(args.repeats):
            for k, (model, packed) in variants.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                with torch.no_grad():
                    hidden[k] = forward.response_hidden(model, ids, mask, pos, response_mask, packed)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[k].append(time.perf_counter() - start)
        median = {k: statistics.median(v[1:] or v) for k, v in seconds.items()}
        gap = {k: float((h.float() - hidden["padded"].float()).abs().max()) for k, h in hidden.items()}
        results[name] = {
            "valid_tokens": int(mask.sum()),
            "padded_tokens": mask.numel(),
            "seconds": median,
            "ratio_to_padded": {k: v / median["padded"] for k, v in median.items()},
            "max_abs_gap_to_padded": gap,
        }
        print(f"{name}: {int(mask.sum())} tokens ({mask.numel()} padded)")
        for k in variants:
            print(f"  {k:22s} {median[k] * 1e3:8.1f} ms  {median[k] / median['padded']:.2f}x  gap {gap[k]:.1e}")
    meta = {
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
    }
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "meta": meta}, indent=1))


if __name__ == "__main__":
    main()
