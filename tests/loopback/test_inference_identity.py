"""Strict identity: certificates of an unusual name or shape, all chaining to the project CA, are refused.

Each certificate is built for real with ``cryptography`` and presented over
mutual TLS to a running node (no bundle needed: refusal comes before any RPC
runs, health and reflection included). Echoed input is bounded and escaped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inference_support import start_node

from fedfhe_common.pki.ca import load_ca
from fedfhe_common.runtime.procs import wait_until
from fedfhe_inference.identity import judge
from fedfhe_proto.inference.v1 import inference_pb2 as pb

pytestmark = pytest.mark.timeout(300)
FORGED = "FORGED 2026-01-01 INFO fedfhe.inference.rpc: ok"
UNUSUAL = ("nul-in-cn", "newline-in-cn", "two-cns", "no-cn", "intermediate", "grandchild")


def _name(*cns: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedfhe"),
                      *(x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in cns)])


def _issue(subject: x509.Name, issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey, *,
           ca: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A clientAuth certificate of any subject; ``ca`` makes it CA:TRUE with keyCertSign, like an intermediate."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _save(d: Path, name: str, chain: list[x509.Certificate], key: ec.EllipticCurvePrivateKey) -> None:
    (d / f"{name}.crt").write_bytes(b"".join(_pem(c) for c in chain))
    (d / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))


@pytest.fixture(scope="module")
def unusual(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of ``<name>.crt/.key`` pairs, every one chaining to the project CA."""
    d = tmp_path_factory.mktemp("unusual-certs")
    ca = load_ca(pki)
    for name, subject in (("nul-in-cn", _name("alice\x00evil")), ("newline-in-cn", _name(f"alice\n{FORGED}")),
                          ("two-cns", _name("alice", "bob")), ("no-cn", _name())):
        cert, key = _issue(subject, ca.cert, ca.key)
        _save(d, name, [cert], key)
    inter, inter_key = _issue(_name("alice"), ca.cert, ca.key, ca=True)
    _save(d, "intermediate", [inter], inter_key)
    grandchild, key = _issue(_name("alice"), inter, inter_key)
    _save(d, "grandchild", [grandchild, inter], key)
    return d


@pytest.fixture(scope="module")
def bare_node(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A node with no bundle: identity is checked before any RPC needs one."""
    n = start_node(tmp_path_factory.mktemp("identity-node"), pki)
    yield n
    n.stop()


@pytest.mark.parametrize("which", UNUSUAL)
def test_unusual_certificates_are_refused_before_any_rpc_runs(bare_node, unusual, which):
    refused = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
    if which == "grandchild":
        refused.add(grpc.StatusCode.UNAVAILABLE)  # the TLS layer may refuse the chain already (CA pathlen 0)
    with bare_node.channel(which, pki=unusual) as ch:
        for name, call in bare_node.calls(ch).items():
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() in refused, (name, info.value.code(), info.value.details())
            if info.value.code() != grpc.StatusCode.UNAVAILABLE:
                assert "certificate" in info.value.details(), (name, info.value.details())
    with bare_node.channel("alice") as ch:  # and the node goes on serving a proper owner
        assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=20).status == \
            health_pb2.HealthCheckResponse.SERVING
        assert pb_grpc_list(ch) == []


def pb_grpc_list(ch: grpc.Channel) -> list[str]:
    from fedfhe_proto.inference.v1 import inference_pb2_grpc as pb_grpc

    return [m.model_id for m in pb_grpc.InferenceStub(ch).ListModels(pb.ListModelsRequest(), timeout=20).models]


def test_a_newline_in_a_cn_forges_no_log_line(bare_node, unusual):
    with bare_node.channel("newline-in-cn", pki=unusual) as ch, pytest.raises(grpc.RpcError) as info:
        pb_grpc_list(ch)
    assert "\n" not in info.value.details() and "\\n" in info.value.details()
    wait_until(lambda: "FORGED 2026" in bare_node.log_text(), 30, "the refusal to be logged")
    lines = bare_node.log_text().splitlines()
    assert not [line for line in lines if line.startswith("FORGED")], "a CN started a line of its own in the log"
    assert any("alice\\nFORGED" in line for line in lines)


@pytest.mark.parametrize("which", ["nul-in-cn", "newline-in-cn", "two-cns", "no-cn", "intermediate"])
def test_the_identity_policy_refuses_each_shape(pki, unusual, which):
    """Directly, as if the TLS layer had let the certificate through."""
    ca_der = (load_ca(pki).cert.public_bytes(serialization.Encoding.DER),)
    verdict = judge((unusual / f"{which}.crt").read_bytes(), ca_der)
    assert verdict.code == grpc.StatusCode.PERMISSION_DENIED and verdict.message


def test_the_identity_policy_wants_the_project_ca_as_direct_issuer(pki, foreign_pki, unusual):
    ca_der = (load_ca(pki).cert.public_bytes(serialization.Encoding.DER),)
    grandchild = (unusual / "grandchild.crt").read_bytes().split(b"-----END CERTIFICATE-----")[0]
    grandchild += b"-----END CERTIFICATE-----\n"
    verdict = judge(grandchild, ca_der)
    assert verdict.code == grpc.StatusCode.PERMISSION_DENIED
    assert "not issued directly by the project CA" in verdict.message
    assert judge((foreign_pki / "alice.crt").read_bytes(), ca_der).code == grpc.StatusCode.PERMISSION_DENIED
    assert judge((pki / "alice.crt").read_bytes(), ca_der).owner == "alice"
    assert judge((pki / "inference.crt").read_bytes(), ca_der).code == grpc.StatusCode.PERMISSION_DENIED
    assert judge(b"not a certificate", ca_der).code == grpc.StatusCode.UNAUTHENTICATED


def test_a_huge_id_is_not_echoed_whole(bare_node):
    """A 60 MiB model id: the status names it, truncated; the node keeps serving."""
    huge = "m" * (60 << 20)
    with bare_node.channel("alice") as ch:
        from fedfhe_proto.inference.v1 import inference_pb2_grpc as pb_grpc

        stub = pb_grpc.InferenceStub(ch)
        for model_id in (huge, "digits\nFORGED line", huge + "\n"):
            with pytest.raises(grpc.RpcError) as info:
                stub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(model_id=model_id)), timeout=60)
            details = info.value.details()
            assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), details
            assert len(details) <= 1200 and "\n" not in details, details[:200]
            assert "mmmm" in details or "FORGED" in details
        assert pb_grpc_list(ch) == []
    assert len(bare_node.log_text()) < (1 << 20)
