"""Rollout dumps: ``<dir>/<step>.jsonl``, one line per rollout, written atomically.

Fields (what the analysis pipeline reads): ``input`` (the rendered chat prompt), ``output`` (the
response text), ``gts`` (ground truth), ``score``, ``step``, ``uid``, ``data_source``, and every extra
field the verifier returned (``feedback``, ``acc``, ``pred``, ...). Training dumps also carry
``teacher_input`` (the rendered teacher prompt) and ``distillation_mask`` when self-distillation is on.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _rows(batch: dict, items: dict, tokenizer, step: int, n: int):
    prompts = tokenizer.batch_decode(items["input_ids"], skip_special_tokens=False)
    pad = tokenizer.pad_token
    for i, text in enumerate(batch["response_text"]):
        p = i // n
        extra = batch["reward_extra"][i]
        row = {
            "input": prompts[p].replace(pad, "") if pad else prompts[p],
            "output": text,
            "gts": items["ground_truth"][p],
            "score": float(batch["scores"][i]),
            "step": step,
            "uid": batch["uid"][i],
            "data_source": items["data_source"][p],
        }
        row.update({k: v for k, v in extra.items() if k not in row})
        if "teacher_messages" in batch:
            row["teacher_input"] = batch["teacher_messages"][i][-1]["content"]
            row["distillation_mask"] = float(batch["distillation_mask"][i])
        yield row


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def dump_rollouts(path: Path, batch: dict, items: dict, tokenizer, step: int, n: int) -> None:
    _write_jsonl(path, _rows(batch, items, tokenizer, step, n))


def dump_rollouts_multi(path: Path, parts, tokenizer, step: int, n: int) -> None:
    _write_jsonl(path, (row for batch, items in parts for row in _rows(batch, items, tokenizer, step, n)))
