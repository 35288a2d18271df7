"""The password-guessing budget (access/authguard.py), shared by SMTP, POP3 and IMAP.

One GuardedDirectory, as service.py wires it, in front of the dialogues' fake
directories; time is the dialogues' fake clock.
"""

from __future__ import annotations

import base64

import pytest
from fake_users import BOX, PASSWORD
from fake_users import FakeUsers as PopUsers
from imap_dialogue import Session, fresh_store, make_factory
from pop3_dialogue import make_env
from smtp_dialogue import Dialogue
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.testing import MemoryReactorClock

from gateway.access.authguard import GuardedDirectory
from gateway.config import AuthGuardSettings
from gateway.errors import AuthThrottled

SETTINGS = AuthGuardSettings(max_failures_per_client=3, max_failures_per_account=5,
                             failure_window=600, failure_delay=1, failure_delay_max=4)


def outcome(d):
    out = []
    d.addBoth(out.append)
    return out


@pytest.fixture
def guard():
    clock = MemoryReactorClock()
    users = PopUsers()
    return GuardedDirectory(users, SETTINGS, clock)


def test_failures_are_answered_after_a_doubling_delay(guard):
    clock = guard.clock
    for delay in (1, 2):
        out = outcome(guard.authenticate(BOX, "guess", client="192.0.2.1"))
        clock.advance(delay - 0.01)
        assert out == []
        clock.advance(0.01)
        assert out[0].check(UnauthorizedLogin)


def test_delay_stops_at_its_maximum():
    clock = MemoryReactorClock()
    guard = GuardedDirectory(PopUsers(), AuthGuardSettings(
        max_failures_per_client=100, max_failures_per_account=100, failure_delay=1,
        failure_delay_max=4), clock)
    for _ in range(5):
        outcome(guard.authenticate(BOX, "guess", client="192.0.2.1"))
        clock.advance(10)
    out = outcome(guard.authenticate(BOX, "guess", client="192.0.2.1"))
    clock.advance(4)
    assert out and out[0].check(UnauthorizedLogin)


def test_past_the_client_budget_logins_are_refused_unchecked_until_the_window_passes(guard):
    for _ in range(3):
        outcome(guard.authenticate(BOX, "guess", client="192.0.2.1"))
        guard.clock.advance(10)
    calls = len(guard.users.calls)
    out = outcome(guard.authenticate(BOX, PASSWORD, client="192.0.2.1"))  # even the right one
    assert out[0].check(AuthThrottled) and len(guard.users.calls) == calls  # no hash spent
    other = outcome(guard.authenticate(BOX, PASSWORD, client="192.0.2.2"))
    assert other == [BOX]  # another address is not held back
    guard.clock.advance(600)
    assert outcome(guard.authenticate(BOX, PASSWORD, client="192.0.2.1")) == [BOX]


def test_a_success_forgives_that_clients_failures(guard):
    for _ in range(2):
        outcome(guard.authenticate(BOX, "typo", client="192.0.2.1"))
        guard.clock.advance(10)
    assert outcome(guard.authenticate(BOX, PASSWORD, client="192.0.2.1")) == [BOX]
    assert guard.failures(client="192.0.2.1") == 0


def test_past_the_account_budget_the_account_is_refused_from_any_address(guard):
    for n in range(5):
        outcome(guard.authenticate(BOX, "guess", client=f"192.0.2.{n}"))
        guard.clock.advance(10)
    out = outcome(guard.authenticate(BOX, PASSWORD, client="198.51.100.7"))
    assert out[0].check(AuthThrottled)
    other = outcome(guard.authenticate("bob@example.test", "x", client="198.51.100.7"))
    guard.clock.advance(10)
    assert other[0].check(UnauthorizedLogin)  # checked: alice's failures do not hold bob back


def test_failures_on_smtp_count_for_pop3_and_imap(tmp_path):
    clock = MemoryReactorClock()
    guard = GuardedDirectory(PopUsers(), SETTINGS, clock)
    smtp = Dialogue(peer="127.0.0.1", plaintext_from_loopback=True)
    smtp.factory.users = guard
    smtp.ehlo()
    token = base64.b64encode(b"\0" + BOX.encode() + b"\0guess").decode()
    for _ in range(3):
        assert smtp.cmd("AUTH PLAIN " + token) == b""  # answered after the delay
        clock.advance(10)
        assert smtp.read() == b"535 5.7.8 Authentication credentials invalid\r\n"
    token = base64.b64encode(b"\0" + BOX.encode() + b"\0" + PASSWORD.encode()).decode()
    assert smtp.cmd("AUTH PLAIN " + token) == (b"454 4.7.0 Temporary authentication failure: "
                                               b"too many failed logins, try again later\r\n")
    pop = make_env(tmp_path / "pop")(peer="127.0.0.1", users=guard,
                                     plaintext_from_loopback=True)
    pop("USER " + BOX)
    assert pop("PASS " + PASSWORD, b"-ERR") == (b"-ERR [SYS/TEMP] Too many failed logins, "
                                                b"try again later\r\n")
    imap = Session(make_factory(fresh_store(tmp_path / "imap"), clock, users=guard))
    out = imap(f'LOGIN {BOX} "{PASSWORD}"', expect=b"NO")
    assert out.endswith(b"NO [UNAVAILABLE] Too many failed logins, try again later\r\n")


def test_budget_settings_are_read_and_checked():
    from gateway.config import parse
    from gateway.errors import ConfigError

    s = parse({"server": {"domains": ["example.test"]},
               "auth": {"max_failures_per_client": 4, "failure_window": 60}})
    assert s.auth_guard.max_failures_per_client == 4 and s.auth_guard.failure_window == 60
    with pytest.raises(ConfigError) as e:
        parse({"server": {"domains": ["example.test"]}, "auth": {"failure_delay": -1}})
    assert [(k, r) for _, k, r in e.value.problems] == [
        ("auth.failure_delay", "must be 0 or greater, not -1.0")]


def test_checks_from_one_address_run_one_at_a_time(guard):
    first = outcome(guard.authenticate(BOX, "guess", client="192.0.2.1"))
    second = outcome(guard.authenticate(BOX, "guess", client="192.0.2.1"))
    other = outcome(guard.authenticate(BOX, PASSWORD, client="192.0.2.9"))
    assert len(guard.users.calls) == 2 and other == [BOX]  # the second waits its turn
    guard.clock.advance(1)  # the first failure is answered: the second is checked
    assert first[0].check(UnauthorizedLogin) and second == [] and len(guard.users.calls) == 3
    guard.clock.advance(2)
    assert second[0].check(UnauthorizedLogin)
    assert guard._turns == {}  # nothing kept for addresses with nothing waiting
