"""The first SEARCH's header fields parsed partly in a child process (issue 12).

access/imap/fieldsworker.py and searchfields.fill(process_min): past [imap]
search_process_min heads to read, a child parses a share of them. The rows
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


def spy_start(monkeypatch, before=None) -> list[list[str]]:
    """Record the paths each child is given (before: called with them first)."""
    given: list[list[str]] = []
    real = fieldsworker.start

    def start(paths, head_read):
        given.append(list(paths))
        if before is not None:
            before(paths)
        return real(paths, head_read)

    monkeypatch.setattr(fieldsworker, "start", start)
    return given


def test_a_child_parses_a_share_and_the_rows_are_those_of_one_thread(folder, monkeypatch):
    given = spy_start(monkeypatch)
    uids = list(folder.uids)
    searchfields.fill(folder, uids, process_min=len(uids))
    assert len(given) == 1
    share = len(given[0])
    assert 0 < share < len(uids)  # a share, not all: the search thread did the rest
    assert share == int(len(uids) * fieldsworker.CHILD_SHARE)
    assert rows_of(folder) == expected(folder)


def test_below_the_setting_or_at_zero_no_child_starts(folder, monkeypatch):
    given = spy_start(monkeypatch)
    uids = list(folder.uids)
    searchfields.fill(folder, uids, process_min=len(uids) + 1)
    folder.index.db.execute("DELETE FROM fieldpacks")
    searchfields.fill(folder, uids, process_min=0)
    assert given == []
    assert rows_of(folder) == expected(folder)


def test_what_the_child_cannot_read_is_read_by_the_search_thread(folder, monkeypatch):
    """A file renamed after its path was given (a STORE by another program) and a header
    block longer than one read come back as None; the parent finds them as it always did."""

    def rename_one(paths):
        old = paths[0]
        os.rename(old, old.split(":")[0] + ":2,S")

    given = spy_start(monkeypatch, rename_one)
    uids = list(folder.uids)
    searchfields.fill(folder, uids, process_min=1)
    assert given and given[0][-1].endswith(f".U{len(uids) - 1}.host")  # the long one
    assert rows_of(folder) == expected(folder)
    long_uid = uids[-1]
    assert rows_of(folder)[long_uid][0] == b"long@example.org"


def test_a_child_that_fails_leaves_its_share_to_the_search_thread(folder, monkeypatch):
    monkeypatch.setattr(fieldsworker, "_ROOT", "/nonexistent")  # its import fails
    given = spy_start(monkeypatch)
    uids = list(folder.uids)
    searchfields.fill(folder, uids, process_min=1)
    assert given
    assert rows_of(folder) == expected(folder)


def test_answers_come_in_batches_and_a_broken_stream_ends_them(monkeypatch):
    class Proc:
        def __init__(self, out: bytes) -> None:
            self.stdout = io.BytesIO(out)

    def batches(out: bytes) -> list:
        errors = io.BytesIO()
        return list(fieldsworker.Child(Proc(out), errors).batches())

    ok = (2, [1], b"a", b"b", b"", b"", b"s", fieldpack.ints([1], "i"))
    assert batches(marshal.dumps(ok) + marshal.dumps(ok)) == [ok, ok]
    assert batches(marshal.dumps(ok) + b"not marshal") == [ok]
    assert batches(marshal.dumps(ok) + marshal.dumps({"x": 1})) == [ok]
    assert batches(marshal.dumps(ok) + marshal.dumps(ok[:7])) == [ok]
    assert batches(b"") == []


def pack_of(n: int, left: list[int], fields: list[tuple]) -> tuple:
    """A child's batch (fieldsworker.work) of n paths."""
    columns = list(zip(*fields, strict=True)) if fields else [()] * 6
    return (n, left, *(fieldpack.join(c) for c in columns[:5]),
            fieldpack.ints(columns[5], "i"))


@pytest.mark.parametrize("lie", ["more paths", "a position past them", "too few values",
                                 "not bytes"])
def test_a_child_that_answers_wrongly_is_not_believed(folder, lie):
    """A batch that does not fit the paths given (a child gone wrong) is dropped, with
    all after it, and what they would have covered is parsed by the search thread."""
    uids = list(folder.uids)
    theirs = uids[-3:]
    x = (b"x", b"", b"", b"", b"", -1)
    bad = {"more paths": pack_of(4, [], [x] * 4),
           "a position past them": pack_of(3, [5], [x] * 3),
           "too few values": pack_of(3, [], [x] * 2),
           "not bytes": (3, [], "x", b"", b"", b"", b"", fieldpack.ints([-1] * 3, "i"))}

    class Liar:
        def batches(self):
            yield pack_of(1, [], [x])  # believed: the first path's fields as told
            yield bad[lie]
            yield pack_of(1, [], [x])

    searchfields._put_answers(folder, theirs, Liar())
    want = expected(folder)
    assert rows_of(folder) == {theirs[0]: x, **{u: want[u] for u in theirs[1:]}}


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
    """main() as the child runs it, in this process: NUL-separated paths in, marshal out."""
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
    records = io.BytesIO(stdout.buffer.getvalue())
    got = [marshal.load(records), marshal.load(records)]
    assert got == [pack_of(2, [1], [searchfields.of_head(HEADS[0])]), pack_of(1, [0], [])]
    assert records.read() == b""


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
