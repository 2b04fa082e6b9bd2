"""The demo's options and its step runner: what every phase module shares, so none imports the pipeline."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from fedfhe_common.runtime.errors import FedfheError


class StepFailed(Exception):
    def __init__(self, step: str, message: str, log: Path | None) -> None:
        super().__init__(f"step '{step}' failed: {message}" + (f"\n  log: {log}" if log else ""))
        self.step = step


@dataclass
class Options:
    dataset: str = "digits"
    owners: int = 3
    rounds: int = 5
    model: str = "LogisticRegression"
    split: str = "dirichlet"
    alpha: float = 1.0
    n_bits: str = "default"
    work_dir: Path | None = None
    max_rows: int | None = None
    seed: int = 0


class Steps:
    """Times each phase and turns any failure into StepFailed naming the phase and its log."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.timings: dict[str, float] = {}
        self.current = ""
        self.log: Path | None = None

    @contextmanager
    def __call__(self, name: str, log: Path | None = None) -> Iterator[None]:
        self.current, self.log = name, log
        self.console.rule(f"[bold]{name}")
        start = time.perf_counter()
        try:
            yield
        except (KeyboardInterrupt, StepFailed):
            raise
        except (FedfheError, OSError, RuntimeError, TimeoutError, ValueError) as exc:
            raise StepFailed(name, str(exc), self.log) from exc
        self.timings[name] = time.perf_counter() - start
