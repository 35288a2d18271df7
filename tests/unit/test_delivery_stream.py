"""A local delivery copies the spool file in pieces (issue 11): a big message never
sits whole in memory on its way to the Maildir either."""

import hashlib
import tracemalloc

from gateway import durable
from gateway.deliver.maildir import MaildirDelivery
from gateway.envelope import Envelope, Recipient
from gateway.interfaces import Route
from gateway.store.maildir import MaildirStore


def test_a_big_message_is_copied_to_the_maildir_in_pieces(tmp_path):
    store = MaildirStore(tmp_path / "mail")
    target = MaildirDelivery(store, "mx.example.test", durable.run_now)
    msg = tmp_path / "q.msg"
    line = b"0123456789abcdef" * 6 + b"\r\n"
    with open(msg, "wb") as f:
        f.write(b"Subject: big\r\n\r\n")
        for n in range(160_000):  # 15.5 MB
            f.write(b"%06d" % n + line)
    env = Envelope(sender="bob@remote.test", recipients=[Recipient("alice@example.test")],
                   queue_id="1K0WBNWWCN0NW0NJ", arrived=1795411989.5)
    route = Route("local", "alice@example.test", mailbox="alice@example.test")
    store.ensure("alice@example.test")
    results = []
    tracemalloc.start()
    try:
        target.deliver(env, route, str(msg), False).addBoth(results.append)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert results == [True]
    assert peak < 4 * durable.COPY_CHUNK, peak  # a piece or two, not 15 MB
    (copy,) = (tmp_path / "mail" / "example.test" / "alice" / "new").iterdir()
    head = b"Return-Path: <bob@remote.test>\r\nDelivered-To: alice@example.test\r\n"
    data = copy.read_bytes()
    assert data.startswith(head)
    assert hashlib.sha256(data[len(head):]).digest() == hashlib.sha256(msg.read_bytes()).digest()
