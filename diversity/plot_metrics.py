"""Plots of a diversity/compute_metrics.py output directory (PNG; see docs/diversity.md).

    python diversity/plot_metrics.py --input diversity_outputs --output-dir diversity_outputs/plots

Writes passk_curve.png, method_diversity_bars.png, diversity_vs_passk.png, success_diversity_vs_passk.png.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mopd.diversity.io import DiversityError  # noqa: E402
from mopd.diversity.plots import plot_all  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv=None) -> None:
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


if __name__ == "__main__":
    main()
