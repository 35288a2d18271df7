"""access/imap: BINARY (RFC 3516), issue 12.

FETCH BINARY[part]<partial>, BINARY.PEEK and BINARY.SIZE give a part's content
with its Content-Transfer-Encoding undone, as a literal8 (~{n}) when it holds
NUL; an unknown encoding is NO [UNKNOWN-CTE]; APPEND takes a literal8 and keeps
binary parts base64 so BODY[] never carries NUL.
"""

from __future__ import annotations

import base64
import re

import pytest
from imap_dialogue import BOX, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock

from gateway.access.imap import binary

PAYLOAD = b"\x00\x01binary\xff\r\nmore\x00"
MESSAGE = (
    b"From: a@example.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"caf=C3=A9 =\r\nsoft  \r\nend\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(PAYLOAD).replace(b"\n", b"\r\n") +
    b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-unknown\r\n\r\n"
    b"whatever\r\n"
    b"--b--\r\n")


@pytest.fixture
def s(tmp_path):
    store = fresh_store(tmp_path)
    store.deliver(BOX, MESSAGE, "1001.U1.host")
    session = Session(make_factory(store, MemoryReactorClock()))
    session.login()
    session("SELECT INBOX")
    return session


def test_capability(s):
    assert b" BINARY" in s("CAPABILITY")


def test_base64_part_decoded_as_literal8(s):
    out = s("FETCH 1 (BINARY.SIZE[2] BINARY.PEEK[2])")
    assert b"BINARY.SIZE[2] %d BINARY[2] ~{%d}\r\n" % (len(PAYLOAD), len(PAYLOAD)) \
        + PAYLOAD in out


def test_quoted_printable_part_decoded(s):
    out = s("FETCH 1 (BINARY.PEEK[1])")
    text = "café soft\r\nend".encode()
    assert b"BINARY[1] {%d}\r\n%s)" % (len(text), text) in out


def test_partial_of_the_decoded_content(s):
    out = s("FETCH 1 BINARY.PEEK[2]<2.6>")
    assert b"BINARY[2]<2> {6}\r\nbinary)" in out
    out = s("FETCH 1 BINARY.PEEK[2]<0.3>")
    assert b"BINARY[2]<0> ~{3}\r\n\x00\x01b)" in out


def test_whole_message_and_missing_part(s):
    out = s("FETCH 1 (BINARY.SIZE[] BINARY.PEEK[9])")
    assert b"BINARY.SIZE[] %d BINARY[9] \"\"" % len(MESSAGE) in out


def test_unknown_encoding_is_no_unknown_cte(s):
    s("FETCH 1 BINARY.PEEK[3]", expect=b"NO [UNKNOWN-CTE]")
    s("FETCH 1 BINARY.SIZE[3]", expect=b"NO [UNKNOWN-CTE]")


@pytest.mark.parametrize("item", ["BINARY[1.HEADER]", "BINARY[TEXT]", "BINARY.SIZE[1]<0.5>",
                                  "BINARY[0]", "BINARY.PEEK[1]<0.0>"])
def test_bad_binary_items(s, item):
    s(f"FETCH 1 {item}", expect=b"BAD")


def test_binary_sets_seen_and_peek_does_not(s):
    out = s("FETCH 1 BINARY.PEEK[1]")
    assert b"\\Seen" not in out
    out = s("FETCH 1 BINARY[1]")
    assert b"FLAGS (\\Seen" in out


def test_append_literal8_keeps_binary_parts_base64(s):
    msg = (b"Subject: bin\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding: binary\r\n\r\n" + PAYLOAD)
    assert s(b"APPEND INBOX ~{%d}" % len(msg), expect=None).startswith(b"+ ")
    out = s.raw(msg + b"\r\n")
    assert re.search(rb"a\d+ OK \[APPENDUID \d+ 2\]", out), out
    s("NOOP")
    body = s("FETCH 2 BODY.PEEK[]")
    assert b"\x00" not in body and b"Content-Transfer-Encoding: base64" in body
    out = s("FETCH 2 (BINARY.PEEK[1] BINARY.SIZE[1])")
    assert b"BINARY[1] ~{%d}\r\n" % len(PAYLOAD) + PAYLOAD in out
    assert b"BINARY.SIZE[1] %d" % len(PAYLOAD) in out


def test_append_literal8_non_synchronising(s):
    msg = b"Subject: plain\r\n\r\nno binary parts\r\n"
    out = s.raw(b"x1 APPEND INBOX ~{%d+}\r\n" % len(msg) + msg + b"\r\n")
    assert b"x1 OK [APPENDUID" in out


def test_literal8_only_for_appends_message(s):
    out = s.raw(b"x1 SEARCH BODY ~{3}\r\n")
    assert out.startswith(b"x1 BAD"), out


def test_quoted_printable_rules():
    assert binary.quoted_printable(b"a=3D \t\r\nb=\r\nc\r\n=ZZ=4") == b"a=\r\nbc\r\n=ZZ=4"


def test_to_base64_rewrites_binary_parts_only(tmp_path):
    path = tmp_path / "m"
    path.write_bytes(b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n'
                     b"--x\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00\x00\r\n"
                     b"--x\r\nContent-Type: text/plain\r\n\r\nkeep\r\n--x--\r\n")
    upload = binary.Upload(path, path.stat().st_size)
    binary.to_base64(upload)
    data = path.read_bytes()
    assert data == (b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n'
                    b"--x\r\nContent-Transfer-Encoding: base64\r\n\r\nAAA=\r\n"
                    b"--x\r\nContent-Type: text/plain\r\n\r\nkeep\r\n--x--\r\n")
    assert upload.size == len(data)


@pytest.mark.parametrize("plus", [b"", b"+"])
def test_append_literal_with_nul_is_refused(s, plus):
    """RFC 3501 4.3 / RFC 9051 4.3: a literal is CHAR8, NUL excluded (a literal8 may hold it)."""
    msg = b"Subject: nul\r\n\r\nbad\x00byte\r\n"
    if not plus:
        assert s(b"APPEND INBOX {%d}" % len(msg), expect=None).startswith(b"+ ")
        out = s.raw(msg + b"\r\n")
    else:
        out = s.raw(b"x1 APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
    assert re.search(rb"(a\d+|x1) BAD NUL octet in a literal", out), out
    assert b" OK" not in out, out
    assert b"* 1 EXISTS" in s("SELECT INBOX")  # nothing appended, and the session goes on


@pytest.mark.parametrize("body", [
    b"aGVsbG8gd29y\r\nbGQ=\r\n",  # lines, padding at the end: decoded in place
    b"aGVsbG8gd29ybGQ\r\n",  # padding lost
    b"aGVs*bG8g\r\nd29y-bGQ=\r\n",  # stray characters
    b"aGVsbG8=d29ybGQ=\r\n",  # "=" inside: decoded up to it
    b"aGVsbG8gd",  # a length no padding mends
    b"",
])
def test_base64_in_place_gives_what_the_careful_way_gives(body):
    data = b"head\r\n\r\n" + body + b"tail"
    start, end = 8, 8 + len(body)
    assert binary._base64_part(data, start, end) == binary._base64(body)


@pytest.mark.parametrize("piece", [4, 5, 7, 64, 1 << 20])
@pytest.mark.parametrize("body", [
    b"aGVsbG8gd29y\r\nbGQ=\r\n",
    b"aGVsbG8gd29ybGQ\r\n",
    b"aGVs*bG8g\r\nd29y-bGQ=\r\n",
    b"aGVsbG8=d29ybGQ=\r\n",
    b"aGVsbG8gd",
    b"",
    base64.encodebytes(bytes(range(256)) * 40),  # lines of 76 around every boundary
    base64.encodebytes(bytes(range(256)) * 40).replace(b"\n", b"\r\n")[:-7],
])
def test_base64_a_piece_at_a_time_gives_what_the_careful_way_gives(body, piece):
    """What a long part's decoding writes to its temporary file (fetch.py: a BINARY
    part of a big message) is BINARY's octets, wherever the pieces break the text."""
    data = b"head\r\n\r\n" + body + b"tail"
    pieces = list(binary._base64_pieces(data, 8, 8 + len(body), piece))
    assert b"".join(pieces) == binary._base64(body)
    if b"=" not in body[:-4] and len(body) > 4 * piece:
        assert len(pieces) > 1  # decoded a piece at a time
