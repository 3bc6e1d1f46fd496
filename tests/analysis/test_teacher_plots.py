"""plot_teacher_metrics: both PNGs from a metrics file, including conditions with undefined values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mopd.analysis import metrics as M
from mopd.analysis import plots as P
from mopd.analysis.variants import CONDITION_NAMES

ROOT = Path(__file__).resolve().parents[2]


def synthetic_rows(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for k, condition in enumerate(CONDITION_NAMES[:5] + [CONDITION_NAMES[9], CONDITION_NAMES[-2]]):
        signal = 0.1 * k
        for p in range(12):
            bucket = ("easy", "medium", "hard")[p % 3]
            n_success = {"easy": 5, "medium": 2, "hard": 0}[bucket]
            for i in range(8):
                success = i < n_success
                rows.append(
                    {
                        "condition": condition,
                        "prompt_id": f"p{p}",
                        "teacher_score": float(rng.normal() + signal * success),
                        "reward": float(success),
                        "success": success,
                        "difficulty_bucket": bucket,
                        "sections_used": {},
                        "effective": True,
                    }
                )
    return rows


@pytest.fixture(scope="module")
def metrics_file(tmp_path_factory):
    result = M.compute_all(synthetic_rows(), num_bootstrap=200)
    path = tmp_path_factory.mktemp("plots") / "metrics.json"
    path.write_text(json.dumps(result))
    return path


def test_plots_are_written_and_sized(metrics_file, tmp_path):
    import matplotlib.image as mpimg

    result = json.loads(metrics_file.read_text())
    main, bucket = P.plot_all(result, tmp_path, sample_set="all_samples")
    assert main.name == "teacher_metrics_main.png" and bucket.name == "teacher_metrics_by_bucket.png"
    for path in (main, bucket):
        image = mpimg.imread(path)
        assert image.shape[0] > 500 and image.shape[1] > 1200
        assert image[..., :3].std() > 0.05  # not blank


def test_undefined_values_and_missing_sample_set(metrics_file, tmp_path):
    result = json.loads(metrics_file.read_text())
    view = result["sample_sets"]["both_present_all"]["conditions"]
    view["base"]["success_auc"] = None
    view["base"]["success_auc_ci"] = None
    out = P.plot_main(result, tmp_path / "m.png", sample_set="both_present_all")
    assert out.exists()
    with pytest.raises(ValueError, match="nope"):
        P.plot_main(result, tmp_path / "x.png", sample_set="nope")


def test_cli(metrics_file, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "analysis" / "plot_teacher_metrics.py"),
            "--input",
            str(metrics_file),
            "--output-dir",
            str(tmp_path / "out"),
            "--sample-set",
            "both_present_effective_only",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "teacher_metrics_by_bucket.png",
        "teacher_metrics_main.png",
    ]
