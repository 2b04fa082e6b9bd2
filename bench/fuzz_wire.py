"""Structure-aware fuzzing of the inference node's wire checks, at length (issue 10).

The same builder and mutators as tests/support/concrete_wire.py (valid Cap'n Proto messages of
Concrete's ServerKeyset and Value schemas, then made inconsistent inside: blob splits, parameters,
element-size codes, zero-size composite lists, truncation, padding, flipped bits), sent by one
authenticated but hostile owner to a real `fedfhe-inference serve` node (sandboxed workers, mutual
TLS, default limits) for ``--minutes``. Half are ciphertexts in a Predict, half key sets in an
UploadKeys (deleted again when accepted). After every input the node must still be the same process;
every ``--check-every`` seconds and at the end another owner's Predict must decrypt to the result it
gave before the run. Written to bench/results/fuzz_wire.json:

- inputs_sent (by kind), statuses_by_code, unexpected (a status outside the clean set or no message),
- node_restarts (must be 0: the node is restarted only if it died, and each death is counted),
- workers_replaced (sandboxed FHE workers that crashed or overran and were replaced),
- other_owner_predict_ok_at_end and the periodic checks' latencies.

    .venv/bin/python bench/fuzz_wire.py [--minutes 3] [--seed N] [--out bench/results/fuzz_wire.json]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib.util
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedfhe_common.contracts.fhe_wire import read_value
from fedfhe_common.runtime.exit_status import exit_with
from fedfhe_owner.predict.inference_client import InferenceClient, InferenceError
from fedfhe_testbed.inference_node import make_inference_pki

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "support"))
import concrete_wire as cw  # noqa: E402 - the fuzzer's builder and mutators live with the tests

# A clear refusal; INTERNAL is also clean when it names the failure (a worker that crashed and was replaced).
CLEAN = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "DATA_LOSS", "FAILED_PRECONDITION", "INTERNAL"}


def _bench_inference() -> Any:
    """bench/inference.py as a module (its node settings and bundle compile), whatever sys.path holds."""
    spec = importlib.util.spec_from_file_location("fedfhe_bench_inference", HERE / "inference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Owner:
    """An owner with its keys generated and uploaded through the client library."""

    def __init__(self, bench: Any, node: Any, bundle: Any, name: str, state: Path) -> None:
        self.name, self.node = name, node
        self.client = InferenceClient(node.endpoint(name))
        self.info = self.client.model_info(bundle.model_id, bundle.version)
        keys = bench.ModelKeys(state, self.info.model_id, self.info.version)
        specs = self.client.client_specs(self.info)
        keys.install_client_specs(specs.client_zip, specs.manifest, specs.manifest_signature,
                                  bench.load_verify_key(node.pki / "release.pub"), "fuzz")
        self.fhe, _ = keys.fhe_client()
        self.key_id = self.client.upload_keys(self.info, self.fhe.get_serialized_evaluation_keys()).key_id

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, float]:
        cts = [self.fhe.quantize_encrypt_serialize(X[i:i + 1]) for i in range(len(X))]
        t = time.perf_counter()
        resp = self.client.predict(self.key_id, self.info, cts, timeout=120)
        elapsed = time.perf_counter() - t
        return np.vstack([np.asarray(self.fhe.deserialize_decrypt_dequantize(r)).reshape(1, -1)
                          for r in resp.results]), elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0, help="how long to send inputs (default 3)")
    ap.add_argument("--seed", type=int, default=None, help="RNG seed (default: a random one, printed and saved)")
    ap.add_argument("--check-every", type=float, default=30.0, help="seconds between the other owner's Predicts")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "fuzz_wire.json")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    print(f"fuzz seed {seed}, {args.minutes} minutes", file=sys.stderr)
    bench = _bench_inference()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedfhe-bench-fuzz-") as tmp:
        work = Path(tmp)
        pki = make_inference_pki(work / "pki", ["owner-0", "owner-1"])
        print("compiling the digits bundle ...", file=sys.stderr)
        bundle, rows = bench.linear_bundle("digits", work, max_rows=1797)
        node = bench.new_node(work / "node", pki, limits={})  # the node's default limits
        bench.publish_bundle(bundle.directory, node.bundles_dir, bench.load_verify_key(pki / "release.pub"))
        node.start()
        try:
            report = fuzz(bench, node, bundle, rows, work, seed, args.minutes * 60, args.check_every)
        finally:
            node.stop()
    report.update({"seed": seed, "minutes": args.minutes, "machine": bench.machine(),
                   "command": f"python bench/fuzz_wire.py --minutes {args.minutes:g} --seed {seed}",
                   "seconds_total": time.perf_counter() - started})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['inputs_sent']} inputs in {report['fuzz_seconds']:.0f} s ({report['inputs_per_s']:.1f}/s): "
          f"{dict(report['statuses_by_code'])}")
    print(f"node restarts: {report['node_restarts']}, workers replaced: {report['workers_replaced']}, "
          f"unexpected statuses: {len(report['unexpected'])}, other owner's Predict at the end: "
          f"{'OK' if report['other_owner_predict_ok_at_end'] else 'FAILED'}")
    print(f"wrote {args.out}")
    ok = report["node_restarts"] == 0 and not report["unexpected"] and report["other_owner_predict_ok_at_end"]
    return 0 if ok else 1


def fuzz(bench: Any, node: Any, bundle: Any, rows: np.ndarray, work: Path, seed: int, seconds: float,
         check_every: float) -> dict[str, Any]:
    rng = random.Random(seed)
    good = Owner(bench, node, bundle, "owner-0", work / "owner-0")
    hostile = Owner(bench, node, bundle, "owner-1", work / "owner-1")
    probe = rows[:2]
    reference, first_latency = good.predict(probe)
    ct = hostile.fhe.quantize_encrypt_serialize(rows[:1])
    value, payload = read_value(ct)
    pid = node.proc.pid
    workers_seen = set(node.worker_pids())
    statuses: collections.Counter[str] = collections.Counter()
    by_kind: collections.Counter[str] = collections.Counter()
    statuses_by_kind: dict[str, collections.Counter[str]] = {"ciphertext": collections.Counter(),
                                                            "keys": collections.Counter()}
    unexpected: list[dict[str, Any]] = []
    samples: dict[str, list[str]] = collections.defaultdict(list)
    call_s: list[float] = []
    checks: list[dict[str, Any]] = []
    restarts, accepted_keys, n = 0, 0, 0

    def check() -> bool:
        try:
            got, latency = good.predict(probe)
            ok = bool(np.allclose(got, reference, atol=1e-9))
            checks.append({"at_s": round(time.perf_counter() - t0, 1), "ok": ok, "predict_ms": 1000 * latency})
            return ok
        except InferenceError as exc:
            checks.append({"at_s": round(time.perf_counter() - t0, 1), "ok": False, "error": str(exc)[:300]})
            return False

    t0 = time.perf_counter()
    deadline, next_check = t0 + seconds, t0 + check_every
    while time.perf_counter() < deadline:
        kind = "ciphertext" if rng.random() < 0.5 else "keys"
        data = (cw.fuzzed_value(value["rawInfo"], value["typeInfo"], payload, rng) if kind == "ciphertext"
                else cw.fuzzed_keys(rng))
        t = time.perf_counter()
        try:
            if kind == "ciphertext":
                hostile.client.predict(hostile.key_id, hostile.info, [data], timeout=120)
            else:
                key_id = hostile.client.upload_keys(hostile.info, data, timeout=120).key_id
                accepted_keys += 1
                hostile.client.delete_keys(key_id)
            code, details = "OK", ""
        except InferenceError as exc:
            code, details = exc.code.name, exc.details
        call_s.append(time.perf_counter() - t)
        n += 1
        statuses[code] += 1
        by_kind[kind] += 1
        statuses_by_kind[kind][code] += 1
        if code != "OK" and len(samples[code]) < 5 and details[:60] not in (s[:60] for s in samples[code]):
            samples[code].append(details[:300])
        if code not in CLEAN or (code != "OK" and not details):
            unexpected.append({"input": n, "kind": kind, "code": code, "details": details[:300],
                               "sha256": hashlib.sha256(data).hexdigest()})
        if node.proc.poll() is not None or node.proc.pid != pid:
            restarts += 1
            unexpected.append({"input": n, "kind": kind, "code": "NODE DIED", "details": str(node.proc.returncode),
                               "sha256": hashlib.sha256(data).hexdigest()})
            node.start()  # counted; the run goes on against the restarted node
            pid = node.proc.pid
            good = Owner(bench, node, bundle, "owner-0", work / "owner-0")
            hostile = Owner(bench, node, bundle, "owner-1", work / "owner-1")
        workers_seen |= set(node.worker_pids())
        if time.perf_counter() >= next_check:
            check()
            next_check = time.perf_counter() + check_every
    fuzz_seconds = time.perf_counter() - t0
    workers_now = set(node.worker_pids())
    ok_end = check()
    for c in (good, hostile):
        c.client.close()
    return {
        "inputs_sent": n,
        "inputs_by_kind": dict(by_kind),
        "statuses_by_code": dict(statuses.most_common()),
        "statuses_by_kind": {k: dict(v.most_common()) for k, v in statuses_by_kind.items()},
        "status_samples": dict(samples),
        "unexpected": unexpected[:50],
        "unexpected_count": len(unexpected),
        "accepted_key_sets": accepted_keys,
        "node_restarts": restarts,
        "node_pid_unchanged": restarts == 0 and node.proc.pid == pid and node.proc.poll() is None,
        "workers_replaced": len(workers_seen - workers_now),  # seen between inputs: a lower bound
        "other_owner_predict_ok_at_end": ok_end,
        "other_owner_checks": checks,
        "other_owner_predict_ms_before": 1000 * first_latency,
        "call_ms_median": 1000 * statistics.median(call_s) if call_s else None,
        "call_ms_max": 1000 * max(call_s) if call_s else None,
        "fuzz_seconds": fuzz_seconds,
        "inputs_per_s": n / fuzz_seconds if fuzz_seconds else 0.0,
    }


if __name__ == "__main__":
    exit_with(main)
