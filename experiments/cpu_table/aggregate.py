#!/usr/bin/env python
"""Aggregate the CPU comparison (experiments/cpu_table/run.sh): results.json, table.md, curves.png.

    python experiments/cpu_table/aggregate.py --output-dir outputs/cpu_table --methods grpo sdpo mopd

Reads ``OUTPUT_DIR/base/validation/0.jsonl`` (the base model, evaluated once) and
``OUTPUT_DIR/runs/<method>/seed<k>/validation/<step>.jsonl`` (the trainer's validation dumps: one line per
held-out sample, ``input``/``gts``/``score``). Per prompt, mean@n is the mean score of its n samples and
pass@n whether any sample succeeded. A method's number is the mean over seeds and held-out prompts at
its last step; the 95% interval is a percentile bootstrap that resamples seeds *and* prompts (the same
resampled prompts for every seed, since the seeds share the held-out set), so it covers both sources of
variation. With one seed it is a bootstrap over prompts only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

N_BOOT = 2000
BOOT_SEED = 0
SUCCESS = 1.0  # a sample with score >= this counts for pass@n


def load_validation(path: Path) -> dict[str, list[float]]:
    """One validation dump -> {prompt key: the scores of its samples}, in file order."""
    groups: dict[str, list[float]] = {}
    for k, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key = f"{row['input']}\x00{row['gts']}"
            groups.setdefault(key, []).append(float(row["score"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SystemExit(f"aggregate: {path}:{k + 1}: not a validation dump row ({exc})") from None
    if not groups:
        raise SystemExit(f"aggregate: {path}: empty validation dump")
    return groups


def per_prompt(groups: dict[str, list[float]], keys: list[str]) -> dict[str, np.ndarray]:
    """mean@n and pass@n per prompt, in the order of ``keys`` (so seeds line up prompt by prompt)."""
    missing = [k for k in keys if k not in groups]
    if missing:
        raise SystemExit(f"aggregate: {len(missing)} held-out prompts missing from a dump (different val set?)")
    return {
        "mean": np.array([np.mean(groups[k]) for k in keys]),
        "pass": np.array([float(max(groups[k]) >= SUCCESS) for k in keys]),
    }


def bootstrap_ci(
    matrix: np.ndarray, n_boot: int = N_BOOT, seed: int = BOOT_SEED, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the grand mean of ``matrix`` [seeds, prompts], resampling both axes."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty [seeds, prompts] matrix, got shape {matrix.shape}")
    rng = np.random.default_rng(seed)
    n_seeds, n_prompts = matrix.shape
    stats = np.empty(n_boot)
    for b in range(n_boot):
        rows = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else np.zeros(1, dtype=int)
        cols = rng.integers(0, n_prompts, n_prompts)
        stats[b] = matrix[np.ix_(rows, cols)].mean()
    tail = (1.0 - level) / 2
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1.0 - tail))


def summarize(matrix: np.ndarray) -> dict:
    low, high = bootstrap_ci(matrix)
    return {
        "mean": float(np.mean(matrix)),
        "ci_low": low,
        "ci_high": high,
        "per_seed": [float(v) for v in np.mean(matrix, axis=1)],
    }


def steps_of(run_dir: Path) -> list[int]:
    return sorted(int(p.stem) for p in (run_dir / "validation").glob("*.jsonl") if p.stem.isdigit())


def collect(output_dir: Path, methods: list[str], n: int = 8) -> dict:
    """results.json's content: the base once, each method's last-step numbers and its curve."""
    output_dir = Path(output_dir)
    base_path = output_dir / "base" / "validation" / "0.jsonl"
    if not base_path.exists():
        raise SystemExit(f"aggregate: {base_path} not found (the base evaluation)")
    base_groups = load_validation(base_path)
    keys = sorted(base_groups)
    base = per_prompt(base_groups, keys)
    base_mean = float(base["mean"].mean())
    results = {
        "base": {
            f"mean@{n}": base_mean,
            f"pass@{n}": float(base["pass"].mean()),
            "ci": {f"mean@{n}": summarize(base["mean"][None]), f"pass@{n}": summarize(base["pass"][None])},
        },
        "methods": {},
        "curves": {},
        "n_prompts": len(keys),
    }
    for method in methods:
        runs = sorted((output_dir / "runs" / method).glob("seed*"), key=lambda p: int(p.name[4:]))
        if not runs:
            raise SystemExit(f"aggregate: no runs under {output_dir / 'runs' / method}")
        finals, curves = [], {}
        for run in runs:
            steps = steps_of(run)
            if not steps:
                raise SystemExit(f"aggregate: {run}/validation holds no dumps (did the run fail?)")
            for step in steps:
                curves.setdefault(step, []).append(
                    float(per_prompt(load_validation(run / "validation" / f"{step}.jsonl"), keys)["mean"].mean())
                )
            finals.append((steps[-1], per_prompt(load_validation(run / "validation" / f"{steps[-1]}.jsonl"), keys)))
        last_steps = {s for s, _ in finals}
        if len(last_steps) != 1:
            raise SystemExit(f"aggregate: {method}'s seeds stopped at different steps {sorted(last_steps)}")
        results["methods"][method] = {
            f"mean@{n}": summarize(np.stack([f["mean"] for _, f in finals])),
            f"pass@{n}": summarize(np.stack([f["pass"] for _, f in finals])),
            "seeds": len(runs),
            "final_step": last_steps.pop(),
        }
        curve = {0: [base_mean] * len(runs), **{s: v for s, v in curves.items() if len(v) == len(runs)}}
        results["curves"][method] = {str(s): curve[s] for s in sorted(curve)}
    return results


def table_markdown(results: dict, n: int = 8) -> str:
    def cell(s: dict) -> str:
        return f"{s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"

    base = results["base"]
    lines = [
        f"| method | seeds | step | mean@{n} [95% CI] | pass@{n} [95% CI] |",
        "|---|---|---|---|---|",
        f"| base | - | 0 | {cell(base['ci'][f'mean@{n}'])} | {cell(base['ci'][f'pass@{n}'])} |",
    ]
    for method, r in results["methods"].items():
        lines.append(
            f"| {method} | {r['seeds']} | {r['final_step']} | {cell(r[f'mean@{n}'])} | {cell(r[f'pass@{n}'])} |"
        )
    lines.append("")
    lines.append(
        f"Held-out prompts: {results['n_prompts']}; intervals: percentile bootstrap ({N_BOOT} draws) over "
        "seeds and prompts; per-seed values in results.json."
    )
    return "\n".join(lines) + "\n"


def plot_curves(results: dict, path: Path, n: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, curve in results["curves"].items():
        steps = np.array([int(s) for s in curve])
        values = np.array([curve[s] for s in curve])
        mean = values.mean(axis=1)
        ax.plot(
            steps,
            mean,
            marker="o",
            ms=3,
            label=f"{method} ({values.shape[1]} seed{'s' if values.shape[1] > 1 else ''})",
        )
        if values.shape[1] > 1:
            ax.fill_between(steps, values.min(axis=1), values.max(axis=1), alpha=0.2)
    ax.axhline(results["base"][f"mean@{n}"], color="gray", ls="--", lw=1, label="base")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"held-out mean@{n}")
    ax.set_title("Embedded task: held-out mean@8 (line: mean over seeds; band: min-max)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    results = collect(out, args.methods)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "table.md").write_text(table_markdown(results))
    if not args.no_plot:
        plot_curves(results, out / "curves.png")
    sys.stdout.write(table_markdown(results))


if __name__ == "__main__":
    main()
