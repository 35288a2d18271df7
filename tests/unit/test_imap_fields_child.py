"""The first SEARCH's header fields parsed partly in a child process (issue 12).

access/imap/fieldsworker.py and searchfields.fill(process_min): past [imap]
search_process_min heads to read, a child parses them from the end while the
search thread parses from the start, until they meet. The rows
must be exactly those the search thread makes alone, whatever the child could
not do (a file renamed meanwhile, a header block longer than one read) or if
it fails as a whole. (One real child per test that needs one: about 0.1 s.)
"""

from __future__ import annotations

import io
import marshal
import os
import sqlite3
import sys

import pytest
from imap_dialogue import BOX, Session, fresh_store, make_factory
from test_imap_search_index import HEADS
from twisted.internet.testing import MemoryReactorClock

from gateway.access.imap import fieldsworker, searchfields
from gateway.config import parse
from gateway.store import fieldpack
from gateway.store.folder import HEAD_READ

LONG = (b"From: long@example.org\r\nX-Long: " + b"y" * (HEAD_READ + 50)
        + b"\r\nSubject: past\r\n\r\n")


# The positions (UID - 1) of the heads longer than one read in the folder below.
LONGS = [n for n, h in enumerate(HEADS * 3 + [LONG]) if len(h) >= HEAD_READ]


@pytest.fixture
def folder(tmp_path):
    store = fresh_store(tmp_path)
    messages = [h + b"body\r\n" for h in HEADS] * 3 + [LONG + b"body\r\n"]
    for n, data in enumerate(messages):
        store.deliver(BOX, data, f"{1000 + n}.U{n}.host")
    folder = store.open_folders(BOX).open("INBOX")
    folder.store = store
    return folder


def rows_of(folder) -> dict[int, tuple]:
    return folder.index.field_rows()


def expected(folder) -> dict[int, tuple]:
    return {u: searchfields.of_head(folder.read_head(u)) for u in folder.uids}


def spy_start(monkeypatch, before=None, finish=False) -> list[list[str]]:
    """Record the paths each child is given (before: called with them first; finish:
    the search thread goes on only once the child has done all of them)."""
    given: list[list[str]] = []
    real = fieldsworker.start

    def start(paths, head_read):
        given.append(list(paths))
        if before is not None:
            before(paths)
        child = real(paths, head_read)
        if finish and child is not None:
            child.proc.wait(timeout=30)
        return child

    monkeypatch.setattr(fieldsworker, "start", start)
    return given


def count_parsed_here(monkeypatch) -> list[int]:
    """The heads the search thread parses itself (the child has its own of_head)."""
    parsed: list[int] = []
    real = searchfields.of_head
    monkeypatch.setattr(searchfields, "of_head", lambda head: parsed.append(1) or real(head))
    return parsed


def names(folder, uids) -> list[str]:
    return [folder.file_name(u) for u in uids]


def test_the_child_is_given_every_head_backwards_and_the_rows_are_those_of_one_thread(
        folder, monkeypatch):
    monkeypatch.setattr(searchfields, "_STEP", 1)  # many looks at the child's progress
    given = spy_start(monkeypatch)
    uids = list(folder.uids)
    searchfields.fill(folder, uids, process_min=len(uids))
    assert given == [names(folder, uids[::-1])]
    assert rows_of(folder) == expected(folder)


def test_a_child_done_first_leaves_the_search_thread_only_what_it_could_not_do(
        folder, monkeypatch):
    """The child answered everything before the search thread looked: the thread
    parses only the heads longer than one read, nothing else."""
    spy_start(monkeypatch, finish=True)
    parsed = count_parsed_here(monkeypatch)
    uids = list(folder.uids)
    searchfields.fill(folder, uids, process_min=len(uids))
    assert len(parsed) == len(LONGS) == 4
    assert rows_of(folder) == expected(folder)


class Scripted:
    """A child whose records come one per look, as fieldsworker.work makes them."""

    def __init__(self, records: list[tuple]) -> None:
        self.records, self.over, self.stopped = list(records), False, False

    def ready(self) -> list[tuple]:
        return [] if self.over or not self.records else [self.records.pop(0)]

    def stop(self) -> None:
        self.stopped = True


def test_the_search_thread_and_its_child_meet_in_the_middle(folder, monkeypatch):
    """Each look finds one more record of 3 (from the end) while the thread parses 2
    (from the start): they stop where they meet, neither doing the whole."""
    monkeypatch.setattr(searchfields, "_STEP", 2)
    monkeypatch.setattr(fieldsworker, "BATCH", 3)
    children: list[Scripted] = []
    uids = list(folder.uids)
    records = list(fieldsworker.work([os.fsencode(p) for p in names(folder, uids[::-1])],
                                     HEAD_READ))

    def start(paths, head_read):
        assert paths == names(folder, uids[::-1])
        children.append(Scripted(records))
        return children[-1]

    monkeypatch.setattr(fieldsworker, "start", start)
    parsed = count_parsed_here(monkeypatch)
    searchfields.fill(folder, uids, process_min=1)
    # 64 messages: after 13 looks the child has done 39, the thread 25; the 14th
    # look finds 3 more (done by both) and the thread stops. The long heads among
    # the child's 42 (not the thread's 25) are left to the thread.
    assert len(parsed) == 25 + len([i for i in LONGS if i >= 64 - 42])
    assert len(children[0].records) == 22 - 14 and children[0].stopped
    assert rows_of(folder) == expected(folder)


def test_what_the_child_cannot_read_is_read_by_the_search_thread(folder, monkeypatch):
    """A file renamed after its path was given (a STORE by another program) and a header
    block longer than one read come back as left to the parent, which finds them as it
    always did."""

    def rename_one(paths):
        old = paths[1]
        os.rename(old, old.split(":")[0] + ":2,S")

    given = spy_start(monkeypatch, rename_one, finish=True)
    parsed = count_parsed_here(monkeypatch)
    uids = list(folder.uids)
    searchfields.fill(folder, uids, process_min=1)
    assert given and given[0][0].endswith(f".U{len(uids) - 1}.host")  # the long one
    assert len(parsed) == len(LONGS) + 1
    assert rows_of(folder) == expected(folder)
    long_uid = uids[-1]
    assert rows_of(folder)[long_uid][0] == b"long@example.org"


def test_a_child_that_fails_leaves_its_share_to_the_search_thread(folder, monkeypatch):
    monkeypatch.setattr(fieldsworker, "_ROOT", "/nonexistent")  # its import fails
    given = spy_start(monkeypatch, finish=True)
    uids = list(folder.uids)
    searchfields.fill(folder, uids, process_min=1)
    assert given
    assert rows_of(folder) == expected(folder)


def framed(*records) -> bytes:
    out = b""
    for r in records:
        data = r if isinstance(r, bytes) else marshal.dumps(r)
        out += len(data).to_bytes(4, "little") + data
    return out


def test_records_come_as_they_are_whole_and_a_broken_stream_ends_them():
    class Proc:
        def __init__(self, fd: int) -> None:
            self.stdout = os.fdopen(fd, "rb")

    def child(out: bytes, more: bytes | None = None) -> tuple[list, list]:
        r, w = os.pipe()
        c = fieldsworker.Child(Proc(r), io.BytesIO())
        try:
            os.write(w, out)
            first = c.ready()
            if more is not None:
                os.write(w, more)
            os.close(w)
            w = -1
            return first, c.ready() + c.ready()
        finally:
            if w >= 0:
                os.close(w)
            c.proc.stdout.close()

    ok = (2, [1], b"a", b"b", b"", b"", b"s", fieldpack.ints([1], "i"))
    whole = framed(ok)
    assert child(whole + whole[:7], whole[7:]) == ([ok], [ok])  # a record split in two
    assert child(whole + framed(b"not marshal") + whole) == ([ok], [])
    assert child(whole + framed({"x": 1}) + whole) == ([ok], [])
    assert child(whole + framed(ok[:7])) == ([ok], [])
    assert child(b"") == ([], [])


def pack_of(n: int, left: list[int], fields: list[tuple]) -> tuple:
    """A child's record (fieldsworker.work) of n paths."""
    columns = list(zip(*fields, strict=True)) if fields else [()] * 6
    return (n, left, *(fieldpack.join(c) for c in columns[:5]),
            fieldpack.ints(columns[5], "i"))


@pytest.mark.parametrize("lie", ["more paths", "a position past them", "too few values",
                                 "not bytes"])
def test_a_child_that_answers_wrongly_is_not_believed(folder, lie):
    """A record that does not fit the paths given (a child gone wrong) is dropped, with
    all after it, and what they would have covered is parsed by the search thread."""
    uids = list(folder.uids)
    todo = uids[-3:]
    x = (b"x", b"", b"", b"", b"", -1)
    bad = {"more paths": pack_of(4, [], [x] * 4),
           "a position past them": pack_of(3, [5], [x] * 3),
           "too few values": pack_of(2, [], [x] * 1),
           "not bytes": (2, [], "x", b"", b"", b"", b"", fieldpack.ints([-1] * 2, "i"))}

    class Liar(Scripted):
        def ready(self):
            return [] if self.over else [pack_of(1, [], [x]), bad[lie], pack_of(1, [], [x])]

    searchfields._share(folder, todo, todo[::-1], Liar([]))
    want = expected(folder)
    assert rows_of(folder) == {todo[-1]: x, todo[0]: want[todo[0]], todo[1]: want[todo[1]]}


def test_a_search_that_fails_ends_its_child(folder, monkeypatch):
    started = []
    real = fieldsworker.start
    monkeypatch.setattr(fieldsworker, "start",
                        lambda paths, head_read: started.append(real(paths, head_read))
                        or started[-1])

    def broken(rows):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(folder, "put_fields", broken)
    with pytest.raises(sqlite3.OperationalError):
        searchfields.fill(folder, list(folder.uids), process_min=1)
    assert started and started[0].proc.returncode is not None  # ended and reaped


def test_the_child_reads_paths_and_answers_in_their_order(tmp_path, monkeypatch):
    """main() as the child runs it, in this process: NUL-separated paths in, records out."""
    short, long, gone = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    short.write_bytes(HEADS[0] + b"body\r\n")
    long.write_bytes(LONG)
    stdin = io.TextIOWrapper(io.BytesIO(b"\0".join(os.fsencode(p) for p in (short, long, gone))))
    stdout = io.TextIOWrapper(io.BytesIO())
    monkeypatch.setattr(sys, "stdin", stdin)
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "argv", ["child", str(HEAD_READ)])
    monkeypatch.setattr(fieldsworker, "BATCH", 2)
    gc_was = fieldsworker.gc.isenabled()
    try:
        fieldsworker.main()
    finally:
        if gc_was:
            fieldsworker.gc.enable()
    assert stdout.buffer.getvalue() == framed(pack_of(2, [1], [searchfields.of_head(HEADS[0])]),
                                              pack_of(1, [0], []))


def test_search_process_min_is_a_named_setting_and_reaches_the_fill(tmp_path, monkeypatch):
    assert parse({"server": {"domains": ["example.test"]}}).imap.search_process_min == 20000
    with pytest.raises(Exception, match="search_process_min"):
        parse({"server": {"domains": ["example.test"]}, "imap": {"search_process_min": -1}})
    store = fresh_store(tmp_path)
    store.deliver(BOX, HEADS[0] + b"body\r\n", "1000.U1.host")
    seen = []
    real = searchfields.fill
    monkeypatch.setattr(searchfields, "fill",
                        lambda folder, uids, process_min=0: seen.append(process_min)
                        or real(folder, uids, process_min))
    s = Session(make_factory(store, MemoryReactorClock(), imap={"search_process_min": 7}))
    s.login()
    s("SELECT INBOX")
    assert s("SEARCH FROM dana").startswith(b"* SEARCH 1\r\n")
    assert seen == [7]
