"""Keys made where they are used (issue 26): `request` on the host, `sign` beside the CA.

Every refusal is attacked with a real PKCS#10 request built with ``cryptography`` that has
exactly one thing wrong; a refused request writes nothing, and `sign` never writes a key.
"""

from __future__ import annotations

import datetime as dt
import json
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedfhe_common.pki.ca import LEAF_DAYS, issue, key_fingerprint
from fedfhe_common.pki.pki_cli import main as pki_main

SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _files(d) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _csr(
    cn: str | None = "owner-3",
    *,
    key=None,
    usages=(CLIENT,),
    sans=(),
    subject=None,
    extensions=(),
    hash_alg=None,
) -> x509.CertificateSigningRequest:
    """A request as `fedfhe-pki request client owner-3` makes it, with what the arguments change."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = subject or x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedfhe")]
                                + ([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn is not None else []))
    b = x509.CertificateSigningRequestBuilder().subject_name(name)
    b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    if usages is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    for ext, critical in extensions:
        b = b.add_extension(ext, critical=critical)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else (hash_alg or hashes.SHA256())
    return b.sign(key, algorithm)


def _write(tmp_path, csr: x509.CertificateSigningRequest, name: str = "req.csr"):
    path = tmp_path / name
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


def _sign(ca, csr_path, role, *extra) -> int:
    return pki_main(["--dir", str(ca), "sign", str(csr_path), "--role", role, *extra])


def test_a_request_made_on_the_host_is_signed_by_the_ca_without_its_key_leaving(tmp_path, ca, capsys):
    host = tmp_path / "owner-3-host"
    assert pki_main(["request", "client", "owner-3", "--out", str(host)]) == 0
    shown = capsys.readouterr().out
    key, csr = host / "owner-3.key", host / "owner-3.csr"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and "PRIVATE KEY" not in shown
    fingerprint = key_fingerprint(serialization.load_pem_private_key(key.read_bytes(), None).public_key())
    assert fingerprint in shown  # what the owner tells the CA by another channel

    before = _files(ca)
    assert _sign(ca, csr, "client") == 0
    out = capsys.readouterr().out
    for seen in ("subject:    CN=owner-3,O=fedfhe", "role:       client", "usage:      clientAuth", fingerprint):
        assert seen in out
    added = set(_files(ca)) - set(before)
    assert added == {"owner-3.crt", "issued.txt"}  # no private key: sign never makes one
    assert not [p for p in ca.iterdir() if p.suffix == ".key" and p.name != "ca.key"]

    cert = _cert(ca / "owner-3.crt")
    cert.verify_directly_issued_by(_cert(ca / "ca.crt"))
    assert key_fingerprint(cert.public_key()) == fingerprint
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [CLIENT]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert days == LEAF_DAYS == 90
    # The owner checks what came back: its own key, the CA it trusts.
    assert pki_main(["show", str(ca / "owner-3.crt"), "--key", str(key), "--ca", str(ca / "ca.crt")]) == 0
    other = tmp_path / "other"
    assert pki_main(["request", "client", "owner-3", "--out", str(other)]) == 0
    assert pki_main(["show", str(ca / "owner-3.crt"), "--key", str(other / "owner-3.key")]) == 1
    assert "is not for the key" in capsys.readouterr().out


def _extensions(cert: x509.Certificate) -> list[tuple]:
    return sorted((e.oid.dotted_string, e.critical, repr(e.value)) for e in cert.extensions)


@pytest.mark.parametrize("role", ["superlink", "inference", "registry"])
def test_a_server_request_gets_the_extensions_the_server_command_gives(tmp_path, ca, capsys, role):
    host = tmp_path / "host"
    sans = ["10.0.0.5", "node.example"]
    args = ["request", role, f"h1-{role}", "--out", str(host), "--format", "json"]
    assert pki_main([*args, *(f"--san={s}" for s in sans)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["sans"] == ["IP:10.0.0.5", "DNS:node.example"] and doc["usages"] == ["serverAuth"]
    assert _sign(ca, host / f"h1-{role}.csr", role, "--san", "node.example", "--san", "10.0.0.5",
                 "--format", "json") == 0
    signed = json.loads(capsys.readouterr().out)
    assert signed["role"] == role and signed["key_sha256"] == doc["key_sha256"]
    direct, _ = issue(tmp_path / "direct", f"h1-{role}", server_hosts=sans, ca_dir=ca)
    assert _extensions(_cert(ca / f"h1-{role}.crt")) == _extensions(_cert(direct))
    assert _cert(ca / f"h1-{role}.crt").subject == _cert(direct).subject


def test_a_client_request_gets_the_extensions_the_client_command_gives(tmp_path, ca):
    assert pki_main(["request", "client", "owner-3", "--out", str(tmp_path / "h")]) == 0
    assert _sign(ca, tmp_path / "h" / "owner-3.csr", "client") == 0
    direct, _ = issue(tmp_path / "direct", "owner-3", client=True, ca_dir=ca)
    assert _extensions(_cert(ca / "owner-3.crt")) == _extensions(_cert(direct))


def test_request_keeps_the_hosts_key_unless_asked_and_follows_the_naming_rules(tmp_path, capsys):
    out = tmp_path / "h"
    assert pki_main(["request", "client", "owner-3", "--out", str(out)]) == 0
    first = (out / "owner-3.key").read_bytes()
    assert pki_main(["request", "client", "owner-3", "--out", str(out)]) == 0
    assert (out / "owner-3.key").read_bytes() == first  # a fresh request for the same key
    assert pki_main(["request", "client", "owner-3", "--out", str(out), "--new-key"]) == 0
    assert (out / "owner-3.key").read_bytes() != first
    capsys.readouterr()
    assert pki_main(["request", "client", "owner-3", "--san", "x.example", "--out", str(out)]) == 1
    assert "a client certificate has no SANs" in capsys.readouterr().err
    assert pki_main(["request", "superlink", "h1-superlink", "--out", str(out)]) == 1
    assert "give them with --san" in capsys.readouterr().err
    assert pki_main(["request", "client", "_owner", "--out", str(out)]) == 1
    assert "is not an owner name" in capsys.readouterr().err
    assert pki_main(["request", "client", "owner-9"]) == 1  # neither --out nor --dir
    assert "--out" in capsys.readouterr().err
    assert not (out / "_owner.key").exists() and not (out / "owner-9.key").exists()


def test_sign_name_binds_the_request_to_the_host_and_ca_files_are_reserved(tmp_path, ca, capsys):
    """A host asking for another's name (or for CN=ca, which would overwrite ca.crt) is refused."""
    out = tmp_path / "h"
    assert pki_main(["request", "client", "owner-1", "--out", str(out)]) == 0  # owner-0's host, lying
    capsys.readouterr()
    assert pki_main(["--dir", str(ca), "sign", str(out / "owner-1.csr"), "--role", "client", "--name", "owner-0",
                     "--force"]) == 1
    assert "its CN 'owner-1' is not 'owner-0'" in capsys.readouterr().err
    assert not (ca / "owner-1.crt").exists()
    ca_crt = (ca / "ca.crt").read_bytes()
    assert pki_main(["request", "client", "ca", "--out", str(out)]) == 1
    assert "reserved for the CA's own files" in capsys.readouterr().err
    assert (ca / "ca.crt").read_bytes() == ca_crt


def test_file_name_names_the_files_a_hosts_config_names_and_the_cn_stays(tmp_path, ca, capsys):
    out = tmp_path / "h"
    assert pki_main(["request", "superlink", "h1-superlink", "--san", "10.0.0.1", "--out", str(out),
                     "--file-name", "superlink"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["superlink.csr", "superlink.key"]
    assert pki_main(["--dir", str(ca), "sign", str(out / "superlink.csr"), "--role", "superlink",
                     "--san", "10.0.0.1"]) == 0
    assert (ca / "h1-superlink.crt").exists()  # the CA names it by its CN
    capsys.readouterr()
    assert pki_main(["request", "client", "owner-3", "--out", str(out), "--file-name", "../x"]) == 1
    assert "names may use" in capsys.readouterr().err


def test_supernode_key_runs_on_the_owners_host_without_a_ca(tmp_path):
    host = tmp_path / "owner-host"
    assert pki_main(["supernode-key", "owner-3", "--out", str(host)]) == 0
    assert sorted(p.name for p in host.iterdir()) == ["owner-3.supernode.key", "owner-3.supernode.pub"]
    assert stat.S_IMODE((host / "owner-3.supernode.key").stat().st_mode) == 0o600


def _dns(*names):
    return [x509.DNSName(n) for n in names]


def _ip(a):
    import ipaddress

    return x509.IPAddress(ipaddress.ip_address(a))


BAD = {
    # role mismatch: the request asks for another role's usage
    "client-request-as-superlink": (lambda: _csr("owner-3"), "superlink", ["--san", "h1"],
                                    "role mismatch: it asks for clientAuth (a client certificate)"),
    "server-request-as-client": (lambda: _csr("h1-superlink", usages=(SERVER,), sans=_dns("h1")), "client", [],
                                 "role mismatch: it asks for serverAuth (a server certificate)"),
    "both-usages": (lambda: _csr("owner-3", usages=(CLIENT, SERVER)), "client", [], "role mismatch"),
    "no-usage": (lambda: _csr("owner-3", usages=None), "client", [], "names no extendedKeyUsage"),
    # the owner-name rule on a client CN
    "cn-starts-with-dash": (lambda: _csr("-owner"), "client", [], "is not an owner name"),
    "cn-with-space": (lambda: _csr("owner 3"), "client", [], "is not an owner name"),
    "cn-too-long": (lambda: _csr(subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "o" * 65,
                                                                       _validate=False)])),
                    "client", [], "is not an owner name"),
    "cn-with-nul": (lambda: _csr("owner-0\x00evil"), "client", [], "is not an owner name"),
    "cn-path": (lambda: _csr("../ca", usages=(SERVER,), sans=_dns("h1")), "superlink", ["--san", "h1"],
                "names may use letters"),
    "no-cn": (lambda: _csr(None), "client", [], "0 common names"),
    "two-cns": (lambda: _csr(subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "owner-3"),
                                                x509.NameAttribute(NameOID.COMMON_NAME, "owner-4")])),
                "client", [], "2 common names"),
    "other-organization": (lambda: _csr(subject=x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evil"),
                                                           x509.NameAttribute(NameOID.COMMON_NAME, "owner-3")])),
                           "client", [], "is not O=fedfhe,CN=<name>"),
    "extra-subject-field": (lambda: _csr(subject=x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admins"),
        x509.NameAttribute(NameOID.COMMON_NAME, "owner-3")])), "client", [], "is not O=fedfhe,CN=<name>"),
    # SANs a role may not have, or the CA did not approve
    "client-with-dns-san": (lambda: _csr("owner-3", sans=_dns("owner-3.example")), "client", [],
                            "a client certificate has no SANs (the owner is its CN); it asks for DNS:owner-3.example"),
    "server-extra-san": (lambda: _csr("h1-inference", usages=(SERVER,), sans=[*_dns("h1", "superlink.example"),
                                                                              _ip("10.0.0.1")]),
                         "inference", ["--san", "h1", "--san", "10.0.0.1"],
                         "SANs not approved with --san: DNS:superlink.example"),
    "server-extra-ip": (lambda: _csr("h1-inference", usages=(SERVER,), sans=[*_dns("h1"), _ip("10.0.0.9")]),
                        "inference", ["--san", "h1"], "not approved with --san: IP:10.0.0.9"),
    "server-nothing-approved": (lambda: _csr("h1-inference", usages=(SERVER,), sans=_dns("h1")), "inference", [],
                                "no SANs approved: give the inference's host names with --san"),
    "server-no-san": (lambda: _csr("h1-inference", usages=(SERVER,)), "inference", ["--san", "h1"],
                      "it asks for no SANs"),
    "server-email-san": (lambda: _csr("h1-inference", usages=(SERVER,),
                                      sans=[*_dns("h1"), x509.RFC822Name("a@b.example")]),
                         "inference", ["--san", "h1"], "other than DNS names and IP addresses: email:a@b.example"),
    "wildcard-san": (lambda: _csr("h1-inference", usages=(SERVER,), sans=_dns("*.example")), "inference",
                     ["--san", "h1.example"], "not approved with --san: DNS:*.example"),
    # weak or unsupported keys
    "rsa-1024": (lambda: _csr(key=rsa.generate_private_key(65537, 1024)), "client", [], "RSA 1024, too weak"),
    "rsa-exponent-3": (lambda: _csr(key=rsa.generate_private_key(3, 2048)), "client", [], "public exponent 3"),
    "secp256k1": (lambda: _csr(key=ec.generate_private_key(ec.SECP256K1())), "client", [], "curve secp256k1"),
    "ed25519": (lambda: _csr(key=ed25519.Ed25519PrivateKey.generate()), "client", [], "Ed25519 is not supported"),
    # extensions that would make it a CA, or that fedfhe certificates never have
    "basic-constraints-ca": (lambda: _ca_csr(), "client", [],
                             "it asks to be a CA (basicConstraints CA:TRUE)"),
    "key-cert-sign": (lambda: _csr(extensions=[(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                                              False), True)]),
                      "client", [], "keyCertSign/cRLSign"),
    "name-constraints": (lambda: _csr(extensions=[(x509.NameConstraints(_dns("example"), None), True)]), "client",
                         [], "NameConstraints, an extension of CA certificates"),
    "unknown-extension": (lambda: _csr(extensions=[(x509.UnrecognizedExtension(
        x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), False)]), "client", [],
                          "(1.3.6.1.4.1.99999.1), which fedfhe certificates do not have"),
    "ocsp-must-staple": (lambda: _csr(extensions=[(x509.TLSFeature([x509.TLSFeatureType.status_request]), False)]),
                         "client", [], "which fedfhe certificates do not have"),
}


def _ca_csr() -> x509.CertificateSigningRequest:
    """basicConstraints CA:TRUE instead of CA:FALSE (the builder takes one basicConstraints)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedfhe"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, "owner-3")]))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([CLIENT]), critical=False)
            .sign(key, hashes.SHA256()))


@pytest.mark.filterwarnings("ignore:Attribute's length must be")  # cn-too-long: made on purpose
@pytest.mark.parametrize("case", sorted(BAD))
def test_a_request_with_one_thing_wrong_is_refused_naming_it_and_nothing_is_written(tmp_path, ca, capsys, case):
    make, role, extra, reason = BAD[case]
    csr = _write(tmp_path, make())
    before = _files(ca)
    assert _sign(ca, csr, role, *extra) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fedfhe-pki: error: req.csr refused for role {role}: ") and reason in err, err
    assert _files(ca) == before


def test_a_request_altered_in_transit_fails_its_self_signature(tmp_path, ca, capsys):
    der = _csr("owner-3").public_bytes(serialization.Encoding.DER)
    assert der.count(b"owner-3") == 1
    forged = tmp_path / "forged.csr"
    forged.write_bytes(der.replace(b"owner-3", b"owner-4"))  # the name swapped, the signature kept
    before = _files(ca)
    assert _sign(ca, forged, "client") == 1
    err = capsys.readouterr().err
    assert "its self-signature does not verify" in err and _files(ca) == before


def test_a_request_signed_with_less_than_sha256_is_refused(tmp_path, ca, capsys):
    assert _sign(ca, _write(tmp_path, _csr("owner-3", hash_alg=hashes.SHA224())), "client") == 1
    assert "it is signed with sha224: use SHA-256 or better" in capsys.readouterr().err


def test_every_reason_is_named_at_once_and_junk_is_no_request(tmp_path, ca, capsys):
    csr = _csr("-x", key=rsa.generate_private_key(65537, 1024), usages=(SERVER,), sans=_dns("evil.example"))
    assert _sign(ca, _write(tmp_path, csr), "client") == 1
    err = capsys.readouterr().err
    for reason in ("too weak", "is not an owner name", "role mismatch", "has no SANs"):
        assert reason in err
    (tmp_path / "junk.csr").write_text("-----BEGIN CERTIFICATE REQUEST-----\nnope\n")
    assert _sign(ca, tmp_path / "junk.csr", "client") == 1
    assert "not a PKCS#10 certificate request" in capsys.readouterr().err
    assert pki_main(["--dir", str(ca), "sign", str(tmp_path / "absent.csr"), "--role", "client"]) == 1
    with pytest.raises(SystemExit) as usage:
        pki_main(["--dir", str(ca), "sign", str(tmp_path / "junk.csr"), "--role", "owner"])
    assert usage.value.code == 2


def test_sign_refuses_to_replace_a_certificate_unless_forced(tmp_path, ca, capsys):
    from fedfhe_common.pki.ca import revoked_serials

    for n in ("a", "b"):
        assert pki_main(["request", "client", "owner-3", "--out", str(tmp_path / n)]) == 0
    assert _sign(ca, tmp_path / "a" / "owner-3.csr", "client") == 0
    first = _cert(ca / "owner-3.crt")
    assert _sign(ca, tmp_path / "b" / "owner-3.csr", "client") == 1
    assert "exists: renew it" in capsys.readouterr().err
    assert _cert(ca / "owner-3.crt") == first
    assert _sign(ca, tmp_path / "b" / "owner-3.csr", "client", "--force") == 0
    assert "revoked as superseded" in capsys.readouterr().err
    ca_cert = [_cert(ca / "ca.crt")]
    assert revoked_serials((ca / "crl.pem").read_bytes(), ca_cert) == {first.serial_number}


def test_a_key_whose_certificate_was_revoked_is_not_certified_again(tmp_path, ca, capsys):
    assert pki_main(["request", "client", "owner-3", "--out", str(tmp_path / "h")]) == 0
    assert _sign(ca, tmp_path / "h" / "owner-3.csr", "client") == 0
    assert pki_main(["--dir", str(ca), "revoke", "owner-3", "--reason", "keyCompromise"]) == 0
    (ca / "owner-3.crt").unlink()  # even once its file is gone
    assert _sign(ca, tmp_path / "h" / "owner-3.csr", "client") == 1
    assert "was revoked (keyCompromise): a new key is needed" in capsys.readouterr().err
    assert pki_main(["request", "client", "owner-3", "--out", str(tmp_path / "h"), "--new-key"]) == 0
    assert _sign(ca, tmp_path / "h" / "owner-3.csr", "client") == 0


def test_days_sets_the_lifetime_and_may_not_outlive_the_ca(tmp_path, ca, capsys):
    assert pki_main(["request", "client", "owner-3", "--out", str(tmp_path / "h")]) == 0
    assert _sign(ca, tmp_path / "h" / "owner-3.csr", "client", "--days", "7") == 0
    cert = _cert(ca / "owner-3.crt")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=7)
    assert pki_main(["--dir", str(ca), "client", "owner-5", "--days", "30"]) == 0
    c5 = _cert(ca / "owner-5.crt")
    assert c5.not_valid_after_utc - c5.not_valid_before_utc == dt.timedelta(days=30)
    assert pki_main(["--dir", str(ca), "server", "s", "--host", "h", "--days", "5000"]) == 1
    assert "would end after the CA" in capsys.readouterr().err
    assert pki_main(["--dir", str(ca), "client", "owner-6", "--days", "0"]) == 1
    assert not (ca / "s.crt").exists() and not (ca / "owner-6.crt").exists()
    crt, _ = issue(ca, "owner-7", client=True)  # the library default is the CLI's
    c7 = _cert(crt)
    assert c7.not_valid_after_utc - c7.not_valid_before_utc == dt.timedelta(days=90)


def test_sign_force_with_the_same_key_revokes_nothing_but_revoke_reaches_both(tmp_path, ca, capsys):
    assert pki_main(["request", "client", "owner-3", "--out", str(tmp_path / "h")]) == 0
    csr = str(tmp_path / "h" / "owner-3.csr")
    assert _sign(ca, csr, "client") == 0
    first = _cert(ca / "owner-3.crt")
    assert _sign(ca, csr, "client", "--force") == 0
    assert "superseded" not in capsys.readouterr().err and not (ca / "crl.pem").exists()
    assert pki_main(["--dir", str(ca), "revoke", "owner-3"]) == 0
    from fedfhe_common.pki.ca import revoked_serials

    assert revoked_serials((ca / "crl.pem").read_bytes(), [_cert(ca / "ca.crt")]) == {
        first.serial_number, _cert(ca / "owner-3.crt").serial_number}


def test_a_refused_reissue_leaves_the_old_certificate_in_force(ca, capsys):
    assert pki_main(["--dir", str(ca), "client", "owner-0"]) == 0
    before = (ca / "owner-0.crt").read_bytes(), (ca / "owner-0.key").read_bytes()
    assert pki_main(["--dir", str(ca), "client", "owner-0", "--force", "--days", "9999"]) == 1
    assert "would end after the CA" in capsys.readouterr().err
    assert ((ca / "owner-0.crt").read_bytes(), (ca / "owner-0.key").read_bytes()) == before
    assert not (ca / "revoked.txt").exists()


def test_sign_notes_a_stale_key_left_beside_the_ca(tmp_path, ca, capsys):
    assert pki_main(["--dir", str(ca), "client", "owner-0"]) == 0  # the old way: the key made at the CA
    assert pki_main(["request", "client", "owner-0", "--out", str(tmp_path / "h")]) == 0
    assert _sign(ca, tmp_path / "h" / "owner-0.csr", "client", "--force") == 0
    err = capsys.readouterr().err
    assert "owner-0.key is not the key of the new certificate" in err and "revoked as superseded" in err
