"""The teacher-signal analysis' command lines: one ``<tool>_main(argv=None) -> int`` per stage, the target of
``analysis/<tool>.py`` and of its ``mopd-<tool>`` console script (exit status 2 and one ``error:`` line on
bad input). The stages' logic lives in the modules named in each description; docs/analysis.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from mopd.analysis.metrics import DEFAULT_SAMPLE_SET, SAMPLE_SETS
from mopd.common.errors import ConfigError
from mopd.common.io import atomic_write_text as write_text
from mopd.common.io import read_jsonl, write_json, write_jsonl
from mopd.common.models import DTYPES


def prepare_rollout_dataset_main(argv=None) -> int:
    """Stage 1 (mopd.analysis.dataset)."""
    from mopd.analysis.dataset import prepare_dataset

    p = argparse.ArgumentParser(
        description="Rollout dumps -> candidate_responses.jsonl, evidence_items.jsonl, dataset_summary.json."
    )
    p.add_argument(
        "--input", required=True, help="rollout dump dir (trainer.rollout_data_dir), a .jsonl file or a glob"
    )
    p.add_argument("--output-dir", required=True)
    p.add_argument("--max-prompts", type=int, default=None, help="cap on prompts, stratified over difficulty buckets")
    p.add_argument("--max-responses-per-prompt", type=int, default=8)
    p.add_argument("--min-responses-per-prompt", type=int, default=2)
    p.add_argument("--success-threshold", type=float, default=1.0, help="reward >= threshold is a success")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--summary-tag", default="summary", help="tag of the policy's own summaries (<summary>...)")
    args = p.parse_args(argv)
    try:
        summary = prepare_dataset(
            args.input,
            args.output_dir,
            max_prompts=args.max_prompts,
            max_responses_per_prompt=args.max_responses_per_prompt,
            min_responses_per_prompt=args.min_responses_per_prompt,
            success_threshold=args.success_threshold,
            seed=args.seed,
            summary_tag=args.summary_tag,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    agg = summary["aggregate"]
    print(
        f"{agg['prompt_count']} prompts ({agg['bucket_prompt_counts']}), {agg['response_count']} responses, "
        f"{agg['both_present_prompt_count']} prompts with both successes and failures -> {args.output_dir}"
    )
    return 0


def build_context_variants_main(argv=None) -> int:
    """Stage 2 (mopd.analysis.variants)."""
    from mopd.analysis.variants import build_variant_rows, load_variant_config

    p = argparse.ArgumentParser(
        description="Candidates + evidence -> one teacher context per (condition, "
        "candidate), rendered as training renders it."
    )
    p.add_argument("--candidates", required=True)
    p.add_argument("--evidence", required=True)
    p.add_argument("--output", required=True)
    p.add_argument(
        "--variant-config",
        default=None,
        help="JSON/YAML with 'variants' (the release's format), 'global' and 'teacher_config' "
        "(self_distillation fields: templates, remove_thinking_from_demonstration, ...)",
    )
    args = p.parse_args(argv)
    try:
        config = load_variant_config(args.variant_config)
        rows = build_variant_rows(read_jsonl(args.candidates), config, read_jsonl(args.evidence))
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_jsonl(args.output, rows)
    effective = Counter(r["condition"] for r in rows if r["effective"])
    total = Counter(r["condition"] for r in rows)
    print(f"{len(rows)} context variants ({len(total)} conditions) -> {args.output}")
    for condition in total:
        print(f"  {condition:45s} {total[condition]:6d} rows, {effective[condition]:6d} effective")
    return 0


def _names(values):
    """``--condition-filter a,b c`` -> ``[a, b, c]``; nothing given -> None (no filter)."""
    if not values:
        return None
    return [v for item in values for v in item.split(",") if v]


def score_teacher_contexts_main(argv=None) -> int:
    """Stage 3 (mopd.analysis.scoring)."""
    from mopd.analysis.scoring import (
        load_model_and_tokenizer,
        pair_variants_with_targets,
        pick_device,
        pick_dtype,
        score_pairs,
    )

    p = argparse.ArgumentParser(
        description="Teacher score of each response under each context: mean token "
        "log-prob (plus sum, lengths, truncation)."
    )
    p.add_argument("--variants", required=True, help="context_variants.jsonl")
    p.add_argument("--targets", required=True, help="responses to score (candidate_responses.jsonl)")
    p.add_argument("--output", required=True, help="teacher_scores.jsonl (a .summary.json goes beside it)")
    p.add_argument("--model", required=True, help="local HF model dir (or 'embedded' = datasets/embedded/base_model)")
    p.add_argument(
        "--self-target-only",
        action="store_true",
        help="score each context only on its own candidate's response (the main analysis)",
    )
    p.add_argument("--condition-filter", nargs="*", default=None, help="conditions to score (space/comma separated)")
    p.add_argument("--target-type-filter", nargs="*", default=None)
    p.add_argument("--max-model-len", type=int, default=8192, help="context + response tokens; the context is cut")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batch-tokens", type=int, default=None, help="also cap padded tokens per forward")
    p.add_argument("--raw-text", action="store_true", help="the release's raw-text scoring (no chat template, no eos)")
    p.add_argument("--no-append-eos", action="store_true", help="chat format: do not append eos to the response")
    p.add_argument(
        "--max-response-length",
        type=int,
        default=None,
        help="the run's data.max_response_length: responses of this many tokens hit the limit and get no eos",
    )
    p.add_argument("--chat-template-kwargs", default=None, help="JSON, e.g. '{\"enable_thinking\": false}'")
    p.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--trust-remote-code", action="store_true")
    args = p.parse_args(argv)
    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
    try:
        variants = read_jsonl(args.variants)
        targets = read_jsonl(args.targets)
        pairs = pair_variants_with_targets(
            variants,
            targets,
            self_target_only=args.self_target_only,
            condition_filter=_names(args.condition_filter),
            target_type_filter=_names(args.target_type_filter),
            max_examples=args.max_examples,
        )
        device = pick_device(args.device)
        dtype = pick_dtype(args.dtype, device)
        model, tokenizer = load_model_and_tokenizer(
            args.model, device=device, dtype=dtype, trust_remote_code=args.trust_remote_code
        )
        kwargs = json.loads(args.chat_template_kwargs) if args.chat_template_kwargs else None
        rows, summary = score_pairs(
            model,
            tokenizer,
            pairs,
            device=device,
            raw_text=args.raw_text,
            max_model_len=args.max_model_len,
            batch_size=args.batch_size,
            max_batch_tokens=args.max_batch_tokens,
            append_eos=not args.no_append_eos,
            chat_template_kwargs=kwargs,
            teacher_model=args.model,
            max_response_length=args.max_response_length,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_jsonl(args.output, rows)
    summary.update(
        {
            "model": args.model,
            "dtype": str(dtype),
            "variants": args.variants,
            "targets": args.targets,
            "self_target_only": args.self_target_only,
        }
    )
    out = Path(args.output)
    write_json(out.with_name(out.stem + ".summary.json"), summary)
    match = summary["base_context_equals_student_prompt"]
    print(
        f"{summary['scored']} scored ({summary['skipped_response_too_long']} skipped: response > max-model-len, "
        f"{summary['truncated']} contexts truncated) in {summary['seconds']}s on {device} -> {args.output}"
    )
    if match is not None:
        print(f"base context reproduces the student's prompt for {100 * match:.1f}% of candidates")
    return 0


def teacher_signal_metrics_main(argv=None) -> int:
    """Stage 4 (mopd.analysis.metrics)."""
    from mopd.analysis.metrics import compute_all, render_tables

    p = argparse.ArgumentParser(
        description="Teacher scores -> per-prompt ranking metrics, prompt-level means "
        "with bootstrap 95% CIs, and a table."
    )
    p.add_argument("--input", required=True, help="teacher_scores.jsonl")
    p.add_argument("--output", required=True, help="metrics JSON")
    p.add_argument("--num-bootstrap", type=int, default=2000, help="prompt-level bootstrap resamples (0: no CIs)")
    p.add_argument("--seed", type=int, default=12345, help="bootstrap seed")
    p.add_argument(
        "--table-output", default=None, help="markdown table (default <output stem>_table.md); a .csv beside it"
    )
    p.add_argument(
        "--sample-set",
        "--table-sample-set",
        dest="sample_set",
        default=DEFAULT_SAMPLE_SET,
        choices=list(SAMPLE_SETS),
        help="the sample set shown in the table",
    )
    p.add_argument(
        "--degenerate",
        choices=["zero", "skip"],
        default="zero",
        help="undefined per-prompt statistics: 0 (the release) or left out of the means",
    )
    p.add_argument("--per-prompt", action="store_true", help="also store every prompt's metrics in the JSON")
    args = p.parse_args(argv)
    try:
        rows = read_jsonl(args.input)
        if not rows:
            raise ValueError(f"{args.input} has no scored rows")
        result = compute_all(
            rows,
            num_bootstrap=args.num_bootstrap,
            seed=args.seed,
            degenerate=args.degenerate,
            per_prompt=args.per_prompt,
        )
        result["input"] = args.input
        md, csv = render_tables(result, args.sample_set)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.output)
    write_json(out, result)
    md_path = Path(args.table_output) if args.table_output else out.with_name(f"{out.stem}_table.md")
    write_text(md_path, md)
    write_text(md_path.with_suffix(".csv"), csv)
    print(md)
    print(f"metrics -> {out}; table -> {md_path} and {md_path.with_suffix('.csv')}")
    return 0


def plot_teacher_metrics_main(argv=None) -> int:
    """Stage 5 (mopd.analysis.plots)."""
    from mopd.analysis.plots import plot_all

    p = argparse.ArgumentParser(
        description="Metrics JSON -> teacher_metrics_main.png and teacher_metrics_by_bucket.png."
    )
    p.add_argument("--input", required=True, help="metrics JSON of compute_teacher_signal_metrics.py")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--sample-set", default=DEFAULT_SAMPLE_SET, choices=list(SAMPLE_SETS))
    args = p.parse_args(argv)
    try:
        result = json.loads(Path(args.input).read_text(encoding="utf-8"))
        paths = plot_all(result, args.output_dir, sample_set=args.sample_set)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    return 0
