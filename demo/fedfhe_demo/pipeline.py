"""`make demo`: PKI → partition → federated training → FHE compile → encrypted inference → report.

Every role is a real process on loopback talking TLS. Whatever happens (a step
fails, Ctrl-C, SIGTERM) every process started here is stopped, and the message
says which step failed and where its log is.
"""

from __future__ import annotations

import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from fedfhe_common.errors import FedfheError


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
    n_bits: str = "8"
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


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(opts: Options) -> int:
    from .phases import run_phases

    console = Console()
    work = (opts.work_dir or Path(tempfile.mkdtemp(prefix="fedfhe-demo-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    console.print(f"fedfhe demo: work directory [bold]{work}[/bold]")
    previous = signal.signal(signal.SIGTERM, _sigterm)
    steps = Steps(console)
    try:
        run_phases(opts, work, steps, console)
    except KeyboardInterrupt:
        console.print(f"[red]fedfhe demo: interrupted during step '{steps.current}'; every process it started "
                      f"has been stopped. Logs: {work / 'logs'}")
        return 130
    except StepFailed as exc:
        console.print(f"[red]fedfhe demo: {exc}\n  every process it started has been stopped.")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
