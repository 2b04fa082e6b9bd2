"""fedfhe-pki: create the CA, issue certificates and SuperNode keys, make the release signing key."""

from __future__ import annotations

import argparse
from pathlib import Path

from .console import run
from .output import add_format, print_json, wants_json
from .pki import CRL_DAYS, init_ca, issue, revoke, supernode_keypair, write_crl
from .release import make_release_key


def _list(args: argparse.Namespace) -> int:
    from .pki_inventory import inventory, render

    inv = inventory(args.dir)
    if wants_json(args):
        print_json(inv)
    else:
        print("\n".join(render(inv)))
    return 1 if inv["problems"] else 0


def _command(args: argparse.Namespace) -> int | None:
    if args.cmd == "init":
        print(init_ca(args.dir, exist_ok=args.exist_ok))
    elif args.cmd == "server":
        print(*issue(args.dir, args.name, server_hosts=args.host, force=args.force))
    elif args.cmd == "client":
        print(*issue(args.dir, args.name, client=True, force=args.force))
    elif args.cmd == "revoke":
        print(revoke(args.dir, args.name, reason=args.reason))
    elif args.cmd == "crl":
        print(write_crl(args.dir, days=args.days))
    elif args.cmd == "list":
        return _list(args)
    elif args.cmd == "release-key":
        print(*make_release_key(args.dir, force=args.force))
    else:
        print(*supernode_keypair(args.dir, args.name, force=args.force))
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fedfhe-pki", description=__doc__)
    ap.add_argument("--dir", type=Path, required=True, help="PKI directory (holds ca.crt, ca.key)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init", help="create a new CA")
    p.add_argument("--exist-ok", action="store_true", help="keep an existing CA instead of failing")
    p = sub.add_parser("server", help="issue a server certificate (SuperLink, inference node)")
    p.add_argument("name")
    p.add_argument("--host", action="append", required=True, help="DNS name or IP for the SAN (repeat)")
    p.add_argument("--force", action="store_true", help="re-issue even if the certificate exists")
    p = sub.add_parser("client", help="issue a data owner's client certificate (CN = owner id)")
    p.add_argument("name")
    p.add_argument("--force", action="store_true")
    p = sub.add_parser("supernode-key", help="create a SuperNode authentication key pair")
    p.add_argument("name")
    p.add_argument("--force", action="store_true")
    p = sub.add_parser("release-key", help="create the Ed25519 release key pair (release.key 0600, release.pub)")
    p.add_argument("--force", action="store_true", help="replace an existing release key (old releases stop verifying)")
    p = sub.add_parser("revoke", help="revoke NAME's certificate (NAME.crt) and re-sign crl.pem")
    p.add_argument("name")
    p.add_argument("--reason", default="unspecified",
                   help="CRL reason, e.g. keyCompromise, cessationOfOperation, superseded (default: unspecified)")
    p = sub.add_parser("list", help="certificates (role, names, expiry, revoked), SuperNode keys, release key, CRL")
    add_format(p)
    p = sub.add_parser("crl", help="re-sign crl.pem from revoked.txt (refresh its next update)")
    p.add_argument("--days", type=int, default=CRL_DAYS, help=f"days until the next update (default {CRL_DAYS})")
    ap.set_defaults(fn=_command)
    return run(ap, argv, name_command=False)
