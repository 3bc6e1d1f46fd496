"""docs/config.md: every config key with its type, default, allowed values and one-line doc, made from the
typed sections (``trainer/config_sections.py``, ``workers/config.py``, ``mopd/core/config.py``: the one home
of those facts), then the keys each preset changes (read from its YAML file).

    python -m trainer.config_reference           # rewrite docs/config.md
    python -m trainer.config_reference --check   # exit 1 if docs/config.md is not current (CI runs the test)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from mopd.common.typed_config import describe
from trainer.config_sections import MOPDConfig

CONFIG_DIR = Path(__file__).resolve().parent / "config"
OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "config.md"
PRESETS = ("mopd.yaml", "sdpo.yaml", "grpo.yaml", "release/gpu.yaml")
SKIPPED_SECTIONS = ("defaults", "hydra")
_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<rest>.*)$")
_PLAIN = re.compile(r"^[A-Za-z0-9_.${}/@:+-]+$")


def _split_comment(rest: str) -> tuple[str, str]:
    """``value  # comment`` -> (value, comment); a ``#`` inside quotes belongs to the value."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote and rest[i - 1] != "\\":
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1].isspace()):
            return rest[:i].strip(), rest[i + 1 :].strip()
    return rest.strip(), ""


def yaml_keys(path: Path, prefix: str = "") -> list[tuple[str, str, str]]:
    """(full key, default as written, comment) of every leaf key of one YAML file, in file order."""
    rows, stack = [], []  # stack: (indent, key) of the open sections
    for line in path.read_text().splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        value, comment = _split_comment(match["rest"])
        path_keys = [k for _, k in stack] + [match["key"]]
        if value == "":  # a section: its keys follow, indented
            stack.append((indent, match["key"]))
            continue
        if path_keys[0] in SKIPPED_SECTIONS:
            continue
        rows.append((prefix + ".".join(path_keys), value, comment))
    return rows


def yaml_value(value) -> str:
    """A default as it would be written in YAML (and on the command line)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if _PLAIN.match(value) else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "&#124;")


def render() -> str:
    out = [
        "# Config reference",
        "",
        "Made by `python -m trainer.config_reference` from the typed sections (`trainer/config_sections.py`,",
        "`workers/config.py`, `mopd/core/config.py`), where each key is declared once; `tests/trainer/test_config_reference.py`",
        "fails when this file is not current. Defaults are the embedded CPU default; the experiment configs and",
        "`release=gpu` change some of them (below), the launch scripts a few more. Override any key on the command",
        "line: `python -m trainer.main --config-name mopd key=value`.",
    ]
    section = None
    for key, type_text, default, doc, choices in describe(MOPDConfig):
        parts = key.split(".")
        heading = ".".join(parts[:2] if parts[0] == "actor_rollout_ref" and len(parts) > 2 else parts[:1])
        if heading != section:
            section = heading
            out += ["", f"## `{heading}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        allowed = f"One of: {', '.join(yaml_value(c) for c in choices)}." if choices else ""
        meaning = f"{doc.rstrip('.')}. {allowed}" if doc and allowed else doc or allowed
        out.append(f"| `{key}` | {_cell(type_text)} | `{_cell(yaml_value(default))}` | {_cell(meaning)} |")
    out += ["", "## Experiment configs and presets (what they override)", ""]
    for name in PRESETS:
        out += [f"### `{name}`", "", "| key | value |", "|---|---|"]
        for key, value, _ in yaml_keys(CONFIG_DIR / name):
            out.append(f"| `{key}` | `{_cell(value)}` |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) docs/config.md from the typed config sections.")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/config.md is not current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is not current: run python -m trainer.config_reference", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
