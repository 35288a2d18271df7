"""`mailgateway`: the administrator's command line.

  mailgateway check-config [PATH]
  mailgateway user add|passwd ADDRESS [--password-stdin] [--quota SIZE]
  mailgateway user del ADDRESS | user list | user quota ADDRESS [SIZE|default]
  mailgateway alias show ADDRESS...
  mailgateway queue list [--json] | show ID [--json]
  mailgateway queue flush | retry ID | hold ID | release ID | delete ID
  mailgateway list create|show|set|delete|members|add|remove|held|approve|reject ...
  mailgateway status [--json]
  mailgateway dkim keygen DOMAIN [--selector S] [--algorithm ed25519|rsa]
  mailgateway tlsfront --accept EP --connect EP --cert PEM --key PEM [...] | --config FILE

Every command takes --config PATH; without it the file is found as twistd
finds it ($MAILGATEWAY_CONFIG, /etc/mailgateway/mailgateway.toml, the embedded
default: config.locate), and `check-config` says which one it is. Each
works while the gateway runs: it only reads the spool, writes the users
file atomically (the gateway re-reads it when it changes), and hands queue
changes to the runner as request files (gateway/queue/control.py).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
import time

from gateway import aliasfile, config, privileges, startup, status
from gateway.access import auth
from gateway.errors import ConfigError, MailError, StartupError
from gateway.lists import cli as lists_cli
from gateway.queue import control
from gateway.queue.spool import Spool
from gateway.resolve.router import Router
from gateway.sign import cli as dkim_cli
from gateway.store import quota
from gateway.store.maildir import MaildirStore


class CommandError(Exception):
    """A fault the command reports in one line (no traceback), exit status 1."""


def _settings(args, create_state: bool = False) -> config.Settings:
    """The gateway's own configuration (config.locate), with its state_dir present.

    Only an explicitly chosen file may create state_dir (`user add` before the
    first start): the embedded default's "./var" is relative to wherever the
    command runs, and a new empty ./var there would hide the real one.
    """
    path, origin = config.locate(args.config)
    settings = config.load(path)
    who = _gateway_user(settings)
    if not settings.state_dir.is_dir() and create_state and origin != config.EMBEDDED:
        privileges.prepare_state_dir(settings.state_dir, who)
    _acting.enter_context(privileges.acting_as(who))
    if settings.state_dir.is_dir():
        return settings
    where = (f"the state_dir of {config.EMBEDDED}, relative to the current directory"
             if origin == config.EMBEDDED else f"server.state_dir in {settings.source}")
    raise CommandError(f"no state directory {settings.state_dir} ({where}); has the gateway "
                       f"run? Otherwise give --config or ${config.ENVIRONMENT_VARIABLE}")


# Run as root, a command acts as the gateway's user ([server] user, else the owner of
# state_dir) until main() returns, so what it writes is the gateway's (privileges.py).
_acting = contextlib.ExitStack()


def _gateway_user(settings: config.Settings) -> privileges.Identity | None:
    if os.geteuid() != 0:
        return None
    try:
        who = privileges.identity(settings.user, settings.group)
    except StartupError as e:
        raise CommandError(f"{settings.source}: {e}") from None
    who = who or privileges.owner_of(settings.state_dir)
    return None if who is None or who.uid == 0 else who


def cmd_check_config(args) -> int:
    path, origin = config.locate(args.path or args.config)
    try:
        settings = config.load(path)
    except ConfigError as e:
        print("\n".join(e.lines()), file=sys.stderr)
        return 1
    print(f"configuration: {settings.source} ({origin})")
    print(f"state_dir: {settings.state_dir}")
    problems = startup.check(settings)  # what twistd would refuse to start with
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    table, faults = aliasfile.load_table(settings)
    for fault in faults:
        print(fault, file=sys.stderr)
    if faults:
        return 1
    aliases = f", {len(table)} aliases in {settings.aliases.file}" if settings.aliases.file else ""
    print(f"{settings.source}: ok{aliases}")
    return 0


class _Users:
    """The users file as the router sees it (IUserDirectory.exists)."""

    def __init__(self, path):
        self.known = set(auth.read_users(path))

    def exists(self, address: str) -> bool:
        return address in self.known


def cmd_list(args) -> int:
    return lists_cli.run(args, _settings(args, create_state=True))


def cmd_alias(args) -> int:
    """Like `postalias -q` / `sendmail -bv`: what an address expands to, and each route."""
    settings = _settings(args)
    table, faults = aliasfile.load_table(settings)
    for fault in faults:
        print(fault, file=sys.stderr)
    a = settings.aliases
    router = Router(settings.domains, _Users(settings.users_file), aliases=table,
                    delimiter=a.recipient_delimiter, max_depth=a.max_depth, shell=a.shell,
                    reply=a.reply)
    status = 1 if faults else 0
    for address in args.address:
        try:
            routes = router.expand(address)
        except MailError as e:
            print(f"{address}: {e.code} {e.enhanced} {e.text}")
            status = 1
            continue
        print(f"{address}:")
        for route in routes:
            print(f"  {route.describe()}")
    return status


def _read_password(args) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise CommandError("no terminal to ask for the password: "
                           "give it on stdin with --password-stdin")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise SystemExit("mailgateway: passwords differ")
    return first


def _set_quota(settings: config.Settings, address: str, size: str) -> str:
    """Write address's own limit ("default": back to [mailbox] quota); returns a report."""
    limits = quota.read_limits(settings.quotas_file)
    if size == "default":
        limits.pop(address, None)
    else:
        try:
            limits[address] = config.parse_size(size)
        except ValueError as e:
            raise CommandError(f"quota {e}") from None
    quota.write_limits(settings.quotas_file, limits)
    limit = limits.get(address, settings.mailbox_quota)
    return f"{address}: quota {_size(limit)}" + ("" if address in limits else " (the default)")


def _size(n: int) -> str:
    return "unlimited" if not n else f"{n} bytes ({n / (1 << 20):.1f} MiB)"


def cmd_user_quota(args, settings: config.Settings) -> int:
    address = args.address.lower()
    if address not in auth.read_users(settings.users_file):
        print(f"mailgateway: no user {args.address}", file=sys.stderr)
        return 1
    if args.size is not None:
        print(_set_quota(settings, address, args.size))
        return 0
    limit = quota.Limits(settings.quotas_file, settings.mailbox_quota).limit(address)
    store = MaildirStore(settings.mail_dir)
    root = store.mailbox_path(address)
    used = quota.usage(root, limit) if (root / "cur").is_dir() else quota.Usage(0, 0, limit)
    print(f"{address}: {used.used} bytes in {used.count} messages; quota {_size(limit)}")
    return 0


def cmd_user(args) -> int:
    settings = _settings(args, create_state=args.action == "add")
    path = settings.users_file
    if args.action == "quota":
        return cmd_user_quota(args, settings)
    if args.size is not None:
        raise CommandError(f"unexpected argument {args.size!r} (a quota: --quota SIZE)")
    if args.quota is not None:
        try:
            config.parse_size(args.quota)  # refused before anything is written
        except ValueError as e:
            raise CommandError(f"--quota {e}") from None
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
        if args.quota is not None:
            print(_set_quota(settings, address, args.quota))
    elif args.action == "del":
        if not auth.remove_user(path, args.address):
            print(f"mailgateway: no user {args.address}", file=sys.stderr)
            return 1
        limits = quota.read_limits(settings.quotas_file)
        if limits.pop(args.address.lower(), None) is not None:  # a new user of that name
            quota.write_limits(settings.quotas_file, limits)  # starts from the default
        print(f"{args.address}: removed (its Maildir is kept)")
    else:
        for address in sorted(auth.read_users(path)):
            print(address)
    return 0


def cmd_queue(args) -> int:
    settings = _settings(args)
    if args.action in ("show", "retry", "hold", "release", "delete") and not args.id:
        print(f"mailgateway: queue {args.action} needs a queue ID", file=sys.stderr)
        return 2
    if args.action == "list":
        return _queue_list(settings, args.json)
    if args.action == "show":
        return _queue_show(settings, args.id, args.json)
    return _queue_request(settings, args.action, args.id)


def _spool(settings: config.Settings) -> Spool | None:
    return Spool(settings.spool_dir, reactor=None) if settings.spool_dir.exists() else None


def _entries(settings: config.Settings) -> list:
    spool = _spool(settings)
    entries = []
    for qid in spool.queue_ids() if spool else []:
        try:
            entries.append(spool.load(qid))
        except KeyError:
            continue  # delivered meanwhile
    return entries


def _when(t: float, now: float) -> str:
    if t <= now:
        return "now"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f" (in {int(t - now)}s)"


def _queue_list(settings: config.Settings, as_json: bool) -> int:
    """Like mailq: each entry, each recipient's state, next retry and last error."""
    entries = _entries(settings)
    if as_json:
        json.dump([e.to_json() for e in entries], sys.stdout, indent=1)
        print()
        return 0
    now = time.time()
    for e in entries:
        age = int(now - e.arrived)
        held = "  HELD" if e.held else ""
        print(f"{e.queue_id}  {age:>6}s  {e.size:>9}  <{e.sender}>{held}")
        for r in e.recipients:
            retry = f"  next {_when(r.next_attempt, now)}" if r.state.value == "pending" else ""
            extra = f"  ({r.last_error})" if r.last_error else ""
            print(f"        {r.state.value:<8} <{r.address}>{retry}{extra}")
    if not entries:
        print("queue is empty")
    return 0


def _queue_show(settings: config.Settings, queue_id: str, as_json: bool) -> int:
    """Like postcat -q: the envelope and the message's header section."""
    spool = _spool(settings)
    try:
        envelope = spool.load(queue_id) if spool else None
        with open(spool.message_path(queue_id), "rb") as f:
            head = f.read(256 * 1024)
    except (KeyError, OSError, AttributeError):
        envelope = None
    if envelope is None:
        print(f"mailgateway: no queue entry {queue_id}", file=sys.stderr)
        return 1
    if as_json:
        json.dump(envelope.to_json(), sys.stdout, indent=1)
        print()
        return 0
    now = time.time()
    print(f"queue id:   {envelope.queue_id}{'  (held)' if envelope.held else ''}")
    print(f"arrived:    {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(envelope.arrived))}")
    print(f"sender:     <{envelope.sender}>")
    print(f"client:     {envelope.client_address} ({envelope.helo}) {envelope.protocol}")
    print(f"size:       {envelope.size}")
    for r in envelope.recipients:
        print(f"recipient:  <{r.address}> {r.state.value}, {r.attempts} attempts"
              + (f", next {_when(r.next_attempt, now)}" if r.state.value == "pending" else "")
              + (f", dsn {r.dsn}" if r.dsn else ""))
        if r.last_error:
            print(f"            {r.remote_mta + ': ' if r.remote_mta else ''}{r.last_error}")
    end = head.find(b"\r\n\r\n")
    print()
    sys.stdout.write((head[:end + 2] if end >= 0 else head).decode("utf-8", "replace"))
    return 0


def _queue_request(settings: config.Settings, action: str, queue_id: str | None) -> int:
    """Hand the request to the runner (see gateway/queue/control.py) and wait for it."""
    if action != "flush":
        spool = _spool(settings)
        try:
            if spool is None:
                raise KeyError(queue_id)
            spool.load(queue_id)
        except KeyError:
            print(f"mailgateway: no queue entry {queue_id}", file=sys.stderr)
            return 1
    path = control.write_request(settings.spool_dir, action, queue_id or control.ALL)
    deadline = time.monotonic() + max(5.0, 5 * settings.queue.control_interval)
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # a CLI waiting for the daemon, not a test
    what = f"{queue_id}: {action}" if queue_id else action
    if path.exists():
        print(f"{what}: requested; the gateway has not taken it yet (busy with the entry, "
              "or not running: it applies at the next start)")
    else:
        print(f"{what}: done")
    return 0


def cmd_status(args) -> int:
    """A running gateway at a glance (gateway/status.py), or why it cannot be shown."""
    settings = _settings(args)
    if not settings.metrics_listen:
        raise CommandError(f"the status endpoint is off: set [metrics] listen in "
                           f"{settings.source} (`mailgateway queue list` works without it)")
    try:
        figures = status.fetch(settings)
    except (OSError, ValueError) as e:
        raise CommandError(f"the gateway does not answer at {settings.metrics_listen} "
                           f"([metrics] listen): {e}") from None
    if args.json:
        json.dump(figures, sys.stdout, indent=1)
        print()
    else:
        print(status.render(figures))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mailgateway", description=__doc__.splitlines()[0])
    p.add_argument("--config", "-c", default=None, help="configuration file")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check-config", help="check a configuration, print every fault")
    c.add_argument("path", nargs="?")
    c.set_defaults(func=cmd_check_config)
    u = sub.add_parser("user", help="manage mailbox users")
    u.add_argument("action", choices=("add", "passwd", "del", "list", "quota"))
    u.add_argument("address", nargs="?")
    u.add_argument("size", nargs="?", help="quota: the user's own limit (\"2G\", \"500M\", "
                   "bytes, 0 unlimited) or \"default\" ([mailbox] quota); none: show usage")
    u.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    u.add_argument("--quota", default=None, metavar="SIZE",
                   help="add/passwd: also set the user's own quota (as `user quota`)")
    u.set_defaults(func=cmd_user)
    a = sub.add_parser("alias", help="what addresses expand to (aliases, subaddresses)")
    a.add_argument("action", choices=("show",))
    a.add_argument("address", nargs="+")
    a.set_defaults(func=cmd_alias)
    q = sub.add_parser("queue", help="inspect and manage the queue (mailq, postsuper)")
    q.add_argument("action", choices=("list", "show", "flush", "retry", "hold", "release",
                                      "delete"))
    q.add_argument("id", nargs="?", help="queue ID (show, retry, hold, release, delete)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_queue)
    # `list ...`: gateway/lists/cli.py, with the configuration and user of the others.
    lists_cli.add_parser(sub).set_defaults(func=cmd_list)
    dkim_cli.add_parser(sub)  # `dkim keygen`: gateway/sign/cli.py
    st = sub.add_parser("status", help="a running gateway at a glance ([metrics] listen)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    t = sub.add_parser("tlsfront", help="run a TLS front alone, like stunnel")
    _add_tlsfront_arguments(t)
    t.add_argument("--config", "-c", default=argparse.SUPPRESS,
                   help="a file with [[tlsfront]] sections")
    t.set_defaults(func=cmd_tlsfront)
    for s in (u, q, a, st):
        s.add_argument("--config", "-c", default=argparse.SUPPRESS, help="configuration file")
    return p


def _add_tlsfront_arguments(p: argparse.ArgumentParser) -> None:
    from gateway.tlsfront import command

    command.add_arguments(p)


def cmd_tlsfront(args) -> int:
    """The TLS front on its own (gateway/tlsfront/command.py); runs the global reactor."""
    from twisted.internet import reactor

    from gateway.tlsfront import command

    return command.run(args, reactor)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "user" and args.action != "list" and not args.address:
        parser().error("user add/passwd/del need an ADDRESS")
    umask = os.umask(0o077)  # users file, state folders: private, like the gateway's
    try:
        return args.func(args)
    except ConfigError as e:
        print("\n".join(e.lines()), file=sys.stderr)
        return 1
    except CommandError as e:
        print(f"mailgateway: {e}", file=sys.stderr)
        return 1
    finally:
        _acting.close()
        os.umask(umask)


if __name__ == "__main__":
    sys.exit(main())
