"""COMPRESS=DEFLATE (RFC 4978) for real: `twistd mailgateway` and imaplib with a small
zlib layer under it, over plaintext, inside STARTTLS and through the TLS front
(an implicit-TLS port like 993). Issue 12."""

from __future__ import annotations

import imaplib
import zlib

import pytest
from conftest import PASSWORD, client_context, free_port
from test_tlsfront_flow import IMAP4FromClient, wait_ports


@pytest.fixture(autouse=True)
def imaplib_knows_compress(monkeypatch):
    monkeypatch.setitem(imaplib.Commands, "COMPRESS", ("AUTH", "SELECTED"))


class Deflating:
    """imaplib with COMPRESS DEFLATE: raw deflate both ways after the OK."""

    _out = _in = None
    _buf = b""

    def compress(self) -> None:
        typ, data = self._simple_command("COMPRESS", "DEFLATE")
        assert typ == "OK", data
        self._out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._in = zlib.decompressobj(-15)
        self.wire_in = 0

    def send(self, data: bytes) -> None:
        if self._out is None:
            return super().send(data)
        return super().send(self._out.compress(data) + self._out.flush(zlib.Z_SYNC_FLUSH))

    def _fill(self) -> None:
        chunk = self.file.read1(65536)
        if not chunk:
            raise imaplib.IMAP4.abort("connection closed")
        self.wire_in += len(chunk)
        self._buf += self._in.decompress(chunk)

    def read(self, size: int) -> bytes:
        if self._in is None:
            return super().read(size)
        while len(self._buf) < size:
            self._fill()
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def readline(self) -> bytes:
        if self._in is None:
            return super().readline()
        while b"\n" not in self._buf:
            self._fill()
        line, self._buf = self._buf.split(b"\n", 1)
        return line + b"\n"


class Plain(Deflating, imaplib.IMAP4):
    pass


class StartTLS(Deflating, imaplib.IMAP4):
    pass


class Front(Deflating, IMAP4FromClient):
    pass


MESSAGE = (b"From: bob@example.test\r\nSubject: compressed\r\n\r\n"
           + b"".join(b"line %d of a long message body\r\n" % n for n in range(20000)))


def exercise(m) -> None:
    """What a client does with a compressed session: select, append, fetch, a second
    COMPRESS refused, logout."""
    m.compress()
    assert m.select("INBOX")[0] == "OK"
    typ, data = m.append("INBOX", None, None, MESSAGE)
    assert typ == "OK", data
    typ, data = m.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1] == MESSAGE
    assert m.wire_in < len(MESSAGE) // 5  # it came compressed
    typ, data = m._simple_command("COMPRESS", "DEFLATE")
    assert typ == "NO" and b"[COMPRESSIONACTIVE]" in data[-1]
    assert m.noop()[0] == "OK"
    assert m.logout()[0] == "BYE"


def test_compress_over_plaintext(make_gateway):
    gateway = make_gateway("[auth]\nplaintext_from_loopback = true\n")
    m = Plain("127.0.0.1", gateway.ports["imap"], timeout=30)
    assert "COMPRESS=DEFLATE" in m.capabilities
    with pytest.raises(imaplib.IMAP4.error):  # RFC 4978: not before login
        m._simple_command("COMPRESS", "DEFLATE")
    m.login("alice@example.test", PASSWORD)
    exercise(m)


def test_compress_inside_starttls(make_tls_gateway, ca):
    gw = make_tls_gateway()
    m = StartTLS("127.0.0.1", gw.ports["imap"], timeout=30)
    m.starttls(ssl_context=client_context(ca))
    m.login("alice@example.test", PASSWORD)
    exercise(m)


def test_compress_through_the_tls_front(make_tls_gateway, ca):
    imaps = free_port()
    make_tls_gateway(f'[[tlsfront]]\nname = "imaps"\naccept = "tcp:{imaps}:interface='
                     '127.0.0.1"\nconnect = "imap"\n')
    wait_ports(imaps)
    m = Front("127.0.0.1", imaps, ssl_context=client_context(ca), timeout=30)
    m.login("alice@example.test", PASSWORD)
    exercise(m)


def test_a_big_message_over_starttls_and_compress_is_sent_in_pieces(make_tls_gateway, ca):
    """Without sendfile the message passes through the gateway. Read whole, a 32 MiB
    message grew it by its size and the copies TLS and zlib made (about 130 MiB), and
    its attachment asked for 8 times in one FETCH by 8 times that (some 800 MiB). In
    pieces it grows by a few of them, whatever the message's size: less than half of
    it here (the pool's threads each keep some freed memory, so a few MiB vary)."""
    import base64
    import os
    from pathlib import Path

    from test_imap_sendfile_flow import put, status

    gw = make_tls_gateway()
    attachment = base64.encodebytes(os.urandom(24 << 20)).replace(b"\n", b"\r\n")
    data = (b"From: bob@example.test\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + attachment + b"\r\n--b--\r\n")
    put(gw, [data])
    m = StartTLS("127.0.0.1", gw.ports["imap"], timeout=120)
    m.starttls(ssl_context=client_context(ca))
    m.login("alice@example.test", PASSWORD)
    assert m.select("INBOX", readonly=True)[0] == "OK"
    assert m.fetch("1", "(BODY.PEEK[]<0.10>)")[0] == "OK"  # index and caches warm
    # A part's place is found in the message read once (in the pool); then the part,
    # however often asked for, goes from the file as the whole message does.
    parts = " ".join(["BODY.PEEK[1]"] * 8)
    for compressed, items, want, read in ((False, "BODY.PEEK[]", [data], 0),
                                          (False, parts, [attachment] * 8, len(data)),
                                          (True, "BODY.PEEK[]", [data], 0)):
        if compressed:
            m.compress()
        Path(f"/proc/{gw.proc.pid}/clear_refs").write_text("5")  # peak RSS := RSS now
        before = status(gw.proc.pid, "VmHWM")
        typ, got = m.fetch("1", f"({items})")
        assert typ == "OK" and [part[1] for part in got if isinstance(part, tuple)] == want
        grown = status(gw.proc.pid, "VmHWM") - before
        assert grown < (read + len(data) // 2) // 1024, f"{items} ({compressed=}): grew by " \
            f"{grown} kB"
    assert m.logout()[0] == "BYE"
