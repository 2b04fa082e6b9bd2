"""Scale-out of encrypted inference: several nodes behind the owner's client-side balancer, one key registry.

Everything runs for real on loopback: a PostgreSQL 15 key registry over TLS (tests/support/postgres_server.py,
as root) and two `fedfhe-inference serve` nodes, A and B, with mutual TLS, both serving the digits
LogisticRegression bundle (n_bits 8) and a digits DecisionTreeClassifier bundle (depth 6, n_bits 6: ~77 MB of
evaluation keys), both using the registry. Owners are threads of this process, each with its own client
certificate, channel and FHE keys, generated and uploaded through node A with the client library
(fedfhe_owner.predict.encrypted.predict_rows). The "balancer" is the owner client's own: gRPC's client-side round_robin
over inference.address + inference.more_addresses with inference.server_name (secure_channel in
client/fedfhe_owner/predict/inference_client.py), no extra hop. Ciphertexts are encrypted before the clock starts
and decrypted after it stops; LR results are compared with the compiled model in simulation.

Written to bench/results/scaleout.json:

- balancer_over_direct_latency_ratio: median latency per row (request time / rows, batches of 16 rows as
  the owner client sends, 200 rows a pass) through the balancer over 2 nodes, divided by the same for one
  node addressed directly (inference.address alone, the channel without more_addresses). Goal <= 1.05.
  balancer_1_node_over_direct_latency_ratio: the balancer's channel (round_robin, static resolver) with
  one node only, over direct: the balancer's own cost, without a second node. The three channels are
  measured interleaved, rotating which goes first, so they see the same machine state.
- latency_ms_per_row: those medians (direct, balancer_1_node, balancer_2_nodes) and their p95.
- throughput: `owners` owners at once (threads), `rows` rows each in batches of 16, through one node
  (direct channels) and through two (balancer channels), repeated alternately; rows_per_s is the median
  of the repeats, two_nodes_over_one_node_throughput_ratio their ratio. rows_per_s_per_core divides by
  the machine's cores (both nodes share the same cores here); rows_per_node_cpu_s divides the rows by the
  CPU seconds the node processes used (user + system, workers included): the work per row, whatever
  the number of nodes. node_cpu_share: how the 2-node run's CPU split between A and B.
- registry_miss: for the LR key set (64 B) and the tree key set (~77 MB), the time of the first Predict
  (one row) on node B for keys uploaded through node A (B misses: fetches the keys from PostgreSQL,
  checks them against the circuit, writes its local copy, then evaluates) against the median of the next
  Predicts of the same row on B (hits). miss_extra_s = miss - hit; fetch_mb_per_s = key MB / miss_extra_s.
  node_load_s: what B's own log says the load took (fetch into a file, fsync, check, install; "loaded keys
  ... from the key registry in X s"), node_load_mb_per_s = key MB / node_load_s.
  B's registry counters (misses, loads, hits) are read from its /metrics to confirm what happened.
  upload_via_a_s: the owner's first predict_rows through A (key generation, upload into A and the
  registry, one Predict), for scale; upload_only_via_a_s its upload alone. a_first_predict_after_upload_s:
  the Predict of that first predict_rows (A's first use of keys it was just sent, no registry involved):
  the baseline for a first use without the registry; miss_over_a_first_predict_ratio = miss_s / it.
- machine, command, seconds (wall time of the whole run), notes.

    .venv/bin/python bench/scaleout.py [--owners 4] [--rows 200] [--tree-owners 2] [--out bench/results/scaleout.json]

Needs root (PostgreSQL runs as the postgres system user), PostgreSQL 15 binaries and psycopg, like
tests/loopback/test_key_registry.py.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

from fedfhe_common.runtime.exit_status import exit_with

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "support"))
import inference_support as support  # noqa: E402 - the nodes, PKI and LR bundle of the tests
import postgres_server  # noqa: E402 - the registry's PostgreSQL of tests/loopback/test_key_registry.py

MiB = 1 << 20
LR_ID, TREE_ID, VERSION = support.MODEL_ID, "digits-tree", support.VERSION
BATCH = 16  # the owner client's default inference.batch_size


class _TmpDirs:
    """What inference_support.lr_bundle needs of pytest's tmp_path_factory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))


def tree_bundle(work: Path) -> Any:
    """The depth-6, n_bits-6 digits tree of tests/loopback/test_inference_tree.py (~77 MB of keys)."""
    from concrete.ml.sklearn import DecisionTreeClassifier

    from fedfhe_coordinator.fhe.compile import compile_concrete_bundle
    from fedfhe_testbed.datasets import load_builtin

    X, y, schema = load_builtin("digits")
    idx = np.random.default_rng(0).permutation(len(y))
    train = idx[:1400]
    model = DecisionTreeClassifier(max_depth=6, n_bits=6, random_state=0).fit(X[train], y[train])
    return compile_concrete_bundle(model, work / "tree-bundle", model_id=TREE_ID, version=VERSION, schema=schema,
                                   calibration=X[train][:200], signing_key=support.signing_key())


class Owner:
    """Keys for ``model_id`` generated and uploaded through ``node`` (the client library); FHE client."""

    def __init__(self, node: Any, name: str, state: Path, X: np.ndarray, model_id: str) -> None:
        from fedfhe_owner.predict.encrypted import predict_rows
        from fedfhe_owner.predict.keys import ModelKeys

        self.name, self.model_id = name, model_id
        t = time.perf_counter()
        res = predict_rows(node.endpoint(name), state, X[:1], model_id=model_id, version=VERSION, progress=False)
        self.upload_s = time.perf_counter() - t
        self.key_id = res.key_id
        # the client's own split: the key upload, and the Predict right after it (A's first use of fresh keys)
        self.upload_only_s = res.seconds.get("upload")
        self.first_predict_s = res.seconds.get("rpc")
        self.key_bytes = (node.keys_dir / f"{self.key_id}.evk").stat().st_size
        self.fhe, _ = ModelKeys(state, model_id, VERSION).fhe_client()

    def encrypt(self, X: np.ndarray) -> list[bytes]:
        return [self.fhe.quantize_encrypt_serialize(X[i:i + 1]) for i in range(len(X))]

    def decrypt(self, results: Any) -> np.ndarray:
        return np.vstack([np.asarray(self.fhe.deserialize_decrypt_dequantize(r)).reshape(1, -1) for r in results])


def client(node: Any, owner: str, more: list[Any] = (), balanced: bool = False) -> Any:
    """``owner``'s InferenceClient: direct to ``node``; with ``balanced``, the owner's round_robin channel over
    ``node`` and ``more`` (more_addresses; with no more nodes, ``node`` listed twice: gRPC keeps one
    subchannel per address, so that is one node through the balancer's channel)."""
    from fedfhe_owner.predict.inference_client import InferenceClient

    if not balanced:
        return InferenceClient(node.endpoint(owner))
    more_addresses = [m.address for m in more] or [node.address]
    return InferenceClient(node.endpoint(owner, server_name="localhost", more_addresses=more_addresses))


def registry_counters(node: Any) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    address = yaml.safe_load(node.config.read_text())["metrics_address"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    prefix = "fedfhe_inference_key_registry_"
    return {s.name[len(prefix):-len("_total")]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name.startswith(prefix) and s.name.endswith("_total")}


def cpu_seconds(node: Any) -> float:
    """User + system CPU seconds of the node process, its threads and its (live or reaped) workers."""
    p = psutil.Process(node.pid)
    total = sum(p.cpu_times()[:4])
    for child in p.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def registry_miss(a: Any, b: Any, owners: list[Owner], X: np.ndarray, hits: int) -> dict[str, Any]:
    """First Predict of one row on B for each owner's keys (uploaded through A), then ``hits`` more."""
    before = registry_counters(b)
    samples = []
    for o in owners:
        c = client(b, o.name)
        info = c.model_info(o.model_id, VERSION)  # the channel is up before the clock starts
        ct = o.encrypt(X[:1])
        t = time.perf_counter()
        first = c.predict(o.key_id, info, ct).results
        miss = time.perf_counter() - t
        hit_times, again = [], None
        for _ in range(hits):
            t = time.perf_counter()
            again = c.predict(o.key_id, info, ct).results
            hit_times.append(time.perf_counter() - t)
        c.close()
        np.testing.assert_allclose(o.decrypt(first), o.decrypt(again), atol=1e-9)  # the same answer both ways
        logged = re.findall(rf"loaded keys {o.key_id} \(\d+ bytes\) from the key registry in ([\d.]+) s",
                            b.log_text())
        samples.append({"miss_s": miss, "hit_median_s": statistics.median(hit_times), "hits_s": hit_times,
                        "node_load_s": float(logged[-1]) if logged else None})
    after = registry_counters(b)
    miss_s = statistics.median(s["miss_s"] for s in samples)
    hit_s = statistics.median(s["hit_median_s"] for s in samples)
    key_bytes = owners[0].key_bytes
    extra = miss_s - hit_s
    a_first = statistics.median(o.first_predict_s or 0.0 for o in owners)
    loads = [s["node_load_s"] for s in samples if s["node_load_s"] is not None]
    load_s = statistics.median(loads) if loads else None
    return {
        "model": owners[0].model_id, "key_bytes": key_bytes, "key_mb": key_bytes / MiB, "key_sets": len(owners),
        "miss_s": miss_s, "hit_s": hit_s, "miss_extra_s": extra, "miss_over_hit_ratio": miss_s / hit_s,
        "fetch_mb_per_s": key_bytes / MiB / extra if extra > 0 else None,
        "node_load_s": load_s, "node_load_mb_per_s": key_bytes / MiB / load_s if load_s else None,
        "upload_via_a_s": statistics.median(o.upload_s for o in owners),
        "upload_only_via_a_s": statistics.median(o.upload_only_s or 0.0 for o in owners),
        "a_first_predict_after_upload_s": a_first,
        "miss_over_a_first_predict_ratio": miss_s / a_first if a_first else None,
        "b_registry_counters_delta": {k: after.get(k, 0) - before.get(k, 0) for k in ("misses", "loads", "hits")},
        "samples": samples,
    }


def latency(clients: dict[str, Any], owner: Owner, model: Any, X: np.ndarray, rows: int,
            passes: int) -> dict[str, Any]:
    """Per-row latency of batches of BATCH rows through each channel, interleaved and rotated."""
    info = next(iter(clients.values())).model_info(LR_ID, VERSION)
    data = X[np.arange(rows) % len(X)]
    cts = owner.encrypt(data)
    batches = [cts[s:s + BATCH] for s in range(0, rows, BATCH)]
    for c in clients.values():  # warm-up: connections up, B's copy of the keys cached
        for w in batches[:4]:
            c.predict(owner.key_id, info, w)
    per_row: dict[str, list[float]] = {n: [] for n in clients}
    names = list(clients)
    mismatches = 0
    expected = model.predict(data, fhe="simulate")
    for p in range(passes):
        results: dict[str, list[bytes]] = {n: [] for n in clients}
        for j, batch in enumerate(batches):
            k = (j + p) % len(names)
            for name in names[k:] + names[:k]:
                t = time.perf_counter()
                results[name] += list(clients[name].predict(owner.key_id, info, batch).results)
                per_row[name] += [(time.perf_counter() - t) / len(batch)] * len(batch)
        for name in names:
            got = np.argmax(owner.decrypt(results[name]), axis=1)
            mismatches += int((got != expected).sum())
    out = {n: {"p50_ms": 1000 * float(np.median(v)), "p95_ms": 1000 * float(np.percentile(v, 95)), "rows": len(v)}
           for n, v in per_row.items()}
    return {"per_row": out, "prediction_mismatches": mismatches}


def throughput(nodes: list[Any], clients: list[Any], owners: list[Owner], model: Any, X: np.ndarray,
               rows: int) -> dict[str, Any]:
    """Every owner sends ``rows`` rows in batches of BATCH at once, each through its own channel."""
    info = clients[0].model_info(LR_ID, VERSION)
    data = [X[(np.arange(rows) + i * rows) % len(X)] for i in range(len(owners))]
    cts = [o.encrypt(d) for o, d in zip(owners, data, strict=True)]
    for c, o, ct in zip(clients, owners, cts, strict=True):  # warm-up
        for _ in range(2):
            c.predict(o.key_id, info, ct[:BATCH])
    results: list[list[bytes]] = [[] for _ in owners]

    def run(i: int) -> None:
        for s in range(0, rows, BATCH):
            results[i] += list(clients[i].predict(owners[i].key_id, info, cts[i][s:s + BATCH]).results)

    cpu_before = [cpu_seconds(n) for n in nodes]
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(len(owners)) as pool:
        list(pool.map(run, range(len(owners))))
    wall = time.perf_counter() - started
    cpu = [cpu_seconds(n) - c for n, c in zip(nodes, cpu_before, strict=True)]
    mismatches = sum(int((np.argmax(o.decrypt(results[i]), axis=1) != model.predict(data[i], fhe="simulate")).sum())
                     for i, o in enumerate(owners))
    total = len(owners) * rows
    return {"wall_s": wall, "rows": total, "rows_per_s": total / wall, "node_cpu_s": cpu,
            "rows_per_node_cpu_s": total / sum(cpu), "prediction_mismatches": mismatches}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--owners", type=int, default=4, help="concurrent owners in the throughput runs")
    ap.add_argument("--rows", type=int, default=200, help="rows per owner and per latency pass")
    ap.add_argument("--passes", type=int, default=5, help="latency passes over --rows rows")
    ap.add_argument("--repeats", type=int, default=3, help="throughput runs per node count")
    ap.add_argument("--tree-owners", type=int, default=2, help="tree key sets uploaded (registry misses on B)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scaleout.json")
    args = ap.parse_args(argv)
    reason = postgres_server.unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    load_before = os.getloadavg()
    names = [f"owner-{i}" for i in range(max(args.owners, args.tree_owners))]
    with tempfile.TemporaryDirectory(prefix="fedfhe-bench-scaleout-") as tmp:
        work = Path(tmp)
        pki = support.make_pki(work / "pki", tuple(names))
        postgres_server.issue_certificates(pki)
        print("compiling the digits LR and tree bundles ...", file=sys.stderr)
        lr = support.lr_bundle(_TmpDirs(work))
        tree = tree_bundle(work)
        nodes: list[Any] = []
        with postgres_server.PostgresServer(pki) as pg:
            try:
                registry = pg.registry_config(pki)
                for name in ("a", "b"):
                    nodes.append(support.start_node(work / name, pki, (lr.directory, tree.directory),
                                                    key_registry=registry))
                a, b = nodes
                X = lr.X_test
                print(f"{len(names)} owners: LR keys through A ...", file=sys.stderr)
                owners = [Owner(a, n, work / "owners" / n, X, LR_ID) for n in names]
                print("registry miss on B: LR ...", file=sys.stderr)
                miss_lr = registry_miss(a, b, owners, X, hits=5)
                print(f"{args.tree_owners} owner(s): tree keys through A ...", file=sys.stderr)
                tree_owners = [Owner(a, n, work / "tree-owners" / n, X, TREE_ID) for n in names[:args.tree_owners]]
                print("registry miss on B: tree ...", file=sys.stderr)
                miss_tree = registry_miss(a, b, tree_owners, X, hits=3)

                print("latency per row: direct, balancer over 1 node, over 2 nodes ...", file=sys.stderr)
                chans = {"direct": client(a, names[0]), "balancer_1_node": client(a, names[0], balanced=True),
                         "balancer_2_nodes": client(a, names[0], [b], balanced=True)}
                lat = latency(chans, owners[0], lr.model, X, args.rows, args.passes)
                for c in chans.values():
                    c.close()

                print(f"throughput: {args.owners} owners at once, 1 node and 2 nodes ...", file=sys.stderr)
                runs: dict[str, list[dict[str, Any]]] = {"1_node": [], "2_nodes": []}
                for r in range(args.repeats):
                    for key in (("1_node", "2_nodes") if r % 2 == 0 else ("2_nodes", "1_node")):
                        two = key == "2_nodes"
                        cs = [client(a, n, [b] if two else [], balanced=two) for n in names[:args.owners]]
                        runs[key].append(throughput([a, b] if two else [a], cs, owners[:args.owners], lr.model, X,
                                                    args.rows))
                        for c in cs:
                            c.close()
            finally:
                for node in nodes:
                    node.stop()
    shutil.rmtree(support.release_dir(), ignore_errors=True)
    import concrete.ml

    cores = os.cpu_count() or 1
    tput = {}
    for key, rs in runs.items():
        rate = statistics.median(r["rows_per_s"] for r in rs)
        cpu = [sum(r["node_cpu_s"][i] for r in rs) for i in range(len(rs[0]["node_cpu_s"]))]
        tput[key] = {"rows_per_s": rate, "rows_per_s_per_core": rate / cores,
                     "rows_per_node_cpu_s": statistics.median(r["rows_per_node_cpu_s"] for r in rs),
                     "runs": rs}
        if len(cpu) == 2:
            tput[key]["node_cpu_share"] = {"a": cpu[0] / sum(cpu), "b": cpu[1] / sum(cpu)}
    per_row = lat["per_row"]
    mismatches = lat["prediction_mismatches"] + sum(r["prediction_mismatches"] for rs in runs.values() for r in rs)
    result = {
        "balancer_over_direct_latency_ratio": per_row["balancer_2_nodes"]["p50_ms"] / per_row["direct"]["p50_ms"],
        "balancer_1_node_over_direct_latency_ratio":
            per_row["balancer_1_node"]["p50_ms"] / per_row["direct"]["p50_ms"],
        "latency_ms_per_row": per_row,
        "two_nodes_over_one_node_throughput_ratio": tput["2_nodes"]["rows_per_s"] / tput["1_node"]["rows_per_s"],
        "throughput": {"owners": args.owners, "rows_per_owner": args.rows, "rows_per_request": BATCH, **tput},
        "registry_miss": {"lr": miss_lr, "tree": miss_tree},
        "prediction_mismatches": mismatches,
        "setup": {"models": {"lr": "digits LogisticRegression, n_bits 8",
                             "tree": "digits DecisionTreeClassifier, max_depth 6, n_bits 6"},
                  "nodes": "2 x fedfhe-inference serve on loopback, tests' limits (inference_support.LIMITS), "
                           "key_registry on one PostgreSQL 15 over TLS (verify-full, client certificate)",
                  "balancer": "owner client's channel: round_robin over address + more_addresses, server_name "
                              "localhost, retries on UNAVAILABLE; direct: address alone",
                  "latency": f"{args.passes} passes x {args.rows} rows, batches of {BATCH}, one owner",
                  "clients": "threads of one process, own certificate/channel/keys each; encryption and decryption "
                             "outside the timed sections"},
        "machine": {"cores": cores, "python": platform.python_version(), "concrete_ml": concrete.ml.__version__,
                    "platform": platform.platform(),
                    "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]}},
        "note": (f"Both nodes, PostgreSQL and the owners share this machine's {cores} cores, so a second node "
                 "adds no CPU here: two_nodes_over_one_node_throughput_ratio shows what the balancer and a "
                 "second process cost or gain on the same cores, not what a second machine would add. On a "
                 "second machine of the same size, throughput would scale with the CPU the nodes get: "
                 "rows_per_node_cpu_s is the work per row (about the same with 1 and 2 nodes), so a node with "
                 "its own cores adds about its cores x rows_per_node_cpu_s rows/s, bounded by the owners' "
                 "encryption and the network."),
        "notes": [
            "shared machine: 2 cores shared with other jobs (other benchmarks, tests) while this ran; absolute "
            "rates and latencies are not stable, compare the ratios measured in one run",
            "the 1-node balancer channel lists the node twice in more_addresses (the static resolver needs a "
            "second address to turn the balancer on): both entries are the same node",
            "registry misses are measured on loopback: PostgreSQL on the same machine, no network latency or "
            "bandwidth limit between node and registry; a remote registry adds its round trips and transfer time",
            "miss_extra_s (miss - hit) is more than the registry: it holds B's load (node_load_s: fetch into a file, "
            "fsync, key check, install) and the first evaluation with keys new to the node, which A pays as well "
            "right after an upload (a_first_predict_after_upload_s, no registry involved); miss_over_a_first_"
            "predict_ratio compares the two first uses, node_load_mb_per_s is the registry path's own rate and "
            "fetch_mb_per_s the whole miss's",
            "the first LR miss sample on B is slower than the others (registry_miss.lr.samples[0]): B's first "
            "registry fetch; the medians are reported",
        ],
        "command": "python bench/scaleout.py" + "".join(
            f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if k != "out" and v != ap.get_default(k)),
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"latency per row, p50: direct {per_row['direct']['p50_ms']:.2f} ms, balancer 1 node "
          f"{per_row['balancer_1_node']['p50_ms']:.2f} ms, 2 nodes {per_row['balancer_2_nodes']['p50_ms']:.2f} ms; "
          f"balancer/direct {result['balancer_over_direct_latency_ratio']:.3f}")
    for key, t in tput.items():
        print(f"throughput {key}: {t['rows_per_s']:.1f} rows/s, {t['rows_per_s_per_core']:.1f} rows/s/core, "
              f"{t['rows_per_node_cpu_s']:.1f} rows/node-CPU-s")
    for key, m in result["registry_miss"].items():
        rate = f"{m['fetch_mb_per_s']:.3f} MB/s" if m["fetch_mb_per_s"] else "n/a"
        print(f"registry miss {key} ({m['key_bytes']} B): node load {m['node_load_s']} s, "
              f"miss {m['miss_s']:.3f} s, hit {m['hit_s']:.3f} s, "
              f"extra {m['miss_extra_s']:.3f} s, {rate}, B counters {m['b_registry_counters_delta']}")
    print(f"mismatches {mismatches}; {result['seconds']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    exit_with(main)
