"""Shared machinery for the typed config dataclasses: a user-facing error type and dict round-trips."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import typing
from typing import Any, Callable

from ..errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration the user wrote cannot work. The message names the field and the fix."""


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a YAML/CLI value to the annotated type (int, float, bool, str, Optional[...], list[str])."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        non_none = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return coerce(value, non_none[0], name)
    if origin in (list, tuple):
        inner = args[0] if args else str
        if isinstance(value, str):
            value = value.split() if " " in value.strip() else [value]
        return [coerce(v, inner, name) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if annotation is int:
        return _coerce_int(value, name)
    if annotation is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected float, got {value!r}") from None
        if not math.isfinite(number):  # NaN and inf pass every `x <= 0` range check below: refuse them here
            raise ConfigError(f"{name}: must be a finite number, got {value!r}")
        return number
    if annotation is str:
        return str(value)
    return value


def _coerce_int(value: Any, name: str) -> int:
    """An integer given as 12, "12", "1e3" or 1e3; never truncated: 2.5 and "2.5e0" are refused, not read as 2."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected int, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected int, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name}: expected int, got {value!r}")
    if not number.is_integer():
        raise ConfigError(f"{name}: expected int, got {value!r} (refused rather than truncated)")
    # float(str) rounds above 2**53; the decimal string keeps the exact value ("1e11" is exactly 10**11 either way)
    if isinstance(value, str):
        from decimal import Decimal, InvalidOperation
        try:
            return int(Decimal(value))
        except (InvalidOperation, ValueError):
            pass
    return int(number)


def check_ranges(section: str, rules: dict[str, tuple[float | None, float | None]], cfg: Any) -> None:
    """Each field in `rules` must lie in [low, high] (None: unbounded; None values of Optional fields pass)."""
    for key, (low, high) in rules.items():
        value = getattr(cfg, key)
        if value is None:
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = (f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]")
            raise ConfigError(f"{section}.{key} must be {bounds}, got {value}")


class Derived:
    """A config field that, left unset (None), is derived from the other fields when read: one name for what the
    user gives and what the code uses (`cfg.head_dim` is always the head size; `hidden_size // heads` unless one
    was given). Reading gives the resolved value; `to_dict` (saved configs, --print-config, phases) keeps what was
    given, so a later override of the fields it derives from still moves it. A dataclass field whose default is a
    descriptor: its default is `__get__(None, cls)`, None here, and `__init__` goes through `__set__`."""

    def __init__(self, resolve: Callable[[Any, Any], Any]):
        self.resolve = resolve  # (config, given value or None) -> resolved value

    def __set_name__(self, owner, name: str) -> None:
        self.name, self.slot = name, f"_given_{name}"

    def __get__(self, obj, owner=None):
        if obj is None:
            return None
        return self.resolve(obj, obj.__dict__.get(self.slot))

    def __set__(self, obj, value) -> None:
        obj.__dict__[self.slot] = value


class ConfigBase:
    """Mixin for config dataclasses: `update` from a dict with type coercion and unknown-key errors."""

    # Other names users may type for a field (YAML keys, dotted flags, configs saved by other versions): alias ->
    # field. One name per concept in the code; the aliases only read.
    ALIASES = {}  # type: dict[str, str]

    def given(self, name: str) -> Any:
        """The value set for a field, before any derivation (None: derived)."""
        derived = type(self).__dict__.get(name)
        return self.__dict__.get(derived.slot) if isinstance(derived, Derived) else getattr(self, name)

    def update(self, values: dict[str, Any], prefix: str = "") -> None:
        types = _field_types(type(self))
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in values.items():
            key = key.replace("-", "_")
            key = self.ALIASES.get(key, key)
            if key not in names:
                # Closest first (a prefix test missed typos in the first letters, e.g. 'nmu_layers').
                close = difflib.get_close_matches(key, sorted(names), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
            setattr(self, key, coerce(value, types[key], prefix + key))

    def to_dict(self) -> dict[str, Any]:
        """Every field as given (a Derived field left unset stays None), so the dict reads back the same."""
        return {f.name: copy.deepcopy(self.given(f.name)) for f in dataclasses.fields(self)}
