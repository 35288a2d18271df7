"""Aliases end to end: SMTP into the real gateway, out to mailboxes, programs and files."""

from __future__ import annotations

import grp
import mailbox
import os
import pwd
import re
import shutil
import signal
import smtplib
import tempfile
import threading
from pathlib import Path

import pytest
from conftest import alive, children, wait_for

USERS = ("alice@example.test", "bob@example.test", "carol@example.test")


@pytest.fixture
def out_dir():
    """A directory the program user ([program] user, nobody under root) can write."""
    path = Path(tempfile.mkdtemp(prefix="mg-alias-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def script(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def aliases_gateway(make_gateway, tmp_path, text: str, extra: str = ""):
    aliases = tmp_path / "aliases"
    aliases.write_text(text)
    gw = make_gateway(f'[aliases]\nfile = "{aliases}"\ncheck_interval = 0.2\n{extra}\n'
                      '[queue]\nretry_initial = 1\nretry_max = 2\n', users=USERS)
    gw.aliases = aliases
    # The runner (in its own process, the default) has read the file: a test that
    # changes it from here on tests the reload, not the runner's start.
    gw.wait_log("queue runner started")
    return gw


def send(gw, to: list[str] | str, body: str = "hello", sender: str = "dave@remote.test",
         subject: str = "test") -> bytes:
    message = (f"From: <{sender}>\r\nTo: <{to if isinstance(to, str) else to[0]}>\r\n"
               f"Subject: {subject}\r\nMessage-ID: <{os.urandom(6).hex()}@remote.test>\r\n"
               f"\r\n{body}\r\n").replace("\r\n", "\n").replace("\n", "\r\n").encode()
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=10) as s:
        s.sendmail(sender, [to] if isinstance(to, str) else to, message)
    return message


def test_alias_fans_out_to_three_mailboxes_and_an_include_list(make_gateway, tmp_path):
    staff = tmp_path / "staff"
    staff.write_text("# one per line\nbob\ncarol@example.test\n")
    gw = aliases_gateway(make_gateway, tmp_path,
                         f"team: alice, bob,\n  carol\nstaff: :include:{staff}\n")
    send(gw, "team@example.test", "to the team")
    for user in USERS:
        (copy,) = gw.wait_messages(user, 1)
        assert b"to the team" in copy
        assert b"Delivered-To: " + user.encode() in copy
    send(gw, "staff@example.test", "to the staff")
    wait_for(lambda: len(gw.messages("bob@example.test")) == 2, what="bob's second")
    wait_for(lambda: len(gw.messages("carol@example.test")) == 2, what="carol's second")
    assert len(gw.messages("alice@example.test")) == 1


def test_remote_alias_target_is_queued_for_relay(make_gateway, tmp_path):
    gw = aliases_gateway(make_gateway, tmp_path, "fwd: alice, someone@remote.example\n")
    send(gw, "fwd@example.test")
    gw.wait_messages("alice@example.test", 1)

    def queued():
        out = gw.cli("queue", "list").stdout
        return "<someone@remote.example>" in out and "pending" in out and out

    out = wait_for(queued, what="remote target in the queue")
    assert "fwd@example.test" in out


def test_program_gets_the_exact_message_and_its_environment(make_gateway, tmp_path, out_dir):
    prog = script(out_dir, "save", f'cat > {out_dir}/stdin\nid -u > {out_dir}/ids\n'
                  f'id -G >> {out_dir}/ids\npwd >> {out_dir}/ids\nenv > {out_dir}/env\n')
    gw = aliases_gateway(make_gateway, tmp_path, f'save: "|{prog}"\n')
    sent = send(gw, "save+tag@example.test", "the body")
    env_file = out_dir / "env"
    wait_for(env_file.exists, what="the program's run")
    wait_for(lambda: not gw.cli("queue", "list").stdout.count("<"), what="queue empty")
    got = (out_dir / "stdin").read_bytes()
    assert got.startswith(b"Return-Path: <dave@remote.test>\r\nDelivered-To: "
                          b"save+tag@example.test\r\nReceived: ")
    assert got.endswith(sent)  # the message as sent, byte for byte, after the trace headers
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert env["SENDER"] == "dave@remote.test"
    assert env["RECIPIENT"] == "save+tag@example.test"
    assert env["ORIGINAL_RECIPIENT"] == "save+tag@example.test"
    assert (env["LOCAL"], env["EXTENSION"], env["DOMAIN"]) == ("save+tag", "tag", "example.test")
    assert env["CLIENT_ADDRESS"] == "127.0.0.1"
    assert len(env["QUEUE_ID"]) >= 12 and env["PATH"].startswith("/usr/local/bin")
    assert "PYTHONPATH" not in env and "VIRTUAL_ENV" not in env  # scrubbed
    uid, groups, cwd = (out_dir / "ids").read_text().splitlines()
    assert cwd == "/"  # [program] directory
    if os.getuid() == 0:  # [program] user and group, no other group, never root
        assert env["USER"] == "nobody"
        assert int(uid) == pwd.getpwnam("nobody").pw_uid
        assert groups.split() == [str(grp.getgrnam("nogroup").gr_gid)]


def test_exit_75_is_retried_then_delivered_once(make_gateway, tmp_path, out_dir):
    prog = script(out_dir, "flaky",
                  f'if [ ! -e {out_dir}/tried ]; then touch {out_dir}/tried; exit 75; fi\n'
                  f'cat >> {out_dir}/delivered\n')
    gw = aliases_gateway(make_gateway, tmp_path, f'flaky: "|{prog}"\n')
    send(gw, "flaky@example.test", "once only")
    wait_for(lambda: (out_dir / "delivered").exists(), what="the retry")
    wait_for(lambda: "queue is empty" in gw.cli("queue", "list").stdout, what="queue empty")
    assert (out_dir / "delivered").read_bytes().count(b"once only") == 1
    gw.wait_log("exited 75")


def test_exit_1_bounces_with_the_programs_words(make_gateway, tmp_path, out_dir):
    prog = script(out_dir, "refuse", 'echo "no such ticket queue: frobnicate" >&2\nexit 1\n')
    gw = aliases_gateway(make_gateway, tmp_path, f'tickets: "|{prog}"\n')
    send(gw, "tickets@example.test", sender="alice@example.test")
    (dsn,) = gw.wait_messages("alice@example.test", 1)
    assert b"Undelivered Mail Returned to Sender" in dsn
    assert b"no such ticket queue: frobnicate" in dsn
    assert b"Final-Recipient: rfc822; tickets@example.test" in dsn
    assert b"Status: 5.3.0" in dsn


def test_hanging_program_is_killed_at_the_timeout_and_retried(make_gateway, tmp_path, out_dir):
    prog = script(out_dir, "hang",
                  f'if [ ! -e {out_dir}/hung ]; then touch {out_dir}/hung; '
                  f'sleep 300 & echo $! > {out_dir}/child; wait; fi\n'
                  f'cat > /dev/null; touch {out_dir}/done\n')
    gw = aliases_gateway(make_gateway, tmp_path, f'hang: "|{prog}"\n',
                         "[program]\ntimeout = 1\n")
    send(gw, "hang@example.test")
    wait_for(lambda: (out_dir / "done").exists(), what="the second run")
    child = int((out_dir / "child").read_text())
    # The whole process group was killed, the program's own children too.
    wait_for(lambda: not alive(child), what="the sleeping child killed")
    gw.wait_log("killed after 1s")


def read_mbox(path: Path) -> list:
    box = mailbox.mbox(str(path), create=False)
    try:
        return list(box)
    finally:
        box.close()


def test_alias_loop_bounces_once_with_a_loop_diagnostic(make_gateway, tmp_path):
    gw = aliases_gateway(make_gateway, tmp_path, "a: b\nb: a\n")
    send(gw, "a@example.test", sender="alice@example.test")
    (dsn,) = gw.wait_messages("alice@example.test", 1)
    assert b"alias loop: a -> b -> a" in dsn
    wait_for(lambda: "queue is empty" in gw.cli("queue", "list").stdout, what="queue empty")
    assert len(gw.messages("alice@example.test")) == 1


def test_broken_file_at_reload_keeps_the_old_table(make_gateway, tmp_path):
    gw = aliases_gateway(make_gateway, tmp_path, "team: alice\n")
    gw.aliases.write_text("team: bob\nbroken line\n")
    os.kill(gw.proc.pid, signal.SIGHUP)
    wait_for(lambda: "aliases not reloaded" in gw.log_text(), what="the refusal in the log")
    gw.wait_log(f"{gw.aliases}:2: expected")
    send(gw, "team@example.test")
    gw.wait_messages("alice@example.test", 1)
    assert gw.messages("bob@example.test") == []
    gw.aliases.write_text("team: bob\nnew: carol\n")  # a good file is picked up by itself
    # Each process that routes (the listeners', the runner's) logs its own reload.
    reloads = 2 if gw.runner_pid() else 1
    wait_for(lambda: gw.log_text().count("aliases reloaded (changed): 2 names") >= reloads,
             what="the reload in every process")
    send(gw, "new@example.test")
    gw.wait_messages("carol@example.test", 1)


def test_mbox_stays_well_formed_under_concurrent_deliveries(make_gateway, tmp_path):
    box = tmp_path / "archive.mbox"
    gw = aliases_gateway(make_gateway, tmp_path, f"archive: {box}\n")
    bodies = [f"From the start, message {i}\nFrom here\n>From quoted" for i in range(12)]
    threads = [threading.Thread(target=send, args=(gw, "archive@example.test", b))
               for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: box.exists() and len(read_mbox(box)) == 12, what="12 messages")
    messages = read_mbox(box)
    got = sorted(m.get_payload().rstrip("\n") for m in messages)
    # mboxrd: every ">*From " line got one more ">" (Python's reader keeps them).
    assert got == sorted(re.sub(r"^(>*From )", r">\1", b, flags=re.M) for b in bodies)
    assert all(m["Delivered-To"] == "archive@example.test" for m in messages)
    # The last writer removes its dot-lock just after its message is readable.
    wait_for(lambda: not Path(f"{box}.lock").exists(), what="the dot-lock released")


def test_subaddress_lands_in_the_folder_when_it_exists(make_gateway, tmp_path):
    gw = aliases_gateway(make_gateway, tmp_path, "")
    folder = gw.maildir("alice@example.test") / ".lists"
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True)
    send(gw, "alice+lists@example.test", "filed")
    wait_for(lambda: list((folder / "new").iterdir()), what="the message in .lists")
    send(gw, "alice+nofolder@example.test", "to the inbox")
    gw.wait_messages("alice@example.test", 1)
    assert not (gw.maildir("alice@example.test") / ".nofolder").exists()


@pytest.mark.parametrize("rcpt", [
    '"|/bin/sh -c touch${IFS}TMP/pwned"@example.test', "/etc/passwd@example.test",
    '"TMP/x"@example.test', '"../../x"@example.test', "alice+../../../tmp@example.test",
    '":include:/etc/passwd"@example.test', '"|cat"@example.test'])
def test_rcpt_cannot_smuggle_a_command_or_a_path(make_gateway, tmp_path, rcpt):
    # Paths in this test's own folder: a /tmp/x made by anything else proves nothing.
    target = tmp_path / "target"
    target.mkdir()
    rcpt = rcpt.replace("TMP", str(target))
    gw = aliases_gateway(make_gateway, tmp_path, "")
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=10) as s:
        s.ehlo("client.test")
        s.mail("dave@remote.test")
        code, text = s.rcpt(rcpt)
        if code == 250:  # only a subaddress of a real user may pass: to its INBOX
            s.data(b"Subject: x\r\n\r\nx\r\n")
            gw.wait_messages("alice@example.test", 1)
    assert code in (250, 550, 553, 501), (code, text)
    if code == 250:
        assert rcpt.startswith("alice+")
    assert list(target.iterdir()) == []


def test_alias_show_and_check_config_report(make_gateway, tmp_path, out_dir):
    gw = aliases_gateway(make_gateway, tmp_path,
                         "team: alice, \\bob, x@remote.example, \"|/bin/cat\", /tmp/t.mbox\n"
                         "owner-team: alice\n")
    out = gw.cli("alias", "show", "team@example.test", "alice+x@example.test",
                 "nobody@example.test")
    assert out.stdout.splitlines() == [
        "team@example.test:",
        "  local <alice@example.test> (owner sender <owner-team@example.test>)",
        "  local <bob@example.test> (owner sender <owner-team@example.test>)",
        "  remote <x@remote.example> (owner sender <owner-team@example.test>)",
        '  program "|/bin/cat" (owner sender <owner-team@example.test>)',
        "  file /tmp/t.mbox (owner sender <owner-team@example.test>)",
        "alice+x@example.test:",
        "  local <alice@example.test> (folder x if it exists)",
        "nobody@example.test: 550 5.1.1 <nobody@example.test>: Recipient address rejected: "
        "User unknown in local recipient table"]
    assert out.returncode == 1
    gw.aliases.write_text("team alice\nx: \"|\"\n")
    check = gw.cli("check-config")
    assert check.returncode == 1
    assert check.stderr.splitlines() == [
        f"{gw.aliases}:1: expected \"name: target, ...\", not 'team alice'",
        f"{gw.aliases}:2: empty command after |",
        f"{gw.aliases}:2: alias 'x' has no usable target"]


def test_shipped_responder_replies_to_the_sender_but_never_to_automatic_mail(
        make_gateway, tmp_path, out_dir):
    prog = out_dir / "info-responder"
    shutil.copy(Path(__file__).parents[2] / "etc" / "info-responder", prog)
    prog.chmod(0o755)
    gw = aliases_gateway(make_gateway, tmp_path, f'info: "|{prog}"\n',
                         'reply = ["info"]\n')  # inside [aliases]
    send(gw, "info@example.test", sender="alice@example.test", subject="help")
    (reply,) = gw.wait_messages("alice@example.test", 1)
    assert b"Auto-Submitted: auto-replied" in reply and b"Subject: Re: help" in reply
    assert b"Return-Path: <>" in reply
    assert b"Send a message to info@example.test" in reply
    # An automatic message (here: the null sender) gets no answer.
    send(gw, "info@example.test", sender="", subject="help")
    wait_for(lambda: gw.log_text().count("exited 0") == 2, what="the second run")
    wait_for(lambda: "queue is empty" in gw.cli("queue", "list").stdout, what="queue empty")
    assert len(gw.messages("alice@example.test")) == 1


def test_a_program_that_reads_nothing_of_a_large_message_is_still_delivered(
        make_gateway, tmp_path, out_dir):
    prog = script(out_dir, "ignore", f"touch {out_dir}/ran\n")  # never reads its input
    gw = aliases_gateway(make_gateway, tmp_path, f'ignore: "|{prog}"\n')
    send(gw, "ignore@example.test", ("x" * 998 + "\r\n") * 3000)  # 3 MB: more than a pipe holds
    wait_for(lambda: (out_dir / "ran").exists(), what="the run")
    wait_for(lambda: "queue is empty" in gw.cli("queue", "list").stdout, what="queue empty")
    gw.wait_log("exited 0")


def _spawners(gw) -> list[int]:
    """The gateway's program spawner processes (deliver/spawnhelper.py), by /proc: children
    of the process that delivers (the runner process, gateway/runnerproc)."""
    return children(gw.delivery_pid(), b"spawnhelper.py")


def test_a_killed_spawner_is_started_again_and_each_message_delivered_once(
        make_gateway, tmp_path, out_dir):
    prog = script(out_dir, "append", f"cat >> {out_dir}/got\n")
    gw = aliases_gateway(make_gateway, tmp_path, f'append: "|{prog}"\n')
    got = out_dir / "got"
    send(gw, "append@example.test", "first message")
    wait_for(lambda: got.exists() and b"first message" in got.read_bytes(), what="first run")
    (spawner,) = wait_for(lambda: _spawners(gw), what="the spawner")
    os.kill(spawner, signal.SIGKILL)
    send(gw, "append@example.test", "second message")
    wait_for(lambda: b"second message" in got.read_bytes(), what="the run after the kill")
    wait_for(lambda: "queue is empty" in gw.cli("queue", "list").stdout, what="queue empty")
    text = got.read_bytes()
    assert text.count(b"first message") == 1 and text.count(b"second message") == 1
    assert _spawners(gw) not in ([], [spawner])  # a new one serves
    gw.wait_log("program spawner started again")


def test_a_stopped_spawner_is_restarted_well_before_the_timeout(make_gateway, tmp_path, out_dir):
    # A process of the program user may SIGSTOP the spawner (its real uid is theirs):
    # an unanswered ping restarts it, and the delivery is retried long before the
    # [program] timeout of 120 s would have ended it.
    prog = script(out_dir, "append", f"cat >> {out_dir}/got\n")
    gw = aliases_gateway(make_gateway, tmp_path, f'append: "|{prog}"\n',
                         "[program]\ntimeout = 120\nping_interval = 0.5\nping_timeout = 0.5\n")
    got = out_dir / "got"
    send(gw, "append@example.test", "first message")
    wait_for(lambda: got.exists() and b"first message" in got.read_bytes(), what="first run")
    (spawner,) = wait_for(lambda: _spawners(gw), what="the spawner")
    os.kill(spawner, signal.SIGSTOP)
    try:
        send(gw, "append@example.test", "second message")
        wait_for(lambda: b"second message" in got.read_bytes(), what="the run after the stop")
    finally:
        try:
            os.kill(spawner, signal.SIGCONT)
        except ProcessLookupError:
            pass
    wait_for(lambda: "queue is empty" in gw.cli("queue", "list").stdout, what="queue empty")
    assert got.read_bytes().count(b"second message") == 1
    gw.wait_log("did not answer a ping")
