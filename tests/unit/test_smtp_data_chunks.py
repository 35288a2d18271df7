"""accept/data.BodyReader: the body comes out the same however the client's bytes
are cut into reads (dot-unstuffing, the end marker, the limits at chunk borders)."""

from __future__ import annotations

import pytest

from gateway.accept.data import BodyReader
from gateway.config import parse

BODY = (b"Subject: dots\r\n\r\n"
        b"..leading dot, stuffed\r\n"
        b"...two dots after unstuffing\r\n"
        b"middle . dot\r\n"
        b".\tdot and tab\r\n"
        b"..\r\n"
        b"last line\r\n")
UNSTUFFED = (b"Subject: dots\r\n\r\n"
             b".leading dot, stuffed\r\n"
             b"..two dots after unstuffing\r\n"
             b"middle . dot\r\n"
             b"\tdot and tab\r\n"
             b".\r\n"
             b"last line\r\n")
AFTER = b"QUIT\r\n"


def settings(**smtp):
    return parse({"server": {"domains": ["example.test"]}, "smtp": smtp}).smtp


def feed(chunks, **smtp):
    """Run chunks through a BodyReader as _data_step does; (body, reader, unread input)."""
    written: list[bytes] = []
    reader = BodyReader(settings(**smtp), written.append)
    buf = b""
    for i, chunk in enumerate(chunks):
        buf += chunk
        buf, finished = reader.consume(buf)
        if finished:
            return b"".join(written), reader, bytes(buf) + b"".join(chunks[i + 1:])
    return b"".join(written), reader, None


def cuts(data: bytes):
    """data in two reads at every place, then one byte per read."""
    for i in range(len(data) + 1):
        yield [data[:i], data[i:]]
    yield [data[i:i + 1] for i in range(len(data))]


def test_dot_unstuffing_and_the_end_marker_at_every_chunk_border():
    wire = BODY + b".\r\n" + AFTER
    for chunks in cuts(wire):
        body, reader, rest = feed(chunks)
        assert reader.fault is None
        assert body == UNSTUFFED, chunks
        assert rest == AFTER, chunks


def test_a_body_starting_with_a_stuffed_dot_at_any_border():
    wire = b"..x\r\n.\r\n"
    for chunks in cuts(wire):
        body, reader, rest = feed(chunks)
        assert (body, rest) == (b".x\r\n", b""), chunks


def test_bare_lf_dot_lf_never_ends_the_body_at_any_border():
    wire = b"a\r\n\n.\nb\r\n.\r\n"
    for chunks in cuts(wire):
        body, reader, rest = feed(chunks, bare_linefeeds="accept")
        assert body == b"a\r\n\n.\nb\r\n" and rest == b"", chunks
        body, reader, rest = feed(chunks)  # the default refuses bare LF
        assert reader.fault is not None and reader.fault.code == 554, chunks
        assert rest == b""


@pytest.mark.parametrize("extra", [0, 1])
def test_the_line_length_limit_holds_across_borders(extra):
    limit = 1000  # RFC 5321's 998 octets and CRLF
    line = b"x" * (limit - 2 + extra) + b"\r\n"
    wire = b"ok\r\n" + line + b"after\r\n.\r\n" + AFTER
    for i in range(0, len(wire), 97):
        body, reader, rest = feed([wire[:i], wire[i:]], max_line_length=limit)
        if extra:
            assert reader.fault is not None and reader.fault.code == 500, i
        else:
            assert reader.fault is None and body == b"ok\r\n" + line + b"after\r\n", i
        assert rest == AFTER, i  # the end is found either way: nothing read as commands


def test_the_size_limit_552_at_every_border():
    size = 2000
    wire = b"y" * 60 + b"\r\n"
    fits = wire * (size // len(wire))
    for body_bytes, code in ((fits, None), (fits + wire, 552)):
        data = body_bytes + b".\r\n" + AFTER
        for i in range(0, len(data), 131):
            body, reader, rest = feed([data[:i], data[i:]], max_message_size=size)
            assert (reader.fault.code if reader.fault else None) == code, i
            assert rest == AFTER, i
            if code is None:
                assert body == body_bytes
