"""The typed-config base: fields declared once with their rules, one-line errors with full keys, nested
sections from plain mappings, the Hydra defaults tree and the reference rows come from the same fields."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest

from mopd.common.errors import ConfigError
from mopd.common.typed_config import Section, defaults_tree, describe, option, section


def _refuse_seven(key, value):
    if value == 7:
        raise ConfigError(f"{key}=7 is refused on purpose")


@dataclasses.dataclass
class Inner(Section):
    PREFIX: ClassVar[str] = "outer.inner"

    mode: str = option("a", "which mode", choices=("a", "b"))
    level: int | None = option(None, "a level or null", choices=(None, 1, 2, 7), check=_refuse_seven)


@dataclasses.dataclass
class Outer(Section):
    PREFIX: ClassVar[str] = "outer"

    count: int = option(3, "how many", positive=True)
    rate: float = option(0.5, "a fraction", low=0.0, high=1.0)
    limit: float | None = option(None, "a cap or null", low=0.0, low_open=True)
    flag: bool = option(True, "on or off")
    name: str = option("x", "a name")
    alias: str = option("fallback", "two names for one value", interpolation="${outer.name}")
    items: list[str] = option(["p", "q"], "a list")
    inner: Inner = section(Inner, "a nested section")

    def validate(self):
        if self.count > 5 and self.flag:
            raise ConfigError("outer.count > 5 needs outer.flag=false")


def _error(**values) -> str:
    with pytest.raises(ConfigError) as info:
        Outer.from_dict(values)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_defaults_and_reading_as_attributes_or_a_mapping():
    cfg = Outer.from_dict({"inner": {"mode": "b"}})
    assert cfg.count == 3 and cfg.inner.mode == "b" and cfg["inner"]["mode"] == "b"
    assert cfg.get("missing", "d") == "d" and "rate" in cfg and "missing" not in cfg
    assert dict(cfg)["items"] == ["p", "q"] and len(cfg) == 8
    assert cfg.to_dict()["inner"] == {"mode": "b", "level": None}
    assert Outer().items is not Outer().items  # a mutable default is a fresh copy each time


def test_single_key_messages_name_the_full_key():
    assert _error(count=0) == "outer.count must be a positive integer, got 0"
    assert _error(count="3") == "outer.count must be a positive integer, got '3'"
    assert _error(rate=1.5) == "outer.rate must be in [0, 1], got 1.5"
    assert _error(limit=0) == "outer.limit must be > 0 or null, got 0"
    assert _error(flag="yes") == "outer.flag must be true or false, got 'yes'"
    assert _error(name="") == "outer.name must be a non-empty string, got ''"
    assert _error(inner={"mode": "c"}) == "outer.inner.mode must be one of ['a', 'b'], got 'c'"
    assert _error(inner={"level": 3}) == "outer.inner.level must be one of [1, 2, 7] or null, got 3"
    # A rule of its own runs before the choice test: it can explain a value refused on purpose.
    assert _error(inner={"level": 7}) == "outer.inner.level=7 is refused on purpose"
    assert _error(count=6) == "outer.count > 5 needs outer.flag=false"
    Outer.from_dict({"count": 6, "flag": False, "limit": None, "inner": {"level": None}})


def test_unknown_keys_get_the_closest_name_and_sections_must_be_mappings():
    assert _error(cuont=1) == "outer.cuont is not a known field. Did you mean 'count'?"
    assert _error(inner={"mdoe": "a"}) == "outer.inner.mdoe is not a known field. Did you mean 'mode'?"
    assert _error(inner=5) == "outer.inner must be a mapping of keys, got 5"


def test_hydra_defaults_tree_and_reference_rows_come_from_the_fields():
    tree = defaults_tree(Outer)
    assert tree["alias"] == "${outer.name}" and tree["inner"] == {"mode": "a", "level": None}
    rows = {key: (kind, default, doc, choices) for key, kind, default, doc, choices in describe(Outer)}
    assert rows["count"] == ("int", 3, "how many", None)
    assert rows["inner.mode"] == ("str", "a", "which mode", ("a", "b"))
    assert rows["limit"][0] == "float | None" and rows["alias"][1] == "${outer.name}"
    assert list(rows) == [
        "count",
        "rate",
        "limit",
        "flag",
        "name",
        "alias",
        "items",
        "inner.mode",
        "inner.level",
    ]
