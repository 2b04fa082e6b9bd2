"""The owner's approval of a Flower App: the digest, the check, the config key, the launcher's order of steps."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fedfhe_common.pki.app_approval import (
    CONFIG_KEY,
    ENV_APPROVED,
    MAX_FAB_BYTES,
    AppNotApproved,
    app_dir_digest,
    approved_from_env,
    check_fab,
    fab_digest,
)
from fedfhe_common.runtime.errors import ConfigError
from fedfhe_common.runtime.procs import venv_bin

APP_DIR = Path(__file__).resolve().parents[2] / "server" / "fedfhe_coordinator" / "flower_app"


@pytest.fixture(scope="module")
def fab() -> bytes:
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(APP_DIR)


def rezip(fab: bytes, compression: int = zipfile.ZIP_DEFLATED, extra: dict[str, bytes] | None = None) -> bytes:
    """The same members (plus ``extra``) in a new zip: other bytes, other zip hash."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(fab)) as src, zipfile.ZipFile(out, "w", compression) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        for name, data in (extra or {}).items():
            dst.writestr(name, data)
    return out.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_pinned_value_is_deterministic_and_is_what_the_commands_print(fab, tmp_path):
    from flwr.cli.build import build_fab_from_disk

    assert build_fab_from_disk(APP_DIR) == fab  # `flwr run` builds the same bytes every time
    digest = fab_digest(fab)
    assert app_dir_digest(APP_DIR) == digest
    server = subprocess.run([venv_bin("fedfhe-coordinator"), "app-hash"], capture_output=True, text=True, check=True)
    assert server.stdout.strip() == digest
    # An owner can check a FAB file built by `flwr build` (the folder needs a valid app name).
    app = tmp_path / "fedfhe"
    shutil.copytree(APP_DIR, app)
    subprocess.run([venv_bin("flwr"), "build", "--app", str(app)], cwd=tmp_path, capture_output=True, check=True)
    (built,) = tmp_path.glob("*.fab")
    client = subprocess.run([venv_bin("fedfhe-owner"), "app-hash", "--fab", str(built)],
                            capture_output=True, text=True, check=True)
    assert client.stdout.strip() == digest


def test_the_digest_covers_members_not_compression(fab):
    stored = rezip(fab, zipfile.ZIP_STORED)
    assert sha(stored) != sha(fab) and fab_digest(stored) == fab_digest(fab)
    # A member added without listing it in .info/CONTENT still changes the digest.
    shadowing = rezip(fab, extra={"fedfhe_owner/clientapp/client_app.py": b"open('/srv/rows.csv').read()\n"})
    assert fab_digest(shadowing) != fab_digest(fab)


def test_right_digest_is_approved(fab):
    assert check_fab(fab, sha(fab), {fab_digest(fab), "0" * 64}) == fab_digest(fab)


def test_wrong_digest_is_refused_naming_the_app(fab):
    with pytest.raises(AppNotApproved, match=f"Flower App {fab_digest(fab)} is not approved here"):
        check_fab(fab, sha(fab), {"0" * 64})
    hostile = rezip(fab, extra={"fedfhe_owner/clientapp/client_app.py": b"import os\n"})
    with pytest.raises(AppNotApproved, match="not approved"):
        check_fab(hostile, sha(hostile), {fab_digest(fab)})


def test_nothing_approved_refuses_everything_naming_the_key(fab):
    with pytest.raises(AppNotApproved, match=f"{CONFIG_KEY} in owner.yaml is empty"):
        check_fab(fab, sha(fab), frozenset())


def test_announced_hash_must_be_the_bytes_hash(fab):
    with pytest.raises(AppNotApproved, match="hashes to"):
        check_fab(fab, "f" * 64, {fab_digest(fab)})


@pytest.mark.parametrize("data, problem", [
    (b"not a zip at all", "not a readable zip"),
    (b"PK\x03\x04" + b"\x00" * 40, "not a readable zip"),
    (b"\x00" * (MAX_FAB_BYTES + 1), "over the"),
])
def test_unreadable_fabs_are_refused(data, problem):
    with pytest.raises(AppNotApproved, match=problem):
        check_fab(data, sha(data), {"0" * 64})


def test_duplicate_member_names_are_refused(fab):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("pyproject.toml", b"a")
        with pytest.warns(UserWarning):
            zf.writestr("pyproject.toml", b"b")
    with pytest.raises(AppNotApproved, match="same name"):
        fab_digest(out.getvalue())


def test_approved_from_env_ignores_malformed_entries():
    good = "a" * 64
    assert approved_from_env({ENV_APPROVED: f" {good.upper()} ,,nonsense,sha256:{'b' * 64}"}) == {good, "b" * 64}
    assert approved_from_env({}) == frozenset()


def owner_yaml(tmp_path: Path, **extra: object) -> Path:
    cfg = {"owner_id": "owner-0", "superlink": "127.0.0.1:9092", "root_certificates": "ca.crt",
           "auth_key": "k", "data": "rows.csv", "state_dir": "state", **extra}
    path = tmp_path / "owner.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_owner_yaml_key_is_validated(tmp_path):
    from fedfhe_owner import config as owner_config

    assert owner_config.load(owner_yaml(tmp_path)).approved_flower_apps == []
    cfg = owner_config.load(owner_yaml(tmp_path, approved_flower_apps=["A" * 64], release_public_key="release.pub"))
    assert cfg.approved_flower_apps == ["a" * 64] and cfg.release_public_key == tmp_path / "release.pub"
    with pytest.raises(ConfigError, match=r"owner\.yaml: approved_flower_apps\[1\]: expected a 64-hex-digit"):
        owner_config.load(owner_yaml(tmp_path, approved_flower_apps=["a" * 64, "3915f5e7"]))
    with pytest.raises(ConfigError, match="approved_flower_apps: expected a list"):
        owner_config.load(owner_yaml(tmp_path, approved_flower_apps="a" * 64))


def test_supernode_finds_fedfhe_launcher_first_on_path(tmp_path):
    from fedfhe_owner import config as owner_config
    from fedfhe_owner.supernode.launch import fresh_tmp_dir, supernode_env, write_clientapp_shim

    cfg = owner_config.load(owner_yaml(tmp_path, approved_flower_apps=["a" * 64]))
    env = supernode_env(cfg, write_clientapp_shim(cfg), base={"PATH": os.environ["PATH"]})
    found = shutil.which("flwr-clientapp", path=env["PATH"])
    assert found == str(tmp_path / "state" / "flower-bin" / "flwr-clientapp")
    assert env[ENV_APPROVED] == "a" * 64 and env["FEDFHE_OWNER_ID"] == "owner-0"
    # ClientApps unpack the app under the owner's own TMPDIR, which each SuperNode start empties, so the
    # directories of ClientApps killed mid-message (no cleanup on SIGKILL) do not pile up.
    assert env["TMPDIR"] == str((tmp_path / "state" / "tmp").resolve())
    stale = tmp_path / "state" / "tmp" / "fedfhe-ownerapp-killed"
    stale.mkdir(parents=True)
    assert fresh_tmp_dir(cfg) == Path(env["TMPDIR"]) and not stale.exists()
    assert (Path(env["TMPDIR"]).stat().st_mode & 0o777) == 0o700
    res = subprocess.run([found, "--help"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert res.returncode == 0 and "fedfhe: run an approved Flower ClientApp" in res.stdout
    # Any other app command the SuperExec could start here (an `agentapp` FAB makes it start flwr-agentapp,
    # which would unpack and import the FAB unchecked) is a stub that refuses.
    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND

    for command in set(TASK_TYPE_TO_COMMAND.values()) - {"flwr-clientapp"}:
        stub = shutil.which(command, path=env["PATH"])
        assert stub == str(tmp_path / "state" / "flower-bin" / command)
        res = subprocess.run([stub, "--runtime-api-address", "127.0.0.1:1", "--token", "t"], capture_output=True,
                             text=True, env=env, timeout=60, check=False)
        assert res.returncode != 0 and f"refused to start {command}" in res.stderr


class Launch:
    """run_task with Flower's Runtime API replaced by recorders: what happens, in which order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fab: bytes) -> None:
        from flwr.app import Context, Message, RecordDict
        from flwr.supercore.task_identity import TaskIdentity

        from fedfhe_owner.clientapp import clientapp_launcher as launcher

        for name, value in (("_run_id", 5), ("_node_id", 1), ("_task_id", 9)):
            monkeypatch.setattr(TaskIdentity, name, value)
        self.steps: list[str] = []
        self.pushed: list = []
        msg = Message(content=RecordDict(), dst_node_id=1, message_type="train")
        msg.metadata.__dict__["_message_id"] = msg.object_id
        context = Context(run_id=5, node_id=1, node_config={}, state=RecordDict(), run_config={})
        run = SimpleNamespace(fab_id="fedfhe/fedfhe", fab_version="0.1.0")
        task = (msg, context, run, SimpleNamespace(content=fab, hash_str=sha(fab)))
        self.reply = Message(content=RecordDict(), reply_to=msg)
        client = SimpleNamespace(close=lambda: None)
        heartbeat = SimpleNamespace(start=lambda: None, stop=lambda: None, is_running=False)

        def step(name: str, result: object = None):
            return lambda *a, **k: self.steps.append(name) or result

        monkeypatch.setattr(launcher.RuntimeHttpClient, "from_server_address", step("connect", client))
        monkeypatch.setattr(launcher, "HeartbeatSender", step("heartbeat", heartbeat))
        monkeypatch.setattr(launcher, "register_signal_handlers", step("signals"))
        monkeypatch.setattr(launcher, "pull_task_input", step("pull", task))
        monkeypatch.setattr(launcher, "install_from_fab", step("install", Path("/nonexistent")))
        app = step("run", self.reply)
        monkeypatch.setattr(launcher, "get_load_client_app_fn", step("load", lambda *a: app))
        monkeypatch.setattr(launcher, "push_message", lambda c, m, ctx: self.pushed.append(m))
        monkeypatch.setattr(launcher, "push_task_output", lambda **k: self.steps.append(f"status {k['sub_status']}"))

        def fake_exit(code: int, **_: object) -> None:
            self.steps.append(f"exit {code}")
            raise SystemExit(code)

        monkeypatch.setattr(launcher, "flwr_exit", fake_exit)
        self.launcher = launcher

    def __call__(self, approved: frozenset[str]) -> None:
        with pytest.raises(SystemExit):
            self.launcher.run_task("127.0.0.1:9094", "t", True, None, None, approved, "owner-7")


def test_launcher_refuses_before_unpacking_and_replies_with_the_reason(monkeypatch, fab):
    from flwr.common.constant import ErrorCode

    launch = Launch(monkeypatch, fab)
    launch(frozenset({"0" * 64}))
    assert "install" not in launch.steps and "load" not in launch.steps and "run" not in launch.steps
    (reply,) = launch.pushed
    assert reply.has_error() and reply.error.code == ErrorCode.INVALID_FAB
    expected = f"owner-7 refused the Flower App: Flower App {fab_digest(fab)} is not approved"
    assert reply.error.reason.startswith(expected), reply.error.reason


def test_launcher_runs_an_approved_app_after_the_check(monkeypatch, fab):
    launch = Launch(monkeypatch, fab)
    launch(frozenset({fab_digest(fab)}))
    assert launch.steps[launch.steps.index("pull"):] == ["pull", "install", "load", "run", "exit 0"]
    assert launch.pushed == [launch.reply]
