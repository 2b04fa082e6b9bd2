"""The FHE deployment bundle as the coordinator writes it (the inference node reads the same layout).

A bundle directory holds Concrete ML's ``client.zip`` (public client specs)
and ``server.zip`` (the circuit), plus a SHA-256 ``manifest.json`` of kind
``fedfhe-fhe-bundle`` whose metadata names the model (``model_id``,
``version``), its dataset schema and the accuracies measured at compile time.
"""

from __future__ import annotations

import re

from .errors import ConfigError

BUNDLE_KIND = "fedfhe-fhe-bundle"
BUNDLE_FILES = ("client.zip", "server.zip")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def valid_name(value: str) -> bool:
    return bool(_NAME.fullmatch(value or ""))


def check_name(value: str, what: str) -> str:
    """Model ids and versions become directory names on the inference node: keep them plain."""
    if not valid_name(value):
        raise ConfigError(
            f"{what} {value!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value
