"""Maildir delivery: durable, named by queue entry, never twice after a crash."""

import pytest

from gateway.deliver.maildir import MaildirDelivery, unique_name
from gateway.durable import run_now
from gateway.envelope import Envelope, Recipient
from gateway.errors import MailError
from gateway.interfaces import Route
from gateway.store.maildir import MaildirStore


def deliver(target, envelope, route, path, recovering=False):
    results = []
    target.deliver(envelope, route, path, recovering).addBoth(results.append)
    return results[0]


@pytest.fixture
def setup(tmp_path):
    store = MaildirStore(tmp_path / "mail")
    target = MaildirDelivery(store, "mx.example.test", run_now)
    msg = tmp_path / "q.msg"
    msg.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    env = Envelope(sender="bob@remote.test", recipients=[Recipient("alice@example.test")],
                   queue_id="1K0WBNWWCN0NW0NJ", arrived=1795411989.5)
    route = Route("local", "alice@example.test", mailbox="alice@example.test")
    return store, target, msg, env, route


def test_delivery_adds_return_path_and_delivered_to(setup, tmp_path):
    store, target, msg, env, route = setup
    assert deliver(target, env, route, str(msg)) is True
    new = tmp_path / "mail" / "example.test" / "alice" / "new"
    (file,) = new.iterdir()
    assert file.name == unique_name(env, "alice@example.test", "mx.example.test")
    assert file.read_bytes() == (b"Return-Path: <bob@remote.test>\r\n"
                                 b"Delivered-To: alice@example.test\r\n"
                                 b"Subject: x\r\n\r\nbody\r\n")


def test_recovering_delivery_is_not_repeated_even_after_flag_rename(setup, tmp_path):
    store, target, msg, env, route = setup
    deliver(target, env, route, str(msg))
    box = tmp_path / "mail" / "example.test" / "alice"
    (file,) = (box / "new").iterdir()
    file.rename(box / "cur" / (file.name + ":2,S"))
    assert deliver(target, env, route, str(msg), recovering=True) is False
    assert len(list((box / "cur").iterdir())) == 1
    assert list((box / "new").iterdir()) == []


@pytest.mark.parametrize("mailbox", ["../x@example.test", ".hidden@example.test"])
def test_names_from_the_network_never_escape_the_mail_root(setup, mailbox):
    store, target, msg, env, _ = setup
    route = Route("local", mailbox, mailbox=mailbox)
    failure = deliver(target, env, route, str(msg))
    assert failure.check(MailError)
    assert failure.value.code == 550 or failure.value.code == 553


def test_a_message_that_was_delivered_here_before_is_a_forwarding_loop():
    from gateway.deliver.maildir import check_forwarding_loop
    from gateway.errors import MailError
    from gateway.interfaces import Route

    route = Route(kind="local", address="team@example.test", mailbox="alice@example.test")
    looped = b"Received: x\r\nDelivered-To: TEAM@example.test\r\nSubject: s\r\n\r\nbody"
    try:
        check_forwarding_loop(looped, route)
    except MailError as e:
        assert (e.code, e.enhanced) == (554, "5.4.6")
    else:
        raise AssertionError("loop not found")
    # Other addresses, and the body, do not count.
    check_forwarding_loop(b"Delivered-To: bob@example.test\r\n\r\nDelivered-To: team@example."
                          b"test\r\n", route)
