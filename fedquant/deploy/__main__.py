"""``python -m fedquant.deploy OUT_DIR [--nodes N] [--host NAME ...] [--days D] [--force]``: the
credentials of a test federation with TLS and SuperNode authentication (README, "Real devices"):
a local CA, the SuperLink's certificate and one key pair per SuperNode
(:mod:`fedquant.deploy.certificates`). Prints what it wrote and the flags each process takes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .certificates import Credentials, CredentialsError, write_credentials

DESCRIPTION = ("Write a local certificate authority, the SuperLink's TLS certificate (valid for localhost, "
               "127.0.0.1 and every --host) and one SuperNode authentication key pair per node, for a Flower "
               "Deployment Engine with TLS and --enable-supernode-auth. Private keys are written 0600.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedquant.deploy", description=DESCRIPTION)
    parser.add_argument("out_dir", type=Path, help="folder for the files (created if missing); keep it outside "
                                                  "the Flower app's folder")
    parser.add_argument("--nodes", type=int, default=2, help="SuperNode key pairs, supernode-0 .. supernode-(N-1) "
                                                             "(default: 2)")
    parser.add_argument("--host", action="append", default=[], metavar="NAME",
                        help="another DNS name or IP address SuperNodes reach the SuperLink by (repeat it; "
                             "localhost and 127.0.0.1 are always included)")
    parser.add_argument("--days", type=int, default=365, help="validity of the certificates (default: 365)")
    parser.add_argument("--force", action="store_true", help="replace credentials already in OUT_DIR")
    args = parser.parse_args(argv)
    try:
        creds = write_credentials(args.out_dir, nodes=args.nodes, hosts=args.host, days=args.days,
                                  overwrite=args.force)
    except CredentialsError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(summary(creds))


def summary(creds: Credentials) -> str:
    node = creds.nodes[0]
    lines = [f"wrote a test federation's credentials to {creds.ca_cert.parent} (private keys 0600):",
             f"  CA:        {creds.ca_cert.name} (its key {creds.ca_key.name} stays here, on no device)",
             f"  SuperLink: {creds.superlink_cert.name} + {creds.superlink_key.name}, valid for {', '.join(creds.hosts)}",
             f"  SuperNodes: {', '.join(n.private_key.stem for n in creds.nodes)} (.key private, .pub to register)",
             "flags:",
             f"  flower-superlink --ssl-ca-certfile {creds.ca_cert} --ssl-certfile {creds.superlink_cert} "
             f"--ssl-keyfile {creds.superlink_key} --enable-supernode-auth ...",
             f"  flwr supernode register {node.public_key} <connection>   (for every node; the connection's "
             f'root-certificates = "{creds.ca_cert}")',
             f"  flower-supernode --root-certificates {creds.ca_cert} --auth-supernode-private-key "
             f"{node.private_key} ..."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
