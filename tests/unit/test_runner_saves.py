"""The runner's envelope saves are coalesced: many batches, few rewrites, none skipped."""

from __future__ import annotations

from twisted.internet import defer

from gateway.queue.runner import _Saver


def test_saves_asked_during_a_write_share_the_next_one():
    writes: list[defer.Deferred] = []

    def write():
        writes.append(defer.Deferred())
        return writes[-1]

    saver = _Saver(write)
    fired = []
    first = saver.save()
    first.addCallback(lambda _: fired.append("first"))
    assert len(writes) == 1  # no write running: at once
    later = [saver.save() for _ in range(100)]
    for d in later:
        d.addCallback(lambda _: fired.append("later"))
    assert len(writes) == 1  # they wait for the write in flight to end
    writes[0].callback(None)
    assert fired == ["first"] and len(writes) == 2  # one more write serves all 100
    writes[1].callback(None)
    assert fired == ["first"] + ["later"] * 100
    removed = []
    saver.run(removed.append, "entry")
    assert removed == ["entry"] and len(writes) == 2


def test_a_failed_write_fails_its_waiters():
    saver = _Saver(lambda: defer.fail(OSError("disk full")))
    errors = []
    saver.save().addErrback(lambda f: errors.append(f.value))
    assert [type(e) for e in errors] == [OSError]


def test_a_save_writes_the_envelope_as_it_was_when_asked():
    from gateway.envelope import Envelope, Recipient, RecipientState
    from gateway.queue.runner import snapshot

    live = Envelope("dev-bounces@example.test", [Recipient("a@example.net", sender="v@x.test"),
                                                 Recipient("b@example.net")], queue_id="Q1")
    saved = snapshot(live)
    # What other batches do to the live envelope while the thread writes the copy:
    live.recipients[0].state = RecipientState.DONE
    live.recipients[1].attempts = 3
    live.recipients.append(Recipient("c@example.net"))
    assert [(r.address, r.state, r.attempts, r.sender) for r in saved.recipients] == [
        ("a@example.net", RecipientState.PENDING, 0, "v@x.test"),
        ("b@example.net", RecipientState.PENDING, 0, None)]
    assert saved.to_json() != live.to_json() and saved.queue_id == "Q1"
