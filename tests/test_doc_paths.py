"""Every repository path the README and docs/ cite exists (a moved or deleted file breaks this test).

A citation is an inline code span or a Markdown link whose first word is a path into the source tree (a
top-level folder of tracked files other than the data folders ``datasets/`` and ``outputs/``, which
docs name as things a command *makes*), or any tracked-looking file name with an extension. Fenced
code blocks are commands, not citations, and are skipped; so are spans with placeholders (``<dir>``,
``$VAR``, ``*``). A short relative path (``release/gpu.yaml``) counts when some tracked path ends with it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_FOLDERS = {"datasets", "outputs"}


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


def _docs() -> list[Path]:
    found = [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        *sorted((ROOT / "docs").rglob("*.md")),
        *sorted(ROOT.glob("*/README.md")),
    ]
    return [p for p in found if p.exists()]


def _citations(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    words = [m.group(1).split()[0] for m in re.finditer(r"`([^`\n]+)`", text) if m.group(1).split()]
    words += [m.group(1) for m in re.finditer(r"\]\(([^)#\s]+)", text)]
    return words


def test_every_cited_path_exists():
    files = _tracked()
    folders = {str(p) for f in files for p in Path(f).parents if str(p) != "."}
    top = {f.split("/")[0] for f in files} - DATA_FOLDERS
    missing = []
    for doc in _docs():
        for word in _citations(doc.read_text()):
            path = word.split("::")[0].rstrip(".,:;)").removeprefix("./")
            if re.search(r"[<>${}*?=|@]", path) or path.startswith(("http", "-", "~", "/", "../")) or "/" not in path:
                continue
            head = path.split("/")[0]
            has_ext = re.search(r"\.(py|sh|yaml|yml|md|toml|txt|cfg|ini)$", path)
            if head in DATA_FOLDERS or not (head in top or has_ext):
                continue
            target = path.rstrip("/")
            exists = (
                (ROOT / target).exists()
                or (doc.parent / target).exists()
                or any(f == target or f.endswith("/" + target) for f in files)
                or any(d.endswith("/" + target) for d in folders)
            )
            if not exists:
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, "docs cite paths that do not exist:\n" + "\n".join(missing)
