"""An allow-list for a bundle's ``circuit.mlir``: nothing executable reaches Concrete's compiler.

Concrete compiles ``server.zip``'s MLIR when a bundle is loaded and links it
against libc, so MLIR is code: an LLVM global constructor added to a real
bundle's MLIR and signed with the release key ran ``system()`` on the inference
node at the first Predict. A signature only says who made a bundle; this check
makes sure that whoever holds the release key can ship a circuit of Concrete ML's
FHE operations and nothing else.

The grammar is line by line and exact: one ``module``, ``func.func`` definitions
(no declarations, no attributes), and inside them only the statement forms and
operations that Concrete ML 1.9.0 (concrete-python 2.10) writes for the families
fedfhe serves. They were read off real ``FHEModelDev`` bundles of every family
(the linear ones, decision trees, random forests and XGBoost, classifiers and
regressors); ``tests/unit/test_bundle_content.py`` rebuilds them and checks that each
passes and that nothing allow-listed goes unused. Anything else, the LLVM
dialect, an external function, a comment, a location or a dialect attribute
included, is refused before Concrete reads a byte.
"""

from __future__ import annotations

import re

from fedfhe_common.runtime.errors import IntegrityError

MAX_MLIR_BYTES = 64 << 20
MAX_LINE_BYTES = 32 << 20  # a dense hex constant of a large linear model stays on one line

# The FHE operations Concrete ML emits for fedfhe's families (FHELinalg, generic form).
ALLOWED_FHE_OPS = frozenset({
    "add_eint_int", "apply_lookup_table", "apply_mapped_lookup_table", "lsb", "matmul_eint_int",
    "matmul_int_eint", "mul_eint_int", "reinterpret_precision", "sub_eint", "sub_eint_int", "sub_int_eint",
    "sum", "to_signed", "to_unsigned", "transpose",
})
# Their attributes: a key and a value made of integers, brackets or booleans only.
ALLOWED_ATTRIBUTES = frozenset({"axes", "keep_dims"})

_V = r"%[A-Za-z0-9_-]{1,64}"
_ELEM = r"(?:!FHE\.e(?:s)?int<\d{1,3}>|i\d{1,3}|index)"
_TYPE = rf"(?:tensor<(?:\d{{1,9}}x){{0,8}}{_ELEM}>|{_ELEM})"
_INTS = r"\[[-0-9, \[\]]*\]"  # nested integer lists: digits, signs, commas, spaces, brackets
_TYPES = rf"{_TYPE}(?:, {_TYPE})*"
_VALUES = rf"{_V}(?:, {_V})*"

STATEMENTS = {
    "module": re.compile(r"module \{"),
    "func": re.compile(rf"func\.func @[A-Za-z_][A-Za-z0-9_]{{0,63}}\((?:{_V}: {_TYPE}(?:, {_V}: {_TYPE})*)?\) -> "
                       rf"(?:{_TYPE}|\({_TYPES}\)) \{{"),
    "fhe_op": re.compile(rf"{_V} = \"FHELinalg\.(?P<op>[a-z_]{{1,40}})\"\((?:{_VALUES})?\)"
                         rf"(?: \{{(?P<attrs>[a-z_]{{1,20}} = (?:{_INTS}|true|false)"
                         rf"(?:, [a-z_]{{1,20}} = (?:{_INTS}|true|false))*)\}})?"
                         rf" : \((?:{_TYPES})?\) -> {_TYPE}"),
    "constant": re.compile(rf"{_V} = arith\.constant (?:-?\d{{1,20}} : i\d{{1,3}}|"
                           rf"dense<(?:\"0x[0-9A-F]*\"|{_INTS}|-?\d{{1,20}})> : {_TYPE})"),
    "from_elements": re.compile(rf"{_V} = tensor\.from_elements {_VALUES} : {_TYPE}"),
    "reshape": re.compile(rf"{_V} = tensor\.(?:expand|collapse)_shape {_V} {_INTS} : {_TYPE} into {_TYPE}"),
    "return": re.compile(rf"return {_VALUES} : {_TYPES}"),
    "close": re.compile(r"\}"),
}
_ATTRIBUTE_KEY = re.compile(r"([a-z_]+) = ")


def _statement(line: str) -> tuple[str, re.Match[str]] | None:
    for kind, pattern in STATEMENTS.items():
        match = pattern.fullmatch(line)
        if match:
            return kind, match
    return None


def check_mlir(raw: bytes, what: str = "circuit.mlir") -> set[str]:
    """Refuse MLIR outside the allow-list (IntegrityError naming the line); returns the FHE operations used."""
    if len(raw) > MAX_MLIR_BYTES:
        raise IntegrityError(f"{what}: {len(raw)} bytes, more than {MAX_MLIR_BYTES}")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError(f"{what}: not ASCII text") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    ops: set[str] = set()
    depth = 0  # 0 outside the module, 1 in it, 2 in a function
    for number, full in enumerate(lines, start=1):
        line = full.strip(" ")
        where = f"{what}: line {number}"
        if len(full) > MAX_LINE_BYTES or "\r" in full or "\t" in full:
            raise IntegrityError(f"{where}: refused (too long, or a tab or carriage return)")
        found = _statement(line)
        if found is None:
            raise IntegrityError(f"{where}: not a statement Concrete ML emits, refused: {line[:120]!r}")
        kind, match = found
        expected = {0: ("module",), 1: ("func", "close"), 2: ("fhe_op", "constant", "from_elements", "reshape",
                                                              "return", "close")}[depth]
        if kind not in expected or (depth == 0 and number != 1):
            raise IntegrityError(f"{where}: {kind} statement out of place, refused: {line[:120]!r}")
        if kind == "fhe_op":
            op = match.group("op")
            if op not in ALLOWED_FHE_OPS:
                raise IntegrityError(f"{where}: FHE operation {op!r} is not on the allow-list")
            for key in _ATTRIBUTE_KEY.findall(match.group("attrs") or ""):
                if key not in ALLOWED_ATTRIBUTES:
                    raise IntegrityError(f"{where}: attribute {key!r} of {op} is not on the allow-list")
            ops.add(op)
        depth += {"module": 1, "func": 1, "close": -1}.get(kind, 0)
        if depth == 0 and number != len(lines):
            raise IntegrityError(f"{where}: text after the module's end, refused")
    if depth != 0 or not lines:
        raise IntegrityError(f"{what}: the module is not closed")
    return ops
