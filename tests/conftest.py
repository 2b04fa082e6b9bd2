"""Shared test fixtures and markers.

The tests are split along one axis: **what a test has to start**.

- ``tests/unit/``: nothing long-running; in-process code, at most one CLI run to completion.
- ``tests/loopback/``: real servers on loopback (an inference node, flower-superlink and
  flower-supernode, the demo), each started the way an operator starts it.
- ``tests/multihost/``: hosts of their own (network namespaces, sshd) deployed with Ansible; needs root.

Modules that hold helpers rather than tests live in ``tests/support/`` (on pytest's
``pythonpath``) and are never named ``test_*``. The fixtures below are the expensive
in-process ones every directory shares (a PKI, the digits split, compiled bundles);
the running node and federation are in ``tests/loopback/conftest.py``.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from inference_support import SESSION_OWNERS, Digits

from fedfhe_common.contracts.schema import DIGITS
from fedfhe_common.ml.data import save_csv
from fedfhe_common.pki.ca import init_ca, issue
from fedfhe_common.pki.release import load_signing_key, make_release_key
from fedfhe_common.runtime.exit_status import keep_exit_status
from fedfhe_testbed.datasets import load_builtin


def pytest_unconfigure(config: pytest.Config) -> None:
    keep_exit_status()  # once a test ran a circuit in this process, Concrete would end the session with 0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: real processes on loopback")
    config.addinivalue_line("markers", "multihost: network namespaces, sshd and ansible (needs root)")
    config.addinivalue_line("markers", "slow: takes more than a minute")


# The directory a test lives in says what it starts, so it says the marker: one home, no file can forget it
# (`-m "not integration and not multihost"` is then exactly tests/unit). `slow` (more than a minute, set up
# included) is per file, beside the figure that earned it.
DIRECTORY_MARKERS = {"loopback": "integration", "multihost": "multihost"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by its directory, then put the multihost deployment first. `make test` runs two
    pytest-xdist workers by file (--dist loadfile): one spends the deployment's quarter of an hour while the
    other runs the loopback and unit files, so the suite takes about the longer of the two instead of their sum."""
    tests = Path(__file__).resolve().parent
    for item in items:
        path = Path(item.path).resolve()
        where = path.relative_to(tests).parts if path.is_relative_to(tests) else ()
        if where and where[0] in DIRECTORY_MARKERS:
            item.add_marker(DIRECTORY_MARKERS[where[0]])
    items.sort(key=lambda item: 0 if "multihost" in item.path.parts else 1)  # stable: file order kept


@pytest.fixture
def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, sshd)")


@pytest.fixture
def needs_fashion_mnist() -> None:
    from fedfhe_testbed.datasets import FASHION_DIR

    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST missing at {FASHION_DIR}: apt-get install dataset-fashion-mnist")


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    work = tmp_path_factory.mktemp("digits")
    X, y, schema = load_builtin("digits")
    idx = np.random.default_rng(0).permutation(len(y))
    train, test = idx[:1400], idx[1400:]
    save_csv(work / "train.csv", X[train], y[train], schema)
    save_csv(work / "test.csv", X[test], y[test], schema)
    return Digits(X[train], y[train], X[test], y[test], work / "train.csv", work / "test.csv")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project CA with the node's and owners' certificates, plus an expired one."""
    d = tmp_path_factory.mktemp("pki")
    init_ca(d)
    issue(d, "inference", server_hosts=["127.0.0.1", "localhost"])
    for owner in SESSION_OWNERS:
        issue(d, owner, client=True)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    issue(d, "expired", client=True, not_before=past, days=1)
    make_release_key(d)
    return d



@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA: its certificates must not open the node."""
    d = tmp_path_factory.mktemp("foreign-pki")
    init_ca(d, common_name="someone else's CA")
    issue(d, "alice", client=True)  # even the same CN
    return d


@pytest.fixture(scope="session")
def lr_artifact(tmp_path_factory: pytest.TempPathFactory, digits: Digits, pki: Path) -> Path:
    """A signed LogisticRegression artifact from the local-training path (origin=local)."""
    from fedfhe_coordinator.fhe.local_training import train_local_file

    out = tmp_path_factory.mktemp("artifacts") / "lr"
    train_local_file(digits.train_csv, DIGITS, "LogisticRegression", out,
                     signing_key=load_signing_key(pki / "release.key"))
    return out


@pytest.fixture(scope="session")
def lr_bundles(tmp_path_factory: pytest.TempPathFactory, lr_artifact: Path, digits: Digits,
               pki: Path) -> dict[str, Any]:
    """digits-lr version 1 (n_bits chosen to stay within 0.5 points of clear) and 2 (2 more bits).

    Different n_bits make different circuits and ciphertexts.
    """
    from fedfhe_common.contracts.artifact import TrainingArtifact
    from fedfhe_coordinator.fhe.compile import compile_artifact
    from fedfhe_coordinator.fhe.nbits import choose_n_bits

    artifact = TrainingArtifact.load(lr_artifact)
    choice = choose_n_bits(artifact.to_estimator(), artifact.family, artifact.schema, digits.X_test, digits.y_test,
                           candidates=range(6, 13))
    assert choice.chosen is not None, choice.to_dict()
    out = tmp_path_factory.mktemp("bundles")
    key = load_signing_key(pki / "release.key")
    v1, m1 = compile_artifact(lr_artifact, out / "v1", n_bits=choice.chosen, model_id="digits-lr", version="1",
                              eval_set=(digits.X_test, digits.y_test), signing_key=key)
    v2, m2 = compile_artifact(lr_artifact, out / "v2", n_bits=choice.chosen + 2, model_id="digits-lr", version="2",
                              signing_key=key)
    return {"1": v1, "2": v2, "model_1": m1, "model_2": m2}
