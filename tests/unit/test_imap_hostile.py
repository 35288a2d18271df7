"""Hostile IMAP clients (issue 11): bounded CPU and memory per command, over StringTransport.

Sessions are those of tests/unit/imap_dialogue.py: no sockets, store work inline.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from imap_dialogue import BOX, PASSWORD, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock

from gateway.access.imap.account import pattern_matcher

HERE = Path(__file__).parent


@pytest.fixture
def env(tmp_path):
    store = fresh_store(tmp_path)
    clock = MemoryReactorClock()

    def connect(peer: str = "127.0.0.1", **kw) -> Session:
        return Session(make_factory(store, clock, **kw), peer)

    connect.store, connect.clock = store, clock
    return connect


def selected(env, **kw) -> Session:
    for n in range(3):
        env.store.deliver(BOX, b"From: a@example.test\r\nSubject: note %d\r\n\r\n" % n
                          + b"body text %d\r\n" % n + b"x" * 1000 + b"\r\n", f"100{n}.U{n}.host")
    s = env(**kw)
    s.login()
    s("SELECT INBOX")
    return s


def last_line(out: bytes) -> bytes:
    return out.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]


# -- LIST/LSUB wildcards (RFC 3501 6.3.8) -------------------------------------------------

@pytest.mark.parametrize("pattern, name, matches", [
    ("*", "a.b.c", True), ("%", "a.b", False), ("%", "abc", True), ("a%", "a", True),
    ("a.%", "a.b", True), ("a.%", "a.b.c", False), ("a.*", "a.b.c", True),
    ("*b", "a.b", True), ("*b", "a.bc", False), ("a*c", "abc", True), ("a*c", "ab", False),
    ("%.%", "a.b", True), ("%.%", "a", False), ("", "", True), ("", "a", False),
    ("INBOX", "INBOX", True), ("IN%X", "INBOX", True), ("*%*", "x.y", True),
    ("a%%b", "a.b", False), ("a**b", "a.x.b", True),
])
def test_wildcards_match_as_rfc3501_says(pattern, name, matches):
    assert pattern_matcher(pattern)(name) is matches


def test_wildcards_agree_with_a_reference_on_many_patterns():
    import itertools

    def reference(pattern: str) -> re.Pattern[str]:
        return re.compile("".join(".*" if c == "*" else "[^.]*" if c == "%" else re.escape(c)
                                  for c in pattern), re.DOTALL)

    names = ["", "a", "b", "ab", "a.b", "a.b.a", "ba.", ".a", "aab.b"]
    for n in range(5):
        for chars in itertools.product("ab.*%", repeat=n):
            pattern = "".join(chars)
            ours, ref = pattern_matcher(pattern), reference(pattern)
            for name in names:
                assert ours(name) == bool(ref.fullmatch(name)), (pattern, name)


def test_lsub_with_a_backtracking_pattern_answers_at_once(tmp_path):
    # With a backtracking regex this LSUB runs for days (each "*a" multiplies
    # the work by about six) and holds the interpreter: the whole gateway
    # freezes. A child process keeps a regression from hanging the test run.
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(HERE)!r})
        from pathlib import Path
        from imap_dialogue import BOX, Session, fresh_store, make_factory
        from twisted.internet.testing import MemoryReactorClock
        s = Session(make_factory(fresh_store(Path({str(tmp_path)!r})), MemoryReactorClock()))
        s.login()
        s("CREATE " + "a" * 60)
        s("SUBSCRIBE " + "a" * 60)
        out = s('LSUB "" "' + "*a" * 40 + 'b"')
        print(out.decode().splitlines()[-1])
        out = s('LSUB "" "' + "*a" * 40 + '"')
        print(out.decode().splitlines()[0])
    """)
    # The bound only turns a hang into a failure; the matcher takes milliseconds.
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["a4 OK LSUB completed",
                                        '* LSUB (\\HasNoChildren) "." "' + "a" * 60 + '"']


# -- SEARCH: bounded parsing and cost ----------------------------------------------------

@pytest.mark.parametrize("keys", [
    "(" * 20000 + "ALL" + ")" * 20000,
    "NOT " * 8000 + "ALL",
    "OR " * 5000 + "ALL " * 5001,
])
def test_deeply_nested_search_is_refused_with_bad_not_a_traceback(env, keys):
    s = selected(env)
    out = s("SEARCH " + keys, expect=b"BAD")
    assert b"nested deeper than 32" in out and b"SERVERBUG" not in out
    assert s("SEARCH OR SUBJECT note NOT (SUBJECT 1) ALL").startswith(b"* SEARCH 1 2 3\r\n")


def test_nesting_limit_is_the_setting(env):
    s = selected(env, imap={"max_nesting": 3})
    assert s("SEARCH NOT NOT NOT ALL").startswith(b"* SEARCH\r\n")
    assert b"nested deeper than 3" in s("SEARCH NOT NOT NOT NOT ALL", expect=b"BAD")
    assert b"nested deeper than 3" in s("FETCH 1 (((((FLAGS)))))", expect=b"BAD")


def test_too_many_search_keys_get_no_limit(env):
    s = selected(env, imap={"max_search_keys": 10})
    assert s("SEARCH " + "SUBJECT note " * 10).startswith(b"* SEARCH 1 2 3\r\n")
    out = s("SEARCH " + "SUBJECT note " * 11, expect=b"NO")
    assert last_line(out) == b"a4 NO [LIMIT] more than 10 search keys"


def test_search_reading_more_than_the_byte_budget_gets_no_limit(env):
    s = selected(env, imap={"max_search_bytes": 2500})
    assert s("SEARCH SUBJECT note").startswith(b"* SEARCH 1 2 3\r\n")  # the index: no reads
    assert s("SEARCH 1:2 BODY text").startswith(b"* SEARCH 1 2\r\n")  # two messages fit
    out = s("SEARCH BODY text", expect=b"NO")
    assert b"[LIMIT] SEARCH would read more than 2500 octets" in last_line(out)


# -- a client that does not read its replies -----------------------------------------

def test_client_that_does_not_read_replies_stops_being_read(env):
    s = env()
    s.transport.producer.pauseProducing()  # the socket's send buffer is full
    assert s.transport.producerState == "paused"
    assert s.raw(b"".join(b"c%d CAPABILITY\r\n" % n for n in range(500))) == b""
    s.transport.producer.resumeProducing()  # the client read its replies
    out = s.take()
    assert out.count(b" OK CAPABILITY completed\r\n") == 500
    assert s.transport.producerState == "producing"


def test_client_is_not_read_while_a_command_is_busy(env):
    from twisted.internet import defer

    pending = []

    def later(f, *args):
        d = defer.Deferred()
        pending.append((d, f, args))
        return d

    s = env(run_blocking=later)
    assert s.raw(b"a1 LOGIN " + BOX.encode() + b' "' + PASSWORD.encode() + b'"\r\n') == b""
    assert pending  # the password check is the fake directory's, at once; opening waits
    # A client that waits for the answer sends nothing: the transport reads on (no
    # epoll_ctl per command). Input that comes meanwhile is held, unread further.
    assert s.transport.producerState == "producing"
    assert s.raw(b"a2 NOOP\r\n") == b""  # pipelined behind the busy LOGIN: not run yet
    assert s.transport.producerState == "paused"
    while pending:
        assert s.transport.producerState == "paused"
        d, f, args = pending.pop(0)
        d.callback(f(*args))
    out = s.take()
    assert b"] Logged in\r\n" in out and out.endswith(b"a2 OK NOOP completed\r\n"), out
    assert out.index(b"] Logged in") < out.index(b"a2 OK")
    assert s.transport.producerState == "producing"


# -- literals: bounded per command and before login ----------------------------------

def test_literals_before_login_are_bounded_in_all(env):
    s = env(imap={"max_unauthenticated_literals": 100})
    assert s.raw(b"a1 LOGIN {60}\r\n") == b"+ Ready for literal data\r\n"
    out = s.raw(b"x" * 60 + b" {41}\r\n")
    assert out == b"a1 NO [TOOBIG] Literals of this command over the limit of 100 octets\r\n"
    # LITERAL+: the refused literal is skipped unread, then the session goes on
    assert s.raw(b"a2 LOGIN {60+}\r\n" + b"x" * 60 + b" {41+}\r\n" + b"y" * 41 + b"\r\n") \
        == b"a2 NO [TOOBIG] Literals of this command over the limit of 100 octets\r\n"
    assert s("NOOP").endswith(b"OK NOOP completed\r\n")


def test_literals_of_one_command_are_bounded_after_login(env):
    s = env(imap={"max_command_literals": 1000})
    s.login()
    s("SELECT INBOX")
    s.raw(b"a9 SEARCH TEXT {600}\r\n")
    out = s.raw(b"x" * 600 + b" TEXT {401}\r\n")
    assert out == b"a9 NO [TOOBIG] Literals of this command over the limit of 1000 octets\r\n"


# -- deadlines per phase ----------------------------------------------------------------

def test_login_timeout_is_total_not_restarted_by_commands(env):
    s = env(imap={"login_timeout": 60})
    for _ in range(29):
        env.clock.advance(2)
        s("NOOP")
    env.clock.advance(2)
    assert s.take() == b"* BYE Autologout; no login within 60 seconds\r\n"
    assert s.transport.disconnecting


def test_login_timeout_stops_at_login(env):
    s = env(imap={"login_timeout": 60})
    s.login()
    env.clock.advance(120)
    assert s.take() == b"" and not s.transport.disconnecting


def test_a_literal_trickling_in_meets_its_deadline(env):
    s = env(imap={"literal_timeout": 30})
    s.login()
    s.raw(b"a5 APPEND INBOX {1000}\r\n")
    for _ in range(14):
        env.clock.advance(2)
        s.raw(b"x")
    env.clock.advance(2)
    assert s.take() == b"* BYE Literal not received within 30 seconds\r\n"
    assert s.transport.disconnected
    s.drop()  # what the reactor does next: the partial upload is removed
    assert list((env.store.mailbox_path(BOX) / "tmp").iterdir()) == []


# -- 8-bit header bytes any sender can deliver -----------------------------------------

RAW_8BIT = (b"From: J\xfcrgen <j@example.test>\r\nTo: a@example.test\r\n"
            b"Subject: caf\xe9 \xff\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nbody\r\n")


def test_raw_8bit_headers_are_served_and_searchable(env):
    env.store.deliver(BOX, RAW_8BIT, "1.U1.host")
    env.store.deliver(BOX, b"Subject: plain\r\n\r\nx\r\n", "2.U2.host")
    s = env()
    s.login()
    s("SELECT INBOX")
    out = s("FETCH 1:2 ENVELOPE")
    # RFC 3501 4.3: 8-bit is allowed in literals; the bytes go out as delivered.
    assert b' {6}\r\ncaf\xe9 \xff (({6}\r\nJ\xfcrgen NIL "j" "example.test"))' in out
    assert b'* 2 FETCH (ENVELOPE (NIL "plain"' in out
    out = s("FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
    assert b"{19}\r\nSubject: caf\xe9 \xff\r\n\r\n)" in out
    # Unlabelled 8-bit that is not UTF-8 reads as Latin-1: "café" finds it.
    assert s("SEARCH CHARSET UTF-8 SUBJECT caf\xc3\xa9".encode("latin-1")).startswith(
        b"* SEARCH 1\r\n")
    assert s("SEARCH FROM jürgen".encode()).startswith(b"* SEARCH 1\r\n")
    assert s("SEARCH HEADER Subject caf").startswith(b"* SEARCH 1\r\n")
    assert s("SEARCH NOT SUBJECT caf").startswith(b"* SEARCH 2\r\n")


def test_a_pipelined_flood_is_served_in_slices_between_other_clients(env):
    s = env()
    s.proto.dataReceived(b"".join(b"c%d NOOP\r\n" % n for n in range(300)))
    assert s.transport.value().count(b" OK NOOP completed\r\n") == 64
    assert s.take().count(b" OK NOOP completed\r\n") == 300
