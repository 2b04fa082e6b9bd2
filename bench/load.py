"""Load on the inference node: 8 data owners x 200 encrypted predictions at once, against 1 owner alone.

Everything runs for real on loopback: a `fedfhe-inference serve` subprocess with
mutual TLS serving the digits LogisticRegression bundle (n_bits 8); each owner
is a thread of this process with its own client certificate, channel and FHE
keys (generated and uploaded through the client library). Ciphertexts are
encrypted before the clock starts and decrypted after it stops, so the numbers
are the service's; every result is then decrypted and compared with the
compiled model in simulation (a mismatch counts as an error).

Scenarios (each after a warm-up of 2 requests per owner):

- baseline: 1 owner, 200 predictions, one row per Predict request;
- load: 8 owners at once, 200 predictions each, one row per request;
- load_batch16: the same in batches of 16 rows (the client's default).

Written to bench/results/load.json: throughput (rows/s), per-request latency
p50/p95/p99, error count, the server's RSS after warm-up, at the end and its
peak (VmHWM), and the ratios load/baseline.

    .venv/bin/python bench/load.py [--owners 8] [--rows 200] [--out bench/results/load.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from fedfhe_common.runtime.exit_status import exit_with

MiB = 1 << 20


def new_node(work: Path, pki: Path) -> Any:
    """A node (not started) in ``work`` on a free loopback port, default limits; health probed as owner-0."""
    from fedfhe_common.runtime.procs import free_port
    from fedfhe_testbed.inference_node import InferenceNode, write_config

    config = write_config(work / "inference.yaml", pki, f"127.0.0.1:{free_port()}", work, rescan_interval_s=0)
    return InferenceNode(config, pki, "owner-0")


def compile_bundle(work: Path) -> tuple[Any, Any, np.ndarray]:
    from fedfhe_common.pki.release import load_signing_key
    from fedfhe_coordinator.fhe.compile import compile_artifact
    from fedfhe_coordinator.fhe.local_training import train_local
    from fedfhe_testbed.datasets import load_builtin

    X, y, schema = load_builtin("digits")
    idx = np.random.default_rng(0).permutation(len(y))
    train, test = idx[:1400], idx[1400:]
    key = load_signing_key(work / "pki" / "release.key")
    train_local(X[train], y[train], schema, "LogisticRegression").save(work / "artifact", key)
    result, model = compile_artifact(work / "artifact", work / "bundle", n_bits=8, model_id="digits-lr", version="1",
                                     signing_key=key)
    return result, model, X[test]


class Owner:
    """Keys generated and uploaded through the client library; a channel of its own."""

    def __init__(self, node: Any, name: str, state: Path, X: np.ndarray) -> None:
        from fedfhe_owner.predict.encrypted import predict_rows
        from fedfhe_owner.predict.inference_client import InferenceClient
        from fedfhe_owner.predict.keys import ModelKeys

        self.name = name
        endpoint = node.endpoint(name)
        self.key_id = predict_rows(endpoint, state, X[:1], model_id="digits-lr", version="1",
                                   progress=False).key_id
        self.fhe, _ = ModelKeys(state, "digits-lr", "1").fhe_client()
        self.client = InferenceClient(endpoint)
        self.info = self.client.model_info("digits-lr", "1")

    def encrypt(self, X: np.ndarray) -> list[bytes]:
        return [self.fhe.quantize_encrypt_serialize(X[i:i + 1]) for i in range(len(X))]

    def decrypt(self, results: list[bytes]) -> np.ndarray:
        return np.vstack([np.asarray(self.fhe.deserialize_decrypt_dequantize(r)).reshape(1, -1) for r in results])


def scenario(node: Any, owners: list[Owner], model: Any, X: np.ndarray, rows: int, batch: int) -> dict[str, Any]:
    """Every owner sends ``rows`` predictions in requests of ``batch`` rows, all owners at once."""
    from fedfhe_owner.predict.inference_client import InferenceError

    data = [X[(np.arange(rows) + i * rows) % len(X)] for i in range(len(owners))]
    cts = [o.encrypt(d) for o, d in zip(owners, data, strict=True)]
    warm = [o.encrypt(X[:batch]) for o in owners]
    for o, w in zip(owners, warm, strict=True):  # warm-up, twice per owner
        for _ in range(2):
            o.client.predict(o.key_id, o.info, w)
    rss_warm = psutil.Process(node.pid).memory_info().rss
    latencies: list[list[float]] = [[] for _ in owners]
    results: list[list[bytes]] = [[] for _ in owners]
    errors: list[str] = []

    def run(i: int) -> None:
        o = owners[i]
        for s in range(0, rows, batch):
            t = time.perf_counter()
            try:
                results[i] += list(o.client.predict(o.key_id, o.info, cts[i][s:s + batch]).results)
            except InferenceError as exc:
                errors.append(f"{o.name}: {exc}")
            latencies[i].append(time.perf_counter() - t)

    started = time.perf_counter()
    with cf.ThreadPoolExecutor(len(owners)) as pool:
        list(pool.map(run, range(len(owners))))
    wall = time.perf_counter() - started
    rss_end = psutil.Process(node.pid).memory_info().rss
    mismatches = 0
    for i, o in enumerate(owners):
        expected = model.predict(data[i], fhe="simulate")
        got = np.argmax(o.decrypt(results[i]), axis=1) if results[i] else np.array([])
        mismatches += int(len(got) != len(expected) or (got != expected).sum())
    flat = np.array([x for per in latencies for x in per])
    return {
        "owners": len(owners), "rows_per_owner": rows, "rows_per_request": batch, "requests": int(len(flat)),
        "wall_s": wall, "throughput_rows_per_s": len(owners) * rows / wall,
        "latency_ms": {p: float(1000 * np.percentile(flat, q)) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))},
        "errors": len(errors) + mismatches, "rpc_errors": errors[:10], "prediction_mismatches": mismatches,
        "server_rss_mb": {"after_warm_up": rss_warm / MiB, "end": rss_end / MiB,
                          "growth": (rss_end - rss_warm) / MiB},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--owners", type=int, default=8)
    ap.add_argument("--rows", type=int, default=200, help="predictions per owner")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "load.json")
    args = ap.parse_args(argv)
    from fedfhe_common.pki.release import load_verify_key
    from fedfhe_inference.bundles import publish_bundle
    from fedfhe_testbed.inference_node import make_inference_pki

    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fedfhe-bench-load-") as tmp:
        work = Path(tmp)
        names = [f"owner-{i}" for i in range(args.owners)]
        pki = make_inference_pki(work / "pki", names)
        print("compiling the digits LR bundle ...", file=sys.stderr)
        bundle, model, X = compile_bundle(work)
        node = new_node(work / "node", pki)
        publish_bundle(bundle.directory, node.bundles_dir, load_verify_key(pki / "release.pub"))
        node.start()
        try:
            print(f"{args.owners} owners: keys ...", file=sys.stderr)
            owners = [Owner(node, n, work / n, X) for n in names]
            print("baseline: 1 owner ...", file=sys.stderr)
            base = scenario(node, owners[:1], model, X, args.rows, 1)
            print(f"load: {args.owners} owners at once ...", file=sys.stderr)
            load = scenario(node, owners, model, X, args.rows, 1)
            print(f"load: {args.owners} owners at once, batches of 16 ...", file=sys.stderr)
            load16 = scenario(node, owners, model, X, args.rows, 16)
            peak = node.status_mb("VmHWM") * MiB  # the highest RSS the process ever had
            for o in owners:
                o.client.close()
        finally:
            node.stop()
    import concrete.ml

    lat, blat = load["latency_ms"], base["latency_ms"]
    result = {
        "owners": args.owners,
        "predictions_per_owner": args.rows,
        "throughput_rows_per_s": load["throughput_rows_per_s"],
        "latency_ms_per_request": lat,
        "server_peak_rss_mb": peak / MiB,
        "errors": load["errors"] + load16["errors"] + base["errors"],
        "ratios": {
            "throughput_n_owners_over_1_owner": load["throughput_rows_per_s"] / base["throughput_rows_per_s"],
            "p50_latency_n_owners_over_1_owner": lat["p50"] / blat["p50"],
            "p99_latency_n_owners_over_1_owner": lat["p99"] / blat["p99"],
            "throughput_batch16_over_batch1": load16["throughput_rows_per_s"] / load["throughput_rows_per_s"],
        },
        "scenarios": {"baseline_1_owner": base, "load": load, "load_batch16": load16},
        "setup": {"model": "digits LogisticRegression, n_bits 8", "server": "fedfhe-inference serve, default limits",
                  "clients": "threads of one process, own certificate/channel/keys each; encryption and "
                             "decryption outside the timed section"},
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "concrete_ml": concrete.ml.__version__, "platform": platform.platform(),
                    # other work on the machine skews every number: the 1-minute load average before and after
                    "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]}},
        "shared_machine": "2 cores shared with other jobs (other benchmarks, tests) while this ran: absolute rates "
                          "and latencies are not stable; compare the ratios, measured in one run",
        "command": "python bench/load.py" + (f" --owners {args.owners}" if args.owners != 8 else "")
                   + (f" --rows {args.rows}" if args.rows != 200 else ""),
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    r = result["ratios"]
    for name, s in result["scenarios"].items():
        print(f"{name}: {s['owners']} owner(s) x {s['rows_per_owner']} rows, {s['rows_per_request']} row(s)/request: "
              f"{s['throughput_rows_per_s']:.1f} rows/s, p50 {s['latency_ms']['p50']:.1f} ms, "
              f"p95 {s['latency_ms']['p95']:.1f} ms, p99 {s['latency_ms']['p99']:.1f} ms, errors {s['errors']}, "
              f"RSS growth after warm-up {s['server_rss_mb']['growth']:+.1f} MB")
    print(f"throughput {args.owners} owners / 1 owner: {r['throughput_n_owners_over_1_owner']:.2f}x")
    print(f"p50 latency {args.owners} owners / 1 owner: {r['p50_latency_n_owners_over_1_owner']:.2f}x, "
          f"p99: {r['p99_latency_n_owners_over_1_owner']:.2f}x")
    print(f"throughput batches of 16 / single rows: {r['throughput_batch16_over_batch1']:.2f}x")
    print(f"server peak RSS: {result['server_peak_rss_mb']:.0f} MB; errors: {result['errors']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    exit_with(main)
