"""The list pieces composed as the gateway's list target will compose them (no
queue, no sockets): subscribe by mail, post, VERP bounce, moderation, loop."""

from email import message_from_bytes, policy
from email.parser import BytesHeaderParser

from gateway.lists import bounces, outbox, requests
from gateway.lists.addresses import classify, verp_sender
from gateway.lists.posting import decide, decorate
from gateway.lists.store import ListStore

LIST = "dev@example.test"


def headers(message: bytes):
    return BytesHeaderParser(policy=policy.SMTP).parsebytes(message)


def to(store, address, sender, message, now):
    """What the list target does with mail for one list address."""
    local, _, domain = address.rpartition("@")
    where = classify(local, domain, set(store.names()))
    mlist = store.get(where.list)
    if where.role == "request":
        return requests.handle(store, mlist, sender, message, now)
    if where.role == "bounces":
        return bounces.process(store, mlist, where.member, message, now)
    assert where.role == "post"
    decision = decide(mlist, sender, store.is_member(mlist.address, sender), headers(message),
                      len(message))
    if decision.action == "hold":
        held_id = store.hold(mlist.address, sender, message, decision.reason, now)
        return decision, requests.hold_notice(mlist, held_id, sender, message,
                                              decision.reason, now)
    if decision.action == "reject":
        return decision, None
    return decision, {m: (verp_sender(mlist.address, m), decorate(message, mlist, False, m))
                      for m in store.members(mlist.address)}


def subject_of(out):
    return str(message_from_bytes(out.message, policy=policy.default)["Subject"])


def test_a_lists_life(tmp_path):
    store = ListStore(tmp_path / "lists")
    store.create(LIST, ["owner@example.test"], "members")
    store.set(LIST, bounce_threshold=2)

    for person in ("bob@example.org", "carol@example.net"):
        result = to(store, "dev-request@example.test", person,
                    f"From: {person}\r\nSubject: subscribe\r\n\r\n".encode(), 0)
        [confirmation] = [r for r in result.replies if subject_of(r).startswith("confirm")]
        assert confirmation.recipients == (person,)
        to(store, "dev-request@example.test", person,
           f"From: {person}\r\nSubject: Re: {subject_of(confirmation)}\r\n\r\n".encode(), 60)
    assert store.members(LIST) == ["bob@example.org", "carol@example.net"]

    post = b"From: bob@example.org\r\nSubject: plans\r\n\r\n\xc3\xa9t\xc3\xa9\r\n"
    decision, copies = to(store, LIST, "bob@example.org", post, 100)
    assert decision.action == "accept"
    sender, copy = copies["carol@example.net"]
    assert sender == "dev-bounces+carol=example.net@example.test"
    assert copy.endswith(b"\r\n\r\n\xc3\xa9t\xc3\xa9\r\n") and b"[dev] plans" in copy

    # carol's copy bounces twice, to its VERP address: disabled, the owner told
    dsn = (b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\n"
           b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
           b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
           b"Final-Recipient: rfc822; carol@example.net\r\nAction: failed\r\n"
           b"Status: 5.2.2\r\n\r\n--b--\r\n")
    assert to(store, sender, "", dsn, 200) == []
    [told] = to(store, sender, "", dsn, 300)
    assert told.recipients == ("owner@example.test",)
    assert store.members(LIST) == ["bob@example.org"]

    # a stranger's post is held; the owner's plain reply to the notice releases it
    strange = b"From: eve@example.com\r\nSubject: hello\r\n\r\nhi\r\n"
    decision, notice = to(store, LIST, "eve@example.com", strange, 400)
    assert decision.action == "hold" and notice.recipients == ("owner@example.test",)
    result = to(store, "dev-request@example.test", "owner@example.test",
                f"From: owner@example.test\r\nSubject: Re: {subject_of(notice)}\r\n\r\n"
                .encode(), 500)
    assert result.release == [("eve@example.com", strange)]
    assert [outbox.read(p) for p in outbox.pending(store.root)] == [strange]

    # a copy that comes back to the list is a loop
    decision, _ = to(store, LIST, "bob@example.org", copy, 600)
    assert decision.action == "reject" and decision.error.code == 550
