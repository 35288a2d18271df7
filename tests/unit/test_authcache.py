"""access/authcache.py inside access/auth.py: a correct password is hashed once per TTL.

The real UserDirectory over a real users file; scrypt runs inline, and every
full check is counted, so "answered from the cache" is seen, not timed.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

import gateway.access.auth as auth
from gateway.access.authcache import AuthCache
from gateway.config import AuthGuardSettings, parse

USER, PASSWORD = "alice@example.test", "correct horse"


class InlineReactor(MemoryReactorClock):
    """The auth thread pool's work runs inline; the clock is the fake one."""

    def getThreadPool(self):
        return self

    def callInThreadWithCallback(self, on_result, f, *args, **kw):
        try:
            on_result(True, f(*args, **kw))
        except Exception as e:
            on_result(False, Failure(e))

    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


@pytest.fixture
def env(tmp_path, monkeypatch):
    users_file = tmp_path / "users"
    auth.set_password(users_file, USER, PASSWORD)
    checks: list[str] = []
    real = auth.verify_password

    def counted(password, stored):
        checks.append(password)
        return real(password, stored)

    monkeypatch.setattr(auth, "verify_password", counted)
    reactor = InlineReactor()

    def directory(ttl: float = 60, size: int = 100) -> auth.UserDirectory:
        return auth.UserDirectory(users_file, reactor,
                                  cache=AuthCache(ttl, size, reactor.seconds))

    directory.checks, directory.clock, directory.file = checks, reactor, users_file
    return directory


def login(users, password: str, user: str = USER):
    out = []
    users.authenticate(user, password).addBoth(out.append)
    assert len(out) == 1
    return out[0] if not isinstance(out[0], Failure) else None


def test_a_repeated_correct_login_is_hashed_once(env):
    users = env()
    assert login(users, PASSWORD) == USER
    assert login(users, PASSWORD) == USER
    assert login(users, PASSWORD, "Alice@EXAMPLE.test") == USER
    assert env.checks == [PASSWORD]


def test_a_wrong_password_never_hits_the_cache_and_is_always_checked(env):
    users = env()
    login(users, PASSWORD)
    for wrong in ("correct horse ", "Correct horse", "", "correct hors"):
        assert login(users, wrong) is None
    assert env.checks == [PASSWORD, "correct horse ", "Correct horse", "", "correct hors"]
    assert login(users, PASSWORD) == USER and len(env.checks) == 5  # still remembered


def test_a_changed_password_invalidates_at_once(env):
    users = env()
    login(users, PASSWORD)
    auth.set_password(env.file, USER, "new secret")
    os.utime(env.file, ns=(1, 1))  # a distinct mtime whatever the file system's tick
    assert login(users, PASSWORD) is None
    assert env.checks == [PASSWORD, PASSWORD]  # checked in full against the new hash
    assert login(users, "new secret") == USER
    assert login(users, "new secret") == USER and len(env.checks) == 3


def test_a_removed_user_cannot_log_in_from_the_cache(env):
    users = env()
    login(users, PASSWORD)
    auth.remove_user(env.file, USER)
    os.utime(env.file, ns=(1, 1))
    assert login(users, PASSWORD) is None


def test_entries_expire_after_the_ttl(env):
    users = env(ttl=60)
    login(users, PASSWORD)
    env.clock.advance(59)
    login(users, PASSWORD)
    assert len(env.checks) == 1
    env.clock.advance(2)  # 61 s after the check that made the entry: hits do not renew it
    assert login(users, PASSWORD) == USER and len(env.checks) == 2


def test_unknown_users_are_never_cached_and_zero_turns_it_off(env):
    users = env()
    assert login(users, PASSWORD, "bob@example.test") is None
    assert login(users, PASSWORD, "bob@example.test") is None
    assert len(env.checks) == 2
    off = env(ttl=0)
    login(off, PASSWORD)
    login(off, PASSWORD)
    assert len(env.checks) == 4


def test_the_cache_holds_at_most_size_accounts():
    now = [0.0]
    cache = AuthCache(60, 2, lambda: now[0])
    for n in range(3):
        cache.remember(f"u{n}", "pw", "hash")
    assert not cache.hit("u0", "pw", "hash")  # the oldest went first
    assert cache.hit("u1", "pw", "hash") and cache.hit("u2", "pw", "hash")
    assert not cache.hit("u1", "pw", "other hash")


def test_settings():
    assert AuthGuardSettings().cache_ttl > 0 and AuthGuardSettings().cache_size > 0
    s = parse({"server": {"domains": ["example.test"]},
               "auth": {"cache_ttl": 0, "cache_size": 5}}).auth_guard
    assert (s.cache_ttl, s.cache_size) == (0, 5)


def test_rcpt_trusts_a_known_address_briefly_and_a_miss_reads_the_file_again(env, tmp_path):
    users = env()
    stats: list[str] = []
    real_stat = type(env.file).stat

    def counted(path, *a, **kw):
        if path == env.file:
            stats.append(str(path))
        return real_stat(path, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(env.file), "stat", counted)
        assert users.exists(USER) and users.exists(USER.upper())
        assert len(stats) == 1  # the second RCPT within the window costs no stat
        auth.set_password(env.file, "new@example.test", "pw")
        os.utime(env.file, ns=(2, 2))
        assert users.exists("new@example.test")  # a miss checks: found at once
        assert len(stats) == 2
        auth.remove_user(env.file, USER)
        os.utime(env.file, ns=(3, 3))
        assert users.exists(USER)  # still trusted within the window ...
        env.clock.advance(1)
        assert not users.exists(USER)  # ... and not after it
