"""Posting rules and the list's copy (gateway/lists/posting.py)."""

from email import message_from_bytes, policy
from email.parser import BytesHeaderParser

import pytest

from gateway.lists.posting import (
    check_one_click,
    decide,
    decorate,
    one_click_url,
)
from gateway.lists.store import MailingList

DEV = MailingList("dev@example.test", owners=("owner@example.test",),
                  moderators=("mod@example.test",), policy="members",
                  subject_prefix="[dev] ", secret="s" * 32)


def headers(text: str):
    return BytesHeaderParser(policy=policy.SMTP).parsebytes(text.encode())


PLAIN = headers("From: bob@example.org\r\nSubject: hi\r\n\r\n")


@pytest.mark.parametrize("policy_, sender, member, action", [
    ("open", "x@example.org", False, "accept"),
    ("members", "bob@example.org", True, "accept"),
    ("members", "eve@example.org", False, "hold"),
    ("members", "MOD@example.test", False, "accept"),
    ("moderated", "bob@example.org", True, "hold"),
    ("moderated", "owner@example.test", False, "accept"),
    ("announce", "bob@example.org", True, "reject"),
    ("announce", "mod@example.test", False, "accept"),
])
def test_policies(policy_, sender, member, action):
    mlist = MailingList(**{**DEV.__dict__, "policy": policy_})
    decision = decide(mlist, sender, member, PLAIN, 100)
    assert decision.action == action
    if action == "hold":
        assert decision.reason
    if action == "reject":
        assert decision.error.code == 550 and decision.error.enhanced == "5.7.1"


def test_too_big_is_refused_with_552():
    decision = decide(DEV, "bob@example.org", True, PLAIN, DEV.max_size + 1)
    assert decision.action == "reject"
    assert (decision.error.code, decision.error.enhanced) == (552, "5.3.4")
    assert decide(DEV, "bob@example.org", True, PLAIN, DEV.max_size).action == "accept"


@pytest.mark.parametrize("extra", [
    "List-Id: Developers <DEV.example.test>\r\n",
    "X-Loop: dev@example.test\r\n",
    "X-Loop: <DEV@Example.test>\r\n",
])
def test_loops_are_refused(extra):
    decision = decide(DEV, "bob@example.org", True, headers(extra + "Subject: x\r\n\r\n"), 10)
    assert decision.action == "reject" and decision.error.enhanced == "5.4.6"


def test_another_lists_id_is_no_loop():
    h = headers("List-Id: <other.example.test>\r\nX-Loop: other@example.test\r\n\r\n")
    assert decide(DEV, "bob@example.org", True, h, 10).action == "accept"


@pytest.mark.parametrize("extra, refused", [
    ("Auto-Submitted: auto-replied\r\n", True),
    ("Auto-Submitted: auto-generated; owner-email=x@y\r\n", True),
    ("Auto-Submitted: no\r\n", False),
    ("Precedence: bulk\r\n", True),
    ("Precedence: junk\r\n", True),
    ("Precedence: list\r\n", True),
    ("Precedence: first-class\r\n", False),
])
def test_auto_submitted_mail_is_refused(extra, refused):
    decision = decide(DEV, "bob@example.org", True, headers(extra + "Subject: x\r\n\r\n"), 10)
    assert (decision.action == "reject") is refused


def test_null_sender_is_refused():
    assert decide(DEV, "", False, PLAIN, 10).action == "reject"


POST = (b"Return-Path: <bob@example.org>\r\n"
        b"Received: from x by y;\r\n\tThu, 1 Jan 2026 00:00:00 +0000\r\n"
        b"From: Bob Smith <bob@example.org>\r\n"
        b"To: dev@example.test\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9?= time\r\n"
        b"List-Id: <upstream.example.net>\r\n"
        b"Disposition-Notification-To: bob@example.org\r\n"
        b"X-Weird: \xc3\xa9t\xc3\xa9 raw 8-bit\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
        b"Caf\xe9 at 10?\r\n"
        b"From the start of a line\r\n"
        b".\r\n"
        b"no final newline")


def parsed(data: bytes):
    return message_from_bytes(data, policy=policy.SMTP)


def test_decorate_keeps_body_bytes_and_untouched_fields():
    out = decorate(POST, DEV, poster_dmarc_strict=False)
    assert out.endswith(POST[POST.index(b"\r\n\r\n"):])  # the body, byte for byte
    for field in (b"Return-Path: <bob@example.org>\r\n",
                  b"Received: from x by y;\r\n\tThu, 1 Jan 2026 00:00:00 +0000\r\n",
                  b"From: Bob Smith <bob@example.org>\r\n",
                  b"X-Weird: \xc3\xa9t\xc3\xa9 raw 8-bit\r\n"):
        assert field in out
    m = parsed(out)
    assert m["List-Id"] == "<dev.example.test>"
    assert m.get_all("List-Id") == ["<dev.example.test>"]  # the upstream one replaced
    assert m["List-Post"] == "<mailto:dev@example.test>"
    assert m["List-Help"] == "<mailto:dev-request@example.test?subject=help>"
    assert m["List-Subscribe"] == "<mailto:dev-join@example.test>"
    assert m["List-Unsubscribe"] == "<mailto:dev-leave@example.test>"
    assert m["List-Unsubscribe-Post"] is None
    assert m["List-Archive"] == "<imap://example.test/Lists.dev>"
    assert m["Precedence"] == "list" and m["X-Loop"] == "dev@example.test"
    assert m["Disposition-Notification-To"] is None
    assert str(m["Subject"]) == "[dev] café time"
    assert m["Reply-To"] is None
    assert b"\r\n" in out and b"\n" not in out.replace(b"\r\n", b"")


def test_decorate_keeps_lf_line_ends():
    post = b"From: a@example.org\nSubject: x\n\nbody\n"
    out = decorate(post, DEV, False)
    assert b"\r" not in out and out.endswith(b"\n\nbody\n")
    assert b"Subject: [dev] x\n" in out


def test_prefix_is_not_doubled_on_replies_and_added_when_missing():
    reply = b"From: a@example.org\r\nSubject: Re: [dev] =?utf-8?q?caf=C3=A9?=\r\n\r\nx"
    out = decorate(reply, DEV, False)
    assert b"Subject: Re: [dev] =?utf-8?q?caf=C3=A9?=\r\n" in out  # as the poster wrote it
    assert out.count(b"Subject:") == 1
    none = decorate(b"From: a@example.org\r\n\r\nx", DEV, False)
    assert str(parsed(none)["Subject"]) == "[dev] (no subject)"
    utf8 = decorate(b"From: a@example.org\r\nSubject: \xc3\xa9t\xc3\xa9\r\n\r\nx", DEV, False)
    assert b"Subject: [dev] \xc3\xa9t\xc3\xa9\r\n" in utf8
    unprefixed = MailingList(**{**DEV.__dict__, "subject_prefix": ""})
    assert b"Subject: =?utf-8?q?caf=C3=A9?= time\r\n" in decorate(POST, unprefixed, False)


def test_long_encoded_subject_stays_decodable():
    subject = " ".join(["Ünïcode"] * 30)
    from email.header import Header
    post = (b"From: a@example.org\r\nSubject: " + Header(subject, "utf-8").encode().encode()
            + b"\r\n\r\nx")
    out = decorate(post, DEV, False)
    assert str(parsed(out)["Subject"]) == "[dev] " + subject
    assert all(len(line) <= 78 for line in out.split(b"\r\n"))


def with_(**changes):
    return MailingList(**{**DEV.__dict__, **changes})


def test_reply_to_policies():
    post = b"From: Bob <bob@example.org>\r\nReply-To: bob-home@example.org\r\n\r\nx"
    assert parsed(decorate(post, with_(reply_to="list"), False))["Reply-To"] == \
        "dev@example.test"
    assert parsed(decorate(post, with_(reply_to="poster"), False))["Reply-To"] == \
        "bob-home@example.org"
    bare = b"From: Bob <bob@example.org>\r\n\r\nx"
    assert parsed(decorate(bare, with_(reply_to="poster"), False))["Reply-To"] == \
        "Bob <bob@example.org>"
    assert parsed(decorate(bare, with_(reply_to="none"), False))["Reply-To"] is None


def test_dmarc_munging_when_the_poster_domain_is_strict():
    post = b"From: =?utf-8?q?J=C3=B6rg?= <jorg@strict.example>\r\nCc: x@example.org\r\n\r\nx"
    m = parsed(decorate(post, DEV, poster_dmarc_strict=True))
    assert m["From"].addresses[0].display_name == "Jörg via dev"
    assert m["From"].addresses[0].addr_spec == "dev@example.test"
    assert [a.addr_spec for a in m["Reply-To"].addresses] == ["jorg@strict.example"]
    assert m.get_all("From") and len(m.get_all("From")) == 1
    # reply_to=list: the poster goes to Cc
    m = parsed(decorate(post, with_(reply_to="list"), True))
    assert m["Reply-To"] == "dev@example.test"
    assert [a.addr_spec for a in m["Cc"].addresses] == ["x@example.org", "jorg@strict.example"]
    # off: never; always: even for a lax domain
    assert b"From: =?utf-8?q?J=C3=B6rg?= <jorg@strict.example>\r\n" in decorate(
        post, with_(dmarc="off"), True)
    assert b"From: =?utf-8?q?J=C3=B6rg?= <jorg@strict.example>\r\n" in decorate(post, DEV, False)
    m = parsed(decorate(b"From: plain@lax.example\r\n\r\nx", with_(dmarc="always"), False))
    assert str(m["From"]) == '"plain@lax.example via dev" <dev@example.test>'


def test_web_base_url_gives_https_and_one_click_per_member():
    mlist = with_(web_base_url="https://lists.example.test/", description="Dév, team")
    m = parsed(decorate(POST, mlist, False, member="Carol@example.org"))
    url = one_click_url(mlist, "Carol@example.org")
    assert url.startswith("https://lists.example.test/lists/dev@example.test/unsubscribe?")
    assert m["List-Unsubscribe"] == f"<{url}>, <mailto:dev-leave@example.test>"
    assert m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert m["List-Archive"] == "<imap://example.test/Lists.dev>"  # no web archive page
    assert str(m["List-Id"]) == "Dév, team <dev.example.test>"
    sig = url.rsplit("sig=", 1)[1]
    assert check_one_click(mlist, "carol@example.org", sig)
    assert not check_one_click(mlist, "dave@example.org", sig)
    assert not check_one_click(with_(secret="t" * 32), "carol@example.org", sig)
    # no member (the archive's copy): no https link, so no one-click promise either
    m = parsed(decorate(POST, mlist, False))
    assert m["List-Unsubscribe"] == "<mailto:dev-leave@example.test>"
    assert m["List-Unsubscribe-Post"] is None


def test_announce_list_says_no_posting_and_no_archive_header_without_archive():
    m = parsed(decorate(POST, with_(policy="announce", archive=False), False))
    assert m["List-Post"].startswith("NO")
    assert m["List-Archive"] is None


def test_a_message_of_headers_only_stays_well_formed():
    out = decorate(b"From: a@example.org\r\nSubject: x", DEV, False)
    assert out.startswith(b"From: a@example.org\r\nSubject: [dev] x\r\nList-Id: ")
    assert out.endswith(b"\r\n") and parsed(out)["X-Loop"] == "dev@example.test"
