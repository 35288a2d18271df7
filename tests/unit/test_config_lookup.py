"""twistd and the CLI find one configuration: --config, $MAILGATEWAY_CONFIG,
/etc/mailgateway/mailgateway.toml, the embedded default; the CLI says which
one it uses and never invents a state directory elsewhere."""

import io

import pytest

from gateway import cli, config


@pytest.fixture
def no_system_config(tmp_path, monkeypatch):
    """No /etc/mailgateway/mailgateway.toml and no $MAILGATEWAY_CONFIG."""
    monkeypatch.setattr(config, "SYSTEM_PATH", tmp_path / "etc" / "mailgateway.toml")
    monkeypatch.delenv(config.ENVIRONMENT_VARIABLE, raising=False)
    return config.SYSTEM_PATH


def write_config(path, state_dir):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[server]\ndomains = ["example.test"]\nstate_dir = "{state_dir}"\n')
    return path


def test_lookup_order(tmp_path, no_system_config, monkeypatch):
    assert config.locate() == (config.DEFAULT_PATH, config.EMBEDDED)
    write_config(no_system_config, tmp_path / "sys")
    assert config.locate() == (no_system_config, "the system configuration")
    env = write_config(tmp_path / "env.toml", tmp_path / "env")
    monkeypatch.setenv(config.ENVIRONMENT_VARIABLE, str(env))
    assert config.locate() == (env, "$MAILGATEWAY_CONFIG")
    assert config.locate(tmp_path / "given.toml") == (tmp_path / "given.toml", "--config")


def test_check_config_names_the_file_and_state_dir(tmp_path, no_system_config, monkeypatch,
                                                   capsys):
    env = write_config(tmp_path / "env.toml", tmp_path / "state")
    monkeypatch.setenv(config.ENVIRONMENT_VARIABLE, str(env))
    assert cli.main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert f"configuration: {env} ($MAILGATEWAY_CONFIG)" in out
    assert f"state_dir: {tmp_path / 'state'}" in out
    monkeypatch.delenv(config.ENVIRONMENT_VARIABLE)
    assert cli.main(["check-config"]) == 0
    assert f"configuration: {config.DEFAULT_PATH} (the embedded default)" in \
        capsys.readouterr().out


def test_cli_with_the_embedded_default_elsewhere_creates_nothing(tmp_path, no_system_config,
                                                                  monkeypatch, capsys):
    # The issue: in another directory `user add` made a new ./var/users and
    # `queue list` said "queue is empty".
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("secret\n"))
    assert cli.main(["user", "add", "alice@example.test", "--password-stdin"]) == 1
    err = capsys.readouterr().err
    assert f"no state directory {tmp_path / 'var'}" in err and "embedded default" in err
    assert not (tmp_path / "var").exists()
    assert cli.main(["queue", "list"]) == 1
    assert "no state directory" in capsys.readouterr().err


def test_the_cli_follows_the_environment_like_twistd(tmp_path, no_system_config, monkeypatch,
                                                     capsys):
    state = tmp_path / "state"
    env = write_config(tmp_path / "env.toml", state)
    monkeypatch.setenv(config.ENVIRONMENT_VARIABLE, str(env))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("secret\n"))
    assert cli.main(["user", "add", "alice@example.test", "--password-stdin"]) == 0
    assert (state / "users").is_file()
    assert not (tmp_path / "var").exists()
    assert cli.main(["user", "list"]) == 0
    assert "alice@example.test" in capsys.readouterr().out


def test_config_that_is_not_utf8_is_one_line(tmp_path, capsys):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('[server]\nhostname = "caf\xe9"\n'.encode("latin-1"))
    assert cli.main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"{bad}: not UTF-8: byte 0xe9 on line 2"


def test_user_add_without_a_terminal_asks_for_password_stdin(tmp_path, monkeypatch, capsys):
    conf = write_config(tmp_path / "c.toml", tmp_path / "state")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    assert cli.main(["--config", str(conf), "user", "add", "bob@example.test"]) == 1
    assert "--password-stdin" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["check-config", "user", "queue", "status", "tlsfront"])
def test_every_sub_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert f"usage: mailgateway {command}" in capsys.readouterr().out
