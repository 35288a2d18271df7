"""Slow work runs in pools by kind ([threads], service.py): guessing passwords or
searching mailboxes never queues in front of the spool writes of accept/smtp.py.

The real composition root is built on a memory reactor; pools are not
started, so work handed to a pool stays in its queue where the test sees it.
"""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python.threadpool import ThreadPool

from gateway import service
from gateway.config import parse
from gateway.errors import ConfigError


class PoolReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.pool = ThreadPool(minthreads=0, maxthreads=1, name="reactor")

    def getThreadPool(self) -> ThreadPool:
        return self.pool

    def suggestThreadPoolSize(self, size: int) -> None:
        pass

    def callFromThread(self, f, *args, **kw) -> None:
        f(*args, **kw)


def factories(top) -> dict:
    out = {}
    for child in top:
        factory = getattr(child, "factory", None)
        if factory is not None:
            out[type(factory).__name__] = factory
    return out


def all_pools(top) -> dict:
    return {p.name: p for s in top if isinstance(s, service.PoolsService) for p in s.pools}


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("state")  # the self-signed certificate is made once


@pytest.fixture
def built(state_dir):
    settings = parse({"server": {"domains": ["example.test"], "state_dir": str(state_dir)},
                      "listen": {name: "tcp:0:interface=127.0.0.1"
                                 for name in ("smtp", "submission", "pop3", "imap")},
                      "queue": {"runner_process": False},  # the runner's pools here too
                      "threads": {"auth": 3, "mailbox": 5}})
    reactor = PoolReactor()
    top = service.build(settings, reactor)
    yield top, reactor
    top.run_lock.close()
    top.runner_lock.close()  # one process: its queue runner's lock too


def test_password_checks_run_in_the_auth_pool_not_the_reactors(built):
    top, reactor = built
    smtp = factories(top)["SMTPFactory"]
    smtp.users.authenticate("alice@example.test", "guess")
    assert reactor.pool.q.qsize() == 0
    assert smtp.users.pool.name == "auth" and smtp.users.pool.max == 3
    assert smtp.users.pool.q.qsize() == 1


@pytest.mark.parametrize("name", ["IMAPFactory", "POP3Factory"])
def test_mailbox_work_runs_in_the_mailbox_pool(built, name):
    top, reactor = built
    factory = factories(top)[name]
    factory.run_blocking(lambda: None)
    assert reactor.pool.q.qsize() == 0
    mailbox = all_pools(top)["mailbox"]
    assert mailbox.max == 5 and mailbox.q.qsize() == 1


def test_searches_run_in_the_search_pool(built):
    top, reactor = built
    factory = factories(top)["IMAPFactory"]
    factory.run_search(lambda: None)
    pools = all_pools(top)
    assert reactor.pool.q.qsize() == 0 and pools["mailbox"].q.qsize() == 0
    assert pools["search"].max == 1 and pools["search"].q.qsize() == 1


def test_pool_sizes_are_checked():
    with pytest.raises(ConfigError, match="threads"):
        parse({"server": {"domains": ["example.test"]}, "threads": {"auth": 0}})
