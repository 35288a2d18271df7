"""The authenticated state of an IMAP session: folders, APPEND, IDLE, NAMESPACE, ENABLE.

A mixin of server.IMAPServer. RFC 3501 6.3, RFC 2177 (IDLE), RFC 2342
(NAMESPACE), RFC 5161 (ENABLE), RFC 4315 (APPENDUID), RFC 6154 (SPECIAL-USE
attributes in LIST), RFC 3348 (CHILDREN), RFC 7162 (SELECT (CONDSTORE), SELECT
(QRESYNC ...) with VANISHED (EARLIER), STATUS HIGHESTMODSEQ, ENABLE CONDSTORE
and QRESYNC), RFC 5258 and 5819 (LIST-EXTENDED, LIST-STATUS: listext.py).
RFC 9051: after ENABLE IMAP4rev2 (self.rev2) folder names are UTF-8 on the wire
(new ones Net-Unicode), SELECT sends a LIST response and neither RECENT nor
[UNSEEN], STATUS knows DELETED, DELETE of a parent-only name says [HASCHILDREN];
SEARCH answers with ESEARCH (selected.py) and \\Recent is gone (mailbox.py). A
rev1 session (no ENABLE) is answered as RFC 3501 says.
Folder work blocks on the disk, so it runs in the thread pool (account.py); answers come
back here.
"""

from __future__ import annotations

import email.utils
import re
import unicodedata
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from gateway.access.imap import binary, listext, wire
from gateway.access.imap.mailbox import SYSTEM_FLAGS, View
from gateway.access.imap.wire import Atom, Bad, No, Str, Upload
from gateway.store.folders import DELIMITER, canonical

STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ",
                "SIZE", "DELETED")
REV2_STATUS_ITEMS = ("DELETED",)  # RFC 9051 6.3.11: only in an IMAP4rev2 session
# RFC 5161 names this server can enable, upper case -> as ENABLED spells them.
ENABLE_NAMES = {"CONDSTORE": "CONDSTORE", "QRESYNC": "QRESYNC", "IMAP4REV2": "IMAP4rev2"}


def qresync_params(token: Any) -> tuple[int, int, list[tuple[int, int]] | None]:
    """SELECT's (QRESYNC (uidvalidity modseq [known-uids [seq-match]])) (RFC 7162
    3.2.5) -> (uidvalidity, modseq, known UID ranges or None). The sequence match
    data only helps a server that forgets expunges: this one remembers the newest
    [mailbox] vanished_uids and, for a modseq older than those, sends every UID of
    known-uids it has no message for (store/folder.py vanished_since)."""
    if not isinstance(token, list) or not 2 <= len(token) <= 4:
        raise Bad("QRESYNC takes (uidvalidity modseq [known-uids [seq-match-data]])")
    uidvalidity = wire.number(token[0], "UIDVALIDITY")
    modseq = wire.modseq(token[1])
    if uidvalidity == 0 or modseq == 0:
        raise Bad("QRESYNC UIDVALIDITY and mod-sequence must not be 0")
    known = wire.sequence_set(token[2], 0xFFFFFFFF) if len(token) > 2 else None
    if len(token) > 3 and (not isinstance(token[3], list) or len(token[3]) != 2):
        raise Bad("QRESYNC sequence match data is (sequences uids)")
    return uidvalidity, modseq, known


def in_ranges(uid: int, ranges: list[tuple[int, int]] | None) -> bool:
    return ranges is None or any(lo <= uid <= hi for lo, hi in ranges)


# RFC 5198 Net-Unicode forbids C0 and C1 controls and DEL (RFC 9051 6.3.4 wants new
# folder names in it).
_NOT_NET_UNICODE = re.compile("[\x00-\x1f\x7f-\x9f]")


def net_unicode(name: str) -> bool:
    """A name in Net-Unicode (RFC 5198): NFC and no control characters."""
    return not _NOT_NET_UNICODE.search(name) and unicodedata.is_normalized("NFC", name)


def flag_list(token: Any) -> list[str]:
    """A parenthesised flag list (or one flag) as names; \\Recent is not the client's."""
    items = token if isinstance(token, list) else [token]
    flags = []
    for t in items:
        if not isinstance(t, Atom) or not t or any(c in b"(){%*\"]" for c in t):
            raise Bad("bad flag")
        name = t.decode("ascii", "replace")
        if name.startswith("\\"):
            canonical = {f.lower(): f for f in SYSTEM_FLAGS.decode().split(" ")
                         if f.startswith("\\")}.get(name.lower())
            if canonical is None:
                if name.lower() == "\\recent":
                    continue
                raise Bad(f"unknown system flag {name}")
            name = canonical
        flags.append(name)
    return flags


def append_date(token: Any) -> int:
    """RFC 3501 date-time "dd-Mon-yyyy hh:mm:ss +zzzz" -> Unix seconds."""
    try:
        day, month, rest = bytes(token).decode("ascii").strip().split("-", 2)
        parsed = email.utils.parsedate_tz(f"{day} {month} {rest}")
    except (UnicodeDecodeError, ValueError):
        parsed = None
    if not parsed:
        raise Bad("bad date-time")
    return int(email.utils.mktime_tz(parsed))


class AuthenticatedCommands:
    # -- SELECT / EXAMINE ---------------------------------------------------------

    def do_SELECT(self, tag: bytes, args: list, uid: bool, readonly: bool = False) -> Any:
        wire.arity(args, 1, 2)
        name = self._name(args[0])
        qresync = None
        if len(args) == 2:  # RFC 4466 select-params: (CONDSTORE) or (QRESYNC (...))
            params = args[1] if isinstance(args[1], list) else [args[1]]
            if len(params) == 1 and isinstance(params[0], Atom) \
                    and params[0].upper() == b"CONDSTORE":
                pass
            elif len(params) == 2 and isinstance(params[0], Atom) \
                    and params[0].upper() == b"QRESYNC":
                if not self.qresync:  # RFC 7162 3.2.5: only once ENABLEd
                    raise Bad("QRESYNC must be enabled first (ENABLE QRESYNC)")
                qresync = qresync_params(params[1])
            else:
                raise Bad("SELECT takes (CONDSTORE) or (QRESYNC (...)) only")
            self.condstore = True
        if self.view is not None:  # RFC 7162 3.2.11: tell where one mailbox's responses end
            self.sendUntaggedResponse(b"OK [CLOSED] Previous mailbox closed")
        self.close_view()

        def make(folder: Any, readonly: bool) -> View:
            view = View(folder, name, readonly, self.view_woken, self.settings)
            view.condstore, view.qresync, view.rev2 = self.condstore, self.qresync, self.rev2
            return view

        def work() -> tuple[View, int, int, list[bytes]]:
            view = self.account.select(name, readonly, make)
            with view.folder.lock:
                first_unseen = view.folder.by_uid.first_without("S", view.uids)
                return view, first_unseen, view.folder.uidnext, resync(view)

        def resync(view: View) -> list[bytes]:
            """RFC 7162 3.2.5.1: what changed since the modseq the client knew."""
            folder = view.folder
            if qresync is None or qresync[0] != folder.uidvalidity:
                return []  # a client with another UIDVALIDITY starts over
            _, since, known = qresync
            gone = wire.compact_ranges(folder.vanished_since(since), known)
            lines = [b"* VANISHED (EARLIER) " + gone] if gone else []
            for n, u in enumerate(view.uids, 1):
                m = folder.by_uid.get(u)
                if m is not None and m.modseq > since and in_ranges(u, known):
                    lines.append(b"* %d FETCH (UID %d FLAGS (%s) MODSEQ (%d))" % (
                        n, u, " ".join(view.flags(u) or []).encode(), m.modseq))
            return lines

        def selected(result: tuple[View, int, int, list[bytes]]) -> bytes:
            view, first_unseen, uidnext, changes = result
            if self._gone:
                view.close()
                return b""
            self.view, self.state = view, "select"
            ro = view.readonly  # EXAMINE, or SELECT of a list archive (shared.py)
            lines = [*view.flag_responses(),  # with every keyword of the folder
                     b"* %d EXISTS" % len(view)]
            if self.rev2:  # RFC 9051 6.3.2: no RECENT; LIST gives the name as stored
                lines.append(b'* LIST () "%s" %s' % (DELIMITER.encode(),
                                                     self._mailbox(canonical(name))))
            else:
                lines.append(b"* %d RECENT" % len(view.recent))
            if first_unseen and not self.rev2:  # RFC 9051 removed [UNSEEN] from SELECT
                lines.append(b"* OK [UNSEEN %d] First unseen" % first_unseen)
            lines += [b"* OK [UIDVALIDITY %d] UIDs valid" % view.folder.uidvalidity,
                      b"* OK [UIDNEXT %d] Predicted next UID" % uidnext,
                      # RFC 7162 3.1.2.1: with every SELECT, the modseqs being persistent
                      b"* OK [HIGHESTMODSEQ %d] Highest" % view.folder.highestmodseq,
                      *changes]
            self.transport.writeSequence([line + b"\r\n" for line in lines])
            verb = b"EXAMINE" if readonly else b"SELECT"
            return (b"[READ-ONLY] " if ro else b"[READ-WRITE] ") + verb + b" completed"

        return self.run_blocking(work).addCallback(selected)

    def do_EXAMINE(self, tag: bytes, args: list, uid: bool) -> Any:
        return self.do_SELECT(tag, args, uid, readonly=True)

    def enable_condstore(self) -> None:
        """A CONDSTORE enabling command (RFC 7162 3.1): from now on MODSEQ goes with flag
        changes; in the selected state the client hears HIGHESTMODSEQ first."""
        if self.condstore:
            return
        self.condstore = True
        if self.view is not None:
            self.view.condstore = True
            self.sendUntaggedResponse(b"OK [HIGHESTMODSEQ %d] Highest"
                                      % self.view.folder.highestmodseq)

    def close_view(self) -> None:
        if self.view is not None:
            self.view.close()
            self.view, self.state = None, "auth"

    def view_woken(self) -> None:
        """Another session or a delivery changed the selected folder (reactor thread)."""
        if self._idle_tag is not None:
            self.flush_updates(True)

    # -- folders ------------------------------------------------------------------

    def _name(self, token: Any) -> str:
        return wire.decode_mailbox(wire.astring(token, "folder name"), self.rev2)

    def _new_name(self, token: Any) -> str:
        """A name for a folder CREATE or RENAME makes. In an IMAP4rev2 session it must be
        Net-Unicode (RFC 9051 6.3.4: reject or normalise; here rejected, so the client
        never has to learn the name was changed)."""
        name = self._name(token)
        if self.rev2 and not net_unicode(name):
            raise No("[CANNOT] Folder name is not Net-Unicode (RFC 5198: NFC, no controls)")
        return name

    def _mailbox(self, name: str) -> bytes:
        """A folder name on the wire: modified UTF-7, UTF-8 once IMAP4rev2 is on."""
        return wire.mailbox_name(name, self.rev2)

    def _simple(self, f, *args) -> defer.Deferred:
        return self.run_blocking(f, *args)

    def do_CREATE(self, tag: bytes, args: list, uid: bool) -> Any:
        wire.arity(args, 1)
        return self._simple(self.account.create, self._new_name(args[0])).addCallback(
            lambda _: b"CREATE completed")

    def do_DELETE(self, tag: bytes, args: list, uid: bool) -> Any:
        wire.arity(args, 1)
        return self._simple(self.account.delete, self._name(args[0]), self.rev2).addCallback(
            lambda _: b"DELETE completed")

    def do_RENAME(self, tag: bytes, args: list, uid: bool) -> Any:
        wire.arity(args, 2)
        return self._simple(self.account.rename, self._name(args[0]),
                            self._new_name(args[1])).addCallback(lambda _: b"RENAME completed")

    def do_SUBSCRIBE(self, tag: bytes, args: list, uid: bool, on: bool = True) -> Any:
        wire.arity(args, 1)
        return self._simple(self.account.subscribe, self._name(args[0]), on).addCallback(
            lambda _: b"SUBSCRIBE completed" if on else b"UNSUBSCRIBE completed")

    def do_UNSUBSCRIBE(self, tag: bytes, args: list, uid: bool) -> Any:
        return self.do_SUBSCRIBE(tag, args, uid, on=False)

    def do_LIST(self, tag: bytes, args: list, uid: bool, subscribed: bool = False) -> Any:
        if not subscribed:
            request = listext.parse(args, self._status_items())
            if request.extended:
                return self._list_extended(request)
        wire.arity(args, 2)
        verb = b"LSUB" if subscribed else b"LIST"
        raw = [wire.astring(t, "folder name") for t in args]
        try:
            reference, pattern = (wire.decode_mailbox(r, self.rev2) for r in raw)
        except No:
            # Not modified UTF-7 (RFC 3501 5.1.3), so no folder's name: nothing matches,
            # which is an empty answer, not an error (RFC 3501 6.3.8).
            return defer.succeed(verb + b" completed")
        if not pattern and not subscribed:  # RFC 3501 6.3.8: the delimiter and root
            self.sendUntaggedResponse(b'LIST (\\Noselect) "%s" ""' % DELIMITER.encode())
            return defer.succeed(b"LIST completed")

        def listed(found: list[tuple[str, list[str]]]) -> bytes:
            out = [b'* %s (%s) "%s" %s\r\n' % (verb, " ".join(attrs).encode(),
                                              DELIMITER.encode(), self._mailbox(name))
                   for name, attrs in found]
            self.transport.writeSequence(out)
            return verb + b" completed"

        return self._simple(self.account.list, reference, pattern, subscribed).addCallback(
            listed)

    def _list_extended(self, req: listext.Request) -> Any:
        """LIST-EXTENDED and LIST-STATUS (listext.py)."""
        try:
            reference = wire.decode_mailbox(req.reference, self.rev2)
            patterns = [wire.decode_mailbox(p, self.rev2) for p in req.patterns]
        except No:  # not modified UTF-7: no folder's name, nothing matches (as LIST)
            return defer.succeed(b"LIST completed")
        if not any(patterns) and not req.subscribed:  # RFC 3501 6.3.8's special case
            self.sendUntaggedResponse(b'LIST (\\Noselect) "%s" ""' % DELIMITER.encode())
            return defer.succeed(b"LIST completed")
        if "HIGHESTMODSEQ" in req.status:
            self.enable_condstore()

        def work() -> list[bytes]:
            found = self.account.list_extended(reference, [p for p in patterns if p],
                                               req.subscribed, req.recursive,
                                               req.return_subscribed)
            out = []
            for name, attrs, childinfo in found:
                out.append(listext.list_line(name, attrs, childinfo, DELIMITER, self.rev2))
                if req.status and not {"\\Noselect", "\\NonExistent"} & set(attrs):
                    try:  # RFC 5819: STATUS after the mailbox's LIST line
                        values = self.account.status(name, req.status)
                    except No:
                        continue  # gone meanwhile, or not ours to count
                    out.append(b"* " + self._status_line(name, values) + b"\r\n")
            return out

        def listed(lines: list[bytes]) -> bytes:
            self.transport.writeSequence(lines)
            return b"LIST completed"

        return self._simple(work).addCallback(listed)

    def do_LSUB(self, tag: bytes, args: list, uid: bool) -> Any:
        return self.do_LIST(tag, args, uid, subscribed=True)

    def do_STATUS(self, tag: bytes, args: list, uid: bool) -> Any:
        wire.arity(args, 2)
        name = self._name(args[0])
        if not isinstance(args[1], list) or not args[1]:
            raise Bad("STATUS needs a list of items")
        items = [wire.atom(t, "status item").decode().upper() for t in args[1]]
        if any(i not in self._status_items() for i in items):
            raise Bad("unknown STATUS item")
        if "HIGHESTMODSEQ" in items:
            self.enable_condstore()

        def answer(values: list[tuple[str, int]]) -> bytes:
            self.sendUntaggedResponse(self._status_line(name, values))
            return b"STATUS completed"

        return self._simple(self.account.status, name, items).addCallback(answer)

    def _status_items(self) -> tuple[str, ...]:
        return STATUS_ITEMS if self.rev2 else tuple(
            i for i in STATUS_ITEMS if i not in REV2_STATUS_ITEMS)

    def _status_line(self, name: str, values: list[tuple[str, int]]) -> bytes:
        body = " ".join(f"{k} {v}" for k, v in values).encode()
        return b"STATUS " + self._mailbox(name) + b" (" + body + b")"

    def do_NAMESPACE(self, tag: bytes, args: list, uid: bool) -> bytes:
        wire.arity(args, 0)
        # RFC 2342: personal "", no other users', the list archives as shared (shared.py).
        self.sendUntaggedResponse(b'NAMESPACE (("" "%s")) NIL %s' % (
            DELIMITER.encode(), self.account.shared.namespace()))
        return b"NAMESPACE completed"

    def do_ENABLE(self, tag: bytes, args: list, uid: bool) -> bytes:
        # RFC 5161: ENABLED names what this command turned on; names unknown or
        # already on are left out. RFC 7162 3.2.3: QRESYNC turns CONDSTORE on too.
        # RFC 9051 6.3.1: IMAP4rev2 switches the session to rev2 (UTF-8 folder names,
        # no \Recent, SEARCH answered with ESEARCH).
        if not args:
            raise Bad("ENABLE needs capability names")
        names = [wire.atom(a, "capability name").decode("ascii", "replace").upper()
                 for a in args]
        enabled = []
        for name in dict.fromkeys(n for n in names if n in ENABLE_NAMES):
            if name == "QRESYNC" and not self.qresync:
                self.qresync = self.condstore = True
                enabled.append(name)
            elif name == "CONDSTORE" and not self.condstore:
                self.condstore = True
                enabled.append(name)
            elif name == "IMAP4REV2" and not self.rev2:
                self.rev2 = True
                enabled.append(ENABLE_NAMES[name])
        self.sendUntaggedResponse(" ".join(["ENABLED", *enabled]).encode())
        return b"ENABLE completed"

    # -- QUOTA (RFC 9208) -------------------------------------------------------------
    # One quota root per user, named "" (all folders together, as Dovecot's
    # "User quota"), with one resource, STORAGE, in units of 1024 octets. A user
    # without a limit has no quota root. The administrator sets limits, so
    # SETQUOTA is refused.

    def _quota_line(self, usage) -> bytes:
        return b'QUOTA "" (STORAGE %d %d)' % (usage.used // 1024, usage.limit // 1024)

    def do_GETQUOTAROOT(self, tag: bytes, args: list, uid: bool) -> Any:
        wire.arity(args, 1)
        name = self._name(args[0])

        def answer(usage) -> bytes:
            if usage is None:
                self.sendUntaggedResponse(b"QUOTAROOT " + self._mailbox(name))
            else:
                self.sendUntaggedResponse(b"QUOTAROOT " + self._mailbox(name) + b' ""')
                self.sendUntaggedResponse(self._quota_line(usage))
            return b"GETQUOTAROOT completed"

        def check() -> Any:
            # NO [NONEXISTENT] for a folder that is not there; a list archive is
            # nobody's storage, so it has no quota root.
            _, shared = self.account._open_any(name)
            return None if shared else self.account.quota()

        return self._simple(check).addCallback(answer)

    def do_GETQUOTA(self, tag: bytes, args: list, uid: bool) -> Any:
        wire.arity(args, 1)
        root = wire.astring(args[0], "quota root")

        def answer(usage) -> bytes:
            if usage is None or root != b"":
                raise No("[NONEXISTENT] No such quota root")
            self.sendUntaggedResponse(self._quota_line(usage))
            return b"GETQUOTA completed"

        return self._simple(self.account.quota).addCallback(answer)

    def do_SETQUOTA(self, tag: bytes, args: list, uid: bool) -> bytes:
        wire.arity(args, 2)
        raise No("[NOPERM] Quotas are set by the administrator (mailgateway user quota)")

    # -- APPEND ---------------------------------------------------------------------

    def stage_upload(self, upload: Upload, data: bytes | bytearray | None) -> defer.Deferred:
        """Begin writing (and but for a literal8, rewritten first: syncing) an APPEND
        message in the pool (Account.stage). Its error, if any, is upload.error:
        append() raises it, so the Deferred itself never fails."""
        upload.staged = self.run_blocking(self.account.stage, upload, data, not upload.binary)
        return upload.staged.addErrback(lambda _: None)

    def do_APPEND(self, tag: bytes, args: list, uid: bool) -> Any:
        wire.arity(args, 2, 4)
        name = self._name(args[0])
        message, rest = args[-1], args[1:-1]
        if not isinstance(message, (Upload, Str)):
            raise Bad("APPEND needs the message as a literal")
        flags: list[str] = []
        date = None
        if rest and isinstance(rest[0], list):
            flags = flag_list(rest.pop(0))
        if rest:
            if not isinstance(rest[0], Str):
                raise Bad("bad APPEND arguments")
            date = append_date(rest.pop(0))
        if rest:
            raise Bad("bad APPEND arguments")
        if (len(message) if isinstance(message, Str) else message.size) == 0:
            raise No("[CANNOT] An empty message cannot be appended")
        if isinstance(message, Str):  # a literal that was not the message's (server.py)
            upload = Upload(self.account.upload_path(), len(message))
            self.stage_upload(upload, bytes(message))
        else:
            upload = message

        def done(result: tuple[int, int]) -> bytes:
            return b"[APPENDUID %d %d] APPEND completed" % result

        if upload.binary:  # RFC 3516 4.4: binary parts are kept base64 (binary.py)
            return upload.staged.addCallback(
                lambda _: self.run_blocking(binary.to_base64, upload)).addCallback(
                lambda _: self._simple(self.account.append, name, upload, flags, date)
            ).addCallback(done)
        later: defer.Deferred = defer.Deferred()

        def store() -> None:  # in the stage's thread, the message written
            try:
                result: Any = self.account.append(name, upload, flags, date)
            except BaseException:
                result = Failure()
            self.factory.call_from_thread(later.callback, result)

        # Still being written: the stage's thread stores it next. A pool call of its own
        # could open the folder meanwhile, but its dispatch, a thread's wake-up and the
        # reactor turn of its answer cost more (bench/RESULTS.md, 2026-11-27 14:50).
        if upload.leave_to_stage(store):
            return later.addCallback(done)
        return self._simple(self.account.append, name, upload, flags, date).addCallback(done)

    # -- IDLE (RFC 2177) ------------------------------------------------------------

    def do_IDLE(self, tag: bytes, args: list, uid: bool) -> None:
        wire.arity(args, 0)
        self.sendLine(b"+ idling")
        self._idle_tag = tag
        self.flush_updates(True)
        self._schedule_poll()
        return None

    def _schedule_poll(self) -> None:
        # Changes by this gateway arrive at once (view_woken); this looks for
        # those of other programs, cheaply (two stat() calls when nothing changed).
        if self.view is not None:
            self._idle_poll = self.factory.reactor.callLater(self.settings.poll_interval,
                                                             self._poll)

    def _poll(self) -> None:
        self._idle_poll = None
        if self._idle_tag is None or self.view is None or self._gone:
            return
        d = self.run_blocking(self.view.folder.sync)
        d.addErrback(lambda f: None)
        d.addCallback(lambda _: self._schedule_poll() if self._idle_tag is not None else None)

    def idle_line(self, line: bytes) -> None:
        tag, self._idle_tag = self._idle_tag, None
        if self._idle_poll is not None and self._idle_poll.active():
            self._idle_poll.cancel()
        self._idle_poll = None
        if line.upper() != b"DONE":
            # Twisted's IDLE ends on any line; RFC 2177 only on DONE.
            return self.bad(tag, "Expected DONE")
        self.flush_updates(True)
        self.sendPositiveResponse(tag, b"IDLE terminated")
