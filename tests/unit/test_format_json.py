"""--format json on the commands that report a result: stdout is one JSON document a script can parse."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from fedfhe_common.pki import pki_cli
from fedfhe_common.pki.ca import init_ca, issue, revoke, supernode_keypair
from fedfhe_common.pki.release import make_release_key
from fedfhe_coordinator import cli as server_cli
from fedfhe_inference import cli as inference_cli


def test_pki_list_json_names_roles_expiry_and_revocation(tmp_path, capsys):
    init_ca(tmp_path)
    issue(tmp_path, "superlink", server_hosts=["127.0.0.1", "coordinator.example"])
    issue(tmp_path, "owner-0", client=True)
    issue(tmp_path, "owner-1", client=True)
    supernode_keypair(tmp_path, "owner-0")
    make_release_key(tmp_path)
    revoke(tmp_path, "owner-1", reason="keyCompromise")
    assert pki_cli.main(["--dir", str(tmp_path), "list", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    certs = {c["name"]: c for c in doc["certificates"]}
    assert {n: c["role"] for n, c in certs.items()} == {"ca": "ca", "superlink": "server", "owner-0": "client",
                                                       "owner-1": "client"}
    assert certs["superlink"]["sans"] == ["coordinator.example", "127.0.0.1"]
    assert certs["owner-1"]["revoked"] and not certs["owner-0"]["revoked"]
    assert 80 < certs["owner-0"]["days_left"] <= 90 and not certs["owner-0"]["expired"]
    assert doc["supernode_keys"] == [{"name": "owner-0", "public": True, "private": True}]
    assert doc["release_key"] == {"public": True, "private": True}
    assert doc["crl"]["revoked"] == 1 and doc["problems"] == []
    assert pki_cli.main(["--dir", str(tmp_path), "list"]) == 0  # the text form, one line per item
    text = capsys.readouterr().out
    assert "owner-1.crt: client CN=owner-1" in text and "REVOKED" in text
    (tmp_path / "junk.crt").write_text("not a certificate")
    assert pki_cli.main(["--dir", str(tmp_path), "list", "--format", "json"]) == 1  # a problem fails the listing
    assert json.loads(capsys.readouterr().out)["problems"][0].startswith("junk.crt: not a readable PEM")


def test_inference_list_json_reports_refused_bundles_and_exits_1(tmp_path, capsys):
    make_release_key(tmp_path)
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    args = ["list", "--bundles-dir", str(bundles), "--release-public-key", str(tmp_path / "release.pub"),
            "--format", "json"]
    assert inference_cli.main(args) == 0
    assert json.loads(capsys.readouterr().out) == {"bundles_dir": str(bundles), "bundles": [], "refused": 0}
    (bundles / "digits-lr" / "1").mkdir(parents=True)  # no manifest: the node would refuse it
    assert inference_cli.main(args) == 1
    doc = json.loads(capsys.readouterr().out)
    (row,) = doc["bundles"]
    assert doc["refused"] == 1 and row["model_id"] == "digits-lr" and row["version"] == "1" and not row["ok"]
    assert "manifest" in row["reason"]


def test_choose_n_bits_and_compile_json(lr_artifact, digits, pki, tmp_path, capsys):
    common = ["--artifact", str(lr_artifact), "--eval", str(digits.test_csv)]
    assert server_cli.main(["choose-n-bits", *common, "--min", "7", "--max", "8", "--format", "json"]) == 0
    choice = json.loads(capsys.readouterr().out)
    assert choice["metric"] == "accuracy" and choice["chosen_n_bits"] in (7, 8)
    assert [t["n_bits"] for t in choice["trials"]][0] == 7 and 0.8 < choice["clear_accuracy"] <= 1
    out = tmp_path / "bundle"
    assert server_cli.main(["compile", *common, "--out", str(out), "--n-bits", "7", "--model-id", "digits-lr",
                            "--model-version", "7", "--release-key", str(pki / "release.key"), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["bundle"] == str(out) and doc["model_id"] == "digits-lr" and doc["version"] == "7"
    assert doc["n_bits"] == 7 and len(doc["bundle_sha256"]) == 64
    assert doc["metrics"]["eval_rows"] == len(digits.y_test)


ROW = {"round": 1, "fit_nodes": 2, "missing": ["owner-2"], "seconds": 3.0, "server": {},
       "clients": {"loss": 0.5, "accuracy": 0.9},
       "failures": [{"owner": "owner-1", "reason": "bad.csv: expected 65 columns [got 2]"}]}


def test_round_table_goes_to_stdout_with_each_reason(capsys):
    from fedfhe_coordinator.train.progress import RoundTable

    with RoundTable(2) as table:  # the default console: stdout (train.yml prints the command's stdout)
        table.add(ROW)
    out, err = capsys.readouterr()
    assert err == ""
    line = out.splitlines()[0]
    assert line.startswith("round 1/2: clients 2 (1 failed)") and "owner-2: no reply" in line
    assert "owner-1: bad.csv: expected 65 columns [got 2]" in out.split("\n", 1)[1]  # the table, markup-free


def test_training_report_json_md_png(tmp_path):
    from fedfhe_common.contracts.schema import DIGITS
    from fedfhe_coordinator.train import report

    class Artifact:
        family, schema = "LogisticRegression", DIGITS
        metrics = {"rounds": 2, "per_round": [ROW, {**ROW, "round": 2, "failures": [], "missing": [],
                                                     "server": {"accuracy": 0.93, "loss": 0.3}}]}

    rep = report.training_report(Artifact(), run_id=18059386378129883615, status="finished:completed",
                                 owners=["owner-0", "owner-1", "owner-2"], seconds=12.3)
    paths = report.write_training_report(rep, tmp_path)
    doc = json.loads(paths["json"].read_text())
    assert doc["run_id"] == "18059386378129883615"  # 64-bit ids stay exact: strings, as flwr ls prints them
    assert doc["per_round"][0]["failures"] == [{"owner": "owner-1", "reason": "bad.csv: expected 65 columns [got 2]"},
                                               {"owner": "owner-2", "reason": "no reply"}]
    assert doc["accuracy"]["federated_clear"] == 0.93
    md = paths["md"].read_text()
    assert "Flower run 18059386378129883615" in md and "owner-2: no reply" in md
    if report.matplotlib_available():
        assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_joins_flower_status_with_fedfhe_records(tmp_path):
    from fedfhe_coordinator import runs

    runs.record(tmp_path, 11, event="submitted", model="LogisticRegression", rounds=3)
    runs.record(tmp_path, 11, event="interrupted", status="finished:stopped")
    runs.record(tmp_path, 12, event="submitted", model="Ridge", rounds=1)
    runs.record(tmp_path, 12, event="completed", status="finished:completed", artifact="/x/artifact")
    with open(tmp_path / runs.RUNS_FILE, "a") as f:
        f.write('{"run_id": 13, "ev')  # a torn last line is skipped
    flower = [{"run-id": "11", "status": "finished:stopped", "status-details": "N/A",
               "pending-at": "2026-01-01 10:00Z"},
              {"run-id": "12", "status": "finished:completed", "status-details": "N/A",
               "pending-at": "2026-01-01 11:00Z"},
              {"run-id": "99", "status": "running", "status-details": "N/A", "pending-at": "2026-01-01 09:00Z"}]
    rows = runs.joined(flower, runs.records(tmp_path))
    assert [r["run_id"] for r in rows] == ["12", "11", "99"]  # newest first
    assert rows[0]["fedfhe"]["artifact"] == "/x/artifact" and rows[1]["fedfhe"]["event"] == "interrupted"
    assert rows[2]["fedfhe"] is None
    out = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    out.print(runs.render(rows))
    text = out.export_text()
    assert "interrupted (Ctrl-C)" in text and "/x/artifact" in text and "not by fedfhe" in text


@pytest.mark.parametrize("argv", [["train", "--format", "yaml"], ["runs", "--format", "xml"]])
def test_format_takes_text_or_json_only(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        server_cli.main([*argv, "--config", str(tmp_path / "c.yaml")])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_an_owner_failing_fit_and_evaluate_counts_once(capsys):
    from fedfhe_coordinator.train.progress import RoundTable

    twice = {**ROW, "missing": [], "failures": [{"owner": "owner-bad", "phase": "fit", "reason": "bad.csv"},
                                                {"owner": "owner-bad", "phase": "evaluate", "reason": "bad.csv"}]}
    with RoundTable(1) as table:
        table.add(twice)
    assert capsys.readouterr().out.startswith("round 1/1: clients 2 (1 failed)")
