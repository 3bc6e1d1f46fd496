"""The packages hold what their docstrings say: the algorithm core imports nothing of the project but
``mopd.core``, the error types and the typed-config base, and no part of ``mopd`` imports the trainer or the workers."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _project_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in {"mopd", "workers", "trainer"}}


def _files(package: str) -> list[Path]:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, package
    return files


def test_the_core_imports_only_itself_the_error_types_and_the_config_base():
    allowed = ("mopd.core", "mopd.common.errors", "mopd.common.typed_config")
    bad = {
        f"{path.relative_to(REPO)}: {name}"
        for path in _files("mopd/core")
        for name in _project_imports(path)
        if not name.startswith(allowed) and name != "mopd.common"
    }
    assert not bad, sorted(bad)


def test_mopd_never_imports_the_trainer_or_the_workers():
    bad = {
        f"{path.relative_to(REPO)}: {name}"
        for path in _files("mopd")
        for name in _project_imports(path)
        if name.split(".")[0] in {"workers", "trainer"}
    }
    assert not bad, sorted(bad)


def test_the_top_of_mopd_holds_only_sub_packages():
    loose = [p.name for p in (REPO / "mopd").glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules at the top of mopd/ (put each in the sub-package it belongs to): {loose}"
