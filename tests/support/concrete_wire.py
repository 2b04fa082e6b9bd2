"""Structure-aware fuzzing of Concrete's wire format: valid Cap'n Proto messages of its own schemas, then mutated.

Random bytes never got past the segment table; these are well-formed messages (ServerKeyset for
evaluation keys, Value for ciphertexts) that are inconsistent inside, as a hostile owner crafts them:
blob splits that are not whole elements, parameters announcing more than the payload holds, composite
lists of millions of zero-size elements, element-size codes swapped, truncation and padding.
The layouts come from fedfhe_common.contracts.fhe_wire (checked there against genuine Concrete messages).
"""

from __future__ import annotations

import copy
import random
import struct
from typing import Any

from fedfhe_common.contracts import fhe_wire as w

ZERO_SIZE = "zero-size"  # a list_struct value: (ZERO_SIZE, n) encodes n elements of 0+0 words


class Builder:
    """A single-segment Cap'n Proto message builder driven by fhe_wire's schema tables."""

    def __init__(self, data_code: int = 2) -> None:
        self.buf = bytearray(8)  # the root pointer
        self.data_code = data_code  # element-size code of Data blobs (2 = bytes; anything else is a lie)

    def alloc(self, words: int) -> int:
        at = len(self.buf) // 8
        self.buf += bytes(8 * words)
        return at

    def put(self, idx: int, word: int) -> None:
        struct.pack_into("<Q", self.buf, 8 * idx, word & 0xFFFFFFFFFFFFFFFF)

    def struct_ptr(self, at: int, target: int, dw: int, pw: int) -> None:
        self.put(at, (((target - at - 1) & 0x3FFFFFFF) << 2) | (dw << 32) | (pw << 48))

    def list_ptr(self, at: int, target: int, code: int, count: int) -> None:
        self.put(at, (((target - at - 1) & 0x3FFFFFFF) << 2) | 1 | (code << 32) | (count << 35))

    def struct(self, at: int, s: w._S, value: dict[str, Any]) -> None:
        start = self.alloc(s.data_words + s.ptr_words)
        self.struct_ptr(at, start, s.data_words, s.ptr_words)
        self.fields(start, s, value)

    def fields(self, start: int, s: w._S, value: dict[str, Any]) -> None:
        base, ptrs = 8 * start, start + s.data_words
        for name, kind, where, typ in s.fields:
            if name is not None and name not in value:
                continue
            v = value.get(name) if name is not None else None
            if kind == "u32":
                struct.pack_into("<I", self.buf, base + where, v & 0xFFFFFFFF)
            elif kind == "f64":
                struct.pack_into("<d", self.buf, base + where, v)
            elif kind == "bool":
                self.buf[base + where // 8] |= int(bool(v)) << (where % 8)
            elif kind == "enum":
                struct.pack_into("<H", self.buf, base + where, typ.index(v) if isinstance(v, str) else v)
            elif kind == "struct":
                self.struct(ptrs + where, typ, v)
            elif kind == "union":
                chosen = v if name is not None else value
                for i, (member, _, mwhere, mtyp) in enumerate(typ):
                    if member in chosen:
                        struct.pack_into("<H", self.buf, base + where, i)
                        self.struct(ptrs + mwhere, mtyp, chosen[member])
                        break
            elif kind == "list_u32":
                at = self.alloc((4 * len(v) + 7) // 8)
                struct.pack_into(f"<{len(v)}I", self.buf, 8 * at, *[x & 0xFFFFFFFF for x in v])
                self.list_ptr(ptrs + where, at, 4, len(v))
            elif kind == "list_data":
                at = self.alloc(len(v))
                self.list_ptr(ptrs + where, at, 6, len(v))
                for i, blob in enumerate(v):
                    target = self.alloc((len(blob) + 7) // 8)
                    self.buf[8 * target: 8 * target + len(blob)] = blob
                    self.list_ptr(at + i, target, self.data_code, len(blob))
            elif kind == "list_struct":
                if isinstance(v, tuple) and v[0] == ZERO_SIZE:
                    tag = self.alloc(1)
                    self.put(tag, (v[1] & 0x3FFFFFFF) << 2)
                    self.list_ptr(ptrs + where, tag, 7, 0)
                    continue
                size = typ.data_words + typ.ptr_words
                tag = self.alloc(1 + size * len(v))
                self.put(tag, (len(v) << 2) | (typ.data_words << 32) | (typ.ptr_words << 48))
                self.list_ptr(ptrs + where, tag, 7, size * len(v))
                for i, item in enumerate(v):
                    self.fields(tag + 1 + i * size, typ, item)

    def message(self, root: w._S, value: dict[str, Any]) -> bytes:
        self.struct(0, root, value)
        return struct.pack("<II", 0, len(self.buf) // 8) + bytes(self.buf)


def keyset(keys: dict[str, list[dict[str, Any]]], data_code: int = 2) -> bytes:
    """A ServerKeyset: {kind: [{"info": ..., "payload": {"data": [blob, ...]}}]} for each key kind."""
    return Builder(data_code).message(w._SERVER_KEYSET, {k: keys.get(k, []) for k, _ in w._KEY_KINDS})


def value(raw_info: dict[str, Any], type_info: dict[str, Any], blobs: list[bytes], data_code: int = 2) -> bytes:
    return Builder(data_code).message(w._VALUE, {"payload": {"data": blobs}, "rawInfo": raw_info,
                                                 "typeInfo": type_info})


def split(payload: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(c % (len(payload) + 1) for c in cuts), len(payload)]
    return [payload[a:b] for a, b in zip(edges, edges[1:], strict=False)]


BSK_INFO = {"id": 0, "inputId": 1, "outputId": 0, "compression": "none", "params": {
    "levelCount": 1, "baseLog": 18, "glweDimension": 1, "polynomialSize": 4, "variance": 1e-20,
    "integerPrecision": 64, "modulus": {"modulus": {"native": {}}}, "keyType": "binary", "inputLweDimension": 2}}


def bootstrap_key(info: dict[str, Any] | None = None, blobs: list[bytes] | None = None) -> dict[str, Any]:
    info = copy.deepcopy(info or BSK_INFO)
    if blobs is None:
        blobs = [bytes(8 * w.key_payload_words("lweBootstrapKeys", info))]
    return {"info": info, "payload": {"data": blobs}}


def mutate_message(data: bytes, rng: random.Random) -> bytes:
    """Byte-level edits of a built message that keep the segment table right (or not, sometimes)."""
    b = bytearray(data)
    op = rng.choice(["flip", "truncate", "pad", "pad_fixed", "word"])
    if op == "flip" and len(b) > 8:
        b[rng.randrange(8, len(b))] ^= 1 << rng.randrange(8)
    elif op == "truncate":
        del b[rng.randrange(len(b)):]
    elif op == "pad":
        b += bytes(8 * rng.randrange(1, 64))
    elif op == "pad_fixed":  # zero words appended and announced in the segment table: valid framing
        n = rng.randrange(1, 64)
        b += bytes(8 * n)
        struct.pack_into("<I", b, 4, struct.unpack_from("<I", b, 4)[0] + n)
    elif len(b) > 16:
        at = 8 * rng.randrange(1, len(b) // 8)
        b[at:at + 8] = struct.pack("<Q", rng.getrandbits(64))
    return bytes(b)


def fuzzed_value(raw_info: dict[str, Any], type_info: dict[str, Any], payload: bytes,
                 rng: random.Random) -> bytes:
    """A real value re-encoded with one structural lie (or none), sometimes with byte edits on top."""
    raw, typ, blobs, code = copy.deepcopy(raw_info), copy.deepcopy(type_info), [payload], 2
    choice = rng.randrange(8)
    if choice == 0:
        blobs = split(payload, [rng.randrange(len(payload) + 1) for _ in range(rng.randrange(1, 3))])
    elif choice == 1:
        raw["shape"]["dimensions"] = [rng.choice([0, 1, 64, 1 << 20, 0xFFFFFFFF]) for _ in raw["shape"]["dimensions"]]
    elif choice == 2:
        raw["integerPrecision"] = rng.choice([0, 7, 8, 32, 65, 0xFFFFFFFF])
    elif choice == 3:
        blobs = [payload[: rng.randrange(len(payload))]]
    elif choice == 4:
        code = rng.choice([0, 1, 3, 5, 7])
    elif choice == 5:
        lwe = typ.get("lweCiphertext", {})
        if lwe:
            lwe["encryption"]["lweDimension"] = rng.choice([0, 1, 1 << 20, 0xFFFFFFFF])
    elif choice == 6:
        blobs = [payload, bytes(rng.randrange(1, 64))]
    data = value(raw, typ, blobs, code)
    return mutate_message(data, rng) if rng.random() < 0.3 else data


def fuzzed_keys(rng: random.Random) -> bytes:
    """Key sets with keys the circuit may or may not need, payloads and parameters inconsistent."""
    info = copy.deepcopy(BSK_INFO)
    p = info["params"]
    choice = rng.randrange(7)
    blobs = None
    if choice == 0:  # not whole 64-bit elements
        full = bytes(8 * w.key_payload_words("lweBootstrapKeys", info))
        blobs = split(full, [rng.randrange(1, len(full)) | 1 for _ in range(rng.randrange(1, 3))])
    elif choice == 1:  # parameters announcing far more than the payload holds
        p[rng.choice(["levelCount", "glweDimension", "polynomialSize", "inputLweDimension"])] = rng.choice(
            [1 << 16, 1 << 24, 0xFFFFFFFF])
        blobs = [bytes(64)]
    elif choice == 2:
        info["compression"] = rng.choice([1, 2, 3])
    if choice == 3:
        keys = {"lweBootstrapKeys": (ZERO_SIZE, rng.choice([1 << 20, 0x3FFFFFFF]))}
    elif choice == 4:
        keys = {}
    else:
        keys = {rng.choice(["lweBootstrapKeys", "lweKeyswitchKeys"]) if choice == 5 else "lweBootstrapKeys":
                [bootstrap_key(info, blobs)]}
    if "lweKeyswitchKeys" in keys:
        keys["lweKeyswitchKeys"][0]["info"]["params"] = {
            "levelCount": 3, "baseLog": 4, "variance": 1e-9, "integerPrecision": 64,
            "modulus": {"modulus": {"native": {}}}, "keyType": "binary", "inputLweDimension": 8,
            "outputLweDimension": 4}
    data = keyset(keys, rng.choice([2, 2, 2, 0, 5, 7]))
    return mutate_message(data, rng) if rng.random() < 0.4 else data
