"""The outbound relay over scripted SMTP servers on StringTransports, time on task.Clock."""

from __future__ import annotations

import pytest
from smtp_server_script import Script, ScriptedServer
from twisted.internet import defer, error, task

from gateway.config import parse
from gateway.deliver.mx import Host
from gateway.deliver.outbound import ClientProtocol, dot_stuff
from gateway.deliver.relay import RelayTarget
from gateway.durable import run_now
from gateway.envelope import Envelope, Recipient, new_queue_id
from gateway.errors import ConfigError, MailError
from gateway.interfaces import Route
from gateway.resolve.transport import TransportMap

MESSAGE = b"Received: from c.test\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n"
MAIL = f"MAIL FROM:<alice@example.test> SIZE={len(MESSAGE)}"



def result_of(d: defer.Deferred):
    box = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if isinstance(box[0], Exception) or hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


class FakeMX:
    def __init__(self, hosts=(), failure: MailError | None = None):
        self.hosts = list(hosts)
        self.failure = failure
        self.asked: list[str] = []

    def hosts_for_domain(self, domain):
        self.asked.append(domain)
        return defer.fail(self.failure) if self.failure else defer.succeed(self.hosts)

    def hosts_for_name(self, name):
        self.asked.append(f"name:{name}")
        return defer.fail(self.failure) if self.failure else defer.succeed(self.hosts)


class Network:
    """Addresses with a Script accept connections; any other address refuses."""

    def __init__(self, clock, scripts: dict[str, Script]):
        self.clock = clock
        self.scripts = scripts
        self.servers: list[ScriptedServer] = []
        self.connects: list[tuple[str, int]] = []

    def connect(self, address: str, port: int) -> defer.Deferred:
        self.connects.append((address, port))
        if address not in self.scripts:
            return defer.fail(error.ConnectionRefusedError("Connection refused"))
        protocol = ClientProtocol(self.clock, 300, 600)
        server = ScriptedServer(self.scripts[address])
        self.servers.append(server)
        server.connect(protocol)
        return defer.succeed(protocol)


def make_relay(tmp_path, scripts, hosts=None, mx=None, **relay):
    settings = parse({"server": {"domains": ["example.test"]}, "relay": relay}).relay
    clock = task.Clock()
    network = Network(clock, scripts)
    mx = mx or FakeMX(hosts or [Host("mx1.remote.test", ("10.0.0.1",), 10)])
    target = RelayTarget(settings=settings, helo="mx.example.test",
                         transport=TransportMap(settings), mx=mx,
                         tls_options=lambda policy, host: None, reactor=clock,
                         run_blocking=run_now, connect=network.connect)
    path = tmp_path / "msg"
    path.write_bytes(MESSAGE)
    return target, network, clock, str(path)


def envelope(*rcpts: str, sender: str = "alice@example.test") -> Envelope:
    return Envelope(sender=sender, recipients=[Recipient(r) for r in rcpts],
                    queue_id=new_queue_id(1000.0), arrived=1000.0, size=len(MESSAGE))


def routes(*rcpts: str) -> list[Route]:
    return [Route("remote", r, domain=r.split("@")[1]) for r in rcpts]


RCPTS = ("a@remote.test", "b@remote.test", "c@remote.test")


def test_pipelined_transaction_with_per_recipient_results(tmp_path):
    script = Script(rcpt={"b@remote.test": "550 5.1.1 <b@remote.test>: no such user",
                          "c@remote.test": "452 4.2.2 mailbox full"})
    target, net, clock, path = make_relay(tmp_path, {"10.0.0.1": script})
    results = result_of(target.deliver_batch(envelope(*RCPTS), routes(*RCPTS), path, False))
    a, b, c = results
    assert a.error is None and a.remote_mta == "mx1.remote.test"
    assert (b.error.code, b.error.enhanced, b.error.temporary) == (550, "5.1.1", False)
    assert b.error.text == "<b@remote.test>: no such user"
    assert (c.error.code, c.error.temporary) == (452, True)
    server = net.servers[0]
    # RFC 2920: MAIL, every RCPT and DATA in one write.
    assert server.writes[1] == (MAIL.encode() + b"\r\n"
                                b"RCPT TO:<a@remote.test>\r\nRCPT TO:<b@remote.test>\r\n"
                                b"RCPT TO:<c@remote.test>\r\nDATA\r\n")
    assert server.messages == [("alice@example.test", ["a@remote.test"],
                                MESSAGE.replace(b"\r\n.leading", b"\r\n..leading"))]


def test_lockstep_without_pipelining_and_helo_fallback(tmp_path):
    script = Script(extensions=("SIZE",))
    target, net, clock, path = make_relay(tmp_path, {"10.0.0.1": script})
    (result,) = result_of(target.deliver_batch(envelope("a@remote.test"),
                                               routes("a@remote.test"), path, False))
    assert result.error is None
    server = net.servers[0]
    assert [w for w in server.writes[:4]] == [b"EHLO mx.example.test\r\n",
                                              MAIL.encode() + b"\r\n",
                                              b"RCPT TO:<a@remote.test>\r\n", b"DATA\r\n"]


def test_null_sender_and_8bitmime(tmp_path):
    target, net, clock, path = make_relay(tmp_path, {"10.0.0.1": Script()})
    env = envelope("a@remote.test", sender="")
    env.body = "8BITMIME"
    result_of(target.deliver_batch(env, routes("a@remote.test"), path, False))
    assert net.servers[0].commands[1] == f"MAIL FROM:<> SIZE={len(MESSAGE)} BODY=8BITMIME"


def test_mail_from_5xx_fails_every_recipient_permanently(tmp_path):
    script = Script(mail="553 5.7.1 sender rejected")
    target, net, clock, path = make_relay(tmp_path, {"10.0.0.1": script})
    results = result_of(target.deliver_batch(envelope(*RCPTS), routes(*RCPTS), path, False))
    assert [(r.error.code, r.error.temporary) for r in results] == [(553, False)] * 3
    assert net.servers[0].messages == []


def test_connection_drop_during_data_is_temporary(tmp_path):
    target, net, clock, path = make_relay(tmp_path, {"10.0.0.1": Script(drop_at="data")})
    results = result_of(target.deliver_batch(envelope(*RCPTS[:2]), routes(*RCPTS[:2]), path,
                                             False))
    for r in results:
        assert (r.error.code, r.error.enhanced, r.error.temporary) == (451, "4.4.2", True)
        assert "during DATA" in r.error.text


def test_falls_back_to_the_next_mx_when_the_first_refuses(tmp_path):
    hosts = [Host("mx1.remote.test", ("10.0.0.1",), 10), Host("mx2.remote.test", ("10.0.0.2",),
                                                              20)]
    target, net, clock, path = make_relay(tmp_path, {"10.0.0.2": Script()}, hosts=hosts)
    (result,) = result_of(target.deliver_batch(envelope("a@remote.test"),
                                               routes("a@remote.test"), path, False))
    assert result.error is None and result.remote_mta == "mx2.remote.test"
    assert net.connects == [("10.0.0.1", 25), ("10.0.0.2", 25)]


def test_greeting_554_and_mail_4xx_try_the_next_host(tmp_path):
    hosts = [Host("mx1.remote.test", ("10.0.0.1", "10.0.0.3"), 10),
             Host("mx2.remote.test", ("10.0.0.2",), 20)]
    scripts = {"10.0.0.1": Script(greeting="554 5.3.2 no service"),
               "10.0.0.3": Script(mail="421 4.3.2 shutting down"),
               "10.0.0.2": Script()}
    target, net, clock, path = make_relay(tmp_path, scripts, hosts=hosts)
    (result,) = result_of(target.deliver_batch(envelope("a@remote.test"),
                                               routes("a@remote.test"), path, False))
    assert result.error is None and result.remote_mta == "mx2.remote.test"
    assert [a for a, _ in net.connects] == ["10.0.0.1", "10.0.0.3", "10.0.0.2"]


def test_all_hosts_down_is_temporary_and_max_addresses_is_kept(tmp_path):
    hosts = [Host(f"mx{i}.remote.test", (f"10.0.1.{i}",), i) for i in range(8)]
    target, net, clock, path = make_relay(tmp_path, {}, hosts=hosts, max_addresses=3)
    (result,) = result_of(target.deliver_batch(envelope("a@remote.test"),
                                               routes("a@remote.test"), path, False))
    assert (result.error.code, result.error.enhanced, result.error.temporary) == (
        451, "4.4.1", True)
    assert "connect to mx2.remote.test[10.0.1.2]:25" in result.error.text
    assert len(net.connects) == 3


def test_dns_failure_is_every_recipients_result(tmp_path):
    mx = FakeMX(failure=MailError(556, "5.1.10", "null MX"))
    target, net, clock, path = make_relay(tmp_path, {}, mx=mx)
    results = result_of(target.deliver_batch(envelope(*RCPTS), routes(*RCPTS), path, False))
    assert [(r.error.code, r.error.temporary) for r in results] == [(556, False)] * 3
    assert net.connects == []


def test_tls_required_but_not_offered_defers_without_sending(tmp_path):
    target, net, clock, path = make_relay(tmp_path, {"10.0.0.1": Script()},
                                          tls_policy={"remote.test": "verify"})
    (result,) = result_of(target.deliver_batch(envelope("a@remote.test"),
                                               routes("a@remote.test"), path, False))
    assert (result.error.code, result.error.enhanced, result.error.temporary) == (
        451, "4.7.4", True)
    assert not any(c.startswith("MAIL") for c in net.servers[0].commands)


def test_smarthost_starttls_then_auth_plain(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    target, net, clock, path = make_relay(
        tmp_path, {"10.9.9.9": Script(starttls=True)}, hosts=[Host("10.9.9.9", ("10.9.9.9",))],
        smarthost="[10.9.9.9]:587", smarthost_user="gw", smarthost_password_file=str(secret))
    target.password = "s3cret"  # service.py reads it from the file
    asked = []
    target.tls_options = lambda policy, host: asked.append((policy, host)) or "creator"
    (r,) = result_of(target.deliver_batch(envelope("a@remote.test"), routes("a@remote.test"),
                                          path, False))
    assert r.error is None and net.connects == [("10.9.9.9", 587)]
    server = net.servers[0]
    assert server.commands[:4] == ["EHLO mx.example.test", "STARTTLS", "EHLO mx.example.test",
                                   "AUTH PLAIN AGd3AHMzY3JldA=="]  # base64 of \0gw\0s3cret
    assert asked == [("encrypt", "10.9.9.9")] and server.tls_options == ["creator"]


def test_auth_refused_defers(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("x\n")
    target, net, clock, path = make_relay(
        tmp_path, {"10.9.9.9": Script(starttls=True, auth="535 5.7.8 bad credentials")},
        hosts=[Host("10.9.9.9", ("10.9.9.9",))], smarthost="[10.9.9.9]",
        smarthost_user="gw", smarthost_password_file=str(secret))
    (r,) = result_of(target.deliver_batch(envelope("a@remote.test"), routes("a@remote.test"),
                                          path, False))
    assert (r.error.code, r.error.enhanced, r.error.temporary) == (451, "4.7.0", True)
    assert not any(c.startswith("MAIL") for c in net.servers[0].commands)


def test_size_over_the_servers_limit_is_refused_before_mail(tmp_path):
    script = Script(extensions=("PIPELINING", "SIZE 10"))
    target, net, clock, path = make_relay(tmp_path, {"10.0.0.1": script})
    (result,) = result_of(target.deliver_batch(envelope("a@remote.test"),
                                               routes("a@remote.test"), path, False))
    assert (result.error.code, result.error.enhanced, result.error.temporary) == (
        552, "5.3.4", False)
    assert not any(c.startswith("MAIL") for c in net.servers[0].commands)


def test_connection_is_reused_then_closed_after_cache_time(tmp_path):
    script = Script(final=["250 2.0.0 first", "250 2.0.0 second"])
    target, net, clock, path = make_relay(tmp_path, {"10.0.0.1": script},
                                          connection_cache_time=2)
    for rcpt in ("a@remote.test", "b@remote.test"):
        (r,) = result_of(target.deliver_batch(envelope(rcpt), routes(rcpt), path, False))
        assert r.error is None
    assert len(net.connects) == 1
    server = net.servers[0]
    assert [m[1] for m in server.messages] == [["a@remote.test"], ["b@remote.test"]]
    assert "QUIT" not in server.commands
    clock.advance(2)
    assert server.commands[-1] == "QUIT" and server.closed


def test_stale_cached_connection_is_replaced(tmp_path):
    target, net, clock, path = make_relay(tmp_path, {"10.0.0.1": Script()})
    result_of(target.deliver_batch(envelope("a@remote.test"), routes("a@remote.test"), path,
                                   False))
    net.servers[0].drop()  # the server hung up while the connection was idle
    (r,) = result_of(target.deliver_batch(envelope("b@remote.test"), routes("b@remote.test"),
                                          path, False))
    assert r.error is None and len(net.connects) == 2


def test_rset_after_a_transaction_that_did_not_finish(tmp_path):
    script = Script(rcpt={"a@remote.test": "550 5.1.1 no"})
    target, net, clock, path = make_relay(tmp_path, {"10.0.0.1": script})
    result_of(target.deliver_batch(envelope("a@remote.test"), routes("a@remote.test"), path,
                                   False))
    (r,) = result_of(target.deliver_batch(envelope("b@remote.test"), routes("b@remote.test"),
                                          path, False))
    assert r.error is None
    commands = net.servers[0].commands
    assert commands.index("RSET") < commands.index(MAIL, 2)


def test_reply_timeout_aborts_and_defers(tmp_path):
    target, net, clock, path = make_relay(tmp_path, {"10.0.0.1": Script(silent_after_data=True)})
    d = target.deliver_batch(envelope("a@remote.test"), routes("a@remote.test"), path, False)
    box = []
    d.addBoth(box.append)
    clock.advance(599)
    assert box == []
    clock.advance(1)  # data_timeout, RFC 5321 4.5.3.2.6: 10 minutes
    (r,) = box[0]
    assert (r.error.code, r.error.temporary) == (451, True)
    assert "timed out" in r.error.text


def test_destination_concurrency_limits_parallel_transactions(tmp_path):
    script = Script(silent_after_data=True)
    target, net, clock, path = make_relay(tmp_path, {"10.0.0.1": script},
                                          destination_concurrency=1)
    done = []
    for rcpt in ("a@remote.test", "b@remote.test"):
        d = target.deliver_batch(envelope(rcpt), routes(rcpt), path, False)
        d.addCallback(lambda results, rcpt=rcpt: done.append(rcpt))
    assert len(net.connects) == 1  # the second waits for the destination's only slot
    clock.advance(600)
    assert done == ["a@remote.test"] and len(net.connects) == 2
    clock.advance(600)
    assert done == ["a@remote.test", "b@remote.test"]


def test_dot_stuffing():
    assert dot_stuff(b".a\r\n..b\r\nc") == b"..a\r\n...b\r\nc\r\n"


# --- transport map and [relay] settings -------------------------------------------------


def relay_settings(**relay):
    return parse({"server": {"domains": ["example.test"]}, "relay": relay}).relay


def test_transport_map_routes_smarthost_and_tls_policy():
    settings = relay_settings(
        smarthost="[smart.example.net]:587", port=2525, tls="may",
        tls_policy={"secure.test": "verify", ".corp.test": "encrypt"},
        routes={"partner.test": "mx.partner.test", ".corp.test": "[10.1.1.1]:26"})
    t = TransportMap(settings)
    hop = t.next_hop("partner.test")
    assert (hop.host, hop.port, hop.mx, hop.tls) == ("mx.partner.test", 2525, True, "may")
    hop = t.next_hop("a.corp.test")
    assert (hop.host, hop.port, hop.mx, hop.tls) == ("10.1.1.1", 26, False, "encrypt")
    hop = t.next_hop("secure.test")
    assert (hop.host, hop.port, hop.mx, hop.tls) == ("smart.example.net", 587, False, "verify")
    assert TransportMap(relay_settings(port=2525)).next_hop("x.test").mx is True


def test_smarthost_auth_never_without_tls(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    settings = relay_settings(smarthost="[smart.example.net]", tls="may",
                              smarthost_user="gw", smarthost_password_file=str(secret))
    hop = TransportMap(settings).next_hop("anywhere.test")
    assert (hop.auth, hop.tls) == (True, "encrypt")


@pytest.mark.parametrize("relay, key", [
    ({"tls": "sometimes"}, "relay.tls"),
    ({"smarthost": "bad host:x"}, "relay.smarthost"),
    ({"nameservers": ["localhost"]}, "relay.nameservers"),
    ({"smarthost_user": "u"}, "relay.smarthost_password_file"),
    ({"routes": {"a.test": "[x"}}, "relay.routes.a.test"),
    ({"tls_policy": {"a.test": "maybe"}}, "relay.tls_policy.a.test"),
    ({"port": 70000}, "relay.port"),
    ({"concurrency": 0}, "relay.concurrency"),
])
def test_relay_setting_faults_name_the_key(relay, key):
    with pytest.raises(ConfigError) as e:
        parse({"server": {"domains": ["example.test"]}, "relay": relay})
    assert key in [k for _, k, _ in e.value.problems]
