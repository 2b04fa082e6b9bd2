"""Typed YAML config: every host role's file is loaded into a frozen dataclass.

Unknown keys, wrong types, out-of-range values and missing required keys are
errors that name the key with its dotted path, so an operator can fix the file
without reading code; every problem of a file is reported at once, not only the
first. Ranges and address forms are declared on the field with ``Annotated``
(``Annotated[int, Range(1)]``, ``Annotated[str, HostPort()]``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fedfhe_common.runtime.errors import ConfigError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Range:
    """A number's bounds: ``low <= x`` (``low < x`` when ``low_open``), and likewise ``high``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def check(self, value: Any, key: str) -> None:
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if not (low_ok and high_ok):
            raise ConfigError(f"{key}: must be {self.describe()}, got {_show(value)}")

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts)


@dataclasses.dataclass(frozen=True)
class HostPort:
    """``host:port`` (``[v6]:port`` for IPv6), port 1-65535; ``allow_empty`` for optional addresses."""

    allow_empty: bool = False

    def check(self, value: Any, key: str) -> None:
        if value == "" and self.allow_empty:
            return
        host, sep, port = str(value).rpartition(":")
        ok = bool(sep and host) and port.isdigit() and 0 < int(port) < 65536
        if ok and ":" in host:  # IPv6 needs brackets, or the port is ambiguous
            ok = host.startswith("[") and host.endswith("]")
        if not ok or any(c.isspace() for c in host):
            raise ConfigError(f"{key}: expected host:port (e.g. 10.0.0.1:9092), got {_show(value)}")


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file, turning I/O and syntax problems into ConfigError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{p}: invalid YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as exc:  # a value PyYAML cannot build: a date 2024-13-45, ...
        raise ConfigError(f"{p}: invalid YAML value: {_short(str(exc))}") from None


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(key: Any) -> str:
    """str() of a mapping key for a message; YAML keys may be ints too long for str()."""
    try:
        return _short(str(key))
    except ValueError:
        return f"<{type(key).__name__}>"


def _show(value: Any) -> str:
    """repr for messages: short, and safe on ints too long to print (Python's 4300-digit limit)."""
    try:
        return _short(repr(value))
    except ValueError:
        return f"<{type(value).__name__}>"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str, base: Path | None) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        out = _coerce(value, args[0], key, base)
        for rule in tp.__metadata__:
            if isinstance(rule, (Range, HostPort)) and out is not None:
                rule.check(out, key)
        return out
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, base)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1] if errors else f"{key}: invalid value {_show(value)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, args))}, got {_show(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]", base) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        out = {}
        for k, v in value.items():
            try:
                name = str(k)
            except ValueError:  # an int key too long for str()
                raise ConfigError(f"{key}: key {_text(k)} cannot be used") from None
            out[name] = _coerce(v, args[1] if args else Any, f"{key}.{_short(name)}", base)
        return out
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key, base)
    if tp is Any:
        return value
    if tp is Path:
        if not isinstance(value, str) or not value or "\x00" in value:
            raise ConfigError(f"{key}: expected a path string, got {_show(value)}")
        try:
            p = Path(value).expanduser()
        except RuntimeError as exc:  # "~nosuchuser/..."
            raise ConfigError(f"{key}: {exc}") from None
        return p if p.is_absolute() or base is None else (base / p)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise ConfigError(f"{key}: number too large, got {_show(value)}") from None
        if math.isnan(number):
            raise ConfigError(f"{key}: expected a number, got NaN")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_show(value)}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def from_dict(cls: type[T], data: Any, prefix: str = "", base: Path | None = None) -> T:
    """Build dataclass ``cls`` from a mapping, validating every key.

    Relative ``Path`` fields resolve against ``base`` (the config file's folder).
    """
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    problems: list[str] = []
    unknown = sorted(set(map(_text, data)) - set(fields))
    if unknown:
        allowed = ", ".join(sorted(fields))
        dotted = ", ".join(f"{prefix}.{k}" if prefix else k for k in unknown)
        problems.append(f"unknown key {dotted} (allowed here: {allowed})")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            try:
                kwargs[name] = _coerce(data[name], hints[name], key, base)
            except ConfigError as exc:
                problems.extend(getattr(exc, "problems", None) or [str(exc)])
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            problems.append(f"missing required key {key}")
    if problems:
        raise _combined(problems)
    return cls(**kwargs)


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass a field holds (``Annotated`` and ``| None`` unwrapped), or None."""
    if typing.get_origin(tp) is typing.Annotated:
        return _dataclass_of(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _dataclass_of(inner[0]) if len(inner) == 1 else None
    return tp if dataclasses.is_dataclass(tp) else None


def salvage(cls: type[T], data: Any, prefix: str = "", base: Path | None = None) -> tuple[T | None, list[str]]:
    """``cls`` from ``data`` with every bad or unknown key left at its default, and the problems building it found.

    ``from_dict`` stops before the checks that need a whole section (``__post_init__``) and check-config's
    checks of a loaded config once one key is wrong; with this they run anyway, so one check-config names
    both kinds of problem. None when a required key is missing or bad (nothing to check then).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return None, []
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs: dict[str, Any] = {}
    problems: list[str] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        inner = _dataclass_of(hints[f.name])
        if inner is not None and isinstance(data[f.name], dict):
            value, found = salvage(inner, data[f.name], key, base)
            problems += found
            if value is not None:
                kwargs[f.name] = value
            continue
        try:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], key, base)
        except ConfigError:
            pass  # from_dict reported it
    try:
        return cls(**kwargs), problems
    except TypeError:  # a required key missing or bad
        return None, problems
    except ConfigError as exc:
        return None, problems + (getattr(exc, "problems", None) or [str(exc)])


def _combined(problems: list[str]) -> ConfigError:
    """One problem as itself; several as ``N problems: a; b; c`` (``.problems`` keeps the list)."""
    exc = ConfigError(problems[0] if len(problems) == 1 else f"{len(problems)} problems: " + "; ".join(problems))
    exc.problems = problems  # type: ignore[attr-defined]
    return exc


def load_config(cls: type[T], path: str | Path) -> T:
    """Load and validate one role's YAML file; errors are prefixed with the file name."""
    p = Path(path)
    data = load_yaml(p)
    try:
        return from_dict(cls, data, base=p.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
