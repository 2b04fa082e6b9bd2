"""Submit a federated run and follow it: progress per round, then the verified artifact."""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedfhe_common.contracts.artifact import TrainingArtifact
from fedfhe_common.contracts.schema import resolve_schema
from fedfhe_common.ml import models
from fedfhe_common.pki.release import load_signing_key
from fedfhe_common.runtime.errors import ConfigError, FedfheError, IntegrityError, Terminated
from fedfhe_common.runtime.fileio import read_plain, write_atomic
from fedfhe_coordinator import aggregation, runs
from fedfhe_coordinator.config import CoordinatorConfig
from fedfhe_coordinator.run_config import RunConfig
from fedfhe_coordinator.train import flwr_cli

MAX_PROGRESS_BYTES = 64 << 20
_REFUSED: set[str] = set()  # progress files already reported as refused (read every 0.2 s)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def read_progress(path: Path, stale: tuple[int, int, int] | None = None) -> list[dict[str, Any]]:
    """progress.jsonl's rows; none while the file is still the one ``stale`` stamped (an older run's).

    The file lies in the ServerApp's directory, which the release user may not write (so not delete
    either): it is read as a plain file only, never through a link or from a FIFO.
    """
    if stale is not None and _stamp(path) == stale:
        return []
    try:
        text = read_plain(path, MAX_PROGRESS_BYTES).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except IntegrityError as exc:  # a link or FIFO planted there: no rows (the artifact is checked on its own)
        if str(path) not in _REFUSED:
            _REFUSED.add(str(path))
            print(f"fedfhe-coordinator: round progress not shown: {exc}", file=sys.stderr, flush=True)
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line being written right now
    return rows


MAX_LOG_REOPENS = 5  # `flwr log --stream` reopened after a dropped connection while the run still runs
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The last line of a Python traceback: "RuntimeError: ...", "fedfhe_coordinator.serverapp.rounds.NodesLost: ..."
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|NodesLost): \S")


def failure_reason(log_text: str) -> str:
    """What went wrong, in one line, from `flwr run --stream`'s output (empty if nothing says)."""
    lines = [ANSI.sub("", line).rstrip() for line in log_text.splitlines()]
    for line in reversed(lines):
        if EXCEPTION_LINE.match(line):
            name, _, message = line.partition(": ")
            return message if name.endswith("NodesLost") else line
    # flwr's own CLI errors come in a box: "╭─ Error ─...", "│ text │", "╰─...".
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("╭─ Error"):
            body = []
            for line in lines[i + 1:]:
                if not line.startswith("│"):
                    break
                body.append(line.strip("│ "))
            return " ".join(b for b in body if b)
    return ""


def with_secure_aggregation(cfg: CoordinatorConfig, enabled: bool | None) -> CoordinatorConfig:
    """``cfg`` with ``training.secure_aggregation.enabled`` set for one run (None: as the config says).

    `train --secure-aggregation` lets an operator run one secure training without editing
    coordinator.yaml or restarting the SuperLink: the run config carries the mode, and owners
    apply secaggplus_mod per run. The section's other keys stay as configured and are checked
    again with the new mode, before anything starts.
    """
    sa = cfg.training.secure_aggregation
    if enabled is None or enabled == sa.enabled:
        return cfg
    flag = "--secure-aggregation" if enabled else "--no-secure-aggregation"
    try:
        return replace(cfg, training=replace(cfg.training, secure_aggregation=replace(sa, enabled=enabled)))
    except ConfigError as exc:
        raise ConfigError(f"{flag} (training.secure_aggregation.enabled: {str(enabled).lower()} for this run): "
                          f"{exc}") from None


def preflight(cfg: CoordinatorConfig) -> None:
    """Refuse at once what the ServerApp would refuse only after every process is up: a family that
    does not fit the schema, an aggregation that cannot train it. A schema this process cannot resolve
    is left to the ServerApp to report."""
    try:
        schema = resolve_schema(cfg.training.schema)
    except ConfigError:
        return
    t = cfg.training
    models.check_family(t.model, schema)
    models.check_params(t.model, t.model_params, "training.model_params")  # not a traceback in each owner's fit
    sa = t.secure_aggregation
    aggregation.resolve(t.aggregation, t.model, schema, sa.enabled, t.clip_norm, sa.enabled and sa.noise_multiplier > 0,
                        t.model_params)


def run_training(
    cfg: CoordinatorConfig,
    overrides: dict[str, Any] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    timeout: float | None = None,
    on_start: Callable[[int], None] | None = None,
) -> TrainingArtifact:
    """Register the SuperNode keys, submit the app (`flwr run --format json` gives the run id), follow it
    (`flwr log --stream`, progress.jsonl), read its final status (`flwr ls --format json`), load the artifact.

    Ctrl-C or SIGTERM (systemd stopping a unit, Ansible's timeout, `kill`) stops the Flower run itself
    (`flwr stop`), not only this process, then re-raises: else the run goes on on the SuperLink with
    no one following it, and the next `train` queues behind it.
    """
    preflight(cfg)
    out = cfg.training.output_dir
    progress = out / "progress.jsonl"
    try:
        progress.unlink(missing_ok=True)
    except PermissionError:  # the ServerApp's directory, not the release user's: ignore the old rows instead
        pass
    stale = _stamp(progress)
    started = time.time()
    flwr_cli.register_supernodes(cfg)
    run = RunConfig.from_coordinator(cfg, overrides)
    run_config = flwr_cli.write_run_config(cfg, run)
    log_path = cfg.release_home / "flwr-run.log"
    log_path.unlink(missing_ok=True)
    rounds = run.num_server_rounds
    limit = timeout or (cfg.training.wait_for_nodes_s + cfg.training.round_timeout_s * 2 * rounds + 120)
    # Ctrl-C or SIGTERM while `flwr run` submits would leave a run no one knows the id of: both are
    # held until the id is known, then delivered inside the try below, which stops the run.
    with _sigterm_interrupts(), _interrupts_held() as release:
        run_id = flwr_cli.start_run(cfg, run_config)
        runs.record(cfg.release_home, run_id, event="submitted", model=cfg.training.model, rounds=rounds,
                    output_dir=str(out))
        if on_start:
            on_start(run_id)
        try:
            release()
            status = _follow(cfg, run_id, log_path, progress, stale, on_round, started + limit)
        except KeyboardInterrupt as exc:
            interrupted: KeyboardInterrupt | None = exc
        else:
            interrupted = None
    if interrupted is not None:
        with _sigterm_ignored():  # a second SIGTERM must not cut `flwr stop` short
            final = stop_and_wait(cfg, run_id)
        runs.record(cfg.release_home, run_id,
                    event="terminated" if isinstance(interrupted, Terminated) else "interrupted", status=final)
        raise interrupted
    produced = out / "artifact"
    try:
        fresh = (produced / "manifest.json").stat().st_mtime >= started
    except FileNotFoundError:
        fresh = False
    except OSError:  # there, but not readable by this user: adopt below refuses it, naming why
        fresh = True
    if not fresh:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        tail = "\n".join(ANSI.sub("", line) for line in text.splitlines()[-15:])
        reason = failure_reason(text) or status.get("status-details") or status.get("error", "")
        head = f"training failed: {reason}\n" if reason else ""
        runs.record(cfg.release_home, run_id, event="failed", status=status.get("status", "unknown"),
                    error=reason or "no artifact")
        # With the reason found, the log's traceback tail would only bury it: the log's path is enough.
        raise FedfheError(
            f"{head}the federated run {run_id} produced no artifact (Flower status "
            f"{status.get('status', 'unknown')}); log {log_path}" + ("" if reason else f":\n{tail}")
        )

    artifact_dir = cfg.report_dir / "artifact"
    try:
        artifact = TrainingArtifact.adopt(produced, artifact_dir, load_signing_key(cfg.release_key))
    except IntegrityError as exc:
        runs.record(cfg.release_home, run_id, event="failed", status=status.get("status", "unknown"), error=str(exc))
        raise FedfheError(f"training run {run_id}: the ServerApp's artifact was refused, nothing signed: "
                          f"{exc}") from None
    if cfg.release_dir is not None:  # the run's rounds beside its report, out of the service's directory
        rows = read_progress(progress)
        write_atomic(cfg.report_dir / "progress.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    runs.record(cfg.release_home, run_id, event="completed", status=status.get("status"), artifact=str(artifact_dir))
    return artifact


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` (a KeyboardInterrupt) in the main thread, as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live there only
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated()

    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:  # ignored on purpose: stays ignored
        yield
        return
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _interrupts_held() -> Iterator[Callable[[], None]]:
    """Hold Ctrl-C and SIGTERM until the yielded ``release()``, which raises the first one held.

    A Python handler, not a signal mask: `flwr run`'s process does not inherit it, so a Ctrl-C
    from the terminal still ends a submission that hangs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    held: list[KeyboardInterrupt] = []

    def hold(signum: int, frame: object) -> None:
        held.append(Terminated() if signum == signal.SIGTERM else KeyboardInterrupt())

    # A signal the operator ignores (nohup, a background job of a script: SIGINT is SIG_IGN) stays ignored.
    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) is not signal.SIG_IGN}

    def restore() -> None:
        while previous:
            sig, handler = previous.popitem()
            signal.signal(sig, handler)

    def release() -> None:
        restore()
        if held:
            raise held[0]

    try:
        yield release
    except FedfheError:
        if held:  # `flwr run` ended by the same Ctrl-C: report the interrupt, not its failure
            raise held[0] from None
        raise
    finally:
        restore()


@contextmanager
def _sigterm_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _follow(cfg: CoordinatorConfig, run_id: int, log_path: Path, progress: Path, stale: tuple[int, int, int] | None,
            on_round: Callable[[dict[str, Any]], None] | None, deadline: float) -> dict[str, Any]:
    """Report rounds as progress.jsonl grows until the run is finished; Flower's final status of it.

    The log stream ends when the run finishes (or the SuperLink goes away): then `flwr ls` says which.
    A stream that ended while the run still runs (a dropped connection) is reopened.
    """
    seen = 0
    proc = flwr_cli.log_popen(cfg, run_id, log_path)

    def report() -> None:
        nonlocal seen
        rows = read_progress(progress, stale)
        for row in rows[seen:]:
            if on_round:
                on_round(row)
        seen = len(rows)

    try:
        for _ in range(MAX_LOG_REOPENS):
            while proc.poll() is None:
                report()
                if time.time() > deadline:
                    stop_and_wait(cfg, run_id)
                    raise FedfheError(f"training did not finish in time: stopped Flower run {run_id}; see {log_path}")
                time.sleep(0.2)
            try:
                status = flwr_cli.run_status(cfg, run_id)
            except FedfheError as exc:  # the SuperLink is gone: the run cannot finish
                status = {"status": "unknown", "error": str(exc)}
            if not str(status.get("status", "")).startswith("running") or time.time() > deadline:
                break
            proc = flwr_cli.log_popen(cfg, run_id, log_path, append=True)
        report()
        return status
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def stop_and_wait(cfg: CoordinatorConfig, run_id: int, timeout: float = 60.0) -> str:
    """`flwr stop` the run and wait until `flwr ls` reports it finished; its final status."""
    print(f"fedfhe-coordinator: stopping Flower run {run_id} (flwr stop)", file=sys.stderr, flush=True)
    try:
        flwr_cli.stop_run(cfg, run_id)
    except FedfheError as exc:  # already finished, or the SuperLink is gone
        print(f"fedfhe-coordinator: {exc}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        try:
            status = str(flwr_cli.run_status(cfg, run_id).get("status", ""))
        except FedfheError:
            return "unknown"
        if status.startswith("finished"):
            break
        time.sleep(1.0)
    print(f"fedfhe-coordinator: Flower run {run_id}: {status or 'unknown'}", file=sys.stderr, flush=True)
    return status or "unknown"
