"""Drive Flower's own CLI (`flwr run`, `flwr supernode register`) against our SuperLink.

flwr 1.39 reads SuperLink connections from ``$FLWR_HOME/config.toml``; we keep
a private FLWR_HOME under the coordinator's ``release_dir`` (else its state dir) so an
operator's own Flower config is never touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from fedfhe_common.contracts.fl_contract import owner_key_id
from fedfhe_common.runtime.errors import FedfheError
from fedfhe_common.runtime.procs import flower_env, venv_bin
from fedfhe_coordinator.config import CoordinatorConfig
from fedfhe_coordinator.run_config import RunConfig, owner_keys

CONNECTION = "fedfhe"


def flower_app_dir() -> Path:
    """The Flower App (pyproject only) shipped inside this package."""
    return Path(str(resources.files("fedfhe_coordinator") / "flower_app"))


def flwr_env(cfg: CoordinatorConfig) -> dict[str, str]:
    home = (cfg.release_home / "flwr").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = {
        "superlink": {
            "default": CONNECTION,
            CONNECTION: {
                "address": cfg.superlink.control_target,
                "root-certificates": str(cfg.superlink.ca_certfile.resolve()),
            },
        }
    }
    text, path = tomli_w.dumps(config), home / "config.toml"
    # Written only when it changes: root running `runs` or `register` must not leave a root-owned file
    # in the release user's directory that the release user could then not rewrite.
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return {**flower_env(), "FLWR_HOME": str(home)}


def _flwr(cfg: CoordinatorConfig, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_bin("flwr"), *args], env=flwr_env(cfg), capture_output=True, text=True, timeout=timeout, check=False
    )


def registered_keys(cfg: CoordinatorConfig) -> list[dict[str, Any]]:
    res = _flwr(cfg, "supernode", "list", CONNECTION, "--format", "json")
    if res.returncode != 0:
        raise FedfheError(f"flwr supernode list failed: {res.stdout.strip()} {res.stderr.strip()}")
    return json.loads(res.stdout).get("nodes", [])


# `flwr supernode list --format json` does not show public keys; Flower's own Control client does.
_LIST_WITH_KEYS = f"""
import json
from flwr.cli.flower_config import read_superlink_connection
from flwr.cli.utils import init_http_client_from_connection
from flwr.proto.control_pb2 import ListNodesRequest
client = init_http_client_from_connection(read_superlink_connection({CONNECTION!r}))
try:
    res = client.ListNodes(ListNodesRequest())
finally:
    client.close()
print(json.dumps([{{"node-id": n.node_id, "status": n.status, "public-key": n.public_key.decode()}}
                  for n in res.nodes_info]))
"""


def registered_public_keys(cfg: CoordinatorConfig) -> list[dict[str, Any]]:
    """Every node the SuperLink knows: node id, status and registered public key (PEM)."""
    res = subprocess.run([sys.executable, "-c", _LIST_WITH_KEYS], env=flwr_env(cfg), capture_output=True,
                         text=True, timeout=120, check=False)
    if res.returncode != 0:
        raise FedfheError(f"listing the SuperLink's SuperNode keys failed: {(res.stdout + res.stderr).strip()}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def departed_nodes(nodes: list[dict[str, Any]], keys: list[Path]) -> list[int]:
    """The reconcile plan: node ids still registered whose key is no longer in ``supernode_public_keys``."""
    wanted = set(owner_keys(keys))
    return sorted(
        int(n["node-id"]) for n in nodes
        if n.get("status") not in ("unregistered", "deleted")
        and owner_key_id(str(n["public-key"]).encode()) not in wanted
    )


def registration_plan(cfg: CoordinatorConfig) -> dict[str, Any]:
    """What `register` would do, read from the SuperLink (changes nothing): the keys of
    ``supernode_public_keys`` not registered yet, the node ids to unregister, and each node's
    status as `flwr supernode list --format json` reports it. ``in_sync`` when there is nothing to do.

    The SuperLink is the record (Ansible asks it instead of keeping a marker file): a wiped
    database shows up here as keys to register again.
    """
    with_keys = registered_public_keys(cfg)
    active = {owner_key_id(str(n["public-key"]).encode()) for n in with_keys
              if n.get("status") not in ("unregistered", "deleted")}
    missing = [str(p) for p in cfg.supernode_public_keys if not set(owner_keys([p])) <= active]
    departed = departed_nodes(with_keys, cfg.supernode_public_keys)
    return {"in_sync": not missing and not departed, "to_register": missing, "to_unregister": departed,
            "nodes": registered_keys(cfg)}


def register_supernodes(cfg: CoordinatorConfig, keys: list[Path] | None = None) -> list[str]:
    """Register each public key once (keys already known are left as they are).

    Without explicit ``keys`` the SuperLink is reconciled with ``supernode_public_keys``:
    a node whose key is no longer listed (a departed or revoked owner) is unregistered,
    so it can join no run. Returns one line per action.
    """
    done = []
    for key in keys if keys is not None else cfg.supernode_public_keys:
        if not key.is_file():
            raise FedfheError(f"{key}: SuperNode public key not found")
        res = _flwr(cfg, "supernode", "register", str(key.resolve()), CONNECTION, "--format", "json")
        out = (res.stdout + res.stderr).strip()
        if res.returncode != 0 and "already" not in out.lower():
            raise FedfheError(f"registering {key} failed: {out}")
        done.append(f"registered {key}")
    if keys is None:
        for node_id in departed_nodes(registered_public_keys(cfg), cfg.supernode_public_keys):
            res = _flwr(cfg, "supernode", "unregister", str(node_id), CONNECTION, "--format", "json")
            if res.returncode != 0:
                raise FedfheError(f"unregistering SuperNode {node_id} failed: {(res.stdout + res.stderr).strip()}")
            done.append(f"unregistered SuperNode {node_id} (its key is no longer in supernode_public_keys)")
    return done


def write_run_config(cfg: CoordinatorConfig, run: RunConfig) -> Path:
    """``run`` as the TOML file `flwr run --run-config` reads, in the release home (kept for the operator)."""
    path = cfg.release_home / "run-config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(run.to_flower()))
    return path


def _json_out(res: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    """The JSON document a `flwr ... --format json` printed; FedfheError with Flower's message if it failed."""
    text = res.stdout
    try:  # the one JSON document on stdout (indented); anything Flower printed before it is skipped
        data = json.JSONDecoder().raw_decode(text, text.index("{"))[0]
    except (ValueError, json.JSONDecodeError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    if res.returncode != 0 or not data.get("success"):
        message = data.get("error-message") or (res.stdout + res.stderr).strip() or f"exit {res.returncode}"
        raise FedfheError(f"{what} failed: {' '.join(str(message).split())}")
    return data


def start_run(cfg: CoordinatorConfig, run_config: Path) -> int:
    """Submit the Flower App with `flwr run --format json` and return Flower's run id (from its JSON, not its text).

    Stock `flwr run` finds the ClientApp's module too, so the coordinator installs fedfhe-owner
    (docs/flower-notes.md, "Things learned the hard way"); fedfhe does not replace Flower's functions to avoid it.
    """
    res = _flwr(cfg, "run", str(flower_app_dir()), CONNECTION, "--format", "json", "--run-config", str(run_config))
    return int(_json_out(res, "flwr run")["run-id"])


def log_popen(cfg: CoordinatorConfig, run_id: int, log_path: Path, append: bool = False) -> subprocess.Popen[bytes]:
    """`flwr log RUN --stream` into log_path: the ServerApp's log; it ends when the run finishes."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab" if append else "wb")  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen(
        [venv_bin("flwr"), "log", str(run_id), CONNECTION, "--stream"],
        env=flwr_env(cfg), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )


def list_runs(cfg: CoordinatorConfig, run_id: int | None = None) -> list[dict[str, Any]]:
    """`flwr ls --format json`: every run the SuperLink knows (or one), with its status
    (pending, starting, running, finished:completed|failed|stopped) and status details."""
    extra = ["--run-id", str(run_id)] if run_id is not None else []
    return list(_json_out(_flwr(cfg, "ls", CONNECTION, "--format", "json", *extra), "flwr ls").get("runs", []))


def run_status(cfg: CoordinatorConfig, run_id: int) -> dict[str, Any]:
    runs = list_runs(cfg, run_id)
    if not runs:
        raise FedfheError(f"flwr ls: the SuperLink knows no run {run_id}")
    return runs[0]


def stop_run(cfg: CoordinatorConfig, run_id: int) -> None:
    """`flwr stop RUN`: the SuperLink marks the run finished:stopped and its ServerApp ends."""
    _json_out(_flwr(cfg, "stop", str(run_id), CONNECTION, "--format", "json", timeout=60), f"flwr stop {run_id}")
