"""The selected state of an IMAP session: FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE.

A mixin of server.IMAPServer. RFC 3501 6.4, RFC 4315 (UIDPLUS: COPYUID,
UID EXPUNGE), RFC 6851 (MOVE), RFC 3691 (UNSELECT), RFC 7162 (FETCH MODSEQ and
CHANGEDSINCE [VANISHED], STORE UNCHANGEDSINCE, SEARCH MODSEQ), RFC 4731 (SEARCH
RETURN: esearch.py), RFC 5182 (SEARCHRES: RETURN (SAVE) and "$"), RFC 5256
(SORT, THREAD: sort.py, thread.py). The work runs in the thread pool against
the shared store Folder; sequence numbers are the session's own (mailbox.View).
Large FETCH answers go out a batch at a time, each batch after the client has
read the last (server.Pacer), so a 100,000-message FETCH neither blocks the
reactor nor fills memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from gateway import deflate, filesend
from gateway.access.imap import esearch, fetch, keywordlimit, search, sort, thread, wire
from gateway.access.imap.commands import flag_list
from gateway.access.imap.wire import Atom, Bad, No, compact

_log = Logger()


def _joined_read(write: list[Any]) -> bytes:
    """Bytes, and the octets read from a (FileRange, count), as one string (blocking)."""
    return b"".join(p if isinstance(p, bytes) else p[0].take(p[1]) for p in write)


@dataclass(frozen=True)
class _FetchPlan:
    """How a FETCH goes: whether it sets \\Seen, sends files by sendfile (or copies
    them, for a client on this host), from what size, in which batches."""

    set_seen: bool
    by_sendfile: bool
    files_from: int
    copy: bool
    batches: list


_STORE_MODES = {b"FLAGS": 0, b"+FLAGS": 1, b"-FLAGS": -1}
_FETCH_MODIFIERS = (b"CHANGEDSINCE", b"VANISHED")


def fetch_modifiers(token: list, uid: bool, qresync: bool) -> tuple[int, bool]:
    """FETCH's (CHANGEDSINCE n [VANISHED]) (RFC 7162 3.1.4.1, 3.2.6) -> (n, vanished)."""
    changedsince, vanished, i = None, False, 0
    while i < len(token):
        name = wire.atom(token[i], "FETCH modifier").upper()
        if name == b"CHANGEDSINCE" and i + 1 < len(token) and changedsince is None:
            changedsince, i = wire.modseq(token[i + 1]), i + 2
        elif name == b"VANISHED" and not vanished:
            vanished, i = True, i + 1
        else:
            raise Bad("FETCH modifiers are CHANGEDSINCE n and VANISHED")
    if changedsince is None:
        raise Bad("FETCH modifiers need CHANGEDSINCE")
    if vanished and not (uid and qresync):  # RFC 7162 3.2.6
        raise Bad("VANISHED needs UID FETCH and QRESYNC enabled")
    return changedsince, vanished


class SelectedCommands:
    _local: bool | None = None  # the client is on this host (_on_this_host), once known

    def _pairs(self, token: Any, uid: bool) -> list[tuple[int, int]]:
        if token == b"$" and isinstance(token, Atom):  # RFC 5182: the saved result
            return self.view.saved_pairs()
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
        view = self.view
        options, args = esearch.parse_return(args)  # RFC 4731
        if options is None and self.rev2:  # RFC 9051 6.4.4: ESEARCH, as RETURN (ALL)
            options = [b"ALL"]
        save = options is not None and b"SAVE" in options
        try:
            predicate, modseq = search.parse(args, view, budget)
        finally:
            if save:
                view.saved = []  # RFC 5182 2.1: a SEARCH that fails leaves it empty
        if modseq:
            self.enable_condstore()

        def modseq_of(numbers: list[int]) -> int:
            """RFC 7162 3.1.5: the highest modseq of these messages."""
            uids = numbers if uid else [view.uids[n - 1] for n in numbers]
            with view.folder.lock:
                return max((m.modseq for u in uids if (m := view.folder.by_uid.get(u))),
                           default=0)


        def work() -> bytes:
            numbers = search.run(view, predicate, uid, budget)
            if save:
                kept = esearch.to_save(numbers, options)
                view.saved = kept if uid else [view.uids[n - 1] for n in kept]
            if options is not None:
                return esearch.response(tag, uid, numbers, options,
                                        modseq_of if modseq else None)
            top = modseq_of(numbers) if modseq and numbers else 0
            # Always a SEARCH response, even with no match (Twisted sends none then).
            return b"* SEARCH" + b"".join(b" %d" % n for n in numbers) + (
                b" (MODSEQ %d)" % top if top else b"")

        def found(line: bytes) -> bytes:
            if line:
                self.transport.write(line + b"\r\n")
            return b"SEARCH completed"

        return self.factory.run_search(work).addCallback(found)

    # -- SORT and THREAD (RFC 5256) ------------------------------------------------

    def _sorted_search(self, tag: bytes, args: list, uid: bool, verb: bytes, first,
                       arrange) -> Any:
        """SORT/THREAD first charset keys...: the search as SEARCH's (the same Budget,
        in the search pool), then arrange(facts) -> the response's data."""
        if len(args) < 3:
            raise Bad(f"{verb.decode()} needs its criteria, a charset and search keys")
        budget = search.Budget(self.settings)
        view = self.view
        predicate, modseq = search.parse([Atom(b"CHARSET"), *args[1:]], view, budget)
        if modseq:
            self.enable_condstore()

        def work() -> bytes:
            numbers = search.run(view, predicate, False, budget)
            found = [(n, view.uids[n - 1]) for n in numbers]
            return arrange(sort.facts(view, found, budget))

        def found(data: bytes) -> bytes:
            self.transport.write(b"* " + verb + data + b"\r\n")
            return verb + b" completed"

        return self.factory.run_search(work).addCallback(found)

    def do_SORT(self, tag: bytes, args: list, uid: bool) -> Any:
        criteria = sort.parse_criteria(args[0] if args else None)

        def arrange(items: list) -> bytes:
            return b"".join(b" %d" % (f.uid if uid else f.seq)
                            for f in sort.ordered(items, criteria))

        return self._sorted_search(tag, args, uid, b"SORT", criteria, arrange)

    def do_THREAD(self, tag: bytes, args: list, uid: bool) -> Any:
        name = wire.atom(args[0], "threading algorithm").upper() if args else b""
        if name not in thread.ALGORITHMS:
            raise Bad("THREAD algorithms are ORDEREDSUBJECT and REFERENCES")
        make = thread.references if name == b"REFERENCES" else thread.ordered_subject

        def arrange(items: list) -> bytes:
            data = thread.render(make(items), uid)
            return b" " + data if data else b""

        return self._sorted_search(tag, args, uid, b"THREAD", name, arrange)

    # -- FETCH ------------------------------------------------------------------------

    def do_FETCH(self, tag: bytes, args: list, uid: bool) -> Any:
        if len(args) < 2:
            raise Bad("FETCH needs a sequence set and items")
        changedsince, vanished = None, False
        last = args[-1]
        if len(args) >= 3 and isinstance(last, list) and last and isinstance(last[0], Atom) \
                and last[0].upper() in _FETCH_MODIFIERS:
            changedsince, vanished = fetch_modifiers(last, uid, self.qresync)
            args = args[:-1]
        pairs = self._pairs(args[0], uid)
        items = fetch.parse(args[1:])
        contents = sum(1 for i in items if fetch.is_content(i))
        if contents > self.settings.max_fetch_contents:
            # Each may carry a whole message, and a batch holds them all at once.
            raise No(f"[LIMIT] {contents} message contents asked for in one FETCH, more "
                     f"than max_fetch_contents {self.settings.max_fetch_contents}")
        if changedsince is not None and not any(i.kind == b"MODSEQ" for i in items):
            items.append(fetch.Item(b"MODSEQ"))  # RFC 7162 3.1.4.1: implied
        if changedsince is not None or any(i.kind == b"MODSEQ" for i in items):
            self.enable_condstore()
        # VANISHED: UIDs in the set expunged since; "*" reaches past the last UID here.
        known = [(u, u) for _, u in pairs] if vanished and args[0] == b"$" else \
            wire.sequence_set(args[0], max(self.view.largest(True),
                                           self.view.folder.uidnext - 1)) if vanished else None
        plan = self._fetch_plan(pairs, items)
        if known is None and changedsince is None and len(plan.batches) == 1 \
                and not plan.set_seen:
            # A small FETCH that changes nothing: answered on the spot if it can be
            # (render_now), without a trip to the pool nor a Deferred.
            chunks = fetch.render_now(self.view, plan.batches[0], items, uid, plan.files_from)
            if chunks is not None:
                return self._fetched_now(plan, chunks)
        return self._fetch(plan, items, uid, changedsince, known)

    def _fetch_plan(self, pairs: list[tuple[int, int]], items: list) -> _FetchPlan:
        view = self.view
        # Big sections go from their files: by sendfile on plaintext (filesend.py), or
        # copied through a buffer for a client on this host (filesend.same_host);
        # over TLS or COMPRESS, or with sendfile off, those of fetch_buffer or more are
        # read a piece at a time, so a session never holds one whole (_send_in_pieces).
        by_sendfile = self.settings.sendfile_from > 0 and filesend.can_send_files(
            self.transport)
        files_from = self.settings.sendfile_from if by_sendfile else \
            self.settings.fetch_buffer
        return _FetchPlan(
            set_seen=any(i.seen for i in items) and not view.readonly,
            by_sendfile=by_sendfile, files_from=files_from,
            copy=by_sendfile and not self.settings.sendfile_local and self._on_this_host(),
            batches=fetch.batches(view.folder, pairs, items, self.settings.fetch_buffer,
                                  files_from))

    def _fetched_now(self, plan: _FetchPlan, chunks: list[bytes]) -> Any:
        """Send what render_now made (bytes only: no message was sent from its file)."""
        # A keyword another session set meanwhile is announced before it is shown.
        out = [line + b"\r\n" for line in self.view.new_keywords()] + chunks
        if plan.by_sendfile:
            filesend.send(self.transport, out, plan.copy)
        else:
            deflate.write_batch(self.transport, out)
        written = self._written()
        return b"FETCH completed" if written is None else written.addCallback(
            lambda _: b"FETCH completed")

    @defer.inlineCallbacks
    def _fetch(self, plan: _FetchPlan, items: list, uid: bool,
               changedsince: int | None = None, known: list | None = None):
        view = self.view
        if known is not None:  # RFC 7162 3.2.6: before the FETCH responses
            gone = yield self.run_blocking(view.folder.vanished_since, changedsince)
            gone = wire.compact_ranges(gone, known)
            if gone and not self._gone and self.view is view:
                self.transport.write(b"* VANISHED (EARLIER) " + gone + b"\r\n")
        batches, files_from, set_seen = plan.batches, plan.files_from, plan.set_seen
        # The next batch is read and rendered in the pool while this one is sent, so
        # disk, CPU and socket overlap; a session holds at most two batches.
        pending = self.run_blocking(self._fetch_batch, view, batches[0], items, uid,
                                    set_seen, changedsince, files_from) if batches else None
        for following in [*batches[1:], None] if batches else []:
            chunks = yield pending
            if self._gone or self.view is not view:
                filesend.close_all(chunks)
                return None
            if following is not None:
                pending = self.run_blocking(self._fetch_batch, view, following, items, uid,
                                            set_seen, changedsince, files_from)
            # A keyword another session set meanwhile is announced before it is shown.
            out = [line + b"\r\n" for line in view.new_keywords()] + chunks
            if plan.by_sendfile:
                filesend.send(self.transport, out, plan.copy)
            elif not (yield self._send_in_pieces(out)):
                return None  # the connection is closed or closing
            yield self._written()
        return b"FETCH completed"

    def _on_this_host(self) -> bool:
        """filesend.same_host, asked once a session: its addresses stay."""
        if self._local is None:
            self._local = filesend.same_host(self.transport)
        return self._local

    def _written(self) -> defer.Deferred | None:
        """None when, under COMPRESS, every write is compressed, and the client has read
        what was written; else a Deferred that fires then. So what a session holds for
        its client stays bounded."""
        if deflate.drained(self.transport) is None and self.pacer.ready:
            deflate.client_read(self.transport)  # the link's speed, for COMPRESS's gauge
            return None
        return self._written_later()

    @defer.inlineCallbacks
    def _written_later(self):
        yield deflate.drained(self.transport)  # None: nothing is being compressed
        yield self.pacer.wait()
        deflate.client_read(self.transport)

    @defer.inlineCallbacks
    def _send_in_pieces(self, pieces: list[bytes | filesend.FileRange]):
        """Write pieces in order, each FileRange read fetch_buffer octets at a time in
        the pool. A piece is sent once the client has read what went before
        (_written); the next one (of this range or the next) is read meanwhile. So a
        session holds two pieces (each under twice fetch_buffer) and what the
        transport holds. The literal's length went before the range. False: the
        connection is gone, or closed as a file could not be read."""
        step = self.settings.fetch_buffer
        # Each write: the bytes before a piece of a range and the piece, joined in the
        # pool, so the reactor passes one string to TLS or zlib without copying it.
        writes: list[list[Any]] = [[]]
        for piece in pieces:
            if isinstance(piece, filesend.FileRange):
                # Even pieces of step to twice step octets: no short last piece, which
                # would cost a trip to the pool and a write of its own.
                count = max(1, piece.count // step)
                for n in range(count):
                    writes[-1].append((piece, piece.count * (n + 1) // count
                                       - piece.count * n // count))
                    writes.append([])
            else:
                writes[-1].append(piece)
        reads = iter([w for w in writes if w and isinstance(w[-1], tuple)])

        def read_next() -> defer.Deferred | None:
            w = next(reads, None)
            return None if w is None else self.run_blocking(_joined_read, w)

        reading = read_next()
        try:
            for w in writes:
                if not w:
                    continue
                if not isinstance(w[-1], tuple):  # the bytes after the last piece
                    deflate.write_batch(self.transport, w)
                    continue
                done, reading = reading, None
                data = yield done
                reading = read_next()
                yield self._written()
                if self._gone:
                    return False
                deflate.write_octets(self.transport, data)
        except OSError as e:  # the file is unreadable: its announced literal cannot end
            _log.error("imap {user} from {client}: message file unreadable in FETCH, "
                       "closing: {error}", user=self.address, client=self.client_host(),
                       error=e)
            self.transport.abortConnection()
            return False
        finally:
            if reading is None:
                filesend.close_all(pieces)
            else:  # a pool thread still reads a range: close once it is done
                reading.addBoth(lambda _: filesend.close_all(pieces))
        return True

    @staticmethod
    def _fetch_batch(view, batch, items, uid: bool, set_seen: bool,
                     changedsince: int | None = None,
                     files_from: int = 0) -> list[bytes | filesend.FileRange]:
        if changedsince is not None:  # RFC 7162 3.1.4.1: only what changed since
            folder = view.folder
            batch = [(n, u) for n, u in batch
                     if (m := folder.message(u)) is not None and m.modseq > changedsince]
        seen_now: set[int] = set()
        if set_seen:  # RFC 3501 6.4.5: BODY[...] without PEEK sets \Seen
            folder = view.folder
            unseen = [u for _, u in batch
                      if (m := folder.message(u)) is not None and "S" not in m.letters]
            if unseen:
                seen_now = set(folder.store(unseen, 1, ["\\Seen"], origin=view))
        # Joined here, in the pool: the transport then sends each piece as it is,
        # instead of copying the batch together on the reactor thread.
        return fetch.joined(fetch.render(view, batch, items, uid, seen_now, files_from))

    # -- STORE ------------------------------------------------------------------------

    def do_STORE(self, tag: bytes, args: list, uid: bool) -> Any:
        wire.arity(args, 3, 4)
        unchangedsince = None
        if len(args) == 4:  # RFC 7162 3.1.3: STORE set (UNCHANGEDSINCE n) mode flags
            mods = args[1]
            if not isinstance(mods, list) or len(mods) != 2 or not isinstance(mods[0], Atom) \
                    or mods[0].upper() != b"UNCHANGEDSINCE":
                raise Bad("STORE modifier is (UNCHANGEDSINCE n)")
            unchangedsince = wire.modseq(mods[1])
            args = [args[0], *args[2:]]
        pairs = self._pairs(args[0], uid)
        mode_text = wire.atom(args[1], "store mode").upper()
        silent = mode_text.endswith(b".SILENT")
        mode = _STORE_MODES.get(mode_text[:-7] if silent else mode_text)
        if mode is None:
            raise Bad("STORE takes FLAGS, +FLAGS or -FLAGS (.SILENT)")
        flags = flag_list(args[2])
        self._writable()
        if unchangedsince is not None:
            self.enable_condstore()
        view = self.view
        uids = [u for _, u in pairs]

        def work() -> tuple[dict[int, list[str]], dict[int, int], set[int], set[int]]:
            folder = view.folder
            with folder.lock:
                if mode >= 0:  # the check and the change as one (keywordlimit.py)
                    keywordlimit.check(folder, flags, self.settings)
                before = {u: m.modseq for u in uids if (m := folder.by_uid.get(u))}
                result = folder.store(uids, mode, flags, view, unchangedsince)
                after = {u: folder.by_uid[u].modseq for u in result}
                # RFC 7162 3.1.3: those left alone because they changed since.
                modified = {u for u in before if u not in result and u in folder.by_uid}
                changed = {u for u in result if after[u] != before[u]}
                return result, after, modified if unchangedsince is not None else set(), \
                    changed

        def stored(answer) -> bytes:
            result, modseqs, modified, changed = answer
            if self.view is view:  # a new keyword: FLAGS first (RFC 3501 7.2.6)
                self.transport.writeSequence([line + b"\r\n" for line in view.new_keywords()])
            if self.view is view:
                out = []
                for seq, u in pairs:
                    if u not in result:
                        continue
                    modseq = b" MODSEQ (%d)" % modseqs[u] if view.condstore else b""
                    tail = (b" UID %d" % u if uid or view.qresync else b"") + modseq
                    if not silent:
                        shown = result[u] + (["\\Recent"] if u in view.recent else [])
                        out.append(b"* %d FETCH (FLAGS (%s)%s)\r\n" % (
                            seq, " ".join(shown).encode(), tail))
                    elif view.condstore and u in changed:
                        # RFC 7162 3.2: .SILENT still tells the new MODSEQ.
                        out.append(b"* %d FETCH (%s)\r\n" % (seq, tail.lstrip()))
                self.transport.writeSequence(out)
            if modified:
                numbers = sorted(u if uid else seq for seq, u in pairs if u in modified)
                return b"[MODIFIED " + compact(numbers) + b"] Conditional STORE failed"
            return b"STORE completed"

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
