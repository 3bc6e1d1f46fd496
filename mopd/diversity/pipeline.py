"""The diversity pipeline: select prompts, compute per-prompt metrics, summarise, write the outputs.

Outputs of ``run_pipeline`` (``diversity/compute_metrics.py``) in ``output_dir``:
- ``per_prompt.jsonl``: one row per (method, prompt) with every metric;
- ``summary.json``: per method, the mean, population std (ddof=0), count and a 95% percentile-bootstrap
  interval (prompts resampled) of every metric over prompts, the mean pass@k curve, and the
  Pearson/Spearman correlation across prompts of (success-only) pairwise distance with pass@(max k);
- ``summary.csv``: the same per method, one row per method (``<metric>_mean``, ``<metric>_std``);
- ``case_studies.jsonl``: the prompts where the methods differ most on ``case_metric``, with samples.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from mopd.diversity import metrics as M
from mopd.diversity.io import DiversityError, Response, RunData, load_run, parse_run_spec

__all__ = [
    "TASKS",
    "diversity_metric_names",
    "metric_names",
    "prompt_metrics",
    "select",
    "summarize",
    "case_studies",
    "run_pipeline",
]

TASKS = ("code", "text")
CODE_ONLY = ("unique_code_ratio", "ast_node_jaccard_distance")
BASE_DIVERSITY = (
    "self_bleu4",
    "pairwise_text_distance",
    "distinct1",
    "distinct2",
    "unique_response_ratio",
    "unique_code_ratio",
    "ast_node_jaccard_distance",
)


def diversity_metric_names(task: str) -> list[str]:
    base = [m for m in BASE_DIVERSITY if task == "code" or m not in CODE_ONLY]
    return base + [f"success_{m}" for m in base]


def metric_names(task: str, ks: Sequence[int]) -> list[str]:
    return (
        ["n_responses", "n_success", "success_rate", "mean_tokens"]
        + diversity_metric_names(task)
        + [f"pass@{k}" for k in ks]
    )


class _Group:
    """One prompt's responses with what the metrics share between the all- and success-only subsets
    (views, normalised code, AST counts, pairwise difflib distances: each computed once)."""

    def __init__(self, texts: list[str], task: str):
        self.task = task
        self.texts = texts
        self.views = [M.code_view(t) for t in texts] if task == "code" else list(texts)
        self._pairs: dict[tuple[int, int], float] = {}
        if task == "code":
            self.norm = [M.normalize_code(v) for v in self.views]
            self.ast = [M.ast_node_counts(v) for v in self.views]

    def _distance(self, i: int, j: int) -> float:
        if (i, j) not in self._pairs:
            self._pairs[(i, j)] = M.pairwise_text_distance([self.views[i], self.views[j]])
        return self._pairs[(i, j)]

    def metrics(self, idx: list[int]) -> dict:
        """The diversity metrics of the responses ``idx`` (same values as the ``metrics`` functions)."""
        views = [self.views[i] for i in idx]
        pairs = list(itertools.combinations(idx, 2))
        out = {
            "self_bleu4": M.self_bleu4(views),
            "pairwise_text_distance": (sum(self._distance(i, j) for i, j in pairs) / len(pairs)) if pairs else None,
            "distinct1": M.distinct_n(views, 1),
            "distinct2": M.distinct_n(views, 2),
            "unique_response_ratio": M.unique_ratio([self.texts[i].strip() for i in idx]),
        }
        if self.task == "code":
            out["unique_code_ratio"] = M.unique_ratio([self.norm[i] for i in idx])
            ok = [self.ast[i] for i in idx if self.ast[i] is not None]
            ast_pairs = list(itertools.combinations(ok, 2))
            out["ast_node_jaccard_distance"] = (
                sum(M.weighted_jaccard_distance(a, b) for a, b in ast_pairs) / len(ast_pairs) if ast_pairs else None
            )
        return out


def prompt_metrics(responses: Sequence[Response], task: str, ks: Sequence[int], min_success_group: int = 2) -> dict:
    """Every metric of one (method, prompt) group; success-only variants need ``min_success_group``."""
    if task not in TASKS:
        raise DiversityError(f"--task must be one of {TASKS}, got {task!r}")
    group = _Group([r.text for r in responses], task)
    n, c = len(responses), sum(1 for r in responses if r.success)
    row: dict = {
        "n_responses": n,
        "n_success": c,
        "success_rate": c / n if n else None,
        "mean_tokens": (sum(len(M.tokenize(v)) for v in group.views) / n) if n else None,
    }
    if task == "code":
        row["ast_parsable"] = sum(1 for a in group.ast if a is not None)
        row["ast_unparsable"] = n - row["ast_parsable"]
    div = group.metrics(list(range(n)))
    row.update(div)
    succ = [i for i, r in enumerate(responses) if r.success]
    sdiv = group.metrics(succ) if len(succ) >= min_success_group else {k: None for k in div}
    row.update({f"success_{k}": v for k, v in sdiv.items()})
    for k in ks:
        row[f"pass@{k}"] = M.pass_at_k(n, c, k)
    return row


def _prompt_metrics_job(args):
    return prompt_metrics(*args)


def select(
    runs: list[RunData],
    *,
    intersect: bool,
    max_prompts: int | None,
    max_responses: int | None,
    min_responses: int,
    seed: int,
) -> tuple[dict[str, dict[str, list[Response]]], dict]:
    """Cap responses (first M of each prompt), drop small groups, intersect, sample prompts (seeded).

    The prompt sample is drawn once from the sorted pool (the intersection, or the union of the
    methods' prompts), so every method keeps the same prompts wherever it has them.
    """
    info: dict = {"per_method": {}}
    kept: dict[str, dict[str, list[Response]]] = {}
    for run in runs:
        groups = {}
        dropped = 0
        for pid, resp in run.prompts.items():
            resp = resp[:max_responses] if max_responses else list(resp)
            if len(resp) < min_responses:
                dropped += 1
                continue
            groups[pid] = resp
        kept[run.name] = groups
        info["per_method"][run.name] = {
            "prompts_loaded": len(run.prompts),
            "responses_loaded": run.n_responses,
            "prompts_below_min_responses": dropped,
        }
    ids = [set(g) for g in kept.values()]
    pool = sorted(set.intersection(*ids) if intersect else set.union(*ids))
    if intersect and not pool:
        raise DiversityError("--intersect-prompts: the methods share no prompt (with enough responses)")
    if max_prompts is not None and max_prompts < len(pool):
        pool = sorted(random.Random(seed).sample(pool, max_prompts))
    chosen = set(pool)
    out = {name: {pid: g for pid, g in groups.items() if pid in chosen} for name, groups in kept.items()}
    for name, groups in out.items():
        info["per_method"][name].update(prompts_used=len(groups), responses_used=sum(len(g) for g in groups.values()))
        if not groups:
            raise DiversityError(
                f"run {name!r}: no prompt left after the selection "
                f"(min responses {min_responses}, intersect {intersect})"
            )
    info["prompt_pool"] = len(pool)
    return out, info


def _stats(values: list, num_bootstrap: int = 1000, seed: int = 12345) -> dict:
    """mean, population std (ddof=0), count and a 95% prompt-level percentile-bootstrap interval."""
    import numpy as np

    vals = np.array([float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))])
    n = len(vals)
    if not n:
        return {"mean": None, "std": None, "count": 0, "ci95": None}
    out = {"mean": float(vals.mean()), "std": float(vals.std(ddof=0)), "count": n, "ci95": None}
    if n >= 2 and num_bootstrap > 0:
        rng = np.random.default_rng(seed)
        means = vals[rng.integers(0, n, size=(num_bootstrap, n))].mean(axis=1)
        lo, hi = np.percentile(means, [2.5, 97.5])
        out["ci95"] = [float(lo), float(hi)]
    return out


def _correlation(xs: list, ys: list) -> dict:
    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
    out = {"n": len(pairs), "pearson": None, "spearman": None, "pearson_p": None, "spearman_p": None}
    if len(pairs) < 3:
        out["note"] = "fewer than 3 prompts with both values"
        return out
    x, y = [p[0] for p in pairs], [p[1] for p in pairs]
    if len(set(x)) < 2 or len(set(y)) < 2:
        out["note"] = "constant input"
        return out
    from scipy import stats

    pr = stats.pearsonr(x, y)
    sr = stats.spearmanr(x, y)
    out.update(
        pearson=float(pr.statistic),
        pearson_p=float(pr.pvalue),
        spearman=float(sr.statistic),
        spearman_p=float(sr.pvalue),
    )
    return out


def summarize(rows: list[dict], methods: list[str], task: str, ks: Sequence[int], num_bootstrap: int = 1000) -> dict:
    names = metric_names(task, ks)
    kmax = max(ks)
    per_method = {}
    for method in methods:
        mrows = [r for r in rows if r["method"] == method]
        stats = {m: _stats([r.get(m) for r in mrows], num_bootstrap) for m in names}
        entry = {
            "n_prompts": len(mrows),
            "n_responses": sum(r["n_responses"] for r in mrows),
            "metrics": stats,
            "passk_curve": {str(k): stats[f"pass@{k}"]["mean"] for k in ks},
            "corr_pairwise_distance_passk": dict(
                k=kmax,
                **_correlation(
                    [r.get("pairwise_text_distance") for r in mrows], [r.get(f"pass@{kmax}") for r in mrows]
                ),
            ),
            "corr_success_pairwise_distance_passk": dict(
                k=kmax,
                **_correlation(
                    [r.get("success_pairwise_text_distance") for r in mrows], [r.get(f"pass@{kmax}") for r in mrows]
                ),
            ),
        }
        if task == "code":
            entry["ast_parsable"] = sum(r.get("ast_parsable", 0) for r in mrows)
            entry["ast_unparsable"] = sum(r.get("ast_unparsable", 0) for r in mrows)
        per_method[method] = entry
    return {
        "task": task,
        "ks": list(ks),
        "methods": list(methods),
        "metric_names": names,
        "interval": f"95% percentile bootstrap over prompts ({num_bootstrap} resamples, seed 12345)",
        "diversity_metrics": diversity_metric_names(task),
        "per_method": per_method,
    }


def case_studies(
    rows: list[dict],
    data: dict[str, dict[str, list[Response]]],
    metric: str,
    n: int,
    samples: int = 3,
    max_chars: int = 800,
) -> list[dict]:
    """The ``n`` prompts (seen by >= 2 methods) with the largest spread (max - min) of ``metric``."""
    by_prompt: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], {})[r["method"]] = r
    scored = []
    for pid, per in by_prompt.items():
        vals = {m: r.get(metric) for m, r in per.items() if r.get(metric) is not None}
        if len(vals) >= 2:
            scored.append((max(vals.values()) - min(vals.values()), pid))
    scored.sort(key=lambda t: (-t[0], t[1]))
    keep = (
        "n_responses",
        "n_success",
        "self_bleu4",
        "pairwise_text_distance",
        "distinct2",
        "unique_response_ratio",
        "unique_code_ratio",
        "ast_node_jaccard_distance",
        f"{metric}",
    )
    out = []
    for spread, pid in scored[:n]:
        methods = {}
        prompt = ""
        for m, r in by_prompt[pid].items():
            group = data[m][pid]
            prompt = prompt or group[0].prompt
            methods[m] = {
                "metrics": {k: r.get(k) for k in dict.fromkeys(keep) if k in r}
                | {k: v for k, v in r.items() if k.startswith("pass@")},
                "samples": [
                    {
                        "response_id": x.response_id,
                        "success": x.success,
                        "reward": x.reward,
                        "text": x.text[:max_chars] + ("…" if len(x.text) > max_chars else ""),
                    }
                    for x in group[:samples]
                ],
            }
        out.append(
            {"prompt_id": pid, "case_metric": metric, "spread": spread, "prompt": prompt[:2000], "methods": methods}
        )
    return out


def _clean(v):
    """NaN/inf -> None, recursively (the outputs are strict JSON)."""
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _write_jsonl(path: Path, rows) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(_clean(row), ensure_ascii=False, allow_nan=False) + "\n")


def _write_csv(path: Path, summary: dict) -> None:
    names = summary["metric_names"]
    header = ["method", "n_prompts", "n_responses"]
    for m in names:
        header += [f"{m}_mean", f"{m}_std", f"{m}_count"]
    header += [
        "corr_pairwise_distance_passk_pearson",
        "corr_pairwise_distance_passk_spearman",
        "corr_success_pairwise_distance_passk_pearson",
        "corr_success_pairwise_distance_passk_spearman",
        "corr_k",
    ]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for method in summary["methods"]:
            e = summary["per_method"][method]
            row = [method, e["n_prompts"], e["n_responses"]]
            for m in names:
                s = e["metrics"][m]
                row += [
                    "" if s["mean"] is None else f"{s['mean']:.6g}",
                    "" if s["std"] is None else f"{s['std']:.6g}",
                    s["count"],
                ]
            for key in ("corr_pairwise_distance_passk", "corr_success_pairwise_distance_passk"):
                for stat in ("pearson", "spearman"):
                    v = e[key][stat]
                    row.append("" if v is None else f"{v:.6g}")
            row.append(e["corr_pairwise_distance_passk"]["k"])
            w.writerow(row)


def run_pipeline(
    run_specs: list[str],
    *,
    task: str = "code",
    ks: Sequence[int] = (1, 2, 4, 8),
    output_dir: str | Path = "diversity_outputs",
    intersect: bool = False,
    max_prompts: int | None = None,
    max_responses: int | None = None,
    min_responses: int = 2,
    success_threshold: float = 1.0,
    seed: int = 42,
    num_case_studies: int = 5,
    case_metric: str = "pairwise_text_distance",
    num_bootstrap: int = 1000,
    workers: int | None = None,
    log=print,
) -> dict:
    if task not in TASKS:
        raise DiversityError(f"--task must be one of {TASKS}, got {task!r}")
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise DiversityError(f"--ks must be positive integers, got {ks}")
    if min_responses < 1:
        raise DiversityError("--min-responses-per-prompt must be >= 1")
    if max_responses is not None and max_responses < min_responses:
        raise DiversityError(
            f"--max-responses-per-prompt ({max_responses}) < --min-responses-per-prompt ({min_responses})"
        )
    if workers is not None and workers < 1:
        raise DiversityError("--workers must be >= 1")
    if num_bootstrap < 0:
        raise DiversityError("--num-bootstrap must be >= 0")
    if max_prompts is not None and max_prompts < 1:
        raise DiversityError("--max-prompts must be >= 1")
    specs = [parse_run_spec(s) for s in run_specs]
    if not specs:
        raise DiversityError("give at least one --run NAME=PATH")
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise DiversityError(f"--run names must be unique, got {names}")
    if case_metric not in diversity_metric_names(task) + [f"pass@{k}" for k in ks]:
        raise DiversityError(f"--case-metric {case_metric!r} is not a metric of task {task!r}")

    runs = [load_run(n, p, success_threshold) for n, p in specs]
    for run in runs:
        log(f"[diversity] {run.name}: {run.format} {run.path}: {len(run.prompts)} prompts, {run.n_responses} responses")
    data, sel = select(
        runs,
        intersect=intersect,
        max_prompts=max_prompts,
        max_responses=max_responses,
        min_responses=min_responses,
        seed=seed,
    )

    jobs = [(name, pid, group) for name in names for pid, group in data[name].items()]
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(workers, len(jobs)))
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(
                pool.map(
                    _prompt_metrics_job,
                    [(g, task, ks) for _, _, g in jobs],
                    chunksize=max(1, len(jobs) // (workers * 8)),
                )
            )
    else:
        results = [prompt_metrics(g, task, ks) for _, _, g in jobs]
    rows = [
        {"method": name, "prompt_id": pid, "data_source": group[0].data_source, **res}
        for (name, pid, group), res in zip(jobs, results)
    ]
    for name in names:
        log(f"[diversity] {name}: metrics of {len(data[name])} prompts")
    largest = max(r["n_responses"] for r in rows)
    too_big = [k for k in ks if k > largest]
    if too_big:
        print(
            f"[diversity] warning: k={too_big} exceed every group's size ({largest}); pass@k is undefined there",
            file=sys.stderr,
        )

    summary = summarize(rows, names, task, ks, num_bootstrap)
    summary["config"] = {
        "runs": dict(specs),
        "task": task,
        "ks": ks,
        "intersect_prompts": intersect,
        "max_prompts": max_prompts,
        "max_responses_per_prompt": max_responses,
        "min_responses_per_prompt": min_responses,
        "success_threshold": success_threshold,
        "seed": seed,
        "case_metric": case_metric,
        "num_bootstrap": num_bootstrap,
        "bleu": "nltk sentence_bleu, weights 4x0.25, SmoothingFunction().method2, "
        "tokens = identifiers | digit runs | single symbols",
    }
    summary["inputs"] = {r.name: {"path": r.path, "format": r.format} for r in runs}
    summary["selection"] = sel

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "per_prompt.jsonl", rows)
    cases = case_studies(rows, data, case_metric, num_case_studies)
    if not cases and len(names) > 1:
        log(f"[diversity] no case study: no prompt has {case_metric} for two or more methods")
    _write_jsonl(out / "case_studies.jsonl", cases)
    (out / "summary.json").write_text(
        json.dumps(_clean(summary), indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
    )
    _write_csv(out / "summary.csv", summary)
    log(
        f"[diversity] wrote {out}/summary.json, summary.csv, per_prompt.jsonl ({len(rows)} rows), "
        f"case_studies.jsonl ({len(cases)})"
    )
    return summary
