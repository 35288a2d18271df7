"""Queue administration requests: `mailgateway queue hold|release|delete|retry|flush`.

Sits beside the runner (queue/runner.py), which is the only writer of
envelopes while the gateway runs. The CLI therefore never edits an entry
itself: it drops a request file into <state_dir>/queue/control/ (written in
tmp/, fsync'd, renamed in: atomic) and the runner, which looks there every
`queue.control_interval` seconds with one cheap os.scandir in a thread, applies
it between attempts and deletes the file. Why files and not a control socket:
a request survives a crash or a stopped gateway (it is applied at the next
start, before any delivery), needs no listener and no authentication beyond
the state directory's 0700 permissions, and cannot race with the runner's own
envelope rewrites. The CLI waits for the file to vanish to report success.

Request file name: "<time_ns>.<action>.<queue id>" ("<time_ns>.flush.ALL" for
flush), so sorting the names gives the order they were made in.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.durable import write_synced
from gateway.envelope import valid_queue_id
from gateway.interfaces import ISpool

ACTIONS = ("hold", "release", "delete", "retry", "flush")
ALL = "ALL"


@dataclass(frozen=True)
class Request:
    name: str
    action: str
    queue_id: str


def control_dir(spool_root: Path) -> Path:
    return Path(spool_root) / "control"


def write_request(spool_root: Path, action: str, queue_id: str = ALL) -> Path:
    """Drop one request for the runner (blocking); returns the request's path."""
    if action not in ACTIONS:
        raise ValueError(f"unknown queue action {action!r}")
    if queue_id != ALL and not valid_queue_id(queue_id):
        raise ValueError(f"not a queue ID: {queue_id!r}")
    directory = control_dir(spool_root)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = f"{time.time_ns()}.{action}.{queue_id}"
    tmp = Path(spool_root) / "tmp" / f"control.{name}"
    tmp.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_synced(tmp, b"")
    os.rename(tmp, directory / name)
    return directory / name


def pending_requests(spool_root: Path) -> list[Request]:
    """The requests waiting, oldest first (blocking; one scandir). Junk files are removed."""
    directory = control_dir(spool_root)
    try:
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it)
    except FileNotFoundError:
        return []
    requests = []
    for name in names:
        parts = name.split(".")
        ok = (len(parts) == 3 and parts[0].isdigit() and parts[1] in ACTIONS
              and (parts[2] == ALL if parts[1] == "flush" else valid_queue_id(parts[2])))
        if ok:
            requests.append(Request(name, parts[1], parts[2]))
        else:
            done(spool_root, name)
    return requests


def done(spool_root: Path, name: str) -> None:
    try:
        (control_dir(spool_root) / name).unlink()
    except FileNotFoundError:
        pass


def set_held(spool: ISpool, queue_id: str, held: bool) -> bool:
    """Record hold/release in the entry's envelope (blocking); False if no such entry."""
    try:
        envelope = spool.load(queue_id)
    except KeyError:
        return False
    if envelope.held != held:
        envelope.held = held
        envelope.generation += 1  # the outcome records are folded in: a new generation
        spool.update(envelope)
    return True
