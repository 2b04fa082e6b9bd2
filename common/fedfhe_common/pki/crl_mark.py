"""Anti-rollback for the project CRL: the newest CRL number a host has accepted, kept in its own state.

An older CRL, even one the CA signed, un-revokes every certificate revoked since; an expired one may
miss recent revocations. Each host (the inference node, every data owner) refuses both, and remembers
the newest number it accepted in a file, so a restart does not reopen the door.
"""

from __future__ import annotations

from pathlib import Path

from fedfhe_common.pki.ca import CrlInfo
from fedfhe_common.runtime.errors import PKIError
from fedfhe_common.runtime.fileio import write_atomic

NONE_SEEN = -2  # below a CRL without a number (-1, pki.read_crl)


def newest_seen(mark: Path | None) -> int:
    """The number recorded in ``mark``; NONE_SEEN when there is no mark yet."""
    if mark is None:
        return NONE_SEEN
    try:
        text = Path(mark).read_text().strip()
    except FileNotFoundError:
        return NONE_SEEN
    except OSError as exc:
        raise PKIError(f"{mark}: cannot read the newest CRL number seen: {exc.strerror}") from None
    if not text.lstrip("-").isdigit():
        raise PKIError(f"{mark}: {text[:40]!r} is not a CRL number (this host's record of the newest CRL it "
                       "accepted; restore it, or delete it to accept any CA-signed CRL again)")
    return int(text)


def accept(info: CrlInfo, mark: Path | None, allow_expired: bool, floor: int = NONE_SEEN) -> None:
    """PKIError unless ``info`` may be the CRL in force here; then ``mark`` records its number.

    ``floor``: a number already accepted by this process (the mark may be absent).
    """
    newest = max(floor, newest_seen(mark))
    if info.number < newest:
        raise PKIError(f"CRL number {info.number} is older than the {newest} already accepted here (a rollback "
                       "would un-revoke certificates)")
    if info.expired() and not allow_expired:
        raise PKIError(f"the CRL expired at {info.next_update}: sign a fresh one (fedfhe-pki crl), or set "
                       "allow_expired_crl: true to accept it")
    if mark is not None and info.number > newest_seen(mark):
        write_atomic(Path(mark), f"{info.number}\n".encode(), 0o644)  # not secret; root and the service read it
