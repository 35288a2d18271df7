"""deliver/program.py without real processes: a fake spawn, task.Clock for the timeout."""

from __future__ import annotations

import os

import pytest
from twisted.internet import defer, error, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.config import ProgramSettings
from gateway.deliver.program import ProgramDelivery, argv_for, exit_error, launcher
from gateway.deliver.reply import may_auto_reply
from gateway.envelope import Envelope, Recipient
from gateway.errors import MailError
from gateway.interfaces import Route


class ProcessTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.stdin_closed = False
        self.signals = []
        self.pid = None

    def closeStdin(self):
        self.stdin_closed = True

    def signalProcess(self, name):
        self.signals.append(name)


class Spawner:
    def __init__(self):
        self.runs = []

    def __call__(self, proto, executable, argv, env, path, uid, gid):
        transport = ProcessTransport()
        self.runs.append({"proto": proto, "argv": argv, "env": env, "path": path,
                          "uid": uid, "gid": gid, "transport": transport})
        proto.makeConnection(transport)
        while transport.producer is not None:  # the file sender, pulled to the end
            transport.producer.resumeProducing()
        return transport


class Submit:
    def __init__(self):
        self.sent = []

    def submit(self, sender, recipients, message):
        self.sent.append((sender, recipients, message))
        return defer.succeed("REPLYQUEUEID0001")


def rig(tmp_path, **settings):
    clock = task.Clock()
    spawner, submit = Spawner(), Submit()
    target = ProgramDelivery(ProgramSettings(**settings), "mx.example.test", clock,
                             submit=submit, spawn=spawner)
    message = tmp_path / "m.msg"
    message.write_bytes(b"Subject: help\r\nMessage-ID: <1@a>\r\n\r\nbody\r\n")
    envelope = Envelope(sender="dave@remote.test", recipients=[Recipient("x@example.test")],
                        queue_id="0000000000QUEUE", client_address="192.0.2.7")
    return target, spawner, submit, clock, envelope, str(message)


def end(run, code=None, signal=None):
    reason = error.ProcessDone(0) if code == 0 else error.ProcessTerminated(code, signal)
    run["proto"].processEnded(Failure(reason))


def route(command="/bin/cat -n", **kw) -> Route:
    return Route(kind="program", address="info+x@example.test", command=command,
                 extension="x", original="info+x@example.test", **kw)


def outcome(d: defer.Deferred):
    results = []
    d.addBoth(results.append)
    assert results, "not finished"
    return results[0]


def test_runs_without_a_shell_with_the_message_and_a_scrubbed_environment(tmp_path):
    target, spawner, _, _, envelope, path = rig(tmp_path)
    d = target.deliver(envelope, route(), path, False)
    (run,) = spawner.runs
    assert run["argv"][-2:] == ["/usr/bin/cat", "-n"] or run["argv"][-2:] == ["/bin/cat", "-n"]
    assert run["transport"].value() == (b"Return-Path: <dave@remote.test>\r\n"
                                        b"Delivered-To: info+x@example.test\r\n"
                                        b"Subject: help\r\nMessage-ID: <1@a>\r\n\r\nbody\r\n")
    assert run["transport"].stdin_closed
    env = run["env"]
    assert env["SENDER"] == "dave@remote.test" and env["EXTENSION"] == "x"
    assert env["LOCAL"] == "info+x" and env["CLIENT_ADDRESS"] == "192.0.2.7"
    assert not set(env) - {"SENDER", "RECIPIENT", "ORIGINAL_RECIPIENT", "LOCAL", "EXTENSION",
                           "DOMAIN", "QUEUE_ID", "CLIENT_ADDRESS", "HOME", "PATH", "USER",
                           "LOGNAME", "SHELL", "LANG"}
    # [program] directory: entered by env -C before the program, or by spawnProcess.
    argv = run["argv"]
    assert run["path"] == "/" if run["path"] else argv[argv.index("-C") + 1] == "/"
    end(run, 0)
    assert outcome(d) is None


def test_shell_only_when_the_alias_opts_in():
    assert argv_for(route("a | b > c", options=("shell",))) == ["/bin/sh", "-c", "a | b > c"]
    assert argv_for(route("prog 'one arg' two")) == ["prog", "one arg", "two"]
    with pytest.raises(MailError) as e:
        argv_for(route("prog 'unclosed"))
    assert e.value.code == 550


@pytest.mark.parametrize("status,code,enhanced", [
    (75, 451, "4.3.0"), (71, 451, "4.3.0"), (1, 550, "5.3.0"), (67, 550, "5.1.1"),
    (77, 550, "5.7.0"), (78, 550, "5.3.5")])
def test_exit_status_per_sysexits(status, code, enhanced):
    e = exit_error(status, "prog", b"first line\n\nsecond line\n")
    assert (e.code, e.enhanced, e.temporary) == (code, enhanced, code == 451)
    assert e.text.endswith(": first line / second line")
    assert exit_error(0, "prog", b"") is None


def test_first_output_kept_for_the_bounce_and_bounded(tmp_path):
    target, spawner, _, _, envelope, path = rig(tmp_path, output_limit=10)
    d = target.deliver(envelope, route(), path, False)
    (run,) = spawner.runs
    run["proto"].childDataReceived(2, b"0123456789 and more that is dropped")
    end(run, 1)
    failure = outcome(d)
    assert failure.value.code == 550 and failure.value.text.endswith(": 0123456789")


def test_timeout_kills_and_retries(tmp_path):
    target, spawner, _, clock, envelope, path = rig(tmp_path, timeout=5)
    target.setsid = None  # no process group: the process itself is signalled
    d = target.deliver(envelope, route(), path, False)
    (run,) = spawner.runs
    run["transport"].pid = os.getpid()  # never signalled for real: signalProcess is fake
    clock.advance(5)
    assert run["transport"].signals == ["KILL"]
    end(run, None, 9)
    failure = outcome(d)
    assert (failure.value.code, failure.value.temporary) == (451, True)
    assert "killed after 5s" in failure.value.text


def test_concurrency_is_capped(tmp_path):
    target, spawner, _, _, envelope, path = rig(tmp_path, concurrency=2)
    ds = [target.deliver(envelope, route(), path, False) for _ in range(3)]
    assert len(spawner.runs) == 2
    end(spawner.runs[0], 0)
    assert len(spawner.runs) == 3
    for run in spawner.runs[1:]:
        end(run, 0)
    assert all(outcome(d) is None for d in ds)


def test_reply_alias_mails_stdout_back_as_an_auto_reply(tmp_path):
    target, spawner, submit, _, envelope, path = rig(tmp_path)
    d = target.deliver(envelope, route(options=("reply",)), path, False)
    (run,) = spawner.runs
    run["proto"].childDataReceived(1, b"Here is the help text.\n")
    run["proto"].childDataReceived(2, b"a warning, not for the reply\n")
    end(run, 0)
    assert outcome(d) is None
    ((sender, rcpts, message),) = submit.sent
    assert (sender, rcpts) == ("", ["dave@remote.test"])
    assert b"Auto-Submitted: auto-replied" in message
    assert b"In-Reply-To: <1@a>" in message and b"Subject: Re: help" in message
    assert b"Here is the help text." in message and b"warning" not in message


@pytest.mark.parametrize("sender,head,allowed", [
    ("dave@remote.test", b"Subject: x\r\n\r\n", True),
    ("", b"Subject: x\r\n\r\n", False),
    ("MAILER-DAEMON@remote.test", b"Subject: x\r\n\r\n", False),
    ("dev-request@remote.test", b"Subject: x\r\n\r\n", False),
    ("dave@remote.test", b"Auto-Submitted: auto-generated\r\n\r\n", False),
    ("dave@remote.test", b"Auto-Submitted: no\r\n\r\n", True),
    ("dave@remote.test", b"Precedence: bulk\r\n\r\n", False),
    ("dave@remote.test", b"List-Id: <dev.example.test>\r\n\r\n", False),
])
def test_auto_replies_follow_rfc_3834(sender, head, allowed):
    assert may_auto_reply(sender, head) is allowed


TOOLS = {"setpriv": "/usr/bin/setpriv", "env": "/usr/bin/env"}


def test_launcher_drops_privileges_and_enters_the_directory_before_the_program():
    # As root: user and group IDs (real, effective, saved), no other groups, the directory.
    assert launcher(65534, 65533, "/srv/progs", "/usr/bin/setsid", which=TOOLS.get) == [
        "/usr/bin/setpriv", "--reuid=65534", "--regid=65533", "--clear-groups",
        "/usr/bin/env", "-C", "/srv/progs"]
    # Not root: nothing to drop.
    assert launcher(None, None, "/srv/progs", "/usr/bin/setsid", which=TOOLS.get) == [
        "/usr/bin/env", "-C", "/srv/progs"]


@pytest.mark.parametrize("missing", ["setpriv", "env", "setsid"])
def test_without_one_of_the_tools_spawnprocess_does_it_all(missing):
    tools = {k: v for k, v in TOOLS.items() if k != missing}
    setsid = None if missing == "setsid" else "/usr/bin/setsid"
    assert launcher(65534, 65533, "/", setsid, which=tools.get) is None


def test_the_launcher_runs_first_and_spawnprocess_gets_no_identity(tmp_path):
    target, spawner, _, _, envelope, path = rig(tmp_path, directory="/srv")
    target.setsid = "/usr/bin/setsid"
    target.launch = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65533", "--clear-groups",
                     "/usr/bin/env", "-C", "/srv"]
    target.deliver(envelope, route("/bin/cat -n"), path, False)
    (run,) = spawner.runs
    assert run["argv"][:8] == [*target.launch, "/usr/bin/setsid"]
    assert run["argv"][9:] == ["-n"] and run["argv"][8].endswith("/cat")
    assert (run["uid"], run["gid"], run["path"]) == (None, None, None)  # posix_spawn's terms


def test_without_a_launcher_spawnprocess_gets_identity_and_directory(tmp_path):
    target, spawner, _, _, envelope, path = rig(tmp_path, directory="/srv")
    target.launch, target.uid, target.gid = None, 65534, 65533
    target.deliver(envelope, route("/bin/cat -n"), path, False)
    (run,) = spawner.runs
    assert (run["uid"], run["gid"], run["path"]) == (65534, 65533, "/srv")
    assert "-C" not in run["argv"]
