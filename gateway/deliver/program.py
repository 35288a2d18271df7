"""Program recipients: a "program" Route's message on a command's standard input.

Implements IDeliveryTarget for kind "program". resolve/ decided that an alias
names "|command" (only the aliases file can); this runs it the way Postfix's
local(8) does:
  - the command is split like a shell would split it and run without one,
    unless the alias opts in ([aliases] shell: /bin/sh -c);
  - started, fed and reaped by a small helper process (deliver/spawner.py
    starts it through Twisted's process support; deliver/spawnhelper.py says
    why), so the reactor never waits; the message (trace headers first) is
    streamed with back-pressure, so a large message to a slow reader costs a
    buffer, not the message;
  - as [program] user/group when the gateway runs as root, never as root;
    in [program] directory, with a scrubbed environment (Postfix's names);
  - in a session of its own, so the timeout kills the whole process group;
  - exit status per sysexits(3), as Postfix's sys_exits table: 0 delivered,
    EX_TEMPFAIL (75), EX_OSERR (71), a signal or the timeout: back to the
    queue; any other status bounces with the program's first output lines.
A "reply" alias mails the program's standard output back to the sender
(RFC 3834 auto-reply; never to <> nor to automatic mail).
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import shutil

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from gateway.config import ProgramSettings
from gateway.deliver.maildir import check_forwarding_loop, delivery_headers
from gateway.deliver.reply import auto_reply, may_auto_reply
from gateway.deliver.spawner import Job, Spawner
from gateway.envelope import Envelope
from gateway.errors import MailError
from gateway.interfaces import IDeliveryTarget, ISubmit, Route

log = Logger()

# sysexits(3) -> (enhanced status, text, temporary), as Postfix's sys_exits.c.
SYSEXITS = {
    64: ("5.3.0", "command line usage error", False),
    65: ("5.6.0", "data format error", False),
    66: ("5.3.0", "cannot open input", False),
    67: ("5.1.1", "user unknown", False),
    68: ("5.1.2", "host name unknown", False),
    69: ("5.3.0", "service unavailable", False),
    70: ("5.3.0", "internal software error", False),
    71: ("4.3.0", "system resource problem", True),
    72: ("5.3.0", "critical OS file missing", False),
    73: ("5.2.0", "can't create user output file", False),
    74: ("5.3.0", "input/output error", False),
    75: ("4.3.0", "temporary failure", True),
    76: ("5.5.0", "remote error in protocol", False),
    77: ("5.7.0", "permission denied", False),
    78: ("5.3.5", "local configuration error", False),
}


def exit_error(status: int, command: str, output: bytes) -> MailError | None:
    """The MailError for a program's exit status (None: delivered)."""
    if status == 0:
        return None
    enhanced, meaning, temporary = SYSEXITS.get(status, ("5.3.0", "", False))
    text = f"command {command!r} exited with status {status}"
    if meaning:
        text += f" ({meaning})"
    said = _first_lines(output)
    if said:
        text += f": {said}"
    return MailError(451 if temporary else 550, enhanced, text, temporary=temporary)


def _first_lines(output: bytes, lines: int = 5, limit: int = 400) -> str:
    text = output.decode("utf-8", "replace")
    kept = [line.strip() for line in text.splitlines() if line.strip()][:lines]
    return " / ".join(kept)[:limit]


def argv_for(route: Route) -> list[str]:
    """The command's argument vector: /bin/sh -c only for aliases that opt in."""
    if "shell" in route.options:
        return ["/bin/sh", "-c", route.command]
    try:
        argv = shlex.split(route.command)
    except ValueError as e:
        raise MailError(550, "5.3.5", f"command {route.command!r} cannot be split: {e}") from e
    if not argv:
        raise MailError(550, "5.3.5", "empty command")
    return argv


def environment(envelope: Envelope, route: Route, home: str, path: str, user: str
                ) -> dict[str, str]:
    """The scrubbed environment, with Postfix local(8)'s variable names."""
    sender = envelope.sender if route.sender is None else route.sender
    local, _, domain = route.address.rpartition("@")
    return {
        "SENDER": sender,
        "RECIPIENT": route.address,
        "ORIGINAL_RECIPIENT": route.original or route.address,
        "LOCAL": local,
        "EXTENSION": route.extension,
        "DOMAIN": domain,
        "QUEUE_ID": envelope.queue_id,
        "CLIENT_ADDRESS": envelope.client_address,
        "HOME": home,
        "PATH": path,
        "USER": user,
        "LOGNAME": user,
        "SHELL": "/bin/sh",
        "LANG": "C",
    }


@implementer(IDeliveryTarget)
class ProgramDelivery:
    kind = "program"

    def __init__(self, settings: ProgramSettings, hostname: str, reactor,
                 submit: ISubmit | None = None, spawner: Spawner | None = None):
        self.settings = settings
        self.hostname = hostname
        self.reactor = reactor
        self.submit = submit
        # Programs start in a helper process of their own (deliver/spawnhelper.py
        # says why), which the gateway starts on first use and again if it dies.
        self.uid, self.gid, self.home, self.user = _identity(settings)
        self.spawner = spawner or Spawner(reactor, self.uid, self.gid, settings.directory,
                                          ping_interval=settings.ping_interval,
                                          ping_timeout=settings.ping_timeout)
        self.slots = defer.DeferredSemaphore(settings.concurrency)
        # An alias's several programs may start together; slots bounds them anyway.
        self.parallel = settings.concurrency

    def start(self) -> None:
        """Start the program spawner now: called while the gateway may still be root,
        so it can give programs [program] user after the gateway dropped root."""
        self.spawner.start()

    def deliver(self, envelope: Envelope, route: Route, message_path: str,
                recovering: bool) -> defer.Deferred:
        return self.slots.run(self._deliver, envelope, route, message_path)

    @defer.inlineCallbacks
    def _deliver(self, envelope: Envelope, route: Route, message_path: str):
        with open(message_path, "rb") as f:  # the header section, from the page cache
            check_forwarding_loop(f.read(65536), route)
        argv = argv_for(route)
        executable = shutil.which(argv[0], path=self.settings.path)
        if executable is None:
            raise MailError(550, "5.3.0", f"command {argv[0]!r} not found "
                            f"(program.path {self.settings.path})")
        job = Job(argv=[executable, *argv[1:]],
                  env=environment(envelope, route, self.home, self.settings.path, self.user),
                  head=delivery_headers(envelope, route), message_path=message_path,
                  output_limit=self.settings.output_limit,
                  reply_limit=self.settings.reply_limit if "reply" in route.options else 0)
        d = self.spawner.run(job)
        # The helper kills the whole process group (the program is a session leader).
        timer = self.reactor.callLater(self.settings.timeout, self.spawner.kill, job)
        outcome = yield d
        timed_out = not timer.active()
        if timer.active():
            timer.cancel()
        qid = envelope.queue_id
        if timed_out:
            raise MailError(451, "4.3.0", f"command {route.command!r} killed after "
                            f"{self.settings.timeout:g}s (program.timeout)")
        if outcome.error is not None:
            # Not started (like Postfix's EX_OSERR for an exec that failed), or killed
            # with a helper that died: tried again later.
            raise MailError(451, "4.3.0", f"command {route.command!r} {outcome.error}")
        if outcome.exit_code is None:
            raise MailError(451, "4.3.0", f"command {route.command!r} killed by signal "
                            f"{outcome.signal}")
        error = exit_error(outcome.exit_code, route.command, outcome.output)
        if error is not None:
            log.info("{queue_id}: to=<{to}> command {command!r} exited {status}",
                     queue_id=qid, to=route.address, command=route.command,
                     status=outcome.exit_code)
            raise error
        if "reply" in route.options:
            yield self._reply(envelope, route, message_path, outcome.stdout)
        # Said in the runner's status=sent line (as Postfix's "delivered to command:"),
        # not in a line of its own: one log line less per program delivery.
        return f"delivered to command {route.command!r}, exited 0"

    @defer.inlineCallbacks
    def _reply(self, envelope: Envelope, route: Route, message_path: str, output: bytes):
        """Mail the program's output back; the delivery is done whatever happens here."""
        if self.submit is None or not output.strip():
            return
        with open(message_path, "rb") as f:
            head = f.read(65536)
        if not may_auto_reply(envelope.sender, head):
            log.info("{queue_id}: no reply to <{sender}> (null or automatic sender)",
                     queue_id=envelope.queue_id, sender=envelope.sender)
            return
        message = auto_reply(head, replier=route.address, to=envelope.sender, body=output,
                             hostname=self.hostname, now=self.reactor.seconds())
        try:
            qid = yield self.submit.submit("", [envelope.sender], message)
        except Exception:
            log.failure("{queue_id}: could not queue the reply of {to}",
                        queue_id=envelope.queue_id, to=route.address)
            return
        log.info("{queue_id}: reply of <{to}> queued as {reply}", queue_id=envelope.queue_id,
                 to=route.address, reply=qid)


def _identity(settings: ProgramSettings) -> tuple[int | None, int | None, str, str]:
    """(uid, gid, HOME, user name) to run programs as: [program] user when root."""
    if os.getuid() != 0:
        me = pwd.getpwuid(os.getuid())
        return None, None, settings.directory, me.pw_name
    try:
        user = pwd.getpwnam(settings.user)
    except KeyError:
        raise ValueError(f"program.user: no such user {settings.user!r}") from None
    try:
        gid = grp.getgrnam(settings.group).gr_gid
    except KeyError:
        raise ValueError(f"program.group: no such group {settings.group!r}") from None
    if user.pw_uid == 0 or gid == 0:
        raise ValueError("program.user/group: programs never run as root")
    return user.pw_uid, gid, settings.directory, user.pw_name
