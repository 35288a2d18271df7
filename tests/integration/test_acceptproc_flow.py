"""SMTP accept workers ([smtp] accept_workers, gateway/acceptproc) through the real twistd:
mail over many sessions lands and relays, AUTH failures count in one budget, a killed
worker is started again, and no worker outlives the gateway."""

from __future__ import annotations

import base64
import imaplib
import os
import re
import signal
import smtplib
import socket

import pytest
from conftest import PASSWORD, alive, children, client_context, free_port, wait_for
from smtp_sink import SMTPSink

USER = "alice@example.test"
ON = "[smtp]\naccept_workers = 2\n[auth]\nplaintext_from_loopback = true\n"


def workers(gw) -> list[int]:
    return children(gw.proc.pid, b"gateway.acceptproc")


def send(gw, n: int = 1, tag: str = "m", to: tuple[str, ...] = (USER,)) -> None:
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=10) as s:
        for i in range(n):
            s.sendmail("bob@remote.test", list(to),
                       f"Subject: {tag}{i}\r\nMessage-ID: <{tag}{i}@r.test>\r\n\r\nbody {i}\r\n")


@pytest.fixture
def sink():
    server = SMTPSink("127.0.0.1", free_port()).start()
    yield server
    server.stop()


def test_mail_over_many_sessions_lands_and_relays(make_gateway, sink):
    gw = make_gateway(f"{ON}\n[relay]\nsmarthost = \"[127.0.0.1]:{sink.port}\"\n"
                      "tls = \"none\"\n")
    pids = wait_for(lambda: len(workers(gw)) == 2 and workers(gw), what="two workers")
    for session in range(6):
        send(gw, 3, f"s{session}-")
    with smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=10) as s:
        s.login(USER, PASSWORD)  # checked by the gateway for the worker
        s.sendmail(USER, ["carol@remote.test"], b"Subject: out\r\n\r\nrelayed\r\n")
    gw.wait_messages(USER, 18)
    wait_for(lambda: sink.received_for("carol@remote.test"), 30, "the relayed message")
    log = gw.wait_log("to=<carol@remote.test>, relay=127.0.0.1")
    assert "accept worker 1 started" in log and "accept worker 2 started" in log
    # The workers' lines reach the gateway's one log, with queue ID and client.
    queued = re.findall(r"([0-9A-Z]{12,}): from=<bob@remote.test>, .* "
                        r"client=unknown\[127\.0\.0\.1\] queued", log)
    assert len(set(queued)) == 18
    assert "auth ok: client=unknown[127.0.0.1] service=submission" in log
    assert gw.proc.pid not in pids


def auth_plain(gw, password: str) -> int:
    """One AUTH PLAIN on a session of its own (the kernel may hand it to either worker)."""
    token = base64.b64encode(f"\0{USER}\0{password}".encode()).decode()
    with smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=10) as s:
        s.ehlo("client.test")
        return s.docmd("AUTH", f"PLAIN {token}")[0]


def test_auth_failures_of_all_workers_count_in_one_budget(make_gateway):
    gw = make_gateway(f"{ON}max_failures_per_client = 2\nfailure_delay = 0.01\n")
    wait_for(lambda: len(workers(gw)) == 2, what="two workers")
    assert [auth_plain(gw, "wrong") for _ in range(2)] == [535, 535]
    # The right password, but this address's budget is spent, whichever worker asks,
    # and over IMAP too (the gateway's own sessions): one budget, as in one process.
    assert [auth_plain(gw, PASSWORD) for _ in range(4)] == [454] * 4
    imap = imaplib.IMAP4("127.0.0.1", gw.ports["imap"], timeout=30)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="too many|UNAVAILABLE"):
            imap.login(USER, PASSWORD)
    finally:
        imap.shutdown()
    gw.wait_log("auth refused user=alice@example.test client=127.0.0.1")


def test_sighup_reloads_the_aliases_of_every_worker(make_gateway, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text("old: alice\n")
    # No look at the file's mtime for an hour: only SIGHUP reloads it.
    gw = make_gateway(f'{ON}[aliases]\nfile = "{aliases}"\ncheck_interval = 3600\n')
    wait_for(lambda: len(workers(gw)) == 2, what="two workers")
    gw.wait_log("accept worker for")
    wait_for(lambda: gw.log_text().count("accept worker for") == 2, what="both workers")
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=10) as s:
        s.ehlo("client.test")
        assert s.docmd("MAIL", "FROM:<bob@remote.test>")[0] == 250
        assert s.docmd("RCPT", "TO:<new@example.test>")[0] == 550  # not yet known
    aliases.write_text("old: alice\nnew: alice\n")
    # The gateway, each worker and the runner process (when one runs): a table each.
    tables = 3 if gw.delivery_pid() == gw.proc.pid else 4
    os.kill(gw.proc.pid, signal.SIGHUP)
    wait_for(lambda: gw.log_text().count("aliases reloaded (SIGHUP): 2 names") >= tables,
             what=f"{tables} reloads")
    assert gw.log_text().count("aliases reloaded (SIGHUP): 2 names") == tables
    for i in range(6):  # sessions that land on either worker
        send(gw, 1, f"h{i}-", to=("new@example.test",))
    gw.wait_messages(USER, 6)


def greeting(gw) -> tuple[int, socket.socket]:
    sock = socket.create_connection(("127.0.0.1", gw.ports["smtp"]), timeout=10)
    return int(sock.recv(100)[:3]), sock


def test_connections_per_client_are_counted_across_workers(make_gateway):
    gw = make_gateway("[smtp]\naccept_workers = 2\nmax_connections_per_client = 2\n")
    wait_for(lambda: gw.log_text().count("accept worker for") == 2, what="both workers")

    def hold_two() -> list[socket.socket] | None:
        # The start-up's port probes sat in the listen queue until a worker took
        # them: counted and let go a moment later, they may briefly fill the limit.
        held = [greeting(gw) for _ in range(2)]
        if [code for code, _ in held] == [220, 220]:
            return [sock for _, sock in held]
        for _, sock in held:
            sock.close()
        return None

    def refused() -> bool:
        # The word that 127.0.0.1 is at its limit reaches the workers within
        # milliseconds (more on a loaded machine); one that slipped by is closed.
        code, sock = greeting(gw)
        sock.close()
        return code == 421

    held = wait_for(hold_two, timeout=10, what="two connections held")
    try:
        # Whichever worker takes it: 20 refused in a row once the word of the limit
        # reached both (a worker that never heard it would admit about every other).
        wait_for(lambda: all(refused() for _ in range(20)), timeout=10,
                 what="20 more connections refused in a row")
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: not refused(), timeout=10, what="a connection welcome again")


def test_a_killed_worker_is_started_again_and_nothing_is_lost(make_gateway):
    gw = make_gateway(ON)
    first = wait_for(lambda: len(workers(gw)) == 2 and workers(gw), what="two workers")
    send(gw, 5, "a")
    os.kill(first[0], signal.SIGKILL)
    wait_for(lambda: not alive(first[0]), what="the killed worker's end")
    again = wait_for(lambda: (lambda now: len(now) == 2 and first[0] not in now and now)(
        workers(gw)), what="a new worker")
    send(gw, 5, "b")
    gw.wait_messages(USER, 10)
    log = gw.wait_log("ended (signal 9)")
    assert re.search(r"accept worker \d ended \(signal 9\); starting it again", log)
    assert first[1] in again


def test_no_worker_outlives_the_gateway(make_gateway):
    gw = make_gateway(ON)
    pids = wait_for(lambda: len(workers(gw)) == 2 and workers(gw), what="two workers")
    gw.stop()
    wait_for(lambda: not any(alive(p) for p in pids), timeout=10, what="the workers to end")
    gw.start()
    pids = wait_for(lambda: len(workers(gw)) == 2 and workers(gw), what="two workers")
    gw.kill9()  # no clean stop: the workers see their pipes close
    wait_for(lambda: not any(alive(p) for p in pids), what="the workers to end")
    gw.start()
    send(gw)
    gw.wait_messages(USER, 1)


def test_workers_take_mail_over_starttls_and_the_implicit_tls_front(make_tls_gateway, ca):
    # The workers inherit the sockets the TLS front forwards 465 to (proxied), and
    # offer STARTTLS with the gateway's certificate on 587.
    from test_tlsfront_flow import SMTPFromClient, front_config, wait_ports

    smtps, pop3s = free_port(), free_port()
    gw = make_tls_gateway("[smtp]\naccept_workers = 2\n\n" + front_config(smtps, pop3s))
    wait_for(lambda: gw.log_text().count("accept worker for") == 2, what="both workers")
    wait_ports(smtps, pop3s)
    for i in range(3):  # sessions that land on either worker
        with smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=10) as s:
            s.ehlo("client.test")
            assert not s.has_extn("auth")  # AUTH only over TLS
            s.starttls(context=client_context(ca))
            s.login(USER, PASSWORD)
            s.sendmail(USER, [USER], f"Subject: starttls {i}\r\n\r\nbody\r\n".encode())
        with SMTPFromClient(smtps, ca) as s:
            code, reply = s.ehlo("client.test")
            assert code == 250 and b"[127.0.0.2]" in reply  # the real client, via PROXY
            s.login(USER, PASSWORD)
            s.sendmail(USER, [USER], f"Subject: implicit {i}\r\n\r\nbody\r\n".encode())
    gw.wait_messages(USER, 6)
    log = gw.log_text()
    assert log.count("client=unknown[127.0.0.2]") >= 3
