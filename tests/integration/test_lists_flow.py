"""Mailing lists end to end: list commands by mail, posts, moderation, bounces, crashes."""

from __future__ import annotations

import email
import os
import re
import smtplib
from email import policy

import pytest
from conftest import wait_for

LIST = "dev@example.test"
USERS = ("owner@example.test", "alice@example.test", "bob@example.test", "carol@example.test")


@pytest.fixture
def list_gateway(make_gateway):
    gw = make_gateway("[queue]\nretry_initial = 1\nretry_max = 2\ncontrol_interval = 0.2\n",
                      users=USERS)
    made = gw.cli("list", "create", LIST, "--owner", "owner@example.test", "--policy",
                  "members")
    assert made.returncode == 0, made.stderr
    return gw


def send(gw, sender: str, to: str, subject: str, body: str = "hello", extra: str = "") -> None:
    message = (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
               f"Message-ID: <{os.urandom(6).hex()}@example.test>\r\n{extra}\r\n"
               f"{body}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=10) as s:
        s.sendmail(sender, [to], message)


def parsed(raw: bytes):
    return email.message_from_bytes(raw, policy=policy.default)


def subjects(gw, user: str) -> list[str]:
    return [str(parsed(m)["Subject"]) for m in gw.messages(user)]


def wait_subject(gw, user: str, pattern: str):
    def found():
        for m in gw.messages(user):
            if re.search(pattern, str(parsed(m)["Subject"])):
                return parsed(m)
        return None

    return wait_for(found, what=f"{pattern!r} for {user}")


def subscribe(gw, user: str) -> None:
    send(gw, user, "dev-request@example.test", "subscribe")
    confirmation = wait_subject(gw, user, r"confirm [0-9a-f]{32}")
    # A plain Reply in a mail client: "Re: " + the subject, to the From address.
    send(gw, user, str(confirmation["From"].addresses[0].addr_spec),
         f"Re: {confirmation['Subject']}")
    wait_for(lambda: user in gw.cli("list", "members", LIST).stdout, what=f"{user} a member")


def test_subscribe_post_and_unsubscribe_by_mail(list_gateway):
    gw = list_gateway
    for user in ("alice@example.test", "bob@example.test"):
        subscribe(gw, user)
    send(gw, "alice@example.test", LIST, "plans for friday", "let us meet")
    for user in ("alice@example.test", "bob@example.test"):
        post = wait_subject(gw, user, r"^\[dev\] plans for friday$")
        assert post["List-Id"].endswith("<dev.example.test>")
        assert post["List-Post"] == "<mailto:dev@example.test>"
        assert "<mailto:dev-leave@example.test>" in post["List-Unsubscribe"]
        assert post["Precedence"] == "list"
        local, domain = user.split("@")
        # VERP: each member's copy names the member in its envelope sender.
        assert post["Return-Path"] == f"<dev-bounces+{local}={domain}@example.test>"
        assert post.get_content().strip() == "let us meet"
    assert not [s for s in subjects(gw, "carol@example.test") if "plans" in s]

    send(gw, "bob@example.test", "dev-request@example.test", "unsubscribe")

    def tokens():
        found = [s for s in subjects(gw, "bob@example.test") if re.match(r"confirm \w{32}", s)]
        return found if len(found) == 2 else None  # the subscription's, then this one's

    send(gw, "bob@example.test", "dev-request@example.test", f"Re: {wait_for(tokens)[-1]}")
    wait_for(lambda: "bob@example.test" not in gw.cli("list", "members", LIST).stdout,
             what="bob gone")


def test_a_strangers_post_is_held_and_released_by_the_owners_reply(list_gateway):
    gw = list_gateway
    assert gw.cli("list", "add", LIST, "alice@example.test").returncode == 0
    send(gw, "carol@example.test", LIST, "may I?", "a question from outside")
    notice = wait_subject(gw, "owner@example.test", r"held")
    assert "carol@example.test" in str(notice["Subject"])
    assert [s for s in subjects(gw, "alice@example.test") if "may I" in s] == []
    held = gw.cli("list", "held", LIST).stdout
    assert "carol@example.test" in held
    send(gw, "owner@example.test", str(notice["From"].addresses[0].addr_spec),
         f"Re: {notice['Subject']}", "looks fine")
    post = wait_subject(gw, "alice@example.test", r"^\[dev\] may I\?$")
    assert post.get_content().strip() == "a question from outside"
    wait_for(lambda: "carol" not in gw.cli("list", "held", LIST).stdout, what="none held")


def test_a_loop_and_automatic_mail_are_refused(list_gateway):
    gw = list_gateway
    assert gw.cli("list", "add", LIST, "alice@example.test", "bob@example.test").returncode == 0
    send(gw, "alice@example.test", LIST, "first")
    copy = wait_for(lambda: [m for m in gw.messages("bob@example.test") if b"first" in m],
                    what="bob's copy")[0]
    # The copy comes back to the list (a member's forward rule): refused, bounced once.
    body = copy.split(b"\r\n\r\n", 1)[1].decode()
    headers = "".join(f"{k}: {v}\r\n" for k, v in parsed(copy).items()
                      if k.lower() in ("list-id", "x-loop"))
    send(gw, "alice@example.test", LIST, "first again", body, headers)
    dsn = wait_subject(gw, "alice@example.test", "Undelivered Mail")
    assert "Mail loop" in dsn.as_string()
    send(gw, "alice@example.test", LIST, "I am away", "out of office",
         "Auto-Submitted: auto-replied\r\n")
    wait_for(lambda: sum("Undelivered" in s for s in subjects(gw, "alice@example.test")) == 2,
             what="second refusal")
    assert not [s for s in subjects(gw, "bob@example.test") if "away" in s or "again" in s]


def test_bounces_to_the_verp_address_disable_a_member(list_gateway):
    gw = list_gateway
    assert gw.cli("list", "add", LIST, "alice@example.test", "carol@example.test",
                  ).returncode == 0
    assert gw.cli("list", "set", LIST, "bounce_threshold=2").returncode == 0
    dsn = ("Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n"
           "MIME-Version: 1.0\r\n", "--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
           "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
           "Final-Recipient: rfc822; carol@example.test\r\nAction: failed\r\n"
           "Status: 5.2.2\r\n\r\n--b--")
    for _ in range(2):
        with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=10) as s:
            s.sendmail("", ["dev-bounces+carol=example.test@example.test"],
                       (f"From: MAILER-DAEMON@example.test\r\nSubject: Undelivered\r\n"
                        f"{dsn[0]}\r\n{dsn[1]}\r\n").encode())
    notice = wait_subject(gw, "owner@example.test", "disabled")
    assert "carol@example.test" in str(notice["Subject"])
    send(gw, "alice@example.test", LIST, "after the bounces")
    wait_subject(gw, "alice@example.test", "after the bounces")
    assert not [s for s in subjects(gw, "carol@example.test") if "after" in s]


def test_kill_9_during_an_explosion_loses_no_copy_and_sends_none_twice(make_gateway):
    members = [f"m{i}@example.test" for i in range(1000)]
    gw = make_gateway("[queue]\nretry_initial = 1\nretry_max = 2\n", users=("owner@example.test",))
    gw.cli("list", "create", LIST, "--owner", "owner@example.test", "--policy", "open")
    # Members' mailboxes: local users (the users file is re-read when it changes).
    users_file = gw.state / "users"
    line = next(x for x in users_file.read_text().splitlines() if x.startswith("owner@"))
    secret = line.split(":", 1)[1]
    users_file.write_text(users_file.read_text() + "".join(f"{m}:{secret}\n" for m in members))
    assert gw.cli("list", "add", LIST, "--file", "-", stdin="\n".join(members) + "\n"
                  ).returncode == 0
    send(gw, "owner@example.test", LIST, "to everyone")
    # Kill the gateway while the copies are being written.
    wait_for(lambda: sum(1 for m in members[:200] if gw.messages(m)) >= 20, what="some copies")
    gw.kill9()
    gw.start()
    wait_for(lambda: all(gw.messages(m) for m in members), timeout=120, what="every copy")
    wait_for(lambda: "queue is empty" in gw.cli("queue", "list").stdout, timeout=60,
             what="queue empty")
    assert all(len(gw.messages(m)) == 1 for m in members)
