"""The shipped example configs work when copied as the operator guide says, not only validate.

docs/operator-guide.md section 1 makes every key on its own host (`fedfhe-pki request`,
`supernode-key`, `release-key`) and signs the requests on the CA machine; sections 2-6 copy
`coordinator.example.yaml`, `owner.example.yaml` and `inference.example.yaml` and run the
commands it lists. This test does exactly that, one folder per host, changing in each example
only what an operator must (addresses and ports, the absolute state paths, the app digest, the
owner's name and data file) and asserting that every other value is the example's own. The
federation then trains with the example's settings (three owners, SecAgg+ by default), compiles,
publishes and predicts encrypted rows: a key name, a file layout or a default that does not fit
the guide fails here.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedfhe_common.runtime.procs import free_port, port_open, venv_bin, wait_until
from fedfhe_testbed.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
OWNERS = ("owner-0", "owner-1", "owner-2")
HOST = "127.0.0.1"


def run(*argv: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    """A console script as an operator types it; its stderr is the failure message."""
    args = [venv_bin(str(argv[0])), *map(str, argv[1:])]
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)
    assert res.returncode == 0, f"{' '.join(args)} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def copied(example: Path, dest: Path, changes: dict[tuple[str, ...], Any]) -> Path:
    """The example with only ``changes`` (key path -> value) applied; every other value is the example's."""
    data = yaml.safe_load(example.read_text())
    keep = json.dumps(data, sort_keys=True)
    for path, value in changes.items():
        node = data
        for key in path[:-1]:
            node = node[key]
        assert path[-1] in node, f"{example.name} has no {'.'.join(path)}: the guide's change does not apply"
        node[path[-1]] = value
    assert json.loads(keep) != data or not changes
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


@pytest.fixture
def hosts(tmp_path: Path) -> dict[str, Path]:
    """Section 1: keys made on each host, requests signed on the CA machine, only public files back."""
    ca = tmp_path / "ca"
    ca.mkdir()
    (ca / "ca.pass").write_text("correct horse battery staple\n")
    run("fedfhe-pki", "--dir", ca / "pki", "init", "--passphrase-file", ca / "ca.pass")
    run("fedfhe-pki", "--dir", ca / "pki", "crl", "--passphrase-file", ca / "ca.pass")
    etc = {name: tmp_path / name / "etc" for name in ("coordinator", "inference", *OWNERS)}
    for d in etc.values():
        (d / "pki").mkdir(parents=True)
    requests = {"coordinator": ("superlink", "coord-superlink", "superlink"),
                "inference": ("inference", "coord-inference", "inference"),
                **{o: ("client", o, "client") for o in OWNERS}}
    for host, (role, name, stem) in requests.items():
        sans = ["--san", HOST] if role != "client" else []
        run("fedfhe-pki", "request", role, name, *sans, "--out", etc[host] / "pki", "--file-name", stem)
        shutil.copy(etc[host] / "pki" / f"{stem}.csr", ca / f"{name}.csr")  # only the request travels
        run("fedfhe-pki", "--dir", ca / "pki", "sign", ca / f"{name}.csr", "--role", role, "--name", name, *sans,
            "--passphrase-file", ca / "ca.pass")
        shutil.copy(ca / "pki" / f"{name}.crt", etc[host] / "pki" / f"{stem}.crt")
    for owner in OWNERS:
        run("fedfhe-pki", "supernode-key", owner, "--out", etc[owner] / "pki")
        shutil.copy(etc[owner] / "pki" / f"{owner}.supernode.pub", etc["coordinator"] / "pki")
    run("fedfhe-pki", "--dir", etc["coordinator"] / "pki", "release-key")
    for d in etc.values():
        for public in (ca / "pki" / "ca.crt", ca / "pki" / "crl.pem", etc["coordinator"] / "pki" / "release.pub"):
            if not (d / "pki" / public.name).exists():
                shutil.copy(public, d / "pki")
    for d in etc.values():  # no private key but the host's own ever existed outside it
        keys = sorted(p.name for p in (d / "pki").glob("*.key"))
        assert all(not k.startswith("ca") for k in keys), keys
    assert sorted(p.name for p in (ca / "pki").glob("*.key")) == ["ca.key"]
    return {"ca": ca, **etc}


def test_the_examples_copied_as_the_guide_says_train_compile_and_predict(hosts, tmp_path):
    var = tmp_path / "var"
    fleet, control, inference_port = free_port(), free_port(), free_port()
    data = tmp_path / "data"
    run("fedfhe-partition", "--dataset", "digits", "--owners", str(len(OWNERS)), "--file-format", "csv",
        "--out", data)
    coordinator = copied(ROOT / "server" / "coordinator.example.yaml", hosts["coordinator"] / "coordinator.yaml", {
        ("state_dir",): str(var / "coordinator"),
        ("metrics_address",): f"{HOST}:{free_port()}",
        ("superlink", "fleet_address"): f"{HOST}:{fleet}",
        ("superlink", "control_port"): control,
        ("superlink", "database"): str(var / "coordinator" / "superlink.db"),
        ("training", "output_dir"): str(var / "training"),
    })
    digest = run("fedfhe-coordinator", "app-hash").split()[0]
    owner_configs = []
    for owner in OWNERS:
        shutil.copy(data / f"{owner}.csv", hosts[owner] / "rows.csv")
        owner_configs.append(copied(ROOT / "client" / "owner.example.yaml", hosts[owner] / "owner.yaml", {
            ("owner_id",): owner,
            ("superlink",): f"{HOST}:{fleet}",
            ("auth_key",): f"pki/{owner}.supernode.key",
            ("data",): "rows.csv",
            ("state_dir",): str(var / owner),
            ("runtime_address",): f"{HOST}:{free_port()}",
            ("approved_flower_apps",): [digest],
            ("inference", "address"): f"{HOST}:{inference_port}",
        }))
    node = copied(ROOT / "inference" / "inference.example.yaml", hosts["inference"] / "inference.yaml", {
        ("listen",): f"{HOST}:{inference_port}",
        ("bundles_dir",): str(var / "inference" / "bundles"),
        ("keys_dir",): str(var / "inference" / "keys"),
        ("pid_file",): str(var / "inference.pid"),
        ("metrics_address",): f"{HOST}:{free_port()}",
    })
    run("fedfhe-coordinator", "check-config", "--config", coordinator)
    run("fedfhe-inference", "check-config", "--config", node)
    for cfg in owner_configs:
        run("fedfhe-owner", "check-config", "--config", cfg)
        run("fedfhe-owner", "check-data", "--config", cfg)

    with Cluster(tmp_path / "procs") as procs:
        superlink = procs.start("superlink", [venv_bin("fedfhe-coordinator"), "superlink", "--config",
                                             str(coordinator)])
        wait_until(lambda: superlink.popen.poll() is None and port_open(f"{HOST}:{fleet}")
                   and port_open(f"{HOST}:{control}"), 60, f"the SuperLink to listen (log {superlink.log})")
        run("fedfhe-coordinator", "register", "--config", coordinator)
        for owner, cfg in zip(OWNERS, owner_configs, strict=True):
            procs.start(f"supernode-{owner}", [venv_bin("fedfhe-owner"), "supernode", "--config", str(cfg)])
        trained = run("fedfhe-coordinator", "train", "--config", coordinator, timeout=600)
        artifact = var / "training" / "artifact"
        assert (artifact / "manifest.json").exists(), trained
        (report_file,) = var.rglob("report.json")
        report = json.loads(report_file.read_text())
        assert report["privacy"]["secure_aggregation"] is True, "the examples train under SecAgg+ by default"

        bundle = tmp_path / "bundle"
        run("fedfhe-coordinator", "compile", "--artifact", artifact, "--out", bundle, "--n-bits", "8",
            "--eval", data / "public-test.npz", "--release-key", hosts["coordinator"] / "pki" / "release.key")
        served = procs.start("inference", [venv_bin("fedfhe-inference"), "serve", "--config", str(node)])
        wait_until(lambda: served.popen.poll() is None and (var / "inference.pid").exists()
                   and port_open(f"{HOST}:{inference_port}"), 120, f"the inference node to listen (log {served.log})")
        run("fedfhe-inference", "publish", "--config", node, bundle, "--reload")

        rows = hosts["owner-0"] / "new-rows.csv"
        with (data / "owner-0.csv").open() as src, rows.open("w", newline="") as dst:
            reader = csv.reader(src)
            header = next(reader)
            label = header.index("label")
            out = csv.writer(dst)
            out.writerow([h for i, h in enumerate(header) if i != label])
            truth = []
            for row in list(reader)[:8]:
                truth.append(int(row[label]))
                out.writerow([v for i, v in enumerate(row) if i != label])
        predictions = hosts["owner-0"] / "predictions.json"
        run("fedfhe-owner", "predict", "--config", owner_configs[0], "--input", rows, "--out", predictions,
            cwd=hosts["owner-0"])
        predicted = [int(r["prediction"]) for r in json.loads(predictions.read_text())["predictions"]]
        assert len(predicted) == len(truth)
        assert sum(p == t for p, t in zip(predicted, truth, strict=True)) >= 6, (predicted, truth)
