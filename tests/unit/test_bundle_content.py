"""The bundle content allow-list, built from real FHEModelDev bundles of every family fedfhe serves.

Every linear family fedfhe trains and a decision tree are compiled and saved with
Concrete ML's own FHEModelDev; each bundle must pass the checks as written, and
one planted entry of each hostile kind must be refused.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedfhe_common.contracts.bundle_content import (
    ALLOWED_REDUCE_TYPES,
    check_client_zip,
    check_security,
    check_server_zip,
    min_secure_variance,
)
from fedfhe_common.contracts.mlir_check import ALLOWED_FHE_OPS, check_mlir
from fedfhe_common.runtime.errors import IntegrityError

FAMILIES = ["LogisticRegression", "LinearSVC", "SGDClassifier", "LinearRegression", "Ridge", "Lasso", "ElasticNet",
            "DecisionTreeClassifier"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    import concrete.ml.sklearn as cml
    from concrete.ml.deployment import FHEModelDev
    from sklearn.datasets import load_diabetes, load_digits

    X, y = load_digits(return_X_y=True)
    Xr, yr = load_diabetes(return_X_y=True)
    out = {}
    for family in FAMILIES:
        regression = family in ("LinearRegression", "Ridge", "Lasso", "ElasticNet")
        A, b = (Xr, yr) if regression else (X, y)
        params: dict[str, Any] = {"n_bits": 8}
        if family == "DecisionTreeClassifier":
            params = {"n_bits": 4, "max_depth": 3}
        elif family == "SGDClassifier":
            params["max_iter"] = 5
        model = getattr(cml, family)(**params).fit(A[:300], b[:300])
        model.compile(A[:50])
        d = tmp_path_factory.mktemp(family)
        FHEModelDev(str(d), model).save()
        out[family] = {name: (d / name).read_bytes() for name in ("client.zip", "server.zip")}
    return out


def _rezip(data: bytes, member: str, doc_edit: Any) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            raw = src.read(info)
            if info.filename == member:
                doc = json.loads(raw)
                doc_edit(doc)
                raw = json.dumps(doc).encode()
            dst.writestr(info.filename, raw)
    return out.getvalue()


@pytest.mark.parametrize("family", FAMILIES)
def test_real_bundles_pass(bundles, family):
    specs = check_client_zip(bundles[family]["client.zip"])
    check_server_zip(bundles[family]["server.zip"])
    assert specs["keyset"]["lweSecretKeys"]


def test_the_enum_tags_in_real_configurations_are_exactly_the_allow_list(bundles):
    """Nothing allow-listed is unused, and both reduce forms Python writes for an enum are accepted."""
    seen = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "py/type" in node:
                seen.add(node["py/type"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for b in bundles.values():
        with zipfile.ZipFile(io.BytesIO(b["server.zip"])) as zf:
            walk(json.loads(zf.read("configuration.json")))
    assert seen == set(ALLOWED_REDUCE_TYPES)
    by_name = {"py/reduce": [{"py/function": "builtins.getattr"},
                             {"py/tuple": [{"py/type": sorted(ALLOWED_REDUCE_TYPES)[0]}, "MULTI"]}]}
    data = _rezip(bundles["LogisticRegression"]["server.zip"], "configuration.json",
                  lambda doc: doc.update(parameter_selection_strategy=by_name))
    check_server_zip(data)  # Debian's Python 3.11.2 writes enums this way


HOSTILE_CONFIG = {
    "os.system by reduce": {"py/reduce": [{"py/function": "posix.system"}, {"py/tuple": ["touch /tmp/x"]}]},
    "getattr of a non-enum": {"py/reduce": [{"py/function": "builtins.getattr"},
                                            {"py/tuple": [{"py/type": "os"}, "SYSTEM"]}]},
    "getattr of a dunder": {"py/reduce": [{"py/function": "builtins.getattr"},
                                          {"py/tuple": [{"py/type": sorted(ALLOWED_REDUCE_TYPES)[0]}, "__class__"]}]},
    "allowed enum, callable args": {"py/reduce": [{"py/type": sorted(ALLOWED_REDUCE_TYPES)[0]},
                                                  {"py/tuple": [{"py/function": "os.getcwd"}]}]},
    "py/object of another class": {"py/object": "subprocess.Popen", "args": "id"},
    "py/repr": {"py/repr": "os/os.system('id')"},
    "nested deep": {"a": [{"b": {"py/function": "os.system"}}]},
}


@pytest.mark.parametrize("what", sorted(HOSTILE_CONFIG))
def test_server_zip_refuses_code_in_its_configuration(bundles, what):
    data = _rezip(bundles["LogisticRegression"]["server.zip"], "configuration.json",
                  lambda doc: doc.update(verbose=HOSTILE_CONFIG[what]))
    with pytest.raises(IntegrityError, match="not allowed"):
        check_server_zip(data)


def test_members_are_exactly_what_fhemodeldev_writes(bundles):
    data = bundles["LogisticRegression"]["server.zip"]
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("sharedlib.so", b"\x7fELF")  # a compiled library Concrete would dlopen
    with pytest.raises(IntegrityError, match="unexpected \\['sharedlib.so'\\]"):
        check_server_zip(out.getvalue())
    simulated = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(simulated, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, b"1" if info.filename == "is_simulated" else src.read(info))
    with pytest.raises(IntegrityError, match="simulation circuit"):
        check_server_zip(simulated.getvalue())


def test_security_follows_concretes_128_bit_curve(bundles):
    specs = check_client_zip(bundles["DecisionTreeClassifier"]["client.zip"])
    assert check_security(specs) == len(specs["keyset"]["lweSecretKeys"])
    # the variance Concrete chose for the LR input key is the curve's, to the last digit
    lr = check_client_zip(bundles["LogisticRegression"]["client.zip"])
    enc = lr["circuits"][0]["inputs"][0]["typeInfo"]["lweCiphertext"]["encryption"]
    assert np.isclose(enc["variance"], min_secure_variance(enc["lweDimension"]), rtol=1e-12)
    bsk = specs["keyset"]["lweBootstrapKeys"][0]
    bsk["params"]["variance"] /= 4  # half the noise standard deviation on the bootstrap key
    with pytest.raises(IntegrityError, match="bootstrap key 0.*128-bit"):
        check_security(specs)


def test_client_zip_refuses_pickle_and_foreign_skops(bundles):
    client_zip = bundles["LogisticRegression"]["client.zip"]
    for edit, reason in [
        (lambda d: d.update(x={"type_name": "sklearn_model", "serialized_value": "80049500"}), "sklearn_model"),
        (lambda d: d.update(x={"type_name": "onnx_model", "serialized_value": "00"}), "onnx_model"),
        (lambda d: d["model_type"].update(serialized_value=b"not a zip".hex()), "not a readable archive"),
        (lambda d: d.update(x={"py/object": "os.system"}), "jsonpickle"),
    ]:
        with pytest.raises(IntegrityError, match=reason):
            check_client_zip(_rezip(client_zip, "serialized_processing.json", edit))


def test_real_bundles_survive_a_round_trip_through_the_bundle_writer(bundles, tmp_path):
    """bundle.write refuses to sign what the content check refuses (nothing bad gets a signature)."""
    from fedfhe_common.contracts import bundle
    from fedfhe_common.contracts.schema import DIGITS
    from fedfhe_common.pki.release import load_signing_key, load_verify_key, make_release_key

    make_release_key(tmp_path / "pki")
    key = load_signing_key(tmp_path / "pki" / "release.key")

    def produce(good: bool) -> Any:
        def write(d: Path) -> None:
            client, server = bundles["LogisticRegression"]["client.zip"], bundles["LogisticRegression"]["server.zip"]
            if not good:
                server = _rezip(server, "configuration.json", lambda doc: doc.update(verbose=HOSTILE_CONFIG["py/repr"]))
            (d / "client.zip").write_bytes(client)
            (d / "server.zip").write_bytes(server)
        return write

    meta = {"model_id": "m", "version": "1", "schema": DIGITS.to_dict()}
    out = bundle.write(tmp_path / "good", produce(True), dict(meta), key)
    assert bundle.read(out, load_verify_key(tmp_path / "pki" / "release.pub"))["model_id"] == "m"
    with pytest.raises(IntegrityError, match="not allowed"):
        bundle.write(tmp_path / "bad", produce(False), dict(meta), key)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.*"))


# An LLVM global constructor calling system(): what the earlier attack added to a real bundle's MLIR.
GLOBAL_CTOR = """\
  llvm.mlir.global internal constant @cmd("touch /tmp/fedfhe-pwned\\00") {addr_space = 0 : i32}
  llvm.func @system(!llvm.ptr) -> i32
  llvm.func @payload() {
    %0 = llvm.mlir.addressof @cmd : !llvm.ptr
    %1 = llvm.call @system(%0) : (!llvm.ptr) -> i32
    llvm.return
  }
  llvm.mlir.global_ctors {ctors = [@payload], priorities = [0 : i32]}
"""


def _mlir(bundles: dict[str, dict[str, bytes]], family: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(bundles[family]["server.zip"])) as zf:
        return zf.read("circuit.mlir")


@pytest.mark.parametrize("family", FAMILIES)
def test_real_circuits_pass_the_mlir_allow_list(bundles, family):
    assert check_mlir(_mlir(bundles, family), family)


def test_the_mlir_allow_list_is_what_real_circuits_use(bundles):
    """Every allow-listed FHE operation occurs in a real circuit (XGBoost's lookups come from the tree test)."""
    used = set().union(*(check_mlir(_mlir(bundles, f), f) for f in FAMILIES))
    assert used <= ALLOWED_FHE_OPS
    assert ALLOWED_FHE_OPS - used <= {"apply_mapped_lookup_table", "sub_eint_int"}, ALLOWED_FHE_OPS - used


def _planted(mlir: bytes, how: str) -> bytes:
    text = mlir.decode()
    head, body = text.split("\n", 1)
    if how == "global-constructor":
        return f"{head}\n{GLOBAL_CTOR}{body}".encode()
    if how == "module-attributes":
        return text.replace("module {", 'module attributes {llvm.target_triple = "x86_64"} {', 1).encode()
    if how == "external-function":
        return f"{head}\n  func.func private @system(i64) -> i32\n{body}".encode()
    if how == "call":
        return text.replace("    return", "    %pwn = func.call @system() : () -> i32\n    return", 1).encode()
    if how == "unknown-fhe-op":
        return text.replace('"FHELinalg.matmul_eint_int"', '"FHELinalg.custom_op"', 1).encode()
    if how == "foreign-attribute":
        return text.replace("{axes = [1], keep_dims = true}", "{axes = [1], llvm.linkage = true}", 1).encode()
    if how == "comment":
        return f"// {how}\n{text}".encode()
    if how == "after-module":
        return text.encode() + b"llvm.func @system(!llvm.ptr) -> i32\n"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["global-constructor", "module-attributes", "external-function", "call",
                                 "unknown-fhe-op", "foreign-attribute", "comment", "after-module"])
def test_code_planted_in_a_real_circuit_is_refused(bundles, how):
    planted = _planted(_mlir(bundles, "LogisticRegression"), how)
    assert planted != _mlir(bundles, "LogisticRegression")
    with pytest.raises(IntegrityError, match=r"circuit\.mlir"):
        check_mlir(planted, "server.zip: circuit.mlir")
    zipped = _rezip_raw(bundles["LogisticRegression"]["server.zip"], "circuit.mlir", planted)
    with pytest.raises(IntegrityError, match=r"server\.zip: circuit\.mlir"):
        check_server_zip(zipped)


def _rezip_raw(data: bytes, member: str, raw: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, raw if info.filename == member else src.read(info))
    return out.getvalue()
