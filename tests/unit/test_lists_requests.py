"""Commands by mail (gateway/lists/requests.py) and the outbox of approved posts."""

import re
from email import message_from_bytes, policy

import pytest

from gateway.lists import outbox, requests
from gateway.lists.store import ListStore

LIST = "dev@example.test"


@pytest.fixture
def store(tmp_path):
    s = ListStore(tmp_path / "lists")
    s.create(LIST, ["owner@example.test"], "members")
    s.set(LIST, moderators="mod@example.test")
    yield s
    s.close()


def mail(sender, subject="", body="", extra=""):
    return (f"From: {sender}\r\nTo: dev-request@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <m1@example.org>\r\n{extra}\r\n{body}").encode()


def run(store, sender, subject="", body="", extra="", now=1000.0, envelope=None):
    return requests.handle(store, store.get(LIST), envelope if envelope is not None else sender,
                           mail(sender, subject, body, extra), now)


def parsed(out):
    return message_from_bytes(out.message, policy=policy.default)


def token_mail(result, to):
    [m] = [r for r in result.replies if r.recipients == (to,)
           and str(parsed(r)["Subject"]).startswith("confirm ")]
    return str(parsed(m)["Subject"]).split()[1], m


def results_text(result, to):
    [m] = [r for r in result.replies if r.recipients == (to,)
           and not str(parsed(r)["Subject"]).startswith("confirm ")]
    return parsed(m).get_content()


def test_subscribe_then_a_plain_reply_confirms(store):
    result = run(store, "bob@example.org", "subscribe")
    token, confirmation = token_mail(result, "bob@example.org")
    assert not store.is_member(LIST, "bob@example.org")
    m = parsed(confirmation)
    assert m["Auto-Submitted"] == "auto-replied"
    assert confirmation.sender == "dev-bounces@example.test"
    assert m["From"].addresses[0].addr_spec == "dev-request@example.test"
    assert "confirmation request has been sent to bob@example.org" in results_text(
        result, "bob@example.org")
    # A client's plain Reply: "Re:" and the whole mail quoted below.
    quoted = "\r\n".join("> " + line for line in m.get_content().splitlines())
    body = ("\r\nOn Monday someone wrote:\r\n" + quoted
            + "\r\n-- \r\nBob\r\nsubscribe x@y\r\n")
    result = run(store, "bob@example.org", f"Re: confirm {token}", body, now=2000)
    assert store.is_member(LIST, "bob@example.org")
    assert "bob@example.org is now a member" in results_text(result, "bob@example.org")
    assert store.members(LIST) == ["bob@example.org"]  # nothing after the signature ran
    # a token works once
    again = run(store, "bob@example.org", f"Re: confirm {token}", now=2001)
    assert "Unknown or expired" in results_text(again, "bob@example.org")


def test_nobody_subscribes_a_stranger(store):
    result = run(store, "eve@example.org", "", "subscribe victim@example.net\r\n")
    token, _ = token_mail(result, "victim@example.net")
    assert not store.is_member(LIST, "victim@example.net")
    assert all(token not in r.message.decode() for r in result.replies
               if r.recipients == ("eve@example.org",))


def test_tokens_expire(store):
    token, _ = token_mail(run(store, "bob@example.org", "subscribe", now=0),
                          "bob@example.org")
    run(store, "bob@example.org", f"Re: confirm {token}", now=requests.TOKEN_TTL + 1)
    assert not store.is_member(LIST, "bob@example.org")


@pytest.mark.parametrize("extra, envelope", [
    ("Auto-Submitted: auto-replied\r\n", "bob@example.org"),
    ("X-Loop: dev@example.test\r\n", "bob@example.org"),  # our own notice, echoed
    ("Precedence: bulk\r\n", "bob@example.org"),
    ("", ""),
])
def test_no_answer_to_auto_submitted_mail_or_the_null_sender(store, extra, envelope):
    token, _ = token_mail(run(store, "bob@example.org", "subscribe"), "bob@example.org")
    result = run(store, "bob@example.org", f"Auto: confirm {token}", extra=extra,
                 envelope=envelope)
    assert result.replies == [] and result.release == []
    assert not store.is_member(LIST, "bob@example.org")


def test_unsubscribe_tells_nobody_who_is_a_member(store):
    store.add_members(LIST, ["bob@example.org"])
    stranger = run(store, "eve@example.org", "unsubscribe carol@example.org")
    assert [r.recipients for r in stranger.replies] == [("eve@example.org",)]
    result = run(store, "eve@example.org", "unsubscribe bob@example.org")
    assert results_text(result, "eve@example.org") == results_text(stranger, "eve@example.org") \
        .replace("carol", "bob")
    token, _ = token_mail(result, "bob@example.org")
    run(store, "bob@example.org", f"Re: confirm {token}")
    assert not store.is_member(LIST, "bob@example.org")


def test_join_and_leave_addresses(store):
    message = mail("Bob <bob@example.org>", "anything")
    result = requests.join(store, store.get(LIST), "bob@example.org", message, 0)
    token, _ = token_mail(result, "bob@example.org")
    run(store, "bob@example.org", "", f"confirm {token}\r\n")
    assert store.is_member(LIST, "bob@example.org")
    result = requests.leave(store, store.get(LIST), "bob@example.org", message, 0)
    token, _ = token_mail(result, "bob@example.org")
    run(store, "bob@example.org", f"Re: confirm {token}")
    assert not store.is_member(LIST, "bob@example.org")


def test_resubscribing_enables_a_disabled_member(store):
    store.set(LIST, bounce_threshold=1)
    store.add_members(LIST, ["bob@example.org"])
    assert store.record_bounce(LIST, "bob@example.org", 0)
    token, _ = token_mail(run(store, "bob@example.org", "subscribe"), "bob@example.org")
    run(store, "bob@example.org", f"Re: confirm {token}")
    assert store.members(LIST) == ["bob@example.org"]


@pytest.mark.parametrize("who_allowed, asker, sees", [
    ("owners", "owner@example.test", True),
    ("owners", "bob@example.org", False),
    ("members", "bob@example.org", True),
    ("members", "eve@example.org", False),
    ("nobody", "owner@example.test", False),
])
def test_who(store, who_allowed, asker, sees):
    store.set(LIST, who_allowed=who_allowed)
    store.add_members(LIST, ["bob@example.org", "carol@example.org"])
    text = results_text(run(store, asker, "who"), asker)
    assert ("carol@example.org" in text) is sees


def test_help_and_letters_are_not_commands(store):
    text = results_text(run(store, "bob@example.org", "help"), "bob@example.org")
    assert "subscribe [address]" in text and "dev-join@example.test" in text
    result = run(store, "bob@example.org", "Question",
                 "Hello,\r\nhow do I join?\r\nThanks\r\nsubscribe\r\n")
    assert result.replies == []  # a letter, not commands: three unknown lines end it


def held_post(store, sender="eve@example.org"):
    post = b"From: eve@example.org\r\nSubject: hi\r\n\r\n\xe9t\xe9\r\n"
    held_id = store.hold(LIST, sender, post, "eve@example.org is not a member", now=5)
    notice = requests.hold_notice(store.get(LIST), held_id, sender, post,
                                  "eve@example.org is not a member", now=5)
    return post, held_id, notice


def test_hold_notice_goes_to_the_moderators_with_the_post(store):
    post, held_id, notice = held_post(store)
    assert notice.recipients == ("mod@example.test",)
    m = parsed(notice)
    assert held_id in str(m["Subject"]) and m["Auto-Submitted"] == "auto-replied"
    attached = [p for p in m.walk() if p.get_content_type() == "message/rfc822"]
    assert attached and b"Subject: hi" in notice.message


def test_a_moderators_plain_reply_approves_into_the_outbox(store, tmp_path):
    post, held_id, notice = held_post(store)
    subject = str(parsed(notice)["Subject"])
    # someone else replying: nothing happens
    result = run(store, "eve@example.org", f"Re: {subject}")
    assert result.release == [] and store.get_held(held_id) is not None
    result = run(store, "Mod@Example.test", f"Re: {subject}", "> quoted notice\r\n")
    assert result.release == [("eve@example.org", post)]
    assert store.get_held(held_id) is None
    [waiting] = outbox.pending(store.root)
    assert (waiting.held_id, waiting.list, waiting.sender, outbox.read(waiting)) == (
        held_id, LIST, "eve@example.org", post)
    outbox.done(waiting)
    assert outbox.pending(store.root) == []
    # approving twice releases nothing more
    assert run(store, "mod@example.test", f"Re: {subject}").release == []


def test_reject_by_reply_tells_the_poster(store):
    post, held_id, notice = held_post(store)
    result = run(store, "owner@example.test", f"Re: {parsed(notice)['Subject']}",
                 "reject\r\n\r\n> the notice\r\n")
    assert result.release == [] and outbox.pending(store.root) == []
    assert store.get_held(held_id) is None
    [to_poster] = [r for r in result.replies if r.recipients == ("eve@example.org",)]
    assert "rejected" in str(parsed(to_poster)["Subject"])


def test_explicit_approve_command(store):
    post, held_id, _ = held_post(store)
    result = run(store, "mod@example.test", "", f"approve {held_id}\r\n")
    assert result.release == [("eve@example.org", post)]


def test_outbox_release_is_idempotent_and_quarantines_junk(store):
    post, held_id, _ = held_post(store)
    assert outbox.release(store, held_id).message == post
    assert outbox.release(store, held_id) is None
    junk = outbox.outbox_dir(store.root) / "junk.post"
    junk.write_bytes(b"not json\n")
    [waiting] = outbox.pending(store.root)
    assert waiting.held_id == held_id
    assert junk.with_name("junk.post.bad").exists()


def test_replies_answer_the_envelope_sender_and_thread(store):
    result = run(store, "bob@example.org", "help", envelope="bounces-bob@example.org")
    [reply] = result.replies
    assert reply.recipients == ("bounces-bob@example.org",)
    assert parsed(reply)["In-Reply-To"] == "<m1@example.org>"
    assert re.search(rb"\r\n\r\n", reply.message)


def test_held_ack_tells_the_poster_but_never_the_null_sender(store):
    ack = requests.held_ack(store.get(LIST), "eve@example.org", "not a member", now=0)
    assert ack.recipients == ("eve@example.org",)
    m = parsed(ack)
    assert m["Auto-Submitted"] == "auto-replied" and m["X-Loop"] == LIST
    assert "not a member" in m.get_content()
    assert requests.held_ack(store.get(LIST), "", "x", now=0) is None
