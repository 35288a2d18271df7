"""deliver/program.py without real processes: a fake spawner, task.Clock for the timeout.

What the helper process does with a Job (feeding, limits, kills) is tested in
test_spawnhelper.py, and end to end in tests/integration/test_aliases_flow.py.
"""

from __future__ import annotations

import grp
import os
import pwd

import pytest
from twisted.internet import defer, task

from gateway.config import ProgramSettings
from gateway.deliver.program import ProgramDelivery, argv_for, exit_error
from gateway.deliver.reply import may_auto_reply
from gateway.deliver.spawner import Outcome
from gateway.envelope import Envelope, Recipient
from gateway.errors import MailError
from gateway.interfaces import Route


class FakeSpawner:
    """Records each Job as deliver/spawner.Spawner would get it; a test ends it."""

    def __init__(self):
        self.jobs = []
        self.killed = []

    def run(self, job):
        self.jobs.append(job)
        return job.done

    def kill(self, job):
        self.killed.append(job)


class Submit:
    def __init__(self):
        self.sent = []

    def submit(self, sender, recipients, message):
        self.sent.append((sender, recipients, message))
        return defer.succeed("REPLYQUEUEID0001")


def rig(tmp_path, **settings):
    clock = task.Clock()
    spawner, submit = FakeSpawner(), Submit()
    target = ProgramDelivery(ProgramSettings(**settings), "mx.example.test", clock,
                             submit=submit, spawner=spawner)
    message = tmp_path / "m.msg"
    message.write_bytes(b"Subject: help\r\nMessage-ID: <1@a>\r\n\r\nbody\r\n")
    envelope = Envelope(sender="dave@remote.test", recipients=[Recipient("x@example.test")],
                        queue_id="0000000000QUEUE", client_address="192.0.2.7")
    return target, spawner, submit, clock, envelope, str(message)


def end(job, code=None, signal=None, output=b"", stdout=b"", error=None):
    job.done.callback(Outcome(code, signal, output, stdout, error))


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
    (job,) = spawner.jobs
    assert job.argv in (["/usr/bin/cat", "-n"], ["/bin/cat", "-n"])  # no shell, no launcher
    # Standard input: the trace head, then the spool's message file.
    assert job.head == (b"Return-Path: <dave@remote.test>\r\n"
                        b"Delivered-To: info+x@example.test\r\n")
    assert job.message_path == path
    env = job.env
    assert env["SENDER"] == "dave@remote.test" and env["EXTENSION"] == "x"
    assert env["LOCAL"] == "info+x" and env["CLIENT_ADDRESS"] == "192.0.2.7"
    assert not set(env) - {"SENDER", "RECIPIENT", "ORIGINAL_RECIPIENT", "LOCAL", "EXTENSION",
                           "DOMAIN", "QUEUE_ID", "CLIENT_ADDRESS", "HOME", "PATH", "USER",
                           "LOGNAME", "SHELL", "LANG"}
    assert job.reply_limit == 0  # not a reply alias: its stdout is not kept
    end(job, 0)
    # Delivered: said in the runner's status=sent line, not in a line of its own.
    assert outcome(d) == "delivered to command '/bin/cat -n', exited 0"


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


def test_output_limit_goes_to_the_helper_and_the_output_to_the_bounce(tmp_path):
    target, spawner, _, _, envelope, path = rig(tmp_path, output_limit=10)
    d = target.deliver(envelope, route(), path, False)
    (job,) = spawner.jobs
    assert job.output_limit == 10
    end(job, 1, output=b"0123456789")
    failure = outcome(d)
    assert failure.value.code == 550 and failure.value.text.endswith(": 0123456789")


def test_timeout_kills_and_retries(tmp_path):
    target, spawner, _, clock, envelope, path = rig(tmp_path, timeout=5)
    d = target.deliver(envelope, route(), path, False)
    (job,) = spawner.jobs
    clock.advance(4.9)
    assert spawner.killed == []
    clock.advance(0.1)
    assert spawner.killed == [job]  # the helper kills its process group
    end(job, None, 9)
    failure = outcome(d)
    assert (failure.value.code, failure.value.temporary) == (451, True)
    assert "killed after 5s" in failure.value.text


def test_a_program_that_could_not_start_is_tried_again(tmp_path):
    target, spawner, _, clock, envelope, path = rig(tmp_path)
    d = target.deliver(envelope, route(), path, False)
    end(spawner.jobs[0], error="not started (PermissionError: [Errno 13] Permission denied)")
    failure = outcome(d)
    assert (failure.value.code, failure.value.temporary) == (451, True)
    assert failure.value.text == ("command '/bin/cat -n' not started (PermissionError: "
                                  "[Errno 13] Permission denied)")
    assert not clock.getDelayedCalls()  # the timeout is cancelled


def test_concurrency_is_capped(tmp_path):
    target, spawner, _, _, envelope, path = rig(tmp_path, concurrency=2)
    ds = [target.deliver(envelope, route(), path, False) for _ in range(3)]
    assert len(spawner.jobs) == 2
    end(spawner.jobs[0], 0)
    assert len(spawner.jobs) == 3
    for job in spawner.jobs[1:]:
        end(job, 0)
    assert all(outcome(d).endswith("exited 0") for d in ds)


def test_reply_alias_mails_stdout_back_as_an_auto_reply(tmp_path):
    target, spawner, submit, _, envelope, path = rig(tmp_path)
    d = target.deliver(envelope, route(options=("reply",)), path, False)
    (job,) = spawner.jobs
    assert job.reply_limit == 65536  # [program] reply_limit: stdout alone is kept
    end(job, 0, output=b"Here is the help text.\na warning, not for the reply\n",
        stdout=b"Here is the help text.\n")
    assert outcome(d).endswith("exited 0")
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


def test_the_spawner_gets_the_program_identity_and_directory(tmp_path):
    target = ProgramDelivery(ProgramSettings(directory="/srv"), "mx.example.test", task.Clock())
    uid, gid, directory = target.spawner.argv[-3:]
    assert directory == "/srv"
    if os.geteuid() == 0:  # [program] user and group, never root
        assert (int(uid), int(gid)) == (pwd.getpwnam("nobody").pw_uid,
                                        grp.getgrnam("nogroup").gr_gid)
    else:  # nothing to change: programs run as the gateway's user
        assert (uid, gid) == ("-", "-")
