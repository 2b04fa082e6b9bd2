"""Shared pieces of the loader fuzz tests: byte mutations, valid seed files, the "clean outcome" check.

FEDFHE_FUZZ_SCALE multiplies every test's example count (default 1: the whole
fuzz suite stays well under a minute; 20 or more for a longer hunt).
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from fedfhe_common.contracts.schema import DIGITS
from fedfhe_common.ml.data import save_csv
from fedfhe_common.runtime.errors import FedfheError
from fedfhe_testbed.datasets import load_builtin

SCALE = max(1, int(os.environ.get("FEDFHE_FUZZ_SCALE", "1")))


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        deadline=None,  # no timed assertions; pytest-timeout catches a hang
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                               HealthCheck.data_too_large],
        print_blob=True,
    )


def clean(fn: Any, *args: Any) -> Any:
    """Call a loader: a result or a FedfheError is fine; any other exception fails the test."""
    try:
        return fn(*args)
    except FedfheError as exc:
        assert str(exc).strip(), "a FedfheError needs a message"
        return exc


# ---- byte mutations ----------------------------------------------------------------

INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\n", b"\r", b",", b'"', b":", b"-", b" ", b"\t", b"\\",
               b"\xef\xbb\xbf", b"\xc3\x28"]
# Tokens that steer text formats (CSV, YAML, JSON) into their corner cases.
TOKENS = [
    b"nan", b"inf", b"-inf", b"1e309", b"-1", b"99", b"1_0", b"0x" + b"f" * 3700, b"9" * 5000, b"2024-13-45",
    b"{", b"}", b"[", b"]", b"[" * 3000, b"&a ", b"*a", b"*nope", b"!!binary zz", b"!!python/object:os.system",
    b"!!float", b"? ", b"~", b"~nosuchuser/x", b".nan", b".inf", b"<<: *a", b"---\n", b"...\n", b"%YAML 9.9\n",
    b'"\\ud800"', b"'", b"\x00", b"x" * 140000, b"1e-400", b"true", b"null", b"..", b"../../etc/passwd", b"/",
]


@st.composite
def mutated(draw: st.DrawFn, seed: bytes, tokens: bool = True) -> bytes:
    """``seed`` with 1-6 edits: bit flips, byte sets, inserts, deletes, truncation, duplication."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup", "token"]
                                  if tokens else ["flip", "set", "insert", "delete", "truncate", "dup"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            chunk = draw(st.one_of(st.binary(min_size=1, max_size=16), st.sampled_from(INTERESTING)))
            data[at:at] = chunk
        elif op == "delete" and data:
            del data[at:at + draw(st.integers(1, 32))]
        elif op == "truncate":
            del data[at:]
        elif op == "dup" and data:
            n = draw(st.integers(1, 64))
            data[at:at] = data[at:at + n]
        elif op == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
    return bytes(data)


def bytes_or_mutation(seed: bytes, tokens: bool = True) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(seed, tokens), mutated(seed, tokens), st.binary(max_size=512))


# ---- valid seeds -------------------------------------------------------------------

def digits_rows(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    X, y, _ = load_builtin("digits", max_rows=200, seed=0)
    return X[:n], y[:n]


def csv_seed(tmp: Path) -> bytes:
    X, y = digits_rows()
    path = tmp / "seed.csv"
    save_csv(path, X, y, DIGITS)
    return path.read_bytes()


def npz_seed(compressed: bool) -> bytes:
    X, y = digits_rows()
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, X=X, y=y)
    return buf.getvalue()


def idx_seed() -> tuple[bytes, bytes]:
    X, y = digits_rows()
    images = X.reshape(-1, 8, 8).astype(np.uint8)
    img = bytes([0, 0, 0x08, 3]) + np.array(images.shape, dtype=">u4").tobytes() + images.tobytes()
    lab = bytes([0, 0, 0x08, 1]) + np.array([len(y)], dtype=">u4").tobytes() + y.astype(np.uint8).tobytes()
    return img, lab


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def coordinator_yaml(tmp: Path) -> dict[str, Any]:
    return {
        "state_dir": str(tmp / "coordinator"),
        "release_key": "pki/release.key",
        "supernode_public_keys": [str(tmp / "owner-0.supernode.pub"), "keys/owner-1.supernode.pub"],
        "superlink": {
            "certfile": "pki/superlink.crt", "keyfile": "pki/superlink.key", "ca_certfile": "pki/ca.crt",
            "fleet_address": "127.0.0.1:9092", "control_host": "127.0.0.1", "control_port": 9093,
            "database": "coordinator/superlink.db",
        },
        "training": {"output_dir": "training", "rounds": 3, "min_nodes": 2, "model_params": {"C": 0.5},
                     "round_timeout_s": 30.0, "wait_for_nodes_s": 60, "public_test": "data/public-test.npz"},
    }


def owner_yaml(tmp: Path) -> dict[str, Any]:
    return {
        "owner_id": "owner-0", "superlink": "127.0.0.1:9092", "root_certificates": "pki/ca.crt",
        "auth_key": "pki/owner-0.supernode.key", "data": "data/owner-0.npz", "state_dir": str(tmp / "owner-0"),
        "holdout_fraction": 0.2, "runtime_address": "127.0.0.1:9094",
        "inference": {"address": "127.0.0.1:9095", "certfile": "pki/owner-0.crt", "keyfile": "pki/owner-0.key",
                      "ca_certfile": "pki/ca.crt", "batch_size": 16},
    }


def schema_yaml() -> dict[str, Any]:
    return {"name": "tiny", "n_features": 4, "feature_min": 0.0, "feature_max": 1.0, "classes": [0, 1],
            "label_column": "label"}


def dump_yaml(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False).encode()


# Values a hostile or careless YAML author might put anywhere.
yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
              st.sampled_from(["~nosuchuser/x", "", "a\x00b", "../../etc/passwd", "2024-13-45", "0x10", "1e999"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def perturbed_mapping(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with some values replaced, keys dropped or added, at any depth."""
    out: dict[str, Any] = {}
    for key, value in base.items():
        choice = draw(st.integers(0, 9))
        if choice == 0:
            continue  # dropped
        if choice == 1:
            out[key] = draw(yaml_values)
        elif isinstance(value, dict) and choice < 6:
            out[key] = draw(perturbed_mapping(value))
        else:
            out[key] = value
    if draw(st.booleans()) and draw(st.booleans()):
        out[draw(st.text(min_size=1, max_size=8))] = draw(yaml_values)
    return out


def canonical_json(body: Any) -> bytes:
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
