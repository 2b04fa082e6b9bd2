"""The owner's FHE keys for one model version: generated here, kept here (0600), never sent.

Layout under ``<state_dir>/inference/<model_id>/<version>/``::

    client.zip      public client specs from the inference node (hash-checked, inspected before loading)
    keyset.bin      private + evaluation keys (0600, atomic); only the evaluation part is uploaded
    key_ids.json    key id the node gave for our evaluation keys, per node address
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

from fedfhe_common.errors import FedfheError
from fedfhe_common.fileio import write_atomic

CLIENT_ZIP_MEMBERS = {"client.specs.json", "serialized_processing.json", "versions.json"}
MAX_CLIENT_ZIP_BYTES = 64 << 20
# Entries the encoder writes for whole scikit-learn / ONNX models: a client never needs them.
REFUSED_TYPE_NAMES = {"sklearn_model", "onnx_model"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_client_zip(data: bytes) -> None:
    """Refuse anything but Concrete ML's three JSON members, bounded in size (no zip bombs, no paths)."""
    if len(data) > MAX_CLIENT_ZIP_BYTES:
        raise FedfheError(f"client specs of {len(data)} bytes are larger than expected; refusing them")
    try:
        with zipfile.ZipFile(BytesIO(data)) as zf:
            infos = zf.infolist()
            names = {i.filename for i in infos}
            if not names <= CLIENT_ZIP_MEMBERS or "client.specs.json" not in names:
                raise FedfheError(f"client specs hold unexpected files {sorted(names - CLIENT_ZIP_MEMBERS)}")
            if sum(i.file_size for i in infos) > MAX_CLIENT_ZIP_BYTES:
                raise FedfheError("client specs unpack to more than 64 MiB; refusing them")
            has_processing = "serialized_processing.json" in names
            processing = json.loads(zf.read("serialized_processing.json")) if has_processing else {}
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FedfheError(f"client specs are not a valid Concrete ML client.zip: {exc}") from None

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type_name") in REFUSED_TYPE_NAMES:
                raise FedfheError(f"client specs embed a serialized {node['type_name']}; refusing them")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(processing)


class ModelKeys:
    """Client specs, keyset and uploaded-key ids of one model version, under the owner's state dir."""

    def __init__(self, state_dir: Path, model_id: str, version: str) -> None:
        for value in (model_id, version):
            if not _NAME.fullmatch(value):
                raise FedfheError(f"the inference node named a model {value!r} that is not a plain name")
        self.dir = Path(state_dir) / "inference" / model_id / version
        self.model_id, self.version = model_id, version
        self._fhe: Any = None

    @property
    def client_zip(self) -> Path:
        return self.dir / "client.zip"

    @property
    def keyset_path(self) -> Path:
        return self.dir / "keyset.bin"

    def _ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for d in (self.dir.parents[1], self.dir.parent, self.dir):  # inference/, <model_id>/, <version>/
            os.chmod(d, 0o700)

    def has_client_specs(self, sha256: str) -> bool:
        p = self.client_zip
        return p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == sha256

    def save_client_specs(self, data: bytes) -> None:
        check_client_zip(data)
        self._ensure_dir()
        write_atomic(self.client_zip, data, 0o644)

    def fhe_client(self) -> tuple[Any, float]:
        """FHEModelClient with this version's keyset, generated on first use; returns (client, keygen seconds)."""
        if self._fhe is not None:
            return self._fhe, 0.0
        from concrete import fhe
        from concrete.ml.deployment import FHEModelClient

        client = FHEModelClient(str(self.dir))  # no key_dir: Concrete's cache would write keys 0644
        started = time.perf_counter()
        if self.keyset_path.is_file():
            os.chmod(self.keyset_path, 0o600)
            client.client.keys = fhe.Keys.deserialize(self.keyset_path)
            seconds = 0.0
        else:
            client.generate_private_and_evaluation_keys()
            self._ensure_dir()
            write_atomic(self.keyset_path, client.client.keys.serialize(), 0o600)
            seconds = time.perf_counter() - started
        self._fhe = client
        return client, seconds

    # ---- key ids the node handed out --------------------------------------
    def _ids(self) -> dict[str, Any]:
        try:
            data = json.loads((self.dir / "key_ids.json").read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, json.JSONDecodeError):
            return {}

    def key_id(self, address: str, evaluation_sha256: str) -> str | None:
        entry = self._ids().get(address)
        if isinstance(entry, dict) and entry.get("evaluation_keys_sha256") == evaluation_sha256:
            return str(entry.get("key_id") or "") or None
        return None

    def remember_key_id(self, address: str, key_id: str, evaluation_sha256: str) -> None:
        ids = self._ids()
        ids[address] = {"key_id": key_id, "evaluation_keys_sha256": evaluation_sha256, "uploaded_at": time.time()}
        self._ensure_dir()
        write_atomic(self.dir / "key_ids.json", (json.dumps(ids, indent=2) + "\n").encode(), 0o600)

    def forget_key_id(self, address: str) -> str | None:
        ids = self._ids()
        entry = ids.pop(address, None)
        if entry is not None:
            write_atomic(self.dir / "key_ids.json", (json.dumps(ids, indent=2) + "\n").encode(), 0o600)
        return entry.get("key_id") if isinstance(entry, dict) else None
