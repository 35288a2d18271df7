"""DATA streamed to the spool file, through the real gateway (issue 11): a multi-MB
message arrives byte-exact; a message cut off (disconnect, kill -9) leaves no file."""

from __future__ import annotations

import os
import random
import smtplib
import socket

from conftest import wait_for
from test_smtp_flow import body_of


def tmp_files(gateway) -> list[str]:
    return os.listdir(gateway.state / "queue" / "tmp")


def test_a_multi_megabyte_message_arrives_byte_exact(gateway):
    rng = random.Random(11)
    chars = b"abcXYZ .\t\x80\xe9\xff0123"  # 8-bit too; no CR or LF inside a line
    table = bytes(chars[i % len(chars)] for i in range(256))
    lines = []
    for n in range(60_000):  # about 6 MB of lines of every length, some starting with dots
        line = rng.randbytes(rng.randrange(200)).translate(table)
        lines.append((b"." if n % 50 == 0 else b"") + line)
    message = b"Subject: stream\r\nMessage-ID: <stream@remote.test>\r\n\r\n" + \
        b"\r\n".join(lines) + b"\r\n"
    assert len(message) > 5_000_000
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=60) as s:
        s.ehlo("client.test")
        assert s.sendmail("bob@remote.test", ["alice@example.test"], message,
                          mail_options=["BODY=8BITMIME"]) == {}
    [stored] = gateway.wait_messages("alice@example.test", 1)
    assert body_of(stored) == message
    assert tmp_files(gateway) == []
    gateway.wait_log("message-id=<stream@remote.test>")


def start_data(gateway) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gateway.ports["smtp"]), timeout=30)
    f = s.makefile("rb")
    assert f.readline().startswith(b"220")
    s.sendall(b"EHLO c.test\r\nMAIL FROM:<b@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
              b"DATA\r\n")
    while not f.readline().startswith(b"354"):
        pass
    s.sendall(b"Subject: cut\r\n\r\n" + b"x" * 998 + b"\r\n" * 1 + (b"y" * 998 + b"\r\n") * 3000)
    wait_for(lambda: tmp_files(gateway), what="the message's file in queue/tmp")
    return s


def test_a_disconnect_in_the_middle_of_data_leaves_no_file(gateway):
    start_data(gateway).close()
    wait_for(lambda: not tmp_files(gateway), what="queue/tmp emptied")
    assert os.listdir(gateway.state / "queue" / "entries") == []


def test_a_message_cut_off_by_kill_9_is_removed_at_the_next_start(gateway):
    s = start_data(gateway)
    gateway.kill9()
    s.close()
    assert tmp_files(gateway)  # what the crash left
    gateway.start()
    wait_for(lambda: not tmp_files(gateway), what="queue/tmp emptied at start")
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as c:
        assert c.sendmail("bob@remote.test", ["alice@example.test"],
                          b"Subject: after\r\n\r\nx\r\n") == {}
    [stored] = gateway.wait_messages("alice@example.test", 1)
    assert b"Subject: after" in stored
