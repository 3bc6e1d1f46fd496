"""docs/config.md: every config key with its default and its one-line doc, made from the YAML files.

    python -m trainer.config_reference           # rewrite docs/config.md
    python -m trainer.config_reference --check   # exit 1 if docs/config.md is not current (CI runs the test)

The base files (``ppo_trainer.yaml``, ``actor/actor.yaml`` mounted at ``actor_rollout_ref.actor``) hold every
key once, each with its comment; the experiment configs and the ``release`` preset are listed as the keys
they override. Hydra's own ``defaults``/``hydra`` blocks are not config keys and are left out.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "config"
OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "config.md"
BASE_FILES = (("ppo_trainer.yaml", ""), ("actor/actor.yaml", "actor_rollout_ref.actor."))
PRESETS = ("mopd.yaml", "sdpo.yaml", "grpo.yaml", "release/gpu.yaml")
SKIPPED_SECTIONS = ("defaults", "hydra")
_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<rest>.*)$")


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


def render() -> str:
    out = [
        "# Config reference",
        "",
        "Made by `python -m trainer.config_reference` from `trainer/config/` (the YAML comments are the docs);",
        "`tests/trainer/test_config_reference.py` fails when this file is not current. Defaults are the embedded",
        "CPU default; the launch scripts and `release=gpu` change some of them (below). Override any key on the",
        "command line: `python -m trainer.main --config-name mopd key=value`.",
        "",
    ]
    for name, prefix in BASE_FILES:
        out += [
            f"## `{name}`" + (f" (at `{prefix[:-1]}`)" if prefix else ""),
            "",
            "| key | default | meaning |",
            "|---|---|---|",
        ]
        for key, value, comment in yaml_keys(CONFIG_DIR / name, prefix):
            out.append(f"| `{key}` | `{value.replace('|', '&#124;')}` | {comment.replace('|', '&#124;')} |")
        out.append("")
    out += ["## Experiment configs and presets (what they override)", ""]
    for name in PRESETS:
        out += [f"### `{name}`", "", "| key | value |", "|---|---|"]
        for key, value, _ in yaml_keys(CONFIG_DIR / name):
            out.append(f"| `{key}` | `{value.replace('|', '&#124;')}` |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) docs/config.md from trainer/config/.")
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
