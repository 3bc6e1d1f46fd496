"""Does the teacher score rank a prompt's responses by reward? Per-prompt metrics and their aggregation.

For one (condition, prompt) with n >= 2 scored rows — s = teacher score (mean response log-prob),
r = reward, y = success (0/1) — :func:`prompt_metrics` computes:

========================  ==========================================================================
``spearman``              Spearman's rho of (s, r): Pearson correlation of tie-averaged ranks (scipy)
``kendall_tau``           Kendall's tau-b of (s, r) (scipy; tie-corrected)
``goodman_kruskal_gamma`` (C - D) / (C + D) over pairs tied in neither s nor r — what the release called
                          "Kendall tau"
``pairwise_accuracy``     over pairs with r_i != r_j: fraction ordered like the rewards, a tie in s = 1/2
``success_auc``           P(s+ > s-) + 1/2 P(s+ = s-) over success x failure pairs (= ROC AUC; scipy's
                          Mann-Whitney U / (n+ n-))
``success_point_biserial`` Pearson correlation of s and y (scipy ``pointbiserialr``)
``success_brier_sigmoid`` mean (sigmoid(s) - y)^2 (lower is better)
``success_brier_minmax``  mean (minmax(s) - y)^2, minmax over the prompt's rows (all 0.5 if s is constant)
``top1_hit_rate``         1 if the highest-scored row (first on ties) has the prompt's max reward or is a
                          success, else 0
========================  ==========================================================================

Degenerate cases follow the release: a statistic that is undefined (constant s or r, no pair with
different rewards, a prompt with only successes or only failures) is 0 — and ``defined`` records which
ones were, so ``degenerate="skip"`` can leave them out of the means instead.

Aggregation (:func:`condition_metrics`): prompt-unweighted means over prompts, the same by difficulty
bucket, and prompt-level bootstrap 95% percentile intervals from exactly ``num_bootstrap`` resamples of
the prompts (one shared set of resampled prompt indices for all metrics of a condition; numpy
``default_rng(seed)``).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import stats

METRICS = (
    "spearman",
    "kendall_tau",
    "goodman_kruskal_gamma",
    "pairwise_accuracy",
    "success_auc",
    "success_point_biserial",
    "success_brier_sigmoid",
    "success_brier_minmax",
    "top1_hit_rate",
)
# aggregate key (release names) -> per-prompt key
AGGREGATE_NAMES = {
    "mean_spearman": "spearman",
    "mean_kendall_tau": "kendall_tau",
    "mean_goodman_kruskal_gamma": "goodman_kruskal_gamma",
    "pairwise_accuracy": "pairwise_accuracy",
    "success_auc": "success_auc",
    "success_point_biserial": "success_point_biserial",
    "success_brier_sigmoid": "success_brier_sigmoid",
    "success_brier_minmax": "success_brier_minmax",
    "top1_hit_rate": "top1_hit_rate",
}
LOWER_IS_BETTER = {"success_brier_sigmoid", "success_brier_minmax"}
METRIC_LABELS = {
    "mean_spearman": "Spearman ρ (score vs reward)",
    "mean_kendall_tau": "Kendall τ_b (score vs reward)",
    "mean_goodman_kruskal_gamma": "Goodman–Kruskal γ (release 'Kendall')",
    "pairwise_accuracy": "Pairwise accuracy",
    "success_auc": "Success AUC",
    "success_point_biserial": "Point-biserial r (score vs success)",
    "success_brier_sigmoid": "Brier of sigmoid(score) ↓",
    "success_brier_minmax": "Brier of min-max score ↓",
    "top1_hit_rate": "Top-1 hit rate",
}
SAMPLE_SETS = {
    "all_samples": "All scored samples, including rows where the requested context did not activate.",
    "effective_only": "Only samples whose context actually shows the condition's required sections.",
    "reward_zero_only": "Only samples with reward == 0 (diagnostic: rank metrics degenerate on all-failure prompts).",
    "reward_zero_effective_only": "Reward == 0 samples whose context shows the required sections.",
    "both_present_all": "Only prompts with >= 1 success and >= 1 failure among their rows (AUC and pairwise "
    "accuracy are defined only here).",
    "both_present_effective_only": "Both-present prompts, effective rows only: the main comparison of "
    "2S1F against the controls.",
}
DEFAULT_SAMPLE_SET = "both_present_effective_only"
TABLE_METRICS = ("mean_spearman", "mean_kendall_tau", "pairwise_accuracy", "success_auc")
TABLE_CONDITION_ORDER = (
    "base",
    "solution",
    "another_solution",
    "failure_solution",
    "solution+failure_solution",
    "all_solutions",
    "random_peer",
    "verifier_score_ordered",
    "solution+another_solution+failure_solution",
)


# ----------------------------------------------------------------------------------------------------
# Per prompt
# ----------------------------------------------------------------------------------------------------
def _constant(x: np.ndarray) -> bool:
    return bool(np.all(x == x[0]))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def _pair_signs(x: np.ndarray) -> np.ndarray:
    """sign(x_i - x_j) for i < j, flattened."""
    i, j = np.triu_indices(len(x), k=1)
    return np.sign(x[i] - x[j])


def goodman_kruskal_gamma(scores: Sequence[float], rewards: Sequence[float]) -> float | None:
    s, r = np.asarray(scores, float), np.asarray(rewards, float)
    product = _pair_signs(s) * _pair_signs(r)
    concordant, discordant = int(np.sum(product > 0)), int(np.sum(product < 0))
    if concordant + discordant == 0:
        return None
    return (concordant - discordant) / (concordant + discordant)


def pairwise_accuracy(scores: Sequence[float], rewards: Sequence[float]) -> float | None:
    s, r = np.asarray(scores, float), np.asarray(rewards, float)
    ds, dr = _pair_signs(s), _pair_signs(r)
    keep = dr != 0
    if not np.any(keep):
        return None
    agreement = ds[keep] * dr[keep]
    return float(np.mean(np.where(agreement > 0, 1.0, np.where(agreement == 0, 0.5, 0.0))))


def success_auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided", method="asymptotic").statistic
    return float(u) / (len(pos) * len(neg))


def top1_hit(scores: Sequence[float], rewards: Sequence[float], labels: Sequence[int]) -> float:
    s, r, y = np.asarray(scores, float), np.asarray(rewards, float), np.asarray(labels, int)
    best = int(np.argmax(s))
    return 1.0 if (r[best] == np.max(r) or y[best] == 1) else 0.0


def prompt_metrics(scores: Sequence[float], rewards: Sequence[float], successes: Sequence[bool | int]) -> dict:
    """All metrics of one prompt (``len >= 2``); undefined ones are 0 with ``defined[m] = False``."""
    s = np.asarray(scores, dtype=float)
    r = np.asarray(rewards, dtype=float)
    y = np.asarray([1 if v else 0 for v in successes], dtype=int)
    if not (len(s) == len(r) == len(y)) or len(s) < 2:
        raise ValueError(f"prompt_metrics needs >= 2 aligned rows, got {len(s)}/{len(r)}/{len(y)}")
    values: dict[str, float | None] = {}
    rank_ok = not _constant(s) and not _constant(r)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant inputs are handled above; nothing else is expected
        values["spearman"] = float(stats.spearmanr(s, r).statistic) if rank_ok else None
        values["kendall_tau"] = float(stats.kendalltau(s, r).statistic) if rank_ok else None
        values["success_point_biserial"] = (
            float(stats.pointbiserialr(y, s).statistic) if not _constant(s) and not _constant(y) else None
        )
    values["goodman_kruskal_gamma"] = goodman_kruskal_gamma(s, r)
    values["pairwise_accuracy"] = pairwise_accuracy(s, r)
    values["success_auc"] = success_auc(s, y)
    values["success_brier_sigmoid"] = float(np.mean((_sigmoid(s) - y) ** 2))
    lo, hi = float(np.min(s)), float(np.max(s))
    scaled = np.full_like(s, 0.5) if hi == lo else (s - lo) / (hi - lo)
    values["success_brier_minmax"] = float(np.mean((scaled - y) ** 2))
    values["top1_hit_rate"] = top1_hit(s, r, y)
    out = {m: (0.0 if values[m] is None or not math.isfinite(values[m]) else float(values[m])) for m in METRICS}
    out["defined"] = {m: values[m] is not None and math.isfinite(values[m]) for m in METRICS}
    return out


# ----------------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------------
def per_prompt_table(rows_by_prompt: dict[str, list[dict]], cache: dict | None = None) -> list[dict]:
    """Metrics of every prompt with >= 2 rows. ``cache`` (keyed by the identity of the rows) lets the sample
    sets and paired views of one run reuse a prompt's metrics when they hold the same rows."""
    out = []
    for prompt_id in sorted(rows_by_prompt):
        rows = rows_by_prompt[prompt_id]
        if len(rows) < 2:
            continue
        key = tuple(id(r) for r in rows)
        m = cache.get(key) if cache is not None else None
        if m is None:
            m = prompt_metrics(
                [float(r["teacher_score"]) for r in rows],
                [float(r["reward"]) for r in rows],
                [bool(r["success"]) for r in rows],
            )
            if cache is not None:
                cache[key] = m
        out.append(
            {
                "prompt_id": prompt_id,
                "difficulty_bucket": rows[0].get("difficulty_bucket", "unknown"),
                "n_rows": len(rows),
                "n_success": sum(bool(r["success"]) for r in rows),
                **m,
            }
        )
    return out


def bootstrap_means(
    values: np.ndarray, defined: np.ndarray | None, num_bootstrap: int, rng: np.random.Generator
) -> np.ndarray:
    """Means of ``num_bootstrap`` prompt resamples: ``values`` is [n_prompts, n_metrics]; returns
    [num_bootstrap, n_metrics] (NaN where a resample has no defined prompt, with ``defined``)."""
    n = values.shape[0]
    idx = rng.integers(0, n, size=(num_bootstrap, n))
    sampled = values[idx]  # [B, n, M]
    if defined is None:
        return sampled.mean(axis=1)
    weights = defined[idx].astype(float)
    counts = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (sampled * weights).sum(axis=1) / counts, np.nan)


def _aggregate(
    items: list[dict], num_bootstrap: int, rng: np.random.Generator, degenerate: str, alpha: float = 0.05
) -> dict:
    keys = list(AGGREGATE_NAMES)
    result: dict[str, Any] = {"count_prompts": len(items)}
    if not items:
        for agg in keys:
            result[agg] = None
            result[f"{agg}_ci"] = None
            result[f"{agg}_n_defined"] = 0
        return result
    values = np.array([[item[AGGREGATE_NAMES[a]] for a in keys] for item in items], dtype=float)
    defined = np.array([[item["defined"][AGGREGATE_NAMES[a]] for a in keys] for item in items], dtype=bool)
    use_defined = degenerate == "skip"
    for col, agg in enumerate(keys):
        n_def = int(defined[:, col].sum())
        result[f"{agg}_n_defined"] = n_def
        if use_defined:
            result[agg] = float(values[defined[:, col], col].mean()) if n_def else None
        else:
            result[agg] = float(values[:, col].mean())
    if num_bootstrap > 0:
        means = bootstrap_means(values, defined if use_defined else None, num_bootstrap, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column (never defined) -> None below
            bounds = np.nanpercentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
        for col, agg in enumerate(keys):
            lo, hi = bounds[:, col]
            result[f"{agg}_ci"] = [float(lo), float(hi)] if np.isfinite(lo) and np.isfinite(hi) else None
    else:
        for agg in keys:
            result[f"{agg}_ci"] = None
    return result


def condition_metrics(
    rows_by_prompt: dict[str, list[dict]],
    *,
    num_bootstrap: int = 2000,
    seed: int = 12345,
    degenerate: str = "zero",
    include_per_prompt: bool = False,
    cache: dict | None = None,
) -> dict:
    """Prompt-level means (+ bootstrap CIs), by bucket too, mean prompt length and truncation rate."""
    if degenerate not in ("zero", "skip"):
        raise ValueError(f"degenerate must be 'zero' (the release) or 'skip', got {degenerate!r}")
    if num_bootstrap < 0:
        raise ValueError(f"--num-bootstrap must be >= 0, got {num_bootstrap}")
    items = per_prompt_table(rows_by_prompt, cache)
    rng = np.random.default_rng(seed)
    result = _aggregate(items, num_bootstrap, rng, degenerate)
    result["bootstrap_resamples"] = num_bootstrap if items else 0
    used = [r for p in items for r in rows_by_prompt[p["prompt_id"]]]
    lengths = [float(r["teacher_prompt_len"]) for r in used if r.get("teacher_prompt_len") is not None]
    flags = [1.0 if r.get("teacher_prompt_truncated") else 0.0 for r in used if "teacher_prompt_truncated" in r]
    result["count_rows"] = len(used)
    result["mean_prompt_length"] = float(np.mean(lengths)) if lengths else None
    result["truncation_rate"] = float(np.mean(flags)) if flags else None
    buckets: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        buckets[item["difficulty_bucket"]].append(item)
    result["by_bucket"] = {}
    for bucket in sorted(buckets):
        sub = _aggregate(buckets[bucket], num_bootstrap, np.random.default_rng([seed, _stable_int(bucket)]), degenerate)
        result["by_bucket"][bucket] = sub
    if include_per_prompt:
        result["per_prompt"] = items
    return result


def _stable_int(text: str) -> int:
    import hashlib

    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)


# ----------------------------------------------------------------------------------------------------
# Sample sets
# ----------------------------------------------------------------------------------------------------
def is_effective(row: dict) -> bool:
    if row.get("effective") is not None:
        return bool(row["effective"])
    from mopd.analysis.conditions import REQUIRED_SECTIONS

    required = row.get("required_sections")
    if required is None:
        required = REQUIRED_SECTIONS.get(row["condition"], ())
    used = row.get("sections_used") or {}
    return all(bool(used.get(s)) for s in required)


def group_rows(rows: Iterable[dict]) -> dict[str, dict[str, list[dict]]]:
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        grouped[row["condition"]][row["prompt_id"]].append(row)
    return {c: dict(p) for c, p in grouped.items()}


def sample_set_rows(rows: Sequence[dict]) -> dict[str, list[dict]]:
    labels: dict[str, set[int]] = defaultdict(set)
    for row in rows:
        labels[row["prompt_id"]].add(1 if row["success"] else 0)
    both = {p for p, seen in labels.items() if seen == {0, 1}}
    effective = [r for r in rows if is_effective(r)]
    zero = [r for r in rows if float(r["reward"]) == 0.0]
    return {
        "all_samples": list(rows),
        "effective_only": effective,
        "reward_zero_only": zero,
        "reward_zero_effective_only": [r for r in zero if is_effective(r)],
        "both_present_all": [r for r in rows if r["prompt_id"] in both],
        "both_present_effective_only": [r for r in effective if r["prompt_id"] in both],
    }


def _split(rows: Sequence[dict], **kwargs) -> dict:
    grouped = group_rows(rows)
    return {condition: condition_metrics(grouped[condition], **kwargs) for condition in sorted(grouped)}


def _paired(rows: Sequence[dict], **kwargs) -> dict:
    """Per target type: every condition on the prompts that all conditions have (>= 2 rows each)."""
    by_type: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_type[row.get("target_type", "unknown")].append(row)
    out = {}
    for target_type in sorted(by_type):
        grouped = group_rows(by_type[target_type])
        sets = [{p for p, rs in by_prompt.items() if len(rs) >= 2} for by_prompt in grouped.values()]
        common = set.intersection(*sets) if sets else set()
        paired = {c: {p: by_prompt[p] for p in sorted(common)} for c, by_prompt in grouped.items()}
        out[target_type] = {
            "paired_prompt_count": len(common),
            "conditions": {c: condition_metrics(paired[c], **kwargs) for c in sorted(paired)},
        }
    return out


def validate_rows(rows: Sequence[dict]) -> None:
    required = {"condition", "prompt_id", "teacher_score", "reward", "success"}
    for n, row in enumerate(rows, start=1):
        missing = sorted(required - set(row))
        if missing:
            raise ValueError(f"scored row {n} lacks {missing} (is this the output of score_teacher_contexts.py?)")
        if not math.isfinite(float(row["teacher_score"])):
            raise ValueError(f"scored row {n}: teacher_score is not finite ({row['teacher_score']})")


def compute_all(
    rows: Sequence[dict],
    *,
    num_bootstrap: int = 2000,
    seed: int = 12345,
    degenerate: str = "zero",
    sample_sets: Sequence[str] | None = None,
    paired: bool = True,
    per_prompt: bool = False,
) -> dict:
    """Every sample set's per-condition metrics (+ paired-by-target-type views) and row counts."""
    validate_rows(rows)
    sets = sample_set_rows(rows)
    names = list(sample_sets) if sample_sets else list(SAMPLE_SETS)
    unknown = [s for s in names if s not in SAMPLE_SETS]
    if unknown:
        raise ValueError(f"unknown sample set(s) {unknown}; choose from {list(SAMPLE_SETS)}")
    kwargs = dict(num_bootstrap=num_bootstrap, seed=seed, degenerate=degenerate, cache={})
    result: dict[str, Any] = {
        "num_bootstrap": num_bootstrap,
        "bootstrap_seed": seed,
        "ci_level": 0.95,
        "degenerate": degenerate,
        "sample_sets": {},
    }
    for name in names:
        entry = {
            "description": SAMPLE_SETS[name],
            "conditions": _split(sets[name], include_per_prompt=per_prompt, **kwargs),
        }
        if paired:
            entry["paired_by_target_type"] = _paired(sets[name], **kwargs)
        result["sample_sets"][name] = entry
    conditions = sorted({r["condition"] for r in rows})
    result["condition_sample_counts"] = {
        c: {name: sum(1 for r in sets[name] if r["condition"] == c) for name in SAMPLE_SETS} for c in conditions
    }
    result["both_present_prompt_count"] = len({r["prompt_id"] for r in sets["both_present_all"]})
    result["prompt_count"] = len({r["prompt_id"] for r in rows})
    return result


# ----------------------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------------------
def ordered_conditions(conditions: Iterable[str]) -> list[str]:
    from mopd.analysis.conditions import CONDITION_NAMES

    present = list(conditions)
    order = [c for c in TABLE_CONDITION_ORDER if c in present]
    order += [c for c in CONDITION_NAMES if c in present and c not in order]
    order += sorted(c for c in present if c not in order)
    return order


def _fmt(value, ci, n_defined=None, n_prompts=None) -> str:
    if value is None or n_defined == 0:
        return "n/a"
    text = f"{value:.3f}" if not ci else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    if n_defined is not None and n_prompts is not None and n_defined < n_prompts:
        text += f" ({n_defined}/{n_prompts})"
    return text


def render_tables(result: dict, sample_set: str) -> tuple[str, str]:
    """(markdown, csv) of one sample set: the four ranking metrics with CIs in markdown, everything in CSV."""
    if sample_set not in result["sample_sets"]:
        raise ValueError(f"sample set {sample_set!r} was not computed; have {list(result['sample_sets'])}")
    view = result["sample_sets"][sample_set]["conditions"]
    conditions = ordered_conditions(view)
    header = ["condition", "prompts", *[METRIC_LABELS[m].split(" (")[0] for m in TABLE_METRICS]]
    md = [
        f"# Teacher-signal ranking metrics — sample set `{sample_set}`",
        "",
        f"{result['sample_sets'][sample_set]['description']} Prompt-unweighted means; in brackets the "
        f"prompt-level bootstrap 95% interval ({result['num_bootstrap']} resamples, seed {result['bootstrap_seed']}). "
        "(k/n): the statistic is defined for only k of the n prompts (the others, e.g. prompts left with only "
        "failures by the effective filter, count as 0 in the mean: the release's rule; `--degenerate skip` "
        "leaves them out); n/a: undefined for every prompt (as for `feedback`, which only a failed response "
        "has).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for c in conditions:
        m = view[c]
        md.append(
            "| "
            + " | ".join(
                [c, str(m["count_prompts"])]
                + [_fmt(m[k], m.get(f"{k}_ci"), m.get(f"{k}_n_defined"), m["count_prompts"]) for k in TABLE_METRICS]
            )
            + " |"
        )
    csv_header = ["condition", "count_prompts", "count_rows"]
    for k in AGGREGATE_NAMES:
        csv_header += [k, f"{k}_ci_low", f"{k}_ci_high"]
    csv_header += ["mean_prompt_length", "truncation_rate"]
    lines = [",".join(csv_header)]
    for c in conditions:
        m = view[c]
        cells = [f'"{c}"' if "," in c else c, str(m["count_prompts"]), str(m.get("count_rows", ""))]
        for k in AGGREGATE_NAMES:
            ci = m.get(f"{k}_ci") or [None, None]
            cells += ["" if v is None else f"{v:.6f}" for v in (m[k], ci[0], ci[1])]
        cells += ["" if m.get(k) is None else f"{m[k]:.6f}" for k in ("mean_prompt_length", "truncation_rate")]
        lines.append(",".join(cells))
    return "\n".join(md) + "\n", "\n".join(lines) + "\n"
