"""The outbox: approved held posts waiting for the gateway to explode them.

The contract between the approvers and the gateway. An approval, by a
moderator's reply (requests.py) or by `mailgateway list approve ID`
(lists/cli.py, a second process), is recorded here and nowhere else, and the
gateway explodes what it finds here. So there is one path for both, and a
crash at any moment loses no approved post:

  1. release(store, id) writes <state_dir>/lists/outbox/<id>.post: written in
     outbox/tmp/, fsync'd, renamed in, the directory fsync'd;
  2. then it removes the held post from the store (one transaction).
     A crash between 1 and 2 leaves both; approving again rewrites the same
     file name, so the post is still released once.
  3. The gateway calls pending(root) at start and every so often (like
     queue/control.py's requests), spools each post as the list's explosion
     (a new queue entry, fsync'd), then done(post) removes the file. A crash
     between spooling and done() explodes it again at the next start; to
     avoid that, the explosion's queue entry can be named after post.held_id.

File format: one line of JSON {"list": ..., "sender": ..., "held_id": ...},
"\\n", then the message bytes exactly as held.
Blocking (fsync): call it from a pool thread in the gateway.

pending() reads only each post's first line (issue 11): a waiting post is its
size, and the exploder reads the message (read()) once the [queue]
whole_message_memory budget (gateway/budget.py) lets it, as for any list post,
so many large approvals at once are never all in memory together.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from twisted.logger import Logger

from gateway.durable import fsync_dir, write_synced
from gateway.lists.store import Held, ListStore

SUFFIX = ".post"
# The JSON line before the message: three addresses, far below this.
MAX_HEAD = 64 * 1024

log = Logger()


@dataclass(frozen=True)
class OutboxPost:
    path: Path
    held_id: str
    list: str
    sender: str
    size: int  # the message's, in octets
    offset: int  # where the message starts in the file (after the JSON line)


def outbox_dir(root: Path) -> Path:
    """root: the lists directory, <state_dir>/lists (ListStore.root)."""
    return Path(root) / "outbox"


def release(store: ListStore, held_id: str) -> Held | None:
    """Approve a held post: into the outbox durably, then out of the store.
    The held post, or None if there is no such post (taken already)."""
    held = store.get_held(held_id)
    if held is None:
        return None
    directory = outbox_dir(store.root)
    tmp = directory / "tmp"
    tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
    head = json.dumps({"list": held.list, "sender": held.sender, "held_id": held.id})
    write_synced(tmp / held.id, head.encode() + b"\n" + held.message)
    os.rename(tmp / held.id, directory / (held.id + SUFFIX))
    fsync_dir(directory)
    store.take_held(held.id)
    return held


def pending(root: Path) -> list[OutboxPost]:
    """The approved posts waiting, oldest first. A file that cannot be read as a post
    is renamed to <name>.bad and logged: kept for the admin, never dropped silently."""
    directory = outbox_dir(root)
    try:
        entries = [e for e in os.scandir(directory) if e.name.endswith(SUFFIX)]
    except FileNotFoundError:
        return []
    posts = []
    for entry in sorted(entries, key=lambda e: e.stat().st_mtime_ns):
        with open(entry.path, "rb") as f:
            head = f.readline(MAX_HEAD)
            size = os.fstat(f.fileno()).st_size - len(head)
        try:
            if not head.endswith(b"\n"):
                raise ValueError("no JSON line")
            meta = json.loads(head)
            posts.append(OutboxPost(Path(entry.path), str(meta["held_id"]), str(meta["list"]),
                                    str(meta["sender"]), size, len(head)))
        except (ValueError, KeyError, TypeError):
            log.error("lists outbox: {path} is not an approved post; renamed to .bad",
                      path=entry.path)
            os.rename(entry.path, entry.path + ".bad")
    return posts


def read(post: OutboxPost) -> bytes:
    """The post's message, exactly as held: call it within the memory budget."""
    with open(post.path, "rb") as f:
        f.seek(post.offset)
        return f.read()


def done(post: OutboxPost) -> None:
    """The post is exploded (its queue entry durable): forget it."""
    try:
        post.path.unlink()
    except FileNotFoundError:
        pass
