"""ca.key and release.key encrypted at rest (issue 26): a passphrase from a file, the environment or a prompt.

Without it every command that opens the key says which key and how to give it; a wrong one
is named as such; nothing is written by a command that could not open the key. Keys made
without a passphrase keep working as before, also with a passphrase variable set.
"""

from __future__ import annotations

import pytest
from cryptography import x509

from fedfhe_common.pki.ca import init_ca, issue, load_ca, revoke, write_crl
from fedfhe_common.pki.pki_cli import main as pki_main
from fedfhe_common.pki.release import load_signing_key, make_release_key
from fedfhe_common.runtime.errors import PKIError

PASS = "a long CA passphrase"
NEEDED = "ca.key is encrypted: give its passphrase with --passphrase-file or FEDFHE_PKI_PASSPHRASE"


@pytest.fixture(autouse=True)
def _no_passphrase_in_the_environment(monkeypatch):
    monkeypatch.delenv("FEDFHE_PKI_PASSPHRASE", raising=False)
    monkeypatch.delenv("FEDFHE_RELEASE_PASSPHRASE", raising=False)


@pytest.fixture()
def pwfile(tmp_path):
    path = tmp_path / "ca.pass"
    path.write_text(PASS + "\n")  # the newline is not part of it
    return path


@pytest.fixture()
def ca(tmp_path, pwfile):
    d = tmp_path / "ca"
    assert pki_main(["--dir", str(d), "init", "--passphrase-file", str(pwfile)]) == 0
    return d


def _files(d) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_init_encrypts_ca_key_and_every_command_needs_the_passphrase(tmp_path, ca, pwfile, capsys):
    assert (ca / "ca.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert pki_main(["request", "client", "owner-3", "--out", str(tmp_path / "h")]) == 0
    csr = str(tmp_path / "h" / "owner-3.csr")
    capsys.readouterr()
    before = _files(ca)
    for argv in (["sign", csr, "--role", "client"], ["client", "owner-0"], ["server", "s", "--host", "h"],
                 ["crl"]):
        assert pki_main(["--dir", str(ca), *argv]) == 1, argv
        assert NEEDED in capsys.readouterr().err, argv
    assert _files(ca) == before  # nothing written without the key
    assert pki_main(["--dir", str(ca), "sign", csr, "--role", "client", "--passphrase-file", str(pwfile)]) == 0
    cert = x509.load_pem_x509_certificate((ca / "owner-3.crt").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes()))
    # revoke too: revoked.txt is not touched before the CA key opens
    assert pki_main(["--dir", str(ca), "revoke", "owner-3"]) == 1
    assert NEEDED in capsys.readouterr().err and not (ca / "revoked.txt").exists()
    assert pki_main(["--dir", str(ca), "revoke", "owner-3", "--passphrase-file", str(pwfile)]) == 0
    assert (ca / "crl.pem").exists()


def test_a_wrong_passphrase_is_named_and_the_environment_gives_the_right_one(tmp_path, ca, pwfile, capsys,
                                                                            monkeypatch):
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("not the passphrase\n")
    before = _files(ca)
    assert pki_main(["--dir", str(ca), "client", "owner-0", "--passphrase-file", str(wrong)]) == 1
    assert "ca.key: wrong passphrase" in capsys.readouterr().err
    monkeypatch.setenv("FEDFHE_PKI_PASSPHRASE", "also wrong")
    assert pki_main(["--dir", str(ca), "crl"]) == 1
    assert "wrong passphrase" in capsys.readouterr().err
    assert _files(ca) == before
    monkeypatch.setenv("FEDFHE_PKI_PASSPHRASE", PASS)
    assert pki_main(["--dir", str(ca), "client", "owner-0"]) == 0
    assert pki_main(["--dir", str(ca), "crl"]) == 0
    # the library reads the same variable (tests, the demo cluster), or takes the passphrase itself
    issue(ca, "owner-1", client=True)
    monkeypatch.delenv("FEDFHE_PKI_PASSPHRASE")
    with pytest.raises(PKIError, match=NEEDED):
        load_ca(ca)
    revoke(ca, "owner-1", passphrase=PASS.encode())
    write_crl(ca, passphrase=PASS.encode())


def test_the_prompt_asks_twice_for_a_new_key_and_once_to_open_it(tmp_path, monkeypatch, capsys):
    answers = iter([PASS, PASS, PASS])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    d = tmp_path / "ca"
    assert pki_main(["--dir", str(d), "init", "--prompt-passphrase"]) == 0
    assert pki_main(["--dir", str(d), "client", "owner-0", "--prompt-passphrase"]) == 0
    typo = iter([PASS, PASS + "x"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(typo))
    assert pki_main(["--dir", str(tmp_path / "ca2"), "init", "--prompt-passphrase"]) == 1
    assert "the two passphrases differ; nothing written" in capsys.readouterr().err
    assert not (tmp_path / "ca2" / "ca.key").exists()


def test_init_refuses_a_short_passphrase_and_keeps_an_encrypted_ca(tmp_path, ca, pwfile, capsys):
    short = tmp_path / "short"
    short.write_text("abc\n")
    assert pki_main(["--dir", str(tmp_path / "new"), "init", "--passphrase-file", str(short)]) == 1
    assert "at least 8 characters" in capsys.readouterr().err and not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert pki_main(["--dir", str(tmp_path / "new"), "init", "--passphrase-file", str(empty)]) == 1
    assert "first line is empty" in capsys.readouterr().err
    before = _files(ca)
    assert pki_main(["--dir", str(ca), "init", "--exist-ok"]) == 0  # kept; nothing needs its key to keep it
    assert pki_main(["--dir", str(ca), "init", "--exist-ok", "--passphrase-file", str(pwfile)]) == 0
    assert pki_main(["--dir", str(ca), "init", "--exist-ok", "--passphrase-file", str(short)]) == 1
    assert "wrong passphrase" in capsys.readouterr().err
    assert _files(ca) == before


def test_unencrypted_keys_keep_working_with_a_passphrase_set(tmp_path, monkeypatch, capsys):
    d = tmp_path / "plain"
    assert pki_main(["--dir", str(d), "init"]) == 0
    assert "ca.key is written unencrypted" in capsys.readouterr().err
    make_release_key(d)
    monkeypatch.setenv("FEDFHE_PKI_PASSPHRASE", PASS)
    monkeypatch.setenv("FEDFHE_RELEASE_PASSPHRASE", PASS)
    assert pki_main(["--dir", str(d), "client", "owner-0"]) == 0
    init_ca(d, exist_ok=True)
    load_signing_key(d / "release.key")


def test_release_key_encrypted_at_rest_and_opened_by_the_coordinators_variable(tmp_path, pwfile, monkeypatch,
                                                                              capsys):
    d = tmp_path / "pki"
    assert pki_main(["--dir", str(d), "release-key", "--passphrase-file", str(pwfile)]) == 0
    assert (d / "release.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    # fedfhe-coordinator compile/train call load_signing_key(cfg.release_key): the variable opens it.
    with pytest.raises(PKIError, match="release.key is encrypted: give its passphrase with FEDFHE_RELEASE_PASSPHRASE"):
        load_signing_key(d / "release.key")
    monkeypatch.setenv("FEDFHE_RELEASE_PASSPHRASE", "not it at all")
    with pytest.raises(PKIError, match="wrong passphrase"):
        load_signing_key(d / "release.key")
    monkeypatch.setenv("FEDFHE_RELEASE_PASSPHRASE", PASS)
    key = load_signing_key(d / "release.key")
    key.sign(b"manifest")
    monkeypatch.delenv("FEDFHE_RELEASE_PASSPHRASE")
    # Kept when it exists (Ansible re-runs release-key): without the passphrase it is left alone ...
    before = _files(d)
    assert pki_main(["--dir", str(d), "release-key"]) == 0
    # ... with a wrong one it is refused, naming fedfhe-pki's ways to give it.
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong passphrase\n")
    assert pki_main(["--dir", str(d), "release-key", "--passphrase-file", str(wrong)]) == 1
    assert "release.key: wrong passphrase" in capsys.readouterr().err
    monkeypatch.setenv("FEDFHE_RELEASE_PASSPHRASE", PASS)
    assert pki_main(["--dir", str(d), "release-key"]) == 0
    assert _files(d) == before
    # The CA's variable never reaches release.key: a new release key made while it is exported stays
    # unencrypted rather than encrypted under the CA's passphrase (which would then travel with it).
    monkeypatch.delenv("FEDFHE_RELEASE_PASSPHRASE")
    monkeypatch.setenv("FEDFHE_PKI_PASSPHRASE", PASS)
    other = tmp_path / "other"
    assert pki_main(["--dir", str(other), "release-key"]) == 0
    monkeypatch.delenv("FEDFHE_PKI_PASSPHRASE")
    load_signing_key(other / "release.key")  # opens without any passphrase
