"""The ``hf`` rollout on the embedded default: each prompt prefilled once for its n samples (the shared
prefill) against once per sample (the plain one), on real prompts of the embedded task.

    python -m benchmarks.rollout_prefill                         # 16 prompts x 8, 16 new tokens, CPU
    python -m benchmarks.rollout_prefill --json out.json --repeats 9

Both variants run in this process, alternating, so that they see the same machine; the samples must be
the same (same seeds), and the figures are median milliseconds per ``generate`` of the whole batch, also
for one new token (where the prefill is nearly all the work). Figures go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def prompts(count: int, tokenizer):
    """``count`` train prompts of the embedded task, chat-templated and left-padded as the trainer does."""
    import torch

    from mopd.embedded import embedded_task

    texts = [
        tokenizer.apply_chat_template(embedded_task.prompt_messages(p), tokenize=False, add_generation_prompt=True)
        for p in embedded_task.make_problems("train", count, 0)
    ]
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((count, width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((count, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), 1
    return ids, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    import torch

    from workers import model_utils
    from workers.hf_rollout import HFRollout, SamplingParams

    torch.set_num_threads(args.threads)
    path = model_utils.resolve_model_path("embedded")
    tokenizer = model_utils.load_tokenizer(path)
    rollout = HFRollout(model_utils.load_causal_lm(path, dtype=torch.float32, attn_implementation="sdpa"), tokenizer)
    ids, mask = prompts(args.prompts, tokenizer)
    seeds = list(range(args.prompts * args.n))
    shared_prefill = HFRollout._shared_prefill
    variants = {"shared": shared_prefill, "plain": lambda *a: {}}

    def generate(variant: str, new_tokens: int) -> dict:
        HFRollout._shared_prefill = variants[variant]
        try:
            return rollout.generate(ids, mask, SamplingParams(n=args.n, max_new_tokens=new_tokens), seeds)
        finally:
            HFRollout._shared_prefill = shared_prefill

    same = torch.equal(
        generate("shared", args.new_tokens)["responses"], generate("plain", args.new_tokens)["responses"]
    )
    seconds = {(v, t): [] for t in (1, args.new_tokens) for v in variants}
    for _ in range(args.repeats):
        for variant, tokens in seconds:
            start = time.perf_counter()
            generate(variant, tokens)
            seconds[variant, tokens].append(time.perf_counter() - start)
    ms = {f"{v}_{t}_tokens": 1000 * statistics.median(s) for (v, t), s in seconds.items()}
    figures = {
        "prompts": args.prompts,
        "n": args.n,
        "prompt_width": int(ids.shape[1]),
        "prompt_tokens": int(mask.sum()),
        "same_samples": same,
        "median_ms": ms,
        "shared_over_plain": {t: ms[f"shared_{t}_tokens"] / ms[f"plain_{t}_tokens"] for t in (1, args.new_tokens)},
    }
    print(f"{args.prompts} prompts x {args.n} samples, prompts {figures['prompt_width']} columns; same samples: {same}")
    for name, value in ms.items():
        print(f"  {name:18s} {value:7.1f} ms")
    for tokens, ratio in figures["shared_over_plain"].items():
        print(f"  shared/plain, {tokens} new token(s): {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **figures}, indent=1))
    if not same:
        raise SystemExit("the shared prefill sampled other tokens than the plain one")


if __name__ == "__main__":
    main()
