"""What may be inside a bundle's zips, checked before Concrete parses any byte of them.

Concrete decodes ``server.zip``'s ``configuration.json`` with jsonpickle (a
``py/reduce`` entry runs code on the inference node), and Concrete ML decodes
``client.zip``'s ``serialized_processing.json`` with skops, falling back to
pickle (code on the owner's host). A signature says who made a bundle; these
checks make sure that even a bundle signed by mistake cannot run code, and that
an inference node cannot hand owners weakened crypto parameters.

The allow-lists below were read off real bundles written by ``FHEModelDev``
(Concrete ML 1.9.0, concrete-python 2.10) for every family fedfhe trains
(LogisticRegression, LinearSVC, SGDClassifier, LinearRegression, Ridge, Lasso,
ElasticNet) and for the tree families the node also serves (DecisionTree,
RandomForest, XGB classifiers and regressors); ``tests/unit/test_bundle_content.py``
rebuilds them and checks nothing outside them is needed.
"""

from __future__ import annotations

import io
import json
import re
import stat
import zipfile
from typing import Any

from fedfhe_common.contracts.mlir_check import check_mlir
from fedfhe_common.runtime.errors import IntegrityError

# Members FHEModelDev writes, per zip (all required).
CLIENT_MEMBERS = frozenset({"client.specs.json", "serialized_processing.json", "versions.json"})
SERVER_MEMBERS = frozenset({"circuit.mlir", "is_simulated", "configuration.json", "composition_rules.json",
                            "client.specs.json", "versions.json"})
MAX_ZIP_BYTES = 256 << 20  # unpacked; a depth-6 tree's circuit is well below this
MAX_JSON_DEPTH = 64

# jsonpickle tags in server.zip's configuration.json: Concrete's own enums, rebuilt by value ...
ALLOWED_REDUCE_TYPES = frozenset({
    "concrete.fhe.compilation.configuration.ParameterSelectionStrategy",
    "concrete.fhe.compilation.configuration.MultiParameterStrategy",
    "concrete.fhe.compilation.configuration.Exactness",
    "concrete.fhe.compilation.configuration.SecurityLevel",
})
# ... and one plain dataclass of scalars.
ALLOWED_OBJECT_TYPES = frozenset({"concrete.fhe.compilation.configuration.ApproximateRoundingConfig"})

# Concrete ML's own "type_name" entries in client.zip's serialized_processing.json. "type" is a skops
# archive naming a class; it is allowed only as a bare reference to a Concrete ML estimator class.
ALLOWED_TYPE_NAMES = frozenset({"UniformQuantizer", "numpy_float", "numpy_integer", "numpy_array", "type"})
_SKOPS_MODULE = re.compile(r"concrete\.ml\.sklearn\.[a-z_]{1,40}")
_SKOPS_CLASS = re.compile(r"[A-Z][A-Za-z0-9]{1,60}")
_SKOPS_KEYS = {"__class__", "__module__", "__loader__", "__id__", "protocol", "_skops_version"}

# Concrete's 128-bit security curve for binary keys (concrete-security-curves, the one concrete-python
# 2.10 applies: its optimizer's variances equal this curve exactly on real bundles, e.g. n=1364 ->
# 3.2257e-20): a key of dimension n < MIN_LWE_DIMENSION is never secure; otherwise the noise variance
# must be at least max(2^(2(slope*n + bias)), 2^(-2(log2 q - 2))). Concrete's SecurityCurve::getVariance.
SECURITY_BITS = 128
CURVE_SLOPE = -0.025696778711484593
CURVE_BIAS = 2.675931372549016
MIN_LWE_DIMENSION = 450
LOG2_Q = 64
_RELATIVE_SLACK = 1e-9


def min_secure_variance(dimension: int) -> float:
    """Smallest noise variance Concrete accepts as 128-bit secure for a binary key of ``dimension``."""
    return max(2.0 ** (2 * (CURVE_SLOPE * dimension + CURVE_BIAS)), 2.0 ** (-2 * (LOG2_Q - 2)))


def read_zip(data: bytes, what: str, expected: frozenset[str]) -> dict[str, bytes]:
    """The members of one of a bundle's zips, refused unless they are exactly ``expected``, plain and bounded."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                raise IntegrityError(f"{what}: a member appears twice")
            if set(names) != expected:
                extra, missing = sorted(set(names) - expected), sorted(expected - set(names))
                raise IntegrityError(f"{what}: members differ from what FHEModelDev writes"
                                     f"{f'; unexpected {extra}' if extra else ''}"
                                     f"{f'; missing {missing}' if missing else ''}")
            for info in infos:
                if info.is_dir() or stat.S_ISLNK(info.external_attr >> 16):
                    raise IntegrityError(f"{what}: member {info.filename!r} is not a plain file")
            if sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
                raise IntegrityError(f"{what}: unpacks to more than {MAX_ZIP_BYTES} bytes")
            members = {i.filename: zf.read(i) for i in infos}
    except IntegrityError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise IntegrityError(f"{what}: not a readable zip archive: {str(exc)[:200]}") from None
    if sum(len(v) for v in members.values()) > MAX_ZIP_BYTES:
        raise IntegrityError(f"{what}: unpacks to more than {MAX_ZIP_BYTES} bytes")
    return members


def _json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise IntegrityError(f"{what}: not plain JSON: {str(exc)[:200]}") from None


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


_ENUM_MEMBER = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def _allowed_reduce(args: Any) -> bool:
    """An allow-listed enum, in either form Python's ``Enum.__reduce_ex__`` gives (it differs between
    patch releases: 3.11.7 here, 3.11.2 on Debian 12 hosts):

    - ``[{"py/type": <enum>}, {"py/tuple": [<one scalar>]}]``: rebuilt from its value, ``Enum(value)``;
    - ``[{"py/function": "builtins.getattr"}, {"py/tuple": [{"py/type": <enum>}, "<MEMBER>"]}]``:
      looked up by member name, ``getattr(Enum, "MEMBER")`` (an upper-case identifier only).
    """
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, dict) for a in args)):
        return False
    kind, values = args
    if not (list(values) == ["py/tuple"] and isinstance(values["py/tuple"], list)):
        return False
    items = values["py/tuple"]
    if list(kind) == ["py/type"]:
        return kind["py/type"] in ALLOWED_REDUCE_TYPES and len(items) == 1 and _scalar(items[0])
    if list(kind) == ["py/function"] and kind["py/function"] == "builtins.getattr" and len(items) == 2:
        enum, name = items
        return (isinstance(enum, dict) and list(enum) == ["py/type"] and enum["py/type"] in ALLOWED_REDUCE_TYPES
                and isinstance(name, str) and _ENUM_MEMBER.fullmatch(name) is not None)
    return False


def _check_tags(node: Any, what: str, depth: int = 0) -> None:
    """Refuse every jsonpickle tag except the allow-listed enums and dataclass."""
    if depth > MAX_JSON_DEPTH:
        raise IntegrityError(f"{what}: nested deeper than {MAX_JSON_DEPTH}")
    if isinstance(node, list):
        for item in node:
            _check_tags(item, what, depth + 1)
        return
    if not isinstance(node, dict):
        return
    tags = [k for k in node if isinstance(k, str) and k.startswith("py/")]
    if not tags:
        for value in node.values():
            _check_tags(value, what, depth + 1)
        return
    if tags == ["py/reduce"] and len(node) == 1:
        args = node["py/reduce"]
        if _allowed_reduce(args):
            return
        head = args[0] if isinstance(args, list) and args and isinstance(args[0], dict) else {}
        shown = head.get("py/type") or head.get("py/function")
        raise IntegrityError(f"{what}: jsonpickle py/reduce of {str(shown)[:120]!r} is not allowed "
                             f"(only {', '.join(sorted(t.rsplit('.', 1)[1] for t in ALLOWED_REDUCE_TYPES))})")
    if tags == ["py/object"] and node["py/object"] in ALLOWED_OBJECT_TYPES:
        if all(_scalar(v) for k, v in node.items() if k != "py/object"):
            return
        raise IntegrityError(f"{what}: {node['py/object']} may hold plain values only")
    raise IntegrityError(f"{what}: jsonpickle tag {', '.join(t[:40] for t in tags)!r} is not allowed "
                         "(it could run code when Concrete loads the bundle)")


def _check_skops_type(hex_value: Any, what: str) -> None:
    """A "type" entry: a skops archive that only names a Concrete ML estimator class."""
    try:
        data = bytes.fromhex(hex_value) if isinstance(hex_value, str) else b""
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            if zf.namelist() != ["schema.json"] or zf.infolist()[0].file_size > 4096:
                raise IntegrityError(f"{what}: a skops entry holds more than a class reference")
            schema = json.loads(zf.read("schema.json"))
    except IntegrityError:
        raise
    except (ValueError, zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RecursionError):
        raise IntegrityError(f"{what}: a skops entry is not a readable archive") from None
    if not (isinstance(schema, dict) and set(schema) <= _SKOPS_KEYS and schema.get("__loader__") == "TypeNode"
            and isinstance(schema.get("__module__"), str) and _SKOPS_MODULE.fullmatch(schema["__module__"])
            and isinstance(schema.get("__class__"), str) and _SKOPS_CLASS.fullmatch(schema["__class__"])):
        raise IntegrityError(f"{what}: a skops entry names something other than a Concrete ML model class")


def _check_processing(node: Any, what: str, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise IntegrityError(f"{what}: nested deeper than {MAX_JSON_DEPTH}")
    if isinstance(node, list):
        for item in node:
            _check_processing(item, what, depth + 1)
        return
    if not isinstance(node, dict):
        return
    if any(isinstance(k, str) and k.startswith("py/") for k in node):
        raise IntegrityError(f"{what}: jsonpickle tags are not allowed here")
    if "type_name" in node:
        name = node["type_name"]
        if name not in ALLOWED_TYPE_NAMES:
            raise IntegrityError(f"{what}: serialized {str(name)[:60]!r} is not allowed "
                                 f"(only {', '.join(sorted(ALLOWED_TYPE_NAMES))})")
        if name == "type":
            _check_skops_type(node.get("serialized_value"), what)
            return
    for value in node.values():
        _check_processing(value, what, depth + 1)


def _number(node: Any, key: str, what: str) -> float:
    value = node.get(key) if isinstance(node, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise IntegrityError(f"{what}: {key} missing or not a number")
    return float(value)


def _secure(dimension: float, variance: float, what: str) -> None:
    if dimension < MIN_LWE_DIMENSION:
        raise IntegrityError(f"{what}: dimension {dimension:.0f} is below {MIN_LWE_DIMENSION}, never "
                             f"{SECURITY_BITS}-bit secure (weakened crypto parameters)")
    floor = min_secure_variance(int(dimension))
    if not variance >= floor * (1 - _RELATIVE_SLACK):
        raise IntegrityError(f"{what}: noise variance {variance:.3e} for dimension {dimension:.0f} is below "
                             f"{floor:.3e}, under Concrete's {SECURITY_BITS}-bit security curve "
                             "(weakened crypto parameters)")


def check_security(specs: Any, what: str = "client.specs.json") -> int:
    """Refuse client specs whose keys or encryptions fall under Concrete's 128-bit curve; returns keys checked."""
    keyset = specs.get("keyset") if isinstance(specs, dict) else None
    if not isinstance(keyset, dict):
        raise IntegrityError(f"{what}: no keyset")
    secret = {}
    for key in keyset.get("lweSecretKeys") or []:
        params = key.get("params") if isinstance(key, dict) else None
        dim = _number(params, "lweDimension", f"{what}: secret key")
        if not isinstance(params, dict) or params.get("keyType", "binary") != "binary":
            raise IntegrityError(f"{what}: secret key {key.get('id')!r} is not a binary key")
        if dim < MIN_LWE_DIMENSION:
            _secure(dim, 1.0, f"{what}: secret key {key.get('id')!r}")
        secret[key.get("id")] = dim
    if not secret:
        raise IntegrityError(f"{what}: no secret keys")
    for key in keyset.get("lweBootstrapKeys") or []:
        p = key.get("params") if isinstance(key, dict) else None
        glwe = _number(p, "glweDimension", f"{what}: bootstrap key") * _number(p, "polynomialSize", what)
        _secure(glwe, _number(p, "variance", what), f"{what}: bootstrap key {key.get('id')!r}")
    for key in keyset.get("lweKeyswitchKeys") or []:
        p = key.get("params") if isinstance(key, dict) else None
        out = secret.get(key.get("outputId")) if isinstance(key, dict) else None
        if out is None:
            raise IntegrityError(f"{what}: keyswitch key {key.get('id')!r} names an unknown output key")
        _secure(out, _number(p, "variance", what), f"{what}: keyswitch key {key.get('id')!r}")
    for key in keyset.get("packingKeyswitchKeys") or []:
        p = key.get("params") if isinstance(key, dict) else None
        glwe = _number(p, "glweDimension", f"{what}: packing key") * _number(p, "polynomialSize", what)
        _secure(glwe, _number(p, "variance", what), f"{what}: packing keyswitch key {key.get('id')!r}")
    circuits = specs.get("circuits")
    if not isinstance(circuits, list) or not circuits:
        raise IntegrityError(f"{what}: no circuits")
    for circuit in circuits:
        gates = (circuit.get("inputs") or []) + (circuit.get("outputs") or []) if isinstance(circuit, dict) else []
        for gate in gates:
            lwe = gate.get("typeInfo", {}).get("lweCiphertext") if isinstance(gate, dict) else None
            if not isinstance(lwe, dict):
                raise IntegrityError(f"{what}: a circuit gate is not an LWE ciphertext")
            enc = lwe.get("encryption")
            dim = _number(enc, "lweDimension", f"{what}: gate encryption")
            if secret.get(enc.get("keyId")) != dim:
                raise IntegrityError(f"{what}: a gate's encryption does not match its secret key's dimension")
            _secure(dim, _number(enc, "variance", what), f"{what}: gate encryption")
    return len(secret)


def check_client_zip(data: bytes, what: str = "client.zip") -> dict[str, Any]:
    """Members, tags and crypto parameters of a client.zip; returns its parsed client specs."""
    members = read_zip(data, what, CLIENT_MEMBERS)
    for name, raw in members.items():
        _check_tags(_json(raw, f"{what}: {name}"), f"{what}: {name}")
    _check_processing(_json(members["serialized_processing.json"], what), f"{what}: serialized_processing.json")
    specs = _json(members["client.specs.json"], f"{what}: client.specs.json")
    check_security(specs, f"{what}: client.specs.json")
    return specs


def check_server_zip(data: bytes, what: str = "server.zip") -> None:
    """Members, jsonpickle tags and the circuit's MLIR (``mlir_check``: Concrete compiles it) of a server.zip."""
    members = read_zip(data, what, SERVER_MEMBERS)
    check_mlir(members["circuit.mlir"], f"{what}: circuit.mlir")
    for name, raw in members.items():
        if name.endswith(".json"):
            _check_tags(_json(raw, f"{what}: {name}"), f"{what}: {name}")
    if members["is_simulated"].strip() != b"0":
        raise IntegrityError(f"{what}: is a simulation circuit, not an FHE one")
    check_security(_json(members["client.specs.json"], what), f"{what}: client.specs.json")
