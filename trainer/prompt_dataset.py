"""Dataset -> batches: tokenized prompts, a resumable sampler, and left-padded collation."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mopd.common.errors import DataError
from mopd.common.rl_parquet import read_rl_parquet
from mopd.core.reprompt import append_summary_instruction, position_ids_of


class PromptDataset:
    """The prompts of one or more RL parquet files, rendered with the chat template and tokenized.

    Item ``i``: {"index": i, "uid", "messages", "prompt_ids", "data_source", "ground_truth", "extra_info"}.
    ``uid`` is ``str(extra_info["index"])`` when the row has one, else ``str(i)``; it groups the rollouts
    of one prompt, so it must be unique: when several files reuse the same indices (two benchmarks both
    numbered from 0), every uid becomes ``"<file position>:<index>"``; a repeated index inside one file is
    an error.

    Prompts longer than ``max_prompt_length`` tokens are dropped (``num_filtered``, one warning line)
    when ``filter_overlong_prompts``, else they are an error. ``max_samples`` keeps the first that many
    prompts that fit. ``instruction`` (the summary instruction of ``summarize_solutions``) is appended to
    each prompt's last user message before templating: the stored ``messages`` carry it (the teacher's
    ``{prompt}`` then does too) and the length limit applies to the prompt as sent.
    """

    def __init__(
        self,
        files: str | os.PathLike | Sequence[str | os.PathLike],
        tokenizer,
        *,
        max_prompt_length: int,
        filter_overlong_prompts: bool = True,
        apply_chat_template_kwargs: dict | None = None,
        max_samples: int | None = None,
        key: str = "data.train_files",
        instruction: str | None = None,
    ):
        paths = [os.fspath(files)] if isinstance(files, (str, os.PathLike)) else [os.fspath(f) for f in files]
        if not paths:
            raise DataError(f"{key}: no files given")
        if max_prompt_length < 1:
            raise DataError(f"data.max_prompt_length must be >= 1, got {max_prompt_length}")
        if max_samples is not None and max_samples < 1:
            raise DataError(f"{key}: max_samples must be >= 1 or None, got {max_samples}")
        self.files, self.key = paths, key
        self.max_prompt_length = int(max_prompt_length)
        template_kwargs = dict(apply_chat_template_kwargs or {})

        self.items: list[dict] = []
        self.num_filtered = 0
        longest_dropped = 0
        item_files: list[int] = []  # file position of each kept item, for uid disambiguation
        for file_no, path in enumerate(paths):
            if max_samples is not None and len(self.items) >= max_samples:
                break
            rows = read_rl_parquet(path, key=key)
            for row_no, row in enumerate(rows):
                if max_samples is not None and len(self.items) >= max_samples:
                    break
                messages = row["prompt"]
                if instruction:
                    try:
                        messages = append_summary_instruction(messages, instruction)
                    except ValueError as err:
                        raise DataError(f"{key}: {path} row {row_no}: {err}") from None
                text = tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True, **template_kwargs
                )
                prompt_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
                if len(prompt_ids) > self.max_prompt_length:
                    if not filter_overlong_prompts:
                        raise DataError(
                            f"{key}: {path} row {row_no}: the prompt is {len(prompt_ids)} tokens, longer than "
                            f"data.max_prompt_length={self.max_prompt_length}; raise data.max_prompt_length or "
                            "set data.filter_overlong_prompts=true to drop such prompts"
                        )
                    self.num_filtered += 1
                    longest_dropped = max(longest_dropped, len(prompt_ids))
                    continue
                extra_info = dict(row.get("extra_info") or {})
                self.items.append(
                    {
                        "index": len(self.items),
                        "uid": None,  # set below, once all files are read
                        "messages": messages,
                        "prompt_ids": prompt_ids,
                        "data_source": row["data_source"],
                        "ground_truth": row["reward_model"]["ground_truth"],
                        "extra_info": extra_info,
                        "_source": (path, row_no),
                    }
                )
                item_files.append(file_no)

        if self.num_filtered:
            print(
                f"[PromptDataset] {key}: dropped {self.num_filtered} prompt(s) longer than "
                f"data.max_prompt_length={self.max_prompt_length} tokens (longest {longest_dropped}); "
                f"{len(self.items)} kept"
            )
        if not self.items:
            raise DataError(
                f"{key}: no prompts left: all {self.num_filtered} are longer than "
                f"data.max_prompt_length={self.max_prompt_length} tokens"
            )
        self._assign_uids(item_files)

    def _assign_uids(self, item_files: list[int]) -> None:
        raw = []
        seen: dict[tuple[int, str], int] = {}  # (file position, uid) -> row number
        for item, file_no in zip(self.items, item_files):
            index = item["extra_info"].get("index")
            uid = str(item["index"]) if index is None else str(index)
            path, row_no = item["_source"]
            previous = seen.setdefault((file_no, uid), row_no)
            if previous != row_no:
                raise DataError(
                    f"{self.key}: {path} rows {previous} and {row_no} both have uid {uid!r} (extra_info.index, "
                    "or the row's position where it has none); the uid identifies a prompt and groups its "
                    "rollouts, so give every row a unique extra_info.index"
                )
            raw.append(uid)
        collide = len(set(raw)) < len(raw)  # can only happen across files
        for item, file_no, uid in zip(self.items, item_files, raw):
            item["uid"] = f"{file_no}:{uid}" if collide else uid
            del item["_source"]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class StatefulSampler:
    """Batches of dataset indices, epoch after epoch, resumable mid-epoch.

    The order of epoch ``e`` is a pure function of (seed, e). Each ``iter()`` yields the batches left in
    the current epoch, then moves to the next epoch. ``position`` counts batches handed out in the current
    epoch, advanced as each batch is yielded, so a ``state_dict()`` taken after training on a batch resumes
    with the batch after it.
    """

    def __init__(self, num_items: int, batch_size: int, *, shuffle: bool = True, seed: int = 0, drop_last: bool = True):
        if num_items < 1:
            raise DataError(f"StatefulSampler: the dataset is empty (num_items={num_items})")
        if batch_size < 1:
            raise DataError(f"data.train_batch_size must be >= 1, got {batch_size}")
        if drop_last and batch_size > num_items:
            raise DataError(
                f"data.train_batch_size={batch_size} is larger than the dataset ({num_items} prompts), so no "
                "full batch can be formed; lower data.train_batch_size or use a larger dataset"
            )
        if not isinstance(seed, int) or seed < 0:
            raise DataError(f"data.seed must be an integer >= 0 (it fixes the shuffle order), got {seed!r}")
        self.num_items, self.batch_size = int(num_items), int(batch_size)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        self.position = 0

    @property
    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.num_items // self.batch_size
        return math.ceil(self.num_items / self.batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_items))
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        order = self.epoch_order(self.epoch)
        while self.position < self.batches_per_epoch:
            start = self.position * self.batch_size
            batch = order[start : start + self.batch_size]
            self.position += 1
            yield batch
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.batches_per_epoch:
            raise DataError(
                f"StatefulSampler: cannot resume at epoch {epoch}, batch {position}: an epoch has "
                f"{self.batches_per_epoch} batches (was the dataset or data.train_batch_size changed?)"
            )
        self.epoch, self.position = epoch, position


@dataclass
class PromptBatch:
    """B prompts of the dataset, left-padded (generation continues from the right edge): what the driver
    turns into the workers' request (``workers.rollout_batch.RolloutBatch``) and scores against."""

    input_ids: torch.Tensor  # long [B, P], left-padded with the pad id
    attention_mask: torch.Tensor  # long [B, P]
    position_ids: torch.Tensor  # long [B, P]: cumsum(attention_mask) - 1, clamped at 0
    uid: list  # B prompt ids (the group key of a prompt's rollouts)
    index: list  # B row indices in the dataset
    messages: list  # B chats as sent (the teacher prompt is built from them)
    data_source: list  # B names picking the verifier
    ground_truth: list  # B ground truths
    extra_info: list  # B dicts (or None) passed to the verifier

    def __len__(self) -> int:
        return len(self.uid)

    def padded_to(self, parts: int) -> PromptBatch:
        """The batch with its last prompt repeated until it splits evenly over ``parts`` workers (validation)."""
        extra = (-len(self)) % parts
        if not extra:
            return self

        def grow(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, x[-1:].repeat(extra, 1)])

        return dataclasses.replace(
            self,
            input_ids=grow(self.input_ids),
            attention_mask=grow(self.attention_mask),
            position_ids=grow(self.position_ids),
            uid=list(self.uid) + [self.uid[-1]] * extra,
        )


def collate_prompts(items: Sequence[dict], pad_token_id: int) -> PromptBatch:
    """Left-pad the prompts of ``items`` (so generation continues from the right edge) into one batch."""
    if not items:
        raise DataError("collate_prompts: no items")
    if pad_token_id is None:
        raise DataError("collate_prompts: the tokenizer has no pad token id")
    width = max(len(item["prompt_ids"]) for item in items)
    input_ids = torch.full((len(items), width), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        ids = item["prompt_ids"]
        if ids:
            input_ids[row, width - len(ids) :] = torch.as_tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
    position_ids = position_ids_of(attention_mask)
    lists = {
        name: [item[name] for item in items]
        for name in ("uid", "index", "messages", "data_source", "ground_truth", "extra_info")
    }
    return PromptBatch(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **lists)
