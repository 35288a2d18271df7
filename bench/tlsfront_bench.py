"""TLS front speed: `mailgateway tlsfront` beside stunnel4, same certificate, backend and client.

Why this shape: issue 5 asks the front to do stunnel's job at least 0.8x as
fast for handshakes and 0.5x for bulk. Both fronts run standalone with the
same certificate and key, TLS 1.2 minimum and the same TLS 1.2 cipher string,
in front of the same plaintext sink (`bench/peers.py sink`, an asyncio
echo/discard server started fresh behind each front), and are driven by the
same clients: `openssl s_time` for handshakes, Python's ssl for bulk and idle
connections. Each round starts each front fresh; fronts take turns; the
report gives medians and ratios (this machine has 2 cores and is noisy).

For each front and round, in this order:
  memory      RSS and PSS at start, then with --idle TLS connections open
              (each handshaken and one echo through, so the backend leg exists)
  handshakes  connections per second of s_time runs (-new, -reuse, -www),
              resumption checked from s_time's per-connection "r" marks
  bulk        MB/s of one connection: --bulk bytes up to the sink (timed until
              the sink says it has them all), then down from the sink

This is a benchmark, not a test: it prints figures and never judges them.
Everything it starts is stopped at the end, on Ctrl-C and on errors too.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import (  # noqa: E402  (bench/ is not a package: found via the line above)
    LOOPBACK,
    RssSampler,
    Server,
    Unavailable,
    cpu_seconds,
    free_port,
    report_footer,
    start_sink,
    stop_process,
    tail,
    toml_dumps,
)
from rounds import (  # noqa: E402
    REPO,
    command_line,
    make_workdir,
    pick_venv,
    publish,
    run_in_turn,
    usable,
)

STUNNEL = "stunnel4"
# The gateway's default TLS 1.2 ciphers (gateway/default.toml), given to stunnel as well.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"
# (key, label, s_time flags, parallel s_time processes: 0 means --clients)
HANDSHAKES = [
    ("full13", "full handshakes/s, TLS 1.3 (s_time -new)", ["-new", "-tls1_3"], 1),
    ("full13p", "full handshakes/s, TLS 1.3, {n} s_time at once", ["-new", "-tls1_3"], 0),
    ("full12", "full handshakes/s, TLS 1.2 (s_time -new -tls1_2)", ["-new", "-tls1_2"], 1),
    ("resumed12", "resumed handshakes/s, TLS 1.2 (s_time -reuse -tls1_2)",
     ["-reuse", "-tls1_2"], 1),
    ("full13www", "full TLS 1.3 + 1 request/s (s_time -new -www /)",
     ["-new", "-tls1_3", "-www", "/"], 1),
    ("resumed13www", "resumed TLS 1.3 + 1 request/s (s_time -reuse -www /)",
     ["-reuse", "-tls1_3", "-www", "/"], 1),
]


@dataclass
class Round:
    """One front's figures for one round; error is set when the round is not usable."""

    front: str
    number: int
    figures: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    error: str = ""


# --- the fronts --------------------------------------------------------------------------------


class Front(Server):
    """A TLS front between a client port and the sink; subclasses say how to start it."""

    def __init__(self, workdir: Path, cert: Path, key: Path, idle: int) -> None:
        super().__init__(workdir, "")
        self.cert, self.key, self.idle = cert, key, idle
        self.backend = 0

    def argv(self) -> tuple[list[str], dict[str, str] | None]:
        raise NotImplementedError

    def start(self, rundir: Path, port: int, deadline: float) -> None:
        """Start it; return once a TLS handshake succeeds (listening alone is not ready)."""
        self.rundir, self.port = rundir, port
        rundir.mkdir(parents=True)
        self._spawn(*self.argv())
        last = "no attempt"
        while time.monotonic() < deadline and self._alive():
            try:
                tls_connect(port, client_context(), 2).close()
                return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise Unavailable(f"no TLS handshake on port {port} ({last})\n{tail(self.log())}")


class Stunnel(Front):
    """Debian's stunnel4 in the foreground, one service, logging to a file (not syslog)."""

    name = "stunnel"

    def check(self) -> None:
        if shutil.which(STUNNEL) is None:
            raise Unavailable("stunnel4 is missing (apt-get install stunnel4)")

    def argv(self) -> tuple[list[str], dict[str, str] | None]:
        conf = self.rundir / "stunnel.conf"
        # syslog = no: without a syslog daemon, stunnel's syslog() falls back to writing each
        # line to /dev/console under a lock, which cut it to ~160 handshakes/s here.
        conf.write_text(
            "; Written by bench/tlsfront_bench.py\n"
            f"foreground = quiet\nsyslog = no\npid =\noutput = {self.rundir / 'stunnel.log'}\n"
            f"[bench]\naccept = {LOOPBACK}:{self.port}\nconnect = {LOOPBACK}:{self.backend}\n"
            f"cert = {self.cert}\nkey = {self.key}\nsslVersionMin = TLSv1.2\n"
            f"ciphers = {CIPHERS}\noptions = CIPHER_SERVER_PREFERENCE\n"
        )
        return [STUNNEL, str(conf)], None


class GatewayFront(Front):
    """`mailgateway tlsfront --config FILE`, FILE holding only one [[tlsfront]] section."""

    name = "mailgateway"

    def __init__(self, workdir: Path, cert: Path, key: Path, idle: int, venv: Path) -> None:
        super().__init__(workdir, cert, key, idle)
        self.script = venv / "bin" / "mailgateway"

    def check(self) -> None:
        if not self.script.exists():
            raise Unavailable(f"{self.script} is missing (pip install -e . into the venv)")

    def argv(self) -> tuple[list[str], dict[str, str] | None]:
        front = {
            "name": "bench",
            "accept": f"tcp:{self.port}:interface={LOOPBACK}",
            "connect": f"tcp:{LOOPBACK}:{self.backend}",
            "proxy": "none",  # the sink knows no PROXY protocol, like stunnel's backend
            "certificates": [{"certificate": str(self.cert), "private_key": str(self.key)}],
            "min_version": "1.2",
            "ciphers": CIPHERS,
            # Raised for the benchmark: every client comes from 127.0.0.1.
            "max_connections": self.idle + 200,
            "max_connections_per_client": self.idle + 200,
            "max_handshakes_per_second": 1_000_000,
        }
        conf = self.rundir / "fronts.toml"
        conf.write_text("# bench/tlsfront_bench.py\n" + toml_dumps({"tlsfront": [front]}))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        return [str(self.script), "tlsfront", "--config", str(conf)], env


# --- the clients -------------------------------------------------------------------------------


def client_context(version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client that does not verify (the certificate is self-signed), TLS 1.2 at least."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = version or ssl.TLSVersion.TLSv1_2
    if version is not None:
        ctx.maximum_version = version
    return ctx


def tls_connect(port: int, ctx: ssl.SSLContext, timeout: float) -> ssl.SSLSocket:
    """A handshaken TLS connection; TCP_NODELAY, so the client adds no Nagle delay."""
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return ctx.wrap_socket(sock)
    except BaseException:
        sock.close()
        raise


def s_time(port: int, flags: list[str], seconds: int, clients: int) -> tuple[float, int, int]:
    """CLIENTS s_time processes at once: (connections/s by wall clock, connections, resumed).

    s_time's own "real seconds" are whole seconds, so the wall time is taken here.
    It prints one mark per connection, "r" when SSL_session_reused() said so.
    """
    argv = ["openssl", "s_time", "-connect", f"{LOOPBACK}:{port}", "-time", str(seconds), *flags]
    started = time.monotonic()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL) for _ in range(clients)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=seconds + 60)[0].decode(errors="replace"))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    elapsed = time.monotonic() - started
    total = resumed = 0
    for out in outputs:
        found = re.search(r"(\d+) connections in \d+ real seconds", out)
        if found is None or int(found.group(1)) == 0:
            raise RuntimeError(f"s_time {' '.join(flags)}: {out.strip()[-300:]!r}")
        total += int(found.group(1))
        # The marks follow "starting" (-reuse) or stand on a line of their own (-new).
        resumed += "".join(re.findall(r"(?:^|starting)([r*t3]+)$", out, re.M)).count("r")
    return total / elapsed, total, resumed


def read_exactly(tls: ssl.SSLSocket, want: bytes) -> None:
    """Read until WANT has arrived (the sink's short answers)."""
    got = b""
    while len(got) < len(want):
        data = tls.recv(len(want) - len(got))
        if not data:
            raise ConnectionError(f"closed after {got!r}, expecting {want!r}")
        got += data
    if got != want:
        raise ConnectionError(f"got {got!r}, expecting {want!r}")


def bulk(port: int, size: int, up: bool, timeout: float) -> tuple[float, str]:
    """MB/s (10^6 bytes) of SIZE bytes through one connection, and its TLS version and cipher.

    Up: timed from the first byte sent until the sink says it has them all.
    Down: from the request until the last byte has arrived here.
    """
    chunk = memoryview(os.urandom(1 << 20))
    with tls_connect(port, client_context(), timeout) as tls:
        version, cipher = tls.version() or "?", (tls.cipher() or ("?",))[0]
        started = time.monotonic()
        tls.sendall(f"{'UP' if up else 'DOWN'} {size}\n".encode())
        left = size
        if up:
            while left > 0:
                part = chunk[: min(left, len(chunk))]
                tls.sendall(part)
                left -= len(part)
            read_exactly(tls, b"OK\n")
        else:
            buf = bytearray(1 << 20)
            while left > 0:
                got = tls.recv_into(buf)
                if got == 0:
                    raise ConnectionError(f"closed with {left} bytes to come")
                left -= got
        elapsed = time.monotonic() - started
    return size / elapsed / 1e6, f"{version} {cipher}"


def resumes(port: int, version: ssl.TLSVersion, ticket: bool, timeout: float) -> str:
    """Whether a second connection resumes the first one's session: "yes", or "no" and why.

    The first connection echoes a line, because TLS 1.3 tickets arrive after the handshake.
    Without a ticket (OP_NO_TICKET) TLS 1.2 can only resume by session ID.
    """
    ctx = client_context(version)
    if not ticket:
        ctx.options |= ssl.OP_NO_TICKET
    with tls_connect(port, ctx, timeout) as tls:
        tls.sendall(b"ping\n")
        read_exactly(tls, b"ping\n")
        session = tls.session
        try:  # close_notify: OpenSSL drops a session from the cache after a bare EOF
            tls.unwrap()
        except OSError:
            pass
    if session is None or ticket and not session.has_ticket:
        return "no (no ticket)" if ticket else "no (no session)"
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    with ctx.wrap_socket(sock, session=session) as tls:
        return "yes" if tls.session_reused else "no"


def idle_memory(front: Front, count: int, timeout: float) -> tuple[float, float]:
    """RSS and PSS (KiB) of the front with COUNT idle TLS connections, each echoed once."""
    conns: list[ssl.SSLSocket] = []
    ctx = client_context()
    try:
        for _ in range(count):
            conns.append(tls_connect(front.port, ctx, timeout))
        for tls in conns:
            tls.sendall(b"ping\n")
        for tls in conns:
            read_exactly(tls, b"ping\n")
        time.sleep(1.0)  # let the front settle (no work is pending: every echo is back)
        sampler = RssSampler(front.pids)
        sampler.sample()
        return sampler.peak_kib, sampler.peak_pss_kib
    finally:
        for tls in conns:
            tls.close()


# --- one round ---------------------------------------------------------------------------------


def run_round(front: Front, rnd: int, args: argparse.Namespace, workdir: Path) -> Round:
    """A fresh sink and front; memory with idle connections, then handshakes, then bulk."""
    result = Round(front.name, rnd)
    figures, notes = result.figures, result.notes
    rundir = workdir / f"{front.name}-round{rnd}"
    sink: subprocess.Popen[bytes] | None = None
    try:
        (rundir / "sink").mkdir(parents=True)
        front.backend = free_port()
        sink = start_sink(rundir / "sink", front.backend, time.monotonic() + args.start_timeout)
        front.start(rundir / "front", free_port(), time.monotonic() + args.start_timeout)
        sampler = RssSampler(front.pids)
        sampler.sample()
        figures["rss0"] = sampler.peak_kib / 1024
        rss, pss = idle_memory(front, args.idle, args.timeout)
        figures["rss_idle"], figures["pss_idle"] = rss / 1024, pss / 1024
        figures["kib_conn"] = (rss - sampler.peak_kib) / args.idle
        notes["resume"] = ", ".join(
            f"{label} {resumes(front.port, version, ticket, args.timeout)}"
            for label, version, ticket in (("1.2 session ID", ssl.TLSVersion.TLSv1_2, False),
                                           ("1.2 ticket", ssl.TLSVersion.TLSv1_2, True),
                                           ("1.3 ticket", ssl.TLSVersion.TLSv1_3, True)))
        time.sleep(1.0)  # the idle connections' closes are handled before the clock starts
        for key, _, flags, clients in HANDSHAKES:
            before = cpu_seconds(front.pids())
            rate, total, resumed = s_time(front.port, flags, args.seconds, clients or args.clients)
            figures[key] = rate
            figures[f"{key}_cpu"] = (cpu_seconds(front.pids()) - before) * 1000 / total
            if "-reuse" in flags:
                notes[key] = f"{resumed}/{total}"
        for key, up in (("up", True), ("down", False)):
            before = cpu_seconds(front.pids())
            figures[key], notes["cipher"] = bulk(front.port, args.bulk, up, args.timeout)
            figures[f"{key}_cpu"] = (cpu_seconds(front.pids()) - before) / (args.bulk / 1e9)
    except (Unavailable, OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        if front.proc is not None:
            result.error += f"\n{tail(front.log())}"
    finally:
        front.stop()
        if sink is not None:
            stop_process(sink)
    if not args.keep:
        shutil.rmtree(rundir, ignore_errors=True)
    return result


# --- the report --------------------------------------------------------------------------------


def rows(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(key, label, target ratio) for every figure, in report order."""
    out = [(k, label.format(n=args.clients), ">= 0.8") for k, label, _, _ in HANDSHAKES]
    out += [
        ("up", "bulk MB/s up (client -> sink), one connection", ">= 0.5"),
        ("down", "bulk MB/s down (sink -> client), one connection", ">= 0.5"),
        ("rss0", "RSS MiB at start", ""),
        ("rss_idle", f"RSS MiB with {args.idle} idle TLS connections", ""),
        ("pss_idle", f"PSS MiB with {args.idle} idle TLS connections", ""),
        ("kib_conn", "RSS KiB per idle connection", ""),
        ("full13_cpu", "front CPU ms per full handshake (TLS 1.3, 1 s_time)", ""),
        ("resumed12_cpu", "front CPU ms per resumed handshake (TLS 1.2)", ""),
        ("up_cpu", "front CPU s per GB up", ""),
        ("down_cpu", "front CPU s per GB down", ""),
    ]
    return out


def versions(venv: Path) -> str:
    """What was measured: figures without versions cannot be compared later."""
    probe = ("import platform, twisted, OpenSSL, cryptography; print(platform.python_version(),"
             " twisted.__version__, OpenSSL.__version__, cryptography.__version__)")
    py = (_output([str(venv / "bin" / "python"), "-c", probe]) + " ? ? ? ?").split()
    said = _output([STUNNEL, "-version"], stderr=True).splitlines()
    stunnel = next((line.split(" on ")[0] for line in said if line.startswith("stunnel ")), "")
    # rev-parse only reads: the checkout is shared and its index is not ours to touch.
    commit = _output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "no commit"
    openssl = _output(["openssl", "version"])
    return (f"mailgateway {commit} (working tree), Python {py[0]}, Twisted {py[1]}, "
            f"pyOpenSSL {py[2]}, cryptography {py[3]}, {stunnel or 'stunnel ?'}, {openssl}")


def _output(argv: list[str], stderr: bool = False) -> str:
    """A command's output (stdout, or stderr if asked), or "" when it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stderr if stderr else done.stdout).decode(errors="replace").strip()


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    digits = 0 if abs(value) >= 100 else 2 if abs(value) < 10 else 1
    return f"{value:,.{digits}f}"


def report(args: argparse.Namespace, names: list[str], results: dict[str, list[Round]],
           command: str, venv: Path, interrupted: bool) -> str:
    """Medians with min-max per front, the ratio mailgateway/stunnel, the resumption check."""
    ok = {n: [r for r in results[n] if not r.error] for n in names}
    lines = [
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}, host {socket.gethostname()}, "
        f"{os.cpu_count()} CPUs",
        f"Command: `{command}`",
        f"Versions: {versions(venv)}",
        f"Setup: one {args.key_type} certificate for both fronts, TLS 1.2 minimum, TLS 1.2 "
        f"ciphers `{CIPHERS}`, server order; backend: the asyncio sink `bench/peers.py "
        "sink`, fresh per round; mailgateway front: `mailgateway tlsfront --config` with "
        "one [[tlsfront]] "
        f"(proxy none, max_connections and max_connections_per_client {args.idle + 200}, "
        "max_handshakes_per_second 1000000); stunnel: foreground = quiet, syslog = no, "
        "same ciphers, CIPHER_SERVER_PREFERENCE",
        f"Load: s_time -time {args.seconds} per handshake figure, {args.bulk / 1e6:g} MB each "
        f"way through one connection, {args.idle} idle connections; {args.rounds} rounds "
        "(fronts in turn, each fresh), medians",
        "",
    ]
    head = "| figure |" + "".join(f" {n} | min-max |" for n in names)
    pair = "mailgateway" in names and "stunnel" in names
    lines += [head + (" mailgateway/stunnel | target |" if pair else ""),
              "|---|" + "---:|---:|" * len(names) + ("---:|---|" if pair else "")]
    med: dict[str, dict[str, float | None]] = {n: {} for n in names}
    for key, label, target in rows(args):
        cells = f"| {label} |"
        for n in names:
            values = [r.figures[key] for r in ok[n] if key in r.figures]
            med[n][key] = statistics.median(values) if values else None
            spread = f"{fmt(min(values))}-{fmt(max(values))}" if values else "-"
            cells += f" {fmt(med[n][key])} | {spread} |"
        if pair:
            gw, st = med["mailgateway"][key], med["stunnel"][key]
            cells += f" {'-' if gw is None or not st else f'{gw / st:.2f}'} | {target} |"
        lines.append(cells)
    lines += ["", "| front | TLS 1.2 -reuse: resumed/connections | TLS 1.3 -reuse -www: "
              "resumed/connections | a second connection resumes (Python ssl) "
              "| bulk connection |", "|---|---:|---:|---|---|"]
    for n in names:
        sums = {}
        for key in ("resumed12", "resumed13www"):
            pairs = [tuple(map(int, r.notes[key].split("/"))) for r in ok[n] if key in r.notes]
            sums[key] = f"{sum(p[0] for p in pairs)}/{sum(p[1] for p in pairs)}"
        ciphers = sorted({r.notes.get("cipher", "?") for r in ok[n]})
        resumed = sorted({r.notes.get("resume", "?") for r in ok[n]})
        lines.append(f"| {n} | {sums['resumed12']} | {sums['resumed13www']} "
                     f"| {'; '.join(resumed)} | {', '.join(ciphers)} |")
    lines += report_footer([r for n in names for r in results[n]], interrupted,
                           label="front")
    return "\n".join(lines) + "\n"


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Figures and their meaning: bench/README.md. Results log: bench/RESULTS.md.")
    parser.add_argument("--fronts", default="stunnel,mailgateway",
                        help="comma-separated subset of stunnel,mailgateway")
    parser.add_argument("--rounds", "-r", type=int, default=3, help="rounds per front (3)")
    parser.add_argument("--seconds", type=int, default=5, help="s_time -time per figure (5)")
    parser.add_argument("--clients", type=int, default=4, help="s_time processes at once (4)")
    parser.add_argument("--bulk", type=int, default=500_000_000, help="bytes each way (500 MB)")
    parser.add_argument("--idle", type=int, default=1000, help="idle connections (1000)")
    parser.add_argument("--key-type", choices=("rsa2048", "p256"), default="rsa2048")
    parser.add_argument("--venv", type=Path, help="default: REPO/.venv, else /tmp/v")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per socket step")
    parser.add_argument("--start-timeout", type=float, default=60)
    parser.add_argument("--workdir", type=Path, help="parent of the run's temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the run's folders and logs")
    parser.add_argument("--append", type=Path, metavar="FILE", help="append the report to FILE")
    args = parser.parse_args(argv)
    for name in ("rounds", "seconds", "clients", "bulk", "idle"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    args.fronts = [f.strip().lower() for f in args.fronts.split(",") if f.strip()]
    if set(args.fronts) - {"stunnel", "mailgateway"}:
        parser.error("--fronts: stunnel and/or mailgateway")
    return args


def make_cert(folder: Path, key_type: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, shared by both fronts."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    kind = ["rsa:2048"] if key_type == "rsa2048" else ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    subprocess.run(["openssl", "req", "-x509", "-newkey", *kind, "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], capture_output=True, check=True)
    return cert, key


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line("tlsfront_bench.py", argv)
    venv = pick_venv(args.venv)
    # Each idle connection is a client socket here and two sockets in the front.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 3 * args.idle + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 3 * args.idle + 200), hard))
    workdir = make_workdir(args.workdir, "tlsfront-bench-")

    def make() -> list[Front]:
        cert, key = make_cert(workdir, args.key_type)
        return usable(Stunnel(workdir, cert, key, args.idle) if name == "stunnel" else
                      GatewayFront(workdir, cert, key, args.idle, venv) for name in args.fronts)

    fronts, results, interrupted = run_in_turn(
        make, args.rounds, lambda front, rnd: run_round(front, rnd, args, workdir),
        lambda res: ", ".join(f"{k} {fmt(v)}" for k, v in res.figures.items()),
        workdir, args.keep)
    names = [f.name for f in fronts]
    return publish(results, interrupted,
                   lambda: report(args, names, results, command, venv, interrupted),
                   args.append, ": TLS front beside stunnel")


if __name__ == "__main__":
    sys.exit(main())
