"""trainer.prompt_dataset: tokenized prompt dataset, resumable sampler, left-padded collation."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mopd.embedded.tiny_tokenizer import load_tiny_tokenizer
from trainer.prompt_dataset import PromptDataset, StatefulSampler, collate_prompts


@pytest.fixture(scope="module")
def tok():
    return load_tiny_tokenizer()


def _row(i, question=None, index=True):
    row = {
        "data_source": "test_exact",
        "prompt": [{"role": "user", "content": question or f"What is {i}+{i}?"}],
        "reward_model": {"style": "rule", "ground_truth": str(2 * i)},
    }
    if index:
        row["extra_info"] = {"split": "train", "index": 100 + i}
    return row


def _write(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _render_len(tok, row):
    text = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    return len(tok(text, add_special_tokens=False)["input_ids"])


# --- PromptDataset ----------------------------------------------------------------------------------


def test_items_are_rendered_and_tokenized(tmp_path, tok):
    path = _write(tmp_path / "train.parquet", [_row(i) for i in range(4)])
    ds = PromptDataset(path, tok, max_prompt_length=256)
    assert len(ds) == 4 and ds.num_filtered == 0
    item = ds[2]
    assert set(item) == {"index", "uid", "messages", "prompt_ids", "data_source", "ground_truth", "extra_info"}
    assert item["index"] == 2 and item["uid"] == "102"
    assert item["messages"] == [{"role": "user", "content": "What is 2+2?"}]
    assert item["data_source"] == "test_exact" and item["ground_truth"] == "4"
    assert item["extra_info"] == {"split": "train", "index": 102}
    expected = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(item["prompt_ids"]) == expected
    assert item["prompt_ids"] == tok(expected, add_special_tokens=False)["input_ids"]


def test_chat_template_kwargs_are_passed(tmp_path, tok):
    path = _write(tmp_path / "train.parquet", [_row(0)])
    ds = PromptDataset(path, tok, max_prompt_length=256, apply_chat_template_kwargs={"enable_thinking": False})
    assert tok.decode(ds[0]["prompt_ids"]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_uid_falls_back_to_position_and_multiple_files(tmp_path, tok):
    a = _write(tmp_path / "a.parquet", [_row(i, index=False) for i in range(2)])
    b = _write(tmp_path / "b.parquet", [_row(i) for i in range(3)])
    ds = PromptDataset([a, b], tok, max_prompt_length=256)
    assert [it["uid"] for it in ds.items] == ["0", "1", "100", "101", "102"]
    assert [it["index"] for it in ds.items] == [0, 1, 2, 3, 4]
    assert ds[0]["extra_info"] == {}


def test_uids_colliding_across_files_are_prefixed(tmp_path, tok):
    a = _write(tmp_path / "a.parquet", [_row(i) for i in range(2)])
    b = _write(tmp_path / "b.parquet", [_row(i) for i in range(2)])
    ds = PromptDataset([a, b], tok, max_prompt_length=256, key="data.val_files")
    assert [it["uid"] for it in ds.items] == ["0:100", "0:101", "1:100", "1:101"]


def test_repeated_index_in_one_file_is_an_error(tmp_path, tok):
    path = _write(tmp_path / "a.parquet", [_row(0), _row(1), _row(0)])
    with pytest.raises(ValueError, match=r"a.parquet rows 0 and 2 .*'100'"):
        PromptDataset(path, tok, max_prompt_length=256)


def test_overlong_prompts_filtered_with_warning(tmp_path, tok, capsys):
    rows = [_row(0), _row(1, question="x" * 300), _row(2), _row(3, question="y" * 400)]
    path = _write(tmp_path / "train.parquet", rows)
    limit = _render_len(tok, rows[0])
    ds = PromptDataset(path, tok, max_prompt_length=limit)
    assert ds.num_filtered == 2 and len(ds) == 2
    assert [it["uid"] for it in ds.items] == ["100", "102"] and [it["index"] for it in ds.items] == [0, 1]
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "dropped 2" in out and f"data.max_prompt_length={limit}" in out


def test_overlong_prompt_is_an_error_without_filtering(tmp_path, tok):
    rows = [_row(0), _row(1, question="x" * 300)]
    path = _write(tmp_path / "train.parquet", rows)
    with pytest.raises(ValueError) as info:
        PromptDataset(path, tok, max_prompt_length=64, filter_overlong_prompts=False)
    message = str(info.value)
    assert path in message and "row 1" in message
    assert f"{_render_len(tok, rows[1])} tokens" in message and "data.max_prompt_length=64" in message


def test_all_prompts_filtered_is_an_error(tmp_path, tok):
    path = _write(tmp_path / "train.parquet", [_row(0)])
    with pytest.raises(ValueError, match="no prompts left"):
        PromptDataset(path, tok, max_prompt_length=4)


def test_max_samples(tmp_path, tok):
    a = _write(tmp_path / "a.parquet", [_row(i) for i in range(3)])
    b = _write(tmp_path / "b.parquet", [_row(i) for i in range(3, 6)])
    ds = PromptDataset([a, b], tok, max_prompt_length=256, max_samples=4)
    assert [it["ground_truth"] for it in ds.items] == ["0", "2", "4", "6"]


def test_errors_from_the_reader_carry_the_key(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="^data.val_files: no such file"):
        PromptDataset(str(tmp_path / "missing.parquet"), tok, max_prompt_length=256, key="data.val_files")
    bad = _write(tmp_path / "bad.parquet", [{"data_source": "x", "prompt": [{"role": "user", "content": "q"}]}])
    with pytest.raises(ValueError, match="reward_model"):
        PromptDataset(bad, tok, max_prompt_length=256)


# --- StatefulSampler --------------------------------------------------------------------------------


def _epoch(sampler):
    return [list(b) for b in sampler]


def test_sampler_covers_each_epoch_once_and_is_deterministic():
    s = StatefulSampler(10, 3, seed=7)
    assert s.batches_per_epoch == len(s) == 3
    e0, e1 = _epoch(s), _epoch(s)
    assert len(e0) == 3 and all(len(b) == 3 for b in e0)
    assert len({i for b in e0 for i in b}) == 9 and e0 != e1
    assert s.state_dict() == {"epoch": 2, "position": 0}
    again = StatefulSampler(10, 3, seed=7)
    assert _epoch(again) == e0 and _epoch(again) == e1
    assert _epoch(StatefulSampler(10, 3, seed=8)) != e0
    # epoch e depends only on (seed, e)
    jumped = StatefulSampler(10, 3, seed=7)
    jumped.load_state_dict({"epoch": 1, "position": 0})
    assert _epoch(jumped) == e1


def test_sampler_resumes_exactly_mid_epoch():
    reference = StatefulSampler(11, 2, seed=3)  # 5 batches per epoch
    stream = [b for _ in range(3) for b in reference]

    s = StatefulSampler(11, 2, seed=3)
    taken = []
    for batch in s:
        taken.append(batch)
        if len(taken) == 1:
            break
    for batch in s:  # a new iteration continues the interrupted epoch
        taken.append(batch)
        if len(taken) == 2:
            break
    state = s.state_dict()
    assert state == {"epoch": 0, "position": 2}
    assert taken == stream[:2]

    restored = StatefulSampler(11, 2, seed=3)
    restored.load_state_dict(state)
    rest = [b for b in restored]
    assert rest == stream[2:5]  # exactly the remaining batches of epoch 0
    assert restored.state_dict() == {"epoch": 1, "position": 0}
    assert [b for _ in range(2) for b in restored] == stream[5:]


def test_sampler_resume_after_last_batch_of_epoch():
    s = StatefulSampler(6, 2, seed=0)
    it = iter(s)
    first = [next(it) for _ in range(3)]
    assert s.state_dict() == {"epoch": 0, "position": 3}
    restored = StatefulSampler(6, 2, seed=0)
    restored.load_state_dict(s.state_dict())
    assert _epoch(restored) == []
    assert restored.state_dict() == {"epoch": 1, "position": 0}
    reference = StatefulSampler(6, 2, seed=0)
    assert _epoch(reference) == first and _epoch(restored) == _epoch(reference)


def test_sampler_without_shuffle_and_drop_last():
    s = StatefulSampler(5, 2, shuffle=False, drop_last=False)
    assert s.batches_per_epoch == 3
    assert _epoch(s) == [[0, 1], [2, 3], [4]]
    assert StatefulSampler(5, 2, shuffle=False).batches_per_epoch == 2
    assert StatefulSampler(3, 5, drop_last=False).batches_per_epoch == 1


def test_sampler_errors():
    with pytest.raises(ValueError) as info:
        StatefulSampler(4, 8)
    assert "data.train_batch_size=8" in str(info.value) and "4 prompts" in str(info.value)
    with pytest.raises(ValueError):
        StatefulSampler(4, 0)
    s = StatefulSampler(4, 2)
    with pytest.raises(ValueError, match="epoch has 2 batches"):
        s.load_state_dict({"epoch": 0, "position": 3})


# --- collate_prompts --------------------------------------------------------------------------------


def test_collate_left_pads(tmp_path, tok):
    rows = [_row(0), _row(1, question="a much longer question, please"), _row(2, question="hi")]
    path = _write(tmp_path / "train.parquet", rows)
    ds = PromptDataset(path, tok, max_prompt_length=256)
    items = [ds[i] for i in range(3)]
    pad = tok.pad_token_id
    batch = collate_prompts(items, pad)
    lengths = [len(it["prompt_ids"]) for it in items]
    width = max(lengths)
    assert batch.input_ids.dtype == torch.long and batch.input_ids.shape == (3, width)
    for row, n in enumerate(lengths):
        assert batch.input_ids[row, width - n :].tolist() == items[row]["prompt_ids"]
        assert (batch.input_ids[row, : width - n] == pad).all()
        assert batch.attention_mask[row].tolist() == [0] * (width - n) + [1] * n
        assert batch.position_ids[row].tolist() == [0] * (width - n) + list(range(n))
    assert batch.uid == ["100", "101", "102"] and batch.index == [0, 1, 2]
    assert batch.ground_truth == ["0", "2", "4"] and batch.data_source == ["test_exact"] * 3
    assert batch.messages[2] == [{"role": "user", "content": "hi"}]
    assert batch.extra_info[0]["index"] == 100
    with pytest.raises(ValueError):
        collate_prompts([], pad)
    # Validation over 2 workers: the last prompt repeated; the scoring fields stay the real prompts'.
    assert batch.padded_to(3) is batch
    even = batch.padded_to(2)
    assert len(even) == 4 and even.uid == ["100", "101", "102", "102"] and even.ground_truth == batch.ground_truth
    for name in ("input_ids", "attention_mask", "position_ids"):
        assert torch.equal(getattr(even, name)[:3], getattr(batch, name))
        assert torch.equal(getattr(even, name)[3], getattr(batch, name)[2])
