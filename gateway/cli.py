"""`mailgateway`: the administrator's command line.

  mailgateway check-config [PATH]
  mailgateway user add|passwd ADDRESS [--password-stdin]
  mailgateway user del ADDRESS | user list
  mailgateway queue list [--json]

Every command takes --config PATH (default: the embedded configuration) and
works while the gateway runs: it only reads the spool, and writes the users
file atomically (the gateway re-reads it when it changes).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time

from gateway import config
from gateway.access import auth
from gateway.errors import ConfigError, MailError
from gateway.queue.spool import Spool


def _settings(args) -> config.Settings:
    return config.load(args.config)


def cmd_check_config(args) -> int:
    path = args.path or args.config
    try:
        settings = config.load(path)
    except ConfigError as e:
        for file, key, reason in e.problems:
            print(f"{file}: {key}: {reason}" if key else f"{file}: {reason}", file=sys.stderr)
        return 1
    print(f"{settings.source}: ok")
    return 0


def _read_password(args) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise SystemExit("mailgateway: passwords differ")
    return first


def cmd_user(args) -> int:
    settings = _settings(args)
    path = settings.users_file
    if args.action in ("add", "passwd"):
        try:
            local, domain = args.address.rsplit("@", 1)
        except ValueError:
            print(f"mailgateway: {args.address!r} is not user@domain", file=sys.stderr)
            return 1
        if domain.lower() not in settings.domains:
            print(f"mailgateway: {domain} is not a local domain (server.domains in "
                  f"{settings.source})", file=sys.stderr)
            return 1
        exists = args.address.lower() in auth.read_users(path)
        if args.action == "add" and exists:
            print(f"mailgateway: {args.address} exists; use `user passwd`", file=sys.stderr)
            return 1
        if args.action == "passwd" and not exists:
            print(f"mailgateway: no user {args.address}", file=sys.stderr)
            return 1
        password = _read_password(args)
        if not password:
            print("mailgateway: empty password refused", file=sys.stderr)
            return 1
        try:
            address = auth.set_password(path, args.address, password)
        except MailError as e:
            print(f"mailgateway: {e.text}", file=sys.stderr)
            return 1
        print(f"{address}: password set")
    elif args.action == "del":
        if not auth.remove_user(path, args.address):
            print(f"mailgateway: no user {args.address}", file=sys.stderr)
            return 1
        print(f"{args.address}: removed (its Maildir is kept)")
    else:
        for address in sorted(auth.read_users(path)):
            print(address)
    return 0


def cmd_queue(args) -> int:
    settings = _settings(args)
    if not settings.spool_dir.exists():
        entries = []
    else:
        spool = Spool(settings.spool_dir, reactor=None)
        entries = []
        for qid in spool.queue_ids():
            try:
                entries.append(spool.load(qid))
            except KeyError:
                continue
    if args.json:
        json.dump([e.to_json() for e in entries], sys.stdout, indent=1)
        print()
        return 0
    now = time.time()
    for e in entries:
        age = int(now - e.arrived)
        print(f"{e.queue_id}  {age:>6}s  {e.size:>9}  <{e.sender}>")
        for r in e.recipients:
            extra = f"  ({r.last_error})" if r.last_error else ""
            print(f"        {r.state.value:<8} <{r.address}>{extra}")
    if not entries:
        print("queue is empty")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mailgateway", description=__doc__.splitlines()[0])
    p.add_argument("--config", "-c", default=None, help="configuration file")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check-config", help="check a configuration, print every fault")
    c.add_argument("path", nargs="?")
    c.set_defaults(func=cmd_check_config)
    u = sub.add_parser("user", help="manage mailbox users")
    u.add_argument("action", choices=("add", "passwd", "del", "list"))
    u.add_argument("address", nargs="?")
    u.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    u.set_defaults(func=cmd_user)
    q = sub.add_parser("queue", help="inspect the queue")
    q.add_argument("action", choices=("list",))
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_queue)
    for s in (u, q):
        s.add_argument("--config", "-c", default=argparse.SUPPRESS, help="configuration file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "user" and args.action != "list" and not args.address:
        parser().error("user add/passwd/del need an ADDRESS")
    try:
        return args.func(args)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
