"""access/imap driven over StringTransport (tests/unit/imap_dialogue.py): no sockets."""

from __future__ import annotations

import base64
import os
import re

import pytest
from imap_dialogue import BOX, PASSWORD, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock

MULTIPART = (
    b"From: =?utf-8?q?B=C3=B6b?= <bob@example.test>\r\nTo: Alice <alice@example.test>, "
    b"carol@example.test\r\nCc: dave@example.test\r\nSubject: Quarterly report\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <r1@example.test>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
    b"preamble\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"The numbers are up.\r\n--XX\r\nContent-Type: application/pdf; name=r.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"r.pdf\""
    b"\r\n\r\nJVBERi0=\r\n--XX--\r\n")
PLAIN = (b"From: erin@example.test\r\nTo: alice@example.test\r\nSubject: lunch?\r\n"
         b"Date: Tue, 2 Jan 2024 12:00:00 +0100\r\n\r\n.dot line\r\n\xc3\xa9t\xc3\xa9\r\n")


@pytest.fixture
def env(tmp_path):
    store = fresh_store(tmp_path)
    store.deliver(BOX, MULTIPART, "1000.U1.host")
    store.deliver(BOX, PLAIN, "1001.U2.host")
    root = store.mailbox_path(BOX)
    os.utime(root / "new" / "1000.U1.host", (1704103200, 1704103200))  # 2024-01-01 10:00 UTC
    os.utime(root / "new" / "1001.U2.host", (1704200000, 1704200000))  # 2024-01-02
    clock = MemoryReactorClock()

    def connect(peer: str = "127.0.0.1", **kw) -> Session:
        return Session(make_factory(store, clock, **kw), peer)

    connect.store, connect.root, connect.clock = store, root, clock
    return connect


def selected(env) -> Session:
    s = env()
    s.login()
    s("SELECT INBOX")
    return s


def literal(out: bytes, name: bytes) -> bytes:
    m = re.search(re.escape(name) + rb" \{(\d+)\}\r\n", out)
    assert m, out
    return out[m.end():m.end() + int(m.group(1))]


# -- greeting, capabilities, login -----------------------------------------------------

def test_remote_plaintext_client_sees_logindisabled_and_cannot_login(env):
    s = env(peer="192.0.2.9")
    assert b"LOGINDISABLED" in s.greeting and b"STARTTLS" in s.greeting
    assert b"AUTH=PLAIN" not in s.greeting
    assert b"[PRIVACYREQUIRED]" in s(f"LOGIN {BOX} x", expect=b"NO")
    assert s.proto.factory.users.calls == []


def test_starttls_drops_pipelined_plaintext_and_then_allows_login(env):
    s = env(peer="192.0.2.9")
    out = s.raw(b"t1 STARTTLS\r\nt2 LOGIN " + BOX.encode() + b' "' + PASSWORD.encode()
                + b'"\r\n')
    assert out == b"t1 OK Begin TLS negotiation now\r\n"  # t2 was never answered
    assert s.transport.tls_started_with is s.proto.factory.tls_options
    assert s.proto.factory.users.calls == []
    caps = s("CAPABILITY")
    assert b"AUTH=PLAIN" in caps and b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps
    s.login()


def test_authenticate_plain_with_initial_response_and_continuation(env):
    token = base64.b64encode(b"\0" + BOX.encode() + b"\0" + PASSWORD.encode())
    s = env()
    assert b"Logged in" in s(b"AUTHENTICATE PLAIN " + token)
    t = env()
    assert t(b"AUTHENTICATE PLAIN", expect=None) == b"+ \r\n"
    assert t.raw(token + b"\r\n").startswith(b"a1 OK [CAPABILITY")
    u = env()
    u(b"AUTHENTICATE PLAIN", expect=None)
    assert u.raw(b"*\r\n") == b"a1 BAD Authentication cancelled\r\n"


def test_failed_login_answers_after_a_delay_and_closes_after_three(env):
    s = env()
    assert s(f"LOGIN {BOX} wrong", expect=None) == b""
    assert s.raw(b"x NOOP\r\n") == b""  # waits behind the failed login
    env.clock.advance(1)
    assert s.take() == (b"a1 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
                        b"x OK NOOP completed\r\n")
    for _ in range(2):
        s(f"LOGIN {BOX} wrong", expect=None)
        env.clock.advance(1)
    assert s.take().endswith(b"* BYE Too many failed logins\r\n")
    assert s.transport.disconnecting


# -- SELECT, FETCH ----------------------------------------------------------------------

def test_select_reports_counts_uids_and_flags(env):
    s = env()
    s.login()
    out = s("SELECT INBOX")
    assert b"* 2 EXISTS\r\n* 2 RECENT\r\n* OK [UNSEEN 1]" in out
    assert re.search(rb"\* OK \[UIDVALIDITY \d+\]", out)
    assert b"* OK [UIDNEXT 3]" in out and out.endswith(b"OK [READ-WRITE] SELECT completed\r\n")
    assert b"[READ-ONLY]" in s("EXAMINE INBOX")


def test_fetch_body_is_byte_exact_and_peek_keeps_unseen(env):
    s = selected(env)
    out = s("FETCH 2 (BODY.PEEK[] RFC822.SIZE)")
    assert literal(out, b"BODY[]") == PLAIN
    assert b"RFC822.SIZE %d" % len(PLAIN) in out
    assert b"FLAGS" not in out
    out = s("FETCH 2 BODY[TEXT]")
    assert literal(out, b"BODY[TEXT]") == b".dot line\r\n\xc3\xa9t\xc3\xa9\r\n"
    assert b"FLAGS (\\Seen \\Recent)" in out  # the implied \Seen is told
    assert [n for n in os.listdir(env.root / "cur") if n.startswith("1001")] == [
        "1001.U2.host:2,S"]


def test_partial_fetch_returns_only_the_octets_asked_for(env):
    s = selected(env)
    out = s("FETCH 2 BODY.PEEK[]<5.10>")
    assert literal(out, b"BODY[]<5>") == PLAIN[5:15]  # Twisted sent it all (issue 5613)
    assert b'BODY[]<9999> ""' in s("FETCH 2 BODY.PEEK[]<9999.10>")


def test_fetch_sections_of_a_multipart(env):
    s = selected(env)
    out = s("FETCH 1 (BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[HEADER.FIELDS (SUBJECT To)] "
            "BODY.PEEK[HEADER.FIELDS.NOT (Subject To Cc From Date Message-ID MIME-Version)])")
    assert literal(out, b"BODY[1]") == b"The numbers are up."
    assert literal(out, b"BODY[2.MIME]") == (
        b"Content-Type: application/pdf; name=r.pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename=\"r.pdf\"\r\n\r\n")
    assert literal(out, b"BODY[HEADER.FIELDS (SUBJECT To)]") == (
        b"To: Alice <alice@example.test>, carol@example.test\r\nSubject: Quarterly report"
        b"\r\n\r\n")
    assert literal(out, b"BODY[HEADER.FIELDS.NOT (Subject To Cc From Date Message-ID "
                        b"MIME-Version)]") == (
        b"Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n")


# RFC 3501 9: body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
_STRING = rb'(?:NIL|"[^"]*"|\d+)'
_PARAMS = rb'(?:NIL|\((?:"[^"]*" "[^"]*" ?)+\))'


def test_multipart_bodystructure_matches_the_grammar(env):
    s = selected(env)
    out = s("FETCH 1 BODYSTRUCTURE")
    text_part = (rb'\("TEXT" "PLAIN" ' + _PARAMS + rb" NIL NIL \"7BIT\" 19 1 NIL NIL NIL NIL\)")
    pdf_part = (rb'\("APPLICATION" "PDF" \("NAME" "r.pdf"\) NIL NIL "BASE64" 8 NIL '
                rb'\("ATTACHMENT" \("FILENAME" "r.pdf"\)\) NIL NIL\)')
    assert re.search(rb"BODYSTRUCTURE \(" + text_part + pdf_part
                     + rb' "MIXED" \("BOUNDARY" "XX"\) NIL NIL NIL\)\)', out), out
    assert b'BODY (("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 19 1)' in s(
        "FETCH 1 BODY")


def test_envelope_keeps_encoded_words_and_splits_addresses(env):
    s = selected(env)
    out = s("FETCH 1 ENVELOPE")
    bob = b'(("=?utf-8?q?B=C3=B6b?=" NIL "bob" "example.test"))'
    assert (b'ENVELOPE ("Mon, 1 Jan 2024 10:00:00 +0000" "Quarterly report" ' + bob + b" "
            + bob + b" " + bob + b' (("Alice" NIL "alice" "example.test") '
            b'(NIL NIL "carol" "example.test")) ((NIL NIL "dave" "example.test")) NIL NIL '
            b'"<r1@example.test>")') in out


def test_uid_fetch_of_everything_and_internaldate(env):
    s = selected(env)
    out = s("UID FETCH 1:* (FLAGS INTERNALDATE)")
    assert b'* 1 FETCH (UID 1 FLAGS (\\Recent) INTERNALDATE "01-Jan-2024 10:00:00 +0000")' in out
    assert b"* 2 FETCH (UID 2 FLAGS (\\Recent)" in out


# -- SEARCH -----------------------------------------------------------------------------

@pytest.mark.parametrize("key,found", [
    ("ALL", b"1 2"), ("FROM böb", b"1"), ("FROM BOB@EXAMPLE", b"1"), ("FROM zed", b""),
    ("TO carol", b"1"), ("TO zed", b""), ("CC dave", b"1"), ("CC carol", b""),
    ("BCC anyone", b""), ("SUBJECT QUARTERLY", b"1"), ("SUBJECT dinner", b""),
    ("BODY numbers", b"1"), ("BODY lunch", b""), ("TEXT lunch", b"2"), ("TEXT nothing", b""),
    ("HEADER Message-ID r1@", b"1"), ("HEADER X-Nope x", b""),
    ("SINCE 2-Jan-2024", b"2"), ("BEFORE 2-Jan-2024", b"1"), ("ON 1-Jan-2024", b"1"),
    ("ON 3-Jan-2024", b""), ("SENTSINCE 2-Jan-2024", b"2"), ("SENTBEFORE 1-Jan-2024", b""),
    ("SENTON 1-Jan-2024", b"1"), ("LARGER 400", b"1"), ("SMALLER 400", b"2"),
    ("LARGER 99999", b""), ("UNSEEN", b"1 2"), ("SEEN", b""), ("RECENT", b"1 2"),
    ("NEW", b"1 2"), ("OLD", b""), ("FLAGGED", b""), ("UNFLAGGED", b"1 2"),
    ("NOT FROM bob", b"2"), ("OR FROM bob FROM erin", b"1 2"), ("OR FROM qq FROM zz", b""),
    ("UID 2", b"2"), ("UID 5:9", b""), ("2", b"2"), ("1:*", b"1 2"),
    ("(FROM bob SUBJECT report)", b"1"), ("KEYWORD $Junk", b""), ("UNKEYWORD $Junk", b"1 2"),
    ("CHARSET UTF-8 SUBJECT lunch", b"2"), ("DELETED", b""), ("UNDELETED", b"1 2"),
])
def test_search_keys_find_and_miss(env, key, found):
    s = selected(env)
    out = s("SEARCH " + key)
    assert out.split(b"\r\n")[0] == b"* SEARCH" + (b" " + found if found else b""), out


def test_search_flags_after_store_and_uid_search(env):
    s = selected(env)
    s("STORE 2 +FLAGS.SILENT (\\Flagged $Junk)")
    assert s("UID SEARCH FLAGGED").startswith(b"* SEARCH 2\r\n")
    assert s("SEARCH KEYWORD $Junk").startswith(b"* SEARCH 2\r\n")
    assert s("SEARCH BOGUS", expect=b"BAD")
    assert b"[BADCHARSET" in s("SEARCH CHARSET X-NOWHERE ALL", expect=b"NO")


# -- STORE, COPY, MOVE, EXPUNGE --------------------------------------------------------

def test_store_puts_flags_in_the_file_name(env):
    s = selected(env)
    out = s("STORE 1 +FLAGS (\\Seen \\Answered \\Draft)")
    assert out.startswith(b"* 1 FETCH (FLAGS (\\Draft \\Answered \\Seen \\Recent))")
    assert "1000.U1.host:2,DRS" in os.listdir(env.root / "cur")
    assert s("UID STORE 1 -FLAGS.SILENT (\\Draft)").startswith(b"a")  # nothing untagged
    assert "1000.U1.host:2,RS" in os.listdir(env.root / "cur")
    t = env()
    t.login()
    t("EXAMINE INBOX")
    assert b"[READ-ONLY]" in t("STORE 1 +FLAGS (\\Seen)", expect=b"NO")


def test_copy_and_move_answer_with_copyuid(env):
    s = selected(env)
    out = s("COPY 1:2 Archive")
    assert re.fullmatch(rb"a\d OK \[COPYUID \d+ 1:2 1:2\] COPY completed\r\n", out)
    out = s("UID MOVE 2 Trash")
    assert re.fullmatch(rb"\* OK \[COPYUID \d+ 2 1\] Moved\r\n\* 2 EXPUNGE\r\n"
                        rb"a\d OK MOVE completed\r\n", out)
    assert b"* 1 EXISTS" in s("SELECT Trash")
    assert literal(s("FETCH 1 BODY.PEEK[]"), b"BODY[]") == PLAIN
    assert b"[TRYCREATE]" in s("COPY 1 Nowhere", expect=b"NO")


def test_uid_expunge_removes_only_the_named_deleted_messages(env):
    s = selected(env)
    s("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    assert s("UID EXPUNGE 2").startswith(b"* 2 EXPUNGE\r\n")
    assert s("EXPUNGE").startswith(b"* 1 EXPUNGE\r\n")
    assert os.listdir(env.root / "cur") == []


def test_two_sessions_see_each_others_expunge_and_flags(env):
    s, t = selected(env), selected(env)
    t("STORE 1 +FLAGS (\\Deleted)")
    t("EXPUNGE")
    # Not during FETCH (RFC 3501 7.4.1) ...
    out = s("FETCH 2 (FLAGS)")
    assert b"EXPUNGE" not in out and b"* 2 FETCH (FLAGS" in out
    # ... but at NOOP.
    assert s("NOOP").startswith(b"* 1 EXPUNGE\r\n")
    assert s("FETCH 1 UID").startswith(b"* 1 FETCH (UID 2)")


# -- APPEND and literals ----------------------------------------------------------------

def test_append_with_flags_and_date_gives_appenduid(env):
    s = env()
    s.login()
    body = b"Subject: draft\r\n\r\nhello\r\n"
    assert s(b'APPEND Drafts (\\Draft \\Seen) "05-Feb-2024 10:00:00 +0100" {%d}' % len(body),
             expect=None) == b"+ Ready for literal data\r\n"
    out = s.raw(body + b"\r\n")
    assert re.fullmatch(rb"a2 OK \[APPENDUID \d+ 1\] APPEND completed\r\n", out)
    drafts = env.root / ".Drafts" / "cur"
    [name] = os.listdir(drafts)
    assert name.endswith(":2,DS") and (drafts / name).read_bytes() == body
    assert os.stat(drafts / name).st_mtime == 1707123600
    assert os.listdir(env.root / "tmp") == []


def test_literal_plus_append_and_oversized_literals(env):
    s = env(imap={"max_message_size": 100, "max_literal_size": 10})
    s.login()
    assert b"[APPENDUID" in s.raw(b"p1 APPEND INBOX {5+}\r\nSubj:\r\n")
    # Too big, synchronizing: refused before any data (no "+").
    assert s.raw(b"p2 APPEND INBOX {101}\r\n") == (
        b"p2 NO [TOOBIG] Literal of 101 octets is over the limit of 100\r\n")
    assert s.raw(b'p3 LOGIN {11}\r\n') == (
        b"p3 NO [TOOBIG] Literal of 11 octets is over the limit of 10\r\n")
    # Too big, non-synchronizing: refused, its octets skipped unread, the session goes on.
    out = s.raw(b"p4 APPEND INBOX {200+}\r\n" + b"x" * 200 + b"\r\np5 NOOP\r\n")
    assert out == (b"p4 NO [TOOBIG] Literal of 200 octets is over the limit of 100\r\n"
                   b"p5 OK NOOP completed\r\n")


@pytest.mark.parametrize("in_memory", [0, 262144])
def test_client_dropping_mid_append_leaves_nothing(env, in_memory):
    s = env(imap={"append_in_memory": in_memory})
    s.login()
    s.raw(b"a APPEND INBOX {1000}\r\n" + b"x" * 500)
    # Streamed to its file as it comes, or held in memory (no file yet).
    assert len(os.listdir(env.root / "tmp")) == (0 if in_memory else 1)
    s.drop()
    assert os.listdir(env.root / "tmp") == []
    assert sorted(os.listdir(env.root / "new")) == ["1000.U1.host", "1001.U2.host"]


# -- IDLE -------------------------------------------------------------------------------

def test_idle_sees_a_delivery_at_once_and_ends_on_done(env):
    s = selected(env)
    assert s("IDLE", expect=None) == b"+ idling\r\n"
    env.store.deliver(BOX, b"Subject: new\r\n\r\nhi\r\n", "2000.U3.host")
    assert s.take() == b"* 3 EXISTS\r\n* 3 RECENT\r\n"
    assert s.raw(b"DONE\r\n") == b"a3 OK IDLE terminated\r\n"


def test_idle_polls_for_other_programs_and_refuses_other_lines(env):
    s = selected(env)
    s("IDLE", expect=None)
    (env.root / "cur" / "9999.mutt:2,S").write_bytes(b"Subject: from mutt\r\n\r\n")
    os.utime(env.root / "cur", (1, 1))  # an mtime we have not seen
    env.clock.advance(10)
    assert s.take() == b"* 3 EXISTS\r\n* 2 RECENT\r\n"
    assert s.raw(b"a4 NOOP\r\n") == b"a3 BAD Expected DONE\r\n"


# -- bad input --------------------------------------------------------------------------

def test_bad_commands_get_bad_and_too_many_close(env):
    s = env(imap={"max_bad_commands": 3})
    assert s.raw(b"\r\n") == b"* BAD missing or bad tag\r\n"
    assert s.raw(b"x1 FROB\r\n") == b"x1 BAD unknown command\r\n"
    assert s.raw(b"x2 SELECT INBOX\r\n") == b"* BYE Too many invalid commands\r\n"
    assert s.transport.disconnecting


@pytest.mark.parametrize("command", [b'FETCH 1 (BODY[', b"FETCH 1 (FLAGS", b"FETCH x FLAGS",
                                     b"FETCH 1 BINARY[HEADER]", b'STORE 1 FLAGS (\\Bogus)',
                                     b"UID FROB 1", b'LIST "unterminated', b"SEARCH"])
def test_malformed_commands_get_bad_and_the_session_goes_on(env, command):
    s = selected(env)
    s(command, expect=b"BAD")
    s("NOOP")


def test_modified_utf7_names_round_trip_and_paths_stay_inside(env):
    s = env()
    s.login()
    s('CREATE "&ZeVnLIqe-.R&AOk-sum&AOk-"')
    assert b'"&ZeVnLIqe-.R&AOk-sum&AOk-"' in s('LIST "" "*"')
    assert os.path.isdir(env.root / ".&ZeVnLIqe-.R&AOk-sum&AOk-")
    for bad in ('"../../x"', '"a/b"', '"&Jjo"', '"x..y"'):
        s("CREATE " + bad, expect=b"NO")
    assert sorted(p.name for p in env.root.parent.iterdir()) == ["alice"]


@pytest.mark.parametrize("key,value,reason", [
    ("idle_timeout", 60, "must be at least 1800"),
    ("max_command_length", 100, "must be at least 1000"),
    ("max_literal_size", 0, "must be greater than 0"),
    ("poll_interval", "x", "must be float"),
    ("compress_level", 10, "must be 0 to 9"),
    ("compress_level", -1, "must be 0 to 9"),
])
def test_imap_settings_faults_name_the_key(key, value, reason):
    from gateway.config import parse
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        parse({"server": {"domains": ["example.test"]}, "imap": {key: value}})
    assert any(k == f"imap.{key}" and reason in r for _, k, r in e.value.problems)


def test_append_to_a_folder_named_by_a_literal(env):
    s = env(imap={"max_literal_size": 10})
    s.login()
    assert s.raw(b"a APPEND {6}\r\n") == b"+ Ready for literal data\r\n"
    assert s.raw(b"Drafts {20}\r\n") == b"+ Ready for literal data\r\n"  # not the 10 limit
    assert re.fullmatch(rb"a OK \[APPENDUID \d+ 1\] APPEND completed\r\n",
                        s.raw(b"Subject: twenty\r\n\r\nx\r\n"))


def test_connections_per_client_limit(env, tmp_path):
    factory = make_factory(env.store, env.clock, imap={"max_connections_per_client": 2})
    first, second = Session(factory), Session(factory)
    assert first.greeting.startswith(b"* OK") and second.greeting.startswith(b"* OK")
    from gateway.metrics import REGISTRY

    def refused() -> float:
        return REGISTRY.counters.get(("mailgateway_rejects_total",
                                      (("code", "421"), ("command", "CONNECT"))), 0.0)

    before = refused()
    third = Session(factory)
    assert third.greeting == (b"* BYE [UNAVAILABLE] Too many connections from your address, "
                              b"try again later\r\n")
    assert refused() == before + 1  # a "reject: CONNECT" line, counted
    assert third.transport.disconnecting
    other = Session(factory, peer="192.0.2.8")  # another client is not affected
    assert other.greeting.startswith(b"* OK")
    for s in (first, second, third, other):
        s.proto.connectionLost(None)
    assert factory.connections == {}


def test_fetch_of_message_bytes_goes_in_batches_of_fetch_buffer_bytes():
    """[imap] fetch_buffer bounds what one FETCH reads and holds at a time (at least
    one message a batch); responses without message bytes go many at a time."""
    from types import SimpleNamespace

    from gateway.access.imap import fetch

    sizes = {1: 600, 2: 600, 3: 300, 4: 3000, 5: 10}
    folder = SimpleNamespace(message=lambda uid: SimpleNamespace(size=sizes[uid]))
    pairs = [(n, n) for n in sizes]
    body = fetch.parse([fetch.Atom(b"BODY.PEEK[]")])
    assert fetch.batches(folder, pairs, body, 1000) == [
        [(1, 1)], [(2, 2), (3, 3)], [(4, 4)], [(5, 5)]]
    flags = fetch.parse([fetch.Atom(b"FLAGS")])
    assert fetch.batches(folder, pairs, flags, 1000) == [pairs]


def test_fetch_in_small_batches_keeps_every_message_whole_and_in_order(env):
    s = env(imap={"fetch_buffer": 100})  # smaller than either message: one a batch
    s.login()
    s("SELECT INBOX")
    out = s("FETCH 1:2 (UID BODY.PEEK[])")
    first, second = out.split(b"* 2 FETCH ")
    assert first.startswith(b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % len(MULTIPART))
    assert literal(first, b"BODY[]") == MULTIPART
    assert second.startswith(b"(UID 2 BODY[] {%d}\r\n" % len(PLAIN) + PLAIN + b")\r\n")


def test_fetch_of_no_message_completes(env):
    s = selected(env)
    assert s("UID FETCH 99 UID") == b"a3 OK FETCH completed\r\n"
