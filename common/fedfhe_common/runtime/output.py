"""``--format text|json`` for commands that report a result: one JSON document on stdout for scripts.

With ``--format json`` stdout carries only that document (progress and warnings stay on
stderr), so ``fedfhe-coordinator compile --format json | jq .bundle_sha256`` works.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text for people (default), json: one JSON document on stdout for scripts")


def wants_json(args: argparse.Namespace) -> bool:
    return getattr(args, "format", "text") == "json"


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str), flush=True)
