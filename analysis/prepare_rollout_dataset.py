#!/usr/bin/env python
"""Rollout dumps -> candidate_responses.jsonl, evidence_items.jsonl, dataset_summary.json.

    python analysis/prepare_rollout_dataset.py --input outputs/run/rollouts --output-dir outputs/ana/data

Logic and field list: mopd/analysis/dataset.py; docs/analysis.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mopd.analysis.dataset import prepare_dataset  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="rollout dump dir (trainer.rollout_data_dir), a .jsonl file or a glob")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--max-prompts", type=int, default=None, help="cap on prompts, stratified over difficulty buckets")
    p.add_argument("--max-responses-per-prompt", type=int, default=8)
    p.add_argument("--min-responses-per-prompt", type=int, default=2)
    p.add_argument("--success-threshold", type=float, default=1.0, help="reward >= threshold is a success")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--summary-tag", default="summary", help="tag of the policy's own summaries (<summary>...)")
    args = p.parse_args(argv)
    try:
        summary = prepare_dataset(args.input, args.output_dir, max_prompts=args.max_prompts,
                                  max_responses_per_prompt=args.max_responses_per_prompt,
                                  min_responses_per_prompt=args.min_responses_per_prompt,
                                  success_threshold=args.success_threshold, seed=args.seed,
                                  summary_tag=args.summary_tag)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    agg = summary["aggregate"]
    print(f"{agg['prompt_count']} prompts ({agg['bucket_prompt_counts']}), {agg['response_count']} responses, "
          f"{agg['both_present_prompt_count']} prompts with both successes and failures -> {args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
