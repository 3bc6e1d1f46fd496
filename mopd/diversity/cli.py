"""The diversity study's command lines: ``compute_metrics_main`` and ``plot_metrics_main``, the targets of
``diversity/compute_metrics.py`` / ``mopd-diversity-metrics`` and ``diversity/plot_metrics.py`` /
``mopd-diversity-plots``. Bad input (``DiversityError``) is one ``<tool>.py: error:`` line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from mopd.diversity.io import DiversityError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def compute_metrics_main(argv=None) -> None:
    from mopd.diversity.pipeline import run_pipeline

    p = _Parser(description="Solution-diversity metrics and pass@k per method and prompt.")
    p.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a method and its responses (repeat for each method)",
    )
    p.add_argument(
        "--task",
        choices=("code", "text"),
        default="code",
        help="code: compare the last fenced code block, add unique-code and AST metrics; text: whole responses",
    )
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8], help="k values of pass@k (k <= group size)")
    p.add_argument("--intersect-prompts", action="store_true", help="keep only prompts every method has")
    p.add_argument("--max-prompts", type=int, default=None, help="seeded sample of this many prompts")
    p.add_argument("--max-responses-per-prompt", type=int, default=None, help="keep the first M responses of a prompt")
    p.add_argument("--min-responses-per-prompt", type=int, default=2, help="drop prompts with fewer responses")
    p.add_argument(
        "--success-threshold",
        type=float,
        default=1.0,
        help="rollout dumps: success = score >= this (candidates files carry 'success')",
    )
    p.add_argument("--seed", type=int, default=42, help="seed of the prompt sample")
    p.add_argument("--num-case-studies", type=int, default=5)
    p.add_argument(
        "--case-metric",
        default="pairwise_text_distance",
        help="case studies: prompts with the largest spread of this metric across methods",
    )
    p.add_argument(
        "--num-bootstrap",
        type=int,
        default=1000,
        help="resamples of the prompt-level 95%% bootstrap intervals (0 = none)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes computing the per-prompt metrics (default: the CPU count; 1 = in process)",
    )
    p.add_argument("--output-dir", default="diversity_outputs")
    a = p.parse_args(argv)
    try:
        run_pipeline(
            a.run,
            task=a.task,
            ks=a.ks,
            output_dir=a.output_dir,
            intersect=a.intersect_prompts,
            max_prompts=a.max_prompts,
            max_responses=a.max_responses_per_prompt,
            min_responses=a.min_responses_per_prompt,
            success_threshold=a.success_threshold,
            seed=a.seed,
            num_case_studies=a.num_case_studies,
            case_metric=a.case_metric,
            num_bootstrap=a.num_bootstrap,
            workers=a.workers,
        )
    except DiversityError as exc:
        print(f"compute_metrics.py: error: {exc}", file=sys.stderr)
        sys.exit(2)


def plot_metrics_main(argv=None) -> None:
    from mopd.diversity.plots import plot_all

    p = _Parser(description="Plot the diversity metrics (pass@k curves, diversity bars, diversity vs pass@k).")
    p.add_argument("--input", required=True, help="the --output-dir of compute_metrics.py")
    p.add_argument("--output-dir", default=None, help="where the PNGs go (default: --input)")
    a = p.parse_args(argv)
    try:
        for path in plot_all(a.input, a.output_dir or a.input):
            print(f"[diversity] wrote {path}")
    except DiversityError as exc:
        print(f"plot_metrics.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
