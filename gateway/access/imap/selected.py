"""The selected state of an IMAP session: FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE.

A mixin of server.IMAPServer. RFC 3501 6.4, RFC 4315 (UIDPLUS: COPYUID,
UID EXPUNGE), RFC 6851 (MOVE), RFC 3691 (UNSELECT). The work runs in the
thread pool against the shared store Folder; sequence numbers are the
session's own (mailbox.View). Large FETCH answers go out a batch at a time,
each batch after the client has read the last (server.Pacer), so a
100,000-message FETCH neither blocks the reactor nor fills memory.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from gateway.access.imap import fetch, keywordlimit, search, wire
from gateway.access.imap.commands import flag_list
from gateway.access.imap.wire import Bad, No

_STORE_MODES = {b"FLAGS": 0, b"+FLAGS": 1, b"-FLAGS": -1}


def compact(uids: list[int]) -> bytes:
    """A UID set in the shortest form, "1:3,7" (for COPYUID)."""
    out, i = [], 0
    while i < len(uids):
        j = i
        while j + 1 < len(uids) and uids[j + 1] == uids[j] + 1:
            j += 1
        out.append(b"%d" % uids[i] if i == j else b"%d:%d" % (uids[i], uids[j]))
        i = j + 1
    return b",".join(out)


class SelectedCommands:
    def _pairs(self, token: Any, uid: bool) -> list[tuple[int, int]]:
        return self.view.select(wire.sequence_set(token, self.view.largest(uid)), uid)

    def _writable(self) -> None:
        if self.view.readonly:
            raise No("[READ-ONLY] The folder is open read-only (EXAMINE, or a list archive)")

    def do_CHECK(self, tag: bytes, args: list, uid: bool) -> Any:
        wire.arity(args, 0)
        return self.run_blocking(self.view.folder.sync).addCallback(lambda _: b"CHECK completed")

    def do_CLOSE(self, tag: bytes, args: list, uid: bool) -> Any:
        wire.arity(args, 0)
        view = self.view
        self.close_view()  # RFC 3501 6.4.2: no EXPUNGE responses
        if view.readonly:
            return b"CLOSE completed"
        return self.run_blocking(view.folder.expunge, None, view).addCallback(
            lambda _: b"CLOSE completed")

    def do_UNSELECT(self, tag: bytes, args: list, uid: bool) -> bytes:
        wire.arity(args, 0)
        self.close_view()
        return b"UNSELECT completed"

    def do_EXPUNGE(self, tag: bytes, args: list, uid: bool) -> Any:
        wire.arity(args, 1 if uid else 0)
        self._writable()
        uids = [u for _, u in self._pairs(args[0], True)] if uid else None
        view = self.view

        def done(removed: list[int]) -> bytes:
            if self.view is view:
                self.transport.writeSequence([line + b"\r\n" for line in view.forget(removed)])
            return b"EXPUNGE completed"

        return self.run_blocking(view.folder.expunge, uids, view).addCallback(done)

    # -- SEARCH -----------------------------------------------------------------------

    def do_SEARCH(self, tag: bytes, args: list, uid: bool) -> Any:
        budget = search.Budget(self.settings)
        predicate, wants_summary = search.parse(args, self.view, budget)

        def found(numbers: list[int]) -> bytes:
            # Always a SEARCH response, even with no match (Twisted sends none then).
            self.transport.write(b"* SEARCH" + b"".join(b" %d" % n for n in numbers) + b"\r\n")
            return b"SEARCH completed"

        return self.factory.run_search(search.run, self.view, predicate, wants_summary,
                                       uid, budget).addCallback(found)

    # -- FETCH ------------------------------------------------------------------------

    def do_FETCH(self, tag: bytes, args: list, uid: bool) -> Any:
        if len(args) < 2:
            raise Bad("FETCH needs a sequence set and items")
        pairs = self._pairs(args[0], uid)
        items = fetch.parse(args[1:])
        return self._fetch(pairs, items, uid)

    @defer.inlineCallbacks
    def _fetch(self, pairs: list[tuple[int, int]], items: list, uid: bool):
        view = self.view
        set_seen = any(i.seen for i in items) and not view.readonly
        summary, content = fetch.needs(items)
        size = 100 if content else 1000 if summary else 5000
        for start in range(0, len(pairs), size):
            batch = pairs[start:start + size]
            chunks = yield self.run_blocking(self._fetch_batch, view, batch, items, uid,
                                             set_seen)
            if self._gone or self.view is not view:
                return None
            # A keyword another session set meanwhile is announced before it is shown.
            self.transport.writeSequence([line + b"\r\n" for line in view.new_keywords()]
                                         + chunks)
            yield self.pacer.wait()  # the client has read what was written
        return b"FETCH completed"

    @staticmethod
    def _fetch_batch(view, batch, items, uid: bool, set_seen: bool) -> list[bytes]:
        seen_now: set[int] = set()
        if set_seen:  # RFC 3501 6.4.5: BODY[...] without PEEK sets \Seen
            folder = view.folder
            unseen = [u for _, u in batch
                      if (m := folder.message(u)) is not None and "S" not in m.letters]
            if unseen:
                seen_now = set(folder.store(unseen, 1, ["\\Seen"], origin=view))
        return fetch.render(view, batch, items, uid, seen_now)

    # -- STORE ------------------------------------------------------------------------

    def do_STORE(self, tag: bytes, args: list, uid: bool) -> Any:
        wire.arity(args, 3)
        pairs = self._pairs(args[0], uid)
        mode_text = wire.atom(args[1], "store mode").upper()
        silent = mode_text.endswith(b".SILENT")
        mode = _STORE_MODES.get(mode_text[:-7] if silent else mode_text)
        if mode is None:
            raise Bad("STORE takes FLAGS, +FLAGS or -FLAGS (.SILENT)")
        flags = flag_list(args[2])
        self._writable()
        view = self.view

        def stored(result: dict[int, list[str]]) -> bytes:
            if self.view is view:  # a new keyword: FLAGS first (RFC 3501 7.2.6)
                self.transport.writeSequence([line + b"\r\n" for line in view.new_keywords()])
            if not silent and self.view is view:
                out = []
                for seq, u in pairs:
                    if u in result:
                        shown = result[u] + (["\\Recent"] if u in view.recent else [])
                        out.append(b"* %d FETCH (FLAGS (%s)%s)\r\n" % (
                            seq, " ".join(shown).encode(), b" UID %d" % u if uid else b""))
                self.transport.writeSequence(out)
            return b"STORE completed"

        def work() -> dict[int, list[str]]:
            folder = view.folder
            with folder.lock:  # the check and the change as one (keywordlimit.py)
                if mode >= 0:
                    keywordlimit.check(folder, flags, self.settings)
                return folder.store([u for _, u in pairs], mode, flags, view)

        return self.run_blocking(work).addCallback(stored)

    # -- COPY / MOVE ------------------------------------------------------------------

    def do_COPY(self, tag: bytes, args: list, uid: bool, move: bool = False) -> Any:
        wire.arity(args, 2)
        pairs = self._pairs(args[0], uid)
        name = self._name(args[1])
        if move:
            self._writable()
        view = self.view

        def copied(result: tuple[int, list[tuple[int, int]]]) -> bytes:
            validity, done = result
            if not done:
                return (b"MOVE" if move else b"COPY") + b" completed (nothing to do)"
            code = b"[COPYUID %d %s %s]" % (validity, compact([s for s, _ in done]),
                                            compact([d for _, d in done]))
            if not move:
                return code + b" COPY completed"
            # RFC 6851 3.3: COPYUID goes in an untagged OK before the EXPUNGEs.
            lines = [b"* OK " + code + b" Moved"]
            if self.view is view:
                lines += view.forget([s for s, _ in done])
            self.transport.writeSequence([line + b"\r\n" for line in lines])
            return b"MOVE completed"

        return self.run_blocking(self.account.copy, view, [u for _, u in pairs], name,
                                 move).addCallback(copied)

    def do_MOVE(self, tag: bytes, args: list, uid: bool) -> Any:
        return self.do_COPY(tag, args, uid, move=True)
