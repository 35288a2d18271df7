"""The gateway's end of the program spawner (deliver/spawnhelper.py).

Used by deliver/program.py: run(job) sends one program delivery to the
helper process and fires with its Outcome; kill(job) has the helper kill
the program's process group (the helper reaps, so it never signals a
process ID that was reused). Why a helper process at all: see
spawnhelper.py's docstring (a spawn from the big gateway process held the
reactor, and cost three extra execs per program).

The helper is started through Twisted's process support when the gateway
starts, while it may still be root (start(), from privilegedStartService:
only root can give programs [program] user), and again after it died. A
helper that must switch users cannot be started again once the gateway
dropped root: its deliveries then wait in the queue (451) until the gateway
is restarted, and are never run as the gateway's user. A death with programs
running fails their deliveries as temporary (451 4.3.0, retried through the
queue) after killing their process groups, so none of them can finish
unrecorded and then run again: each message reaches the program once more at
most as after a timeout. A helper that leaves a kill unanswered for
KILL_GRACE seconds (stopped by a program, which may signal it: see
spawnhelper.py) is killed, and so started again. The same for one that
leaves a ping unanswered: while programs run, the helper is pinged every
ping_interval seconds, and one silent for ping_timeout (a process of the
program user sent it SIGSTOP) is killed, its deliveries retried at once
rather than at [program] timeout.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import defer, error, protocol
from twisted.logger import Logger

log = Logger()

HELPER = Path(__file__).with_name("spawnhelper.py")
HEADER = struct.Struct(">I")
KILL_GRACE = 10.0  # seconds for the helper to report a program it was told to kill
LOST = "killed: the program spawner ended"
UNPRIVILEGED = "not started: the program spawner needs root to start again (restart the gateway)"


@dataclass
class Job:
    """One program run, as deliver/program.py decided it."""

    argv: list[str]
    env: dict[str, str]
    head: bytes
    message_path: str
    output_limit: int
    reply_limit: int
    id: int = 0
    pid: int | None = None  # once the helper started it
    done: defer.Deferred = field(default_factory=defer.Deferred, repr=False)


@dataclass(frozen=True)
class Outcome:
    """How a run ended: exit code or signal, its first output; or why it never started."""

    exit_code: int | None = None
    signal: int | None = None
    output: bytes = b""
    stdout: bytes = b""
    error: str | None = None  # "not started (why)", or LOST


class Spawner:
    """Programs as uid/gid (when the gateway runs as root; None otherwise) in directory."""

    def __init__(self, reactor, uid: int | None, gid: int | None, directory: str,
                 argv: list[str] | None = None, killpg=os.killpg,
                 ping_interval: float = 5.0, ping_timeout: float = 2.0, geteuid=os.geteuid):
        self.reactor = reactor
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self._ping_call = None  # the next ping, or the deadline of the one sent
        self._ping_seq = 0
        # -I: no environment variables nor user site; -S: no site-packages. The
        # helper needs the standard library only, and stays small.
        self.argv = argv or [sys.executable, "-I", "-S", str(HELPER),
                             "-" if uid is None else str(uid),
                             "-" if gid is None else str(gid), directory]
        self.killpg = killpg
        self.uid = uid
        self.geteuid = geteuid
        self._refused = False  # logged once that no helper can be started any more
        self._helper: _HelperProtocol | None = None
        self._jobs: dict[int, Job] = {}
        self._next_id = 0
        self.starts = 0  # helpers started so far (a restart shows here and in the log)

    def run(self, job: Job) -> defer.Deferred:
        """Start job in the helper; fires with its Outcome (never errbacks)."""
        helper = self._ensure()
        if helper is None:
            job.done.callback(Outcome(error=UNPRIVILEGED))
            return job.done
        self._next_id += 1
        job.id = self._next_id
        self._jobs[job.id] = job
        helper.send({"id": job.id, "argv": job.argv, "env": job.env,
                     "head": job.head.decode("latin-1"), "message": job.message_path,
                     "output_limit": job.output_limit, "reply_limit": job.reply_limit})
        if self._ping_call is None:
            self._ping_call = self.reactor.callLater(self.ping_interval, self._ping)
        return job.done

    def _ping(self) -> None:
        """Is the helper alive? Asked only while it holds deliveries."""
        self._ping_call = None
        helper = self._helper
        if helper is None or not self._jobs:
            return
        self._ping_seq += 1
        helper.send({"ping": self._ping_seq})
        self._ping_call = self.reactor.callLater(self.ping_timeout, self._silent, helper)

    def _pong(self, seq: int) -> None:
        if seq != self._ping_seq or self._ping_call is None:
            return  # an answer too late: the helper was given up already
        self._ping_call.cancel()
        self._ping_call = None
        if self._jobs:
            self._ping_call = self.reactor.callLater(self.ping_interval, self._ping)

    def _silent(self, helper: _HelperProtocol) -> None:
        self._ping_call = None
        if helper is self._helper:
            log.warn("program spawner did not answer a ping in {timeout:g}s "
                     "(program.ping_timeout): restarting it", timeout=self.ping_timeout)
            if not self._end(helper):  # continued instead: ask again
                self._ping_call = self.reactor.callLater(self.ping_interval, self._ping)

    def kill(self, job: Job) -> None:
        if job.id in self._jobs and self._helper is not None:
            self._helper.send({"id": job.id, "kill": True})
            self.reactor.callLater(KILL_GRACE, self._unanswered, job, self._helper)

    def _unanswered(self, job: Job, helper: _HelperProtocol) -> None:
        if job.id in self._jobs and helper is self._helper:
            log.warn("program spawner did not kill a program in {grace:g}s: restarting it",
                     grace=KILL_GRACE)
            self._end(helper)

    @staticmethod
    def _end(helper: _HelperProtocol) -> bool:
        """SIGKILL the helper (a stopped one too); processEnded then retries its jobs.

        A gateway that dropped root may not signal a helper started as root, but
        for SIGCONT (same session, kill(2)): a stopped one goes on. False then."""
        try:
            helper.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass  # it ended meanwhile: processEnded comes
        except OSError:
            log.warn("program spawner: not permitted to kill it; continuing it (SIGCONT)")
            try:
                helper.transport.signalProcess("CONT")
            except (OSError, error.ProcessExitedAlready):
                pass
            return False
        return True

    def start(self) -> None:
        """Start the helper now (the gateway calls this while still root)."""
        self._ensure()

    def stop(self) -> None:
        """Close the helper's input: it kills what still runs and exits."""
        if self._helper is not None:
            self._helper.transport.closeStdin()

    def _ensure(self) -> _HelperProtocol | None:
        if self._helper is None:
            if self.uid is not None and self.geteuid() != 0:
                if not self._refused:
                    self._refused = True
                    log.critical("program spawner cannot be started again without root "
                                 "(programs run as uid {uid}): program deliveries wait in "
                                 "the queue until the gateway is restarted", uid=self.uid)
                return None
            self._helper = _HelperProtocol(self)
            self.starts += 1
            # No uid, gid or directory: Twisted uses posix_spawn, once per helper.
            self.reactor.spawnProcess(self._helper, self.argv[0], self.argv, env={},
                                      path=None)
            if self.starts > 1:
                log.warn("program spawner started again (start {n})", n=self.starts)
        return self._helper

    def _reply(self, msg: dict) -> None:
        if "pong" in msg:
            self._pong(msg["pong"])
            return
        job = self._jobs.get(msg["id"])
        if job is None:
            return
        if "pid" in msg:
            job.pid = msg["pid"]
            return
        del self._jobs[job.id]
        if "error" in msg:
            job.done.callback(Outcome(error=msg["error"]))
        else:
            job.done.callback(Outcome(msg["exit"], msg["signal"],
                                      msg["output"].encode("latin-1"),
                                      msg["stdout"].encode("latin-1")))

    def _lost(self, helper: _HelperProtocol, reason) -> None:
        if helper is not self._helper:
            return
        self._helper = None
        if self._ping_call is not None:
            self._ping_call.cancel()
            self._ping_call = None
        jobs, self._jobs = self._jobs, {}
        if jobs:
            log.warn("program spawner ended ({reason}) with {n} programs running: "
                     "killed, to be tried again", reason=reason.getErrorMessage(), n=len(jobs))
        for job in jobs.values():
            if job.pid is not None:
                try:
                    self.killpg(job.pid, signal.SIGKILL)
                except OSError:
                    pass  # it ended meanwhile
            job.done.callback(Outcome(error=LOST))


class _HelperProtocol(protocol.ProcessProtocol):
    """Frames to and from one helper process (see spawnhelper.py's protocol)."""

    def __init__(self, spawner: Spawner):
        self.spawner = spawner
        self.buffer = b""

    def send(self, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.transport.write(HEADER.pack(len(data)) + data)

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buffer)
            end = HEADER.size + size
            if len(self.buffer) < end:
                break
            msg = json.loads(self.buffer[HEADER.size:end])
            self.buffer = self.buffer[end:]
            self.spawner._reply(msg)

    def errReceived(self, data: bytes) -> None:
        log.warn("program spawner: {text}", text=data.decode("utf-8", "replace").rstrip())

    def processEnded(self, reason) -> None:
        self.spawner._lost(self, reason)
