"""Configuration faults name file, key and reason; the CLI reports them with exit code 1."""

from pathlib import Path

import pytest

from gateway import cli, config
from gateway.access import auth
from gateway.errors import ConfigError


def test_embedded_default_loads_with_the_documented_ports():
    settings = config.load()
    assert settings.domains == ("example.test",)
    assert settings.listen["smtp"] == "tcp:2525:interface=127.0.0.1"
    assert settings.listen["submission"] == "tcp:2587:interface=127.0.0.1"
    assert settings.listen["pop3"] == "tcp:2110:interface=127.0.0.1"
    assert settings.state_dir == Path.cwd() / "var"
    assert settings.trusted_networks == ()


def test_every_fault_is_reported_with_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[server]\ndomains = []\ntrusted_networks = ["10.0.0.0/33"]\n'
                    '[smtp]\nmax_message_size = -1\nvrfy = "yes"\ncolour = 3\n'
                    '[listen]\nsmtp = "2525"\n[queue]\nsync = "never"\n[nonsense]\n')
    with pytest.raises(ConfigError) as e:
        config.load(path)
    keys = {key for _, key, _ in e.value.problems}
    assert keys == {"server.domains", "server.trusted_networks", "smtp.max_message_size",
                    "smtp.vrfy", "smtp.colour", "listen.smtp", "queue.sync", "nonsense"}
    assert all(file == str(path) for file, _, _ in e.value.problems)


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[server\n")
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert e.value.problems[0][0] == str(path)
    assert "not valid TOML" in e.value.problems[0][2]


def test_check_config_exit_codes(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text('[server]\ndomains = ["example.org"]\n')
    assert cli.main(["check-config", str(good)]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[queue]\nconcurrency = 0\n[server]\ndomains = ["x.test"]\n')
    assert cli.main(["check-config", str(bad)]) == 1
    assert f"{bad}: queue.concurrency: must be greater than 0" in capsys.readouterr().err


def test_user_add_stores_only_a_salted_hash(tmp_path, monkeypatch, capsys):
    conf = tmp_path / "c.toml"
    conf.write_text(f'[server]\ndomains = ["example.test"]\nstate_dir = "{tmp_path}"\n')
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("hunter2\n"))
    assert cli.main(["user", "add", "Alice@Example.TEST", "--password-stdin",
                     "--config", str(conf)]) == 0
    text = (tmp_path / "users").read_text()
    assert "hunter2" not in text
    stored = auth.read_users(tmp_path / "users")["alice@example.test"]
    assert stored.startswith("$scrypt$")
    assert auth.verify_password("hunter2", stored)
    assert not auth.verify_password("hunter3", stored)
    # the same password hashes differently each time (salted)
    assert auth.hash_password("hunter2") != auth.hash_password("hunter2")
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("x\n"))
    assert cli.main(["user", "add", "bob@elsewhere.test", "--password-stdin",
                     "--config", str(conf)]) == 1
    assert "not a local domain" in capsys.readouterr().err
