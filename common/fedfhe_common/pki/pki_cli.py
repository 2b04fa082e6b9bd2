"""fedfhe-pki: create the CA, issue certificates and SuperNode keys, make the release signing key.

Keys are made where they are used: on a host, `request` makes its key and a certificate request
(and `supernode-key` its SuperNode key pair); only the request and the .pub travel. Beside the CA,
`sign` shows and checks a request and writes the certificate; `renew` re-issues one before it
ends. ca.key and release.key may be encrypted: a passphrase from --passphrase-file, the prompt
(--prompt-passphrase) or $FEDFHE_PKI_PASSPHRASE (release.key: $FEDFHE_RELEASE_PASSPHRASE,
the variable compile and train read).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedfhe_common.pki.ca import (
    CRL_DAYS,
    LEAF_DAYS,
    RENEW_WITHIN_DAYS,
    ROLES,
    SERVER_ROLES,
    init_ca,
    issue,
    revoke,
    supernode_keypair,
    write_crl,
)
from fedfhe_common.pki.pki_inventory import inventory, render
from fedfhe_common.pki.pki_passphrase import PKI_ENV, RELEASE_ENV, resolve
from fedfhe_common.pki.pki_request import check_pair, describe, make_request, renew, sign_request
from fedfhe_common.pki.release import make_release_key
from fedfhe_common.runtime.console import add_examples, run
from fedfhe_common.runtime.errors import PKIError
from fedfhe_common.runtime.output import add_format, print_json, wants_json

if TYPE_CHECKING:
    from fedfhe_common.pki.pki_request import Summary


def _note(text: str) -> None:
    print(f"fedfhe-pki: {text}", file=sys.stderr)


def _dir(args: argparse.Namespace, option: str = "--dir") -> Path:
    """The PKI directory: --dir (or, where the command has it, --out)."""
    found = getattr(args, "out", None) or args.dir
    if found is None:
        raise PKIError(f"{args.cmd}: give the directory with {option}")
    return found


def _passphrase(args: argparse.Namespace, *, new: bool = False) -> bytes | None:
    """The passphrase of the key this command opens (or, ``new``, makes)."""
    # release.key never falls back to the CA's variable: a CA passphrase exported to sign would
    # otherwise encrypt release.key too, and then have to travel to the coordinator.
    env = (RELEASE_ENV,) if args.cmd == "release-key" else (PKI_ENV,)
    what = "release.key" if args.cmd == "release-key" else "ca.key"
    return resolve(args.passphrase_file, args.prompt_passphrase, env, what=what, confirm=new)


def _list(args: argparse.Namespace) -> int:
    inv = inventory(_dir(args))
    if wants_json(args):
        print_json(inv)
    else:
        print("\n".join(render(inv)))
    return 1 if inv["problems"] else 0


def _report(args: argparse.Namespace, doc: dict, lines: list[str]) -> None:
    if wants_json(args):
        print_json(doc)
    else:
        print("\n".join(lines), flush=True)


def _request(args: argparse.Namespace) -> int:
    req = make_request(_dir(args, "--out"), args.role, args.name, args.san, new_key=args.new_key,
                       file_name=args.file_name or "")
    key_note = "new, 0600" if req.new_key else "kept"
    _report(args, {"key": str(req.key), "new_key": req.new_key, "csr": str(req.csr), **req.summary.as_dict()},
            [*req.summary.lines(), f"key: {req.key} ({key_note}; it stays on this host)",
             f"send {req.csr} to the CA; tell it the key SHA256 above by another channel"])
    return 0


def _sign(args: argparse.Namespace) -> int:
    def review(summary: Summary) -> None:
        if not wants_json(args):
            print("\n".join(summary.lines()), flush=True)

    signed = sign_request(_dir(args), args.request, args.role, sans=args.san, days=args.days, force=args.force,
                          passphrase=_passphrase(args), review=review, name=args.name)
    for note in signed.notes:
        _note(note)
    _report(args, {"certificate": str(signed.crt), **signed.summary.as_dict(), "notes": signed.notes},
            [f"signed: {signed.crt} (until {signed.summary.extra['not_after']})"])
    return 0


def _renew(args: argparse.Namespace) -> int:
    done = renew(_dir(args), args.name, days=args.days, new_key=args.new_key, csr_path=args.csr,
                 within_days=args.within, passphrase=_passphrase(args))
    doc = {"certificate": str(done.crt), "renewed": done.renewed, "same_key": done.same_key,
           "old_serial": f"{done.old_serial:x}", **done.summary.as_dict()}
    if not done.renewed:
        _report(args, {**doc, "reason": done.reason}, [f"{done.crt}: {done.reason}"])
    else:
        key = "same key" if done.same_key else "new key; the old certificate is revoked (superseded)"
        _report(args, doc, [f"renewed: {done.crt} (serial {done.summary.extra['serial']}, until "
                            f"{done.summary.extra['not_after']}, {key})"])
    return 0


def _show(args: argparse.Namespace) -> int:
    summary = describe(args.file)
    problems = check_pair(args.file, args.key, args.ca) if (args.key or args.ca) else []
    _report(args, {**summary.as_dict(), "problems": problems},
            summary.lines() + [f"problem: {p}" for p in problems])
    return 1 if problems else 0


def _command(args: argparse.Namespace) -> int | None:
    if args.cmd == "init":
        new = not (_dir(args) / "ca.key").exists()
        passphrase = _passphrase(args, new=new)
        if passphrase is None and new:
            _note(f"ca.key is written unencrypted: give a passphrase (--passphrase-file, {PKI_ENV}, "
                  "--prompt-passphrase) to keep it encrypted at rest")
        print(init_ca(_dir(args), exist_ok=args.exist_ok, passphrase=passphrase))
    elif args.cmd == "server":
        print(*issue(_dir(args), args.name, server_hosts=args.host, force=args.force, days=args.days,
                     passphrase=_passphrase(args)))
    elif args.cmd == "client":
        print(*issue(_dir(args), args.name, client=True, force=args.force, days=args.days,
                     passphrase=_passphrase(args)))
    elif args.cmd == "revoke":
        print(revoke(_dir(args), args.name, reason=args.reason, passphrase=_passphrase(args)))
    elif args.cmd == "crl":
        print(write_crl(_dir(args), days=args.days, passphrase=_passphrase(args)))
    elif args.cmd == "list":
        return _list(args)
    elif args.cmd == "release-key":
        exists = (_dir(args) / "release.key").exists() and not args.force
        passphrase = _passphrase(args, new=not exists)
        print(*make_release_key(_dir(args), force=args.force, passphrase=passphrase,
                                hint=f"--passphrase-file, --prompt-passphrase or {RELEASE_ENV}"))
    elif args.cmd == "request":
        return _request(args)
    elif args.cmd == "sign":
        return _sign(args)
    elif args.cmd == "renew":
        return _renew(args)
    elif args.cmd == "show":
        return _show(args)
    else:
        print(*supernode_keypair(_dir(args, "--out"), args.name, force=args.force))
    return None


def _add_passphrase(p: argparse.ArgumentParser, key: str = "ca.key") -> None:
    env = f"${RELEASE_ENV} or ${PKI_ENV}" if key == "release.key" else f"${PKI_ENV}"
    g = p.add_mutually_exclusive_group()
    g.add_argument("--passphrase-file", type=Path, metavar="FILE",
                   help=f"{key}'s passphrase: the first line of FILE (default: {env}, if set)")
    g.add_argument("--prompt-passphrase", action="store_true", help=f"ask for {key}'s passphrase on the terminal")


def _add_days(p: argparse.ArgumentParser) -> None:
    p.add_argument("--days", type=int, default=LEAF_DAYS,
                   help=f"the certificate's lifetime in days (default {LEAF_DAYS}; renew before it ends)")


# One command line per subcommand, ending its --help (tests/unit/test_cli_help.py parses each).
EXAMPLES = {
    "init": "--dir pki --prompt-passphrase",
    "server": "--dir pki h1-superlink --host superlink.example.org --host 10.0.0.1",
    "client": "--dir pki owner-1",
    "request": "client owner-1 --out /etc/fedfhe/tls",
    "sign": "--dir pki owner-1.csr --role client --name owner-1",
    "renew": "--dir pki owner-1 --within 30",
    "show": "owner-1.crt --key owner-1.key --ca ca.crt",
    "supernode-key": "owner-1 --out /etc/fedfhe/keys",
    "release-key": "--dir pki --prompt-passphrase",
    "revoke": "--dir pki owner-1 --reason keyCompromise",
    "list": "--dir pki",
    "crl": "--dir pki --days 30",
}
DIR_HELP = ("PKI directory (holds ca.crt, ca.key); every command but request, supernode-key (or their --out) "
            "and show needs it")


def _add_dir(p: argparse.ArgumentParser) -> None:
    """--dir after the subcommand too (``fedfhe-pki list --dir pki``), as every other fedfhe command takes options.

    SUPPRESS as default: a subcommand that was not given --dir keeps the one given before it.
    """
    p.add_argument("--dir", type=Path, default=argparse.SUPPRESS, help=DIR_HELP)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fedfhe-pki", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, help=DIR_HELP)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init", help="create a new CA")
    p.add_argument("--exist-ok", action="store_true", help="keep an existing CA instead of failing")
    _add_passphrase(p)
    p = sub.add_parser("server", help="issue a server certificate and its key here (SuperLink, inference node)")
    p.add_argument("name", help="the certificate's CN and file name (NAME.crt, NAME.key)")
    p.add_argument("--host", action="append", required=True, help="DNS name or IP for the SAN (repeat)")
    p.add_argument("--force", action="store_true", help="re-issue even if the certificate exists")
    _add_days(p)
    _add_passphrase(p)
    p = sub.add_parser("client", help="issue a data owner's client certificate and its key here (CN = owner id)")
    p.add_argument("name", help="the owner id: the certificate's CN and file name (NAME.crt, NAME.key)")
    p.add_argument("--force", action="store_true", help="re-issue even if the certificate exists")
    _add_days(p)
    _add_passphrase(p)
    p = sub.add_parser("request", help="on the host that will use it: make NAME.key (0600, stays here) and NAME.csr "
                                       "(send it to the CA)")
    p.add_argument("role", choices=ROLES,
                   help="superlink, inference or registry (a server certificate), client (a data owner)")
    p.add_argument("name", help="the certificate's CN and file name; for a client, the owner id")
    p.add_argument("--san", action="append", help=f"a host name or IP of a server role ({', '.join(SERVER_ROLES)}); "
                                                  "repeat; a client has none")
    p.add_argument("--out", type=Path, help="where NAME.key and NAME.csr go (default: --dir)")
    p.add_argument("--new-key", action="store_true", help="replace an existing NAME.key (else it is kept and reused)")
    p.add_argument("--file-name", metavar="STEM", help="write STEM.key and STEM.csr instead of NAME.* (the CN stays "
                                                        "NAME), e.g. superlink for the file a config names")
    add_format(p)
    p = sub.add_parser("sign", help="beside the CA: show and check a certificate request, write NAME.crt "
                                    "(NAME = its CN)")
    p.add_argument("request", type=Path, help="the NAME.csr a host made with 'request'")
    p.add_argument("--role", required=True, choices=ROLES, help="the role the CA approves for this request")
    p.add_argument("--name", help="the CN the request must carry (the host's own name; automation always sets it: "
                                  "a host must not get or replace another's certificate)")
    p.add_argument("--san", action="append", help="a host name or IP the CA approves for a server role (repeat); "
                                                  "the request may ask for these or fewer, nothing else")
    p.add_argument("--force", action="store_true",
                   help="replace an existing NAME.crt (revoked as superseded when the key differs)")
    _add_days(p)
    _add_passphrase(p)
    add_format(p)
    p = sub.add_parser("renew", help="re-issue NAME.crt for a new lifetime, same subject and SANs, same key unless "
                                     "--new-key or --csr")
    p.add_argument("name", help="the certificate to renew: NAME.crt in --dir")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--new-key", action="store_true",
                     help="make a new NAME.key here (only where NAME.key lives beside the CA); the old certificate "
                          "is revoked (superseded)")
    how.add_argument("--csr", type=Path, metavar="REQUEST",
                     help="certify the key of a fresh request from NAME's host (checked as sign checks it)")
    p.add_argument("--within", type=int, metavar="DAYS",
                   help=f"renew only if NAME.crt ends within DAYS days (e.g. {RENEW_WITHIN_DAYS}); else exit 0, "
                        "renewed: false")
    _add_days(p)
    _add_passphrase(p)
    add_format(p)
    p = sub.add_parser("show", help="show a certificate request or certificate as sign does (subject, SANs, usage, "
                                    "key SHA256); with --key/--ca check a received certificate")
    p.add_argument("file", type=Path, help="a certificate request (.csr) or certificate (.crt), PEM")
    p.add_argument("--key", type=Path, help="the certificate must be for this private key (exit 1 if not)")
    p.add_argument("--ca", type=Path, help="the certificate must be issued by this ca.crt (exit 1 if not)")
    add_format(p)
    p = sub.add_parser("supernode-key", help="create a SuperNode authentication key pair (no CA needed: run it on "
                                             "the owner's host, only NAME.supernode.pub travels)")
    p.add_argument("name", help="the owner id: writes NAME.supernode.key and NAME.supernode.pub")
    p.add_argument("--out", type=Path, help="where the key pair goes (default: --dir)")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    p = sub.add_parser("release-key", help="create the Ed25519 release key pair (release.key 0600, release.pub)")
    p.add_argument("--force", action="store_true", help="replace an existing release key (old releases stop verifying)")
    _add_passphrase(p, "release.key")
    p = sub.add_parser("revoke", help="revoke NAME's certificate (NAME.crt and its renewals) and re-sign crl.pem")
    p.add_argument("name", help="the certificate's CN (NAME.crt in --dir)")
    p.add_argument("--reason", default="unspecified",
                   help="CRL reason, e.g. keyCompromise, cessationOfOperation, superseded (default: unspecified)")
    _add_passphrase(p)
    p = sub.add_parser("list", help="certificates (role, names, expiry, revoked), SuperNode keys, release key, CRL")
    add_format(p)
    p = sub.add_parser("crl", help="re-sign crl.pem from revoked.txt (refresh its next update)")
    p.add_argument("--days", type=int, default=CRL_DAYS, help=f"days until the next update (default {CRL_DAYS})")
    _add_passphrase(p)
    for p in sub.choices.values():
        _add_dir(p)
    add_examples(ap, EXAMPLES)
    ap.set_defaults(fn=_command)
    return run(ap, argv, name_command=False)
