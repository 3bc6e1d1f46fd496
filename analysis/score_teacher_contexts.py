#!/usr/bin/env python
"""Teacher score of each response under each context: mean token log-prob (plus sum, lengths, truncation).

    python analysis/score_teacher_contexts.py --variants DATA/context_variants.jsonl \
        --targets DATA/candidate_responses.jsonl --output DATA/teacher_scores.jsonl --model embedded \
        --self-target-only

Default input = the trainer's chat-templated teacher prompt + the response tokens (+ eos); --raw-text
scores the release's raw text instead. Details: mopd/analysis/scoring.py; docs/analysis.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mopd.io import read_jsonl, write_json, write_jsonl  # noqa: E402
from mopd.analysis.scoring import (  # noqa: E402
    load_model_and_tokenizer, pair_variants_with_targets, pick_device, pick_dtype, score_pairs,
)


def _names(values):
    if not values:
        return None
    return [v for item in values for v in item.split(",") if v]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", required=True, help="context_variants.jsonl")
    p.add_argument("--targets", required=True, help="responses to score (candidate_responses.jsonl)")
    p.add_argument("--output", required=True, help="teacher_scores.jsonl (a .summary.json goes beside it)")
    p.add_argument("--model", required=True, help="local HF model dir (or 'embedded' = datasets/embedded/base_model)")
    p.add_argument("--self-target-only", action="store_true",
                   help="score each context only on its own candidate's response (the main analysis)")
    p.add_argument("--condition-filter", nargs="*", default=None, help="conditions to score (space/comma separated)")
    p.add_argument("--target-type-filter", nargs="*", default=None)
    p.add_argument("--max-model-len", type=int, default=8192, help="context + response tokens; the context is cut")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batch-tokens", type=int, default=None, help="also cap padded tokens per forward")
    p.add_argument("--raw-text", action="store_true", help="the release's raw-text scoring (no chat template, no eos)")
    p.add_argument("--no-append-eos", action="store_true", help="chat format: do not append eos to the response")
    p.add_argument("--max-response-length", type=int, default=None,
                   help="the run's data.max_response_length: responses of this many tokens hit the limit and "
                        "get no eos")
    p.add_argument("--chat-template-kwargs", default=None, help='JSON, e.g. \'{"enable_thinking": false}\'')
    p.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--trust-remote-code", action="store_true")
    args = p.parse_args(argv)
    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
    try:
        variants = read_jsonl(args.variants)
        targets = read_jsonl(args.targets)
        pairs = pair_variants_with_targets(variants, targets, self_target_only=args.self_target_only,
                                           condition_filter=_names(args.condition_filter),
                                           target_type_filter=_names(args.target_type_filter),
                                           max_examples=args.max_examples)
        device = pick_device(args.device)
        dtype = pick_dtype(args.dtype, device)
        model, tokenizer = load_model_and_tokenizer(args.model, device=device, dtype=dtype,
                                                    trust_remote_code=args.trust_remote_code)
        kwargs = json.loads(args.chat_template_kwargs) if args.chat_template_kwargs else None
        rows, summary = score_pairs(model, tokenizer, pairs, device=device, raw_text=args.raw_text,
                                    max_model_len=args.max_model_len, batch_size=args.batch_size,
                                    max_batch_tokens=args.max_batch_tokens, append_eos=not args.no_append_eos,
                                    chat_template_kwargs=kwargs, teacher_model=args.model,
                                    max_response_length=args.max_response_length)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_jsonl(args.output, rows)
    summary.update({"model": args.model, "dtype": str(dtype), "variants": args.variants, "targets": args.targets,
                    "self_target_only": args.self_target_only})
    out = Path(args.output)
    write_json(out.with_name(out.stem + ".summary.json"), summary)
    match = summary["base_context_equals_student_prompt"]
    print(f"{summary['scored']} scored ({summary['skipped_response_too_long']} skipped: response > max-model-len, "
          f"{summary['truncated']} contexts truncated) in {summary['seconds']}s on {device} -> {args.output}")
    if match is not None:
        print(f"base context reproduces the student's prompt for {100 * match:.1f}% of candidates")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
