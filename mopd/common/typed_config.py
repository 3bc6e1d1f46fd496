"""Typed config sections: each key's default, type, allowed values and one-line doc, written once.

A section is a dataclass deriving from :class:`Section` whose fields are declared with :func:`option` (a
value) or :func:`section` (a nested section). Building one (``Cls(...)`` or ``Cls.from_dict(mapping)``)
checks every field against its type and its declared rule, then runs the section's ``validate()`` for the
rules that relate several of its keys. Every mistake raises :class:`ConfigError` with one line that names
the full key (``PREFIX.field``), what was given and what is allowed; an unknown key gets the closest name.

Why the checks are ours and not OmegaConf's: Hydra composes the YAML presets over :func:`defaults_tree`
(an untyped node), so an override such as ``trainer.logger=console`` reaches :meth:`Section.from_dict` and
gets our one-line message instead of OmegaConf's multi-line ``ValidationError`` at compose time.

Sections also read as mappings (``cfg["key"]``, ``.get``, ``dict(cfg)``) so code that received plain dicts
keeps working; new code reads attributes.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

from mopd.common.errors import ConfigError

_NONE = type(None)


# ----------------------------------------------------------------------------------------------
# Declaring fields


def option(
    default: Any,
    doc: str,
    *,
    choices: tuple | None = None,
    positive: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    check: Callable[[str, Any], None] | None = None,
    interpolation: str | None = None,
) -> Any:
    """One config key. ``doc`` is its one-line meaning (docs/config.md shows it); ``choices`` the allowed
    values (None among them: null allowed); ``positive`` (integers) and ``low``/``high``/``low_open``
    (numbers) its range; ``check(key, value)`` a rule of its own; ``interpolation`` the value Hydra composes
    by default instead of ``default`` (e.g. ``${reward.success_threshold}``: two names for one value)."""
    meta = dict(
        doc=doc,
        choices=choices,
        positive=positive,
        low=low,
        high=high,
        low_open=low_open,
        check=check,
        interpolation=interpolation,
    )
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type[Section], doc: str) -> Any:
    """A nested section with its own defaults."""
    return dataclasses.field(default_factory=cls, metadata=dict(doc=doc))


# ----------------------------------------------------------------------------------------------
# Single-value rules (the messages are the public contract: tests assert them)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def allowed_text(values: tuple) -> str:
    named = [v for v in values if v is not None]
    return f"{named} or null" if None in values else f"{named}"


def check_choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed or isinstance(value, bool):
        raise ConfigError(f"{key} must be one of {allowed_text(allowed)}, got {value!r}")


def check_number(
    key: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    nullable: bool = False,
) -> None:
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


def _check_field(key: str, value: Any, kind: type, nullable: bool, meta: Mapping) -> None:
    null = " or null" if nullable else ""
    if meta.get("choices") is not None:  # a rule of its own first: it may name values refused on purpose
        if meta.get("check") is not None:
            meta["check"](key, value)
        check_choice(key, value, meta["choices"])
        return
    elif value is None and nullable:
        pass
    elif kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
    elif kind is int:
        if meta.get("positive"):
            if not is_int(value) or value < 1:
                raise ConfigError(f"{key} must be a positive integer{null}, got {value!r}")
        elif not is_int(value):
            raise ConfigError(f"{key} must be an integer{null}, got {value!r}")
    elif kind is float:
        check_number(
            key, value, low=meta.get("low"), high=meta.get("high"), low_open=meta.get("low_open"), nullable=nullable
        )
    elif kind is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} must be a non-empty string{null}, got {value!r}")
    if meta.get("check") is not None:
        meta["check"](key, value)


def _kind(annotation: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True); ``list[str]`` -> (list, False)."""
    args = typing.get_args(annotation)
    nullable = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        nullable = _NONE in args
        rest = [a for a in args if a is not _NONE]
        annotation = rest[0] if len(rest) == 1 else Any
    return typing.get_origin(annotation) or annotation, nullable


# ----------------------------------------------------------------------------------------------
# Sections


@dataclasses.dataclass
class Section(Mapping):
    """Base of every config section; ``PREFIX`` is the section's full key in the trainer config."""

    PREFIX: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            sub = _section_of(hints[f.name])
            if sub is not None:  # a plain mapping (or null: the defaults) given for a sub-section
                if value is None or (isinstance(value, Mapping) and not isinstance(value, Section)):
                    setattr(self, f.name, sub.from_dict(value))
                elif not isinstance(value, Section):
                    raise ConfigError(f"{sub.PREFIX} must be a mapping of keys, got {value!r}")
            elif self.CHECK_FIELDS:
                _check_field(self.key(f.name), value, *_kind(hints[f.name]), f.metadata)
        self.validate()

    CHECK_FIELDS: ClassVar[bool] = True  # False: the section's validate() checks its own fields

    def validate(self) -> None:
        """Rules that relate several keys of this section (override)."""

    @classmethod
    def key(cls, name: str) -> str:
        return f"{cls.PREFIX}.{name}" if cls.PREFIX else name

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, prefix: str | None = None):
        """Build from a plain mapping (e.g. a resolved ``OmegaConf.to_container``). Absent keys take their
        defaults; unknown keys are errors with the closest known name."""
        values = dict(values or {})
        known = cls.field_names()
        for name in values:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                where = f"{prefix if prefix is not None else cls.PREFIX}.{name}".lstrip(".")
                raise ConfigError(f"{where} is not a known field.{hint}")
        return cls(**values)  # sub-sections given as mappings are built by __post_init__

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # --- read as a mapping ----------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        if name not in self.field_names():
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.field_names())

    def __len__(self) -> int:
        return len(dataclasses.fields(self))

    __hash__ = None  # mutable


def _hints(cls: type) -> dict[str, Any]:
    cached = cls.__dict__.get("_HINTS")
    if cached is None:
        cached = typing.get_type_hints(cls)
        cls._HINTS = cached
    return cached


def _section_of(annotation: Any) -> type[Section] | None:
    kind, _ = _kind(annotation)
    return kind if isinstance(kind, type) and issubclass(kind, Section) else None


def _composed_default(f: dataclasses.Field) -> Any:
    """A leaf's default as Hydra composes it: its interpolation if it declares one."""
    if f.metadata.get("interpolation"):
        return f.metadata["interpolation"]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def defaults_tree(cls: type[Section]) -> dict[str, Any]:
    """The defaults as a plain nested dict (interpolations where a field declares one): the node Hydra
    composes the presets over."""
    hints = _hints(cls)
    return {
        f.name: defaults_tree(sub) if (sub := _section_of(hints[f.name])) is not None else _composed_default(f)
        for f in dataclasses.fields(cls)
    }


def describe(cls: type[Section], prefix: str = "") -> Iterator[tuple[str, str, Any, str, tuple | None]]:
    """(full key, type text, default, doc, choices) of every leaf, in declaration order (docs/config.md)."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        sub = _section_of(hints[f.name])
        if sub is not None:
            yield from describe(sub, key + ".")
        else:
            meta = f.metadata
            yield key, type_text(hints[f.name]), _composed_default(f), meta.get("doc", ""), meta.get("choices")


def type_text(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    text = text or str(annotation).replace("typing.", "")
    return text.replace("NoneType", "None")


__all__ = [
    "ConfigError",
    "Section",
    "allowed_text",
    "check_choice",
    "check_number",
    "defaults_tree",
    "describe",
    "is_int",
    "is_number",
    "option",
    "section",
]
