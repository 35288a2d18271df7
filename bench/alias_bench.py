"""Aliases: program recipients and a 1,000-mailbox fan-out, mailgateway beside Postfix local(8).

Why this shape (issue 9, "Speed"): an alias is judged by the work it sets
off, not by the 250 that accepts it. Both servers get the same aliases(5)
table, written once by this script (Postfix's made into a hash map by
postalias):

  pipe: "|WORKDIR/count-prog"             (reads its input, adds a line to a count file)
  team: u0001, u0002, ... u1000           (1,000 local mailboxes)

Two tests, each on a freshly started server:

  program   smtp-source sends 2,000 messages of 2 KB (20 sessions) to pipe@;
            program deliveries/s = messages / seconds from smtp-source's start
            until the count file holds one line per message (every program
            run has ended)
  fan-out   smtplib sends one message to team@; seconds from its 250 until
            each of the 1,000 Maildirs has its copy in new/ (polled)

Postfix: local(8) expands the aliases (alias_maps, the alias database owned
by root, so commands run as default_privs = nobody, like mailgateway's
[program] user). Its 1,000 mailboxes are virtual(8) Maildirs (a second
domain, mbox.example.test): mailgateway's mailboxes are not system accounts
either, and making 1,000 UNIX users on a shared machine is out of the
question. local(8) resubmits the expanded addresses as one new queue file,
which qmgr hands to virtual(8); with UNIX users it would be the same queue
file handed to local(8) (which does more per copy: passwd, .forward, setuid).
Everything else is each server's default (Postfix: at most 2 local(8)
deliveries per recipient at once; mailgateway: [program] concurrency 10).

This is a benchmark, not a test: it prints figures and never judges them.
Everything it starts is stopped at the end, on Ctrl-C and on errors too.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import smtplib
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

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
from smtp_accept import ensure_postfix, fmt, median, start_profile, stop_profile  # noqa: E402
from smtp_accept import versions as accept_versions  # noqa: E402

SMTP_SOURCE = Path("/usr/sbin/smtp-source")
POSTALIAS = Path("/usr/sbin/postalias")
DOMAIN = "example.test"
MBOX_DOMAIN = "mbox.example.test"  # Postfix's virtual(8) mailboxes (see the docstring)
PROGRAM_ALIAS = "pipe"
FANOUT_ALIAS = "team"
TESTS = ("program", "fanout")

# Reads the whole message (as a real filter would), then counts itself: one
# O_APPEND write of two bytes, atomic among concurrent runs.
COUNT_PROG = """\
#!/bin/sh
# Written by bench/alias_bench.py: a program recipient that reads its input and exits 0.
cat > /dev/null
echo . >> {count}
"""


def mailbox_names(count: int) -> list[str]:
    return [f"u{i:04d}" for i in range(1, count + 1)]


def alias_table(program: Path, targets: list[str]) -> str:
    """The aliases(5) text both servers read (only the targets' domain differs)."""
    lines = ["# Written by bench/alias_bench.py", f'{PROGRAM_ALIAS}: "|{program}"']
    # Continuation lines, ten targets each, as a hand-written table would have them.
    rows = [", ".join(targets[i:i + 10]) for i in range(0, len(targets), 10)]
    lines.append(f"{FANOUT_ALIAS}: " + ",\n\t".join(rows))
    return "\n".join(lines) + "\n"


def make_maildirs(base: Path, names: list[str], owner: pwd.struct_passwd | None) -> list[Path]:
    """Existing, empty Maildirs (users have theirs before mail comes); their new/ folders."""
    news = []
    for name in names:
        for sub in ("tmp", "new", "cur"):
            (base / name / sub).mkdir(parents=True, mode=0o700)
        if owner is not None:
            for path in (base / name, *(base / name / s for s in ("tmp", "new", "cur"))):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        news.append(base / name / "new")
    return news


class Counter:
    """The count file the program appends to: one two-byte line per run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_bytes(b"")
        nobody = pwd.getpwnam("nobody")
        os.chown(path, nobody.pw_uid, nobody.pw_gid)  # both servers run programs as nobody
        path.chmod(0o644)

    def count(self) -> int:
        try:
            return self.path.stat().st_size // 2
        except FileNotFoundError:
            return 0


# --- the servers --------------------------------------------------------------------------------


class AliasGateway(Mailgateway):
    """mailgateway with [aliases] file = the table, 1,000 users, default settings otherwise.

    The users file gets one line per mailbox: the first made by `mailgateway
    user add`, the others copying its hash (the scrypt cost is 1,000 x 0.1 s
    otherwise, for passwords nobody uses here).
    """

    def __init__(self, args: argparse.Namespace, workdir: Path, venv: Path,
                 repo: Path = REPO, name: str = "mailgateway") -> None:
        super().__init__(workdir, f"{PROGRAM_ALIAS}@{DOMAIN}", venv, repo, args.sessions)
        self.name = name
        self.args = args
        self.aliases = workdir / "aliases.mailgateway"
        self.news: list[Path] = []

    def settings_text(self) -> str:
        return ("[aliases] file = the table (targets uNNNN); users uNNNN@example.test with "
                "existing Maildirs; the rest as in gateway/default.toml ([program] user nobody, "
                f"concurrency {self.program_concurrency()}; [queue] concurrency "
                f"{self.queue_concurrency()}, sync filesystem)")

    def _defaults(self) -> dict:
        with open(self.default_config, "rb") as fh:
            return tomllib.load(fh)

    def program_concurrency(self) -> int:
        return int(self._defaults().get("program", {}).get("concurrency", 0))

    def queue_concurrency(self) -> int:
        return int(self._defaults().get("queue", {}).get("concurrency", 0))

    def write_config(self, path: Path, state: Path, port: int) -> None:
        super().write_config(path, state, port)
        with open(path, "rb") as fh:
            settings = tomllib.load(fh)
        settings.setdefault("aliases", {})["file"] = str(self.aliases)
        settings["tlsfront"] = []  # only the SMTP listener runs
        path.write_text("# Written by bench/alias_bench.py\n" + toml_dumps(settings))

    def start(self, rundir: Path, port: int, deadline: float) -> None:
        self.rundir, self.port = rundir, port
        rundir.mkdir(parents=True)
        config = rundir / "mailgateway.toml"
        state = rundir / "state"
        self.write_config(config, state, port)
        names = mailbox_names(self.args.mailboxes)
        done = subprocess.run(
            [*self.cli(), "user", "add", f"{names[0]}@{DOMAIN}", "--password-stdin",
             "--config", str(config)],
            cwd=rundir, env=self.env(), input=(self.password + "\n").encode(),
            capture_output=True, timeout=max(1.0, deadline - time.monotonic()), check=False)
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace").strip()
            raise Unavailable(f"`mailgateway user add` failed ({done.returncode}): {out[-800:]}")
        users = state / "users"
        text = users.read_text()
        first = next(line for line in text.splitlines() if line.startswith(names[0] + "@"))
        stored = first.rpartition(":")[2]
        users.write_text(text + "".join(f"{n}@{DOMAIN}:{stored}\n" for n in names[1:]))
        self.news = make_maildirs(state / "mail" / DOMAIN, names, None)
        os.sync()  # no writeback of the set-up while the server is measured
        self.serve(config, port, deadline)


class AliasPostfix(Postfix):
    """A private Postfix whose local(8) reads the same table from a postalias hash map.

    mydestination = example.test, alias_maps = alias_database = hash:aliases,
    local_recipient_maps = $alias_maps (unknown names refused at RCPT, as
    mailgateway does; no passwd lookup), local_transport = local; the
    mailboxes: virtual_mailbox_domains = mbox.example.test with 1,000 Maildir
    entries. Postfix's defaults otherwise (queue file fsync, default_privs
    nobody, local_destination_concurrency_limit 2).
    """

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        super().__init__(workdir, f"{PROGRAM_ALIAS}@{DOMAIN}", args.sessions)
        self.args = args
        self.aliases_text = ""
        self.news: list[Path] = []

    def check(self) -> None:
        super().check()
        if not POSTALIAS.exists():
            raise Unavailable(f"{POSTALIAS} is missing (Debian package postfix)")

    def settings_text(self) -> str:
        return ("mydestination = example.test, alias_maps = alias_database = hash:aliases "
                "(postalias), local_recipient_maps = $alias_maps, local_transport = local, "
                "virtual_mailbox_domains = mbox.example.test (targets uNNNN@mbox.example.test, "
                "existing Maildirs); the rest Postfix's defaults (bench/peers.py MAIN_CF)")

    def _postfix(self, command: str, timeout: float) -> None:
        if command == "start":
            names = mailbox_names(self.args.mailboxes)
            aliases = self.confdir / "aliases"
            aliases.write_text(self.aliases_text)
            done = subprocess.run([str(POSTALIAS), "-c", str(self.confdir), f"hash:{aliases}"],
                                  capture_output=True, timeout=timeout, check=False)
            if done.returncode != 0:
                raise Unavailable(f"postalias failed: {done.stderr.decode(errors='replace')}")
            vmailbox = self.confdir / "vmailbox"
            vmailbox.write_text("".join(f"{n}@{MBOX_DOMAIN} {MBOX_DOMAIN}/{n}/\n" for n in names))
            base = self.rundir / "maildirs"
            self.news = make_maildirs(base / MBOX_DOMAIN, names, pwd.getpwnam("nobody"))
            os.chown(base / MBOX_DOMAIN, *_ids("nobody"))
            argv = ["/usr/sbin/postconf", "-c", str(self.confdir), "-e",
                    f"mydestination = {DOMAIN}",
                    f"alias_maps = hash:{aliases}", f"alias_database = hash:{aliases}",
                    "local_recipient_maps = $alias_maps", "local_transport = local",
                    f"virtual_mailbox_domains = {MBOX_DOMAIN}",
                    f"virtual_mailbox_maps = texthash:{vmailbox}"]
            done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
            if done.returncode != 0:
                raise Unavailable(f"postconf -e failed: {done.stderr.decode(errors='replace')}")
            os.sync()
        super()._postfix(command, timeout)


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


# --- one round ----------------------------------------------------------------------------------


@dataclass
class Round:
    """One server's figures for one round; error is set when the round is not usable."""

    server: str
    number: int
    prog_rate: float | None = None
    prog_inject_s: float | None = None
    prog_last_s: float | None = None
    prog_cpu_ms: float | None = None
    prog_runs: int = 0
    fan_s: float | None = None
    fan_submit_s: float | None = None
    fan_cpu_s: float | None = None
    fan_copies: int = 0
    pss_mib: float | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def error(self) -> str:
        return "; ".join(self.errors)


def fresh(server: AliasGateway | AliasPostfix, rundir: Path, args: argparse.Namespace,
          workdir: Path) -> None:
    """Start the server on a new folder with the table pointing at this run's count file."""
    targets = mailbox_names(args.mailboxes)
    if isinstance(server, AliasPostfix):
        server.aliases_text = alias_table(workdir / "count-prog",
                                          [f"{t}@{MBOX_DOMAIN}" for t in targets])
    else:
        server.aliases.write_text(alias_table(workdir / "count-prog", targets))
    os.sync()  # the previous test's dirty pages must not be written back during this one
    server.start(rundir, free_port(), time.monotonic() + args.start_timeout)


def program_test(server: AliasGateway | AliasPostfix, result: Round, args: argparse.Namespace,
                 venv: Path, workdir: Path, counter: Counter) -> None:
    """smtp-source -> pipe@, until the count file says every program run has ended."""
    profile = start_profile(args, venv, server, result.number)
    try:
        cpu_before = cpu_seconds(server.pids())
        argv = [str(SMTP_SOURCE), "-l", str(args.size), "-m", str(args.messages),
                "-s", str(args.sessions), "-f", args.sender, "-t", f"{PROGRAM_ALIAS}@{DOMAIN}",
                f"{LOOPBACK}:{server.port}"]
        started = time.monotonic()
        source = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = source.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            stop_process(source)
            result.errors.append(f"smtp-source did not finish within {args.timeout:.0f} s")
            return
        result.prog_inject_s = time.monotonic() - started
        if source.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            result.errors.append(f"smtp-source exited {source.returncode}: "
                                 + " | ".join(lines[-2:]))
        deadline = time.monotonic() + args.timeout
        while (runs := counter.count()) < args.messages:
            if time.monotonic() >= deadline or not server.pids():
                result.errors.append(f"only {runs} of {args.messages} program runs in time")
                break
            time.sleep(0.02)
        else:
            result.prog_last_s = time.monotonic() - started
            result.prog_rate = args.messages / result.prog_last_s
        result.prog_cpu_ms = (cpu_seconds(server.pids()) - cpu_before) * 1000 / args.messages
        time.sleep(0.5)  # a program run twice would show in the final count
        result.prog_runs = counter.count()
        if result.prog_runs > args.messages:
            result.errors.append(f"{result.prog_runs} program runs for {args.messages} messages")
    finally:
        stop_profile(profile)


def message(args: argparse.Namespace) -> bytes:
    """About args.size bytes, like smtp-source's."""
    head = (f"From: <{args.sender}>\r\nTo: <{FANOUT_ALIAS}@{DOMAIN}>\r\n"
            f"Subject: alias fan-out\r\nMessage-ID: <fanout.{time.time_ns()}@bench>\r\n\r\n")
    line = "La de da de da 1. La de da de da 2. La de da de da 3. La de da de da 4.\r\n"
    return (head + line * max(1, args.size // len(line))).encode()


def fanout_test(server: AliasGateway | AliasPostfix, result: Round, args: argparse.Namespace,
                venv: Path) -> None:
    """One message to team@: seconds from the 250 until every Maildir has its copy."""
    profile = start_profile(args, venv, server, result.number)
    try:
        cpu_before = cpu_seconds(server.pids())
        body = message(args)
        started = time.monotonic()
        with smtplib.SMTP(LOOPBACK, server.port, timeout=args.timeout) as smtp:
            smtp.sendmail(args.sender, [f"{FANOUT_ALIAS}@{DOMAIN}"], body)
            accepted = time.monotonic()  # the 250 after the final dot
        result.fan_submit_s = accepted - started
        pending = list(server.news)
        deadline = accepted + args.timeout
        while pending:
            pending = [new for new in pending if not any(True for _ in os.scandir(new))]
            if not pending:
                result.fan_s = time.monotonic() - accepted
                break
            if time.monotonic() >= deadline or not server.pids():
                result.errors.append(f"only {len(server.news) - len(pending)} of "
                                     f"{len(server.news)} copies in time")
                break
            time.sleep(0.01)
        result.fan_cpu_s = cpu_seconds(server.pids()) - cpu_before
        time.sleep(0.5)  # a copy delivered twice would show in the count
        result.fan_copies = sum(len(os.listdir(new)) for new in server.news)
        if result.fan_copies > len(server.news):
            result.errors.append(f"{result.fan_copies} copies for {len(server.news)} mailboxes")
    finally:
        stop_profile(profile)


def run_round(server: AliasGateway | AliasPostfix, rnd: int, args: argparse.Namespace,
              venv: Path, workdir: Path) -> Round:
    """Each test on a freshly started server, stopped after it."""
    result = Round(server.name, rnd)
    for test in args.tests:
        rundir = workdir / f"{server.name}-{test}-round{rnd}"
        sampler: RssSampler | None = None
        try:
            counter = Counter(workdir / f"count-{server.name}-{rnd}")
            (workdir / "count-prog").write_text(COUNT_PROG.format(count=counter.path))
            (workdir / "count-prog").chmod(0o755)
            fresh(server, rundir, args, workdir)
            sampler = RssSampler(server.pids)
            sampler.start()
            if test == "program":
                program_test(server, result, args, venv, workdir, counter)
            else:
                fanout_test(server, result, args, venv)
        except (Unavailable, OSError, smtplib.SMTPException) as exc:
            result.errors.append(f"{test}: {type(exc).__name__}: {exc}")
        finally:
            if sampler is not None:
                _, pss = sampler.finish()
                result.pss_mib = max(result.pss_mib or 0.0, pss / 1024)
            server.stop()
        if result.errors and args.keep:
            say(tail(server.log()))
        if not args.keep:
            shutil.rmtree(rundir, ignore_errors=True)
    return result


# --- the report ---------------------------------------------------------------------------------


FIGURES = [
    # key, label, digits, target (mailgateway/Postfix), test
    ("prog_rate", "program deliveries/s (until every run ended)", 0, ">= 1", "program"),
    ("prog_inject_s", "program: smtp-source s (all 250)", 2, "", "program"),
    ("prog_last_s", "program: s until the last run ended", 2, "", "program"),
    ("prog_cpu_ms", "program: server CPU ms per delivery (programs included)", 2, "", "program"),
    ("fan_s", "fan-out: s from the 250 until all copies in new/", 2, "<= 1", "fanout"),
    ("fan_submit_s", "fan-out: s for the SMTP transaction", 3, "", "fanout"),
    ("fan_cpu_s", "fan-out: server CPU s", 2, "", "fanout"),
    ("pss_mib", "peak PSS MiB (either test)", 1, "", ""),
]


def report(args: argparse.Namespace, servers: list[Server], results: dict[str, list[Round]],
           command: str, venv: Path, interrupted: bool) -> str:
    lines = [
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}, host {socket.gethostname()}, "
        f"{os.cpu_count()} CPUs",
        f"Command: `{command}`",
        f"Versions: {accept_versions(venv).split(', aiosmtpd')[0]}"
        + (f"; mailgateway-before: the checkout in {args.compare}" if args.compare else ""),
        f"Load: program: {args.messages} messages of {args.size} bytes by smtp-source "
        f"({args.sessions} sessions) to {PROGRAM_ALIAS}@ = \"|count-prog\" (sh: cat > "
        f"/dev/null; echo . >> count); fan-out: one message by smtplib to {FANOUT_ALIAS}@ = "
        f"{args.mailboxes} mailboxes; each test on a fresh server; {args.rounds} rounds "
        "(servers in turn), medians",
    ]
    lines += [f"Settings, {s.name}: {s.settings_text()}" for s in servers]  # type: ignore[attr-defined]
    names = [s.name for s in servers]
    ok = {n: [r for r in results[n] if not r.error] for n in names}
    head = "| figure | " + " | ".join(f"{n} | min-max" for n in names)
    pair = "Postfix" in names and "mailgateway" in names
    lines += ["", head + (" | mailgateway/Postfix | target |" if pair else " |"),
              "|---|" + "---:|---:|" * len(names) + ("---:|---|" if pair else "")]
    for key, label, digits, target, test in FIGURES:
        if test and test not in args.tests:
            continue
        cells, meds = [], {}
        for n in names:
            values = [v for r in ok[n] if (v := getattr(r, key)) is not None]
            meds[n] = median(values)
            spread = f"{fmt(min(values), digits)}-{fmt(max(values), digits)}" if values else "-"
            cells.append(f"{fmt(meds[n], digits)} | {spread}")
        row = f"| {label} | " + " | ".join(cells)
        if pair:
            gw, pf = meds["mailgateway"], meds["Postfix"]
            share = f"{gw / pf:.2f}" if gw is not None and pf else "-"
            row += f" | {share} | {target}"
        lines.append(row + " |")
    lines += ["", "Issue 9's targets: program deliveries/s at least 1x Postfix; fan-out "
              "seconds at most Postfix's (ratio <= 1)."]
    lines += report_footer([r for n in names for r in results[n]], interrupted)
    return "\n".join(lines) + "\n"


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Figures and their meaning: bench/README.md. Results log: bench/RESULTS.md.",
    )
    parser.add_argument("--messages", "-m", type=int, default=2000, help="program test (2000)")
    parser.add_argument("--sessions", "-s", type=int, default=20, help="smtp-source (20)")
    parser.add_argument("--size", "-l", type=int, default=2048, help="message bytes (2048)")
    parser.add_argument("--mailboxes", type=int, default=1000, help="fan-out targets (1000)")
    parser.add_argument("--rounds", "-r", type=int, default=3, help="rounds per server (3)")
    parser.add_argument("--tests", default="program,fanout", help="program,fanout")
    parser.add_argument("--servers", default="mailgateway,postfix", help="mailgateway,postfix")
    parser.add_argument("--venv", type=Path, help="default: REPO/.venv, else /tmp/v")
    parser.add_argument("--sender", default=f"sender@{DOMAIN}")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds for the injection, and again for the deliveries (300)")
    parser.add_argument("--start-timeout", type=float, default=120, help="to greet (120)")
    parser.add_argument("--workdir", type=Path, help="parent of the run's temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the run's folders and logs")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get postfix")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record the gateway with py-spy into DIR (slows the gateway rounds)")
    parser.add_argument("--append", type=Path, metavar="FILE", help="append the report to FILE")
    parser.add_argument("--compare", type=Path, metavar="DIR",
                        help="another checkout of mailgateway (git archive of a commit), run "
                             "as mailgateway-before in the same rounds")
    args = parser.parse_args(argv)
    for name in ("messages", "sessions", "size", "mailboxes", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.mailboxes > 9999:
        parser.error("--mailboxes: at most 9999")
    args.tests = [t.strip().lower() for t in args.tests.split(",") if t.strip()]
    if not args.tests or set(args.tests) - set(TESTS):
        parser.error("--tests takes program and/or fanout")
    args.servers = [s.strip().lower() for s in args.servers.split(",") if s.strip()]
    if set(args.servers) - {"mailgateway", "postfix"}:
        parser.error("--servers takes mailgateway and/or postfix")
    return args


def make_servers(args: argparse.Namespace, venv: Path, workdir: Path) -> list[Server]:
    """The servers asked for; each checked once, or left out with the reason."""
    if os.geteuid() != 0:
        say("skipping every server: programs run as nobody, the benchmark needs root")
        return []
    before = ([AliasGateway(args, workdir, venv, args.compare.resolve(), "mailgateway-before")]
              if args.compare is not None else [])
    return usable([*before, *(AliasGateway(args, workdir, venv) if name == "mailgateway"
                              else AliasPostfix(args, workdir) for name in args.servers)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line("alias_bench.py", argv)
    venv = pick_venv(args.venv)
    if not ensure_postfix(not args.no_install):
        say("Postfix's smtp-source (Debian package postfix) is needed")
        return 2
    workdir = open_workdir(args.workdir, "mailgateway-alias-", venv)

    def tell(res: Round) -> str:
        return (f"program {fmt(res.prog_rate)}/s (injected {fmt(res.prog_inject_s, 2)} s, last "
                f"run {fmt(res.prog_last_s, 2)} s, CPU {fmt(res.prog_cpu_ms, 2)} ms each, "
                f"{res.prog_runs} runs); fan-out {fmt(res.fan_s, 2)} s after the 250 "
                f"(CPU {fmt(res.fan_cpu_s, 2)} s, {res.fan_copies} copies)")

    servers, results, interrupted = run_in_turn(
        lambda: make_servers(args, venv, workdir), args.rounds,
        lambda server, rnd: run_round(server, rnd, args, venv, workdir), tell,
        workdir, args.keep)
    if not servers and not interrupted:
        say("no server can run here")
        return 2
    return publish(results, interrupted,
                   lambda: report(args, servers, results, command, venv, interrupted),
                   args.append, ": aliases, program recipients and a 1,000-mailbox fan-out")


if __name__ == "__main__":
    sys.exit(main())
