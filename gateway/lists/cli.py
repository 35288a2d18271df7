"""`mailgateway list ...`: the administrator's commands for mailing lists.

  mailgateway list create ADDRESS --owner ADDR [--owner ADDR] [--policy P]
  mailgateway list show [ADDRESS] [--json]       (no ADDRESS: every list's address)
  mailgateway list set ADDRESS KEY=VALUE...      (owners/moderators: comma-separated)
  mailgateway list delete ADDRESS
  mailgateway list members ADDRESS [--json]      (all members, disabled ones marked)
  mailgateway list add|remove ADDRESS ADDR... | --file PATH|-   (one address a line)
  mailgateway list enable ADDRESS MEMBER         (after bounces disabled it)
  mailgateway list held ADDRESS [--json]
  mailgateway list approve|reject ID

gateway/cli.py adds this sub-command with add_parser(). It works while the
gateway runs: the store is SQLite (lists/store.py), made for two writers.
An approved post is not exploded here: it goes to the outbox
(<state_dir>/lists/outbox/, see lists/outbox.py), where the gateway picks it
up. A rejected post is dropped (the poster is not told; a moderator's
"reject" reply by mail tells them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from email.parser import BytesHeaderParser
from email.policy import default as default_policy

from gateway import config
from gateway.lists import outbox
from gateway.lists.store import POLICIES, SETTINGS, ListStore, normalize

ACTIONS = ("create", "show", "set", "delete", "members", "add", "remove", "enable", "held",
           "approve", "reject")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `list` to the `mailgateway` command's sub-commands (its func: run)."""
    p = sub.add_parser("list", help="manage mailing lists",
                       description=__doc__.split("\n\n")[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("args", nargs="*", help="the list's address, then what the action needs")
    p.add_argument("--owner", action="append", default=[], help="an owner (create)")
    p.add_argument("--policy", choices=POLICIES, default="members", help="(create)")
    p.add_argument("--file", help="addresses, one a line, '-' for stdin (add, remove)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--config", "-c", default=argparse.SUPPRESS, help="configuration file")
    p.set_defaults(func=run)
    return p


def _fail(text: str) -> int:
    print(f"mailgateway: {text}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace, settings: config.Settings | None = None) -> int:
    """One `list` action. settings: the gateway's, found and entered as the gateway's
    user by gateway/cli.py (loaded from args.config when not given)."""
    settings = settings or config.load(args.config)
    store = ListStore(settings.state_dir / "lists")
    try:
        return _ACTIONS[args.action](store, args)
    except KeyError as e:
        return _fail(str(e.args[0]) if e.args else "no such list")
    except ValueError as e:
        return _fail(str(e))
    finally:
        store.close()


def _need(args: argparse.Namespace, count: int, what: str) -> list[str]:
    if len(args.args) < count:
        raise ValueError(f"list {args.action} needs {what}")
    return args.args


def _dump(data: object) -> None:
    json.dump(data, sys.stdout, indent=1, ensure_ascii=False)
    print()


def _create(store: ListStore, args) -> int:
    [address, *_] = _need(args, 1, "the list's address")
    if not args.owner:
        raise ValueError("list create needs --owner ADDRESS")
    mlist = store.create(address, args.owner, args.policy)
    if args.json:
        _dump(mlist.public())
    else:
        print(f"{mlist.address}: created (policy {mlist.policy})")
    return 0


def _show(store: ListStore, args) -> int:
    if not args.args:
        names = store.names()
        if args.json:
            _dump(names)
        else:
            print("\n".join(names) if names else "no lists")
        return 0
    mlist = store.get(args.args[0])
    if mlist is None:
        raise KeyError(f"no list {args.args[0]}")
    if args.json:
        _dump(mlist.public())
        return 0
    for key, value in mlist.public().items():
        if isinstance(value, (list, tuple)):
            value = ", ".join(value)
        print(f"{key + ':':<18} {value}")
    members = store.member_records(mlist.address)
    enabled = sum(m.enabled for m in members)
    print(f"{'members:':<18} {len(members)} ({len(members) - enabled} disabled)")
    print(f"{'held posts:':<18} {len(store.held(mlist.address))}")
    return 0


def _set(store: ListStore, args) -> int:
    address, *pairs = _need(args, 2, "ADDRESS KEY=VALUE...")
    changes = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise ValueError(f"{pair!r} is not KEY=VALUE (keys: {', '.join(SETTINGS)})")
        changes[key.strip()] = value
    mlist = store.set(address, **changes)
    for key in changes:
        print(f"{mlist.address}: {key} = {getattr(mlist, key.strip())!r}")
    return 0


def _delete(store: ListStore, args) -> int:
    [address, *_] = _need(args, 1, "the list's address")
    store.delete(address)
    print(f"{address}: deleted with its members and held posts")
    return 0


def _members(store: ListStore, args) -> int:
    [address, *_] = _need(args, 1, "the list's address")
    if store.get(address) is None:
        raise KeyError(f"no list {address}")
    records = store.member_records(address)
    if args.json:
        _dump([{"address": m.address, "enabled": m.enabled, "bounce_score": m.bounce_score}
               for m in records])
        return 0
    for m in records:
        print(m.address if m.enabled else f"{m.address}  (disabled, bounce score "
              f"{m.bounce_score:g})")
    return 0


def _addresses(args) -> tuple[list[str], list[str]]:
    """(good addresses, faults) from the command line and --file."""
    lines = list(args.args[1:])
    if args.file == "-":
        lines += [line.split("#", 1)[0].strip() for line in sys.stdin]
    elif args.file:
        with open(args.file, encoding="utf-8") as f:
            lines += [line.split("#", 1)[0].strip() for line in f]
    good, faults = [], []
    for n, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            good.append(normalize(line))
        except ValueError as e:
            faults.append(f"{line!r} (item {n}): {e}")
    return good, faults


def _add_or_remove(store: ListStore, args) -> int:
    """Bad addresses are named and skipped; the status is then 1 so scripts notice."""
    [address, *_] = _need(args, 1, "the list's address")
    good, faults = _addresses(args)
    for fault in faults:
        print(f"mailgateway: skipped {fault}", file=sys.stderr)
    if args.action == "add":
        count = store.add_members(address, good)
        print(f"{address}: {count} added, {len(good) - count} were members already")
    else:
        count = store.remove_members(address, good)
        print(f"{address}: {count} removed, {len(good) - count} were not members")
    return 1 if faults else 0


def _enable(store: ListStore, args) -> int:
    address, member = _need(args, 2, "ADDRESS MEMBER")[:2]
    if not store.enable(address, member):
        raise KeyError(f"{member} is not a member of {address}")
    print(f"{address}: {member} enabled")
    return 0


def _held(store: ListStore, args) -> int:
    [address, *_] = _need(args, 1, "the list's address")
    if store.get(address) is None:
        raise KeyError(f"no list {address}")
    rows = []
    for h in store.held(address):
        head = BytesHeaderParser(policy=default_policy).parsebytes(h.message)
        rows.append({"id": h.id, "sender": h.sender, "reason": h.reason,
                     "held_at": h.held_at, "size": len(h.message),
                     "subject": str(head.get("Subject", ""))})
    if args.json:
        _dump(rows)
        return 0
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["held_at"]))
        print(f"{r['id']}  {when}  <{r['sender']}>  {r['size']} bytes  {r['subject']!r}\n"
              f"    {r['reason']}")
    if not rows:
        print("no held posts")
    return 0


def _approve(store: ListStore, args) -> int:
    [held_id, *_] = _need(args, 1, "the held post's ID")
    held = outbox.release(store, held_id)
    if held is None:
        raise KeyError(f"no held post {held_id}")
    print(f"{held_id}: approved; the gateway sends it to {held.list}")
    return 0


def _reject(store: ListStore, args) -> int:
    [held_id, *_] = _need(args, 1, "the held post's ID")
    taken = store.take_held(held_id)
    if taken is None:
        raise KeyError(f"no held post {held_id}")
    print(f"{held_id}: rejected (the post from <{taken[1]}> to {taken[0]} is dropped)")
    return 0


_ACTIONS = {"create": _create, "show": _show, "set": _set, "delete": _delete,
            "members": _members, "add": _add_or_remove, "remove": _add_or_remove,
            "enable": _enable, "held": _held, "approve": _approve, "reject": _reject}
