"""Anti-rollback of the project CRL on the inference node (issue 24).

An older CRL (a lower CRL number) would un-revoke owners, and an expired one is no
statement about now: both are refused on reload and the last good CRL stays in force;
at start an expired CRL stops the node unless the operator allows it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from fedfhe_common.pki.ca import init_ca, issue, load_ca, read_crl, revoke, write_crl
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_inference.identity import Revocations


def _expired_crl(d) -> None:
    """What `fedfhe-pki crl` signs, but two days ago, current for one day: a newer number, expired."""
    ca = load_ca(d)
    now = dt.datetime.now(dt.UTC)
    serial = _serial(d / "owner-0.crt")
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
           .last_update(now - dt.timedelta(days=2)).next_update(now - dt.timedelta(days=1))
           .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                    .revocation_date(now - dt.timedelta(days=3)).build())
           .sign(ca.key, hashes.SHA384()))
    (d / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))


def _serial(path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


@pytest.fixture()
def ca(tmp_path):
    init_ca(tmp_path)
    for owner in ("owner-0", "owner-1"):
        issue(tmp_path, owner, client=True)
    return tmp_path, [x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())]


def test_an_older_crl_is_refused_and_the_newer_stays_in_force(ca, caplog):
    d, cas = ca
    revoke(d, "owner-0")
    older = (d / "crl.pem").read_bytes()
    time.sleep(0.002)  # CRL numbers are milliseconds: the next one must differ (not a synchronisation)
    revoke(d, "owner-1")
    both = {_serial(d / "owner-0.crt"), _serial(d / "owner-1.crt")}
    assert read_crl(older, cas).number < read_crl((d / "crl.pem").read_bytes(), cas).number
    crl = Revocations(d / "crl.pem", cas)
    assert crl.current() == both
    (d / "crl.pem").write_bytes(older)  # owner-1 un-revoked, if the node took it
    with caplog.at_level(logging.ERROR):
        crl.reload()
    assert crl.current() == both
    assert "older than the" in caplog.text and "keeping the last good CRL (2 revoked)" in caplog.text
    time.sleep(0.002)
    write_crl(d)  # a newer one is taken as before
    crl.reload()
    assert crl.current() == both and crl.number == read_crl((d / "crl.pem").read_bytes(), cas).number


def test_an_expired_crl_is_refused_unless_allowed(ca, caplog):
    d, cas = ca
    revoke(d, "owner-0")
    crl = Revocations(d / "crl.pem", cas)
    time.sleep(0.002)
    _expired_crl(d)  # newer, but past its next update
    with caplog.at_level(logging.ERROR):
        crl.reload()
    assert "the CRL expired at" in caplog.text and crl.current() == {_serial(d / "owner-0.crt")}
    with pytest.raises(ConfigError, match="expired at .*allow_expired_crl"):
        Revocations(d / "crl.pem", cas)
    assert Revocations(d / "crl.pem", cas, allow_expired=True).current() == {_serial(d / "owner-0.crt")}


def _two_crls(d) -> tuple[bytes, bytes]:
    revoke(d, "owner-0")
    older = (d / "crl.pem").read_bytes()
    time.sleep(0.002)  # CRL numbers are milliseconds: the next one must differ (not a synchronisation)
    revoke(d, "owner-1")
    return older, (d / "crl.pem").read_bytes()


def test_the_node_remembers_the_newest_crl_across_a_restart(ca, tmp_path_factory):
    d, cas = ca
    mark = tmp_path_factory.mktemp("node-state") / ".crl-number"
    older, newer = _two_crls(d)
    Revocations(d / "crl.pem", cas, mark=mark)  # the node in force with the newer CRL
    assert int(mark.read_text()) == read_crl(newer, cas).number
    (d / "crl.pem").write_bytes(older)  # then stopped, the older CRL put back, started again
    with pytest.raises(ConfigError, match=r"CRL number \d+ is older than the \d+ already accepted here"):
        Revocations(d / "crl.pem", cas, mark=mark)
    mark.write_text("not a number")
    with pytest.raises(ConfigError, match="is not a CRL number"):
        Revocations(d / "crl.pem", cas, mark=mark)


def test_an_owner_refuses_an_older_or_expired_crl_before_connecting(ca, tmp_path_factory):
    from fedfhe_owner.server_certificate import ServerUnreachableError, refuse_if_revoked

    d, _ = ca
    mark = tmp_path_factory.mktemp("owner-state") / "crl-number"
    older, newer = _two_crls(d)
    nowhere = "127.0.0.1:1"  # the CRL is judged before any connection: these calls never reach a server
    with pytest.raises(ServerUnreachableError):
        refuse_if_revoked(nowhere, d / "ca.crt", d / "crl.pem", "SuperLink", mark=mark, timeout=2)
    assert mark.is_file()
    (d / "crl.pem").write_bytes(older)
    with pytest.raises(ConfigError, match="older than the .* already accepted here"):
        refuse_if_revoked(nowhere, d / "ca.crt", d / "crl.pem", "SuperLink", mark=mark, timeout=2)
    _expired_crl(d)
    with pytest.raises(ConfigError, match="expired"):
        refuse_if_revoked(nowhere, d / "ca.crt", d / "crl.pem", "inference node", mark=mark, timeout=2)
    with pytest.raises(ServerUnreachableError):  # an operator's allow_expired_crl: true
        refuse_if_revoked(nowhere, d / "ca.crt", d / "crl.pem", "inference node", mark=mark, timeout=2,
                          allow_expired=True)
    assert newer != older
