"""`mailgateway dkim keygen DOMAIN [--selector S] [--algorithm ed25519|rsa]`.

Writes the private key to <state_dir>/dkim/<domain>/<selector>.<algorithm>.key
(0600, directories 0700) and prints the DNS TXT record to publish. A running
gateway starts signing with a new key within [dkim] check_interval seconds
(sign/keys.py: KeyRing): publish the record at once, or make the key under
another state_dir and move it in once the record is out.
gateway/cli.py adds this sub-command with add_parser().
"""

from __future__ import annotations

import argparse
import re
import sys

from gateway import config
from gateway.sign import keys

# RFC 6376 3.1: a selector is dot-separated sub-domain labels; a domain likewise.
_LABELS = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `dkim` to the `mailgateway` command's sub-commands."""
    p = sub.add_parser("dkim", help="DKIM signing keys", description=__doc__.split("\n\n")[1])
    p.add_argument("action", choices=("keygen",))
    p.add_argument("domain", help="the domain whose mail is signed (the From domain)")
    p.add_argument("--selector", "-s", default="default", help="selector (default: default)")
    p.add_argument("--algorithm", "-a", choices=keys.ALGORITHMS, default="rsa",
                   help="rsa (2048 bits, what every receiver checks) or ed25519 (RFC 8463)")
    p.add_argument("--force", action="store_true", help="replace an existing key")
    p.add_argument("--config", "-c", default=argparse.SUPPRESS, help="configuration file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    domain = args.domain.lower().rstrip(".")
    for what, value in (("domain", domain), ("selector", args.selector)):
        if not _LABELS.match(value):
            print(f"mailgateway: {value!r} is not a valid {what}", file=sys.stderr)
            return 1
    path = keys.key_path(settings.dkim_dir, domain, args.selector, args.algorithm)
    if path.exists() and not args.force:
        print(f"mailgateway: {path} exists (--force replaces it; receivers then need the "
              "new record)", file=sys.stderr)
        return 1
    private, public = keys.generate(args.algorithm)
    keys.write_key(path, private)
    print(f"; private key: {path}", file=sys.stderr)
    record = keys.txt_record(args.algorithm, public)
    # RFC 1035 5.1 / RFC 7208 3.3: one TXT string holds at most 255 octets; RSA's is longer.
    chunks = " ".join(f'"{record[i:i + 255]}"' for i in range(0, len(record), 255))
    print(f"{args.selector}._domainkey.{domain}. IN TXT {chunks}")
    return 0
