"""mopd.common.rl_parquet: the RL parquet schema and its error messages."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mopd.common.rl_parquet import REQUIRED_COLUMNS, read_rl_parquet


def _row(i, **overrides):
    row = {
        "data_source": "test_exact",
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"What is {i}+{i}?"}],
        "ability": "arith",
        "reward_model": {"style": "rule", "ground_truth": str(2 * i)},
        "extra_info": {"split": "train", "index": str(i)},
    }
    row.update(overrides)
    return row


def _write(path, rows, schema=None):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def test_reads_rows_as_python_dicts(tmp_path):
    path = _write(tmp_path / "train.parquet", [_row(i) for i in range(3)])
    rows = read_rl_parquet(path)
    assert rows == [_row(i) for i in range(3)]
    assert REQUIRED_COLUMNS == ("data_source", "prompt", "reward_model")


def test_missing_file_names_key_and_path(tmp_path):
    missing = tmp_path / "nope.parquet"
    with pytest.raises(FileNotFoundError) as info:
        read_rl_parquet(missing)
    assert str(info.value) == f"data.train_files: no such file: {missing}"
    with pytest.raises(FileNotFoundError, match="^data.val_files: no such file"):
        read_rl_parquet(str(missing), key="data.val_files")


def test_not_parquet_names_file(tmp_path):
    bogus = tmp_path / "train.parquet"
    bogus.write_text("data_source,prompt\nx,y\n")
    with pytest.raises(ValueError) as info:
        read_rl_parquet(bogus)
    assert str(bogus) in str(info.value) and "parquet" in str(info.value)
    with pytest.raises(ValueError, match="directory"):
        read_rl_parquet(tmp_path)


@pytest.mark.parametrize("column", REQUIRED_COLUMNS)
def test_missing_column_names_file_column_and_present(tmp_path, column):
    rows = [{k: v for k, v in _row(i).items() if k != column} for i in range(2)]
    path = _write(tmp_path / "train.parquet", rows)
    with pytest.raises(ValueError) as info:
        read_rl_parquet(path)
    message = str(info.value)
    assert str(path) in message and repr(column) in message
    assert "columns present" in message and "'ability'" in message and "'extra_info'" in message


def test_empty_file(tmp_path):
    schema = pa.Table.from_pylist([_row(0)]).schema
    path = _write(tmp_path / "train.parquet", [], schema=schema)
    with pytest.raises(ValueError, match="has no rows") as info:
        read_rl_parquet(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": [{"role": "user", "content": None}]}, "prompt"),
        ({"prompt": [{"role": None, "content": "hi"}]}, "prompt"),
        ({"reward_model": {"style": "rule", "ground_truth": None}}, "reward_model"),
        ({"reward_model": None}, "reward_model"),
        ({"data_source": None}, "data_source"),
    ],
)
def test_bad_row_names_file_row_and_field(tmp_path, bad, field):
    rows = [_row(0), _row(1), _row(2, **bad)]
    path = _write(tmp_path / "train.parquet", rows)
    with pytest.raises(ValueError) as info:
        read_rl_parquet(path, key="data.val_files")
    message = str(info.value)
    assert message.startswith("data.val_files: ")
    assert str(path) in message and "row 2" in message and repr(field) in message


def test_prompt_as_plain_string_rejected(tmp_path):
    rows = [_row(0, prompt="What is 1+1?")]
    path = _write(tmp_path / "train.parquet", rows)
    with pytest.raises(ValueError, match=r"row 0 .*'prompt'.*non-empty list of \{role, content\}"):
        read_rl_parquet(path)


def test_reward_model_without_ground_truth_field(tmp_path):
    rows = [_row(0, reward_model={"style": "rule"})]
    path = _write(tmp_path / "train.parquet", rows)
    with pytest.raises(ValueError, match=r"row 0 .*'reward_model'.*ground_truth"):
        read_rl_parquet(path)
