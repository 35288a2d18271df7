"""FETCH of big messages over plaintext IMAP, sent from the files (gateway/filesend.py):
copied through a buffer, since the tests' client is on this host, or by sendfile.

The messages are put straight into the INBOX's cur/ (SELECT finds them), so
their bytes, 8-bit and NUL-free, are known exactly. Checked over the wire:
byte-exact literals, partial fetches <o.n> at the start, the middle and past
the end, big and small messages and other items in one response, in order;
a client that does not read holds the server to a bounded number of open
files and does not stop other sessions; the server does not grow by the
size of the message it sends.
"""

from __future__ import annotations

import os
import random
import re
import socket
from pathlib import Path

import pytest
from conftest import wait_for

ALICE = "alice@example.test"
PLAINTEXT = "[auth]\nplaintext_from_loopback = true\n"
FILES_PER_BATCH = 16  # gateway/access/imap/fetch.py


@pytest.fixture
def gw(make_gateway):
    return make_gateway(PLAINTEXT)


def message(n: int, size: int) -> bytes:
    """About size octets: a header, then lines of 8-bit text (never NUL, CR or LF alone)."""
    rng = random.Random(n)
    head = (f"From: bob@remote.test\r\nTo: {ALICE}\r\nSubject: big {n}\r\n"
            f"Message-ID: <big{n}@remote.test>\r\n\r\n").encode()
    body = bytearray()
    while len(head) + len(body) < size:
        body += bytes(rng.choice(b"abcdefghij\xe4\xf6\xfc ") for _ in range(76)) + b"\r\n"
    return head + bytes(body)


def put(gw, messages: list[bytes]) -> None:
    """The messages into the INBOX's cur/, in UID order."""
    for sub in ("tmp", "new", "cur"):
        (gw.maildir(ALICE) / sub).mkdir(parents=True, exist_ok=True)
    cur = gw.maildir(ALICE) / "cur"
    for n, data in enumerate(messages):
        (cur / f"{1700000000 + n}.M{n}P1.test:2,S").write_bytes(data)


def literals(data: list) -> list[tuple[bytes, bytes]]:
    """imaplib's FETCH answer as (response head, literal) pairs."""
    return [(item[0], item[1]) for item in data if isinstance(item, tuple)]


def status(pid: int, field: str) -> int:
    """A kB figure of /proc/PID/status (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def open_messages(pid: int, cur: Path) -> int:
    """Files of cur/ the gateway holds open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith(str(cur) + "/")
        except OSError:
            pass  # closed meanwhile
    return count


# The tests connect from loopback, where the ranges are copied through a buffer
# (filesend.same_host); sendfile_local = true sends them by sendfile as to a remote client.
@pytest.mark.parametrize("sendfile_local", ["false", "true"])
def test_big_messages_and_partials_are_byte_exact_in_order(make_gateway, sendfile_local):
    gw = make_gateway(PLAINTEXT + f"\n[imap]\nsendfile_local = {sendfile_local}\n")
    big = [message(n, size) for n, size in enumerate((3 << 20, 70_000, 200, 1 << 20))]
    put(gw, big)
    m = gw.imap_login(ALICE)
    assert m.select("INBOX", readonly=True)[0] == "OK"
    typ, data = m.uid("FETCH", "1:*", "(UID RFC822.SIZE BODY.PEEK[] FLAGS)")
    assert typ == "OK"
    got = literals(data)
    assert [lit for _, lit in got] == big
    for (head, lit), uid in zip(got, (1, 2, 3, 4), strict=True):
        assert re.search(rb"UID %d RFC822.SIZE %d BODY\[\] \{%d\}$" % (uid, len(lit), len(lit)),
                         head), head
    # Partials (RFC 3501 6.4.5): from the start, the middle, across and past the end.
    size = len(big[0])
    for origin, count in ((0, 100), (1000, 70_000), (size - 10, 100), (size + 5, 10)):
        typ, data = m.uid("FETCH", "1", f"(BODY.PEEK[]<{origin}.{count}>)")
        assert typ == "OK"
        if origin >= size:
            assert re.search(rb'BODY\[\]<%d> ""' % origin, data[0]), data
        else:
            (head, lit), = literals(data)
            assert head.endswith(b"BODY[]<%d> {%d}" % (origin, len(lit)))
            assert lit == big[0][origin:origin + count]
    # Two literals of the same message in one response, and RFC822 (no PEEK: \Seen).
    typ, data = m.uid("FETCH", "4", "(BODY.PEEK[]<5.10> BODY.PEEK[])")
    assert typ == "OK"
    assert data[0][1] == big[3][5:15] and data[1][1] == big[3]
    m.logout()


def test_the_server_does_not_hold_a_big_message_it_sends(gw):
    """Read into memory, a 96 MiB message grew the server by 96 MiB or more."""
    data = message(0, 96 << 20)
    put(gw, [data])
    m = gw.imap_login(ALICE, timeout=120)
    assert m.select("INBOX", readonly=True)[0] == "OK"
    assert m.uid("FETCH", "1", "(BODY.PEEK[]<0.10>)")[0] == "OK"  # index and caches warm
    pid = gw.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := RSS now
    before = status(pid, "VmHWM")
    typ, got = m.uid("FETCH", "1", "(BODY.PEEK[])")
    assert typ == "OK" and got[0][1] == data
    grown = status(pid, "VmHWM") - before
    assert grown < 32 * 1024, f"the server grew by {grown} kB"
    m.logout()


def test_a_client_that_does_not_read_holds_few_files_and_others_go_on(gw):
    big = [message(n, 1 << 20) for n in range(3 * FILES_PER_BATCH)]
    put(gw, big)
    cur = gw.maildir(ALICE) / "cur"
    pid = gw.proc.pid
    lazy = gw.imap_login(ALICE, timeout=60)
    assert lazy.select("INBOX", readonly=True)[0] == "OK"
    lazy.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    reader = lazy.file
    lazy.send(b"c UID FETCH 1:* (BODY.PEEK[])\r\n")
    wait_for(lambda: open_messages(pid, cur) > 0, what="the FETCH under way")
    # Another session is served while this one's output waits for its client.
    other = gw.imap_login(ALICE)
    assert other.noop()[0] == "OK"
    assert other.select("INBOX", readonly=True)[0] == "OK"
    assert other.uid("FETCH", "2", "(BODY.PEEK[])")[1][0][1] == big[1]
    other.logout()
    assert open_messages(pid, cur) <= 2 * FILES_PER_BATCH
    # Now read slowly (small reads), checking every byte and the order.
    for n, data in enumerate(big, 1):
        head = reader.readline()
        assert head == b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (n, n, len(data)), head
        got = bytearray()
        while len(got) < len(data):
            got += reader.read(min(4096, len(data) - len(got)))
        assert got == data
        assert reader.readline() == b")\r\n"
        assert open_messages(pid, cur) <= 2 * FILES_PER_BATCH
    assert reader.readline().startswith(b"c OK")
    lazy.logout()
    wait_for(lambda: open_messages(pid, cur) == 0, what="the files closed")


def test_a_client_gone_mid_fetch_leaves_no_file_open(gw):
    put(gw, [message(n, 1 << 20) for n in range(2 * FILES_PER_BATCH)])
    cur = gw.maildir(ALICE) / "cur"
    pid = gw.proc.pid
    m = gw.imap_login(ALICE)
    assert m.select("INBOX", readonly=True)[0] == "OK"
    m.send(b"x UID FETCH 1:* (BODY.PEEK[])\r\n")
    m.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    wait_for(lambda: open_messages(pid, cur) > 0, what="the FETCH under way")
    m.file.close()  # the socket's last reference: then a reset (linger 0), half sent
    m.sock.close()
    wait_for(lambda: open_messages(pid, cur) == 0, what="the files closed")
    check = gw.imap_login(ALICE)
    assert check.noop()[0] == "OK"
    check.logout()


def test_with_sendfile_off_a_partial_is_the_same_bytes(make_gateway):
    gw = make_gateway(PLAINTEXT + "\n[imap]\nsendfile_from = 0\n")
    data = message(0, 2 << 20)
    put(gw, [data])
    m = gw.imap_login(ALICE)
    assert m.select("INBOX", readonly=True)[0] == "OK"
    typ, got = m.uid("FETCH", "1", "(BODY.PEEK[]<7.1500000>)")
    assert typ == "OK" and got[0][1] == data[7:1500007]
    m.logout()


def test_a_message_renamed_by_a_flag_change_is_sent_whole(gw):
    """The file is open before it is sent: a flag change (a rename) meanwhile changes nothing."""
    data = message(0, 1 << 20)
    put(gw, [data])
    m = gw.imap_login(ALICE)
    assert m.select("INBOX")[0] == "OK"
    typ, got = m.uid("FETCH", "1", "(RFC822)")  # sets \Seen: a rename before the send
    assert typ == "OK" and got[0][1] == data
    assert m.uid("STORE", "1", "+FLAGS", r"(\Flagged)")[0] == "OK"
    typ, got = m.uid("FETCH", "1", "(BODY[])")
    assert typ == "OK" and got[0][1] == data
    m.logout()
