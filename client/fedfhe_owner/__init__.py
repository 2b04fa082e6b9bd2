"""fedfhe data-owner host: SuperNode, ClientApp, encrypted-inference client.

The public Python API is ``Predictor`` (``fedfhe_owner.api``): ``from fedfhe_owner import Predictor``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Predictor"]


def __getattr__(name: str) -> Any:
    # Lazy: the SuperNode and ClientApp import this package and need none of the inference client.
    if name == "Predictor":
        from fedfhe_owner.api import Predictor  # lazy: pulls in grpc

        return Predictor
    raise AttributeError(f"module 'fedfhe_owner' has no attribute {name!r}")
