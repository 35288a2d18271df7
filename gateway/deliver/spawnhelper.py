"""The program spawner: a small process that starts, feeds and reaps program recipients.

Runs as a script (`python -I -S spawnhelper.py UID GID DIRECTORY`), started
and restarted by deliver/spawner.py in the gateway, which sends it one
request per program delivery (deliver/program.py decided the command and
environment). It imports nothing but the standard library, so it stays a
few MB.

Why a process of its own (bench/RESULTS.md, issue 9): a program started
from the gateway cost the reactor a posix_spawn of a 60-100 MB process (the
reactor waits until the vfork child has exec'd, ~4 ms wall on a loaded
machine), a scan of every open descriptor, three extra execs (setpriv, env
-C, setsid: posix_spawn cannot change user, directory or session) and the
pipe work of each run. Here a posix_spawn of this small process starts the
program directly; feeding the message and collecting the output happen on
the other core. The gateway sends one request and reads two replies per
program (Postfix's local(8) is likewise a small process of its own that
forks the command).

How a program gets its identity without a fork per program (a fork of even
this process cost 0.3-0.75 ms of system time; a posix_spawn, which vforks,
0.03 ms): run as root, this process takes its identity once at start
(take_identity): no supplementary groups, real group ID [program] group's,
every user ID and the effective and saved group IDs still root (to open
the spool's message files and to kill programs). For each program it sets
its real user ID to [program] user's only around the posix_spawn call
(Run.__init__): POSIX_SPAWN_RESETIDS then sets the child's effective IDs
to those real ones before the exec, and the exec makes the saved ones
alike, so the program runs with all of its user and group IDs
[program]'s, no other group and no capability (Linux clears them when no
user ID is 0). Outside that call no user ID of this process is the
program user's, so a program cannot signal it (kill(2) compares user IDs
only); one that stops or kills it inside that window is dealt with by the
gateway (deliver/spawner.py: an unanswered ping or kill restarts the
helper; a stopped one it cannot kill any more is continued). The
directory is entered once, here, and inherited.

Each program, as Postfix's local(8) runs it: no shell (argv as given), the
environment as given (nothing inherited), a new session (so a kill reaches
its whole process group), as the given user and group with no other groups
when this runs as root (and never as root), standard input the trace head
then the message file, streamed (a chunk is read from the file only when
the pipe has room: a 30 MB message to a slow reader costs a chunk), the
first output_limit bytes of stdout and stderr together kept, and the first
reply_limit bytes of stdout alone.

Protocol, on this process's standard input and output: frames of a 4-byte
big-endian length and a JSON object; bytes travel as latin-1 strings.
  request  {"id", "argv", "env", "head", "message", "output_limit",
            "reply_limit"}                       start a program
           {"id", "kill": true}                  SIGKILL its process group
           {"ping": n}                           are you alive? (deliver/spawner.py)
  replies  {"id", "pid"}                         started
           {"id", "error"}                       could not start (nothing ran)
           {"id", "exit", "signal", "output", "stdout"}   ended, all output read
           {"pong": n}                           alive
End of input (the gateway stopped or died): every running program's process
group is killed (its delivery cannot be recorded, so it will be tried again;
left running, it would be run twice), then this process exits.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import struct
import sys

CHUNK = 65536
HEADER = struct.Struct(">I")


def frame(obj: dict) -> bytes:
    data = json.dumps(obj).encode()
    return HEADER.pack(len(data)) + data


class Run:
    """One program: its pipes, what is left to feed, what it said, its status."""

    def __init__(self, helper: Helper, req: dict):
        self.helper = helper
        self.id = req["id"]
        self.output_limit = int(req["output_limit"])
        self.reply_limit = int(req["reply_limit"])
        self.output = bytearray()
        self.stdout = bytearray()
        self.pending = req["head"].encode("latin-1")
        self.status: int | None = None
        self.open_outputs = 2
        self.message = os.open(req["message"], os.O_RDONLY | os.O_CLOEXEC)
        fds: list[int] = []
        try:
            in_r, self.stdin = _pipe(fds)
            self.out, out_w = _pipe(fds)
            self.err, err_w = _pipe(fds)
            argv = req["argv"]
            if helper.run_as is not None:  # the program's real uid, for RESETIDS only
                os.setresuid(helper.run_as, -1, -1)
            try:
                # Every descriptor of this process but 0-2 is close-on-exec (PEP 446, and
                # pipe2 here): the program gets its three pipes and nothing else.
                self.pid = os.posix_spawn(
                    argv[0], argv, req["env"],
                    file_actions=[(os.POSIX_SPAWN_DUP2, in_r, 0),
                                  (os.POSIX_SPAWN_DUP2, out_w, 1),
                                  (os.POSIX_SPAWN_DUP2, err_w, 2)],
                    setsid=True, resetids=True, setsigmask=(), setsigdef=helper.ignored)
            finally:
                if helper.run_as is not None:  # root again: no program may signal us
                    os.setresuid(0, -1, -1)
        except BaseException:
            for fd in (*fds, self.message):
                os.close(fd)
            raise
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        for fd in (self.stdin, self.out, self.err):
            os.set_blocking(fd, False)
        sel = helper.selector
        sel.register(self.stdin, selectors.EVENT_WRITE, self.feed)
        sel.register(self.out, selectors.EVENT_READ, self.read_stdout)
        sel.register(self.err, selectors.EVENT_READ, self.read_stderr)

    def feed(self) -> None:
        """The pipe has room: write what is pending, read the next chunk only when empty."""
        try:
            if not self.pending:
                self.pending = os.read(self.message, CHUNK)
                if not self.pending:
                    self.close_stdin()
                    return
            written = os.write(self.stdin, self.pending)
            self.pending = self.pending[written:]
        except BlockingIOError:
            pass
        except OSError:  # EPIPE: it stopped reading; its exit status decides
            self.close_stdin()

    def close_stdin(self) -> None:
        if self.stdin >= 0:
            self.helper.selector.unregister(self.stdin)
            os.close(self.stdin)
            os.close(self.message)
            self.stdin = self.message = -1

    def read_stdout(self) -> None:
        data = self._read(self.out)
        room = self.reply_limit - len(self.stdout)
        if room > 0:
            self.stdout += data[:room]

    def read_stderr(self) -> None:
        self._read(self.err)

    def _read(self, fd: int) -> bytes:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return b""
        if not data:
            self.helper.selector.unregister(fd)
            os.close(fd)
            self.open_outputs -= 1
            self.maybe_done()
            return b""
        room = self.output_limit - len(self.output)
        if room > 0:
            self.output += data[:room]
        return data

    def ended(self, status: int) -> None:
        self.status = status
        self.close_stdin()
        self.maybe_done()

    def maybe_done(self) -> None:
        # As Twisted's processEnded: the status known and every output read to its end.
        if self.status is None or self.open_outputs:
            return
        code = os.waitstatus_to_exitcode(self.status)
        self.helper.reply({"id": self.id, "exit": code if code >= 0 else None,
                           "signal": -code if code < 0 else None,
                           "output": self.output.decode("latin-1"),
                           "stdout": self.stdout.decode("latin-1")})
        del self.helper.runs[self.id]

    def kill(self) -> None:
        if self.status is None:  # not reaped yet: the group is still this program's
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _pipe(fds: list[int]) -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    fds += (r, w)
    return r, w


class Helper:
    def __init__(self, requests: int = 0, replies: int = 1, run_as: int | None = None):
        self.requests, self.replies = requests, replies
        self.run_as = run_as  # [program] user's uid, as root; None: programs run as we do
        self.selector = selectors.DefaultSelector()
        self.runs: dict[int, Run] = {}
        self.by_pid: dict[int, Run] = {}
        self.buffer = b""
        self.open = True
        # SIGCHLD wakes the loop through a pipe; the handler itself does nothing.
        # Handlers (not SIG_IGN) return to their default in the exec'd programs.
        self.wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGCHLD, signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
            # SIGINT/TERM/HUP of the terminal or the service manager are the
            # gateway's to act on; this process ends when its input does.
            signal.signal(signum, _nothing)
        self.selector.register(self.wake_r, selectors.EVENT_READ, self.reap)
        # Signals ignored here (SIGPIPE, by Python) are not ignored in the programs.
        self.ignored = [s for s in signal.valid_signals()
                        if signal.getsignal(s) == signal.SIG_IGN]
        os.set_blocking(requests, False)
        self.selector.register(requests, selectors.EVENT_READ, self.read_requests)

    def loop(self) -> None:
        while self.open:
            for key, _ in self.selector.select():
                key.data()

    def reply(self, obj: dict) -> None:
        data = frame(obj)
        try:
            while data:
                data = data[os.write(self.replies, data):]
        except BrokenPipeError:  # the gateway is gone
            self.stop()

    def read_requests(self) -> None:
        try:
            data = os.read(self.requests, CHUNK)
        except BlockingIOError:
            return
        if not data:
            self.stop()
            return
        self.buffer += data
        while len(self.buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buffer)
            if len(self.buffer) < HEADER.size + size:
                break
            req = json.loads(self.buffer[HEADER.size:HEADER.size + size])
            self.buffer = self.buffer[HEADER.size + size:]
            self.handle(req)

    def handle(self, req: dict) -> None:
        if "ping" in req:
            self.reply({"pong": req["ping"]})
            return
        if req.get("kill"):
            run = self.runs.get(req["id"])
            if run is not None:
                run.kill()
            return
        try:
            run = Run(self, req)
        except OSError as e:
            self.reply({"id": req["id"], "error": f"not started ({type(e).__name__}: {e})"})
            return
        self.runs[run.id] = self.by_pid[run.pid] = run
        self.reply({"id": run.id, "pid": run.pid})

    def reap(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.by_pid.pop(pid, None)
            if run is not None:
                run.ended(status)

    def stop(self) -> None:
        """The gateway is gone: no delivery of ours can be recorded any more."""
        if self.open:
            self.open = False
            for run in self.runs.values():
                run.kill()


def _nothing(signum, frame) -> None:
    pass


def take_identity(uid: int | None, gid: int | None, directory: str) -> int | None:
    """As root: real group ID [program]'s, no other groups (see the docstring); the
    directory. Returns the uid to give programs (None: they run as this process)."""
    os.chdir(directory)
    if os.geteuid() != 0:
        if uid is not None and (uid, gid) != (os.getuid(), os.getgid()):
            # Started after the gateway dropped root: programs would run as the
            # gateway's user, who owns every mailbox. Never.
            raise PermissionError(f"programs must run as uid {uid}, gid {gid}: "
                                  "that needs root (restart the gateway)")
        return None
    if uid is None or gid is None or 0 in (uid, gid):
        raise PermissionError("programs never run as root: a user and group are needed")
    os.setgroups([])
    os.setresgid(gid, 0, 0)
    return uid


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: spawnhelper.py UID|- GID|- DIRECTORY", file=sys.stderr)
        return 2
    uid, gid = (None if a == "-" else int(a) for a in argv[:2])
    try:
        run_as = take_identity(uid, gid, argv[2])
    except OSError as e:
        print(f"spawnhelper: {e}", file=sys.stderr)
        return 1
    Helper(run_as=run_as).loop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
