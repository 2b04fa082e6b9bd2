"""``fedfhe-pki list``: what a PKI directory holds, for an operator or a script (``--format json``).

Certificates with their role, names, validity and revocation (checked against the
CA-signed ``crl.pem``, not the plain ``revoked.txt``), SuperNode key pairs, the release
key and the CRL's next update: the facts needed before a certificate expires unnoticed.
A certificate within ``RENEW_WITHIN_DAYS`` (30) of its end is flagged (``expiring``, and
``EXPIRES in N days`` in the text form) without failing the listing.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from cryptography import x509

from fedfhe_common.pki.ca import CRL_FILE, RENEW_WITHIN_DAYS, cert_hosts, cert_role, name_cn, revoked_serials
from fedfhe_common.runtime.errors import PKIError


def inventory(directory: Path, now: dt.datetime | None = None) -> dict[str, Any]:
    """Everything ``directory`` holds, as plain data (what ``fedfhe-pki list --format json`` prints)."""
    if not directory.is_dir():
        raise PKIError(f"{directory}: no such PKI directory")
    now = now or dt.datetime.now(dt.UTC)
    certs: dict[str, x509.Certificate] = {}
    problems = []
    for path in sorted(directory.glob("*.crt")):
        try:
            certs[path.stem] = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            problems.append(f"{path.name}: not a readable PEM certificate: {exc}")
    revoked: frozenset[int] = frozenset()
    crl: dict[str, Any] | None = None
    crl_path = directory / CRL_FILE
    if crl_path.exists():
        cas = [c for c in certs.values() if cert_role(c) == "ca"]
        try:
            revoked = revoked_serials(crl_path.read_bytes(), cas)
            parsed = x509.load_pem_x509_crl(crl_path.read_bytes())
            crl = {"file": CRL_FILE, "revoked": len(revoked),
                   "next_update": parsed.next_update_utc.isoformat() if parsed.next_update_utc else None}
        except PKIError as exc:
            problems.append(f"{CRL_FILE}: {exc}")
    rows = []
    for name, cert in certs.items():
        left = cert.not_valid_after_utc - now
        expired = left.total_seconds() <= 0
        rows.append({
            "name": name, "role": cert_role(cert), "common_name": name_cn(cert.subject), "sans": cert_hosts(cert),
            "serial": f"{cert.serial_number:x}", "not_after": cert.not_valid_after_utc.isoformat(),
            "days_left": left.days, "expired": expired,
            "expiring": not expired and left < dt.timedelta(days=RENEW_WITHIN_DAYS),
            "revoked": cert.serial_number in revoked, "key": (directory / f"{name}.key").exists(),
        })
    supernodes = sorted({p.name.removesuffix(".supernode.pub").removesuffix(".supernode.key")
                         for p in directory.glob("*.supernode.*") if p.suffix in (".pub", ".key")})
    return {
        "directory": str(directory),
        "certificates": rows,
        "supernode_keys": [{"name": n, "public": (directory / f"{n}.supernode.pub").exists(),
                            "private": (directory / f"{n}.supernode.key").exists()} for n in supernodes],
        "release_key": {"public": (directory / "release.pub").exists(),
                        "private": (directory / "release.key").exists()},
        "crl": crl,
        "problems": problems,
    }


def _renew_hint(cert: dict[str, Any]) -> str:
    if cert["role"] == "ca":
        return "make a new CA and re-issue every certificate"
    return f"renew it (fedfhe-pki renew {cert['name']})"


def render(inv: dict[str, Any]) -> list[str]:
    """The text form: one line per certificate and key."""
    lines = []
    for c in inv["certificates"]:
        state = ("REVOKED" if c["revoked"] else "EXPIRED" if c["expired"]
                 else f"EXPIRES in {c['days_left']} days: {_renew_hint(c)}" if c.get("expiring")
                 else f"{c['days_left']} days left")
        sans = f" [{', '.join(c['sans'])}]" if c["sans"] else ""
        lines.append(f"{c['name']}.crt: {c['role']} CN={c['common_name']}{sans} serial {c['serial']}, {state}")
    for k in inv["supernode_keys"]:
        have = [w for w in ("public", "private") if k[w]]
        lines.append(f"{k['name']}.supernode: SuperNode key pair ({' + '.join(have)})")
    rk = inv["release_key"]
    if rk["public"] or rk["private"]:
        lines.append(f"release key: {' + '.join(w for w in ('public', 'private') if rk[w])}")
    if inv["crl"]:
        lines.append(f"{inv['crl']['file']}: {inv['crl']['revoked']} revoked, next update {inv['crl']['next_update']}")
    lines += [f"problem: {p}" for p in inv["problems"]]
    return lines
