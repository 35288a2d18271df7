"""DSN construction (RFC 3464, RFC 6522) and the Bouncer's spooling rules."""

from __future__ import annotations

import email
from email import policy

from twisted.internet import defer, task

from gateway.durable import run_now
from gateway.envelope import Envelope, Recipient, RecipientState, new_queue_id
from gateway.queue.bounce import Bouncer, build_dsn, status_of
from gateway.queue.spool import Spool

ORIGINAL = (b"Received: from c.test ([127.0.0.1])\r\nFrom: alice@example.test\r\n"
            b"Subject: caf\xc3\xa9\r\nMessage-ID: <m1@c.test>\r\n\r\nHello\r\n.dot\r\n")


class SyncSpool(Spool):
    """The real spool, storing in the calling thread (unit tests have no reactor)."""

    def store(self, envelope, message):
        return defer.maybeDeferred(self.store_blocking, envelope, message)


def failed_envelope() -> Envelope:
    env = Envelope(sender="alice@example.test", queue_id=new_queue_id(1000.0), arrived=1000.0,
                   recipients=[
                       Recipient("ok@remote.test", state=RecipientState.DONE),
                       Recipient("gone@remote.test", state=RecipientState.FAILED,
                                 last_error="550 5.1.1 <gone@remote.test>: no such user",
                                 remote_mta="mx1.remote.test")])
    return env


def parse(dsn: bytes):
    return email.message_from_bytes(dsn, policy=policy.default)


def test_failed_dsn_is_a_multipart_report_with_the_original():
    env = failed_envelope()
    dsn = build_dsn(env, [env.recipients[1]], ORIGINAL, action="failed",
                    hostname="mx.example.test", now=2000.0, size_limit=50000, dsn_id="X")
    msg = parse(dsn)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"].addresses[0].addr_spec == "alice@example.test"
    assert msg["Auto-Submitted"] == "auto-replied"
    human, status, original = msg.get_payload()
    assert "gone@remote.test" in human.get_content()
    assert "mx1.remote.test" in human.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_rcpt = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.example.test"
    assert per_rcpt["Final-Recipient"] == "rfc822; gone@remote.test"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Remote-MTA"] == "dns; mx1.remote.test"
    assert per_rcpt["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
    assert "ok@remote.test" not in dsn.decode("latin-1")  # only the failed one
    assert original.get_content_type() == "message/rfc822"
    # The original comes back byte-exact, 8-bit header included.
    assert ORIGINAL.replace(b"\r\n", b"\n")[:-1] in dsn.replace(b"\r\n", b"\n")


def test_big_original_returns_headers_only():
    env = failed_envelope()
    big = ORIGINAL + b"x" * 100 + b"\r\n"
    dsn = build_dsn(env, [env.recipients[1]], big, action="failed", hostname="mx.example.test",
                    now=2000.0, size_limit=100)
    part = parse(dsn).get_payload()[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert b"Message-ID: <m1@c.test>" in dsn and b"Hello" not in dsn


def test_delayed_dsn_says_it_will_retry():
    env = failed_envelope()
    rcpt = Recipient("slow@remote.test", last_error="451 4.4.1 connect to x: refused")
    dsn = build_dsn(env, [rcpt], ORIGINAL, action="delayed", hostname="mx.example.test",
                    now=2000.0, size_limit=50000, retry_until=1000.0 + 432000)
    block = parse(dsn).get_payload()[1].get_payload()[1]
    assert (block["Action"], block["Status"]) == ("delayed", "4.4.1")
    assert "Will-Retry-Until" in block
    assert parse(dsn)["Subject"].startswith("Delayed Mail")


def test_status_codes():
    assert status_of(Recipient("a@b.test", last_error="550 5.7.1 no"), "failed") == "5.7.1"
    # Gave up after temporary failures: delivery time expired (RFC 3463 X.4.7).
    assert status_of(Recipient("a@b.test", last_error="451 4.4.1 x"), "failed") == "5.4.7"
    assert status_of(Recipient("a@b.test", last_error="junk"), "failed") == "5.0.0"


def make_bouncer(tmp_path):
    clock = task.Clock()
    clock.advance(5000)
    spool = SyncSpool(tmp_path / "spool", reactor=None)
    original = tmp_path / "orig.msg"
    original.write_bytes(ORIGINAL)
    bouncer = Bouncer(spool=spool, hostname="mx.example.test", clock=clock, size_limit=50000,
                      max_age=432000, run_blocking=run_now)
    return bouncer, spool, str(original)


def test_bounce_is_spooled_with_the_null_sender_to_the_sender(tmp_path):
    bouncer, spool, path = make_bouncer(tmp_path)
    env = failed_envelope()
    box = []
    bouncer.bounce(env, [env.recipients[1]], path, "failed").addCallback(box.append)
    (qid,) = box
    assert spool.queue_ids() == [qid]
    stored = spool.load(qid)
    assert stored.sender == ""
    assert [r.address for r in stored.recipients] == ["alice@example.test"]
    assert stored.body == "8BITMIME"  # the returned original has an 8-bit header
    with open(spool.message_path(qid), "rb") as f:
        assert f"Message-ID: <{qid}.dsn@mx.example.test>".encode() in f.read()


def test_never_a_bounce_for_the_null_sender(tmp_path):
    bouncer, spool, path = make_bouncer(tmp_path)
    env = failed_envelope()
    env.sender = ""
    box = []
    bouncer.bounce(env, [env.recipients[1]], path, "failed").addCallback(box.append)
    assert box == [None]
    assert spool.queue_ids() == []


def test_a_big_original_is_never_read_whole_and_comes_back_as_headers(tmp_path, monkeypatch):
    from read_spy import ReadSpy

    from gateway.queue import bounce

    bouncer, spool, path = make_bouncer(tmp_path)
    with open(path, "ab") as f:
        f.write(b"body line\r\n" * 10000)  # 110 KB, over the 50,000 limit
    spy = ReadSpy()
    monkeypatch.setattr(bounce, "open", spy.open, raising=False)
    env = failed_envelope()
    box = []
    bouncer.bounce(env, [env.recipients[1]], path, "failed").addCallback(box.append)
    assert spy.reads == [50001]
    with spy.real_open(spool.message_path(box[0]), "rb") as f:
        dsn = f.read()
    assert parse(dsn).get_payload()[2].get_content_type() == "text/rfc822-headers"
    assert b"Message-ID: <m1@c.test>" in dsn and b"body line" not in dsn


def test_headers_longer_than_the_limit_are_cut_at_a_line_end():
    env = failed_envelope()
    head = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(20))
    start = (head + b"\r\nbody\r\n")[:301]  # what read_original gives for a limit of 300
    dsn = build_dsn(env, [env.recipients[1]], start, action="failed",
                    hostname="mx.example.test", now=2000.0, size_limit=300)
    part = parse(dsn).get_payload()[2]
    assert part.get_content_type() == "text/rfc822-headers"
    text = part.get_payload()
    assert text.endswith("\n") and "X-H4: " in text and "X-H5" not in text
