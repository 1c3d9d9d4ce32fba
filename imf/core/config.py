"""Validated, frozen configs.

Every component has one frozen dataclass whose fields carry a commented default.
`from_dict` rejects unknown keys and wrong types with an error naming the parameter,
because papermill injects parameters without any type checking.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or out of range."""


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for a in args:
            try:
                return _check_type(name, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"parameter {name!r}: {value!r} matches none of {annotation}")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"parameter {name!r}: expected None, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"parameter {name!r}: expected a sequence, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"parameter {name!r}: expected {len(args)} items, got {len(value)}")
        return tuple(_check_type(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"parameter {name!r}: {value!r} is not one of {list(args)}")
        return value
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if isinstance(value, dict):
            return annotation.from_dict(value, prefix=f"{name}.")
        raise ConfigError(f"parameter {name!r}: expected a mapping for {annotation.__name__}, got {value!r}")
    if annotation is float:
        # ints are acceptable floats (papermill passes 1 for 1.0), bools are not
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"parameter {name!r}: expected float, got {type(value).__name__} {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"parameter {name!r}: expected int, got {type(value).__name__} {value!r}")
        return value
    if annotation in (str, bool):
        if not isinstance(value, annotation):
            raise ConfigError(
                f"parameter {name!r}: expected {annotation.__name__}, got {type(value).__name__} {value!r}"
            )
        return value
    return value


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class: subclasses are frozen dataclasses with defaults on every field."""

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any] | None = None, prefix: str = "", **overrides: Any) -> C:
        d = dict(d or {}, **overrides)
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown parameter(s) {[prefix + u for u in unknown]}; "
                f"known: {sorted(names)}"
            )
        kwargs = {k: _check_type(prefix + k, v, hints[k]) for k, v in d.items()}
        return cls(**kwargs)

    def __post_init__(self) -> None:
        # range checks run for direct construction too, not only through from_dict
        self.validate()

    def validate(self) -> None:
        """Range checks; override in subclasses (raise ConfigError naming the field)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: C, **changes: Any) -> C:
        return type(self).from_dict({**self.to_dict(), **changes})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def require(cond: bool, name: str, msg: str) -> None:
    """Raise ConfigError naming parameter `name` unless `cond`."""
    if not cond:
        raise ConfigError(f"parameter {name!r}: {msg}")
