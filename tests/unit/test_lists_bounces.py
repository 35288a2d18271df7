"""Bounce processing (gateway/lists/bounces.py): samples written here, of the kinds
list servers get: RFC 3464 DSNs (ours and a foreign one), qmail, Exim, a vacation."""

from email import message_from_bytes, policy

import pytest

from gateway.envelope import Envelope, Recipient
from gateway.lists import bounces
from gateway.lists.store import ListStore
from gateway.queue.bounce import build_dsn

LIST = "dev@example.test"

FOREIGN_DSN = b"""\
From: MAILER-DAEMON@mx.example.org (Mail Delivery System)
To: dev-bounces+alice=example.org@example.test
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B1"

--B1
Content-Type: text/plain

This is the mail system at host mx.example.org.

<Alice@Example.ORG>: host mx.example.org said: 550 5.1.1 user unknown

--B1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; Alice@Example.ORG
Original-Recipient: rfc822;alice@example.org
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 user unknown

Final-Recipient: rfc822; slow@example.org
Action: delayed
Status: 4.4.1

--B1
Content-Type: message/rfc822

From: bob@example.org
Subject: [dev] hello

hi
--B1--
"""

DELAYED_DSN = FOREIGN_DSN.replace(b"Action: failed", b"Action: delayed").replace(
    b"Status: 5.1.1", b"Status: 4.4.1")

QMAIL = b"""\
From: MAILER-DAEMON@mx.example.org
To: dev-bounces@example.test
Subject: failure notice

Hi. This is the qmail-send program at mx.example.org.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<carol@example.org>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

From: bob@example.org
Subject: [dev] hello

hi
"""

EXIM = b"""\
From: Mail Delivery System <Mailer-Daemon@mx.example.net>
To: dev-bounces@example.test
Subject: Mail delivery failed: returning message to sender
X-Failed-Recipients: dave@Example.NET
Auto-Submitted: auto-replied

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  dave@example.net
    SMTP error from remote mail server after RCPT TO:<dave@example.net>:
    550 5.1.1 User unknown
"""

VACATION = b"""\
From: Alice <alice@example.org>
To: dev-bounces+alice=example.org@example.test
Subject: Out of office: [dev] hello
Auto-Submitted: auto-replied

I am away until Monday.
"""

UNREADABLE = b"""\
From: postmaster@mx.example.org
Subject: Delivery failure

Your message could not be delivered. Something went wrong somewhere.
"""


@pytest.fixture
def store(tmp_path):
    s = ListStore(tmp_path / "lists")
    s.create(LIST, ["owner@example.test"])
    s.set(LIST, bounce_threshold=2)
    s.add_members(LIST, ["alice@example.org", "carol@example.org", "dave@example.net",
                         "slow@example.org"])
    yield s
    s.close()


def test_parse_dsn_permanent_and_temporary():
    failures = bounces.parse(FOREIGN_DSN)
    assert failures.permanent == {"alice@example.org"}
    assert failures.temporary == {"slow@example.org"}


def test_parse_our_own_gateways_dsn():
    envelope = Envelope(sender="dev-bounces@example.test",
                        recipients=[Recipient("erin@example.org")], queue_id="0" * 16)
    envelope.recipients[0].last_error = "550 5.1.1 no such user"
    dsn = build_dsn(envelope, envelope.recipients, b"Subject: x\r\n\r\nbody\r\n",
                    action="failed", hostname="mx.example.test", now=0, size_limit=1000)
    assert bounces.parse(dsn).permanent == {"erin@example.org"}


@pytest.mark.parametrize("sample, address", [(QMAIL, "carol@example.org"),
                                             (EXIM, "dave@example.net")])
def test_parse_common_non_dsn_formats(sample, address):
    assert bounces.parse(sample).permanent == {address}


def test_verp_bounces_raise_the_score_and_disable_at_the_threshold(store):
    mlist = store.get(LIST)
    assert bounces.process(store, mlist, "alice@example.org", FOREIGN_DSN, now=0) == []
    assert store.members(LIST).count("alice@example.org") == 1
    [told] = bounces.process(store, mlist, "alice@example.org", FOREIGN_DSN, now=60)
    assert "alice@example.org" not in store.members(LIST)
    assert told.recipients == ("owner@example.test",)
    assert told.sender == "dev-bounces@example.test"
    m = message_from_bytes(told.message, policy=policy.default)
    assert "alice@example.org disabled" in str(m["Subject"])
    assert m["Auto-Submitted"] == "auto-replied"
    # disabled already: no second notice
    assert bounces.process(store, mlist, "alice@example.org", FOREIGN_DSN, now=120) == []


def test_delays_and_vacations_are_no_bounces(store):
    mlist = store.get(LIST)
    for sample in (DELAYED_DSN, VACATION, DELAYED_DSN, VACATION):
        assert bounces.process(store, mlist, "alice@example.org", sample, now=0) == []
    assert store.member_records(LIST)[0].bounce_score == 0


def test_an_unreadable_bounce_to_a_verp_address_counts(store):
    mlist = store.get(LIST)
    bounces.process(store, mlist, "carol@example.org", UNREADABLE, now=0)
    bounces.process(store, mlist, "carol@example.org", UNREADABLE, now=1)
    assert "carol@example.org" not in store.members(LIST)


def test_without_verp_the_failed_members_count(store):
    mlist = store.get(LIST)
    bounces.process(store, mlist, None, EXIM, now=0)
    bounces.process(store, mlist, None, QMAIL, now=0)
    bounces.process(store, mlist, None, UNREADABLE, now=0)  # names nobody: nothing
    scores = {m.address: m.bounce_score for m in store.member_records(LIST)}
    assert scores == {"alice@example.org": 0, "carol@example.org": 1,
                      "dave@example.net": 1, "slow@example.org": 0}


def test_a_bounce_for_a_non_member_changes_nothing(store):
    mlist = store.get(LIST)
    assert bounces.process(store, mlist, "stranger@example.org", FOREIGN_DSN, now=0) == []
    assert store.member_records(LIST)[0].bounce_score == 0
