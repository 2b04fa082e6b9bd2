"""Federated training and encrypted predictions across a WAN: owners behind long, lossy links (issue 29).

Twenty data owners, each a real `fedfhe-owner supernode` (flower-supernode, TLS, SuperNode auth) in a network
namespace of its own, reach the coordinator's SuperLink and two `fedfhe-inference serve` nodes over an
emulated wide-area link. The SuperLink, the inference nodes and the key registry (PostgreSQL 15 over TLS, as in
bench/scaleout.py) run in the root namespace and listen on HOST_IP. Per link condition (CONDITIONS: none; 100 ms
round trip with 1 % loss; 300 ms with 3 %) the script runs, on the same running federation:

- a plain FedAvg training and a SecAgg+ training (`run_training`, LogisticRegression on digits, ``--rounds``
  rounds): seconds per round (the ServerApp's progress rows), the owners that failed or sent nothing in each
  round, the whole run's seconds; every run must complete with an artifact;
- encrypted predictions by ``--predict-owners`` owners, one after the other, each with the owner's own command
  (`fedfhe-owner predict --config owner.yaml`, run inside its namespace) through the owner's client-side
  balancer: gRPC round_robin over inference.address + inference.more_addresses (the two nodes). Latency per row
  is the client's own figure (encrypt + round trips + decrypt over the rows; key generation and upload done
  once before the first condition). Every decrypted prediction must equal the compiled model's simulation.

Each figure is reported against the same figure without link emulation (``*_over_none``), measured in the same
script on the same federation.

The link. This machine's kernel has no netem qdisc (`tc qdisc add ... netem` answers "Specified qdisc kind is
unknown", and there are no kernel modules to load), so the bench emulates the link itself, as netem would: each
owner's namespace is joined to the root namespace by a pair of TUN devices (HOST side fhwan-rN, owner side
fhwan-oN) and a userspace wire (``python bench/wan.py --wire N``, one process) carries every IP packet between
them, holding it for half the round trip and dropping it with probability 1 - sqrt(1 - loss) in each direction
(a round trip then loses about ``loss``). Packets are single IP datagrams of at most the 1500 B MTU (a TUN device
has no segmentation offload), so a loss is one packet's, as on a real path. The ``none`` condition goes through
the same wire with no delay and no loss: the ratios compare the link conditions, not the wire's own cost.

    flock /tmp/fedfhe-heavy.lock .venv/bin/python bench/wan.py [--owners 20] [--rounds 3] [--predict-owners 4]
        [--rows 64] [--out bench/results/wan.json]

Needs root (namespaces, TUN devices, PostgreSQL as the postgres user). Namespaces and links carry PREFIX; the
leftovers of a crashed run are removed at start and everything is removed at the end.
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import json
import math
import os
import platform
import random
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PREFIX = "fhwan"  # every namespace and link made here carries it
SUBNET = "10.78.0"  # not 10.77.0.0/24: tests/support/testhosts.py uses that one
HOST_IP = f"{SUBNET}.1"  # SuperLink, inference nodes (on the bridge BRIDGE in the root namespace)
BRIDGE = f"{PREFIX}-br"
OWNER_OCTET = 10  # owner i is SUBNET.(OWNER_OCTET + i)
MTU = 1500
# name -> (round trip in ms, loss over the round trip)
CONDITIONS: dict[str, tuple[float, float]] = {"none": (0.0, 0.0), "rtt100ms-loss1pct": (100.0, 0.01),
                                               "rtt300ms-loss3pct": (300.0, 0.03)}
MODEL_ID, VERSION = "digits-lr", "wan"
BATCH = 16  # the owner client's default inference.batch_size


# ---- the emulated link ------------------------------------------------------------------------------------------

TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000


def open_tun(name: str) -> int:
    """A non-persistent TUN device ``name`` (gone when the descriptor closes), IP packets without a header."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def wire_main(owners: int) -> int:
    """The wire process: owner i's packets cross between fhwan-oI and fhwan-rI, delayed and dropped as set.

    Control on stdin, one JSON object a line: {"delay_s": d, "loss": p} sets one direction's delay and loss
    probability; {"stats": true} answers the packet counters since the last setting or stats, and restarts
    them; end of input stops the wire (the devices vanish with it). Replies on stdout, one JSON object a line.
    """
    sel = selectors.DefaultSelector()
    for i in range(owners):
        o, r = open_tun(f"{PREFIX}-o{i}"), open_tun(f"{PREFIX}-r{i}")
        sel.register(o, selectors.EVENT_READ, (r, "up"))  # the owner's egress goes to the host side
        sel.register(r, selectors.EVENT_READ, (o, "down"))
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
    os.set_blocking(sys.stdin.fileno(), False)
    delay, loss = 0.0, 0.0
    rng = random.Random(0)
    counts = {"packets": 0, "dropped": 0, "bytes": 0}
    due: list[tuple[float, int, int, bytes]] = []
    seq, pending = 0, b""

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": True})
    while True:
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else None
        for key, _ in sel.select(timeout):
            if key.data is None:  # control
                chunk = os.read(key.fd, 4096)
                if not chunk:
                    return 0
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    cmd = json.loads(line)
                    if "delay_s" in cmd:
                        delay, loss = float(cmd["delay_s"]), float(cmd["loss"])
                        reply({"set": {"delay_s": delay, "loss": loss}})
                    else:
                        reply({"counts": counts})
                    counts = {"packets": 0, "dropped": 0, "bytes": 0}
                continue
            out, _ = key.data
            now = time.monotonic()
            while True:
                try:
                    pkt = os.read(key.fd, 65536)
                except BlockingIOError:
                    break
                counts["packets"] += 1
                if loss and rng.random() < loss:
                    counts["dropped"] += 1
                    continue
                counts["bytes"] += len(pkt)
                seq += 1
                heapq.heappush(due, (now + delay, seq, out, pkt))
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, out, pkt = heapq.heappop(due)
            try:
                os.write(out, pkt)
            except OSError:  # the other side is not up (yet): the packet is lost, as on a cable
                counts["dropped"] += 1


class Wire:
    """The wire subprocess (``--wire``): its TUN devices exist from start() until stop()."""

    def __init__(self, owners: int) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--wire", str(owners)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = self._read()
        if not first.get("ready"):
            raise RuntimeError(f"the link emulator did not start: {first}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the link emulator exited ({self.proc.poll()})")
        return json.loads(line)

    def _ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def set(self, rtt_ms: float, loss: float) -> None:
        """Half the round trip each way; per-direction loss p with 1 - (1 - p)^2 = loss (counters restart)."""
        self._ask({"delay_s": rtt_ms / 2000.0, "loss": 1.0 - math.sqrt(1.0 - loss)})

    def counts(self) -> dict[str, int]:
        """Packets carried, dropped and bytes delivered since the last set() or counts()."""
        return self._ask({"stats": True})["counts"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# ---- namespaces --------------------------------------------------------------------------------------------------

def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


def netns(i: int) -> str:
    return f"{PREFIX}-n{i}"


def owner_ip(i: int) -> str:
    return f"{SUBNET}.{OWNER_OCTET + i}"


def cleanup() -> None:
    """Remove our namespaces (their processes killed first: a crashed run's), the bridge and stray links."""
    from fedfhe_common.runtime.procs import wait_until

    names = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines()
             if line.startswith(f"{PREFIX}-")]

    def pids() -> list[int]:
        return [int(p) for ns in names for p in _ip("netns", "pids", ns, check=False).stdout.split() if p.isdigit()]

    for sig in (15, 9):
        for pid in pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            wait_until(lambda: not pids(), 20 if sig == 15 else 10, "processes in the bench namespaces to exit", 0.2)
            break
        except TimeoutError:
            continue
    for ns in names:
        _ip("netns", "del", ns, check=False)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(f"{PREFIX}-"):
            _ip("link", "del", name, check=False)


def build_hosts(owners: int) -> Wire:
    """The bridge with HOST_IP, the wire's TUN pairs, one namespace per owner (lo up, its address, its link)."""
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{HOST_IP}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    wire = Wire(owners)
    try:
        for i in range(owners):
            ns, o, r = netns(i), f"{PREFIX}-o{i}", f"{PREFIX}-r{i}"
            _ip("netns", "add", ns)
            _ip("link", "set", o, "netns", ns)
            _ip("-n", ns, "link", "set", "lo", "up")  # the SuperNode's ClientApp runtime is on 127.0.0.1
            _ip("-n", ns, "addr", "add", f"{owner_ip(i)}/24", "dev", o)
            _ip("-n", ns, "link", "set", o, "mtu", str(MTU), "up")
            _ip("link", "set", r, "mtu", str(MTU), "up")
            _ip("route", "add", f"{owner_ip(i)}/32", "dev", r)  # more specific than the bridge's /24
    except BaseException:
        wire.stop()
        raise
    return wire


def probe_rtt(i: int, port: int, count: int = 30) -> dict[str, float]:
    """TCP connects from owner i's namespace to HOST_IP:port (one round trip each): median and max in ms."""
    code = (f"import socket,time,json\nt=[]\nfor _ in range({count}):\n s=socket.socket();a=time.perf_counter()\n"
            f" s.connect(('{HOST_IP}',{port}));t.append(1000*(time.perf_counter()-a));s.close()\n"
            "t.sort();print(json.dumps({'median_ms':t[len(t)//2],'max_ms':t[-1]}))")
    res = subprocess.run(["ip", "netns", "exec", netns(i), sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=120, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"RTT probe from {netns(i)} failed: {res.stderr.strip()[-500:]}")
    return json.loads(res.stdout)


class Listener:
    """A TCP listener on HOST_IP accepting and closing connections (the RTT probe's far end)."""

    def __init__(self) -> None:
        self.sock = socket.create_server((HOST_IP, 0), backlog=128)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self.sock.close()


# ---- the federation -----------------------------------------------------------------------------------------------

def online(cfg: Any) -> int:
    from fedfhe_coordinator.train import flwr_cli

    return sum(1 for n in flwr_cli.registered_keys(cfg) if n.get("status") == "online")


def train(cfg: Any, overrides: dict[str, Any], owners: int, timeout: float) -> dict[str, Any]:
    """One training run on the running federation; its progress rows as figures (raises if it fails)."""
    from fedfhe_common.runtime.procs import wait_until
    from fedfhe_coordinator.train.training import run_training

    wait_until(lambda: online(cfg) == owners, 180, f"all {owners} SuperNodes online", 1.0)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    artifact = run_training(cfg, overrides, on_round=rows.append, timeout=timeout)
    total = time.perf_counter() - started
    per_round = [float(r["seconds"]) for r in rows]
    lost = [sorted({str(f.get("owner", "?")) if isinstance(f, dict) else str(f) for f in r.get("failures") or []}
                   | {str(m) for m in r.get("missing") or []}) for r in rows]
    return {
        "completed": artifact is not None and len(rows) == int(overrides.get("num-server-rounds", len(rows))),
        "rounds": len(rows), "seconds_per_round": statistics.mean(per_round), "seconds_each_round": per_round,
        "owners_answered_per_round": [r.get("fit_nodes") for r in rows],
        "failed_or_missing_owners_per_round": [len(x) for x in lost], "failed_or_missing_owners": lost,
        "accuracy": rows[-1].get("server", {}).get("accuracy") if rows else None,
        "run_seconds": total,
    }


def predict(c: Any, i: int, owner: str, owner_cfg: Path, X: Any, y: Any, work: Path, tag: str) -> dict[str, Any]:
    """`fedfhe-owner predict` inside owner i's namespace on rows X; its summary and predictions."""
    import numpy as np

    from fedfhe_common.runtime.procs import venv_bin

    rows, out = work / f"{owner}-{tag}-rows.npz", work / f"{owner}-{tag}-predictions.json"
    np.savez(rows, X=X, y=y)
    argv = ["ip", "netns", "exec", netns(i), venv_bin("fedfhe-owner"), "predict", "--config", str(owner_cfg),
            "--input", str(rows), "--out", str(out), "--no-progress", "--format", "json"]
    started = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    wall = time.perf_counter() - started
    if res.returncode != 0:
        raise RuntimeError(f"{owner} predict ({tag}) failed ({res.returncode}): {res.stderr.strip()[-1500:]}")
    doc = json.loads(out.read_text())
    return {"summary": {k: doc[k] for k in ("rows", "latency_per_row_s", "seconds", "bytes", "keys_uploaded")},
            "predictions": [p["prediction"] for p in doc["predictions"]], "process_seconds": wall}


def served_by(node: Any) -> float:
    """Predict calls the node answered (its Prometheus counter), to show both nodes served."""
    import urllib.request

    import yaml
    from prometheus_client.parser import text_string_to_metric_families

    address = yaml.safe_load(node.config.read_text())["metrics_address"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "fedfhe_inference_rpcs_total" and s.labels.get("method") == "Predict")


def run(args: argparse.Namespace) -> dict[str, Any]:  # noqa: PLR0915 - one federation, driven step by step
    import numpy as np

    sys.path.insert(0, str(HERE.parent / "tests" / "support"))
    import postgres_server  # the key registry's PostgreSQL of bench/scaleout.py and the tests

    from fedfhe_common.contracts.schema import resolve_schema
    from fedfhe_common.ml.data import load_table
    from fedfhe_common.pki.release import load_signing_key, load_verify_key
    from fedfhe_common.runtime.procs import free_port, venv_bin
    from fedfhe_coordinator import config as coord
    from fedfhe_coordinator.fhe.compile import compile_artifact
    from fedfhe_inference.bundles import publish_bundle
    from fedfhe_testbed.cluster import Cluster
    from fedfhe_testbed.inference_node import InferenceNode, write_config
    from fedfhe_testbed.partition_cli import write_partitions

    reason = postgres_server.unavailable_reason()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    result: dict[str, Any] = {"conditions": {}}
    names = [f"owner-{i}" for i in range(args.owners)]
    schema = resolve_schema("digits")
    cleanup()
    wire = build_hosts(args.owners)
    listener = Listener()
    nodes: list[Any] = []
    pg = None
    try:
        with tempfile.TemporaryDirectory(prefix="fedfhe-bench-wan-") as tmp, \
                Cluster(Path(tmp), host=HOST_IP, secure=False) as c:
            work = Path(tmp)
            data = work / "data"
            summary = write_partitions("digits", args.owners, data, scheme="iid", seed=0)
            c.make_pki(names)
            postgres_server.issue_certificates(c.pki)
            # A round waits for every owner until round_timeout_s; with 80 % of them it may still aggregate.
            min_nodes = max(3, math.ceil(0.8 * args.owners))
            cfg_path = c.coordinator_config(names, rounds=args.rounds, min_nodes=min_nodes, schema="digits",
                                            public_test=str(data / "public-test.npz"),
                                            round_timeout_s=args.round_timeout, wait_for_nodes_s=180.0)
            cfg = coord.load(cfg_path)
            c.start_superlink(cfg_path)
            c.register(cfg_path)
            ports = [free_port(HOST_IP), free_port(HOST_IP)]
            owner_cfgs: dict[str, Path] = {}
            for i, name in enumerate(names):
                inference = {"address": f"{HOST_IP}:{ports[0]}", "more_addresses": [f"{HOST_IP}:{ports[1]}"],
                             "server_name": "localhost", "certfile": str(c.pki / f"{name}.crt"),
                             "keyfile": str(c.pki / f"{name}.key"), "ca_certfile": str(c.pki / "ca.crt"),
                             "model_id": MODEL_ID}
                owner_cfgs[name] = c.owner_config(name, data / f"owner-{i}.npz", schema="digits",
                                                  inference=inference)
                c.start(f"supernode-{name}", ["ip", "netns", "exec", netns(i), venv_bin("fedfhe-owner"),
                                              "supernode", "--config", str(owner_cfgs[name])])
            wire.set(0.0, 0.0)
            print(f"{args.owners} SuperNodes started in their namespaces; warm-up run (1 round, plain) ...",
                  file=sys.stderr, flush=True)
            timeout = 180.0 + 2 * args.round_timeout * (args.rounds + 2)
            result["warm_up"] = train(cfg, {"num-server-rounds": 1, "secure-aggregation": False}, args.owners,
                                      timeout)

            print("compiling the warm-up model, starting the key registry and two inference nodes ...",
                  file=sys.stderr, flush=True)
            public = load_table(data / "public-test.npz", schema)
            artifact = work / "training" / "artifact"
            from fedfhe_common.contracts.artifact import TrainingArtifact

            trained = TrainingArtifact.load(artifact)
            bundle, fhe_model = compile_artifact(artifact, work / "bundle", model_id=MODEL_ID, version=VERSION,
                                                 eval_set=public, force=True,
                                                 signing_key=load_signing_key(c.pki / "release.key"))
            pg = postgres_server.PostgresServer(c.pki)
            pg.start()
            registry = pg.registry_config(c.pki)
            for tag, port in zip("ab", ports, strict=True):
                state = work / f"inference-{tag}"
                node_cfg = write_config(state / "inference.yaml", c.pki, f"{HOST_IP}:{port}", state,
                                        key_registry=registry, pid_file=str(state / "inference.pid"))
                node = InferenceNode(node_cfg, c.pki, names[0], log=c.logs / f"inference-{tag}.log")
                (state / "bundles").mkdir(parents=True, exist_ok=True)
                publish_bundle(bundle.directory, state / "bundles", load_verify_key(c.pki / "release.pub"))
                nodes.append(node.start())

            X_pub, y_pub = public
            predictors = list(range(min(args.predict_owners, args.owners)))
            slices = {i: np.arange(i * args.rows, (i + 1) * args.rows) % len(X_pub) for i in predictors}
            expected = {i: schema.decode_labels(fhe_model.predict(trained.prep.transform(X_pub[s]), fhe="simulate"))
                        for i, s in slices.items()}
            clear = {i: schema.decode_labels(trained.to_estimator().predict(trained.prep.transform(X_pub[s])))
                     for i, s in slices.items()}
            print(f"keys: {len(predictors)} owners generate and upload theirs (no link emulation) ...",
                  file=sys.stderr, flush=True)
            for i in predictors:  # 3 batches: the balancer's channel reaches both nodes (a registry miss on one)
                predict(c, i, names[i], owner_cfgs[names[i]], X_pub[:3 * BATCH], y_pub[:3 * BATCH], work, "keys")

            for cond, (rtt, loss) in CONDITIONS.items():
                wire.set(rtt, loss)
                probe = probe_rtt(0, listener.port)
                print(f"[{cond}] round trip measured {probe['median_ms']:.1f} ms (median of 30 TCP connects)",
                      file=sys.stderr, flush=True)
                entry: dict[str, Any] = {"rtt_ms": rtt, "loss": loss,
                                         "per_direction": {"delay_ms": rtt / 2, "loss": 1 - math.sqrt(1 - loss)},
                                         "measured_tcp_connect_ms": probe}
                result["conditions"][cond] = entry
                for mode, secure in (("plain", False), ("secagg", True)):
                    r = train(cfg, {"secure-aggregation": secure}, args.owners, timeout)
                    entry[mode] = r
                    print(f"[{cond}] {mode}: {r['seconds_per_round']:.1f} s/round {r['seconds_each_round']}, "
                          f"failed or missing per round {r['failed_or_missing_owners_per_round']}, "
                          f"run {r['run_seconds']:.0f} s", file=sys.stderr, flush=True)
                    if not r["completed"]:
                        raise RuntimeError(f"[{cond}] {mode} training did not complete: {r}")
                before = [served_by(n) for n in nodes]
                preds = []
                for i in predictors:
                    p = predict(c, i, names[i], owner_cfgs[names[i]], X_pub[slices[i]], y_pub[slices[i]], work, cond)
                    got = np.asarray(p.pop("predictions"))
                    p["mismatches_vs_simulated"] = int((got != expected[i]).sum())
                    p["agreement_with_clear_model"] = float(np.mean(got == clear[i]))
                    p["owner"] = names[i]
                    preds.append(p)
                after = [served_by(n) for n in nodes]
                lat = [p["summary"]["latency_per_row_s"] for p in preds]
                rpc = [p["summary"]["seconds"]["rpc"] / p["summary"]["rows"] for p in preds]
                entry["predict"] = {
                    "owners": len(preds), "rows_per_owner": args.rows,
                    "latency_ms_per_row": 1000 * statistics.median(lat),
                    "latency_ms_per_row_each_owner": [1000 * x for x in lat],
                    "round_trips_ms_per_row": 1000 * statistics.median(rpc),
                    "server_ms_per_row": 1000 * statistics.median(p["summary"]["seconds"]["server"]
                                                                  / p["summary"]["rows"] for p in preds),
                    # what crosses the link per row: the encrypted result (every class score) dwarfs the row
                    "ciphertext_bytes_per_row": preds[0]["summary"]["bytes"]["ciphertexts"] / args.rows,
                    "result_bytes_per_row": preds[0]["summary"]["bytes"]["results"] / args.rows,
                    "process_seconds_median": statistics.median(p["process_seconds"] for p in preds),
                    "predict_calls_per_node": [a - b for a, b in zip(after, before, strict=True)],
                    "mismatches_vs_simulated": sum(p["mismatches_vs_simulated"] for p in preds),
                    "agreement_with_clear_model": float(np.mean([p["agreement_with_clear_model"] for p in preds])),
                    "runs": preds,
                }
                print(f"[{cond}] predict: {entry['predict']['latency_ms_per_row']:.1f} ms/row, "
                      f"calls per node {entry['predict']['predict_calls_per_node']}, "
                      f"mismatches {entry['predict']['mismatches_vs_simulated']}", file=sys.stderr, flush=True)
                if entry["predict"]["mismatches_vs_simulated"]:
                    raise RuntimeError(f"[{cond}] decrypted predictions differ from the simulation: {preds}")
                counts = wire.counts()
                entry["wire_counts"] = counts | {"dropped_share": counts["dropped"] / max(1, counts["packets"])}
                write(args, result)
            result["setup"] = {
                "owners": args.owners, "rows_per_owner": [o["rows"] for o in summary["owners"]],
                "rounds": args.rounds, "min_nodes": min_nodes, "round_timeout_s": args.round_timeout,
                "model": "digits LogisticRegression, FedAvg (aggregation auto), plain and SecAgg+ "
                         "(num_shares 0: every owner of the round)",
                "fhe": {"model_id": MODEL_ID, "n_bits": bundle.meta["n_bits"],
                        "compiled_from": "the warm-up run's model (1 round, no link emulation)"},
                "inference": "2 x fedfhe-inference serve on the host, one PostgreSQL 15 key registry over TLS; "
                             "owners: inference.address + more_addresses (gRPC round_robin), server_name localhost",
                "predict": f"{len(predictors)} owners one after the other, {args.rows} public-test rows each "
                           f"(batches of {BATCH}), `fedfhe-owner predict` in the owner's namespace; their keys "
                           "generated and uploaded before the first condition (3 batches each, no link emulation)",
            }
            for n in nodes:
                n.stop()
            nodes.clear()
    finally:
        for n in nodes:
            n.stop()
        if pg is not None:
            pg.stop()
        listener.close()
        wire.stop()
        cleanup()
    return result


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    """Each condition's figures over the ``none`` condition's."""
    base = result["conditions"].get("none")
    out: dict[str, Any] = {}
    if not base:
        return out
    for cond, e in result["conditions"].items():
        if cond == "none":
            continue
        row: dict[str, Any] = {}
        for mode in ("plain", "secagg"):
            if mode in e and mode in base:
                row[f"{mode}_seconds_per_round_over_none"] = (e[mode]["seconds_per_round"]
                                                              / base[mode]["seconds_per_round"])
                row[f"{mode}_run_seconds_over_none"] = e[mode]["run_seconds"] / base[mode]["run_seconds"]
                row[f"{mode}_failed_or_missing_owners_per_round"] = e[mode]["failed_or_missing_owners_per_round"]
        if "predict" in e and "predict" in base:
            row["predict_latency_per_row_over_none"] = (e["predict"]["latency_ms_per_row"]
                                                        / base["predict"]["latency_ms_per_row"])
        out[cond] = row
    return out


def write(args: argparse.Namespace, result: dict[str, Any]) -> None:
    import concrete.ml

    doc = {
        "over_none": ratios(result),
        **result,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "concrete_ml": concrete.ml.__version__, "platform": platform.platform(),
                    "load_average_1min_end": os.getloadavg()[0],
                    "shared": "2 cores shared with other helpers' tests and benchmarks; the conditions run back to "
                              "back on one federation, so the ratios are the figures to trust"},
        "link": "userspace TUN wire (the kernel has no netem): half the round trip each way, per-direction loss "
                "1 - sqrt(1 - loss); the none condition crosses the same wire without delay or loss",
        "command": "python bench/wan.py" + "".join(
            f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if k not in ("out", "wire") and v != DEFAULTS.get(k)),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": time.perf_counter() - STARTED,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


STARTED = time.perf_counter()
DEFAULTS: dict[str, Any] = {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--owners", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--predict-owners", type=int, default=4, help="owners that predict, one after the other")
    ap.add_argument("--rows", type=int, default=64, help="rows each predicting owner sends per condition")
    ap.add_argument("--round-timeout", type=float, default=120.0, help="training.round_timeout_s")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "wan.json")
    ap.add_argument("--wire", type=int, help=argparse.SUPPRESS)  # internal: the link emulator process
    args = ap.parse_args(argv)
    if args.wire is not None:
        return wire_main(args.wire)
    if os.geteuid() != 0:
        print("cannot run: needs root (network namespaces, TUN devices, PostgreSQL)", file=sys.stderr)
        return 2
    DEFAULTS.update({a.dest: a.default for a in ap._actions})
    result = run(args)
    write(args, result)
    for cond, row in ratios(result).items():
        print(f"{cond}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    print(f"{time.perf_counter() - STARTED:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    from fedfhe_common.runtime.exit_status import exit_with

    exit_with(main)
