"""Faults at start are one line naming the setting or file (gateway/listeners.py,
gateway/startup.py), found by check-config too."""

import errno

import pytest
import trustme
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from gateway import cli, config, startup
from gateway.errors import StartupError
from gateway.listeners import Listener, cannot_listen


class BusyReactor(MemoryReactor):
    """Every TCP port is taken; unix sockets are not allowed."""

    def listenTCP(self, port, factory, backlog=50, interface=""):
        raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "in use"))

    def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0):
        raise CannotListenError(None, address, OSError(errno.EACCES, "Permission denied"))


def test_a_port_in_use_names_the_listener_and_its_setting():
    listener = Listener("listen.smtp", "tcp:2525:interface=127.0.0.1", Factory(), BusyReactor())
    with pytest.raises(StartupError) as e:
        listener.privilegedStartService()
    assert str(e.value) == "listen.smtp: 127.0.0.1:2525 is in use"


def test_a_unix_socket_that_cannot_be_made_names_its_path():
    listener = Listener("proxied.submission", "unix:/run/x/submission.sock", Factory(),
                        BusyReactor())
    with pytest.raises(StartupError) as e:
        listener.privilegedStartService()
    assert str(e.value) == "proxied.submission: /run/x/submission.sock: Permission denied"


def test_a_privileged_port_says_how_to_get_it():
    text = cannot_listen("listen.smtp", "tcp:25",
                         CannotListenError("", 25, OSError(errno.EACCES, "Permission denied")))
    assert text.startswith("listen.smtp: *:25: permission denied")
    assert "[server] user" in text


def test_a_listener_that_binds_is_listening():
    reactor = MemoryReactor()
    Listener("listen.smtp", "tcp:2525:interface=127.0.0.1", Factory(),
             reactor).privilegedStartService()
    assert reactor.tcpServers[0][0] == 2525


def write_pair(tmp_path, ca, name):
    cert = ca.issue_cert("mx.example.test")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))


def test_a_key_that_is_not_the_certificates_is_found_by_check_config(tmp_path, capsys):
    ca = trustme.CA()
    write_pair(tmp_path, ca, "a")
    write_pair(tmp_path, ca, "b")
    conf = tmp_path / "c.toml"
    conf.write_text(f'[server]\ndomains = ["example.test"]\nstate_dir = "{tmp_path}/state"\n'
                    f'[tls]\ncertificate = "{tmp_path}/a.pem"\n'
                    f'private_key = "{tmp_path}/b.key"\n')
    assert cli.main(["check-config", str(conf)]) == 1
    err = capsys.readouterr().err
    assert f"{conf}: tls: {tmp_path}/b.key: not the private key of {tmp_path}/a.pem" in err
    assert "Traceback" not in err


def test_a_good_configuration_has_no_startup_faults(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text(f'[server]\ndomains = ["example.test"]\nstate_dir = "{tmp_path}/state"\n')
    assert startup.check(config.load(conf)) == []


def test_a_state_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "state").write_text("")
    conf = tmp_path / "c.toml"
    conf.write_text(f'[server]\ndomains = ["example.test"]\nstate_dir = "{tmp_path}/state"\n')
    assert startup.check(config.load(conf)) == [
        f"{conf}: server.state_dir: {tmp_path}/state: not a directory"]
