"""The project PKI: keys 0600, SANs as asked, an existing CA is never silently replaced."""

from __future__ import annotations

import json
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from fedfhe_common.pki.ca import common_name, init_ca, issue, revoke, supernode_keypair
from fedfhe_common.pki.pki_cli import main as pki_main
from fedfhe_common.runtime.errors import PKIError


def test_ca_is_not_overwritten(tmp_path):
    init_ca(tmp_path)
    before = (tmp_path / "ca.crt").read_bytes()
    with pytest.raises(PKIError, match="a CA already exists"):
        init_ca(tmp_path)
    init_ca(tmp_path, exist_ok=True)
    assert (tmp_path / "ca.crt").read_bytes() == before
    assert pki_main(["--dir", str(tmp_path), "init"]) == 1
    assert (tmp_path / "ca.crt").read_bytes() == before


def test_private_keys_are_0600(tmp_path):
    init_ca(tmp_path)
    _, key = issue(tmp_path, "superlink", server_hosts=["10.0.0.1", "coord.example"])
    priv, pub = supernode_keypair(tmp_path, "owner-0")
    for p in (tmp_path / "ca.key", key, priv):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    load_ssh_private_key(priv.read_bytes(), None)  # the format flower-supernode reads


def test_server_sans_and_client_identity(tmp_path):
    init_ca(tmp_path)
    crt, _ = issue(tmp_path, "inference", server_hosts=["10.0.0.5", "infer.local"])
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert sans.get_values_for_type(x509.DNSName) == ["infer.local"]
    ccrt, _ = issue(tmp_path, "owner-3", client=True)
    assert common_name(ccrt.read_bytes()) == "owner-3"


def test_names_with_paths_are_refused(tmp_path):
    init_ca(tmp_path)
    with pytest.raises(PKIError, match="names may use"):
        issue(tmp_path, "../evil", client=True)


def _serial(path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_revoke_writes_a_ca_signed_crl_and_force_reissue_revokes_the_old_certificate(tmp_path, capsys):
    from fedfhe_common.pki.ca import revoked_serials

    init_ca(tmp_path)
    ca = [x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())]
    issue(tmp_path, "owner-0", client=True)
    issue(tmp_path, "owner-1", client=True)
    first = _serial(tmp_path / "owner-1.crt")
    assert pki_main(["--dir", str(tmp_path), "revoke", "owner-0", "--reason", "keyCompromise"]) == 0
    crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert crl.next_update_utc is not None and crl.next_update_utc > crl.last_update_utc
    assert revoked_serials((tmp_path / "crl.pem").read_bytes(), ca) == {_serial(tmp_path / "owner-0.crt")}
    entry = crl.get_revoked_certificate_by_serial_number(_serial(tmp_path / "owner-0.crt"))
    assert entry is not None and entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value == (
        "keyCompromise")
    # Re-issuing with --force revokes the certificate it replaces; the new one is not on the CRL.
    assert pki_main(["--dir", str(tmp_path), "client", "owner-1", "--force"]) == 0
    serials = revoked_serials((tmp_path / "crl.pem").read_bytes(), ca)
    assert first in serials and _serial(tmp_path / "owner-1.crt") not in serials and len(serials) == 2
    # Revoking twice is one entry; 'crl' re-signs with the same entries.
    assert pki_main(["--dir", str(tmp_path), "revoke", "owner-0"]) == 0
    assert pki_main(["--dir", str(tmp_path), "crl", "--days", "7"]) == 0
    assert revoked_serials((tmp_path / "crl.pem").read_bytes(), ca) == serials
    assert pki_main(["--dir", str(tmp_path), "revoke", "nobody"]) == 1
    assert pki_main(["--dir", str(tmp_path), "revoke", "owner-0", "--reason", "bogus"]) == 1
    assert "no certificate issued" in capsys.readouterr().err


def test_a_crl_from_another_ca_does_not_verify(tmp_path):
    from fedfhe_common.pki.ca import revoked_serials

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        init_ca(d)
        issue(d, "owner-0", client=True)
        revoke(d, "owner-0")
    ca_a = [x509.load_pem_x509_certificate((a / "ca.crt").read_bytes())]
    with pytest.raises(PKIError, match="does not verify"):
        revoked_serials((b / "crl.pem").read_bytes(), ca_a)
    with pytest.raises(PKIError, match="not a PEM CRL"):
        revoked_serials(b"junk", ca_a)


def test_force_reissue_revokes_beside_the_issuing_ca_and_survives_a_broken_old_file(tmp_path):
    own, other = tmp_path / "own", tmp_path / "other"
    own.mkdir()
    other.mkdir()
    init_ca(own)
    init_ca(other)
    issue(own, "x", client=True, ca_dir=other)
    issue(own, "x", client=True, ca_dir=other, force=True)
    assert (other / "crl.pem").exists() and not (own / "crl.pem").exists()
    (own / "x.crt").write_text("broken")
    issue(own, "x", client=True, force=True)  # nothing readable to revoke: re-issued all the same
    assert x509.load_pem_x509_certificate((own / "x.crt").read_bytes())


def test_dir_may_follow_the_subcommand(tmp_path, capsys):
    """Issue 28: `fedfhe-pki release-key --dir D` was a usage error; every other fedfhe option follows its command."""
    assert pki_main(["release-key", "--dir", str(tmp_path / "after")]) == 0
    assert (tmp_path / "after" / "release.key").exists()
    assert pki_main(["--dir", str(tmp_path / "before"), "release-key"]) == 0  # the old place still works
    assert (tmp_path / "before" / "release.key").exists()
    capsys.readouterr()
    assert pki_main(["--dir", str(tmp_path / "before"), "list", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["directory"] == str(tmp_path / "before") and doc["release_key"]["private"] is True
