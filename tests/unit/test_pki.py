"""The project PKI: keys 0600, SANs as asked, an existing CA is never silently replaced."""

from __future__ import annotations

import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from fedfhe_common.errors import PKIError
from fedfhe_common.pki import common_name, init_ca, issue, supernode_keypair
from fedfhe_common.pki_cli import main as pki_main


def test_ca_is_not_overwritten(tmp_path):
    init_ca(tmp_path)
    before = (tmp_path / "ca.crt").read_bytes()
    with pytest.raises(PKIError, match="a CA already exists"):
        init_ca(tmp_path)
    init_ca(tmp_path, exist_ok=True)
    assert (tmp_path / "ca.crt").read_bytes() == before
    assert pki_main(["--dir", str(tmp_path), "init"]) == 2
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
