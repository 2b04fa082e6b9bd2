"""Drive Flower's own CLI (`flwr run`, `flwr supernode register`) against our SuperLink.

flwr 1.39 reads SuperLink connections from ``$FLWR_HOME/config.toml``; we keep
a private FLWR_HOME under the coordinator's state dir so an operator's own
Flower config is never touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from fedfhe_common.errors import FedfheError
from fedfhe_common.fl_contract import owner_key_id, owner_name_from_key_file
from fedfhe_common.procs import flower_env, venv_bin

from .config import CoordinatorConfig

CONNECTION = "fedfhe"


def flower_app_dir() -> Path:
    """The Flower App (pyproject only) shipped inside this package."""
    return Path(str(resources.files("fedfhe_server") / "flower_app"))


def flwr_env(cfg: CoordinatorConfig) -> dict[str, str]:
    home = (cfg.state_dir / "flwr").resolve()
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
    (home / "config.toml").write_text(tomli_w.dumps(config))
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


def owner_keys(keys: list[Path]) -> dict[str, str]:
    """Registered key id -> owner name, as the ServerApp will see the keys (Flower stores them as PEM).

    The ServerApp names each reply's owner from this map and the node's registered
    public key, never from what the reply says about itself.
    """
    from cryptography.hazmat.primitives import serialization

    out = {}
    for path in keys:
        try:
            key = serialization.load_ssh_public_key(path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            raise FedfheError(f"{path}: cannot read the SuperNode public key: {exc}") from None
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        out[owner_key_id(pem)] = owner_name_from_key_file(path.name)
    return out


def write_run_config(cfg: CoordinatorConfig, overrides: dict[str, Any]) -> Path:
    t = cfg.training
    default_cap, per_owner = t.caps()
    values: dict[str, Any] = {
        "num-server-rounds": t.rounds,
        "model": t.model,
        "model-params": json.dumps(t.model_params),
        "schema": t.schema,
        "min-nodes": t.min_nodes,
        "local-epochs": t.local_epochs,
        "public-test": str(t.public_test.resolve()) if t.public_test else "",
        "output-dir": str(t.output_dir.resolve()),
        "round-timeout": float(t.round_timeout_s),
        "wait-for-nodes": float(t.wait_for_nodes_s),
        "owner-keys": json.dumps(owner_keys(cfg.supernode_public_keys)),
        "max-examples": int(default_cap),
        "max-examples-per-owner": json.dumps(per_owner),
        "aggregation": t.aggregation,
        "num-malicious-nodes": t.num_malicious_nodes,
        "trimmed-fraction": float(t.trimmed_fraction),
        "multikrum-select": t.multikrum_select,
        "clip-norm": float(t.clip_norm),
    }
    values.update(overrides)
    path = cfg.state_dir / "run-config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(values))
    return path


def run_popen(cfg: CoordinatorConfig, run_config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start `flwr run --stream`; its output (the ServerApp's log) goes to log_path.

    Stock `flwr run` finds the ClientApp's module too, so the coordinator installs fedfhe-client
    (README, "Things learned the hard way"); fedfhe does not replace Flower's functions to avoid it.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen(
        [venv_bin("flwr"), "run", str(flower_app_dir()), CONNECTION, "--stream", "--run-config", str(run_config)],
        env=flwr_env(cfg), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
