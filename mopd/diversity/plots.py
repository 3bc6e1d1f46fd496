"""Plots of a ``compute_metrics`` output directory (matplotlib, Agg backend, PNG).

- ``passk_curve.png``: mean pass@k over prompts vs k, one line per method, 95% bootstrap interval bars;
- ``method_diversity_bars.png``: one panel per diversity metric, one bar per method, 95% bootstrap whiskers;
- ``diversity_vs_passk.png``: pairwise text distance vs pass@(max k): method means (left) and prompts (right);
- ``success_diversity_vs_passk.png``: the same with the distance among successful responses only.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mopd.diversity.io import DiversityError  # noqa: E402

__all__ = ["LABELS", "load_results", "plot_passk_curve", "plot_diversity_bars", "plot_diversity_vs_passk", "plot_all"]

LABELS = {
    "self_bleu4": "Self-BLEU-4 (lower = more diverse)",
    "pairwise_text_distance": "Pairwise text distance",
    "distinct1": "Distinct-1",
    "distinct2": "Distinct-2",
    "unique_response_ratio": "Unique-response ratio",
    "unique_code_ratio": "Unique-code ratio",
    "ast_node_jaccard_distance": "AST node-type Jaccard dist.",
}
BAR_METRICS = (
    "distinct2",
    "success_distinct2",
    "unique_response_ratio",
    "unique_code_ratio",
    "self_bleu4",
    "pairwise_text_distance",
    "ast_node_jaccard_distance",
    "success_ast_node_jaccard_distance",
)


def label(metric: str) -> str:
    if metric.startswith("success_"):
        return LABELS.get(metric[8:], metric[8:]) + "\n(successful responses only)"
    return LABELS.get(metric, metric)


def load_results(input_dir: str | Path) -> tuple[dict, list[dict]]:
    d = Path(input_dir)
    if not (d / "summary.json").is_file() or not (d / "per_prompt.jsonl").is_file():
        raise DiversityError(f"{d} lacks summary.json / per_prompt.jsonl (run diversity/compute_metrics.py first)")
    summary = json.loads((d / "summary.json").read_text(encoding="utf-8"))
    rows = [
        json.loads(line) for line in (d / "per_prompt.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    return summary, rows


def _colors(methods):
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _err(stat):
    """(lower, upper) error lengths of a summary stat's 95% interval, (0, 0) when there is none."""
    if not stat or stat.get("mean") is None or not stat.get("ci95"):
        return 0.0, 0.0
    return stat["mean"] - stat["ci95"][0], stat["ci95"][1] - stat["mean"]


def plot_passk_curve(summary: dict, path: Path) -> None:
    methods, ks = summary["methods"], summary["ks"]
    colors = _colors(methods)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=150)
    for m in methods:
        e = summary["per_method"][m]
        pts = [(k, e["metrics"][f"pass@{k}"]) for k in ks if e["metrics"][f"pass@{k}"]["mean"] is not None]
        if not pts:
            continue
        xs = [k for k, _ in pts]
        ys = [s["mean"] for _, s in pts]
        errs = list(zip(*[_err(s) for _, s in pts]))
        ax.errorbar(
            xs, ys, yerr=errs, marker="o", capsize=4, lw=2, color=colors[m], label=f"{m} ({e['n_prompts']} prompts)"
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("k (samples per prompt)", fontsize=12)
    ax.set_ylabel("pass@k (mean over prompts)", fontsize=12)
    ax.set_title(
        "pass@k, unbiased estimator 1 − C(n−c,k)/C(n,k)\n(bars: 95% bootstrap interval over prompts)", fontsize=12
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=10, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_diversity_bars(summary: dict, path: Path) -> None:
    methods = summary["methods"]
    colors = _colors(methods)
    available = [m for m in BAR_METRICS if m in summary["metric_names"]]
    shown = [m for m in available if any(summary["per_method"][x]["metrics"][m]["mean"] is not None for x in methods)]
    missing = [m for m in available if m not in shown]
    ncols = min(4, max(1, len(shown)))
    nrows = max(1, -(-len(shown) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.4 * nrows + 0.6), dpi=150, squeeze=False)
    for ax in axes.flat[len(shown) :]:
        ax.axis("off")
    for ax, metric in zip(axes.flat, shown):
        means, errs = [], [[], []]
        for m in methods:
            s = summary["per_method"][m]["metrics"][metric]
            means.append(s["mean"] if s["mean"] is not None else 0.0)
            lo, hi = _err(s)
            errs[0].append(lo)
            errs[1].append(hi)
        xs = list(range(len(methods)))
        ax.bar(xs, means, yerr=errs, capsize=4, color=[colors[m] for m in methods], edgecolor="black", lw=0.6)
        for x, m, v in zip(xs, methods, means):
            s = summary["per_method"][m]["metrics"][metric]
            txt = "n/a" if s["mean"] is None else f"{v:.3f}"
            ax.text(x, (v + errs[1][x]) if s["mean"] is not None else 0.0, txt, ha="center", va="bottom", fontsize=9)
        ax.set_xticks(xs)
        ax.set_xticklabels(methods, fontsize=10, rotation=15 if len(methods) > 3 else 0)
        ax.set_title(label(metric), fontsize=10)
        ax.set_ylabel("mean over prompts", fontsize=9)
        top = max([v + e for v, e in zip(means, errs[1])] + [1e-9])
        ax.set_ylim(0, top * 1.2 if top > 0 else 1)
        ax.grid(axis="y", alpha=0.3)
    title = "Solution diversity per method (whiskers: 95% bootstrap interval over prompts)"
    if missing:
        title += "\nnot shown, no prompt has enough (successful) responses: " + "; ".join(
            label(m).replace("\n", " ") for m in missing
        )
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_diversity_vs_passk(summary: dict, rows: list[dict], path: Path, metric: str) -> None:
    methods = summary["methods"]
    colors = _colors(methods)
    k = max(summary["ks"])
    pk = f"pass@{k}"
    fig, (ax_m, ax_p) = plt.subplots(1, 2, figsize=(12, 5), dpi=150)
    any_point = False
    corr_key = (
        "corr_success_pairwise_distance_passk" if metric.startswith("success_") else "corr_pairwise_distance_passk"
    )
    for m in methods:
        e = summary["per_method"][m]
        sx, sy = e["metrics"].get(metric), e["metrics"].get(pk)
        if sx and sy and sx["mean"] is not None and sy["mean"] is not None:
            ax_m.errorbar(
                [sx["mean"]],
                [sy["mean"]],
                xerr=[[v] for v in _err(sx)],
                yerr=[[v] for v in _err(sy)],
                fmt="o",
                ms=9,
                capsize=5,
                color=colors[m],
                label=m,
            )
            ax_m.annotate(
                m,
                (sx["mean"], sy["mean"]),
                textcoords="offset points",
                fontsize=10,
                color=colors[m],
                xytext=(8, 8 + 14 * methods.index(m)),
            )  # stacked so that close means stay legible
        pts = [
            (r[metric], r[pk]) for r in rows if r["method"] == m and r.get(metric) is not None and r.get(pk) is not None
        ]
        if pts:
            any_point = True
            c = e.get(corr_key, {})
            r_txt = "n/a" if c.get("pearson") is None else f"{c['pearson']:.2f}"
            ax_p.scatter(
                [p[0] for p in pts],
                [p[1] for p in pts],
                s=22,
                alpha=0.55,
                color=colors[m],
                edgecolor="none",
                label=f"{m}: {len(pts)} prompts, Pearson r = {r_txt}",
            )
    xlabel = "Pairwise text distance, 1 − difflib ratio" + (
        " (successful responses only)" if metric.startswith("success_") else ""
    )
    for ax in (ax_m, ax_p):
        ax.set_xlabel(xlabel, fontsize=11)
        ax.set_ylabel(f"pass@{k}", fontsize=11)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    ax_m.set_title("Method means (bars: 95% bootstrap intervals)", fontsize=11)
    ax_p.set_title("Per prompt (one point per method and prompt)", fontsize=11)
    if any_point:
        ax_p.legend(fontsize=9, loc="best")
    else:
        for ax in (ax_m, ax_p):
            ax.text(
                0.5,
                0.5,
                "no prompt with enough (successful) responses",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=11,
                color="gray",
            )
            ax.set_xlim(0, 1)
    fig.suptitle(f"{label(metric).replace(chr(10), ' ')} vs pass@{k}", fontsize=12)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_all(input_dir: str | Path, output_dir: str | Path) -> list[Path]:
    summary, rows = load_results(input_dir)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        out / "passk_curve.png",
        out / "method_diversity_bars.png",
        out / "diversity_vs_passk.png",
        out / "success_diversity_vs_passk.png",
    ]
    plot_passk_curve(summary, paths[0])
    plot_diversity_bars(summary, paths[1])
    plot_diversity_vs_passk(summary, rows, paths[2], "pairwise_text_distance")
    plot_diversity_vs_passk(summary, rows, paths[3], "success_pairwise_text_distance")
    return paths
