"""[[tlsfront]] and [proxied] in the configuration, and `mailgateway tlsfront`'s arguments:
each fault names file, key and reason."""

from __future__ import annotations

import argparse
import socket
import stat

import pytest
import trustme

from gateway import config
from gateway.errors import ConfigError
from gateway.tlsfront import command


@pytest.fixture
def pem(tmp_path) -> dict[str, str]:
    leaf = trustme.CA().issue_cert("mail.example.test")
    paths = {"certificate": str(tmp_path / "c.pem"), "private_key": str(tmp_path / "k.pem")}
    leaf.cert_chain_pems[0].write_to_path(paths["certificate"])
    leaf.private_key_pem.write_to_path(paths["private_key"])
    return paths


def gateway_config(tmp_path, *fronts: dict, **sections) -> dict:
    return {"server": {"domains": ["example.test"], "state_dir": str(tmp_path / "var")},
            "listen": {"submission": "tcp:2587", "pop3": "tcp:2110"},
            "tlsfront": list(fronts), **sections}


def faults(data: dict) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as e:
        config.parse(data, "gw.toml")
    return [(key, reason) for _, key, reason in e.value.problems]


def test_the_embedded_default_has_three_fronts_on_unix_sockets():
    settings = config.load()
    fronts = {f.name: f for f in settings.tlsfront}
    assert [f.accept for f in fronts.values()] == [
        "tcp:2465:interface=127.0.0.1", "tcp:2995:interface=127.0.0.1",
        "tcp:2993:interface=127.0.0.1"]
    run = config.escape_endpoint(str(settings.state_dir / "run"))  # state_dir is absolute
    assert fronts["submissions"].connect == f"unix:{run}/submission.sock"
    assert fronts["submissions"].protocol == "smtp" and fronts["pop3s"].protocol == "pop3"
    assert fronts["imaps"].backend == "imap"
    assert fronts["submissions"].certificates[0].certificate == settings.certificate
    assert settings.proxied.listen["submission"] == \
        f"unix:{run}/submission.sock:mode=600:lockfile=1"
    # The front sends the same greeting name as the server.
    assert fronts["submissions"].hostname == settings.hostname
    assert fronts["submissions"].min_version == "1.2" and fronts["submissions"].proxy == "v2"


def test_a_front_to_a_listener_gets_a_proxied_unix_socket(tmp_path, pem):
    settings = config.parse(gateway_config(tmp_path, {
        "accept": "tcp:2465", "connect": "submission", "certificates": [pem]}))
    [front] = settings.tlsfront
    path = tmp_path / "var" / "run" / "submission.sock"
    assert front.connect == f"unix:{path}"
    assert settings.proxied.listen == {"submission": f"unix:{path}:mode=600:lockfile=1"}


def test_an_explicit_tcp_proxied_listener_is_reached_by_host_and_port(tmp_path, pem):
    settings = config.parse(gateway_config(
        tmp_path, {"accept": "tcp:2995", "connect": "pop3", "certificates": [pem]},
        proxied={"pop3": "tcp:2600:interface=127.0.0.1", "trusted_sources": ["127.0.0.1"]}))
    assert settings.tlsfront[0].connect == "tcp:host=127.0.0.1:port=2600"


def test_endpoint_conversion_escapes_colons():
    assert config.client_endpoint_for("unix:/run/a\\:b.sock:mode=600") == "unix:/run/a\\:b.sock"
    assert config.client_endpoint_for("tcp6:port=25:interface=\\:\\:1") == \
        "tcp:host=\\:\\:1:port=25"
    assert config.client_endpoint_for("ssl:465") is None


@pytest.mark.parametrize("entry, key, reason", [
    ({"accept": "ssl:465", "connect": "submission"}, "tlsfront[0].accept",
     "the front does TLS itself"),
    ({"accept": "tcp:465", "connect": "nowhere"}, "tlsfront[0].connect", "not 'nowhere'"),
    ({"accept": "tcp:465", "connect": "submission", "proxy": "v1"}, "tlsfront[0].proxy",
     "must be \"v2\""),
    ({"accept": "tcp:465", "connect": "tcp:h:1", "proxy": "v3"}, "tlsfront[0].proxy",
     "must be one of v2, v1, none"),
    ({"accept": "tcp:465", "connect": "pop3", "client_verify": "required"},
     "tlsfront[0].client_ca", "a CA file is needed"),
    ({"accept": "tcp:465", "connect": "pop3", "min_version": "1.1"}, "tlsfront[0].min_version",
     "RFC 8996"),
    ({"accept": "tcp:465", "connect": "pop3", "certificates": [{"certificate": "x"}]},
     "tlsfront[0].certificates[0]", "must be {certificate"),
    ({"accept": "tcp:465", "connect": "pop3",
      "certificates": [{"certificate": "/no/c.pem", "private_key": "/no/k.pem"}]},
     "tlsfront[0].certificates[0].certificate", "no such file"),
    ({"accept": "tcp:465", "connect": "pop3", "idle_timeout": 0}, "tlsfront[0].idle_timeout",
     "greater than 0"),
    ({"accept": "tcp:465", "connect": "pop3", "max_handshakes_per_second": -1},
     "tlsfront[0].max_handshakes_per_second", "greater than 0"),
    ({"accept": "tcp:465", "connect": "pop3", "colour": "blue"}, "tlsfront[0].colour",
     "unknown key"),
])
def test_front_faults_name_the_key(tmp_path, entry, key, reason):
    problems = faults(gateway_config(tmp_path, entry))
    assert any(k == key and reason in r for k, r in problems), problems


def test_proxied_faults(tmp_path):
    problems = faults(gateway_config(tmp_path, proxied={
        "submission": "tcp:2587", "pop3": "ssl:2600", "trusted_sources": ["nope"]}))
    assert ("proxied.submission",
            "must not be a [listen] endpoint: public ports never accept PROXY") in problems
    assert any(k == "proxied.pop3" for k, _ in problems)
    assert any(k == "proxied.trusted_sources" for k, _ in problems)


def test_a_socket_path_too_long_for_unix_is_a_fault(tmp_path, pem):
    data = gateway_config(tmp_path, {"accept": "tcp:465", "connect": "pop3",
                                     "certificates": [pem]})
    data["server"]["state_dir"] = str(tmp_path / ("x" * 120))
    assert any("too long for a unix socket" in r for _, r in faults(data))


def test_a_fronts_only_file_for_the_command(tmp_path, pem):
    path = tmp_path / "fronts.toml"
    path.write_text(f'[[tlsfront]]\naccept = "tcp:8465"\nconnect = "tcp:127.0.0.1:25"\n'
                    f'proxy = "none"\nprotocol = "smtp"\ncertificates = [{{certificate = '
                    f'"{pem["certificate"]}", private_key = "{pem["private_key"]}"}}]\n')
    [front] = config.load_fronts(path)
    assert (front.connect, front.proxy, front.name) == ("tcp:127.0.0.1:25", "none", "tcp:8465")
    path.write_text('[[tlsfront]]\naccept = "tcp:8465"\nconnect = "submission"\n')
    with pytest.raises(ConfigError) as e:
        config.load_fronts(path)
    assert any("names a gateway listener" in r for _, _, r in e.value.problems)


def arguments(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    command.add_arguments(p)
    p.add_argument("--config", default=None)
    return p.parse_args(list(argv))


def test_command_line_front(pem):
    [front] = command.fronts_from_arguments(arguments(
        "--accept", "tcp:8465", "--connect", "unix:/run/x.sock", "--cert", pem["certificate"],
        "--key", pem["private_key"], "--proxy", "v1", "--protocol", "pop3"))
    assert (front.accept, front.connect, front.proxy, front.protocol, front.name) == (
        "tcp:8465", "unix:/run/x.sock", "v1", "pop3", "tlsfront")


def test_command_line_faults(pem, capsys):
    with pytest.raises(ConfigError, match="one --key for each --cert"):
        command.fronts_from_arguments(arguments("--accept", "tcp:1", "--connect", "tcp:h:1",
                                                "--cert", pem["certificate"]))
    assert command.run(arguments("--accept", "tcp:1", "--connect", "x"), reactor=None) == 1
    err = capsys.readouterr().err
    assert "<command line>: tlsfront[0].connect: must be" in err
    assert "tlsfront[0].certificates: at least one certificate is needed" in err


def test_command_line_broken_certificate(tmp_path, pem, capsys):
    (tmp_path / "k.pem").write_text("nope")
    assert command.run(arguments("--accept", "tcp:1", "--connect", "tcp:h:1", "--cert",
                                 pem["certificate"], "--key", pem["private_key"]),
                       reactor=None) == 1
    assert "k.pem" in capsys.readouterr().err


def test_default_socket_mode_is_private():
    # The endpoint string's mode is octal, as Twisted reads it.
    endpoint = config.load().proxied.listen["pop3"]
    assert int(endpoint.split("mode=")[1].split(":")[0], 8) == stat.S_IRUSR | stat.S_IWUSR


def test_the_commands_log_lines_read_as_twisteds_own():
    """LogLines (the standalone front's observer) writes what textFileLogObserver writes,
    for the relay's pre-formatted line, for an ordinary event and for a failure."""
    import io

    from twisted.logger import Logger, LogPublisher, textFileLogObserver
    from twisted.python.failure import Failure

    ours, twisteds = io.StringIO(), io.StringIO()
    log = Logger(namespace="gateway.tlsfront.relay",
                 observer=LogPublisher(command.LogLines(ours), textFileLogObserver(twisteds)))
    log.info("{line}", line="tlsfront smtps: client=127.0.0.2:40000 outcome=closed",
             front="smtps")
    log.warn("tlsfront {front}: refused: {why}", front="smtps", why="max_connections")
    log.failure("reloading", Failure(ZeroDivisionError("division by zero")))
    assert ours.getvalue() == twisteds.getvalue()
    assert "ZeroDivisionError" in ours.getvalue()
    assert "] tlsfront smtps: client=127.0.0.2:40000 outcome=closed\n" in ours.getvalue()


@pytest.mark.parametrize("connect, expected", [
    ("unix:/run/gw/smtp.sock", (socket.AF_UNIX, "/run/gw/smtp.sock")),
    ("unix:path=/run/gw\\:x.sock:timeout=5", (socket.AF_UNIX, "/run/gw:x.sock")),
    ("tcp:127.0.0.1:2525", (socket.AF_INET, ("127.0.0.1", 2525))),
    ("tcp:host=127.0.0.1:port=2525", (socket.AF_INET, ("127.0.0.1", 2525))),
    ("tcp6:host=\\:\\:1:port=2525", (socket.AF_INET6, ("::1", 2525))),
    ("tcp:localhost:2525", None),  # a name: Twisted's endpoint resolves it
    ("tcp:127.0.0.1:2525:bindAddress=127.0.0.2\\:0", None),  # an option only Twisted knows
    ("unix:/run/gw/smtp.sock:checkPID=1", None),
])
def test_plain_backend_addresses_are_connected_directly(connect, expected):
    from gateway.tlsfront.backend import DirectEndpoint, backend_endpoint, direct_address

    assert direct_address(connect) == expected
    assert isinstance(backend_endpoint(None, connect), DirectEndpoint) == (expected is not None)
