"""The servers that bench/smtp_accept.py measures, and the plumbing they share.

Each server runs as a private instance on a loopback port with its own
directory, so a benchmark never touches a system service. The peers are what
a user would pick instead of mailgateway: Postfix (the reference MTA, with
its default fsync) and aiosmtpd (the Python SMTP server) with a Maildir
writer that fsyncs like the others, so that all three do the same durable
work before "250".

Run as a script (`python bench/peers.py aiosmtpd ...`) it is the aiosmtpd
server itself: the benchmark starts it with the venv's Python, where
aiosmtpd is installed. `python bench/peers.py sink --port N` is the
plaintext echo/discard sink that bench/tlsfront_bench.py puts behind both
TLS fronts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


class Unavailable(Exception):
    """A server cannot be run here (not installed, does not start): skip it, say why."""


# --- small helpers --------------------------------------------------------------------------


def free_port() -> int:
    """A free loopback port below the ephemeral range (tests/integration/loopback_ports.py:
    a port the kernel picks may go to smtp-source's connect before the server binds it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))
    from loopback_ports import free_port as pick

    return pick(LOOPBACK)


def wait_greeting(port: int, deadline: float, alive: Callable[[], bool] = lambda: True,
                  ready: bytes = b"220", goodbye: bytes = b"QUIT\r\n") -> None:
    """Return once the server on PORT greets with ready; a listening socket alone is not
    ready. goodbye ends that probe session politely."""
    last = "no attempt"
    while time.monotonic() < deadline:
        if not alive():
            raise Unavailable("the server exited before it greeted")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as sock:
                sock.settimeout(max(0.5, min(10.0, deadline - time.monotonic())))
                line = sock.makefile("rb").readline(1024)
                if line.startswith(ready):
                    sock.sendall(goodbye)
                    return
                last = f"greeting {line[:80]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise Unavailable(f"no {ready.decode()!r} greeting on port {port} in time ({last})")


def wait_banner(port: int, deadline: float, alive: Callable[[], bool] = lambda: True) -> None:
    """An SMTP server's 220."""
    wait_greeting(port, deadline, alive)


def count_dir(path: Path) -> int:
    """Messages in a Maildir sub-folder (new/); a missing folder holds none yet."""
    try:
        return sum(1 for name in os.listdir(path) if not name.startswith("."))
    except FileNotFoundError:
        return 0


def tail(path: Path, lines: int = 15) -> str:
    """The end of a log file, to explain a failure without opening files by hand."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


def _children_map() -> dict[int, list[int]]:
    """PPID -> child PIDs for every process, from /proc/PID/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ")".
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def process_tree(roots: Sequence[int]) -> list[int]:
    """ROOTS and all their descendants: a server is every process it started."""
    children = _children_map()
    seen: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(children.get(pid, ()))
    return seen


def cpu_seconds(roots: Sequence[int]) -> float:
    """CPU time (user + system) of the process tree, the reaped children included.

    Each live process's cutime/cstime holds the processes it has waited for, so
    the short-lived workers of Postfix's master are counted after they exit.
    """
    ticks = 0
    for pid in process_tree(roots):
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        # Fields 14-17 of proc(5) (utime, stime, cutime, cstime), counted from "state" = 3.
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, key: bytes) -> int:
    """One "VmXXX:  N kB" field of /proc/PID/status, 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages divided among the processes sharing them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class RssSampler(threading.Thread):
    """Peak memory of a server's processes while it works.

    Every INTERVAL seconds it sums VmRSS over the process tree and keeps the
    largest sum: Postfix's smtpd/cleanup/virtual come and go, so one look at
    the end would miss them. It also keeps each process's VmHWM, which is exact
    for a single-process server (the kernel tracks it between samples). The
    RSS sum counts shared pages (libc, Postfix's libraries) once per process,
    which flatters a single-process server; the PSS sum, sampled alongside,
    divides them fairly.
    """

    def __init__(self, roots: Callable[[], Sequence[int]], interval: float = 0.1) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self._roots = roots
        self._interval = interval
        self._done = threading.Event()
        self.peak_kib = 0
        self.peak_pss_kib = 0
        self.hwm_kib: dict[int, int] = {}

    def sample(self) -> None:
        """Take one sample now (also called once more right before the server stops)."""
        rss = pss = 0
        for pid in process_tree(self._roots()):
            rss += _status_kib(pid, b"VmRSS:")
            pss += _pss_kib(pid)
            hwm = _status_kib(pid, b"VmHWM:")
            if hwm:
                self.hwm_kib[pid] = max(hwm, self.hwm_kib.get(pid, 0))
        self.peak_kib = max(self.peak_kib, rss)
        self.peak_pss_kib = max(self.peak_pss_kib, pss)

    def run(self) -> None:
        while not self._done.wait(self._interval):
            self.sample()

    def finish(self) -> tuple[int, int]:
        """Stop sampling; peak RSS and peak PSS in KiB (RSS from VmHWM for one process)."""
        if not self._done.is_set():
            self._done.set()
            if self.is_alive():
                self.join(timeout=5)
            self.sample()
        if len(self.hwm_kib) == 1:
            return max(self.peak_kib, *self.hwm_kib.values()), self.peak_pss_kib
        return self.peak_kib, self.peak_pss_kib


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """TERM the process group, then KILL it: a server leaves nothing running behind it."""
    if proc.poll() is not None:
        _kill_group(proc.pid, signal.SIGKILL)  # children that outlived it, if any
        return
    _kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    _kill_group(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        print(f"warning: process {proc.pid} survived SIGKILL", file=sys.stderr)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a process group that we created (start_new_session), ignoring a gone one."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --- the servers ----------------------------------------------------------------------------


class Server:
    """One SMTP server under test: started fresh for each round, stopped after it.

    A fresh directory per round keeps rounds independent: no queue left over,
    no Maildir that grows from round to round.
    """

    name = "server"

    def __init__(self, workdir: Path, recipient: str) -> None:
        self.workdir = workdir
        self.recipient = recipient
        self.port = 0
        self.rundir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def check(self) -> None:
        """Raise Unavailable when this server cannot run here at all (once, before round 1)."""

    def start(self, rundir: Path, port: int, deadline: float) -> None:
        """Start on PORT with state in RUNDIR; return once it greets."""
        raise NotImplementedError

    def pids(self) -> list[int]:
        """The server's root processes (the sampler adds their descendants)."""
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def maildir_new(self) -> Path:
        """The new/ folder where the recipient's delivered messages appear."""
        raise NotImplementedError

    def log(self) -> Path:
        """The server's log, shown when something fails."""
        return self.rundir / "server.log"

    def stop(self) -> None:
        """Stop everything this server started; safe to call twice."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def _spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        """Start ARGV in its own session (own process group), output to the log file."""
        with open(self.log(), "ab") as log:
            self.proc = subprocess.Popen(
                list(argv),
                cwd=self.rundir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{listen} inet n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# Everything not named keeps Postfix's default, fsync of queue files included.
MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.{domain}
mydomain = {domain}
myorigin = $myhostname
mydestination =
inet_interfaces = {loopback}
inet_protocols = ipv4
# Empty: loopback is not trusted, as in mailgateway's default.
mynetworks =
relay_domains =
alias_maps =
alias_database =
local_transport = error:local delivery is off in this benchmark
default_transport = error:nothing leaves this machine
relay_transport = error:nothing leaves this machine
smtp_dns_support_level = disabled
smtpd_relay_restrictions = reject_unauth_destination
# Postfix 3.7 defaults to "no", which is open to SMTP smuggling.
smtpd_forbid_bare_newline = normalize
smtpd_client_connection_count_limit = {conn_limit}
virtual_mailbox_domains = {domain}
virtual_mailbox_maps = texthash:{vmailbox}
virtual_mailbox_base = {base}
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
maillog_file = {maillog}
maillog_file_prefixes = {logdir}
biff = no
append_dot_mydomain = no
readme_directory = no
{extra}"""


class Postfix(Server):
    """A private Postfix instance (`postfix -c DIR`) delivering to Maildir with virtual(8)."""

    name = "Postfix"

    def __init__(self, workdir: Path, recipient: str, sessions: int) -> None:
        super().__init__(workdir, recipient)
        self.sessions = sessions
        self.confdir = workdir
        # Where virtual(8) delivers: base folder and the Maildir below it (trailing "/");
        # by default RUNDIR/maildirs and DOMAIN/LOCAL/. mailbox_bench.py points both
        # at the Maildir its Dovecot serves.
        self.mail_base: Path | None = None
        self.mailbox: str | None = None
        # More main.cf lines ("name = value\n"), e.g. abuse.py's message_size_limit.
        self.main_cf_extra = ""

    def check(self) -> None:
        for tool in ("/usr/sbin/postfix", "/usr/sbin/postconf"):
            if not os.access(tool, os.X_OK):
                raise Unavailable(f"{tool} is missing (Debian package postfix)")
        if os.geteuid() != 0:
            raise Unavailable("a private Postfix instance needs root (it drops to postfix)")

    def log(self) -> Path:
        return self.rundir / "maillog"

    def start(self, rundir: Path, port: int, deadline: float) -> None:
        self.rundir, self.port = rundir, port
        # Config, queue and data apart: `postfix check` wants the config tree all root's.
        self.confdir = rundir / "postfix-etc"
        local, domain = self.recipient.split("@", 1)
        base = self.mail_base or rundir / "maildirs"
        # virtual(8) writes as an unprivileged user; "nobody" is what a site would pick.
        user = pwd.getpwnam("nobody")
        postfix = pwd.getpwnam("postfix")
        # Postfix makes the queue's sub-folders itself, not the queue folder.
        for folder in (self.confdir, rundir / "postfix-queue", rundir / "postfix-data", base):
            folder.mkdir(parents=True, exist_ok=folder == base)
        rundir.chmod(0o755)
        for parent in rundir.parents:
            if not parent.stat().st_mode & 0o001:
                raise Unavailable(f"{parent} is not searchable by others; postfix cannot reach it")
        os.chown(rundir / "postfix-data", postfix.pw_uid, postfix.pw_gid)
        os.chown(base, user.pw_uid, user.pw_gid)
        vmailbox = self.confdir / "vmailbox"
        # The trailing "/" makes virtual(8) deliver to a Maildir, not an mbox file.
        vmailbox.write_text(f"{self.recipient} {self.mailbox or f'{domain}/{local}/'}\n")
        (self.confdir / "master.cf").write_text(MASTER_CF.format(listen=f"{LOOPBACK}:{port}"))
        (self.confdir / "main.cf").write_text(
            MAIN_CF.format(
                queue=rundir / "postfix-queue",
                data=rundir / "postfix-data",
                domain=domain,
                loopback=LOOPBACK,
                conn_limit=max(50, self.sessions + 2),
                vmailbox=vmailbox,
                base=base,
                uid=user.pw_uid,
                gid=user.pw_gid,
                maillog=self.log(),
                logdir=rundir,
                extra=self.main_cf_extra,
            )
        )
        self._postfix("start", timeout=max(1.0, deadline - time.monotonic()))
        wait_banner(port, deadline, alive=lambda: bool(self.pids()))

    def _postfix(self, command: str, timeout: float) -> None:
        """Run `postfix -c DIR COMMAND`; on failure raise with its output and the log."""
        done = subprocess.run(
            ["/usr/sbin/postfix", "-c", str(self.confdir), command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace").strip()
            raise Unavailable(f"postfix {command} failed: {out}\n{tail(self.log())}")

    def master_pid(self) -> int | None:
        """The master's PID from its pid file, if that process still lives."""
        try:
            pid = int((self.rundir / "postfix-queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def pids(self) -> list[int]:
        pid = self.master_pid()
        return [pid] if pid else []

    def maildir_new(self) -> Path:
        local, domain = self.recipient.split("@", 1)
        if self.mail_base is not None and self.mailbox is not None:
            return self.mail_base / self.mailbox / "new"
        return self.rundir / "maildirs" / domain / local / "new"

    def stop(self) -> None:
        pid = self.master_pid()
        if pid is None:
            return
        try:
            self._postfix("stop", timeout=30)
        except (Unavailable, subprocess.TimeoutExpired) as exc:
            print(f"warning: {exc}", file=sys.stderr)
        deadline = time.monotonic() + 15
        while self.master_pid() and time.monotonic() < deadline:
            time.sleep(0.1)
        # The master runs in a session of its own: its group is the whole instance.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.master_pid() is None:
                break
            _kill_group(pid, sig)
            time.sleep(1)


class Aiosmtpd(Server):
    """aiosmtpd with the fsyncing Maildir handler of this file, in the venv's Python."""

    name = "aiosmtpd"

    def __init__(self, workdir: Path, recipient: str, python: Path) -> None:
        super().__init__(workdir, recipient)
        self.python = python

    def check(self) -> None:
        done = subprocess.run(
            [str(self.python), "-c", "import aiosmtpd"], capture_output=True, check=False
        )
        if done.returncode != 0:
            raise Unavailable(f"aiosmtpd is not importable by {self.python}")

    def start(self, rundir: Path, port: int, deadline: float) -> None:
        self.rundir, self.port = rundir, port
        rundir.mkdir(parents=True)
        self._spawn(
            [
                str(self.python),
                str(Path(__file__).resolve()),
                "aiosmtpd",
                "--port",
                str(port),
                "--maildirs",
                str(rundir / "maildirs"),
                "--recipient",
                self.recipient,
            ]
        )
        wait_banner(port, deadline, alive=self._alive)

    def maildir_new(self) -> Path:
        local, domain = self.recipient.split("@", 1)
        return self.rundir / "maildirs" / domain / local / "new"


# Logged by the queue runner once it runs, in its own process or the gateway's.
RUNNER_STARTED = b"queue runner started"


class Mailgateway(Server):
    """mailgateway under twistd, configured from its own default.toml.

    The contract used here is the documented one: `twistd -n --pidfile=
    mailgateway --config FILE` and `mailgateway user add ADDRESS
    --password-stdin --config FILE`; delivered mail lands in
    <state_dir>/mail/<domain>/<local>/new/.
    """

    name = "mailgateway"
    password = "bench-only-password-1"
    # [inbound_auth] check: off unless a benchmark of those checks turns it on.
    inbound_auth = False

    def __init__(
        self, workdir: Path, recipient: str, venv: Path, repo: Path, sessions: int
    ) -> None:
        super().__init__(workdir, recipient)
        self.venv = venv
        self.repo = repo
        self.sessions = sessions
        self.default_config = repo / "gateway" / "default.toml"
        if not self.default_config.exists():
            self.default_config = repo / "etc" / "mailgateway.toml"

    def env(self) -> dict[str, str]:
        """The repository first on sys.path, so an uninstalled checkout runs as well."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.repo), env.get("PYTHONPATH", "")) if p
        )
        return env

    def cli(self) -> list[str]:
        """The `mailgateway` command: the venv's script, or its module when not installed."""
        script = self.venv / "bin" / "mailgateway"
        if script.exists():
            return [str(script)]
        code = "import sys; from gateway.cli import main; sys.exit(main())"
        return [str(self.venv / "bin" / "python"), "-c", code]

    def check(self) -> None:
        twistd = self.venv / "bin" / "twistd"
        if not twistd.exists():
            raise Unavailable(f"{twistd} is missing (make the venv: `make bench` does)")
        if not self.default_config.exists():
            raise Unavailable(f"no default configuration at {self.default_config}")
        done = subprocess.run(
            [str(twistd), "mailgateway", "--help"],
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()
            raise Unavailable("`twistd mailgateway --help` fails:\n    " + "\n    ".join(out[-8:]))

    def write_config(self, path: Path, state: Path, port: int) -> None:
        """default.toml with this run's state dir and port; other listeners off."""
        with open(self.default_config, "rb") as fh:
            settings = tomllib.load(fh)
        server = settings.setdefault("server", {})
        server["state_dir"] = str(state)
        if os.geteuid() == 0:
            server["user"] = "root"  # it refuses to serve as root unless told in so many words
        domain = self.recipient.split("@", 1)[1]
        if domain not in server.setdefault("domains", []):
            server["domains"].append(domain)
        listen = settings.setdefault("listen", {})
        for key in listen:
            listen[key] = ""  # "" means off: only the listener under test runs
        listen["smtp"] = f"tcp:{port}:interface={LOOPBACK}"
        # SPF/DKIM/DMARC would ask this machine's name servers about every sender;
        # the peers check nothing either (bench/inbound_auth_bench.py measures them).
        if "inbound_auth" in settings:  # a checkout older than the checks has no section
            settings["inbound_auth"]["check"] = self.inbound_auth
        aliases = settings.get("aliases", {})
        if aliases.get("file") and not Path(aliases["file"]).is_absolute():
            # Relative to the checkout, as for `make run`; the server runs in its rundir.
            aliases["file"] = str(self.repo / aliases["file"])
        smtp = settings.get("smtp", {})
        if "max_connections_per_client" in smtp:
            # smtp-source's sessions all come from 127.0.0.1, plus the readiness probe.
            smtp["max_connections_per_client"] = max(
                smtp["max_connections_per_client"], self.sessions + 2
            )
        path.write_text(
            f"# Written by bench/peers.py from {self.default_config}\n" + toml_dumps(settings)
        )

    def start(self, rundir: Path, port: int, deadline: float) -> None:
        self.rundir, self.port = rundir, port
        rundir.mkdir(parents=True)
        config = rundir / "mailgateway.toml"
        self.write_config(config, rundir / "state", port)
        add = [*self.cli(), "user", "add", self.recipient, "--password-stdin", "--config"]
        done = subprocess.run(
            [*add, str(config)],
            cwd=rundir,
            env=self.env(),
            input=(self.password + "\n").encode(),
            capture_output=True,
            timeout=max(1.0, deadline - time.monotonic()),
            check=False,
        )
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace").strip()
            raise Unavailable(f"`mailgateway user add` failed ({done.returncode}): {out[-800:]}")
        self.serve(config, port, deadline)

    def serve(self, config: Path, port: int, deadline: float,
              greeted: Callable[..., None] = wait_banner) -> None:
        """Run `twistd -n mailgateway` on config; return once port greets and the queue
        runner has started. The runner has a process of its own by default, whose
        start-up (a second of imports) would otherwise be measured as the first
        messages' work, beside them on the same cores."""
        before = self._log_count(RUNNER_STARTED)
        argv = [str(self.venv / "bin" / "twistd"), "-n", "--pidfile=", "mailgateway",
                "--config", str(config)]
        self._spawn(argv, env=self.env())
        try:
            greeted(port, deadline, alive=self._alive)
            while self._log_count(RUNNER_STARTED) <= before:
                if not self._alive():
                    raise Unavailable("mailgateway exited while starting")
                if time.monotonic() > deadline:
                    raise Unavailable("mailgateway's queue runner did not start in time")
                time.sleep(0.05)
        except Unavailable as exc:
            raise Unavailable(f"{exc}\n{tail(self.log())}") from None

    def _log_count(self, text: bytes) -> int:
        try:
            return self.log().read_bytes().count(text)
        except FileNotFoundError:
            return 0

    def maildir_new(self) -> Path:
        local, domain = self.recipient.split("@", 1)
        return self.rundir / "state" / "mail" / domain / local / "new"


def toml_dumps(data: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for a configuration file: tables, strings, numbers, booleans, arrays.

    The standard library reads TOML but does not write it.
    """
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((f"{prefix}{_toml_key(key)}", value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for name, table in tables:
        lines += ["", f"[{name}]", toml_dumps(table, prefix=f"{name}.").rstrip("\n")]
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "-_" for c in key) else json.dumps(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


# --- IMAP servers (bench/imap_bench.py) -----------------------------------------------------


def wait_imap(port: int, deadline: float, alive: Callable[[], bool] = lambda: True) -> None:
    """An IMAP server's "* OK"."""
    wait_greeting(port, deadline, alive, ready=b"* OK", goodbye=b"z LOGOUT\r\n")


def link_maildir(cur: Path, maildir: Path) -> None:
    """A fresh Maildir whose cur/ hard-links the files of CUR: new directories, no index.

    Both servers only ever rename or unlink message files, never rewrite
    them, so the copies can share the files of one built tree.
    """
    for sub in ("tmp", "new"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(cur), str(maildir / "cur")], check=True, timeout=600)
    os.sync()  # no writeback of the new directories while the server is measured


class MailgatewayImap(Mailgateway):
    """mailgateway's IMAP listener alone, LOGIN allowed in plaintext from loopback.

    The INBOX is <state_dir>/mail/<domain>/<local>/ (tmp, new, cur); the
    folder's SQLite index (mailgateway.index) appears there on the first
    SELECT. `sessions` raises [imap] max_connections_per_client to fit them.
    """

    def write_config(self, path: Path, state: Path, port: int) -> None:
        with open(self.default_config, "rb") as fh:
            settings = tomllib.load(fh)
        settings["server"]["state_dir"] = str(state)
        settings["server"]["domains"] = [self.recipient.split("@", 1)[1]]
        if os.geteuid() == 0:
            settings["server"]["user"] = "root"  # as Mailgateway.write_config says
        settings["listen"] = {key: "" for key in settings["listen"]}
        settings["listen"]["imap"] = f"tcp:{port}:interface={LOOPBACK}"
        settings["auth"]["plaintext_from_loopback"] = True
        # As in Mailgateway.write_config: the peers check no senders either.
        if "inbound_auth" in settings:  # a checkout older than the checks has no section
            settings["inbound_auth"]["check"] = self.inbound_auth
        settings["tlsfront"] = []
        aliases = settings.get("aliases", {})
        if aliases.get("file") and not Path(aliases["file"]).is_absolute():
            # Relative to the checkout, as for `make run`; the server runs in its rundir.
            aliases["file"] = str(self.repo / aliases["file"])
        imap = settings["imap"]
        if "max_connections_per_client" in imap:  # all the sessions come from 127.0.0.1
            imap["max_connections_per_client"] = max(imap["max_connections_per_client"],
                                                     self.sessions + 10)
        self.more_settings(settings)
        path.write_text(f"# Written by bench/peers.py from {self.default_config}\n"
                        + toml_dumps(settings))

    def more_settings(self, settings: dict[str, Any]) -> None:
        """A subclass's changes to the configuration (mailbox_bench.py adds SMTP)."""

    def maildir(self) -> Path:
        local, domain = self.recipient.lower().split("@", 1)
        return self.rundir / "state" / "mail" / domain / local

    def setup(self, rundir: Path, port: int, cur: Path) -> None:
        """Configuration, user, and an INBOX linked from CUR; the server is not started."""
        self.rundir, self.port = rundir, port
        rundir.mkdir(parents=True)
        self.config = rundir / "mailgateway.toml"
        self.write_config(self.config, rundir / "state", port)
        done = subprocess.run(
            [*self.cli(), "user", "add", self.recipient, "--password-stdin",
             "--config", str(self.config)],
            cwd=rundir, env=self.env(), input=(self.password + "\n").encode(),
            capture_output=True, timeout=120, check=False)
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace").strip()
            raise Unavailable(f"`mailgateway user add` failed ({done.returncode}): {out[-800:]}")
        link_maildir(cur, self.maildir())

    def launch(self, deadline: float) -> None:
        """Start (or restart) on the state set up; return once it greets (serve())."""
        self.serve(self.config, self.port, deadline, wait_imap)


DOVECOT = Path("/usr/sbin/dovecot")
DOVECOT_CONF = """\
# Written by bench/peers.py: a private instance, loopback only.
base_dir = {run}/base
state_dir = {run}/state
instance_name = bench-dovecot-{port}
listen = {loopback}
protocols = imap
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
log_path = {run}/dovecot.log
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:{run}/mail/%n/Maildir
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {run}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {run}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = {loopback}
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
# One imap process per session (Dovecot's default); room for all the sessions.
service imap {{
  process_limit = {procs}
}}
default_process_limit = {procs}
default_client_limit = {clients}
protocol imap {{
  mail_max_userip_connections = {procs}
}}
"""


class Dovecot(Server):
    """A private Dovecot (`dovecot -F -c FILE`), Maildir as user nobody, defaults otherwise.

    Dovecot's own defaults stay (fsync of saved mail, index files in the
    Maildir, one imap process per session); only what a private instance
    on loopback needs is set, and limits raised to fit `sessions`.
    """

    name = "Dovecot"
    password = "bench-only-password-1"

    def __init__(self, workdir: Path, recipient: str, sessions: int) -> None:
        super().__init__(workdir, recipient)
        self.sessions = sessions
        self.config = workdir / "dovecot.conf"

    def check(self) -> None:
        if not DOVECOT.exists():
            raise Unavailable(f"{DOVECOT} is missing (Debian package dovecot-imapd)")
        if os.geteuid() != 0:
            raise Unavailable("a private Dovecot instance needs root (it drops privileges)")

    def log(self) -> Path:
        return self.rundir / "dovecot.log"

    def home(self) -> Path:
        return self.rundir / "mail" / self.recipient.split("@", 1)[0].lower()

    def maildir(self) -> Path:
        return self.home() / "Maildir"

    def setup(self, rundir: Path, port: int, cur: Path) -> None:
        """Configuration, passwd-file, and an INBOX linked from CUR; not started."""
        self.rundir, self.port = rundir, port
        rundir.mkdir(parents=True)
        for parent in (rundir, *rundir.parents):
            if not parent.stat().st_mode & 0o001:
                raise Unavailable(f"{parent} is not searchable by others; Dovecot cannot reach it")
        user = pwd.getpwnam("nobody")
        link_maildir(cur, self.maildir())
        # The directories are new: the mail user's. The files stay root's, mode 0644.
        for folder in (self.home(), self.maildir(),
                       *(self.maildir() / sub for sub in ("tmp", "new", "cur"))):
            os.chown(folder, user.pw_uid, user.pw_gid)
        local = self.recipient.split("@", 1)[0].lower()
        (rundir / "passwd").write_text(
            f"{local}:{{PLAIN}}{self.password}:{user.pw_uid}:{user.pw_gid}::{self.home()}::\n")
        self.config = rundir / "dovecot.conf"
        self.config.write_text(DOVECOT_CONF.format(
            run=rundir, port=port, loopback=LOOPBACK, procs=self.sessions + 50,
            clients=4 * self.sessions + 200))

    def launch(self, deadline: float) -> None:
        """Start (or restart) on the state set up; return once it greets."""
        self._spawn([str(DOVECOT), "-F", "-c", str(self.config)])
        try:
            wait_imap(self.port, deadline, self._alive)
        except Unavailable as exc:
            raise Unavailable(f"{exc}\n{tail(self.log())}") from None


class PostfixDovecot:
    """Postfix's virtual(8) delivering into the Maildir a private Dovecot serves."""

    name = "Postfix+Dovecot"

    def __init__(self, workdir: Path, recipient: str, sessions: int) -> None:
        self.postfix = Postfix(workdir, recipient, sessions)
        self.dovecot = Dovecot(workdir, recipient, sessions)
        self.rundir = workdir
        self.smtp_port = self.port = 0

    def check(self) -> None:
        self.postfix.check()
        self.dovecot.check()

    def prepare(self, rundir: Path, smtp_port: int, imap_port: int, cur: Path) -> None:
        self.rundir, self.smtp_port, self.port = rundir, smtp_port, imap_port
        self.dovecot.setup(rundir / "dovecot", imap_port, cur)
        home = self.dovecot.home()
        self.postfix.mail_base = home.parent
        self.postfix.mailbox = f"{home.name}/{self.dovecot.maildir().name}/"

    def launch(self, deadline: float) -> None:
        self.dovecot.launch(deadline)
        self.postfix.start(self.rundir / "postfix", self.smtp_port, deadline)

    def maildir(self) -> Path:
        return self.dovecot.maildir()

    def pids(self) -> list[int]:
        return self.postfix.pids() + self.dovecot.pids()

    def stop(self) -> None:
        self.postfix.stop()
        self.dovecot.stop()



# --- the aiosmtpd server (runs in the venv's Python) ----------------------------------------


class MaildirWriter:
    """Deliver like a careful MDA: tmp/ -> fsync -> rename into new/ -> fsync new/.

    Without the two fsyncs aiosmtpd would only be measuring the page cache,
    and the comparison with Postfix and mailgateway (which both fsync) would
    be unfair.
    """

    def __init__(self, maildirs: Path, recipients: Sequence[str]) -> None:
        self.boxes: dict[str, Path] = {}
        for address in recipients:
            local, domain = address.lower().split("@", 1)
            box = maildirs / domain / local
            for sub in ("tmp", "new", "cur"):
                (box / sub).mkdir(parents=True, exist_ok=True)
            self.boxes[address.lower()] = box
        self.host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        self.counter = itertools.count()

    def deliver(self, box: Path, message: bytes) -> None:
        """Write one message durably; runs in a worker thread, off the event loop."""
        now = time.time()
        name = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(self.counter)}.{self.host}"
        tmp = box / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(message)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, box / "new" / name)
        dirfd = os.open(box / "new", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)


def serve_aiosmtpd(port: int, maildirs: Path, recipients: Sequence[str]) -> None:
    """Run aiosmtpd on loopback until SIGTERM/SIGINT: the peer most Python users would pick."""
    import asyncio
    import email.utils

    from aiosmtpd.smtp import SMTP, Envelope, Session

    writer = MaildirWriter(maildirs, recipients)

    class Handler:
        """Known recipients only (no open relay), then a durable Maildir write before 250."""

        async def handle_RCPT(
            self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
        ) -> str:
            if address.lower() not in writer.boxes:
                return "550 5.1.1 No such user here"
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK"

        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            content = envelope.original_content or b""
            # The trace headers Postfix adds too, so every server writes about the same bytes.
            stamp = email.utils.formatdate(localtime=True)
            received = (
                f"Received: from {session.host_name} ({session.peer[0]})\n"
                f"\tby aiosmtpd.example.test with ESMTP; {stamp}\n"
            )
            head = f"Return-Path: <{envelope.mail_from}>\n".encode()
            # Maildir files use the local line ending, as Postfix's virtual(8) writes them.
            body = content.replace(b"\r\n", b"\n")
            loop = asyncio.get_running_loop()
            for rcpt in envelope.rcpt_tos:
                message = head + f"Delivered-To: {rcpt}\n{received}".encode() + body
                box = writer.boxes[rcpt.lower()]
                await loop.run_in_executor(None, writer.deliver, box, message)
            return "250 2.0.0 OK: delivered"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = await loop.create_server(
            lambda: SMTP(Handler(), hostname="aiosmtpd.example.test", ident="aiosmtpd"),
            host=LOOPBACK,
            port=port,
        )
        async with server:
            await stop.wait()

    asyncio.run(main())


# --- the plaintext sink behind the TLS fronts (bench/tlsfront_bench.py) ---------------------


def serve_sink(port: int) -> None:
    """The plaintext backend: the first line picks the job, so one server serves every test.

    "GET ..." (s_time -www): a tiny HTTP reply, then close. "UP n": discard n bytes,
    answer "OK". "DOWN n": send n bytes. Anything else: echo.
    """
    import asyncio

    chunk = memoryview(os.urandom(1 << 18))

    class Sink(asyncio.Protocol):
        def __init__(self) -> None:
            self.mode, self.head, self.left, self.paused = "", b"", 0, False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            transport.set_write_buffer_limits(high=1 << 20)

        def data_received(self, data: bytes) -> None:
            if self.mode == "echo":
                self.transport.write(data)
            elif self.mode == "up":
                self.uploaded(len(data))
            elif not self.mode:
                self.head += data
                self.decide()

        def decide(self) -> None:
            head = self.head
            if head.startswith(b"GET "):
                if b"\r\n\r\n" in head:  # read it all: closing on unread bytes would reset
                    self.mode = "done"
                    self.transport.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    self.transport.close()
            elif head.startswith((b"UP ", b"DOWN ")) and b"\n" in head:
                line, rest = head.split(b"\n", 1)
                verb, size = line.split()
                self.mode, self.left = verb.decode().lower(), int(size)
                if self.mode == "up":
                    self.uploaded(len(rest))
                else:
                    self.pump()
            elif not any(verb.startswith(head) for verb in (b"GET ", b"UP ", b"DOWN ")):
                self.mode = "echo"
                self.transport.write(head)

        def uploaded(self, count: int) -> None:
            before, self.left = self.left, self.left - count
            if before > 0 >= self.left:
                self.transport.write(b"OK\n")

        def pump(self) -> None:
            while self.left > 0 and not self.paused:
                size = min(self.left, len(chunk))
                self.transport.write(chunk[:size])
                self.left -= size

        def pause_writing(self) -> None:
            self.paused = True

        def resume_writing(self) -> None:
            self.paused = False
            self.pump()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = await loop.create_server(Sink, host=LOOPBACK, port=port, backlog=4096)
        async with server:
            await stop.wait()

    asyncio.run(main())


def start_sink(rundir: Path, port: int, deadline: float) -> subprocess.Popen[bytes]:
    """This file's sink, in this Python; returns once it accepts connections."""
    with open(rundir / "sink.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "sink", "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    stop_process(proc)
    raise Unavailable(f"the sink did not listen on {port}\n{tail(rundir / 'sink.log')}")


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Peer servers for the benchmarks in bench/.")
    sub = parser.add_subparsers(dest="command", required=True)
    aio = sub.add_parser("aiosmtpd", help="run aiosmtpd with an fsyncing Maildir handler")
    aio.add_argument("--port", type=int, required=True)
    aio.add_argument("--maildirs", type=Path, required=True, help="DIR/<domain>/<local>/")
    aio.add_argument("--recipient", action="append", required=True)
    sink = sub.add_parser("sink", help="run the echo/discard sink behind the TLS fronts")
    sink.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "aiosmtpd":
        serve_aiosmtpd(args.port, args.maildirs, args.recipient)
    elif args.command == "sink":
        serve_sink(args.port)


if __name__ == "__main__":
    _main()


# --- shared report pieces of the bench scripts ------------------------------------------


def report_footer(rounds: list, interrupted: bool, heading: str = "Rounds left out:",
                  label: str = "server") -> list[str]:
    """The closing lines of a report: an interruption, and each round that failed
    (rounds have .number, .error and the attribute label naming what was measured)."""
    lines: list[str] = []
    if interrupted:
        lines += ["", "Interrupted: these figures cover only the rounds that finished."]
    failed = [r for r in rounds if r.error]
    if failed:
        lines += ["", heading]
        lines += [f"- {getattr(r, label)} round {r.number}: {r.error.splitlines()[0]}"
                  for r in failed]
    return lines


def append_report(path: str, title: str, text: str) -> None:
    """Add one run's report to a results log (bench/RESULTS.md) as a dated section."""
    with open(path, "a") as fh:
        fh.write(f"\n## {time.strftime('%Y-%m-%d')}{title}\n\n{text}")
