"""Reading a method's responses: ``candidate_responses.jsonl`` or the trainer's rollout dumps.

A run path may be
- a ``candidate_responses.jsonl`` file of ``analysis/prepare_rollout_dataset.py`` (fields ``prompt_id``,
  ``response_id``, ``prompt``, ``response_text``, ``reward``, ``success``, ...), or a directory holding one;
- a rollout dump ``<step>.jsonl`` of the trainer (``trainer/rollout_io.py``: ``input``, ``output``,
  ``score``, ``step``, ``data_source``, ...), or a ``rollout_data_dir`` of them (all steps, merged).

Dump rows are grouped by ``prompt_id = sha1(input)[:16]`` (the prepare script's id, so the ids of both
formats agree and are stable across steps); ``response_id = {prompt_id}_r{k}`` numbers a prompt's
responses in step order, then file order; ``success = score >= success_threshold``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DiversityError", "Response", "RunData", "prompt_id_of", "load_run", "parse_run_spec"]

CANDIDATES_FILE = "candidate_responses.jsonl"
_STEP_FILE = re.compile(r"^(\d+)\.jsonl$")


class DiversityError(Exception):
    """Bad input; ``str(exc)`` is the one-line message for the user."""


@dataclass
class Response:
    prompt_id: str
    response_id: str
    prompt: str
    text: str
    reward: float
    success: bool
    data_source: str = ""
    step: int | None = None


@dataclass
class RunData:
    name: str
    path: str
    format: str  # "candidates" | "rollout_dump"
    prompts: dict[str, list[Response]] = field(default_factory=dict)  # insertion-ordered

    @property
    def n_responses(self) -> int:
        return sum(len(v) for v in self.prompts.values())


def prompt_id_of(prompt: str) -> str:
    """``sha1(prompt text, utf-8)[:16]`` (hex) — the analysis pipeline's prompt id."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:16]


def parse_run_spec(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise DiversityError(f"--run expects NAME=PATH, got {spec!r}")
    return name.strip(), path.strip()


def _read_jsonl(path: Path):
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DiversityError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DiversityError(f"{path}:{lineno}: expected a JSON object per line")
            yield lineno, row


def _first_row(path: Path) -> dict | None:
    for _, row in _read_jsonl(path):
        return row
    return None


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "t")
    return bool(value)


def _load_candidates(path: Path, run: RunData, success_threshold: float) -> None:
    for lineno, row in _read_jsonl(path):
        if "response_text" not in row:
            raise DiversityError(f"{path}:{lineno}: a candidates row needs 'response_text'")
        prompt = str(row.get("prompt", ""))
        pid = str(row.get("prompt_id") or prompt_id_of(prompt))
        reward = float(row.get("reward", 0.0) or 0.0)
        success = _as_bool(row["success"]) if row.get("success") is not None else reward >= success_threshold
        group = run.prompts.setdefault(pid, [])
        rid = str(row.get("response_id") or f"{pid}_r{len(group)}")
        step = row.get("step")
        group.append(
            Response(
                pid,
                rid,
                prompt,
                str(row["response_text"] or ""),
                reward,
                success,
                str(row.get("data_source", "") or ""),
                int(step) if step is not None else None,
            )
        )


def _load_dump_files(files: list[Path], run: RunData, success_threshold: float) -> None:
    for path in files:
        for lineno, row in _read_jsonl(path):
            if "input" not in row or "output" not in row:
                raise DiversityError(f"{path}:{lineno}: a rollout-dump row needs 'input' and 'output'")
            prompt = str(row["input"])
            pid = prompt_id_of(prompt)
            try:
                reward = float(row.get("score", 0.0) or 0.0)
            except (TypeError, ValueError):
                raise DiversityError(f"{path}:{lineno}: 'score' is not a number: {row.get('score')!r}") from None
            group = run.prompts.setdefault(pid, [])
            step = row.get("step")
            group.append(
                Response(
                    pid,
                    f"{pid}_r{len(group)}",
                    prompt,
                    str(row["output"] or ""),
                    reward,
                    reward >= success_threshold,
                    str(row.get("data_source", "") or ""),
                    int(step) if step is not None else None,
                )
            )


def _step_files(directory: Path) -> list[Path]:
    found = []
    for p in directory.iterdir():
        m = _STEP_FILE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def load_run(name: str, path: str | Path, success_threshold: float = 1.0) -> RunData:
    """Load one method's responses (format detected from the path and the first row)."""
    p = Path(path)
    if not p.exists():
        raise DiversityError(f"run {name!r}: {p} does not exist")
    if p.is_dir():
        if (p / CANDIDATES_FILE).is_file():
            run = RunData(name, str(p), "candidates")
            _load_candidates(p / CANDIDATES_FILE, run, success_threshold)
        else:
            files = _step_files(p)
            if not files:
                raise DiversityError(
                    f"run {name!r}: {p} holds neither {CANDIDATES_FILE} nor <step>.jsonl rollout dumps"
                )
            run = RunData(name, str(p), "rollout_dump")
            _load_dump_files(files, run, success_threshold)
    else:
        first = _first_row(p)
        if first is None:
            raise DiversityError(f"run {name!r}: {p} is empty")
        if "response_text" in first:
            run = RunData(name, str(p), "candidates")
            _load_candidates(p, run, success_threshold)
        elif "input" in first and "output" in first:
            run = RunData(name, str(p), "rollout_dump")
            _load_dump_files([p], run, success_threshold)
        else:
            raise DiversityError(
                f"run {name!r}: {p}: rows have neither 'response_text' (candidates) nor 'input'/'output' (rollout dump)"
            )
    if not run.prompts:
        raise DiversityError(f"run {name!r}: {p} has no responses")
    return run
