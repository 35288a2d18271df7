"""What Dovecot's imaptest scripted suite found wrong in access/imap, one test per fault.

Each test is the smallest dialogue that shows the fault a client saw, over
StringTransport (imap_dialogue.py). bench/imaptest.sh runs the suite itself.
"""

from __future__ import annotations

import re

import pytest
from imap_dialogue import BOX, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock

from gateway.access.imap import summary

# imaptest's fetch-body-message-rfc822*.mbox: a message whose body is a message.
RFC822 = (b"From: user@domain.org\r\nDate: Sat, 24 Mar 2007 23:00:00 +0200\r\n"
          b"Mime-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n"
          b"From: sub@domain.org\r\nDate: Sun, 12 Aug 2012 12:34:56 +0300\r\n"
          b"Subject: submsg\r\n\r\nHello world\r\n")
RFC822_X2 = (b"From: user@domain.org\r\nMime-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n"
             b"From: user2@domain.org\r\nMime-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n"
             b"From: sub@domain.org\r\nSubject: submsg\r\n\r\nHello world\r\n")
RFC822_DIGEST = (b"From: user@domain.org\r\nMime-Version: 1.0\r\n"
                 b"Content-Type: message/rfc822\r\n\r\n"
                 b"From: sub@domain.org\r\nSubject: submsg\r\n"
                 b"Content-Type: multipart/digest; boundary=\"foo\"\r\n\r\nprologue\r\n\r\n"
                 b"--foo\r\n\r\nFrom: m1@example.com\r\nSubject: m1\r\n\r\nm1 body\r\n\r\n"
                 b"--foo\r\nX-Mime: m2 header\r\n\r\nFrom: m2@example.com\r\nSubject: m2\r\n\r\n"
                 b"m2 body\r\n\r\n--foo--\r\n\r\nepilogue\r\n")
# imaptest's fetch-envelope.mbox and search-addresses.mbox: the address syntax of RFC 5322 3.4.
GROUPS = (b"Date: Thu, 15 Feb 2007 01:02:03 +0200\r\nFrom: user@domain (Real Name)\r\n"
          b"To: group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;\r\n"
          b"Cc: group:;, group2: (foo) ;\r\nSender: \r\n\r\nbody\r\n")
ROUTE = b"Date: Thu, 15 Feb 2007 01:02:03 +0200\r\nFrom: <@route:user@domain>\r\n\r\nbody\r\n"
COMMENTED = (b"From: <user-from (comment)@ (comment) domain.org>\r\n"
             b"To: groupname: groupuser1@domain.org;\r\n\r\nbody3\r\n")
OTHER = b"From: user-from1@domain.org\r\nTo: someone@domain.org\r\n\r\nbody\r\n"


@pytest.fixture
def env(tmp_path):
    store = fresh_store(tmp_path)
    clock = MemoryReactorClock()

    def connect(*messages: bytes) -> Session:
        for n, data in enumerate(messages):
            store.deliver(BOX, data, f"{2000 + n}.U{n}.host")
        s = Session(make_factory(store, clock))
        s.login()
        return s

    return connect


def literal(out: bytes, name: bytes) -> bytes:
    m = re.search(re.escape(name) + rb" \{(\d+)\}\r\n", out)
    assert m, out
    return out[m.end():m.end() + int(m.group(1))]


# -- atoms: "[" is an ATOM-CHAR (RFC 3501 9) --------------------------------------------

def test_open_bracket_in_a_folder_name_is_a_name_not_a_syntax_error(env):
    s = env()
    name = "!#$$&'+,-.0123456789:;<=>?@^_`|[}"
    assert b"BAD" not in s(f"SELECT {name}", expect=b"NO")  # no such folder, said so
    s(f'LIST "" {name}%*')  # a pattern no folder can match: OK, empty
    s("CREATE a[b")
    assert b'"a[b"' in s('LIST "" a[b')
    assert b"[READ-WRITE]" in s("SELECT a[b")
    assert not s.transport.disconnecting


# -- BODY[1...] of a message that is MESSAGE/RFC822 (RFC 3501 6.4.5) -----------------------

def test_part_1_of_a_message_rfc822_message_is_the_encapsulated_message(env):
    s = env(RFC822)
    s("SELECT INBOX")
    inner = RFC822.split(b"\r\n\r\n", 1)[1]
    assert literal(s("FETCH 1 BODY.PEEK[1]"), b"BODY[1]") == inner
    assert literal(s("FETCH 1 BODY.PEEK[1.HEADER]"), b"BODY[1.HEADER]") == (
        b"From: sub@domain.org\r\nDate: Sun, 12 Aug 2012 12:34:56 +0300\r\n"
        b"Subject: submsg\r\n\r\n")
    out = s("FETCH 1 BODY.PEEK[1.HEADER.FIELDS (from subject X-foo)]")
    assert literal(out, b"BODY[1.HEADER.FIELDS (from subject X-foo)]") == (
        b"From: sub@domain.org\r\nSubject: submsg\r\n\r\n")
    assert literal(s("FETCH 1 BODY.PEEK[1.TEXT]"), b"BODY[1.TEXT]") == b"Hello world\r\n"
    assert literal(s("FETCH 1 BODY.PEEK[1.1]"), b"BODY[1.1]") == b"Hello world\r\n"


def test_message_rfc822_twice_nested_numbers_each_level(env):
    s = env(RFC822_X2)
    s("SELECT INBOX")
    assert literal(s("FETCH 1 BODY.PEEK[1.HEADER]"), b"BODY[1.HEADER]").startswith(
        b"From: user2@domain.org\r\n")
    assert literal(s("FETCH 1 BODY.PEEK[1.1]"), b"BODY[1.1]") == (
        b"From: sub@domain.org\r\nSubject: submsg\r\n\r\nHello world\r\n")
    assert literal(s("FETCH 1 BODY.PEEK[1.1.HEADER]"), b"BODY[1.1.HEADER]") == (
        b"From: sub@domain.org\r\nSubject: submsg\r\n\r\n")
    assert literal(s("FETCH 1 BODY.PEEK[1.1.1]"), b"BODY[1.1.1]") == b"Hello world\r\n"


def test_mime_header_of_a_digest_part_inside_a_message_rfc822_message(env):
    s = env(RFC822_DIGEST)
    s("SELECT INBOX")
    assert literal(s("FETCH 1 BODY.PEEK[1.2.MIME]"), b"BODY[1.2.MIME]") == (
        b"X-Mime: m2 header\r\n\r\n")
    assert literal(s("FETCH 1 BODY.PEEK[1.1.HEADER]"), b"BODY[1.1.HEADER]") == (
        b"From: m1@example.com\r\nSubject: m1\r\n\r\n")
    assert literal(s("FETCH 1 BODY.PEEK[1.2.TEXT]"), b"BODY[1.2.TEXT]") == b"m2 body\r\n"


# -- ENVELOPE address lists (RFC 3501 7.4.2) ------------------------------------------------

def test_envelope_keeps_groups_routes_and_names_from_comments(env):
    s = env(GROUPS, ROUTE)
    s("SELECT INBOX")
    out = s("FETCH 1:2 ENVELOPE")
    me = b'(("Real Name" NIL "user" "domain"))'
    assert (b'"Thu, 15 Feb 2007 01:02:03 +0200" NIL ' + me + b" " + me + b" " + me
            + b' ((NIL NIL "group" NIL) (NIL NIL "g1" "d1.org") (NIL NIL "g2" "d2.org")'
            b' (NIL NIL NIL NIL) (NIL NIL "group2" NIL) (NIL NIL "g3" "d3.org")'
            b' (NIL NIL NIL NIL))'
            b' ((NIL NIL "group" NIL) (NIL NIL NIL NIL) (NIL NIL "group2" NIL)'
            b' (NIL NIL NIL NIL)) NIL NIL NIL)') in out
    assert b'((NIL "@route" "user" "domain"))' in out


def test_old_summaries_are_made_again(tmp_path):
    # A header summary cached before groups were kept would go on serving the old
    # ENVELOPE: its layout no longer matches, so it is made again.
    new = summary.pack(summary.summarize_header(GROUPS))
    old = b"h" + new[len(b"h" + summary.HeaderSummary.LAYOUT):]
    assert summary.unpack(new, summary.HeaderSummary) is not None
    assert summary.unpack(old, summary.HeaderSummary) is None


# -- SEARCH FROM/TO: the addresses, not the field's spelling (RFC 3501 6.4.4) ----------------

def test_search_address_finds_it_behind_comments_and_in_groups(env):
    s = env(COMMENTED, OTHER)
    s("SELECT INBOX")
    assert b"* SEARCH 1\r\n" in s("SEARCH FROM user-from@domain.org")
    assert b"* SEARCH 1\r\n" in s("SEARCH TO groupname")
    assert b"* SEARCH 1\r\n" in s("SEARCH TO groupuser1")
    assert b"* SEARCH\r\n" in s("SEARCH FROM comment")


# -- \Recent: EXAMINE shows it and keeps it (RFC 3501 2.3.2, 6.3.2) ------------------------

def test_examine_shows_recent_without_taking_it(env):
    s = env(OTHER, OTHER)
    out = s("EXAMINE INBOX")
    assert b"* 2 RECENT\r\n" in out
    assert b"\\Recent" in s("FETCH 1 FLAGS")
    s("CLOSE")
    assert b"RECENT 2" in s("STATUS INBOX (RECENT)")
    assert b"* 2 RECENT\r\n" in s("SELECT INBOX")  # the first to select gets them
    s("CLOSE")
    assert b"RECENT 0" in s("STATUS INBOX (RECENT)")
    assert b"* 0 RECENT\r\n" in s("SELECT INBOX")


# -- LSUB "%" and subscribed names below it (RFC 3501 6.3.9) --------------------------------

def test_lsub_percent_shows_the_level_above_a_subscribed_name_as_noselect(env):
    s = env()
    for name in ("box", "box.test", "box.test2", "box.test2.test", "box.test3.test3"):
        s(f"CREATE {name}")
    for name in ("box.test", "box.test2.test", "box.test3.test3"):
        s(f"SUBSCRIBE {name}")
    out = s('LSUB "" box.%')
    listed = {name: attrs for attrs, name in re.findall(
        rb'\* LSUB \(([^)]*)\) "\." "?([^"\r]*)"?\r\n', out)}
    assert listed[b"box.test2"] == b"\\Noselect"  # exists, but only its child is subscribed
    assert listed[b"box.test3"] == b"\\Noselect"  # does not exist at all
    assert b"\\Noselect" not in listed[b"box.test"]
    assert set(listed) == {b"box.test", b"box.test2", b"box.test3"}
    s("UNSUBSCRIBE box.test3.test3")
    assert b"box.test3" not in s('LSUB "" box.%')


def test_address_parser_reads_what_mail_readers_read_and_never_fails():
    from gateway.access.imap.addresses import parse

    assert parse(b'"Public, John Q." <jqp@example.test>, John Q. Public <j@x.test>') == [
        (b"Public, John Q.", None, b"jqp", b"example.test"),
        (b"John Q. Public", None, b"j", b"x.test")]
    assert parse(b"<@a.test,@b.test:u@c.test>") == [(None, b"@a.test,@b.test", b"u", b"c.test")]
    assert parse(b"undisclosed-recipients:;") == [(None, None, b"undisclosed-recipients", None),
                                                  (None, None, None, None)]
    assert parse(b"") == [] and parse(None) == []
    for junk in (b'"unterminated <a@b', b"((((", b"<<>>@@,,;;::", b"a@[1.2.3.4", b"\\", b")"):
        parse(junk)  # whatever it makes of it, it answers
