"""Short-lived certificates and `fedfhe-pki renew` (issue 26); `list` flags the ones ending soon.

A renewal keeps the subject, the SANs and (unless asked) the key, and extends notAfter;
`--new-key` (or a fresh request, `--csr`) changes the key and revokes the old certificate.
Revocation keeps working: `revoke NAME` reaches the renewed certificate and the one it renewed.
"""

from __future__ import annotations

import datetime as dt
import json

from cryptography import x509

from fedfhe_common.pki.ca import init_ca, issue, key_fingerprint, revoked_serials
from fedfhe_common.pki.pki_cli import main as pki_main
from fedfhe_common.pki.pki_request import renew


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _revoked(ca) -> frozenset[int]:
    return revoked_serials((ca / "crl.pem").read_bytes(), [_cert(ca / "ca.crt")])


def _ext(cert: x509.Certificate) -> list[tuple]:
    return sorted((e.oid.dotted_string, e.critical, repr(e.value)) for e in cert.extensions)


def test_renew_keeps_the_key_and_names_and_extends_not_after_then_revoke_reaches_both(ca, capsys):
    issue(ca, "h1-superlink", server_hosts=["10.0.0.1", "coord.example"], days=10)
    old = _cert(ca / "h1-superlink.crt")
    key_before = (ca / "h1-superlink.key").read_bytes()
    assert pki_main(["--dir", str(ca), "renew", "h1-superlink", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    new = _cert(ca / "h1-superlink.crt")
    assert doc["renewed"] and doc["same_key"] and doc["old_serial"] == f"{old.serial_number:x}"
    assert (ca / "h1-superlink.key").read_bytes() == key_before
    assert key_fingerprint(new.public_key()) == key_fingerprint(old.public_key())
    assert new.subject == old.subject and _ext(new) == _ext(old) and new.serial_number != old.serial_number
    assert new.not_valid_after_utc - old.not_valid_after_utc > dt.timedelta(days=79)
    new.verify_directly_issued_by(_cert(ca / "ca.crt"))
    assert not (ca / "crl.pem").exists()  # the same key: nothing to revoke (both certificates are still good)
    # Revoking the name reaches the renewed certificate and the one it renewed (same key).
    assert pki_main(["--dir", str(ca), "revoke", "h1-superlink", "--reason", "keyCompromise"]) == 0
    assert _revoked(ca) == {old.serial_number, new.serial_number}
    # ... and a revoked certificate is not renewed back to life with its key.
    assert pki_main(["--dir", str(ca), "renew", "h1-superlink"]) == 1
    assert "is revoked: renewing it would bring its key back" in capsys.readouterr().err
    assert pki_main(["--dir", str(ca), "renew", "h1-superlink", "--new-key"]) == 0
    assert new.serial_number in _revoked(ca) and _cert(ca / "h1-superlink.crt").serial_number not in _revoked(ca)


def test_renew_new_key_changes_the_key_and_revokes_the_old_certificate(ca):
    issue(ca, "owner-0", client=True)
    old = _cert(ca / "owner-0.crt")
    old_key = (ca / "owner-0.key").read_bytes()
    assert pki_main(["--dir", str(ca), "renew", "owner-0", "--new-key", "--days", "30"]) == 0
    new = _cert(ca / "owner-0.crt")
    assert (ca / "owner-0.key").read_bytes() != old_key
    assert key_fingerprint(new.public_key()) != key_fingerprint(old.public_key())
    assert new.subject == old.subject and _ext(new) == _ext(old)
    assert new.not_valid_after_utc - new.not_valid_before_utc == dt.timedelta(days=30)
    assert _revoked(ca) == {old.serial_number}
    # revocation of the renewed certificate's serial
    assert pki_main(["--dir", str(ca), "revoke", "owner-0"]) == 0
    assert _revoked(ca) == {old.serial_number, new.serial_number}


def test_renew_in_the_request_flow_needs_no_key_at_the_ca(tmp_path, ca, capsys):
    host = tmp_path / "owner-host"
    assert pki_main(["request", "client", "owner-3", "--out", str(host)]) == 0
    assert pki_main(["--dir", str(ca), "sign", str(host / "owner-3.csr"), "--role", "client", "--days", "20"]) == 0
    first = _cert(ca / "owner-3.crt")
    # Same key: the CA re-certifies the public key it holds in owner-3.crt; nothing travels but the new certificate.
    assert pki_main(["--dir", str(ca), "renew", "owner-3"]) == 0
    second = _cert(ca / "owner-3.crt")
    assert key_fingerprint(second.public_key()) == key_fingerprint(first.public_key())
    assert second.not_valid_after_utc > first.not_valid_after_utc
    assert pki_main(["show", str(ca / "owner-3.crt"), "--key", str(host / "owner-3.key"),
                     "--ca", str(ca / "ca.crt")]) == 0
    # A new key is made on the host, never at the CA.
    capsys.readouterr()
    assert pki_main(["--dir", str(ca), "renew", "owner-3", "--new-key"]) == 1
    assert "its key lives on its own host" in capsys.readouterr().err
    assert not (ca / "owner-3.key").exists()
    assert pki_main(["request", "client", "owner-3", "--out", str(host), "--new-key"]) == 0
    assert pki_main(["--dir", str(ca), "renew", "owner-3", "--csr", str(host / "owner-3.csr")]) == 0
    third = _cert(ca / "owner-3.crt")
    assert key_fingerprint(third.public_key()) != key_fingerprint(second.public_key())
    assert pki_main(["show", str(ca / "owner-3.crt"), "--key", str(host / "owner-3.key")]) == 0
    assert {first.serial_number, second.serial_number} <= _revoked(ca)  # the old key's certificates, both
    assert third.serial_number not in _revoked(ca)
    assert not [p for p in ca.iterdir() if p.name.endswith(".key") and p.name != "ca.key"]


def test_renew_with_a_request_is_checked_as_sign_checks_it(tmp_path, ca, capsys):
    host = tmp_path / "h"
    assert pki_main(["request", "inference", "h1-inference", "--san", "h1", "--out", str(host)]) == 0
    assert pki_main(["--dir", str(ca), "sign", str(host / "h1-inference.csr"), "--role", "inference",
                     "--san", "h1"]) == 0
    before = (ca / "h1-inference.crt").read_bytes()
    # more names than the certificate had
    assert pki_main(["request", "inference", "h1-inference", "--san", "h1", "--san", "evil.example",
                     "--out", str(host), "--new-key"]) == 0
    assert pki_main(["--dir", str(ca), "renew", "h1-inference", "--csr", str(host / "h1-inference.csr")]) == 1
    assert "not approved with --san: DNS:evil.example" in capsys.readouterr().err
    # another name's request
    assert pki_main(["request", "inference", "h2-inference", "--san", "h1", "--out", str(host)]) == 0
    assert pki_main(["--dir", str(ca), "renew", "h1-inference", "--csr", str(host / "h2-inference.csr")]) == 1
    assert "its CN 'h2-inference' is not 'h1-inference'" in capsys.readouterr().err
    # a client request for a server certificate
    assert pki_main(["request", "client", "h1-inference", "--out", str(tmp_path / "c")]) == 0
    assert pki_main(["--dir", str(ca), "renew", "h1-inference", "--csr",
                     str(tmp_path / "c" / "h1-inference.csr")]) == 1
    assert "role mismatch" in capsys.readouterr().err
    assert (ca / "h1-inference.crt").read_bytes() == before


def test_renew_within_renews_only_what_ends_soon(ca, capsys):
    issue(ca, "owner-0", client=True, days=10)
    issue(ca, "owner-1", client=True)
    soon, later = _cert(ca / "owner-0.crt"), _cert(ca / "owner-1.crt")
    for name in ("owner-0", "owner-1"):
        assert pki_main(["--dir", str(ca), "renew", name, "--within", "30", "--format", "json"]) == 0
    docs = [json.loads(d) for d in capsys.readouterr().out.replace("}\n{", "}\x00{").split("\x00")]
    assert [d["renewed"] for d in docs] == [True, False] and "not renewed" in docs[1]["reason"]
    assert _cert(ca / "owner-0.crt").serial_number != soon.serial_number
    assert _cert(ca / "owner-1.crt").serial_number == later.serial_number


def test_renew_refuses_what_it_cannot_renew(tmp_path, ca, capsys):
    assert pki_main(["--dir", str(ca), "renew", "nobody"]) == 1
    assert "no readable certificate to renew" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    init_ca(other)
    issue(ca, "x", client=True, ca_dir=other)
    assert pki_main(["--dir", str(ca), "renew", "x"]) == 1
    assert "not issued by the CA in" in capsys.readouterr().err
    issue(ca, "owner-0", client=True)
    issue(ca, "owner-9", client=True)
    (ca / "owner-0.key").write_bytes((ca / "owner-9.key").read_bytes())  # a key that is not owner-0.crt's
    assert pki_main(["--dir", str(ca), "renew", "owner-0"]) == 1
    assert "is not the key of" in capsys.readouterr().err
    assert pki_main(["--dir", str(ca), "renew", "ca"]) == 1
    assert "reserved for the CA's own files" in capsys.readouterr().err  # the CA is never renewed here


def test_a_certificate_issued_before_issued_txt_is_still_revoked_after_renewal(ca):
    issue(ca, "owner-0", client=True)
    old = _cert(ca / "owner-0.crt")
    (ca / "issued.txt").unlink()  # a PKI directory made before this version
    renew(ca, "owner-0")
    assert pki_main(["--dir", str(ca), "revoke", "owner-0"]) == 0
    assert old.serial_number in _revoked(ca) and _cert(ca / "owner-0.crt").serial_number in _revoked(ca)


def test_list_flags_certificates_ending_within_30_days(ca, capsys):
    issue(ca, "owner-0", client=True, days=10)
    issue(ca, "owner-1", client=True)
    issue(ca, "gone", client=True, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=5), days=1)
    assert pki_main(["--dir", str(ca), "list", "--format", "json"]) == 0  # flagged, not failed
    certs = {c["name"]: c for c in json.loads(capsys.readouterr().out)["certificates"]}
    assert certs["owner-0"]["expiring"] and not certs["owner-0"]["expired"]
    assert not certs["owner-1"]["expiring"] and 80 < certs["owner-1"]["days_left"] <= 90
    assert certs["gone"]["expired"] and not certs["gone"]["expiring"]
    assert pki_main(["--dir", str(ca), "list"]) == 0
    text = capsys.readouterr().out
    assert "owner-0.crt: client CN=owner-0" in text and "EXPIRES in 9 days: renew it (fedfhe-pki renew owner-0)" in text
    assert "gone.crt: client CN=gone serial" in text and "EXPIRED" in text
