"""The log an administrator greps (gateway/logs.py), produced by real sessions:
connect/disconnect, rejects, AUTH, queued, delivered and deferred lines; the
fail2ban filter of etc/fail2ban/ finds the failed logins; JSON lines on request."""

from __future__ import annotations

import imaplib
import json
import poplib
import re
import shutil
import smtplib
import subprocess
from pathlib import Path

import pytest
from conftest import PASSWORD, wait_for
from smtp_sink import SinkScript
from test_relay_flow import nameserver, relay_gateway, sinks, submit  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]
FILTER = ROOT / "etc" / "fail2ban" / "filter.d" / "mailgateway.conf"
PLAINTEXT = "[auth]\nplaintext_from_loopback = true\n"


def sessions(gw) -> None:
    """What the lines below come from: each kind of session once."""
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=30) as s:
        s.ehlo("client.test")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("alice@example.test", "wrong password")
        s.mail("bob@remote.test")
        assert s.rcpt("carol@remote.test")[0] == 554  # relay denied
        assert s.rcpt("nobody@example.test")[0] == 550  # unknown user
        assert s.rcpt("alice@example.test")[0] == 250
        s.data(b"Subject: log\r\nMessage-ID: <m1@remote.test>\r\n\r\nbody\r\n")
    with smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=30) as s:
        s.ehlo("laptop.test")
        s.login("alice@example.test", PASSWORD)
        s.sendmail("alice@example.test", ["dave@remote.test"], b"Subject: out\r\n\r\nx\r\n")
    pop = poplib.POP3("127.0.0.1", gw.ports["pop3"], timeout=30)
    pop.user("alice@example.test")
    with pytest.raises(poplib.error_proto):
        pop.pass_("guess")
    pop.quit()
    imap = imaplib.IMAP4("127.0.0.1", gw.ports["imap"], timeout=30)
    with pytest.raises(imaplib.IMAP4.error):
        imap.login("mallory@example.test", "guess")
    imap.logout()


def test_each_event_is_one_greppable_line(make_gateway):
    gw = make_gateway(PLAINTEXT)
    sessions(gw)
    gw.wait_messages("alice@example.test", 1)
    wait_for(lambda: "status=deferred" in gw.log_text() and
             gw.log_text().count("auth failed") >= 3, what="the delivery and auth lines")
    log = gw.log_text()
    c = r"client=unknown\[127\.0\.0\.1\]"
    for pattern in [
        r"connect from unknown\[127\.0\.0\.1\] service=smtp",
        r"connect from unknown\[127\.0\.0\.1\] service=pop3",
        r"connect from unknown\[127\.0\.0\.1\] service=imap",
        r"reject: RCPT from unknown\[127\.0\.0\.1\]: 554 5\.7\.1 .*; from=<bob@remote\.test> "
        r"to=<carol@remote\.test> helo=<client\.test>",
        r"reject: RCPT from unknown\[127\.0\.0\.1\]: 550 5\.1\.1 .*; from=<bob@remote\.test> "
        r"to=<nobody@example\.test> helo=<client\.test>",
        rf"auth failed: {c} service=smtp mechanism=PLAIN user=<alice@example\.test> tls=no",
        rf"auth ok: {c} service=submission mechanism=PLAIN user=<alice@example\.test> tls=no",
        rf"auth failed: {c} service=pop3 mechanism=USER user=<alice@example\.test>",
        rf"auth failed: {c} service=imap mechanism=LOGIN user=<mallory@example\.test>",
        r"(\w+): from=<bob@remote\.test>, size=\d+, nrcpt=1, message-id=<m1@remote\.test>, "
        rf"{c} queued",
        r"\w+: to=<alice@example\.test>, relay=local, delay=[\d.]+, delays=[\d.]+/[\d.]+, "
        r"dsn=2\.0\.0, status=sent \(delivered\)",
        r"\w+: to=<dave@remote\.test>, relay=remote, delay=[\d.]+, delays=[\d.]+/[\d.]+, "
        r"dsn=4\.\d\.\d, status=deferred \(4\d\d ",
        r"disconnect from unknown\[127\.0\.0\.1\] service=smtp queued=1 errors=\d+ seconds=",
    ]:
        # Lines reach the file from the log writer's thread: each within a moment.
        wait_for(lambda p=pattern: re.search(p, gw.log_text()),
                 what=f"a line matching {pattern!r} in:\n{log[-6000:]}")
    log = gw.log_text()
    assert "Starting factory" not in log and "Stopping factory" not in log
    # The queue ID of the queued line is the one the delivery line names.
    qid = re.search(r"(\w+): from=<bob@remote\.test>, size=", log).group(1)
    assert re.search(rf"{qid}: to=<alice@example\.test>, .*status=sent", log)
    # And its last line, once every recipient is done (Postfix's "removed").
    wait_for(lambda: f"{qid}: removed" in gw.log_text(), what="the removed line")


def test_an_expired_recipient_is_logged_and_bounced(make_gateway):
    gw = make_gateway(PLAINTEXT + "[queue]\nmax_age = 1\nretry_initial = 1\n")
    with smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=30) as s:
        s.login("alice@example.test", PASSWORD)
        s.sendmail("alice@example.test", ["carol@remote.test"], b"Subject: x\r\n\r\nx\r\n")
    (dsn,) = gw.wait_messages("alice@example.test", 1)  # no DNS answers: it gives up
    assert b"Undelivered Mail Returned to Sender" in dsn
    log = gw.wait_log("status=expired")
    assert re.search(r"(\w+): to=<carol@remote\.test>, relay=\S+, delay=[\d.]+, "
                     r"delays=[\d.]+/[\d.]+, dsn=4\.\d\.\d, status=expired", log), log[-3000:]


@pytest.mark.skipif(not shutil.which("fail2ban-regex"),
                    reason="fail2ban-regex not installed (.ci/run installs the fail2ban package)")
def test_the_fail2ban_filter_finds_the_failed_logins(make_gateway):
    gw = make_gateway(PLAINTEXT)
    sessions(gw)
    wait_for(lambda: gw.log_text().count("auth failed") >= 3, what="three failed logins")
    result = subprocess.run(["fail2ban-regex", "-v", str(gw.log), str(FILTER)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    hosts = re.findall(r"^\|\s+(\S+)\s+\w{3} \w{3} ", result.stdout, re.MULTILINE)
    # smtplib tries PLAIN, then LOGIN: SMTP fails twice, POP3 and IMAP once; no "auth ok".
    failures = gw.log_text().count("auth failed")
    assert failures >= 4 and hosts == ["127.0.0.1"] * failures, result.stdout
    assert f"{failures} matched" in result.stdout, result.stdout


def test_json_lines_for_log_shippers(make_gateway):
    gw = make_gateway(PLAINTEXT, users=("alice@example.test",))
    gw.stop()
    gw.start("--logger", "gateway.logs.json_lines")
    sessions(gw)
    wait_for(lambda: '"outcome": "failed", "service": "imap"' in gw.log_text()
             or gw.log_text().count('"event": "auth"') >= 4, what="the auth events")
    lines = gw.log_text().splitlines()
    started = next(i for i, line in enumerate(lines) if line.startswith("{"))
    events = [json.loads(line) for line in lines[started:] if line.strip()]
    auth = [e for e in events if e.get("event") == "auth" and e["outcome"] == "failed"]
    assert {e["service"] for e in auth} >= {"smtp", "pop3"}
    first = auth[0]
    assert first["client"] == "127.0.0.1" and first["level"] == "info"
    assert first["text"].startswith("auth failed: client=unknown[127.0.0.1]")
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", first["time"])


def test_relayed_and_bounced_lines(make_gateway, nameserver, sinks):  # noqa: F811
    gw = relay_gateway(make_gateway, nameserver, sinks)
    sinks("127.0.0.2", SinkScript(
        rcpt={"b@remote.test": "550 5.1.1 <b@remote.test>: Recipient address rejected"}))
    submit(gw, ["a@remote.test", "b@remote.test"], b"Subject: two\r\n\r\nhello\r\n")
    gw.wait_messages("alice@example.test", 1)  # the DSN
    for pattern in [
        r"\w+: to=<a@remote\.test>, relay=mx1\.remote\.test, delay=[\d.]+, "
        r"delays=[\d.]+/[\d.]+, dsn=2\.0\.0, status=sent",
        r"\w+: to=<b@remote\.test>, relay=mx1\.remote\.test, delay=[\d.]+, "
        r"delays=[\d.]+/[\d.]+, dsn=5\.1\.1, status=bounced \(550 5\.1\.1 .*Recipient "
        r"address rejected\)",
    ]:
        wait_for(lambda p=pattern: re.search(p, gw.log_text()), what=f"a line matching {pattern!r}")
