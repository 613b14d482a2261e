"""Helpers for mail operators: ``python -m ingot.plugins.smtp COMMAND``.

``hash-password``
    reads a password from standard input (one line) and prints its argon2id
    hash, for the users file.
``dkim-record KEY.pem --domain D [--selector S]``
    prints the DNS TXT record (zone file line) that publishes the public half
    of a DKIM signing key.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingot.plugins.smtp",
                                     description="mail appliance helpers")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("hash-password", help="argon2id hash of a password read from stdin")
    rec = sub.add_parser("dkim-record", help="the DNS TXT record of a DKIM key")
    rec.add_argument("key", help="PEM private key (RSA or Ed25519)")
    rec.add_argument("--domain", required=True)
    rec.add_argument("--selector", default="ingot")
    args = parser.parse_args(argv)
    if args.command == "hash-password":
        from .passwords import hash_password

        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            print("error: empty password", file=sys.stderr)
            return 2
        print(hash_password(password))
        return 0
    from .authcheck import dkim_public_txt

    try:
        with open(args.key, "rb") as fh:
            txt = dkim_public_txt(fh.read())
    except (OSError, ValueError) as exc:
        print(f"error: {args.key}: {exc}", file=sys.stderr)
        return 2
    chunks = " ".join(f'"{txt[i:i + 255]}"' for i in range(0, len(txt), 255))
    print(f"{args.selector}._domainkey.{args.domain.rstrip('.')}. IN TXT {chunks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
