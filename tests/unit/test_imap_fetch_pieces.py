"""FETCH of a big message where sendfile is not used (STARTTLS, COMPRESS): the message
goes from its file a piece of [imap] fetch_buffer at a time, read in the pool, so a
session holds a piece or two for a client that does not read, never the whole message.
(Plaintext sendfile: tests/integration/test_imap_sendfile_flow.py.)"""

from __future__ import annotations

import os
import zlib

import pytest
from held_pool import Held
from imap_dialogue import BOX, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock

from gateway import filesend

PIECE = 4096
# Lines that differ, so a piece out of place or twice would show.
MESSAGE = b"Subject: big\r\n\r\n" + b"".join(b"line %06d of the body\r\n" % n
                                            for n in range(2000))


@pytest.fixture
def env(tmp_path):
    store = fresh_store(tmp_path)
    store.deliver(BOX, MESSAGE, "1001.U1.host")
    held = Held()
    s = Session(make_factory(store, MemoryReactorClock(), {"fetch_buffer": PIECE},
                             run_blocking=held))
    s.login()
    s("SELECT INBOX")
    held.holding = True
    return s, held, tmp_path


def open_files(path) -> int:
    """This process's descriptors open on path."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            pass  # closed meanwhile
    return count


def fills_up(transport) -> None:
    """A write of a piece fills the socket's send buffer: the transport pauses its
    producer, as Twisted's does past its bufferSize."""
    write = transport.write

    def writing(data: bytes) -> None:
        write(data)
        if len(data) >= PIECE:
            transport.producer.pauseProducing()

    transport.write = writing


def test_a_client_that_does_not_read_gets_no_more_and_the_session_holds_two_pieces(env):
    s, held, _ = env
    fills_up(s.transport)
    head = b"* 1 FETCH (BODY[] {%d}\r\n" % len(MESSAGE)
    assert s.raw(b"a3 FETCH 1 BODY.PEEK[]\r\n") == b""
    assert held.names() == ["_fetch_batch"]
    held.run_next()  # the batch: the literal's head, and the file still unread
    assert s.take() == b""
    assert held.names() == ["_joined_read"]
    held.run_next()  # the head and first piece are sent; the second is read meanwhile
    got = s.take()
    assert got.startswith(head) and PIECE <= len(got) - len(head) < 2 * PIECE
    held.run_all()
    # The client does not read: the second piece waits, and nothing more is read.
    assert held.calls == [] and s.take() == b""
    done = b"a3 OK FETCH completed\r\n"
    while not got.endswith(done):
        # The client reads; the next piece goes, and the one after it is read.
        s.transport.producer.resumeProducing()
        out = s.take()
        got += out
        if out == done:  # once the client has read the last piece
            break
        assert PIECE <= len(out.removesuffix(b")\r\n")) < 2 * PIECE
        assert held.names() in (["_joined_read"], [])
        held.run_all()
        assert s.take() == b""
    assert got == head + MESSAGE + b")\r\na3 OK FETCH completed\r\n"


def test_partial_and_many_messages_in_pieces_are_the_file_byte_for_byte(env):
    s, held, _ = env
    held.holding = False
    s.proto.factory.store.deliver(BOX, MESSAGE.replace(b"line", b"LINE"), "1002.U2.host")
    s("NOOP")  # the new message's EXISTS
    out = s("FETCH 1:2 (UID BODY.PEEK[] BODY.PEEK[]<100.9000>)")
    other = MESSAGE.replace(b"line", b"LINE")
    assert out == (b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % len(MESSAGE) + MESSAGE
                   + b" BODY[]<100> {9000}\r\n" + MESSAGE[100:9100] + b")\r\n"
                   b"* 2 FETCH (UID 2 BODY[] {%d}\r\n" % len(other) + other
                   + b" BODY[]<100> {9000}\r\n" + other[100:9100] + b")\r\n"
                   b"a4 OK FETCH completed\r\n")


def test_under_compress_the_pieces_make_the_message(env):
    s, held, _ = env
    held.holding = False
    assert s("COMPRESS DEFLATE").endswith(b" OK DEFLATE active\r\n")
    inp, out = zlib.decompressobj(-15), zlib.compressobj(6, zlib.DEFLATED, -15)
    got = inp.decompress(s.raw(out.compress(b"b1 FETCH 1 BODY.PEEK[]\r\n")
                               + out.flush(zlib.Z_SYNC_FLUSH)))
    assert got == (b"* 1 FETCH (BODY[] {%d}\r\n" % len(MESSAGE) + MESSAGE
                   + b")\r\nb1 OK FETCH completed\r\n")


def test_a_file_cut_short_closes_the_connection_and_leaks_no_descriptor(env):
    s, held, tmp_path = env
    s.raw(b"a3 FETCH 1 BODY.PEEK[]\r\n")
    held.run_next()  # the batch holds the file open
    [path] = [p for p in (tmp_path / "mail").rglob("1001.U1.host*") if p.is_file()]
    assert open_files(path) == 1
    os.truncate(path, 3 * PIECE)  # not what a Maildir file ever does; a broken disk might
    held.run_all()
    out = s.take()
    # The literal announced the whole size: the stream cannot go on, so it ends.
    assert out.startswith(b"* 1 FETCH (BODY[] {%d}\r\n" % len(MESSAGE) + MESSAGE[:PIECE])
    assert len(out) < len(MESSAGE) and b"a3 OK" not in out
    assert s.transport.disconnecting and s.transport.disconnected
    assert open_files(path) == 0



NESTED = (b"From: a@example.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: multipart/mixed; boundary=XX\r\n\r\npreamble\r\n--XX\r\n"
          b"Content-Type: text/plain\r\n\r\n" + MESSAGE[16:] + b"\r\n--XX\r\n"
          b"Content-Type: message/rfc822\r\n\r\n" + MESSAGE + b"\r\n--XX--\r\n")
SECTIONS = ("BODY.PEEK[1] BODY.PEEK[1]<10.20000> BODY.PEEK[1.MIME] BODY.PEEK[2.TEXT] "
            "BODY.PEEK[2.HEADER] BODY.PEEK[2.HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT] "
            "BODY.PEEK[HEADER] BODY.PEEK[3] BODY.PEEK[]<70000.10> BINARY.PEEK[1]")


def test_sections_of_a_big_message_from_the_file_are_those_read_into_memory(tmp_path):
    """In pieces (fetch_buffer 4096: ranges of the file) and whole (the default 1 MiB:
    bytes read into memory), every section is the same octets."""
    answers = []
    for n, imap in enumerate(({"fetch_buffer": PIECE}, {})):
        store = fresh_store(tmp_path / str(n))
        store.deliver(BOX, NESTED, "1001.U1.host")
        s = Session(make_factory(store, MemoryReactorClock(), imap))
        s.login()
        s("SELECT INBOX")
        answers.append(s(f"FETCH 1 ({SECTIONS})"))
    assert answers[0] == answers[1]
    assert MESSAGE[16:] in answers[0] and b"BODY[2.TEXT] {%d}" % (len(MESSAGE) - 16) \
        in answers[0]


def test_a_part_asked_for_again_and_again_is_read_once_and_sent_from_the_file(env):
    s, held, _ = env
    held.holding = False
    s.proto.factory.store.deliver(BOX, NESTED, "1002.U2.host")
    s("NOOP")  # the new message's EXISTS
    held.holding = True
    s.raw(b"a4 FETCH 2 (" + b" ".join([b"BODY.PEEK[1]"] * 8) + b")\r\n")
    f, args, d = held.calls.pop(0)
    chunks = f(*args)  # the batch as rendered: the part is a range of the file 8 times
    ranges = [c for c in chunks if isinstance(c, filesend.FileRange)]
    assert len(ranges) == 8 and all(r.count == len(MESSAGE) - 16 for r in ranges)
    assert sum(len(c) for c in chunks if isinstance(c, bytes)) < 1000
    d.callback(chunks)
    held.run_all()
    while held.calls:
        held.run_all()
    out = s.take()
    assert out.count(b"BODY[1] {%d}\r\n" % (len(MESSAGE) - 16) + MESSAGE[16:]) == 8
    assert out.endswith(b"a4 OK FETCH completed\r\n")


def test_a_binary_part_asked_for_again_and_again_is_decoded_once_into_a_file(env):
    """Decoded a piece at a time into one temporary file (binary.decoded_pieces), sent
    from there each time it is asked for."""
    import base64

    s, held, _ = env
    held.holding = False
    octets = bytes(range(256)) * 64  # NUL among them: a literal8 (RFC 3516 4.2)
    encoded = (b"From: a@example.test\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\n"
               + base64.encodebytes(octets).replace(b"\n", b"\r\n") + b"\r\n--XX--\r\n")
    s.proto.factory.store.deliver(BOX, encoded, "1003.U3.host")
    s("NOOP")  # the new message's EXISTS
    held.holding = True
    s.raw(b"a4 FETCH 2 (" + b" ".join([b"BINARY.PEEK[1]"] * 8)
          + b" BINARY.PEEK[1]<100.5000> BINARY.SIZE[1] BINARY.PEEK[1]<7.50>)\r\n")
    f, args, d = held.calls.pop(0)
    chunks = f(*args)
    ranges = [c for c in chunks if isinstance(c, filesend.FileRange)]
    assert len(ranges) == 9 and len({os.fstat(r.fd).st_ino for r in ranges}) == 1
    assert sum(len(c) for c in chunks if isinstance(c, bytes)) < 1000
    d.callback(chunks)
    while held.calls:
        held.run_all()
    out = s.take()
    assert out.count(b"BINARY[1] ~{%d}\r\n" % len(octets) + octets) == 8
    assert b"BINARY[1]<100> ~{5000}\r\n" + octets[100:5100] in out
    assert b"BINARY.SIZE[1] %d" % len(octets) in out
    # Short of fetch_buffer: read back from the file as bytes (no range above); a
    # literal8 still, as the part holds a NUL somewhere (allowed where none is needed).
    assert b"BINARY[1]<7> ~{50}\r\n" + octets[7:57] in out
    assert out.endswith(b"a4 OK FETCH completed\r\n")
