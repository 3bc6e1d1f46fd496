"""Console scripts (setup.py ``entry_points``) and the top-level command-line files: every target imports
and runs, each top-level script calls the same function as its console script, and no file of the checkout
reaches the package by editing ``sys.path``."""

from __future__ import annotations

import ast
import os
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# top-level script -> its console script (the seed README's paths keep working beside the new commands)
SCRIPT_COMMANDS = {
    "data/load_dataset.py": "mopd-load-dataset",
    "data/preprocess.py": "mopd-preprocess",
    "data/split_tasks.py": "mopd-split-tasks",
    "data/split_tests.py": "mopd-split-tests",
    "data/convert_evalplus_to_parquet.py": "mopd-convert-evalplus",
    "analysis/prepare_rollout_dataset.py": "mopd-prepare-rollouts",
    "analysis/build_context_variants.py": "mopd-build-context-variants",
    "analysis/score_teacher_contexts.py": "mopd-score-teacher-contexts",
    "analysis/compute_teacher_signal_metrics.py": "mopd-teacher-signal-metrics",
    "analysis/plot_teacher_metrics.py": "mopd-plot-teacher-metrics",
    "diversity/compute_metrics.py": "mopd-diversity-metrics",
    "diversity/plot_metrics.py": "mopd-diversity-plots",
    "scripts/make_embedded_default.py": "mopd-make-embedded-default",
}


def console_scripts() -> dict[str, str]:
    """``name -> module:function`` from setup.py, read from its source (running setup() would install)."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for kw in node.keywords:
                if kw.arg == "entry_points":
                    entries = ast.literal_eval(kw.value)["console_scripts"]
                    return dict(line.replace(" ", "").split("=", 1) for line in entries)
    raise AssertionError("setup.py: no setup(entry_points=...) found")


def resolve(target: str):
    module, _, function = target.partition(":")
    __import__(module)
    return getattr(sys.modules[module], function)


def test_every_console_script_target_imports_and_is_callable():
    scripts = console_scripts()
    assert scripts["mopd-train"] == "trainer.main:main"
    assert set(SCRIPT_COMMANDS.values()) <= set(scripts), set(SCRIPT_COMMANDS.values()) - set(scripts)
    for name, target in scripts.items():
        assert name.startswith("mopd-"), name
        assert callable(resolve(target)), (name, target)


@pytest.mark.parametrize("script", sorted(SCRIPT_COMMANDS))
def test_top_level_script_is_a_thin_entry_point_to_its_console_script(script):
    source = (ROOT / script).read_text(encoding="utf-8")
    assert len(source.splitlines()) <= 25, f"{script} should only import and call its main"
    namespace = runpy.run_path(str(ROOT / script), run_name="not_main")  # imports, does not run
    assert namespace["main"] is resolve(console_scripts()[SCRIPT_COMMANDS[script]]), script


@pytest.mark.parametrize("name", sorted(set(SCRIPT_COMMANDS.values())))
def test_console_script_help_runs_in_process(name, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as exit_:
        resolve(console_scripts()[name])()
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {name} ") and "--help" in out


def test_console_script_bad_input_is_one_line_naming_the_command(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "missing.json"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "mopd-split-tasks",
            "--json_path",
            str(missing),
            "--output_dir",
            str(tmp_path / "o"),
            "--test_ratio",
            "0.1",
            "--seed",
            "1",
        ],
    )
    with pytest.raises(SystemExit) as exit_:
        resolve(console_scripts()["mopd-split-tasks"])()
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("mopd-split-tasks: error:") and "missing.json" in err[0], err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_no_file_edits_sys_path_to_reach_the_package():
    needle = "sys.path." + "insert"  # split so that this file does not match itself
    offenders = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]  # .git, .venv*
        offenders += [
            os.path.relpath(os.path.join(folder, f), ROOT)
            for f in files
            if f.endswith(".py") and needle in Path(folder, f).read_text(encoding="utf-8")
        ]
    assert offenders == [], f"use the installed package or python -m instead of {needle}: {offenders}"
