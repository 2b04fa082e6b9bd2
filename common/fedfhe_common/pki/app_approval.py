"""Which Flower App a data owner's SuperNode may run: the digests its owner pinned.

Every run submitted to the SuperLink ships its Flower App (a FAB, a zip) to every
SuperNode, and Flower's ``flwr-clientapp`` puts the unpacked FAB first on
``sys.path`` before importing the ClientApp: a FAB carrying its own
``fedfhe_owner/clientapp/client_app.py`` would run instead of the installed one and could
read the owner's rows. fedfhe's launcher (``fedfhe_owner.clientapp.clientapp_launcher``)
checks the FAB against the owner's ``approved_flower_apps`` (owner.yaml) before
anything of it is unpacked or imported.

What is pinned is the *app digest*: SHA-256 over the FAB's members (each name and
the SHA-256 of its uncompressed bytes), not over the zip's bytes. ``flwr run``
builds the zip deterministically (fixed dates, sorted members), but deflate output
may differ between zlib builds; the members do not. ``fedfhe-coordinator app-hash``
prints the digest of the app that ``fedfhe-coordinator train`` submits.

Why a pin and not a signature by the release key: that key lives on the
coordinator, which is exactly the party (or anyone with a shell there) this check
guards against. Flower 1.39's ``flower-supernode --trusted-entities`` cannot serve
either: it accepts only FABs whose verification records came from Flower's hosted
platform (``valid_license``, set by the SuperLink only for apps fetched from
Flower Hub), so it would refuse fedfhe's own app, which ``flwr run`` builds locally.

Kept free of Flower imports except in ``app_dir_digest``: the launcher imports this
module on every message.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
import zlib
from collections.abc import Collection, Mapping
from pathlib import Path

from fedfhe_common.runtime.errors import FedfheError

CONFIG_KEY = "approved_flower_apps"
ENV_APPROVED = "FEDFHE_APPROVED_APPS"  # comma-separated digests, set by `fedfhe-owner supernode`
ENV_OWNER = "FEDFHE_OWNER_ID"
DIGEST = re.compile(r"[0-9a-f]{64}")
_DOMAIN = b"fedfhe-flower-app-digest-v1\n"
MAX_FAB_BYTES = 10 * 1024 * 1024  # Flower's own FAB_MAX_SIZE
MAX_MEMBERS = 2000
MAX_UNPACKED_BYTES = 64 * 1024 * 1024
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f]")


class AppNotApproved(FedfheError):
    """A Flower App this owner did not approve (or that cannot be read): never unpacked, never run."""


def normalize_digest(value: str, where: str = CONFIG_KEY) -> str:
    """A digest as stored and compared: 64 lowercase hex; ValueError naming ``where`` otherwise."""
    text = value.strip().lower()
    text = text.removeprefix("sha256:")
    if not DIGEST.fullmatch(text):
        raise ValueError(f"{where}: expected a 64-hex-digit app digest "
                         f"(from `fedfhe-coordinator app-hash`), got {value!r}")
    return text


def fab_digest(fab: bytes) -> str:
    """The app digest of FAB bytes; AppNotApproved if they are not a sane zip."""
    if len(fab) > MAX_FAB_BYTES:
        raise AppNotApproved(f"the FAB has {len(fab)} bytes, over the {MAX_FAB_BYTES} allowed")
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                raise AppNotApproved(f"the FAB has {len(infos)} members, over the {MAX_MEMBERS} allowed")
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                raise AppNotApproved("the FAB has two members with the same name")
            lines: list[bytes] = []
            budget = MAX_UNPACKED_BYTES
            for info in sorted(infos, key=lambda i: i.filename):
                if _BAD_NAME.search(info.filename):
                    raise AppNotApproved(f"the FAB has a member name with control characters: {info.filename!r}")
                h = hashlib.sha256()
                with zf.open(info) as fh:
                    while chunk := fh.read(1 << 16):
                        budget -= len(chunk)
                        if budget < 0:
                            raise AppNotApproved(f"the FAB unpacks to more than {MAX_UNPACKED_BYTES} bytes")
                        h.update(chunk)
                lines.append(info.filename.encode("utf-8") + b"\0" + h.hexdigest().encode() + b"\n")
    except AppNotApproved:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError, ValueError) as exc:
        raise AppNotApproved(f"the FAB is not a readable zip: {str(exc)[:200]}") from None
    digest = hashlib.sha256(_DOMAIN)
    for line in lines:
        digest.update(line)
    return digest.hexdigest()


def check_fab(fab: bytes, fab_hash: str, approved: Collection[str]) -> str:
    """The FAB's app digest when this owner approved it; AppNotApproved saying why otherwise.

    ``fab_hash`` is the hash Flower announces for the FAB (it names the install
    directory); it must be the SHA-256 of these very bytes.
    """
    if not approved:
        raise AppNotApproved(
            f"no Flower App is approved on this host ({CONFIG_KEY} in owner.yaml is empty); "
            "pin the one printed by `fedfhe-coordinator app-hash`"
        )
    actual = hashlib.sha256(fab).hexdigest()
    if fab_hash != actual:
        raise AppNotApproved(f"the FAB announced as {fab_hash[:16]!r} hashes to {actual[:16]}")
    digest = fab_digest(fab)
    if digest not in approved:
        raise AppNotApproved(
            f"Flower App {digest} is not approved here (not in {CONFIG_KEY}, "
            f"{len(approved)} approved); nothing of it was unpacked or run"
        )
    return digest


def approved_from_env(env: Mapping[str, str]) -> frozenset[str]:
    """The approved digests the SuperNode launcher passed down (empty: refuse everything)."""
    out = set()
    for item in env.get(ENV_APPROVED, "").split(","):
        if item.strip():
            try:
                out.add(normalize_digest(item, ENV_APPROVED))
            except ValueError:
                continue  # a malformed entry approves nothing
    return frozenset(out)


def app_dir_fab(app: Path) -> bytes:
    """The FAB that `flwr run APP` builds (Flower's own builder, same rules)."""
    from flwr.cli.build import build_fab_from_disk  # lazy: flwr takes ~1 s to import

    try:
        return build_fab_from_disk(Path(app))
    except (ValueError, OSError) as exc:
        raise FedfheError(f"{app}: cannot build a Flower App from this folder: {exc}") from None


def app_dir_digest(app: Path) -> str:
    """The app digest of the FAB that `flwr run APP` builds."""
    return fab_digest(app_dir_fab(app))
