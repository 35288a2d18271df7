"""A first FETCH ENVELOPE made cheaper (issue 12): message.Head, the address memo,
pack without astuple, and the collector paused during big jobs (memtrim.paused_gc).

The oracle is the full MIME Part: a header summary made from a Head must be
the one made from a Part, byte for byte.
"""

from __future__ import annotations

import gc
import threading

import pytest

from gateway import memtrim
from gateway.access.imap import addresses, message, searchfields, summary

HEADS = [
    b"From: \"Dana Berg\" <dana.berg@example.org>\r\nTo: Alice <alice@example.test>\r\n"
    b"Subject: Budget review\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <a@b>\r\nIn-Reply-To: <c@d>\r\n\r\nbody\r\n",
    b"From: =?UTF-8?Q?Jos=C3=A9_M=C3=BCller?= <jose@example.net>\r\n"
    b"Sender: s@example.net\r\nReply-To: r@example.net\r\n"
    b"Subject: =?ISO-8859-1?B?R3L832Vu?=\r\nDate: Tue, 2 Jan 2024 09:00:00 GMT\r\n\r\n",
    b"From: a@example.org\r\nFrom: second@example.org\r\nSubject: first\r\nSubject: two\r\n"
    b"\r\n",  # the first field of a name counts
    b"From: \"Last, First\" <lf@example.org>, other@example.net\r\n"
    b"Cc: team: a@example.org, b@example.org;\r\nSubject: Folded\r\n  subject line\r\n\r\n",
    b"FROM : spaced@example.org\r\nsubject:lower case name\r\nDATE: 4 Jan 24 1:00 EST\r\n\r\n",
    b"From: one@example.org\nTo: lf-only@example.org\nSubject: LF\n\nbody\n",
    b"\r\nFrom: not-a-header@example.org\r\n",
    b"Subject: no blank line at all\r\nFrom: x@example.org\r\n",
    b"From: Folded Name\n <folded@example.org>\nTo:   \n\tspaced@example.org  \n\n",
]


def _from_part(head: bytes) -> summary.HeaderSummary:
    """The summary as it was made before Head: from a full MIME Part and of_part."""
    root = message.Part(head, 0, len(head), "text/plain", message.MAX_DEPTH)
    lists = message.address_lists(root)
    sfrom, sto, scc, sbcc, ssubject, sent = searchfields.of_part(root, lists)
    header = root.header()
    return summary.HeaderSummary(
        envelope=message.envelope(root, lists), header=header, header_complete=b"1",
        sfrom=sfrom, sto=sto, scc=scc, sbcc=sbcc, ssubject=ssubject, sent=b"%d" % sent)


@pytest.mark.parametrize("head", HEADS)
def test_a_head_summary_is_the_part_summary(head):
    made = summary.summarize_header(head)
    assert made == _from_part(head)
    assert summary.unpack(summary.pack(made), summary.HeaderSummary) == made


def test_pack_keeps_the_layout():
    s = summary.StructureSummary(body=b"(A)", bodystructure=b"(B C)")
    assert summary.pack(s) == b"bv3.\x03\0\0\0\x05\0\0\0(A)(B C)"


def test_a_blob_of_another_layout_or_damaged_is_no_summary():
    """None (then made again): layout v2, cut short, too long, lengths past its end."""
    s = summary.StructureSummary(body=b"(A)", bodystructure=b"(B C)")
    blob = summary.pack(s)
    assert summary.unpack(blob, summary.StructureSummary) == s
    for bad in (b"bv2.3:(A)5:(B C)", blob[:-1], blob + b"x", blob[:6], b"bv3.",
                blob[:4] + b"\xff" + blob[5:], summary.pack(summary.summarize_header(b"\r\n"))):
        assert summary.unpack(bad, summary.StructureSummary) is None, bad


def test_a_memoised_address_list_is_the_callers_own():
    value = b"Ann <ann@example.org>, bob@example.org"
    first = addresses.parse(value)
    first.append(("x", None, None, None))  # a caller that changes its list
    first[0] = ("changed", None, None, None)
    assert addresses.parse(value) == [(b"Ann", None, b"ann", b"example.org"),
                                      (None, None, b"bob", b"example.org")]


def test_the_collector_pauses_while_any_big_job_runs():
    assert gc.isenabled()
    inside, release = threading.Event(), threading.Event()

    def other_job():
        with memtrim.paused_gc():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=other_job)
    t.start()
    inside.wait(10)
    with memtrim.paused_gc():
        with memtrim.paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread's job still runs
    release.set()
    t.join(10)
    assert gc.isenabled()


def test_a_collector_switched_off_stays_off():
    gc.disable()
    try:
        with memtrim.paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


PLAIN_AND_NOT = [
    b'"" <a@b>', b'"Dana Berg" <dana@example.org>', b'Name<a@b>', b'  a@b  ', b'<a@b>',
    b'John Q. Public <jqp@x.org>', b'=?utf-8?q?J=C3=B6?= <j@x>', b'A  B\t C <a.b@c.d>',
    b'"x y"<a@b>', b'"  spaced  " <s@x>',
    # not plain: the tokenizer's answers
    b'"a\\"b" <a@b>', b'a@b (c)', b'a@[1.2.3.4]', b'a@b, c@d', b'g: a@b;', b'<@r:a@b>',
    b'"Last, First" <lf@x>', b'x', b'@', b'a@', b'@b', b'<a@b', b'a@b>', b'"A" B <a@b>',
    b'Ann (x) <a@b>', b'a@b.c.', b'a b@c', b'"q\r\n" <a@b>',
]


@pytest.mark.parametrize("value", PLAIN_AND_NOT)
def test_the_plain_mailbox_path_gives_what_the_tokenizer_gives(value, monkeypatch):
    monkeypatch.setattr(addresses, "_parsed", {})
    assert addresses.parse(value) == addresses._parse(value)
