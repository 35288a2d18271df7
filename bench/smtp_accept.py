"""SMTP acceptance throughput: mailgateway beside Postfix and aiosmtpd, same client, same run.

Why this shape: this machine is small (2 cores shared by client and servers)
and noisy, so a figure alone means little. Each round starts every server
fresh, drives it with the same independent load generator (Postfix's
smtp-source), and the servers take turns round after round; the report is
medians and ratios against the peers measured minutes apart.

For each server and round:
  msg/s             messages / wall time of smtp-source (accepted with 250)
  last in Maildir   seconds from smtp-source's start until the last message
                    is in the recipient's Maildir new/ (polled, with a deadline)
  peak RSS / PSS    the largest sum over the server's processes, sampled
                    every 0.1 s (VmHWM for a single process)

This is a benchmark, not a test: it prints figures and never judges them.
Everything it starts is stopped at the end, on Ctrl-C and on errors too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import (  # noqa: E402  (bench/ is not a package: found via the line above)
    Aiosmtpd,
    Mailgateway,
    Postfix,
    RssSampler,
    Server,
    Unavailable,
    count_dir,
    cpu_seconds,
    free_port,
    report_footer,
)
from rounds import (  # noqa: E402
    REPO,
    command_line,
    open_workdir,
    pick_venv,
    publish,
    run_in_turn,
    say,
    usable,
)

SMTP_SOURCE = Path("/usr/sbin/smtp-source")
POLICY_RC = Path("/usr/sbin/policy-rc.d")


@dataclass
class Round:
    """One server's figures for one round; error is set when the round is not usable."""

    server: str
    number: int
    rate: float = 0.0
    source_s: float = 0.0
    last_s: float | None = None
    rss_mib: float = 0.0
    pss_mib: float = 0.0
    cpu_ms: float | None = None
    delivered: int = 0
    error: str = ""


@dataclass
class Profile:
    """A py-spy recorder attached to the gateway for one round."""

    proc: subprocess.Popen[bytes]
    output: Path


# --- setting up ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Figures and their meaning: bench/README.md. Results log: bench/RESULTS.md.",
    )
    parser.add_argument("--messages", "-m", type=int, default=5000, help="per round (5000)")
    parser.add_argument("--sessions", "-s", type=int, default=20, help="parallel sessions (20)")
    parser.add_argument("--size", "-l", type=int, default=2048, help="payload bytes (2048)")
    parser.add_argument("--rounds", "-r", type=int, default=3, help="rounds per server (3)")
    parser.add_argument(
        "--servers",
        default="mailgateway,postfix,aiosmtpd",
        help="comma-separated subset of mailgateway,postfix,aiosmtpd",
    )
    parser.add_argument("--venv", type=Path, help="default: REPO/.venv, else /tmp/v")
    parser.add_argument("--sender", default="sender@example.test")
    parser.add_argument("--recipient", default="alice@example.test")
    parser.add_argument(
        "--timeout",
        type=float,
        default=600,
        help="seconds allowed for smtp-source, and again for the last delivery (600)",
    )
    parser.add_argument("--start-timeout", type=float, default=120, help="to greet (120)")
    parser.add_argument("--workdir", type=Path, help="parent of the run's temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the run's folders and logs")
    parser.add_argument(
        "--no-install", action="store_true", help="skip missing peers instead of installing"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record the gateway with py-spy into DIR (slows the gateway rounds)",
    )
    parser.add_argument("--append", type=Path, metavar="FILE", help="append the report to FILE")
    args = parser.parse_args(argv)
    for name in ("messages", "sessions", "size", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    args.servers = [s.strip().lower() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.servers) - {"mailgateway", "postfix", "aiosmtpd"}
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    return args


def ensure_postfix(install: bool) -> bool:
    """Install Debian's postfix (Postfix itself and smtp-source) unless present."""
    if SMTP_SOURCE.exists() and Path("/usr/sbin/postfix").exists():
        return True
    if not install:
        say("postfix is not installed and --no-install was given")
        return False
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        say("postfix is missing; install it as root: apt-get install postfix")
        return False
    say("installing postfix with apt-get (its system service is not started) ...")
    created = False
    if not POLICY_RC.exists():
        # Deny service starts during the install: no system Postfix on port 25.
        POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC.chmod(0o755)
        created = True
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "postfix"]):
            done = subprocess.run(argv, env=env, capture_output=True, timeout=900, check=False)
            if done.returncode != 0:
                say(f"`{' '.join(argv)}` failed:\n{done.stderr.decode(errors='replace')[-1500:]}")
                return False
    except subprocess.TimeoutExpired:
        say("apt-get took too long; giving up on postfix")
        return False
    finally:
        if created:
            POLICY_RC.unlink(missing_ok=True)
    return SMTP_SOURCE.exists()


def ensure_aiosmtpd(python: Path, install: bool) -> None:
    """pip install aiosmtpd into the venv unless it is importable there."""
    if not python.exists():
        return  # the check that follows says why aiosmtpd is left out
    probe = [str(python), "-c", "import aiosmtpd"]
    if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return
    if not install:
        return
    say(f"installing aiosmtpd into {python.parent.parent} ...")
    argv = [str(python), "-m", "pip", "install", "-q", "aiosmtpd"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        say("pip install aiosmtpd took too long")
        return
    if done.returncode != 0:
        say(f"pip install aiosmtpd failed:\n{done.stderr.decode(errors='replace')[-1500:]}")


def make_servers(args: argparse.Namespace, venv: Path, workdir: Path) -> list[Server]:
    """The servers asked for, in the order of --servers; each checked, or left out with why."""
    python = venv / "bin" / "python"
    install = not args.no_install
    servers: list[Server] = []
    for name in args.servers:
        server: Server
        if name == "mailgateway":
            server = Mailgateway(workdir, args.recipient, venv, REPO, args.sessions)
        elif name == "postfix":
            server = Postfix(workdir, args.recipient, args.sessions)
        else:
            ensure_aiosmtpd(python, install)
            server = Aiosmtpd(workdir, args.recipient, python)
        servers.append(server)
    return usable(servers)


# --- one round -------------------------------------------------------------------------------


def start_profile(args: argparse.Namespace, venv: Path, server: Server, rnd: int) -> Profile | None:
    """Attach py-spy to the gateway, if asked for and installed (pip install py-spy)."""
    if args.profile is None or not isinstance(server, Mailgateway) or not server.pids():
        return None
    pyspy = venv / "bin" / "py-spy"
    if not pyspy.exists():
        found = shutil.which("py-spy")
        if found is None:
            say("--profile: py-spy is not installed (pip install py-spy); not profiling")
            return None
        pyspy = Path(found)
    args.profile.mkdir(parents=True, exist_ok=True)
    output = args.profile / f"mailgateway-round{rnd}.txt"
    argv = [str(pyspy), "record", "--format", "raw", "--rate", "100", "--subprocesses"]
    argv += ["--output", str(output), "--pid", str(server.pids()[0])]
    with open(args.profile / "py-spy.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    time.sleep(1.0)  # py-spy needs a moment to attach; not part of any measured time
    return Profile(proc, output)


def stop_profile(profile: Profile | None) -> None:
    """SIGINT makes py-spy write its file; then it is stopped for good."""
    if profile is None:
        return
    profile.proc.send_signal(signal.SIGINT)
    try:
        profile.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        profile.proc.kill()
        profile.proc.wait(timeout=10)
    say(f"  profile: {profile.output}")


def wait_delivered(new: Path, target: int, deadline: float) -> tuple[int, float | None]:
    """Poll new/ until TARGET messages are there or DEADLINE passes: (count, when or None)."""
    count = count_dir(new)
    while count < target:
        if time.monotonic() >= deadline:
            return count, None
        time.sleep(0.02)
        count = count_dir(new)
    return count, time.monotonic()


def run_round(
    server: Server, rnd: int, args: argparse.Namespace, venv: Path, workdir: Path
) -> Round:
    """Start SERVER fresh, load it with smtp-source, wait for the Maildir, stop it."""
    result = Round(server.name, rnd)
    rundir = workdir / f"{server.name}-round{rnd}"
    os.sync()  # the previous round's dirty pages must not be written back during this one
    port = free_port()
    sampler: RssSampler | None = None
    profile: Profile | None = None
    try:
        server.start(rundir, port, time.monotonic() + args.start_timeout)
        sampler = RssSampler(server.pids)
        sampler.start()
        profile = start_profile(args, venv, server, rnd)
        cpu_before = cpu_seconds(server.pids())
        argv = [str(SMTP_SOURCE), "-c", "-m", str(args.messages)]
        argv += ["-s", str(args.sessions), "-f", args.sender, "-t", args.recipient]
        if getattr(args, "message_file", None):  # a ready message (inbound_auth_bench.py)
            argv += ["-F", str(args.message_file)]
        else:
            argv += ["-l", str(args.size)]
        argv += [f"127.0.0.1:{port}"]
        started = time.monotonic()
        try:
            done = subprocess.run(argv, capture_output=True, timeout=args.timeout, check=False)
            if done.returncode != 0:
                err = done.stderr.decode(errors="replace").strip().splitlines()
                result.error = f"smtp-source exited {done.returncode}: {' | '.join(err[-3:])}"
        except subprocess.TimeoutExpired:
            result.error = f"smtp-source did not finish within {args.timeout:.0f} s"
        finished = time.monotonic()
        result.source_s = finished - started
        result.rate = args.messages / result.source_s
        count, last = wait_delivered(
            server.maildir_new(), args.messages, time.monotonic() + args.timeout
        )
        result.cpu_ms = (cpu_seconds(server.pids()) - cpu_before) * 1000 / args.messages
        if last is not None:
            result.last_s = last - started
        elif not result.error:
            result.error = f"only {count} of {args.messages} in the Maildir after the deadline"
    except Unavailable as exc:
        result.error = f"did not start: {exc}"
    finally:
        stop_profile(profile)
        if sampler is not None:
            rss, pss = sampler.finish()
            result.rss_mib, result.pss_mib = rss / 1024, pss / 1024
        server.stop()
    # Counted after the stop: more than --messages would mean duplicate deliveries.
    result.delivered = count_dir(server.maildir_new())
    if result.delivered > args.messages and not result.error:
        result.error = f"{result.delivered} delivered for {args.messages} sent (duplicates)"
    if not args.keep:
        shutil.rmtree(rundir, ignore_errors=True)
    return result


# --- the report ------------------------------------------------------------------------------


def versions(venv: Path) -> str:
    """What was measured: figures without versions cannot be compared later."""
    probe = (
        "import platform, twisted\n"
        "try:\n    import aiosmtpd; a = aiosmtpd.__version__\n"
        "except ImportError:\n    a = '-'\n"
        "print(platform.python_version(), twisted.__version__, a)"
    )
    parts = ["?", "?", "?"]
    try:
        done = subprocess.run(
            [str(venv / "bin" / "python"), "-c", probe],
            capture_output=True,
            timeout=60,
            check=False,
        )
        parts = (done.stdout.decode().split() + parts)[:3]
    except (OSError, subprocess.TimeoutExpired):
        pass
    postfix = _output(["/usr/sbin/postconf", "-h", "mail_version"]) or "?"
    # rev-parse only reads: the checkout is shared and its index is not ours to touch.
    commit = _output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "no commit"
    return (
        f"mailgateway {commit} (working tree), Python {parts[0]}, Twisted {parts[1]}, "
        f"Postfix {postfix}, aiosmtpd {parts[2]}"
    )


def _output(argv: list[str]) -> str:
    """A command's first output line, or "" when it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = done.stdout.decode(errors="replace").splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else ""


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def summarize(rounds: list[Round]) -> dict[str, float | None]:
    """Medians over a server's usable rounds (no error)."""
    ok = [r for r in rounds if not r.error]
    return {
        "rate": median([r.rate for r in ok]),
        "rate_min": min((r.rate for r in ok), default=None),
        "rate_max": max((r.rate for r in ok), default=None),
        "source_s": median([r.source_s for r in ok]),
        "last_s": median([r.last_s for r in ok if r.last_s is not None]),
        "rss": median([r.rss_mib for r in ok]),
        "pss": median([r.pss_mib for r in ok]),
        "cpu": median([r.cpu_ms for r in ok if r.cpu_ms is not None]),
        "ok": float(len(ok)),
        "all": float(len(rounds)),
    }


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def report(
    args: argparse.Namespace,
    names: list[str],
    results: dict[str, list[Round]],
    command: str,
    venv: Path,
    interrupted: bool = False,
) -> str:
    """A Markdown table of medians, the ratios, and every failed round's reason."""
    lines = [
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}, host {socket.gethostname()}, "
        f"{os.cpu_count()} CPUs",
        f"Command: `{command}`",
        f"Versions: {versions(venv)}",
        f"Load: smtp-source, {args.messages} messages of {args.size} bytes, "
        f"{args.sessions} sessions, {args.rounds} rounds (servers in turn), medians",
        "",
        "| server | msg/s | msg/s min-max | smtp-source s | last in Maildir s "
        "| CPU ms/msg | peak RSS MiB | peak PSS MiB | rounds ok |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    sums = {name: summarize(results[name]) for name in names}
    for name in names:
        s = sums[name]
        spread = f"{fmt(s['rate_min'])}-{fmt(s['rate_max'])}" if s["rate_min"] else "-"
        lines.append(
            f"| {name} | {fmt(s['rate'])} | {spread} | {fmt(s['source_s'], 2)} "
            f"| {fmt(s['last_s'], 2)} | {fmt(s['cpu'], 2)} "
            f"| {fmt(s['rss'], 1)} | {fmt(s['pss'], 1)} "
            f"| {int(s['ok'] or 0)}/{int(s['all'] or 0)} |"
        )
    gw = sums.get("mailgateway")
    peers = [n for n in names if n != "mailgateway"]
    if gw is not None and peers:
        lines += [
            "",
            "| ratio | msg/s | last in Maildir | CPU/msg | peak RSS | peak PSS |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for peer in peers:
            p = sums[peer]
            lines.append(
                f"| mailgateway/{peer} | {ratio(gw['rate'], p['rate'])} "
                f"| {ratio(gw['last_s'], p['last_s'])} | {ratio(gw['cpu'], p['cpu'])} "
                f"| {ratio(gw['rss'], p['rss'])} "
                f"| {ratio(gw['pss'], p['pss'])} |"
            )
    lines += report_footer([r for name in names for r in results[name]], interrupted)
    return "\n".join(lines) + "\n"


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line("smtp_accept.py", argv)
    venv = pick_venv(args.venv)
    if not ensure_postfix(not args.no_install):
        say(f"{SMTP_SOURCE} (Debian package postfix) is the load generator; cannot run without it")
        return 2
    workdir = open_workdir(args.workdir, "mailgateway-bench-", venv)
    servers, results, interrupted = run_in_turn(
        lambda: make_servers(args, venv, workdir), args.rounds,
        lambda server, rnd: run_round(server, rnd, args, venv, workdir),
        lambda res: (f"{fmt(res.rate)} msg/s, last in Maildir {fmt(res.last_s, 2)} s, "
                     f"CPU {fmt(res.cpu_ms, 2)} ms/msg, RSS {fmt(res.rss_mib, 1)} MiB, "
                     f"PSS {fmt(res.pss_mib, 1)} MiB, {res.delivered} delivered"),
        workdir, args.keep)
    if not servers and not interrupted:
        say("no server can run here")
        return 2
    names = [s.name for s in servers]
    return publish(results, interrupted,
                   lambda: report(args, names, results, command, venv, interrupted),
                   args.append, "")


if __name__ == "__main__":
    sys.exit(main())
