"""Rollout dumps: ``<dir>/<step>.jsonl``, one line per rollout, written atomically.

Fields (what the analysis pipeline reads): ``input`` (the rendered chat prompt), ``output`` (the
response text), ``gts`` (ground truth), ``score``, ``step``, ``uid``, ``data_source``, and every extra
field the verifier returned (``feedback``, ``acc``, ``pred``, ...). Training dumps also carry
``teacher_input`` (the rendered teacher prompt) and ``distillation_mask`` when self-distillation is on.
"""

from __future__ import annotations

from pathlib import Path

from mopd.common.io import write_jsonl
from trainer.disk_space import raise_if_disk_full
from trainer.prompt_dataset import PromptBatch
from workers.rollout_batch import RolloutBatch


def _rows(batch: RolloutBatch, items: PromptBatch, tokenizer, step: int, n: int):
    prompts = tokenizer.batch_decode(items.input_ids, skip_special_tokens=False)
    pad = tokenizer.pad_token
    for i, text in enumerate(batch.response_text):
        p = i // n
        extra = batch.reward_extra[i]
        row = {
            "input": prompts[p].replace(pad, "") if pad else prompts[p],
            "output": text,
            "gts": items.ground_truth[p],
            "score": float(batch.scores[i]),
            "step": step,
            "uid": batch.uid[i],
            "data_source": items.data_source[p],
        }
        row.update({k: v for k, v in extra.items() if k not in row})
        if batch.teacher_messages is not None:
            row["teacher_input"] = batch.teacher_messages[i][-1]["content"]
            row["distillation_mask"] = float(batch.distillation_mask[i])
        yield row


def dump_rollouts(path: Path, batch: RolloutBatch, items: PromptBatch, tokenizer, step: int, n: int) -> None:
    _write(path, _rows(batch, items, tokenizer, step, n))


def dump_rollouts_multi(path: Path, parts, tokenizer, step: int, n: int) -> None:
    _write(path, (row for batch, items in parts for row in _rows(batch, items, tokenizer, step, n)))


def _write(path: Path, rows) -> None:
    try:
        write_jsonl(path, rows)  # atomic: a failed dump leaves no partial file
    except OSError as err:
        raise_if_disk_full(err, "rollout dump", path)
        raise
