"""Shared machinery for the typed config dataclasses: a user-facing error type and dict round-trips."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any


class ConfigError(ValueError):
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
    if annotation in (int, float, str):
        try:
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            if annotation is int and isinstance(value, str):
                return int(float(value)) if "e" in value.lower() else int(value)
            return annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected {annotation.__name__}, got {value!r}") from None
    return value


class ConfigBase:
    """Mixin for config dataclasses: `update` from a dict with type coercion and unknown-key errors."""

    def update(self, values: dict[str, Any], prefix: str = "") -> None:
        types = _field_types(type(self))
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in values.items():
            key = key.replace("-", "_")
            if key not in names:
                # Closest first (a prefix test missed typos in the first letters, e.g. 'nmu_layers').
                close = difflib.get_close_matches(key, sorted(names), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
            setattr(self, key, coerce(value, types[key], prefix + key))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
