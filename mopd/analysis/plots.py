"""Charts of the teacher-signal metrics (matplotlib, Agg backend; PNG).

- ``teacher_metrics_main.png``: 2 x 3 panels (Spearman, Kendall tau-b, pairwise accuracy, AUC,
  point-biserial, Brier of the min-max score), one horizontal bar per condition with its bootstrap 95%
  interval as a whisker; chance / zero reference lines; the Brier axis is inverted so that "further right
  is better" holds in every panel.
- ``teacher_metrics_by_bucket.png``: Spearman and AUC per condition, one bar per difficulty bucket, with
  the bucket-level bootstrap intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mopd.analysis.metrics import DEFAULT_SAMPLE_SET, LOWER_IS_BETTER, METRIC_LABELS, ordered_conditions

MAIN_METRICS = (
    "mean_spearman",
    "mean_kendall_tau",
    "pairwise_accuracy",
    "success_auc",
    "success_point_biserial",
    "success_brier_minmax",
)
BUCKET_METRICS = ("mean_spearman", "success_auc")
UNIT_INTERVAL = {"pairwise_accuracy", "success_auc", "top1_hit_rate"}
CHANCE = {"pairwise_accuracy": 0.5, "success_auc": 0.5, "top1_hit_rate": None}
BUCKET_RULE = {"easy": "≥4 successes", "medium": "1–3", "hard": "0", "unknown": "?"}
BUCKET_COLORS = {"easy": "#4daf4a", "medium": "#ff7f00", "hard": "#e41a1c", "unknown": "#999999"}
MOPD_CONTEXT = "solution+another_solution+failure_solution"
CONTROLS = {"random_peer", "verifier_score_ordered", "random_summary_control"}
BASELINES = {"base", "base_raw", "base_reprompt"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def condition_color(condition: str) -> str:
    if condition == MOPD_CONTEXT:
        return "#d62728"  # the MOPD context
    if condition in BASELINES:
        return "#7f7f7f"
    if condition in CONTROLS:
        return "#ff9f1c"
    return "#1f77b4"


def display_name(condition: str) -> str:
    return "2S1F (solution+another+failure)" if condition == MOPD_CONTEXT else condition


def _view(result: dict, sample_set: str) -> dict:
    if sample_set not in result.get("sample_sets", {}):
        raise ValueError(
            f"sample set {sample_set!r} is not in the metrics file; have {list(result.get('sample_sets', {}))}"
        )
    return result["sample_sets"][sample_set]["conditions"]


def _value(stats: dict | None, metric: str):
    """The plotted value: None when absent or when no prompt had the statistic defined (degenerate 0s)."""
    if not stats or stats.get(metric) is None or stats.get(f"{metric}_n_defined", 1) == 0:
        return None
    return stats[metric]


def _whiskers(values, cis):
    lows, highs = [], []
    for v, ci in zip(values, cis):
        if v is None or not ci:
            lows.append(0.0)
            highs.append(0.0)
        else:
            lows.append(max(0.0, v - ci[0]))
            highs.append(max(0.0, ci[1] - v))
    return [lows, highs]


def _reference_line(ax, metric: str) -> None:
    chance = CHANCE.get(metric, 0.0 if "brier" not in metric else None)
    if chance is not None:
        ax.axvline(chance, color="black", linewidth=0.9, linestyle="--", zorder=0)


def _legend_handles():
    from matplotlib.patches import Patch

    return [
        Patch(color=condition_color(MOPD_CONTEXT), label="2S1F (MOPD context)"),
        Patch(color=condition_color("solution"), label="peer-context condition"),
        Patch(color=condition_color("random_peer"), label="control"),
        Patch(color=condition_color("base"), label="no-peer baseline"),
    ]


def plot_main(
    result: dict, output: str | Path, *, sample_set: str = DEFAULT_SAMPLE_SET, metrics: Sequence[str] = MAIN_METRICS
) -> Path:
    plt = _pyplot()
    view = _view(result, sample_set)
    conditions = ordered_conditions(view)
    n = max(len(conditions), 1)
    ncols = 3
    nrows = (len(metrics) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(19, max(6.0, nrows * (0.34 * n + 1.6) + 1.4)), squeeze=False)
    ypos = list(range(len(conditions)))[::-1]  # first condition on top
    for k, metric in enumerate(metrics):
        ax = axes[k // ncols][k % ncols]
        values = [_value(view[c], metric) for c in conditions]
        cis = [view[c].get(f"{metric}_ci") for c in conditions]
        heights = [0.0 if v is None else v for v in values]
        ax.barh(
            ypos,
            heights,
            xerr=_whiskers(values, cis),
            color=[condition_color(c) for c in conditions],
            edgecolor="black",
            linewidth=0.4,
            error_kw={"elinewidth": 1.1, "capsize": 3, "ecolor": "#222222"},
            height=0.72,
        )
        for y, v, c in zip(ypos, values, conditions):
            if v is None:
                ax.text(0, y, " n/a", va="center", fontsize=9, color="#555555")
                continue
            n_def, n_all = view[c].get(f"{metric}_n_defined"), view[c].get("count_prompts")
            if n_def is not None and n_all and n_def < n_all:  # the rest of the prompts count as 0
                ax.annotate(
                    f"{n_def}/{n_all}",
                    xy=(1.0, y),
                    xycoords=("axes fraction", "data"),
                    xytext=(3, 0),
                    textcoords="offset points",
                    ha="left",
                    va="center",
                    fontsize=8,
                    color="#8b0000",
                    annotation_clip=False,
                )
        _reference_line(ax, metric)
        ax.set_yticks(ypos)
        ax.set_yticklabels(
            [display_name(c) for c in conditions] if k % ncols == 0 else [""] * len(conditions), fontsize=10
        )
        ax.set_xlabel(
            METRIC_LABELS[metric] + ("  (axis inverted: right = better)" if metric in LOWER_IS_BETTER else ""),
            fontsize=11,
        )
        ax.set_title(METRIC_LABELS[metric], fontsize=12, fontweight="bold")
        ax.grid(axis="x", alpha=0.3)
        if metric in UNIT_INTERVAL:
            ax.set_xlim(0.0, 1.02)
        if metric in LOWER_IS_BETTER:
            ax.invert_xaxis()
        ax.set_ylim(-0.7, len(conditions) - 0.3)
    for k in range(len(metrics), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    for r in range(nrows):
        axes[r][0].set_ylabel("teacher context (condition)", fontsize=11)
    prompts = max((view[c]["count_prompts"] for c in conditions), default=0)
    fig.suptitle(
        f"Does the teacher context rank a prompt's rollouts by reward?  sample set: {sample_set}; "
        f"up to {prompts} prompts per condition; whiskers = prompt-level bootstrap 95% CI "
        f"({result.get('num_bootstrap', '?')} resamples)",
        fontsize=13,
    )
    fig.legend(
        handles=_legend_handles(),
        loc="lower center",
        ncol=4,
        fontsize=11,
        frameon=False,
        title="k/n right of a panel: the statistic is defined for only k of the condition's n prompts; the "
        "others count as 0 (the release's rule)",
        title_fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.05, 0.985, 0.96), w_pad=3.5)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_by_bucket(
    result: dict, output: str | Path, *, sample_set: str = DEFAULT_SAMPLE_SET, metrics: Sequence[str] = BUCKET_METRICS
) -> Path:
    plt = _pyplot()
    view = _view(result, sample_set)
    conditions = ordered_conditions(view)
    buckets = [
        b for b in ("easy", "medium", "hard", "unknown") if any(b in view[c].get("by_bucket", {}) for c in conditions)
    ]
    n = max(len(conditions), 1)
    nb = max(len(buckets), 1)
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(8.5 * len(metrics), max(6.0, n * (0.22 * nb + 0.12) + 2.8)), squeeze=False
    )
    width = 0.8 / max(len(buckets), 1)
    base = list(range(len(conditions)))[::-1]
    for k, metric in enumerate(metrics):
        ax = axes[0][k]
        for b_i, bucket in enumerate(buckets):
            stats = [view[c].get("by_bucket", {}).get(bucket) for c in conditions]
            values = [_value(s, metric) for s in stats]
            cis = [None if s is None else s.get(f"{metric}_ci") for s in stats]
            counts = [0 if s is None else s["count_prompts"] for s in stats]
            offset = (len(buckets) - 1) / 2 - b_i
            ys = [y + offset * width for y in base]
            ax.barh(
                ys,
                [0.0 if v is None else v for v in values],
                height=width * 0.92,
                xerr=_whiskers(values, cis),
                color=BUCKET_COLORS[bucket],
                edgecolor="black",
                linewidth=0.3,
                error_kw={"elinewidth": 0.9, "capsize": 2, "ecolor": "#222222"},
                label=f"{bucket} ({BUCKET_RULE[bucket]}; ≤{max(counts)} prompts)" if k == 0 else None,
            )
            for y, v, s in zip(ys, values, stats):
                if v is None and s is not None:
                    ax.text(0, y, " n/a", va="center", fontsize=7, color=BUCKET_COLORS[bucket])
        _reference_line(ax, metric)
        if metric in UNIT_INTERVAL:
            ax.set_xlim(0.0, 1.02)
        ax.set_yticks(base)
        ax.set_yticklabels([display_name(c) for c in conditions] if k == 0 else [""] * len(conditions), fontsize=10)
        ax.set_xlabel(METRIC_LABELS[metric], fontsize=11)
        ax.set_title(f"{METRIC_LABELS[metric]} by difficulty bucket", fontsize=12, fontweight="bold")
        ax.grid(axis="x", alpha=0.3)
        ax.set_ylim(-0.7, len(conditions) - 0.3)
    axes[0][0].set_ylabel("teacher context (condition)", fontsize=11)
    fig.suptitle(
        f"Teacher-signal metrics by difficulty bucket — sample set: {sample_set}; whiskers = bootstrap 95% CI",
        fontsize=13,
    )
    fig.legend(
        loc="lower center",
        ncol=len(buckets),
        fontsize=10,
        frameon=False,
        title="difficulty bucket (successes in the prompt's group); n/a = undefined for every prompt "
        "(e.g. no success in a hard prompt)",
        title_fontsize=10,
    )
    bottom = 1.1 / fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, bottom, 1, 1 - 0.7 / fig.get_size_inches()[1]))
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_all(result: dict, output_dir: str | Path, *, sample_set: str = DEFAULT_SAMPLE_SET) -> list[Path]:
    out = Path(output_dir)
    return [
        plot_main(result, out / "teacher_metrics_main.png", sample_set=sample_set),
        plot_by_bucket(result, out / "teacher_metrics_by_bucket.png", sample_set=sample_set),
    ]
