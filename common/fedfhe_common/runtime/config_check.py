"""``check-config``: validate a role's YAML file (and schema files) without starting anything.

Every console script that reads a config offers it (fedfhe-coordinator, fedfhe-owner,
fedfhe-inference), and Ansible runs it as the ``validate:`` of each config template,
so a bad file fails at template time, naming every problem, instead of as a service
that never comes up. ``--json-schema`` prints a JSON Schema of the file for editors
(generated from the same dataclasses the loader validates against).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fedfhe_common.contracts.schema import DatasetSchema, resolve_schema
from fedfhe_common.runtime.config import HostPort, Range, from_dict, load_yaml, salvage
from fedfhe_common.runtime.errors import ConfigError, FedfheError
from fedfhe_common.runtime.output import add_format, print_json

# A role's extra checks on a loaded config (a schema that resolves, a family that fits it): problems found.
Extra = Callable[[Any], list[str]]

# What HostPort accepts, for editors: host:port or [v6]:port, port 1-65535 (the loader checks the range).
HOST_PORT_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):[0-9]{1,5}$"
# Keys only test federations set (owner.yaml's test_hostile_reply, ...): the loader accepts them, the exported
# JSON Schema leaves them out, so an editor offers no one a hostile-reply switch and flags one in a real config.
TEST_ONLY_PREFIX = "test_"


def problems_of(exc: ConfigError) -> list[str]:
    return list(getattr(exc, "problems", None) or [str(exc)])


def duplicate_keys(text: str) -> list[str]:
    """Keys given twice in one mapping: YAML loaders keep the last silently, so an edit can be lost unseen."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return []  # load_yaml reports the syntax error
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                name = str(getattr(key, "value", ""))
                if name in seen:
                    out.append((key.start_mark.line + 1, f"line {key.start_mark.line + 1}: duplicate key {name!r} "
                                f"(also on line {seen[name]}; the later one would win)"))
                seen.setdefault(name, key.start_mark.line + 1)
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return [message for _, message in sorted(out)]


def check_file(cls: type, path: Path, extra: Extra | None = None) -> list[str]:
    """Every problem of one config file (empty: valid), each as the loader words it, plus duplicate keys."""
    try:
        data = load_yaml(path)
    except ConfigError as exc:
        return [str(exc)]
    problems = [f"{path}:{d.removeprefix('line ')}" for d in duplicate_keys(path.read_text(encoding="utf-8"))]
    try:
        cfg = from_dict(cls, data, base=path.resolve().parent)
    except ConfigError as exc:
        # The key errors, then what the whole-config checks say of the file with those keys at their defaults.
        found = problems_of(exc)
        salvaged, more = salvage(cls, data, base=path.resolve().parent)
        if salvaged is not None and extra:
            more += extra(salvaged)
        found += [p for p in dict.fromkeys(more) if p not in found]
        return problems + [f"{path}: {p}" for p in found]
    return problems + [f"{path}: {p}" for p in (extra(cfg) if extra else [])]


def check_schema_file(path: Path) -> list[str]:
    return check_file(DatasetSchema, path)


def schema_problems(name_or_path: str, key: str = "schema") -> list[str]:
    """A config's ``schema`` value: a built-in name or a schema file that loads."""
    try:
        resolve_schema(name_or_path)
    except ConfigError as exc:
        return [f"{key}: {p}" for p in problems_of(exc)]
    return []


# --- JSON Schema ---------------------------------------------------------------------------------

def _default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value):
        return {f.name: _default(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_default(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _default(v) for k, v in value.items()}
    return value


def type_schema(tp: Any) -> dict[str, Any]:
    """The JSON Schema of one field type, with the ranges and address forms the loader enforces."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        out = type_schema(args[0])
        for rule in tp.__metadata__:
            if isinstance(rule, Range):
                if rule.low is not None:
                    out["exclusiveMinimum" if rule.low_open else "minimum"] = rule.low
                if rule.high is not None:
                    out["exclusiveMaximum" if rule.high_open else "maximum"] = rule.high
            elif isinstance(rule, HostPort):
                out["pattern"] = f"^$|{HOST_PORT_PATTERN}" if rule.allow_empty else HOST_PORT_PATTERN
                out["description"] = "host:port ([v6]:port for IPv6)" + (", or empty" if rule.allow_empty else "")
        return out
    if origin in (typing.Union, types.UnionType):
        choices = [type_schema(a) for a in args if a is not type(None)]
        if type(None) in args:
            choices.append({"type": "null"})
        return choices[0] if len(choices) == 1 else {"anyOf": choices}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (list, tuple):
        return {"type": "array", "items": type_schema(args[0]) if args else {}}
    if origin is dict:
        return {"type": "object", "additionalProperties": type_schema(args[1]) if args else {}}
    if dataclasses.is_dataclass(tp):
        return dataclass_schema(tp)
    simple = {Path: {"type": "string", "minLength": 1}, bool: {"type": "boolean"}, int: {"type": "integer"},
              float: {"type": "number"}, str: {"type": "string"}}
    return dict(simple.get(tp, {}))


def dataclass_schema(cls: type) -> dict[str, Any]:
    """An object schema: known keys only (as the loader, less the test-only ones), required keys, defaults, the
    class docstring."""
    hints = typing.get_type_hints(cls, include_extras=True)
    props: dict[str, Any] = {}
    required = []
    for f in dataclasses.fields(cls):
        if f.name.startswith(TEST_ONLY_PREFIX):
            continue
        prop = type_schema(hints[f.name])
        if f.default is not dataclasses.MISSING:
            prop["default"] = _default(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            prop["default"] = _default(f.default_factory())
        else:
            required.append(f.name)
        props[f.name] = prop
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    doc = (cls.__doc__ or "").strip()
    if doc and not doc.startswith(f"{cls.__name__}("):  # dataclasses invent a signature as the docstring
        out["description"] = doc.splitlines()[0]
    return out


def json_schema(cls: type, title: str) -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **dataclass_schema(cls)}


# --- the subcommand ------------------------------------------------------------------------------

def add_check_config(sub: Any, cls: type, file_name: str, extra: Extra | None = None) -> argparse.ArgumentParser:
    """Add ``check-config`` to a console script whose role reads ``file_name`` (a ``cls`` config)."""

    def handler(args: argparse.Namespace) -> int:
        if args.json_schema:
            target, title = ((DatasetSchema, "fedfhe dataset schema") if args.json_schema == "schema"
                             else (cls, f"fedfhe {file_name}"))
            print_json(json_schema(target, title))
            return 0
        if args.config is None and not args.schema:
            raise ConfigError(f"give --config {file_name} and/or --schema FILE")
        results = []
        if args.config is not None:
            results.append((args.config, check_file(cls, args.config, extra)))
        results += [(p, check_schema_file(p)) for p in args.schema]
        failed = sum(bool(problems) for _, problems in results)
        if args.format == "json":
            print_json({"ok": not failed, "files": [
                {"file": str(p), "ok": not problems, "problems": problems} for p, problems in results]})
        else:
            for path, problems in results:
                if problems:
                    for line in problems:
                        print(line, file=sys.stderr)
                else:
                    print(f"{path}: ok")
        if failed:
            count = sum(len(problems) for _, problems in results)
            if args.format == "json":
                return 1
            raise FedfheError(f"{count} problem{'s' if count > 1 else ''} in {failed} file{'s' if failed > 1 else ''}")
        return 0

    p = sub.add_parser("check-config", help=f"validate {file_name} (and schema files) without starting anything; "
                                            "exit 1 naming every problem")
    p.add_argument("--config", type=Path, help=file_name)
    p.add_argument("--schema", type=Path, action="append", default=[], help="a dataset schema file (repeat)")
    p.add_argument("--json-schema", nargs="?", const="config", choices=("config", "schema"),
                   help=f"print the JSON Schema of {file_name} (or of a dataset schema file) for editors")
    add_format(p)
    p.set_defaults(fn=handler)
    return p
