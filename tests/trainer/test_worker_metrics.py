"""The driver's reduction of the workers' per-mini/micro-batch metric lists."""

from __future__ import annotations

import pytest

from trainer.fit_helpers import reduce_worker_metrics as _reduce_worker_metrics


def test_counts_of_work_are_summed_and_everything_else_averaged():
    per_rank = [
        {"actor/loss": [1.0, 3.0], "perf/student_tokens_run": [100.0, 50.0], "perf/teacher_tokens_run": [7.0]},
        {"actor/loss": [2.0], "perf/student_tokens_run": [25.0], "perf/teacher_tokens_run": [3.0], "actor/entropy": []},
    ]
    reduced = _reduce_worker_metrics(per_rank)
    assert reduced == {
        "actor/loss": pytest.approx(2.0),
        "perf/student_tokens_run": 175.0,
        "perf/teacher_tokens_run": 10.0,
    }
