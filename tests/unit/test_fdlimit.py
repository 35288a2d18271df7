"""The gateway raises its soft open-files limit at start (gateway/fdlimit.py)."""

import resource

import pytest

from gateway import fdlimit


class FakeLimits:
    def __init__(self, monkeypatch, soft, hard, refuse=False):
        self.soft, self.hard, self.refuse = soft, hard, refuse
        monkeypatch.setattr(resource, "getrlimit", self.get)
        monkeypatch.setattr(resource, "setrlimit", self.set)

    def get(self, which):
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def set(self, which, limits):
        assert which == resource.RLIMIT_NOFILE
        if self.refuse:
            raise ValueError("not allowed")
        self.soft, self.hard = limits


def test_the_soft_limit_is_raised_up_to_the_hard_one(monkeypatch):
    limits = FakeLimits(monkeypatch, 1024, 4096)
    assert fdlimit.raise_open_files() == (1024, 4096)
    assert (limits.soft, limits.hard) == (4096, 4096)


def test_a_generous_hard_limit_is_used_only_as_far_as_wanted(monkeypatch):
    limits = FakeLimits(monkeypatch, 1024, 1 << 20)
    fdlimit.raise_open_files()
    assert limits.soft == fdlimit.WANTED and limits.hard == 1 << 20


def test_an_unlimited_hard_limit(monkeypatch):
    limits = FakeLimits(monkeypatch, 1024, resource.RLIM_INFINITY)
    fdlimit.raise_open_files()
    assert limits.soft == fdlimit.WANTED


@pytest.mark.parametrize("soft", [65536, 200000])
def test_a_limit_already_high_enough_is_never_lowered(monkeypatch, soft):
    limits = FakeLimits(monkeypatch, soft, 1 << 20)
    assert fdlimit.raise_open_files() == (soft, soft)
    assert limits.soft == soft


def test_a_refusal_keeps_the_old_limit_and_start_goes_on(monkeypatch):
    limits = FakeLimits(monkeypatch, 1024, 4096, refuse=True)
    assert fdlimit.raise_open_files() == (1024, 1024)
    assert limits.soft == 1024
