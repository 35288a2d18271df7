"""Every POP3 limit is a [pop3] setting: parsed by gateway/config.py, obeyed by access/pop3.py.

Sessions run over StringTransport and a fake clock (tests/unit/pop3_dialogue.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pop3_dialogue import BOX, Dialogue, logged_in, make_env

from gateway.config import PopSettings, load, parse
from gateway.errors import ConfigError


@pytest.fixture
def env(tmp_path: Path):
    return make_env(tmp_path)


def test_command_length_limit_is_the_setting(env):
    d = env(pop3={"max_command_length": 300})
    assert d.raw(b"X" * 300 + b"\r\n") == b"-ERR Unknown command\r\n"  # at the limit: parsed
    assert d.raw(b"X" * 301 + b"\r\n") == b"-ERR Line too long\r\n"
    assert d.transport.disconnecting


def test_bad_command_limit_is_the_setting(env):
    d = env(pop3={"max_bad_commands": 2})
    assert d("HELO", b"-ERR") == b"-ERR Unknown command\r\n"
    assert d("HELO", b"-ERR") == b"-ERR Too many bad commands, closing connection\r\n"
    assert d.transport.disconnecting


def test_auth_failure_limit_and_delay_are_the_settings(env):
    d = env(pop3={"max_auth_failures": 1, "auth_failure_delay": 5})
    d("STLS")
    d("USER " + BOX)
    assert d("PASS nope", b"") == b""
    d.clock.advance(4.9)
    assert d.take() == b""
    d.clock.advance(0.1)
    assert d.take() == b"-ERR [AUTH] Authentication failed\r\n"
    assert d.transport.disconnecting


def test_idle_timeout_is_the_setting(env):
    d = env(pop3={"idle_timeout": 30})
    d.clock.advance(29)
    assert not d.transport.disconnecting
    d.clock.advance(1)
    assert d.take() == b"-ERR Idle timeout, closing connection\r\n"


def test_pipelined_input_limit_is_the_setting(env):
    d = env(pop3={"max_pending_input": 1000})
    d("STLS")
    d("USER " + BOX)
    d("PASS nope", b"")  # busy for the failure delay: what follows is held
    assert d.raw(b"NOOP\r\n" * 250) == b""  # 1000 bytes of commands held: at the limit
    assert not d.transport.disconnecting
    d.raw(b"NOOP\r\n")
    assert d.transport.disconnected  # aborted: over the limit


def test_pipelined_input_count_does_not_drift_over_a_long_session(env):
    d = logged_in(env, pop3={"max_pending_input": 300})
    for _ in range(400):  # 1600 bytes of commands in all, each answered at once
        assert d("NOOP") == b"+OK\r\n"
    assert not d.transport.disconnecting


def test_connections_per_client_limit(env):
    factory = env.factory(pop3={"max_connections_per_client": 2})
    first, second = (Dialogue(factory, env.clock, "192.0.2.7") for _ in range(2))
    third = Dialogue(factory, env.clock, "192.0.2.7")
    assert third.greeting == (b"-ERR [SYS/TEMP] Too many connections from your address, "
                              b"try again later\r\n")
    assert third.transport.disconnecting
    assert third.raw(b"CAPA\r\n") == b""  # nothing more is answered
    other = Dialogue(factory, env.clock, "192.0.2.8")  # another address has its own count
    assert other.greeting.startswith(b"+OK")
    third.drop()
    first.drop()
    again = Dialogue(factory, env.clock, "192.0.2.7")  # a slot is free again
    assert again.greeting.startswith(b"+OK")
    for d in (second, other, again):
        d.drop()
    assert factory.connections == {}


def test_default_toml_and_code_defaults_agree():
    documented = load().pop3
    assert documented == parse({"server": {"domains": ["example.test"]}}).pop3
    assert documented == PopSettings(
        max_command_length=4096, max_pending_input=1 << 20, max_bad_commands=20,
        max_auth_failures=3, auth_failure_delay=1.0, idle_timeout=600.0,
        max_connections_per_client=50)


def test_pop3_setting_faults_name_file_key_and_reason():
    with pytest.raises(ConfigError) as e:
        parse({"server": {"domains": ["example.test"]},
               "pop3": {"max_command_length": 100, "auth_failure_delay": -1,
                        "max_connections_per_client": 0, "max_auth_failures": "3",
                        "colour": 1}}, "pop.toml")
    assert sorted(e.value.problems) == [
        ("pop.toml", "pop3.auth_failure_delay", "must be 0 or greater, not -1.0"),
        ("pop.toml", "pop3.colour", "unknown key"),
        ("pop.toml", "pop3.max_auth_failures", "must be int, not str"),
        ("pop.toml", "pop3.max_command_length", "must be at least 255"),
        ("pop.toml", "pop3.max_connections_per_client", "must be greater than 0, not 0"),
    ]
