"""`make demo`: PKI → partition → federated training → FHE compile → encrypted inference → report.

Every role is a real process on loopback talking TLS. Whatever happens (a step
fails, Ctrl-C, SIGTERM) every process started here is stopped, and the message
says which step failed and where its log is.
"""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from .phases import run_phases
from .steps import Options, StepFailed, Steps


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(opts: Options) -> int:
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
