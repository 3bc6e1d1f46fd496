"""The diversity pipeline: input formats, prompt selection, outputs and plots, and end to end on the
rollout dumps of a short embedded-default training run (``run_diversity.sh``)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mopd.diversity.io import DiversityError, load_run, prompt_id_of
from mopd.diversity.pipeline import run_pipeline, select

ROOT = Path(__file__).resolve().parents[2]
PNGS = ("passk_curve.png", "method_diversity_bars.png", "diversity_vs_passk.png", "success_diversity_vs_passk.png")
CODES = [
    "def f(x):\n    return x + 1\n",
    "def f(x):\n    # one more\n    return x+1\n",
    "def f(x):\n    y = x\n    y += 1\n    return y\n",
    "def f(x):\n    return sum([x, 1])\n",
    "def f(x) return x",  # does not parse
    "f = lambda x: x + 1\n",
]


def _write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _candidates(path: Path, n_prompts: int, n_resp: int, pool: list[str], seed: int, p_success: float) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        pid = prompt_id_of(f"Write f number {p}")
        for r in range(n_resp):
            ok = bool(rng.random() < p_success)
            code = pool[int(rng.integers(len(pool)))]
            rows.append(
                {
                    "prompt_id": pid,
                    "response_id": f"{pid}_r{r}",
                    "prompt": f"Write f number {p}",
                    "response_text": f"Solution:\n```python\n{code}```\n",
                    "reward": float(ok),
                    "success": ok,
                    "difficulty_bucket": "medium",
                }
            )
    return _write_jsonl(path, rows)


def _dump_row(prompt: str, output: str, score: float, step: int) -> dict:
    return {
        "input": prompt,
        "output": output,
        "gts": "1",
        "score": score,
        "step": step,
        "uid": "0",
        "data_source": "toy",
        "acc": score,
        "pred": "",
        "feedback": "",
    }


# ----------------------------------------------------------------------------------------- reading


def test_load_candidates_file_and_directory(tmp_path):
    path = _candidates(tmp_path / "c" / "candidate_responses.jsonl", 3, 4, CODES, 0, 0.5)
    for src in (path, path.parent):
        run = load_run("m", src)
        assert run.format == "candidates"
        assert len(run.prompts) == 3 and run.n_responses == 12
        group = next(iter(run.prompts.values()))
        assert [r.response_id for r in group] == [f"{group[0].prompt_id}_r{i}" for i in range(4)]
        assert all(r.success == (r.reward == 1.0) for r in group)


def test_load_rollout_dumps_grouped_by_sha1_of_input(tmp_path):
    d = tmp_path / "rollouts"
    p1, p2 = "<|im_start|>user\nWhat is 1+1?<|im_end|>\n", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    _write_jsonl(d / "1.jsonl", [_dump_row(p1, "2", 1.0, 1), _dump_row(p1, "3", 0.0, 1), _dump_row(p2, "4", 1.0, 1)])
    _write_jsonl(d / "2.jsonl", [_dump_row(p1, "two", 0.5, 2)])
    _write_jsonl(d / "10.jsonl", [_dump_row(p1, "11", 0.0, 10)])  # numeric step order, not lexicographic
    (d / "notes.txt").write_text("ignored")
    run = load_run("m", d)
    assert run.format == "rollout_dump"
    pid1 = hashlib.sha1(p1.encode("utf-8")).hexdigest()[:16]
    assert list(run.prompts) == [pid1, hashlib.sha1(p2.encode()).hexdigest()[:16]]
    g = run.prompts[pid1]
    assert [r.text for r in g] == ["2", "3", "two", "11"]
    assert [r.step for r in g] == [1, 1, 2, 10]
    assert [r.response_id for r in g] == [f"{pid1}_r{i}" for i in range(4)]
    assert [r.success for r in g] == [True, False, False, False]  # threshold 1.0
    assert [r.success for r in load_run("m", d, success_threshold=0.5).prompts[pid1]] == [True, False, True, False]
    single = load_run("m", d / "1.jsonl")
    assert single.format == "rollout_dump" and single.n_responses == 3 and g[0].data_source == "toy"


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(DiversityError, match="does not exist"):
        load_run("m", tmp_path / "nope")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DiversityError, match="empty"):
        load_run("m", tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"input": "a", "output": "b"}\n{oops\n')
    with pytest.raises(DiversityError, match=r"bad.jsonl:2: not valid JSON"):
        load_run("m", tmp_path / "bad.jsonl")
    _write_jsonl(tmp_path / "other.jsonl", [{"foo": 1}])
    with pytest.raises(DiversityError, match="neither"):
        load_run("m", tmp_path / "other.jsonl")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DiversityError, match="neither"):
        load_run("m", tmp_path / "emptydir")


# --------------------------------------------------------------------------------------- selection


def test_select_caps_drops_intersects_and_samples_the_same_prompts(tmp_path):
    a = load_run("a", _candidates(tmp_path / "a.jsonl", 10, 6, CODES, 1, 0.5))
    rows = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    pids = list(dict.fromkeys(r["prompt_id"] for r in rows))
    # b: prompts 2..9 of a, plus one of its own; prompt 9 has only one response
    b_rows = [r for r in rows if r["prompt_id"] in pids[2:9]] + [r for r in rows if r["prompt_id"] == pids[9]][:1]
    b_rows.append(dict(rows[0], prompt_id="only_in_b", response_id="only_in_b_r0"))
    b_rows.append(dict(rows[1], prompt_id="only_in_b", response_id="only_in_b_r1"))
    b = load_run("b", _write_jsonl(tmp_path / "b.jsonl", b_rows))

    data, info = select([a, b], intersect=True, max_prompts=None, max_responses=4, min_responses=2, seed=0)
    assert set(data["a"]) == set(data["b"]) == set(pids[2:9])
    assert all(len(g) == 4 for g in data["a"].values())
    assert [r.response_id for r in data["a"][pids[2]]] == [f"{pids[2]}_r{i}" for i in range(4)]  # the first M
    assert info["per_method"]["b"]["prompts_below_min_responses"] == 1

    s1, _ = select([a, b], intersect=True, max_prompts=3, max_responses=None, min_responses=2, seed=7)
    s2, _ = select([a, b], intersect=True, max_prompts=3, max_responses=None, min_responses=2, seed=7)
    assert set(s1["a"]) == set(s1["b"]) == set(s2["a"]) and len(s1["a"]) == 3
    union, _ = select([a, b], intersect=False, max_prompts=None, max_responses=None, min_responses=2, seed=0)
    assert "only_in_b" in union["b"] and pids[0] in union["a"]
    c = load_run("c", _write_jsonl(tmp_path / "c.jsonl", [dict(rows[0], prompt_id="x"), dict(rows[1], prompt_id="x")]))
    with pytest.raises(DiversityError, match="share no prompt"):
        select([a, c], intersect=True, max_prompts=None, max_responses=None, min_responses=2, seed=0)


# ----------------------------------------------------------------------------- outputs and plots


def _run_cli(*args, env=None, cwd=ROOT):
    e = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    e.update(env or {})
    return subprocess.run(list(args), cwd=cwd, env=e, capture_output=True, text=True, timeout=300)


def _check_pngs(directory: Path) -> None:
    import matplotlib.image as mpimg

    for name in PNGS:
        path = directory / name
        assert path.is_file(), name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(path)
        assert img.shape[0] >= 500 and img.shape[1] >= 700, (name, img.shape)
        assert float(img[..., :3].std()) > 0.05, f"{name} looks blank"


def test_compute_and_plot_on_candidates(tmp_path):
    a = _candidates(tmp_path / "a" / "candidate_responses.jsonl", 12, 8, CODES, 1, 0.5)
    b = _candidates(tmp_path / "b.jsonl", 12, 8, CODES[:2], 2, 0.3)  # two spellings of one solution
    out = tmp_path / "out"
    r = _run_cli(
        sys.executable,
        "diversity/compute_metrics.py",
        "--run",
        f"diverse={a.parent}",
        "--run",
        f"narrow={b}",
        "--task",
        "code",
        "--ks",
        "1",
        "2",
        "4",
        "8",
        "--intersect-prompts",
        "--max-prompts",
        "10",
        "--max-responses-per-prompt",
        "8",
        "--seed",
        "3",
        "--num-bootstrap",
        "200",
        "--output-dir",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "per_prompt.jsonl").read_text().splitlines()]
    assert summary["methods"] == ["diverse", "narrow"] and summary["ks"] == [1, 2, 4, 8]
    assert len(rows) == 20 and {r["method"] for r in rows} == {"diverse", "narrow"}

    # aggregation against numpy / scipy on the per-prompt rows
    for method in summary["methods"]:
        mrows = [x for x in rows if x["method"] == method]
        e = summary["per_method"][method]
        assert e["n_prompts"] == 10 and e["n_responses"] == 80
        for metric in (
            "self_bleu4",
            "distinct2",
            "unique_code_ratio",
            "ast_node_jaccard_distance",
            "pass@4",
            "success_distinct2",
        ):
            vals = np.array([x[metric] for x in mrows if x[metric] is not None])
            assert e["metrics"][metric]["mean"] == pytest.approx(vals.mean())
            assert e["metrics"][metric]["std"] == pytest.approx(vals.std(ddof=0))
            assert e["metrics"][metric]["count"] == len(vals)
        both = [(x["pairwise_text_distance"], x["pass@8"]) for x in mrows]
        corr = e["corr_pairwise_distance_passk"]
        if corr["pearson"] is not None:
            assert corr["pearson"] == pytest.approx(stats.pearsonr(*zip(*both)).statistic)
            assert corr["spearman"] == pytest.approx(stats.spearmanr(*zip(*both)).statistic)
        assert e["passk_curve"]["1"] == pytest.approx(np.mean([x["n_success"] / x["n_responses"] for x in mrows]))
    d, n = summary["per_method"]["diverse"]["metrics"], summary["per_method"]["narrow"]["metrics"]
    assert d["unique_code_ratio"]["mean"] > n["unique_code_ratio"]["mean"]
    assert n["unique_code_ratio"]["mean"] == pytest.approx(1 / 8)  # both spellings normalise to one code
    assert d["ast_node_jaccard_distance"]["mean"] > n["ast_node_jaccard_distance"]["mean"] == 0.0
    assert d["self_bleu4"]["mean"] < n["self_bleu4"]["mean"]

    with (out / "summary.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [t["method"] for t in table] == ["diverse", "narrow"]
    for t in table:
        for metric in ("distinct2", "pass@8", "self_bleu4"):
            s = summary["per_method"][t["method"]]["metrics"][metric]
            assert float(t[f"{metric}_mean"]) == pytest.approx(s["mean"], rel=1e-5)
            assert float(t[f"{metric}_std"]) == pytest.approx(s["std"], rel=1e-5, abs=1e-9)

    cases = [json.loads(x) for x in (out / "case_studies.jsonl").read_text().splitlines()]
    assert 1 <= len(cases) <= 5
    spreads = [c["spread"] for c in cases]
    assert spreads == sorted(spreads, reverse=True)
    top = cases[0]
    vals = [top["methods"][m]["metrics"]["pairwise_text_distance"] for m in ("diverse", "narrow")]
    assert top["spread"] == pytest.approx(max(vals) - min(vals))
    assert top["methods"]["diverse"]["samples"] and top["prompt"].startswith("Write f number")

    r = _run_cli(sys.executable, "diversity/plot_metrics.py", "--input", str(out), "--output-dir", str(out / "plots"))
    assert r.returncode == 0, r.stderr
    _check_pngs(out / "plots")


def test_run_pipeline_rejects_bad_arguments(tmp_path):
    a = _candidates(tmp_path / "a.jsonl", 2, 2, CODES, 0, 0.5)
    for kwargs, msg in [
        (dict(run_specs=["noequals"]), "NAME=PATH"),
        (dict(run_specs=[f"a={a}", f"a={a}"]), "unique"),
        (dict(run_specs=[f"a={a}"], task="prose"), "task"),
        (dict(run_specs=[f"a={a}"], ks=[0, 1]), "positive"),
        (dict(run_specs=[f"a={a}"], task="text", case_metric="ast_node_jaccard_distance"), "case-metric"),
        (dict(run_specs=[f"a={a}"], max_responses=1), "max-responses"),
    ]:
        with pytest.raises(DiversityError, match=msg):
            run_pipeline(output_dir=tmp_path / "o", log=lambda *_: None, **kwargs)


def test_clis_fail_with_one_line(tmp_path):
    r = _run_cli(
        sys.executable,
        "diversity/compute_metrics.py",
        "--run",
        f"a={tmp_path / 'missing'}",
        "--output-dir",
        str(tmp_path / "o"),
    )
    assert r.returncode == 2 and "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _run_cli(sys.executable, "diversity/plot_metrics.py", "--input", str(tmp_path))
    assert r.returncode == 2 and "summary.json" in r.stderr
    env = {k: "" for k in ("SDPO_CANDIDATES", "MOPD_CANDIDATES", "BASE_CANDIDATES")}
    r = _run_cli("bash", "diversity/run_diversity.sh", env=env)
    assert r.returncode == 2 and "at least one" in r.stderr


# ------------------------------------------------------------------- end to end on a training run


@pytest.mark.slow
def test_run_diversity_on_rollout_dumps_of_a_short_training_run(tmp_path):
    what = "embedded default (datasets/embedded)"
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "trainer.main",
        "--config-name",
        "mopd",
        "trainer.backend=local",
        "trainer.total_training_steps=2",
        "data.train_batch_size=8",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.logger=[jsonl]",
        f"trainer.default_local_dir={run_dir}",
        f"trainer.rollout_data_dir={run_dir / 'rollouts'}",
    ]
    r = _run_cli(*cmd, env={"TOKENIZERS_PARALLELISM": "false"})
    assert r.returncode == 0, f"{what}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    dumps = run_dir / "rollouts"
    assert (dumps / "1.jsonl").is_file() and (dumps / "2.jsonl").is_file()

    out = tmp_path / "diversity"
    env = {
        "BASE_CANDIDATES": str(dumps / "1.jsonl"),
        "MOPD_CANDIDATES": str(dumps / "2.jsonl"),
        "SDPO_CANDIDATES": "",
        "OUTPUT_DIR": str(out),
        "TASK": "text",
        "KS": "1 2 4 8",
        "INTERSECT": "0",
        "PYTHON": sys.executable,
    }
    r = _run_cli("bash", "diversity/run_diversity.sh", env=env)
    assert r.returncode == 0, f"{what}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "text" and summary["methods"] == ["MOPD", "base"]
    rows = [json.loads(x) for x in (out / "per_prompt.jsonl").read_text().splitlines()]
    for method in ("MOPD", "base"):
        e = summary["per_method"][method]
        assert e["n_prompts"] == 8 and e["n_responses"] == 64  # 8 prompts x 8 rollouts per step
        curve = [e["passk_curve"][k] for k in ("1", "2", "4", "8")]
        assert all(0.0 <= v <= 1.0 for v in curve) and curve == sorted(curve)
        for metric in ("self_bleu4", "pairwise_text_distance", "distinct1", "distinct2", "unique_response_ratio"):
            s = e["metrics"][metric]
            if s["mean"] is not None:
                assert 0.0 <= s["mean"] <= 1.0 and s["std"] >= 0.0
        assert "unique_code_ratio" not in e["metrics"]  # text task
        assert sum(1 for x in rows if x["method"] == method) == 8
    assert e["metrics"]["pairwise_text_distance"]["count"] == 8
    with (out / "summary.csv").open() as f:
        assert [t["method"] for t in csv.DictReader(f)] == ["MOPD", "base"]
    assert (out / "case_studies.jsonl").is_file()
    _check_pngs(out)
    # the whole rollout dir is one run too (steps merged by prompt id)
    merged = load_run("all", dumps)
    assert merged.n_responses == 128 and len(merged.prompts) <= 16

    # the analysis pipeline's candidates file of the same dumps gives the same prompts and metrics
    prepare = ROOT / "analysis" / "prepare_rollout_dataset.py"
    if prepare.is_file():
        r = _run_cli(
            sys.executable,
            str(prepare),
            "--input",
            str(dumps),
            "--output-dir",
            str(tmp_path / "prep"),
            "--max-responses-per-prompt",
            "16",
        )
        assert r.returncode == 0, r.stderr[-3000:]
        both = tmp_path / "both"
        r = _run_cli(
            sys.executable,
            "diversity/compute_metrics.py",
            "--run",
            f"cand={tmp_path / 'prep'}",
            "--run",
            f"dump={dumps}",
            "--task",
            "text",
            "--intersect-prompts",
            "--workers",
            "1",
            "--output-dir",
            str(both),
        )
        assert r.returncode == 0, r.stderr[-3000:]
        s = json.loads((both / "summary.json").read_text())["per_method"]
        assert s["cand"]["n_prompts"] == s["dump"]["n_prompts"] == len(merged.prompts)
        for metric in ("distinct1", "distinct2", "unique_response_ratio", "pass@8"):  # order-invariant
            assert s["cand"]["metrics"][metric]["mean"] == pytest.approx(s["dump"]["metrics"][metric]["mean"])
