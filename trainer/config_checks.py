"""Single-key checks of a composed trainer config: each raises ``ConfigError`` with one line naming the full
key, what was given and what is allowed. ``trainer/config_schema.py`` states the rules with them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mopd.core.config import ConfigError

_ABSENT = object()


# Access and single-key checks (all messages name the full key)


def plain_tree(cfg: Any) -> dict:
    """A resolved plain nested dict from a DictConfig or a mapping."""
    if isinstance(cfg, DictConfig):
        try:
            return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or "config"
            reason = str(err).splitlines()[0]
            raise ConfigError(f"{key}: {reason}") from None
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"the trainer config must be a mapping, got {type(cfg).__name__}")
    return to_dict(cfg)


def to_dict(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: to_dict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_dict(v) for v in value]
    return value


def value_at(tree: dict, key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node.get(part, _ABSENT) if isinstance(node, Mapping) else _ABSENT
        if node is _ABSENT:
            raise ConfigError(f"{key} is missing from the config (it is defined in trainer/config/; was it deleted?)")
    return node


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def allowed_text(values: tuple) -> str:
    named = [v for v in values if v is not None]
    return f"{named} or null" if None in values else f"{named}"


def choice(t: dict, key: str, allowed: tuple) -> Any:
    value = value_at(t, key)
    if value not in allowed or isinstance(value, bool):
        raise ConfigError(f"{key} must be one of {allowed_text(allowed)}, got {value!r}")
    return value


def boolean(t: dict, key: str) -> bool:
    value = value_at(t, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def integer(t: dict, key: str) -> int:
    value = value_at(t, key)
    if not is_int(value):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    return value


def positive_int(t: dict, key: str, nullable: bool = False) -> int | None:
    value = value_at(t, key)
    if value is None and nullable:
        return None
    if not is_int(value) or value < 1:
        null = " or null" if nullable else ""
        raise ConfigError(f"{key} must be a positive integer{null}, got {value!r}")
    return value


def number(
    t: dict,
    key: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    nullable: bool = False,
) -> float | None:
    value = value_at(t, key)
    if value is None and nullable:
        return None
    null = " or null" if nullable else ""
    if not is_number(value):
        raise ConfigError(f"{key} must be a number{null}, got {value!r}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and value > high
    if below or above:
        if low is not None and high is not None:
            rng = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        elif low is not None:
            rng = f"{'>' if low_open else '>='} {low:g}"
        else:
            rng = f"<= {high:g}"
        raise ConfigError(f"{key} must be {rng}{null}, got {value!r}")
    return value


def string(t: dict, key: str, nullable: bool = False) -> str | None:
    value = value_at(t, key)
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value:
        null = " or null" if nullable else ""
        raise ConfigError(f"{key} must be a non-empty string{null}, got {value!r}")
    return value


def mapping(t: dict, key: str) -> Mapping:
    value = value_at(t, key)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping, e.g. {{enable_thinking: false}}, got {value!r}")
    return value


def files(t: dict, key: str, nullable: bool) -> None:
    value = value_at(t, key)
    if value is None and nullable:
        return
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        null = ", or null to disable validation" if nullable else ""
        raise ConfigError(f"{key} must be a parquet path, a list of them or 'embedded'{null}, got {value!r}")
