"""Relay throughput: mailgateway and Postfix relaying the same load to Postfix's smtp-sink.

Why this shape (issue 4, "Speed"): outbound relay is judged end to end, from
the first message injected to the last one received by the remote side. Each
round starts a fresh smtp-sink (the "remote" servers of 50 domains, all
routed to it) and a fresh relay in front of it; Postfix's smtp-source injects
the same load into each relay's SMTP port; the sink's own running counter
(`smtp-sink -c`) tells when everything has arrived. Relays take turns round
after round on this small, noisy machine; the report gives medians and the
ratios mailgateway / Postfix.

For each relay and round:
  msg/s            messages / seconds from the first injection until the sink
                   counted them all (relay throughput)
  injected s       until the last smtp-source exited (every message queued, 250)
  peak RSS / PSS   the largest sum over the relay's processes (sink and
                   injectors not counted), sampled every 0.1 s

--dkim (issue 15): both relays sign what they relay with an RSA-2048 key of the
sender's domain: mailgateway with one from `mailgateway dkim keygen` ([dkim],
gateway/sign/), Postfix through OpenDKIM as its milter (Debian packages
opendkim, opendkim-tools; key from opendkim-genkey), the way a site runs it.
The sink then keeps each message (smtp-sink -d, for both relays alike) and
the report counts the signed ones ("signed"), so an unsigned round shows.
OpenDKIM's process counts in Postfix's CPU and memory.

This is a benchmark, not a test: it prints figures and never judges them.
Everything it starts is stopped at the end, on Ctrl-C and on errors too.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import (  # noqa: E402  (bench/ is not a package: found via the line above)
    LOOPBACK,
    Mailgateway,
    Postfix,
    RssSampler,
    Server,
    Unavailable,
    cpu_seconds,
    free_port,
    report_footer,
    stop_process,
    tail,
    toml_dumps,
    wait_banner,
)
from rounds import (  # noqa: E402
    REPO,
    command_line,
    open_workdir,
    parse_set,
    pick_venv,
    publish,
    run_in_turn,
    say,
    usable,
)
from smtp_accept import (  # noqa: E402  (its helpers: same conventions, same report format)
    ensure_postfix,
    fmt,
    median,
    ratio,
    start_profile,
    stop_profile,
)
from smtp_accept import versions as accept_versions  # noqa: E402

SMTP_SOURCE = Path("/usr/sbin/smtp-source")
SMTP_SINK = Path("/usr/sbin/smtp-sink")
OPENDKIM = Path("/usr/sbin/opendkim")
OPENDKIM_GENKEY = Path("/usr/sbin/opendkim-genkey")
TRUSTED = "127.0.0.0/8"
SELECTOR = "bench"


def relay_domains(count: int) -> list[str]:
    """The remote domains of the load; none resolves anywhere, all are routed to the sink."""
    return [f"d{i:02d}.relay.test" for i in range(1, count + 1)]


# --- the remote side --------------------------------------------------------------------------


class Sink:
    """smtp-sink with its running counter (`-c`, "sess=N quit=N mesg=N\\r") read from a pipe.

    The counter is smtp-sink's own: messages it answered 250 after the final
    dot. A reader thread notes the moment it reaches the expected count.
    """

    _MESG = re.compile(rb"mesg=(\d+)")

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.count = 0
        self.target = 0
        self.reached: float | None = None
        self._reached = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self, port: int, deadline: float, dump: Path | None = None) -> None:
        self.port, self.count, self.reached = port, 0, None
        self._reached.clear()
        argv = [str(SMTP_SINK), "-c"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # smtp-sink refuses to keep root privileges
        if dump is not None:
            dump.mkdir(parents=True)
            dump.chmod(0o777)  # written by smtp-sink as nobody
            argv += ["-d", f"{dump}/%H%M%S."]  # one file per message
        argv += [f"{LOOPBACK}:{port}", "1024"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self._reader = threading.Thread(target=self._read, name="sink-counter", daemon=True)
        self._reader.start()
        wait_banner(port, deadline, alive=lambda: bool(self.proc and self.proc.poll() is None))

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        stream, rest = self.proc.stdout, b""
        while chunk := stream.read1(65536):
            *lines, rest = (rest + chunk).split(b"\r")  # a read may end inside a line
            found = self._MESG.findall(b"\r".join(lines))
            if found:
                self.count = int(found[-1])
                if self.target and self.count >= self.target and self.reached is None:
                    self.reached = time.monotonic()
                    self._reached.set()

    def wait(self, deadline: float, alive: Callable[[], bool]) -> bool:
        """Wait until the target is reached; False at the deadline or when ALIVE turns false."""
        while not self._reached.wait(0.05):
            if time.monotonic() >= deadline or not alive():
                return False
        return True

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=5)
            if self._reader is not None:
                self._reader.join(timeout=5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


# --- the relays --------------------------------------------------------------------------------


class RelayGateway(Mailgateway):
    """mailgateway relaying the domains to the sink: the settings a user would set for that.

    [server] trusted_networks lets the local injector relay (loopback is not
    trusted by default); [relay.routes] sends each domain to the sink,
    transport(5) style; [relay] tls "none" (smtp-sink has no STARTTLS);
    nameservers point at a closed loopback port, so no lookup can leave.
    """

    def __init__(self, args: argparse.Namespace, workdir: Path, venv: Path,
                 label: str = "", more: tuple[tuple[str, str, Any], ...] = ()) -> None:
        super().__init__(workdir, args.recipient, venv, REPO, args.sessions)
        self.args = args
        self.sink_port = 0
        if label:
            self.name = f"mailgateway-{label}"
        self.more = more  # --variant's settings (SECTION, KEY, TOML value)

    def settings_text(self) -> str:
        a = self.args
        return (
            f'[server] trusted_networks = ["{TRUSTED}"]; [queue] concurrency = '
            f'{a.queue_concurrency}; [relay] tls = "none", concurrency = {a.relay_concurrency}, '
            f"destination_concurrency = {a.destination_concurrency}; [relay.routes] "
            f'"dNN.relay.test" = "[127.0.0.1]:SINK" for the {a.domains} domains; the rest as '
            "in gateway/default.toml"
            + ("; an RSA-2048 key for the sender's domain (`mailgateway dkim keygen`), [dkim] "
               "sign = true (its default)" if a.dkim else "")
        )

    def write_config(self, path: Path, state: Path, port: int) -> None:
        super().write_config(path, state, port)
        with open(path, "rb") as fh:
            settings = tomllib.load(fh)
        settings.setdefault("server", {})["trusted_networks"] = [TRUSTED]
        settings.setdefault("queue", {})["concurrency"] = self.args.queue_concurrency
        settings.setdefault("relay", {}).update(
            tls="none", nameservers=[LOOPBACK], dns_port=free_port(),
            concurrency=self.args.relay_concurrency,
            destination_concurrency=self.args.destination_concurrency,
            routes={d: f"[{LOOPBACK}]:{self.sink_port}" for d in relay_domains(self.args.domains)},
        )
        settings["tlsfront"] = []  # no TLS front: only the SMTP listener runs
        for section, key, value in self.more:
            settings.setdefault(section, {})[key] = value
        path.write_text("# Written by bench/relay_bench.py\n" + toml_dumps(settings))
        if self.args.dkim:
            domain = self.args.sender.rpartition("@")[2]
            done = subprocess.run(
                [*self.cli(), "dkim", "keygen", domain, "--selector", SELECTOR, "--algorithm",
                 "rsa", "--config", str(path)],
                cwd=path.parent, env=self.env(), capture_output=True, timeout=120, check=False)
            if done.returncode != 0:
                raise Unavailable(f"`mailgateway dkim keygen` failed: {done.stderr.decode()}")


class RelayPostfix(Postfix):
    """A private Postfix relaying the domains to the sink (relay_domains + transport_maps).

    Postfix's own defaults otherwise: smtp_destination_concurrency_limit 20
    (the sink is one next hop for all domains), default_process_limit 100,
    connection cache on demand, fsync of queue files.
    """

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        super().__init__(workdir, args.recipient, args.sessions)
        self.domains = relay_domains(args.domains)
        self.sink_port = 0
        self.dkim = args.dkim
        self.sender_domain = args.sender.rpartition("@")[2]
        self.opendkim: subprocess.Popen[bytes] | None = None
        self.opendkim_dir: Path | None = None

    def check(self) -> None:
        super().check()
        if self.dkim:
            for tool in (OPENDKIM, OPENDKIM_GENKEY):
                if not os.access(tool, os.X_OK):
                    raise Unavailable(f"{tool} is missing (Debian packages opendkim, "
                                      "opendkim-tools)")

    def settings_text(self) -> str:
        return (
            f"mynetworks = {TRUSTED}, smtpd_relay_restrictions = permit_mynetworks, "
            "reject_unauth_destination, relay_domains = the domains, transport_maps = texthash "
            '"dNN.relay.test smtp:[127.0.0.1]:SINK", smtp_tls_security_level = none; the rest '
            "Postfix's defaults (bench/peers.py MAIN_CF)"
            + ("; smtpd_milters = OpenDKIM (inet, loopback), milter_default_action = tempfail; "
               "opendkim.conf: Mode s, Domain/Selector/KeyFile (opendkim-genkey -b 2048), "
               "Canonicalization relaxed/relaxed, InternalHosts 127.0.0.0/8, OversignHeaders "
               "From (Debian's), the rest OpenDKIM's defaults" if self.dkim else "")
        )

    def _start_opendkim(self, deadline: float) -> str:
        """OpenDKIM in the foreground on a loopback port; the milter address for Postfix."""
        # OpenDKIM refuses a configuration or key below a folder others may write (the
        # work folder is in /tmp): its files go to a private folder in /run.
        folder = Path(tempfile.mkdtemp(prefix="mailgateway-bench-opendkim-", dir="/run"))
        self.opendkim_dir = folder
        done = subprocess.run([str(OPENDKIM_GENKEY), "-b", "2048", "-d", self.sender_domain,
                               "-s", SELECTOR, "-D", str(folder)],
                              capture_output=True, timeout=120, check=False)
        if done.returncode != 0:
            raise Unavailable(f"opendkim-genkey failed: {done.stderr.decode(errors='replace')}")
        key = folder / f"{SELECTOR}.private"
        user = pwd.getpwnam("opendkim") if _has_user("opendkim") else pwd.getpwnam("nobody")
        os.chown(folder, user.pw_uid, user.pw_gid)
        os.chown(key, user.pw_uid, user.pw_gid)
        key.chmod(0o600)
        port = free_port()
        conf = folder / "opendkim.conf"
        conf.write_text(
            "Syslog no\nMode s\nCanonicalization relaxed/relaxed\n"
            f"Domain {self.sender_domain}\nSelector {SELECTOR}\nKeyFile {key}\n"
            f"Socket inet:{port}@{LOOPBACK}\nInternalHosts 127.0.0.0/8\n"
            f"OversignHeaders From\nUserID {user.pw_name}\nPidFile {folder}/pid\n"
            "Background no\n")
        with open(folder / "opendkim.log", "ab") as log:
            self.opendkim = subprocess.Popen(
                [str(OPENDKIM), "-f", "-x", str(conf)], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            with socket.socket() as probe:
                if probe.connect_ex((LOOPBACK, port)) == 0:
                    break
            if self.opendkim.poll() is not None or time.monotonic() >= deadline:
                raise Unavailable(f"opendkim did not listen: {tail(folder / 'opendkim.log')}")
            time.sleep(0.05)
        return f"inet:{LOOPBACK}:{port}"

    def pids(self) -> list[int]:
        extra = [self.opendkim.pid] if self.opendkim and self.opendkim.poll() is None else []
        return super().pids() + extra

    def stop(self) -> None:
        super().stop()
        if self.opendkim is not None:
            stop_process(self.opendkim, grace=5)
            self.opendkim = None
        if self.opendkim_dir is not None:
            shutil.rmtree(self.opendkim_dir, ignore_errors=True)
            self.opendkim_dir = None

    def _postfix(self, command: str, timeout: float) -> None:
        if command == "start":
            # postconf -e edits peers.MAIN_CF in place (a repeated key would warn in every log).
            transport = self.confdir / "transport"
            hop = f"smtp:[{LOOPBACK}]:{self.sink_port}"
            transport.write_text("".join(f"{d} {hop}\n" for d in self.domains))
            argv = ["/usr/sbin/postconf", "-c", str(self.confdir), "-e", f"mynetworks = {TRUSTED}",
                    "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
                    f"relay_domains = {', '.join(self.domains)}",
                    f"transport_maps = texthash:{transport}", "smtp_tls_security_level = none"]
            if self.dkim:
                milter = self._start_opendkim(time.monotonic() + timeout)
                argv += [f"smtpd_milters = {milter}", "milter_default_action = tempfail"]
            done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
            if done.returncode != 0:
                raise Unavailable(f"postconf -e failed: {done.stderr.decode(errors='replace')}")
        super()._postfix(command, timeout)


# --- one round ----------------------------------------------------------------------------------


@dataclass
class Round:
    """One relay's figures for one round; error is set when the round is not usable."""

    server: str
    number: int
    rate: float = 0.0
    inject_s: float = 0.0
    last_s: float | None = None
    rss_mib: float = 0.0
    pss_mib: float = 0.0
    cpu_ms: float | None = None
    received: int = 0
    signed: int | None = None  # --dkim: messages at the sink with the sender domain's signature
    error: str = ""


def inject(port: int, args: argparse.Namespace, deadline: float) -> str:
    """smtp-source into PORT: one process per domain, --sessions of them at a time.

    smtp-source sends to a single recipient domain, so the domains are spread
    over processes; each keeps one session, like `smtp-source -s N` does.
    Returns "" or what went wrong.
    """
    domains = relay_domains(args.domains)
    share, extra = divmod(args.messages, len(domains))
    jobs = deque((d, share + (i < extra)) for i, d in enumerate(domains) if share + (i < extra))
    running: list[tuple[subprocess.Popen[bytes], str]] = []
    errors: list[str] = []
    try:
        while jobs or running:
            while jobs and len(running) < args.sessions:
                domain, count = jobs.popleft()
                argv = [str(SMTP_SOURCE), "-l", str(args.size), "-m", str(count), "-s", "1"]
                argv += ["-f", args.sender, "-t", f"user@{domain}", f"{LOOPBACK}:{port}"]
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=PIPE, start_new_session=True)  # stop_process: group
                running.append((proc, domain))
            still = []
            for proc, domain in running:
                code = proc.poll()
                if code is None:
                    still.append((proc, domain))
                    continue
                assert proc.stderr is not None
                if code != 0:
                    err = proc.stderr.read().decode(errors="replace").strip().splitlines()
                    errors.append(f"smtp-source to {domain} exited {code}: {' | '.join(err[-2:])}")
                proc.stderr.close()
            running = still
            if time.monotonic() >= deadline:
                errors.append(f"injection did not finish within {args.timeout:.0f} s")
                break
            time.sleep(0.005)
    finally:
        for proc, _ in running:
            stop_process(proc, grace=2)
            if proc.stderr is not None:
                proc.stderr.close()
    return "; ".join(errors[:3])


def run_round(
    server: RelayGateway | RelayPostfix, rnd: int, args: argparse.Namespace, venv: Path,
    workdir: Path,
) -> Round:
    """Fresh sink, fresh relay; inject; wait for the sink's count; stop both."""
    result = Round(server.name, rnd)
    rundir = workdir / f"{server.name}-round{rnd}"
    os.sync()  # the previous round's dirty pages must not be written back during this one
    sink = Sink()
    sampler: RssSampler | None = None
    profile = None
    try:
        dump = rundir.parent / f"{rundir.name}-sink" if args.dkim else None
        sink.start(free_port(), time.monotonic() + args.start_timeout, dump)
        server.sink_port = sink.port
        server.start(rundir, free_port(), time.monotonic() + args.start_timeout)
        sampler = RssSampler(server.pids)
        sampler.start()
        profile = start_profile(args, venv, server, rnd)
        cpu_before = cpu_seconds(server.pids())
        sink.target = args.messages  # the readiness probe made a session, never a message
        started = time.monotonic()
        result.error = inject(server.port, args, started + args.timeout)
        result.inject_s = time.monotonic() - started
        if sink.wait(time.monotonic() + args.timeout, alive=lambda: bool(server.pids())):
            assert sink.reached is not None
            result.last_s = sink.reached - started
            result.rate = args.messages / result.last_s
        elif not result.error:
            result.error = f"the sink counted only {sink.count} of {args.messages} in time"
        result.cpu_ms = (cpu_seconds(server.pids()) - cpu_before) * 1000 / args.messages
        time.sleep(0.5)  # a duplicate delivery in flight would show in the final count
    except Unavailable as exc:
        result.error = f"did not start: {exc}"
    finally:
        stop_profile(profile)
        if sampler is not None:
            rss, pss = sampler.finish()
            result.rss_mib, result.pss_mib = rss / 1024, pss / 1024
        server.stop()
        sink.stop()
    result.received = sink.count
    if dump is not None:
        result.signed = count_signed(dump, args.sender.rpartition("@")[2])
        shutil.rmtree(dump, ignore_errors=True)
        if result.signed < result.received and not result.error:
            result.error = f"only {result.signed} of {result.received} arrived signed"
    if result.received > args.messages and not result.error:
        result.error = f"the sink got {result.received} for {args.messages} sent (duplicates)"
    if result.error and args.keep:
        say(tail(server.log()))
    if not args.keep:
        shutil.rmtree(rundir, ignore_errors=True)
    return result


def count_signed(dump: Path, domain: str) -> int:
    """Messages smtp-sink kept whose header has a DKIM-Signature with d=domain."""
    pattern = re.compile(rb"^DKIM-Signature:(?:.|\r?\n[ \t])*?\bd=" + re.escape(domain.encode())
                         + rb";", re.M | re.I)
    signed = 0
    for path in dump.iterdir():
        data = path.read_bytes()
        end = data.find(b"\n\n")
        if pattern.search(data if end < 0 else data[:end]):
            signed += 1
    return signed


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# --- the report ---------------------------------------------------------------------------------


def versions(venv: Path) -> str:
    """smtp_accept's versions line, without aiosmtpd (not measured here)."""
    return accept_versions(venv).split(", aiosmtpd")[0] + " (its smtp-source and smtp-sink)"


def summarize(rounds: list[Round]) -> dict[str, float | None]:
    """Medians over a relay's usable rounds (no error)."""
    ok = [r for r in rounds if not r.error]
    sums: dict[str, float | None] = {
        key: median([v for r in ok if (v := getattr(r, key)) is not None])
        for key in ("rate", "inject_s", "last_s", "rss_mib", "pss_mib", "cpu_ms")
    }
    sums["rate_min"] = min((r.rate for r in ok), default=None)
    sums["rate_max"] = max((r.rate for r in ok), default=None)
    sums["ok"], sums["all"] = float(len(ok)), float(len(rounds))
    return sums


def report(
    args: argparse.Namespace, servers: list[Server], results: dict[str, list[Round]],
    command: str, venv: Path, interrupted: bool,
) -> str:
    """Markdown: the load, each relay's settings, medians, ratios, failed rounds."""
    lines = [
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}, host {socket.gethostname()}, "
        f"{os.cpu_count()} CPUs",
        f"Command: `{command}`",
        f"Versions: {versions(venv)}",
        f"Load: {args.messages} messages of {args.size} bytes, one recipient each, to "
        f"{args.domains} domains (dNN.relay.test), injected by smtp-source ({args.sessions} "
        f"processes at a time, one session and one domain each) into each relay's SMTP port; "
        f"all domains routed to one smtp-sink; {args.rounds} rounds (relays in turn), medians"
        + ("; DKIM signing on (--dkim), the sink keeping each message to count the signed"
           if args.dkim else ""),
    ]
    lines += [f"Settings, {s.name}: {s.settings_text()}" for s in servers]  # type: ignore[attr-defined]
    lines += [
        "",
        "| relay | msg/s | msg/s min-max | injected s | last at sink s | CPU ms/msg "
        "| peak RSS MiB | peak PSS MiB | rounds ok |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = [s.name for s in servers]
    sums = {name: summarize(results[name]) for name in names}
    for name in names:
        s = sums[name]
        spread = f"{fmt(s['rate_min'])}-{fmt(s['rate_max'])}" if s["rate_min"] else "-"
        lines.append(
            f"| {name} | {fmt(s['rate'])} | {spread} | {fmt(s['inject_s'], 2)} "
            f"| {fmt(s['last_s'], 2)} | {fmt(s['cpu_ms'], 2)} | {fmt(s['rss_mib'], 1)} "
            f"| {fmt(s['pss_mib'], 1)} | {int(s['ok'] or 0)}/{int(s['all'] or 0)} |"
        )
    pf = sums.get("Postfix")
    ours = [n for n in names if n.startswith("mailgateway")]
    if "mailgateway" in sums and pf is not None:
        lines += [
            "",
            "| ratio | msg/s | last at sink | CPU/msg | peak RSS | peak PSS |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name in ours:
            gw = sums[name]
            lines.append(
                f"| {name}/Postfix | {ratio(gw['rate'], pf['rate'])} "
                f"| {ratio(gw['last_s'], pf['last_s'])} | {ratio(gw['cpu_ms'], pf['cpu_ms'])} "
                f"| {ratio(gw['rss_mib'], pf['rss_mib'])} "
                f"| {ratio(gw['pss_mib'], pf['pss_mib'])} |")
        lines += [
            "",
            "Issue 15's target with DKIM signing (--dkim): mailgateway/Postfix at least 1."
            if args.dkim else "Issue 4's target for msg/s: mailgateway/Postfix at least 0.5.",
        ]
    lines += report_footer([r for name in names for r in results[name]], interrupted)
    return "\n".join(lines) + "\n"


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Figures and their meaning: bench/README.md. Results log: bench/RESULTS.md.",
    )
    parser.add_argument("--messages", "-m", type=int, default=5000, help="per round (5000)")
    parser.add_argument("--domains", type=int, default=50, help="recipient domains (50)")
    parser.add_argument("--sessions", "-s", type=int, default=20, help="injectors at once (20)")
    parser.add_argument("--size", "-l", type=int, default=2048, help="payload bytes (2048)")
    parser.add_argument("--rounds", "-r", type=int, default=3, help="rounds per relay (3)")
    parser.add_argument("--servers", default="mailgateway,postfix", help="mailgateway,postfix")
    parser.add_argument("--queue-concurrency", type=int, default=50, help="[queue] (50)")
    parser.add_argument("--relay-concurrency", type=int, default=50, help="[relay] (50)")
    parser.add_argument("--destination-concurrency", type=int, default=20,
                        help="[relay] (20, Postfix's default per-destination limit)")
    parser.add_argument("--venv", type=Path, help="default: REPO/.venv, else /tmp/v")
    parser.add_argument("--sender", default="sender@example.test")
    parser.add_argument("--recipient", default="alice@example.test", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds for the injection, and again for the sink's count (300)")
    parser.add_argument("--start-timeout", type=float, default=120, help="to greet (120)")
    parser.add_argument("--workdir", type=Path, help="parent of the run's temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the run's folders and logs")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get postfix")
    parser.add_argument("--variant", action="append", default=[],
                        metavar="NAME:SECTION.KEY=VALUE;...",
                        help="also run mailgateway with these settings (VALUE in TOML), as "
                        "\"mailgateway-NAME\", in the same rounds "
                        "(runner:queue.runner_process=true)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record the gateway with py-spy into DIR (slows the gateway rounds)")
    parser.add_argument("--append", type=Path, metavar="FILE", help="append the report to FILE")
    parser.add_argument("--dkim", action="store_true",
                        help="both relays DKIM-sign (mailgateway [dkim], Postfix + OpenDKIM)")
    args = parser.parse_args(argv)
    for name in ("messages", "domains", "sessions", "size", "rounds", "queue_concurrency",
                 "relay_concurrency", "destination_concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    args.servers = [s.strip().lower() for s in args.servers.split(",") if s.strip()]
    if set(args.servers) - {"mailgateway", "postfix"}:
        parser.error("--servers takes mailgateway and/or postfix")
    return args


def make_servers(args: argparse.Namespace, venv: Path, workdir: Path) -> list[Server]:
    """The relays asked for; each checked once, or left out with the reason."""
    variants = []
    for spec in args.variant:  # the same gateway with other settings, as one more relay
        label, _, items = spec.partition(":")
        variants.append(RelayGateway(args, workdir, venv, label, tuple(
            parse_set(item) for item in items.split(";") if item.strip())))
    return usable([*variants, *(RelayGateway(args, workdir, venv) if name == "mailgateway"
                                else RelayPostfix(args, workdir) for name in args.servers)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line("relay_bench.py", argv)
    venv = pick_venv(args.venv)
    if not ensure_postfix(not args.no_install) or not SMTP_SINK.exists():
        say("Postfix's smtp-source and smtp-sink (Debian package postfix) are needed")
        return 2
    workdir = open_workdir(args.workdir, "mailgateway-relay-", venv)
    servers, results, interrupted = run_in_turn(
        lambda: make_servers(args, venv, workdir), args.rounds,
        lambda server, rnd: run_round(server, rnd, args, venv, workdir),
        lambda res: (f"{fmt(res.rate)} msg/s, injected in {fmt(res.inject_s, 2)} s, last at "
                     f"sink {fmt(res.last_s, 2)} s, CPU {fmt(res.cpu_ms, 2)} ms/msg, RSS "
                     f"{fmt(res.rss_mib, 1)} MiB, PSS {fmt(res.pss_mib, 1)} MiB, "
                     f"{res.received} at sink"
                     + (f", {res.signed} signed" if res.signed is not None else "")),
        workdir, args.keep)
    if not servers and not interrupted:
        say("no relay can run here")
        return 2
    return publish(results, interrupted,
                   lambda: report(args, servers, results, command, venv, interrupted),
                   args.append, ": relay to smtp-sink")


if __name__ == "__main__":
    sys.exit(main())
