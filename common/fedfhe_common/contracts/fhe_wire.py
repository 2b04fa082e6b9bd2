"""Concrete's wire format (Cap'n Proto) checked against a circuit's client specs before Concrete parses it.

Concrete 2.10 trusts the inside of its messages: a payload split into blobs of odd sizes is copied
past its buffer, parameters announcing more data than the payload holds are read out of bounds, a
list of millions of zero-size elements costs the sender nothing and freezes the reader. Well-formed
Cap'n Proto is not enough, so every evaluation-key set and every ciphertext (and, on the owner's
side, every result) must match the circuit exactly:

- evaluation keys: the key ids, kinds, parameters and compression of ``client.specs.json``'s keyset,
  each payload exactly the size those parameters imply, split as Concrete splits it;
- values: the gate's raw info and type info, a payload of exactly shape x element size bytes;
- the message itself: every struct and list of the size this schema version writes, no far-fetched
  pointer kinds, no zero-size list elements, every word reached exactly once (no padding, no
  overlap, nothing hidden), so the size limit follows from the circuit.

Why a small strict reader and not pycapnp: pycapnp links its own copy of the Cap'n Proto C++
library, and Concrete's runtime carries another one, in the same process (two kj/capnp builds
side by side); a reader for the seven structs that cross the wire is ~200 lines of Python that
only ever reads lengths and integers, never copies a blob, and can enforce what a generic library
accepts by design (forward-compatible struct sizes, list encodings upgraded from one to another).
The schema is Concrete's ``concrete-protocol.capnp`` (tools/concrete-protocol/src in the Concrete
repository, v2.10.0); the field offsets below are its Cap'n Proto layout.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from dataclasses import dataclass
from io import BytesIO
from typing import Any

MAX_SEGMENTS = 512
# capnp::MAX_TEXT_SIZE: Concrete fills every blob but the last with as many whole elements as fit.
_MAX_BLOB = (1 << 29) - 1
_MAX_SPECS_BYTES = 16 << 20


class WireError(ValueError):
    """The bytes are not what the circuit expects; the message says where."""


# ---- the schema: (name, kind, where, type) per field; layouts as capnp lays them out -------------------
@dataclass(frozen=True)
class _S:
    name: str
    data_words: int
    ptr_words: int
    fields: tuple[tuple[Any, ...], ...]


_ENUM_KEY_TYPE = ("binary", "ternary")
_ENUM_COMPRESSION = ("none", "seed", "paillier")
_EMPTY = _S("Empty", 0, 0, ())
_POW2 = _S("PowerOfTwoModulus", 1, 0, (("power", "u32", 0, None),))
_INTMOD = _S("IntegerModulus", 1, 0, (("modulus", "u32", 0, None),))
_MODULUS = _S("Modulus", 1, 1, (
    ("modulus", "union", 0, (("native", "struct", 0, _EMPTY), ("powerOfTwo", "struct", 0, _POW2),
                             ("integer", "struct", 0, _INTMOD))),
))
_SHAPE = _S("Shape", 0, 1, (("dimensions", "list_u32", 0, None),))
_RAW_INFO = _S("RawInfo", 1, 1, (
    ("shape", "struct", 0, _SHAPE), ("integerPrecision", "u32", 0, None), ("isSigned", "bool", 32, None),
))
_PAYLOAD = _S("Payload", 0, 1, (("data", "list_data", 0, None),))
_BSK_PARAMS = _S("LweBootstrapKeyParams", 5, 1, (
    ("levelCount", "u32", 0, None), ("baseLog", "u32", 4, None), ("glweDimension", "u32", 8, None),
    ("polynomialSize", "u32", 12, None), ("variance", "f64", 16, None), ("integerPrecision", "u32", 24, None),
    ("modulus", "struct", 0, _MODULUS), ("keyType", "enum", 28, _ENUM_KEY_TYPE),
    ("inputLweDimension", "u32", 32, None),
))
_KSK_PARAMS = _S("LweKeyswitchKeyParams", 4, 1, (
    ("levelCount", "u32", 0, None), ("baseLog", "u32", 4, None), ("variance", "f64", 8, None),
    ("integerPrecision", "u32", 16, None), ("modulus", "struct", 0, _MODULUS),
    ("keyType", "enum", 20, _ENUM_KEY_TYPE), ("inputLweDimension", "u32", 24, None),
    ("outputLweDimension", "u32", 28, None),
))
_PKSK_PARAMS = _S("PackingKeyswitchKeyParams", 5, 1, (
    ("levelCount", "u32", 0, None), ("baseLog", "u32", 4, None), ("glweDimension", "u32", 8, None),
    ("polynomialSize", "u32", 12, None), ("inputLweDimension", "u32", 16, None),
    ("innerLweDimension", "u32", 20, None), ("variance", "f64", 24, None), ("integerPrecision", "u32", 32, None),
    ("modulus", "struct", 0, _MODULUS), ("keyType", "enum", 36, _ENUM_KEY_TYPE),
))


def _key_info(name: str, params: _S) -> _S:
    return _S(name, 2, 1, (
        ("id", "u32", 0, None), ("inputId", "u32", 4, None), ("outputId", "u32", 8, None),
        ("params", "struct", 0, params), ("compression", "enum", 12, _ENUM_COMPRESSION),
    ))


def _key(name: str, params: _S) -> _S:
    return _S(name, 0, 2, (("info", "struct", 0, _key_info(name + "Info", params)),
                           ("payload", "struct", 1, _PAYLOAD)))


_KEY_KINDS = (("lweBootstrapKeys", _key("LweBootstrapKey", _BSK_PARAMS)),
              ("lweKeyswitchKeys", _key("LweKeyswitchKey", _KSK_PARAMS)),
              ("packingKeyswitchKeys", _key("PackingKeyswitchKey", _PKSK_PARAMS)))
_SERVER_KEYSET = _S("ServerKeyset", 0, 3, tuple((name, "list_struct", i, s) for i, (name, s) in enumerate(_KEY_KINDS)))
_ENCRYPTION = _S("LweCiphertextEncryptionInfo", 2, 1, (
    ("keyId", "u32", 0, None), ("variance", "f64", 8, None), ("lweDimension", "u32", 4, None),
    ("modulus", "struct", 0, _MODULUS),
))
_CHUNKED = _S("ChunkedMode", 1, 0, (("size", "u32", 0, None), ("width", "u32", 4, None)))
_CRT = _S("CrtMode", 0, 1, (("moduli", "list_u32", 0, None),))
_INT_ENCODING = _S("IntegerCiphertextEncodingInfo", 1, 1, (
    ("width", "u32", 0, None), ("isSigned", "bool", 32, None),
    ("mode", "union", 6, (("native", "struct", 0, _EMPTY), ("chunked", "struct", 0, _CHUNKED),
                          ("crt", "struct", 0, _CRT))),
))
_LWE_TYPE = _S("LweCiphertextTypeInfo", 1, 4, (
    ("abstractShape", "struct", 0, _SHAPE), ("concreteShape", "struct", 1, _SHAPE),
    ("integerPrecision", "u32", 0, None), ("encryption", "struct", 2, _ENCRYPTION),
    ("compression", "enum", 4, _ENUM_COMPRESSION),
    ("encoding", "union", 6, (("integer", "struct", 3, _INT_ENCODING), ("boolean", "struct", 3, _EMPTY))),
))
_PLAIN_TYPE = _S("PlaintextTypeInfo", 1, 1, (
    ("shape", "struct", 0, _SHAPE), ("integerPrecision", "u32", 0, None), ("isSigned", "bool", 32, None),
))
_TYPE_INFO = _S("TypeInfo", 1, 1, (
    (None, "union", 0, (("lweCiphertext", "struct", 0, _LWE_TYPE), ("plaintext", "struct", 0, _PLAIN_TYPE),
                        ("index", "struct", 0, _PLAIN_TYPE))),
))
_VALUE = _S("Value", 0, 3, (("payload", "struct", 0, _PAYLOAD), ("rawInfo", "struct", 1, _RAW_INFO),
                            ("typeInfo", "struct", 2, _TYPE_INFO)))
_MAX_LIST = {"list_u32": 64, "list_struct": 4096, "list_data": 4096}


# ---- the strict reader --------------------------------------------------------------------------------
class _Reader:
    """One message: segment table, bounds, and the words each object claims (checked disjoint at the end)."""

    def __init__(self, data: bytes, what: str) -> None:
        self.what = what
        if len(data) < 8:
            raise WireError(f"{what}: {len(data)} bytes, shorter than a message header")
        count = int.from_bytes(data[:4], "little") + 1
        if count > MAX_SEGMENTS:
            raise WireError(f"{what}: announces {count} segments")
        header = 4 * (count + 1)
        header += header % 8
        if len(data) < header:
            raise WireError(f"{what}: truncated segment table")
        sizes = struct.unpack_from(f"<{count}I", data, 4)
        if header + 8 * sum(sizes) != len(data):
            raise WireError(f"{what}: announces {header + 8 * sum(sizes)} bytes but holds {len(data)}")
        self.data = memoryview(data)
        self.starts, pos = [], header
        for n in sizes:
            self.starts.append(pos)
            pos += 8 * n
        self.sizes = sizes
        self.claims: list[tuple[int, int, int]] = []
        self.total = sum(sizes)
        self.blobs: list[tuple[int, int]] = []  # (byte offset, length) of each Data blob, in reading order

    def word(self, seg: int, idx: int) -> int:
        return int.from_bytes(self.data[self.starts[seg] + 8 * idx: self.starts[seg] + 8 * idx + 8], "little")

    def claim(self, seg: int, start: int, words: int, what: str) -> None:
        if seg >= len(self.sizes) or start < 0 or start + words > self.sizes[seg]:
            raise WireError(f"{self.what}: {what} points outside its segment")
        if words:
            self.claims.append((seg, start, words))
        if len(self.claims) > 1 << 16:
            raise WireError(f"{self.what}: too many objects")

    def finish(self) -> None:
        """Every word of the message belongs to exactly one object: nothing hidden, padded or shared."""
        self.claims.sort()
        used = 0
        for (s1, a1, n1), (s2, a2, _) in zip(self.claims, self.claims[1:], strict=False):
            if s1 == s2 and a1 + n1 > a2:
                raise WireError(f"{self.what}: two objects share words")
        used = sum(n for _, _, n in self.claims)
        if used != self.total:
            raise WireError(f"{self.what}: {8 * (self.total - used)} bytes are not part of any object "
                            "(padding or hidden data)")

    def resolve(self, seg: int, idx: int, what: str) -> tuple[int, int, int] | None:
        """(segment, target word, pointer word describing it) for the pointer at (seg, idx); None if null."""
        raw = self.word(seg, idx)
        if raw == 0:
            return None
        kind = raw & 3
        if kind in (0, 1):
            offset = _signed30(raw >> 2)
            return seg, idx + 1 + offset, raw
        if kind == 3:
            raise WireError(f"{self.what}: {what} is a capability pointer")
        double = (raw >> 2) & 1
        pad, pad_seg = (raw >> 3) & 0x1FFFFFFF, raw >> 32
        self.claim(pad_seg, pad, 2 if double else 1, f"{what} (landing pad)")
        landing = self.word(pad_seg, pad)
        if not double:
            if landing & 3 not in (0, 1):
                raise WireError(f"{self.what}: {what} lands on another far pointer")
            return pad_seg, pad + 1 + _signed30(landing >> 2), landing
        tag = self.word(pad_seg, pad + 1)
        if landing & 7 != 2 or tag & 3 not in (0, 1) or (tag >> 2) & 0x3FFFFFFF:
            raise WireError(f"{self.what}: {what} has a malformed double-far landing pad")
        return landing >> 32, (landing >> 3) & 0x1FFFFFFF, tag

    def read_struct(self, seg: int, idx: int, s: _S, what: str) -> dict[str, Any]:
        target = self.resolve(seg, idx, what)
        if target is None:
            if s.data_words or s.ptr_words:
                raise WireError(f"{self.what}: {what} is missing")
            return {}
        tseg, start, raw = target
        if raw & 3 != 0:
            raise WireError(f"{self.what}: {what} is not a struct")
        dw, pw = (raw >> 32) & 0xFFFF, raw >> 48
        if (dw, pw) != (s.data_words, s.ptr_words):
            raise WireError(f"{self.what}: {what} is a struct of {dw}+{pw} words, {s.name} has "
                            f"{s.data_words}+{s.ptr_words}")
        self.claim(tseg, start, dw + pw, what)
        return self._fields(tseg, start, s, what)

    def _fields(self, seg: int, start: int, s: _S, what: str) -> dict[str, Any]:
        base = self.starts[seg] + 8 * start
        ptrs = start + s.data_words
        out: dict[str, Any] = {}
        for name, kind, where, typ in s.fields:
            label = f"{what}.{name}"
            if kind == "u32":
                out[name] = int.from_bytes(self.data[base + where: base + where + 4], "little")
            elif kind == "f64":
                out[name] = struct.unpack_from("<d", self.data, base + where)[0]
            elif kind == "bool":
                out[name] = bool(self.data[base + where // 8] >> (where % 8) & 1)
            elif kind == "enum":
                value = int.from_bytes(self.data[base + where: base + where + 2], "little")
                if value >= len(typ):
                    raise WireError(f"{self.what}: {label} has the unknown value {value}")
                out[name] = typ[value]
            elif kind == "struct":
                out[name] = self.read_struct(seg, ptrs + where, typ, label)
            elif kind == "union":
                which = int.from_bytes(self.data[base + where: base + where + 2], "little")
                if which >= len(typ):
                    raise WireError(f"{self.what}: {what}.{name or 'union'} has the unknown member {which}")
                member, mkind, mwhere, mtyp = typ[which]
                value = self.read_struct(seg, ptrs + mwhere, mtyp, f"{what}.{member}")
                if name is None:
                    out[member] = value
                else:
                    out[name] = {member: value}
            else:
                out[name] = self.read_list(seg, ptrs + where, kind, typ, label)
        return out

    def read_list(self, seg: int, idx: int, kind: str, typ: _S | None, what: str) -> list[Any]:
        target = self.resolve(seg, idx, what)
        if target is None:
            return []
        tseg, start, raw = target
        if raw & 3 != 1:
            raise WireError(f"{self.what}: {what} is not a list")
        esize, count = (raw >> 32) & 7, raw >> 35
        expected = {"list_u32": 4, "list_data": 6, "list_struct": 7}[kind]
        if esize != expected:
            raise WireError(f"{self.what}: {what} is a list of element size code {esize}, expected {expected}")
        if kind == "list_u32":
            if count > _MAX_LIST[kind]:
                raise WireError(f"{self.what}: {what} holds {count} entries")
            self.claim(tseg, start, (4 * count + 7) // 8, what)
            base = self.starts[tseg] + 8 * start
            if count % 2 and int.from_bytes(self.data[base + 4 * count: base + 4 * count + 4], "little"):
                raise WireError(f"{self.what}: {what} has non-zero padding")
            return list(struct.unpack_from(f"<{count}I", self.data, base))
        if kind == "list_data":
            if count > _MAX_LIST[kind]:
                raise WireError(f"{self.what}: {what} holds {count} blobs")
            self.claim(tseg, start, count, what)
            return [self._blob(tseg, start + i, f"{what}[{i}]") for i in range(count)]
        assert typ is not None
        self.claim(tseg, start, 1 + count, what)  # count = words after the tag
        tag = self.word(tseg, start)
        n, dw, pw = (tag >> 2) & 0x3FFFFFFF, (tag >> 32) & 0xFFFF, tag >> 48
        if tag & 3 != 0 or (dw, pw) != (typ.data_words, typ.ptr_words):
            raise WireError(f"{self.what}: {what} holds structs of {dw}+{pw} words, {typ.name} has "
                            f"{typ.data_words}+{typ.ptr_words}")
        if n > _MAX_LIST[kind] or n * (dw + pw) != count:
            raise WireError(f"{self.what}: {what} announces {n} elements in {count} words")
        return [self._fields(tseg, start + 1 + i * (dw + pw), typ, f"{what}[{i}]") for i in range(n)]

    def _blob(self, seg: int, idx: int, what: str) -> int:
        """A Data element: its length in bytes (the bytes themselves are never copied)."""
        target = self.resolve(seg, idx, what)
        if target is None:
            return 0
        tseg, start, raw = target
        if raw & 3 != 1 or (raw >> 32) & 7 != 2:
            raise WireError(f"{self.what}: {what} is not a byte blob")
        length = raw >> 35
        words = (length + 7) // 8
        self.claim(tseg, start, words, what)
        end = self.starts[tseg] + 8 * start + length
        self.blobs.append((end - length, length))
        if any(self.data[end: self.starts[tseg] + 8 * (start + words)]):
            raise WireError(f"{self.what}: {what} has non-zero padding")
        return length


def _signed30(value: int) -> int:
    value &= 0x3FFFFFFF
    return value - (1 << 30) if value & (1 << 29) else value


def _read(data: bytes, root: _S, what: str, reader: _Reader | None = None) -> dict[str, Any]:
    reader = reader or _Reader(data, what)
    reader.claim(0, 0, 1, "root pointer")
    out = reader.read_struct(0, 0, root, what)
    reader.finish()
    return out


def read_value(data: bytes) -> tuple[dict[str, Any], bytes]:
    """A Concrete value's raw and type info and its payload bytes (tests and fuzzers re-encode real values)."""
    reader = _Reader(data, "value")
    value = _read(data, _VALUE, "value", reader)
    return value, b"".join(bytes(reader.data[a:a + n]) for a, n in reader.blobs)


# ---- expected layouts -----------------------------------------------------------------------------------
def _split_ok(blobs: list[int], total: int, element: int) -> bool:
    """Concrete's split: every blob but the last holds the most whole elements a Data fits, the last the rest."""
    per_blob = (_MAX_BLOB // element) * element
    full, rest = divmod(total, per_blob)
    return blobs == [per_blob] * full + ([rest] if rest else [])


def key_payload_words(kind: str, info: dict[str, Any]) -> int:
    """64-bit words of a key's payload, as concrete-cpu sizes it (seeded keys: the seed's 2 words more)."""
    p, seeded = info["params"], info.get("compression", "none") == "seed"
    level = p["levelCount"]
    if kind == "lweBootstrapKeys":
        glwe_size, poly = p["glweDimension"] + 1, p["polynomialSize"]
        if seeded:
            return p["inputLweDimension"] * level * glwe_size * poly + 2
        return p["inputLweDimension"] * level * glwe_size * glwe_size * poly
    if kind == "lweKeyswitchKeys":
        if seeded:
            return p["inputLweDimension"] * level + 2
        return p["inputLweDimension"] * level * (p["outputLweDimension"] + 1)
    glwe_size = p["glweDimension"] + 1
    return (p["inputLweDimension"] + 1) * level * glwe_size * p["polynomialSize"] * glwe_size


def _mismatch(got: Any, want: Any, path: str) -> str | None:
    """Where ``got`` (decoded) differs from ``want`` (client specs JSON), or None."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return path
        if set(want) - set(got) or (set(got) - set(want) and any(got[k] not in (0, False, [], {}, "none", "binary")
                                                                 for k in set(got) - set(want))):
            return f"{path} ({sorted(set(got) ^ set(want))})"
        for k in want:
            bad = _mismatch(got[k], want[k], f"{path}.{k}")
            if bad:
                return bad
        return None
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            bad = _mismatch(g, w, f"{path}[{i}]")
            if bad:
                return bad
        return None
    if isinstance(want, bool) or isinstance(got, bool):
        return None if got is want else path
    if isinstance(want, int | float) and isinstance(got, int | float):
        return None if got == want or (math.isnan(got) and math.isnan(want)) else path
    return None if got == want else path


@dataclass(frozen=True)
class Gate:
    """One circuit input or output: its raw info and type info from the client specs."""

    raw_info: dict[str, Any]
    type_info: dict[str, Any]

    @property
    def element_bytes(self) -> int:
        return int(self.raw_info.get("integerPrecision", 64)) // 8

    @property
    def payload_bytes(self) -> int:
        return math.prod(self.raw_info.get("shape", {}).get("dimensions", [])) * self.element_bytes

    @property
    def max_bytes(self) -> int:
        """The serialized size: payload plus the message's structure (a few hundred bytes, a few pads)."""
        return self.payload_bytes + 4096


class CircuitSpec:
    """What a bundle's circuit accepts and returns, read from its client.specs.json."""

    def __init__(self, specs: dict[str, Any]) -> None:
        try:
            self.keyset = {kind: list(specs["keyset"].get(kind) or []) for kind, _ in _KEY_KINDS}
            circuit = specs["circuits"][0]
            self.inputs = [Gate(g["rawInfo"], g["typeInfo"]) for g in circuit["inputs"]]
            self.outputs = [Gate(g["rawInfo"], g["typeInfo"]) for g in circuit["outputs"]]
            self.key_words = {kind: [key_payload_words(kind, info) for info in infos]
                              for kind, infos in self.keyset.items()}
            for gate in self.inputs + self.outputs:
                if gate.element_bytes not in (1, 2, 4, 8):
                    raise WireError(f"client specs: element of {gate.element_bytes} bytes")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise WireError(f"client specs: not a Concrete program description ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_client_zip(cls, client_zip: bytes) -> CircuitSpec:
        try:
            with zipfile.ZipFile(BytesIO(client_zip)) as zf:
                info = zf.getinfo("client.specs.json")
                if info.file_size > _MAX_SPECS_BYTES:
                    raise WireError(f"client.specs.json of {info.file_size} bytes")
                return cls(json.loads(zf.read(info)))
        except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as exc:
            if isinstance(exc, WireError):
                raise
            raise WireError(f"client.zip: no readable client.specs.json ({exc})") from None

    @property
    def key_payload_bytes(self) -> int:
        return 8 * sum(sum(words) for words in self.key_words.values())

    @property
    def max_key_bytes(self) -> int:
        """An upper bound on the serialized key set: payloads plus structure, segment tables and pads."""
        n = sum(len(v) for v in self.keyset.values())
        return self.key_payload_bytes + 4096 + 1024 * n

    def check_evaluation_keys(self, data: bytes) -> None:
        """WireError unless ``data`` is exactly the evaluation keys this circuit needs."""
        what = "evaluation keys"
        if len(data) > self.max_key_bytes:
            raise WireError(f"{what}: {len(data)} bytes, this circuit's keys take at most {self.max_key_bytes}")
        keyset = _read(data, _SERVER_KEYSET, what)
        for kind, _ in _KEY_KINDS:
            got, want = keyset[kind], self.keyset[kind]
            if len(got) != len(want):
                raise WireError(f"{what}: {len(got)} {kind}, the circuit needs {len(want)}")
            for i, (key, info) in enumerate(zip(got, want, strict=True)):
                bad = _mismatch(key["info"], info, f"{kind}[{i}].info")
                if bad:
                    raise WireError(f"{what}: {bad} differs from the circuit's key")
                blobs, words = key["payload"]["data"], self.key_words[kind][i]
                if any(b % 8 for b in blobs):
                    raise WireError(f"{what}: {kind}[{i}] payload has a blob that is not whole 64-bit elements")
                if sum(blobs) != 8 * words or not _split_ok(blobs, 8 * words, 8):
                    raise WireError(f"{what}: {kind}[{i}] payload of {sum(blobs)} bytes in {len(blobs)} blob(s); "
                                    f"its parameters need {8 * words} bytes split as Concrete splits them")

    def check_value(self, data: bytes, gate: Gate, what: str) -> None:
        """WireError unless ``data`` is one Concrete value laid out exactly as ``gate`` says."""
        if len(data) > gate.max_bytes:
            raise WireError(f"{what}: {len(data)} bytes, the circuit's value takes at most {gate.max_bytes}")
        value = _read(data, _VALUE, what)
        for field, want in (("rawInfo", gate.raw_info), ("typeInfo", gate.type_info)):
            bad = _mismatch(value[field], want, field)
            if bad:
                raise WireError(f"{what}: {bad} differs from the circuit's")
        blobs, size, element = value["payload"]["data"], gate.payload_bytes, gate.element_bytes
        if any(b % element for b in blobs):
            raise WireError(f"{what}: payload has a blob that is not whole {element}-byte elements")
        if sum(blobs) != size or not _split_ok(blobs, size, element):
            raise WireError(f"{what}: payload of {sum(blobs)} bytes in {len(blobs)} blob(s), the circuit's "
                            f"shape needs {size} bytes split as Concrete splits them")

    def check_input(self, data: bytes, what: str = "ciphertext") -> None:
        if len(self.inputs) != 1:
            raise WireError(f"the circuit takes {len(self.inputs)} inputs; one ciphertext per row needs one")
        self.check_value(data, self.inputs[0], what)

    def check_output(self, data: bytes, what: str = "result") -> None:
        if len(self.outputs) != 1:
            raise WireError(f"the circuit returns {len(self.outputs)} outputs; one result per row needs one")
        self.check_value(data, self.outputs[0], what)
