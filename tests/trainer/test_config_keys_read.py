"""No dead keys: every leaf key of the composed configs is read by the code it configures.

A key is "read" when some module outside the config's declaration and checks (``trainer/config_sections.py``,
``workers/config.py``, ``trainer/config_schema.py``, ``mopd/common/typed_config.py``) reads the attribute of
the typed section (``section.name``) or indexes it by name (``cfg["name"]`` / ``cfg.get("name"``, the
memory plan's plain tree). A name can be shared by two keys, so this catches a key nobody reads, not a key
read under the wrong section; the behaviour tests cover that.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from trainer.main import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[2]


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _source() -> str:
    files = [p for folder in ("mopd", "workers", "trainer") for p in (ROOT / folder).rglob("*.py")]
    declared = {"config_schema.py", "config_sections.py", "typed_config.py", "config_reference.py"}
    return "\n".join(
        p.read_text() for p in files if p.name not in declared and p.relative_to(ROOT).as_posix() != "workers/config.py"
    )


@pytest.mark.parametrize("name,overrides", [("mopd", []), ("grpo", []), ("mopd", ["release=gpu"])])
def test_every_config_key_is_read_by_the_code(name, overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name=name, overrides=overrides)
    source = _source()
    unread = []
    for key in _leaves(OmegaConf.to_container(cfg, resolve=False)):
        field = re.escape(key.split(".")[-1])
        pattern = rf"""\[\s*["']{field}["']\s*\]|\.get\(\s*["']{field}["']|\.{field}\b"""
        if not re.search(pattern, source):
            unread.append(key)
    assert not unread, f"keys no code reads (remove them or make them do what they say): {unread}"
