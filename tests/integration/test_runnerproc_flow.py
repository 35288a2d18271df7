"""The runner process ([queue] runner_process, gateway/runnerproc) through the real twistd:
it delivers, tells IMAP at once, dies without losing mail, and never outlives the gateway."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys

from conftest import alive, wait_for

USER = "alice@example.test"
ON = "[queue]\nrunner_process = true\n"


def send(gw, n: int = 1, tag: str = "m") -> None:
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=10) as s:
        for i in range(n):
            s.sendmail("bob@remote.test", [USER],
                       f"Subject: {tag}{i}\r\nMessage-ID: <{tag}{i}@r.test>\r\n\r\nbody {i}\r\n")


def test_mail_is_delivered_by_the_runner_process_and_idle_hears_of_it_at_once(make_gateway):
    # IMAP's own look at the folder is a minute away: an EXISTS before it is the
    # runner process's word (the names it renamed into new/).
    gw = make_gateway(f"{ON}[auth]\nplaintext_from_loopback = true\n"
                      "[imap]\npoll_interval = 60\n")
    child = gw.runner_pid()
    assert child is not None and child != gw.proc.pid
    m = gw.imap_login(USER)
    m.select("INBOX")
    tag = m._new_tag().decode()
    m.send(f"{tag} IDLE\r\n".encode())
    assert m.readline().startswith(b"+")
    send(gw, 3)
    seen = b""
    while b"3 EXISTS" not in seen:
        seen += m.readline()  # the socket's 30 s timeout fails the test, not a sleep
    m.send(b"DONE\r\n")
    m.readline()
    m.logout()
    log = gw.wait_log("status=sent")
    assert "runner process started" in log
    # The child's lines reach the gateway's one log with their queue IDs.
    assert log.count("relay=local") == 3 and log.count(": removed") == 3


def test_a_killed_runner_process_loses_nothing_and_is_started_again(make_gateway):
    gw = make_gateway(f"{ON}concurrency = 2\n")
    first = gw.runner_pid()
    send(gw, 30, "a")
    os.kill(first, signal.SIGKILL)
    send(gw, 20, "b")  # accepted while no runner runs: the next one finds them
    gw.wait_messages(USER, 50)
    second = wait_for(lambda: gw.runner_pid() not in (None, first) and gw.runner_pid())
    assert not alive(first)
    log = gw.wait_log("runner process ended (signal 9)")
    assert log.count("runner process started") >= 2
    wait_for(lambda: "queue is empty" in gw.cli("queue", "list").stdout, what="queue empty")
    assert len(gw.messages(USER)) == 50  # none lost, none twice
    assert second != first


def test_no_runner_process_outlives_the_gateway(make_gateway):
    gw = make_gateway(ON)
    child = gw.runner_pid()
    gw.stop()
    # The parent waits for its child's end before it exits; polled, as /proc may
    # show the reaped child for a moment under load.
    wait_for(lambda: not alive(child), timeout=5, what="the runner process to end")
    gw.start()
    child = gw.runner_pid()
    gw.kill9()  # no clean stop: the child sees its pipe close
    wait_for(lambda: not alive(child), what="the runner process to end")
    gw.start()  # and a new gateway starts its own at once
    send(gw)
    gw.wait_messages(USER, 1)


def test_a_second_runner_on_the_same_spool_is_refused(make_gateway):
    gw = make_gateway(ON)
    gw.wait_log("runner process for")  # it holds the runner lock from before that line
    result = subprocess.run([sys.executable, "-m", "gateway.runnerproc", "--config",
                             str(gw.config), "--lock-wait", "0"], capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "another queue runner" in result.stderr


def test_one_process_when_turned_off(make_gateway):
    gw = make_gateway("[queue]\nrunner_process = false\n")
    send(gw)
    gw.wait_messages(USER, 1)
    assert gw.runner_pid() is None
    assert "runner process" not in gw.log_text()
