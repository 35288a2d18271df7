"""lists/exploder.py: the list target with a real ListStore, a fake queue and fake DNS."""

from __future__ import annotations

from email import message_from_bytes, policy

import pytest
from twisted.internet import defer, task

from gateway.durable import run_now
from gateway.envelope import Envelope, Recipient
from gateway.errors import MailError
from gateway.interfaces import Route
from gateway.lists.addresses import verp_sender
from gateway.lists.directory import ListDirectory
from gateway.lists.exploder import ListTarget, explosion_id, personal_id
from gateway.lists.posting import one_click_url
from gateway.lists.store import ListStore
from gateway.queue.spool import Spool
from gateway.queue.submit import Submitter

LIST = "dev@example.test"


class Listener:
    def __init__(self):
        self.ids = []

    def enqueued(self, queue_id, envelope=None):
        self.ids.append(queue_id)


def rig(tmp_path, policies=None, sign_post=None):
    store = ListStore(tmp_path / "lists")
    store.create(LIST, ["owner@example.test"], "members")
    store.add_members(LIST, ["alice@example.test", "bob@remote.test", '"odd x"@remote.test'])
    clock = task.Clock()
    clock.advance(1000)
    spool = Spool(tmp_path / "queue", reactor=None, run_blocking=run_now)
    listener = Listener()
    submit = Submitter(spool, listener, "mx.example.test", clock)
    lookup = None if policies is None else (
        lambda domain: defer.succeed(policies.get(domain, "none")))
    target = ListTarget(store, submit, clock, run_now, dmarc_policy=lookup, sign_post=sign_post)
    return store, spool, listener, target


def post(tmp_path, target, sender, to=LIST, body=b"hi\r\n", qid="1K15Q4ZNS55Q3TC1",
         headers=b""):
    path = tmp_path / f"{qid}.msg"
    path.write_bytes(b"From: " + sender.encode() + b"\r\nSubject: topic\r\n" + headers
                     + b"\r\n" + body)
    envelope = Envelope(sender=sender, recipients=[Recipient(to)], queue_id=qid)
    local, _, domain = to.rpartition("@")
    route = ListDirectory(target.store)(local, domain)
    assert route is not None and route.kind == "list"
    results = []
    target.deliver(envelope, route, str(path), False).addBoth(results.append)
    return results[0]


def test_a_members_post_is_one_queue_entry_with_a_verp_sender_each(tmp_path):
    store, spool, listener, target = rig(tmp_path)
    assert post(tmp_path, target, "alice@example.test") is None
    (qid,) = listener.ids
    assert qid == explosion_id("1K15Q4ZNS55Q3TC1", LIST)
    envelope = spool.load(qid)
    assert envelope.sender == "dev-bounces@example.test"
    assert [(r.address, r.sender) for r in envelope.recipients] == [
        ('"odd x"@remote.test', "dev-bounces@example.test"),
        ("alice@example.test", "dev-bounces+alice=example.test@example.test"),
        ("bob@remote.test", "dev-bounces+bob=remote.test@example.test")]
    with open(spool.message_path(qid), "rb") as f:
        copy = message_from_bytes(f.read(), policy=policy.default)
    assert copy["Subject"] == "[dev] topic" and copy["List-Id"].endswith("<dev.example.test>")
    # Delivered again (a crash before the post was recorded done): no second entry.
    assert post(tmp_path, target, "alice@example.test") is None
    assert listener.ids == [qid] and spool.queue_ids() == [qid]


def test_a_post_is_signed_once_for_all_its_members(tmp_path):
    calls = []

    def sign_post(domain, arrived, copy, queue_id):
        calls.append((domain, arrived, copy, queue_id))
        return b"ARC-Seal: i=1; stand-in\r\n" + copy

    store, spool, listener, target = rig(tmp_path, sign_post=sign_post)
    assert post(tmp_path, target, "alice@example.test") is None
    (qid,) = listener.ids
    assert len(spool.load(qid).recipients) == 3
    ((domain, arrived, copy, queue_id),) = calls  # one seal, however many members
    assert domain == "example.test" and queue_id == qid
    assert b"Subject: topic" in arrived and b"Subject: [dev] topic" in copy
    with open(spool.message_path(qid), "rb") as f:
        assert f.read() == b"ARC-Seal: i=1; stand-in\r\n" + copy


@pytest.mark.parametrize("verp", [True, False])
def test_with_web_base_url_each_member_gets_a_personal_one_click_copy(tmp_path, verp):
    """RFC 8058: the https link names the member, and DKIM must cover it (RFC 8058 4),
    so it is in each member's own queue entry, not added at delivery."""
    store, spool, listener, target = rig(tmp_path)
    store.set(LIST, web_base_url="https://lists.example.test", verp=verp)
    assert post(tmp_path, target, "alice@example.test") is None
    explosion = explosion_id("1K15Q4ZNS55Q3TC1", LIST)
    members = store.members(LIST)
    assert sorted(listener.ids) == sorted(personal_id(explosion, m) for m in members)
    mlist = store.get(LIST)
    for member in members:
        qid = personal_id(explosion, member)
        envelope = spool.load(qid)
        assert [r.address for r in envelope.recipients] == [member]
        bounces = "dev-bounces@example.test"
        assert envelope.sender == (verp_sender(LIST, member) if verp else bounces)
        with open(spool.message_path(qid), "rb") as f:
            copy = message_from_bytes(f.read(), policy=policy.default)
        assert copy["List-Unsubscribe"] == (f"<{one_click_url(mlist, member)}>, "
                                            "<mailto:dev-leave@example.test>")
        assert copy["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert copy["Subject"] == "[dev] topic"
    # Delivered again (a crash after some entries were made): none twice.
    assert post(tmp_path, target, "alice@example.test") is None
    assert len(listener.ids) == len(members) == len(spool.queue_ids())


def test_personal_one_click_copies_are_each_signed_with_their_own_link(tmp_path):
    """DKIM must cover each member's List-Unsubscribe (RFC 8058 4): one signature per copy."""
    signed = []

    def sign_post(domain, arrived, copy, queue_id):
        signed.append(copy)
        return b"DKIM-Signature: stand-in\r\n" + copy

    store, spool, listener, target = rig(tmp_path, sign_post=sign_post)
    store.set(LIST, web_base_url="https://lists.example.test")
    assert post(tmp_path, target, "alice@example.test") is None
    members = store.members(LIST)
    explosion = explosion_id("1K15Q4ZNS55Q3TC1", LIST)
    for member in members:
        with open(spool.message_path(personal_id(explosion, member)), "rb") as f:
            stored = f.read()
        assert stored.startswith(b"DKIM-Signature: stand-in\r\n")
        assert stored[len(b"DKIM-Signature: stand-in\r\n"):] in signed
        link = one_click_url(store.get(LIST), member).encode()
        assert link in stored.replace(b"\r\n ", b"").replace(b"\r\n\t", b"")


def test_without_web_base_url_no_one_click_promise(tmp_path):
    store, spool, listener, target = rig(tmp_path)
    assert post(tmp_path, target, "alice@example.test") is None
    (qid,) = listener.ids
    with open(spool.message_path(qid), "rb") as f:
        copy = message_from_bytes(f.read(), policy=policy.default)
    assert copy["List-Unsubscribe"] == "<mailto:dev-leave@example.test>"
    assert copy["List-Unsubscribe-Post"] is None


def test_a_strangers_post_is_held_and_the_moderators_told(tmp_path):
    store, spool, listener, target = rig(tmp_path)
    assert post(tmp_path, target, "eve@elsewhere.test") is None
    assert [h.sender for h in store.held(LIST)] == ["eve@elsewhere.test"]
    rcpts = sorted(r.address for qid in listener.ids for r in spool.load(qid).recipients)
    assert rcpts == ["eve@elsewhere.test", "owner@example.test"]


def test_refusals_are_permanent_errors_for_the_poster(tmp_path):
    _, _, listener, target = rig(tmp_path)
    failure = post(tmp_path, target, "alice@example.test",
                   headers=b"List-Id: dev <dev.example.test>\r\n")
    assert isinstance(failure.value, MailError) and failure.value.code == 550
    assert listener.ids == []


@pytest.mark.parametrize("published,munged", [("reject", True), ("quarantine", True),
                                              ("none", False)])
def test_dmarc_strict_posters_get_their_from_rewritten(tmp_path, published, munged):
    store, spool, listener, target = rig(tmp_path, policies={"remote.test": published})
    store.set(LIST, policy="open")
    assert post(tmp_path, target, "bob@remote.test") is None
    with open(spool.message_path(listener.ids[0]), "rb") as f:
        copy = message_from_bytes(f.read(), policy=policy.default)
    assert (copy["From"].addresses[0].addr_spec == LIST) is munged
    assert ("bob@remote.test" in str(copy.get("Reply-To", ""))) is munged


def test_mail_to_owner_goes_to_the_owners(tmp_path):
    _, spool, listener, target = rig(tmp_path)
    assert post(tmp_path, target, "someone@remote.test", to="dev-owner@example.test") is None
    envelope = spool.load(listener.ids[0])
    assert envelope.sender == "dev-bounces@example.test"
    assert [r.address for r in envelope.recipients] == ["owner@example.test"]


def test_directory_sees_lists_made_by_another_process(tmp_path):
    store, _, _, _ = rig(tmp_path)
    directory = ListDirectory(store)
    assert directory("ops", "example.test") is None
    other = ListStore(tmp_path / "lists")  # the CLI's connection
    other.create("ops@example.test", ["owner@example.test"])
    other.close()
    route = directory("ops-request", "example.test")
    assert route == Route(kind="list", address="ops-request@example.test",
                          mailbox="ops@example.test", extension="request")


def test_two_outbox_passes_at_once_explode_an_approved_post_once(tmp_path):
    """The timer and an approval by mail may both start a pass: they run one after
    the other, so the post is exploded (and archived) once."""
    from gateway.lists import outbox

    store, spool, listener, target = rig(tmp_path)
    held_id = store.hold(LIST, "stranger@remote.test",
                         b"From: stranger@remote.test\r\nSubject: topic\r\n\r\nhi\r\n",
                         "not a member", 0.0)
    assert outbox.release(store, held_id) is not None
    calls = []
    explode = target.explode

    def counting(*args):
        calls.append(args[-1])
        return explode(*args)

    target.explode = counting
    waiting = []  # blocking calls held back, as a busy thread pool holds them

    def held(f, *args, **kwargs):
        d = defer.Deferred()
        waiting.append((d, f, args, kwargs))
        return d

    target.run_blocking = held
    first, second = target.poll_outbox(), target.poll_outbox()
    results = []
    defer.gatherResults([first, second]).addBoth(results.append)
    while waiting:
        d, f, args, kwargs = waiting.pop(0)
        d.callback(f(*args, **kwargs))
    assert results and not isinstance(results[0], Exception), results
    assert len(calls) == 1
    assert len(listener.ids) == 1


def test_a_message_over_the_lists_max_size_is_refused_unread(tmp_path, monkeypatch):
    from gateway.lists import exploder

    store, spool, listener, target = rig(tmp_path)
    store.set(LIST, max_size=1000)
    read = []
    monkeypatch.setattr(exploder, "_read", lambda path: read.append(path) or b"")
    failure = post(tmp_path, target, "alice@example.test", body=b"x" * 2000)
    assert (failure.value.code, failure.value.enhanced) == (552, "5.3.4")
    assert read == [] and listener.ids == []


def test_personal_copies_are_made_a_batch_at_a_time_within_the_memory_budget(tmp_path):
    from gateway.budget import ByteBudget

    store, spool, listener, target = rig(tmp_path)
    store.set(LIST, web_base_url="https://lists.example.test")
    store.add_members(LIST, [f"m{i}@remote.test" for i in range(20)])
    body = b"y" * 5000
    target.memory = ByteBudget(64 * 1024)  # a batch may take 16 KiB: 3 copies of ~5 KB
    batches = []
    personal = target._personal

    def spy(explosion, message, strict, members):
        batches.append(len(members))
        return personal(explosion, message, strict, members)

    target._personal = spy
    assert post(tmp_path, target, "alice@example.test", body=body) is None
    assert len(listener.ids) == 23 and sum(batches) == 23
    assert max(batches) == 3  # 64 KiB // (4 x ~5 KB), not every member at once
    assert target.memory.peak <= 64 * 1024 and target.memory.in_use == 0


def test_approved_posts_are_read_one_at_a_time_within_the_memory_budget(tmp_path):
    """Issue 11: the outbox pass reads an approved post when the [queue]
    whole_message_memory budget lets it explode, not every waiting post at once."""
    import tracemalloc

    from gateway.budget import ByteBudget
    from gateway.lists import outbox

    store, spool, listener, target = rig(tmp_path)
    size = 2 * 1024 * 1024
    for n in range(6):
        body = b"From: stranger@remote.test\r\nSubject: big\r\n\r\n" + b"z" * size
        held_id = store.hold(LIST, "stranger@remote.test", body, "not a member", float(n))
        assert outbox.release(store, held_id) is not None
    target.memory = ByteBudget(4 * size)  # one post's cost (3 copies) at a time
    exploded = []

    def explode(mlist, author, message, queue_id):
        exploded.append(len(message))  # held only while it is exploded
        return defer.succeed(None)

    target.explode = explode
    tracemalloc.start()
    try:
        results = []
        target.poll_outbox().addBoth(results.append)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert results == [None] and len(exploded) == 6
    assert peak < 3 * size, peak  # one post (and its read's copy), not six
    assert outbox.pending(store.root) == [] and target.memory.in_use == 0
