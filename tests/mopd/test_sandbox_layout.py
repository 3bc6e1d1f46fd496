"""The sandbox harness stays a standalone standard-library program: it runs as ``python -I -S`` with
nothing of this project importable, so its modules may import only the standard library and each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from mopd.rewards import sandbox

HARNESS = Path(sandbox.__file__).parent / "harness"


def test_harness_imports_only_the_standard_library_and_itself():
    own = {p.stem for p in HARNESS.glob("*.py")}
    for path in HARNESS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                top = name.split(".")[0]
                assert top in own or top in sys.stdlib_module_names, f"{path.name} imports {name}"


def test_harness_modules_load_in_an_isolated_interpreter():
    """What the parent's Popen does, minus the job: every module imports under -I -S from any directory."""
    code = (
        "import runpy, sys; sys.argv = ['x']; "
        f"ns = runpy.run_path({str(HARNESS / 'run_harness.py')!r}, run_name='not_main'); "
        "print(sorted(m for m in sys.modules if m.startswith('sbx_'))); "
        f"print({str(HARNESS)!r} in sys.path)"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], cwd="/", capture_output=True, text=True, env={}, timeout=30
    )
    assert out.returncode == 0, out.stderr
    modules, on_path = out.stdout.splitlines()
    assert eval(modules) == ["sbx_asserts", "sbx_codec", "sbx_guard", "sbx_lockdown", "sbx_loops", "sbx_protocol"]
    assert on_path == "False"  # the folder is off sys.path again before any solution runs


def test_a_trivial_program_runs_through_the_split_harness():
    result = sandbox.run_tests("print(int(input()) * 2)", "stdin", ["21\n"], time_limit=2.0)
    assert result.error is None, result.error
    assert result.tests[0]["status"] == "ok" and result.tests[0]["output"].strip() == "42"
