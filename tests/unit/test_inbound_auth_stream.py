"""Sender checks on a message streamed to the spool file (issues 11 and 15): the check
reads the file, its header block goes into the committed file, memory stays bounded."""

from __future__ import annotations

import os
import tracemalloc

import dkim
import pytest
from smtp_dialogue import Dialogue
from test_inbound_auth import checker, txt

from gateway.durable import run_now
from gateway.queue.spool import Spool
from gateway.sign.keys import generate, txt_record

FORGED = b"Authentication-Results: mx.example.test; spf=pass; dmarc=pass\r\n"
HEADER = (b"From: Bob <bob@remote.test>\r\nTo: alice@example.test\r\n"
          b"Subject: big\r\nMessage-ID: <9@remote.test>\r\n")
OTHER = b"Authentication-Results: mx.other.test; spf=pass\r\n"


@pytest.fixture(scope="module")
def key():
    private, public = generate("ed25519")
    return private, txt("s1._domainkey.remote.test", txt_record("ed25519", public))


def big_body(size: int) -> bytes:
    line = b"0123456789abcdefghijklmnopqrstuvwxyz 0123456789abcdefghijklmnopqrstuvwxyz\r\n"
    return line * (size // len(line))


def sign(private: bytes, message: bytes) -> bytes:
    return dkim.sign(message, b"s1", b"remote.test", private,
                     canonicalize=(b"relaxed", b"relaxed"),
                     signature_algorithm=b"ed25519-sha256",
                     include_headers=[b"from", b"to", b"subject"]) + message


def send(tmp_path, message: bytes, records: dict, peak: list | None = None,
         **settings) -> tuple[bytes, Spool, bytes]:
    d = Dialogue(peer="192.0.2.9", overrides={"data_buffer_size": 65536})
    spool = d.factory.spool = Spool(tmp_path / "queue", reactor=None, run_blocking=run_now,
                                    run_write=run_now)
    d.factory.authcheck = checker({**txt("remote.test", "v=spf1 ip4:192.0.2.9 -all"),
                                   **records}, **settings)
    d.ehlo()
    d.mail("bob@remote.test")
    d.rcpt("alice@example.test")
    d.cmd("DATA", expect=b"354")
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    for i in range(0, len(stuffed), 65536):
        d.proto.dataReceived(stuffed[i:i + 65536])
    del stuffed
    if peak is not None:  # what the final dot costs: the check, the commit
        tracemalloc.start()
    try:
        reply = d.send(b".\r\n")
    finally:
        if peak is not None:
            peak.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    if not reply.startswith(b"250"):
        return reply, spool, b""
    qid = reply.split()[-1].decode()
    stored = (spool.entries / f"{qid}.msg").read_bytes()
    assert spool.load(qid).size == len(stored)
    assert os.listdir(spool.tmp) == []
    return reply, spool, stored


def test_streamed_message_is_verified_and_its_header_block_rewritten(tmp_path, key):
    private, records = key
    message = sign(private, HEADER + b"\r\n" + big_body(2 * 1024 * 1024))
    sent = FORGED + OTHER + message
    reply, _, stored = send(tmp_path, sent, records)
    assert reply.startswith(b"250 2.0.0"), reply
    results, rest = stored.split(b"Received-SPF: ", 1)
    assert results.startswith(b"Authentication-Results: mx.example.test;\r\n\tspf=pass")
    assert b"dkim=pass header.d=remote.test" in results
    assert b"dmarc=none" in results
    # ours, then our Received, then what came minus the forged claim, byte for byte
    received_at = rest.index(b"\r\nReceived: from client.test") + 2
    received_end = rest.index(b"\r\n", rest.index(b"for <alice@example.test>")) + 2
    assert rest[received_at:].startswith(b"Received: ")
    assert rest[received_end:] == OTHER + message
    assert stored.count(b"Authentication-Results: mx.example.test;") == 1


def test_message_over_max_verify_size_is_not_read_whole(tmp_path, key):
    private, records = key
    message = sign(private, HEADER + b"\r\n" + big_body(8 * 1024 * 1024))
    peak: list[int] = []
    reply, _, stored = send(tmp_path, FORGED + message, records, peak,
                            max_verify_size=1024 * 1024)
    assert reply.startswith(b"250 2.0.0"), reply
    assert b"dkim=neutral (not verified: message over 1048576 bytes) " \
           b"header.d=remote.test header.s=s1" in stored
    assert b"spf=pass" in stored and stored.count(b"Authentication-Results: mx.example.test;") == 1
    assert stored.endswith(message)
    # neither the check nor the rewrite of the 8 MB file held it in memory
    assert peak[0] < 1024 * 1024, peak


def test_refused_streamed_message_leaves_no_file(tmp_path, key):
    _, records = key
    # unsigned, and remote.test's DMARC policy rejects it (SPF would refuse at MAIL)
    reply, spool, _ = send(tmp_path, HEADER + b"\r\n" + big_body(300_000),
                           {**txt("remote.test", "v=spf1 ?all"),
                            **txt("_dmarc.remote.test", "v=DMARC1; p=reject")})
    assert reply.startswith(b"550 5.7.1"), reply
    assert os.listdir(spool.tmp) == [] and spool.queue_ids() == []


def test_small_message_in_memory_gets_the_same_header_block(tmp_path, key):
    private, records = key
    message = sign(private, HEADER + b"\r\nshort\r\n")
    reply, _, stored = send(tmp_path, FORGED + message, records)
    assert reply.startswith(b"250 2.0.0"), reply
    assert stored.startswith(b"Authentication-Results: mx.example.test;")
    assert b"dkim=pass" in stored and stored.endswith(b"\r\n" + message)
    assert FORGED not in stored
