"""From the 250 to the mailbox: mailgateway beside Postfix + Dovecot, empty and 100k INBOX.

Why this shape: users wait for the message in their mailbox, not for the
250. One independent client (Postfix's smtp-source) sends the same load to
each server; an IMAP client (imaplib) that logged in before the load asks
STATUS INBOX (MESSAGES) every --poll seconds. The clock starts with
smtp-source and stops twice:

  accepted msg/s    messages / time until smtp-source had its last 250
  mailbox msg/s     messages / time until STATUS counts every one of them
                    (the files in new/ or cur/ and the server's index agree)

for an INBOX that starts empty and one that already holds --inbox messages
(hard-linked fresh each round from one built tree, indexed by one STATUS
before the clock starts, as a user's mailbox would be). The peer is Postfix
delivering with virtual(8) into the Maildir that a private Dovecot serves
over IMAP; mailgateway does both itself (its SMTP and IMAP listeners). The
servers and INBOX sizes take turns, round after round; the report gives
medians and ratios. A benchmark, not a test: it prints figures and never
judges them. Everything started is stopped at the end, on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imap_bench import build_tree  # noqa: E402  (bench/ is not a package: see the line above)
from peers import (  # noqa: E402
    LOOPBACK,
    MailgatewayImap,
    PostfixDovecot,
    RssSampler,
    Unavailable,
    count_dir,
    cpu_seconds,
    free_port,
    report_footer,
)
from rounds import (  # noqa: E402
    REPO,
    command_line,
    fs_type,
    make_workdir,
    parse_set,
    pick_venv,
    publish,
    run_in_turn,
    say,
)
from smtp_accept import (  # noqa: E402
    SMTP_SOURCE,
    Profile,
    _output,
    ensure_postfix,
    fmt,
    median,
    ratio,
    start_profile,
    stop_profile,
)


@dataclass
class Round:
    """One server's figures for one round and INBOX size; error set when not usable."""

    server: str
    number: int
    inbox: int
    messages: int
    accepted_s: float = 0.0
    mailbox_s: float | None = None
    index_s: float = 0.0  # the first STATUS on the prefilled INBOX (not in the figures)
    cpu_ms: float | None = None
    rss_mib: float = 0.0
    pss_mib: float = 0.0
    delivered: int = 0
    error: str = ""


# --- the two setups ----------------------------------------------------------------------


class Gateway(MailgatewayImap):
    """mailgateway with its SMTP and IMAP listeners; the INBOX is linked in before start."""

    name = "mailgateway"
    queue_concurrency = 0  # 0: the default configuration's
    accept_workers: int | None = None  # [smtp] accept_workers; None: the default's
    runner_process: bool | None = None  # [queue] runner_process; None: the default's
    more: tuple[tuple[str, str, Any], ...] = ()  # --set SECTION.KEY=VALUE (TOML values)

    def more_settings(self, settings: dict[str, Any]) -> None:
        settings["listen"]["smtp"] = f"tcp:{self.smtp_port}:interface={LOOPBACK}"
        smtp = settings.get("smtp", {})
        if "max_connections_per_client" in smtp:  # smtp-source's sessions share 127.0.0.1
            smtp["max_connections_per_client"] = max(smtp["max_connections_per_client"],
                                                     self.sessions + 2)
        if self.queue_concurrency:
            settings["queue"]["concurrency"] = self.queue_concurrency
        if self.accept_workers is not None:
            settings.setdefault("smtp", {})["accept_workers"] = self.accept_workers
        if self.runner_process is not None:
            settings["queue"]["runner_process"] = self.runner_process
        for section, key, value in self.more:
            if section != "env":
                settings.setdefault(section, {})[key] = value

    def env(self) -> dict[str, str]:
        """--set env.NAME=VALUE: an environment variable of the gateway, not a setting."""
        env = super().env()
        env.update({key: str(value) for section, key, value in self.more if section == "env"})
        return env

    def prepare(self, rundir: Path, smtp_port: int, imap_port: int, cur: Path) -> None:
        self.smtp_port = smtp_port
        self.setup(rundir, imap_port, cur)


Setup = Gateway | PostfixDovecot


# --- one round -------------------------------------------------------------------------------


def status(imap: imaplib.IMAP4) -> int:
    typ, data = imap.status("INBOX", "(MESSAGES)")
    if typ != "OK":
        raise Unavailable(f"STATUS INBOX: {typ} {data!r}")
    text = data[0].decode() if isinstance(data[0], bytes) else str(data[0])
    return int(text.rsplit("MESSAGES", 1)[1].strip(" ()"))


def files_in(maildir: Path) -> int:
    return count_dir(maildir / "new") + count_dir(maildir / "cur")


def run_round(server: Setup, rnd: int, inbox: int, args: argparse.Namespace,
              trees: dict[int, Path], workdir: Path) -> Round:
    result = Round(server.name, rnd, inbox, args.messages)
    rundir = workdir / f"{server.name}-{inbox}-round{rnd}"
    sampler: RssSampler | None = None
    profile: Profile | None = None
    imap: imaplib.IMAP4 | None = None
    try:
        server.prepare(rundir, free_port(), free_port(), trees[inbox])
        os.sync()  # no writeback of earlier rounds or the linked tree during this one
        server.launch(time.monotonic() + args.start_timeout)
        imap = imaplib.IMAP4(LOOPBACK, server.port, timeout=args.timeout)
        imap.login(args.recipient.split("@")[0] if isinstance(server, PostfixDovecot)
                   else args.recipient, server.password if isinstance(server, Gateway)
                   else server.dovecot.password)
        started = time.monotonic()
        have = status(imap)
        result.index_s = time.monotonic() - started
        if have != inbox:
            raise Unavailable(f"STATUS says {have} before the load, not {inbox}")
        sampler = RssSampler(server.pids)
        sampler.start()
        profile = start_profile(args, args.venv_path, server, f"{rnd}-inbox{inbox}")
        cpu_before = cpu_seconds(server.pids())
        argv = [str(SMTP_SOURCE), "-c", "-l", str(args.size), "-m", str(args.messages),
                "-s", str(args.sessions), "-f", args.sender, "-t", args.recipient,
                f"{LOOPBACK}:{server.smtp_port}"]
        target = inbox + args.messages
        started = time.monotonic()
        source = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = started + args.timeout
        seen = 0
        while True:
            now = time.monotonic()
            if not result.accepted_s and source.poll() is not None:
                result.accepted_s = now - started
                if source.returncode != 0:
                    err = (source.stderr.read() if source.stderr else b"").decode(
                        errors="replace").strip().splitlines()
                    result.error = f"smtp-source exited {source.returncode}: {err[-3:]}"
                    break
            seen = status(imap)
            if seen >= target:
                result.mailbox_s = time.monotonic() - started
                break
            if now > deadline:
                result.error = f"STATUS counts {seen - inbox} of {args.messages} at the deadline"
                break
            time.sleep(args.poll)
        if not result.accepted_s:  # visible before smtp-source had its last reply: impossible
            source.wait(timeout=args.timeout)
            result.accepted_s = time.monotonic() - started
        result.cpu_ms = (cpu_seconds(server.pids()) - cpu_before) * 1000 / args.messages
    except (Unavailable, OSError, imaplib.IMAP4.error, subprocess.TimeoutExpired) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        stop_profile(profile)
        if imap is not None:
            try:
                imap.logout()
            except (OSError, imaplib.IMAP4.error):
                pass
        if sampler is not None:
            rss, pss = sampler.finish()
            result.rss_mib, result.pss_mib = rss / 1024, pss / 1024
        server.stop()
    try:
        result.delivered = files_in(server.maildir()) - inbox
    except OSError:
        pass
    if result.delivered > args.messages and not result.error:
        result.error = f"{result.delivered} files for {args.messages} sent (duplicates)"
    if not args.keep:
        shutil.rmtree(rundir, ignore_errors=True)
    return result


# --- the report ------------------------------------------------------------------------------


def summarize(rounds: list[Round]) -> dict[str, float | None]:
    ok = [r for r in rounds if not r.error]
    return {
        "accepted": median([r.messages / r.accepted_s for r in ok]),
        "mailbox": median([r.messages / r.mailbox_s for r in ok if r.mailbox_s]),
        "cpu": median([r.cpu_ms for r in ok if r.cpu_ms is not None]),
        "rss": median([r.rss_mib for r in ok]),
        "pss": median([r.pss_mib for r in ok]),
        "index": median([r.index_s for r in ok]),
        "ok": float(len(ok)),
        "all": float(len(rounds)),
    }


def versions(venv: Path) -> str:
    probe = "import platform, twisted; print(platform.python_version(), twisted.__version__)"
    parts = (_output([str(venv / "bin" / "python"), "-c", probe]).split() + ["?", "?"])[:2]
    postfix = _output(["/usr/sbin/postconf", "-h", "mail_version"]) or "?"
    dovecot = _output(["/usr/sbin/dovecot", "--version"]) or "?"
    commit = _output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "no commit"
    return (f"mailgateway {commit} (working tree), Python {parts[0]}, Twisted {parts[1]}, "
            f"Postfix {postfix}, Dovecot {dovecot}")


def report(args: argparse.Namespace, names: list[str], results: dict[str, list[Round]],
           command: str, venv: Path, interrupted: bool) -> str:
    lines = [
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}, host {socket.gethostname()}, "
        f"{os.cpu_count()} CPUs",
        f"Command: `{command}`",
        f"Versions: {versions(venv)}"
        + (f"; mailgateway-before: the checkout in {args.compare}" if args.compare else ""),
        f"Load: smtp-source, {args.messages} messages of {args.size} bytes, {args.sessions} "
        f"sessions, to one user; STATUS INBOX every {args.poll * 1000:.0f} ms; "
        f"{args.rounds} rounds (servers in turn), medians",
        "",
        "| server | INBOX before | accepted msg/s | in the mailbox msg/s | CPU ms/msg "
        "| peak RSS MiB | peak PSS MiB | first STATUS s | rounds ok |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    sums: dict[tuple[str, int], dict[str, float | None]] = {}
    for inbox in args.inbox:
        for name in names:
            s = sums[name, inbox] = summarize([r for r in results[name] if r.inbox == inbox])
            lines.append(
                f"| {name} | {inbox:,} | {fmt(s['accepted'])} | {fmt(s['mailbox'])} "
                f"| {fmt(s['cpu'], 2)} | {fmt(s['rss'], 1)} | {fmt(s['pss'], 1)} "
                f"| {fmt(s['index'], 2)} | {int(s['ok'] or 0)}/{int(s['all'] or 0)} |")
    ours = [n for n in names if n.startswith("mailgateway")]
    peers = [n for n in names if not n.startswith("mailgateway")] or \
        [n for n in ours if n != "mailgateway"]
    if "mailgateway" in names and peers:
        lines += ["", "| ratio mailgateway/peer | INBOX before | accepted | in the mailbox "
                  "| CPU/msg | peak RSS |", "|---|---:|---:|---:|---:|---:|"]
        for peer, mine in [(p, m) for p in peers for m in ours if m != p]:
            for inbox in args.inbox:
                g, p = sums[mine, inbox], sums[peer, inbox]
                lines.append(f"| {mine}/{peer} | {inbox:,} "
                             f"| {ratio(g['accepted'], p['accepted'])} "
                             f"| {ratio(g['mailbox'], p['mailbox'])} | {ratio(g['cpu'], p['cpu'])} "
                             f"| {ratio(g['rss'], p['rss'])} |")
    lines += report_footer([r for name in names for r in results[name]], interrupted)
    return "\n".join(lines) + "\n"


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Figures and their meaning: bench/README.md. Results log: bench/RESULTS.md.")
    parser.add_argument("--messages", "-m", type=int, default=5000, help="per round (5000)")
    parser.add_argument("--sessions", "-s", type=int, default=20, help="parallel sessions (20)")
    parser.add_argument("--size", "-l", type=int, default=2048, help="payload bytes (2048)")
    parser.add_argument("--inbox", default="0,100000",
                        help="INBOX sizes before the load, comma-separated (0,100000)")
    parser.add_argument("--rounds", "-r", type=int, default=3, help="rounds per server (3)")
    parser.add_argument("--servers", default="mailgateway,postfix",
                        help="comma-separated subset of mailgateway,postfix (Postfix+Dovecot)")
    parser.add_argument("--queue-concurrency", type=int, default=0,
                        help="mailgateway's [queue] concurrency (default: its default.toml's)")
    parser.add_argument("--accept-workers", type=int, default=None,
                        help="mailgateway's [smtp] accept_workers (default: its default.toml's)")
    parser.add_argument("--runner-process", choices=("true", "false"), default=None,
                        help="mailgateway's [queue] runner_process (default: its default.toml's)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="one more mailgateway setting, VALUE in TOML (queue.sync='file'); "
                        "env.NAME=VALUE sets an environment variable of the gateway")
    parser.add_argument("--variant", action="append", default=[],
                        metavar="NAME:SECTION.KEY=VALUE;...",
                        help="also run mailgateway with these settings on top of the others', "
                        "as \"mailgateway-NAME\", in the same rounds "
                        "(runner:queue.runner_process=true)")
    parser.add_argument("--compare", type=Path, metavar="DIR",
                        help="also run the mailgateway checkout in DIR (e.g. `git archive` of an "
                        "older commit), as \"mailgateway-before\", in the same rounds")
    parser.add_argument("--poll", type=float, default=0.05, help="STATUS interval (0.05 s)")
    parser.add_argument("--seed", type=int, default=3, help="of the built INBOX (3)")
    parser.add_argument("--tree", type=Path, help="build the prefilled INBOX here and keep it "
                        "(reused by later runs with the same size and seed; imap_bench.py too)")
    parser.add_argument("--venv", type=Path, help="default: REPO/.venv, else /tmp/v")
    parser.add_argument("--sender", default="sender@example.test")
    parser.add_argument("--recipient", default="alice@example.test")
    parser.add_argument("--timeout", type=float, default=600, help="per round (600 s)")
    parser.add_argument("--start-timeout", type=float, default=120, help="to greet (120)")
    parser.add_argument("--workdir", type=Path, help="parent of the run's temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the run's folders and logs")
    parser.add_argument("--append", metavar="FILE", help="append the report to FILE")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy records the gateway's rounds into DIR (raw collapsed "
                        "stacks; pip install py-spy); those rounds run slower")
    args = parser.parse_args(argv)
    args.inbox = [int(n) for n in args.inbox.split(",") if n.strip()]
    args.servers = [s.strip().lower() for s in args.servers.split(",") if s.strip()]
    if set(args.servers) - {"mailgateway", "postfix"}:
        parser.error("--servers: mailgateway, postfix")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line("mailbox_bench.py", argv)
    venv = args.venv_path = pick_venv(args.venv)
    if not ensure_postfix(install=True):
        say(f"{SMTP_SOURCE} (Debian package postfix) is the load generator; cannot run without it")
        return 2
    workdir = make_workdir(args.workdir, "mailgateway-mailbox-bench-")
    say(f"venv {venv}, work folder {workdir} ({fs_type(workdir)})")
    trees: dict[int, Path] = {}

    def make() -> list[Any]:
        servers: list[Any] = []
        if args.compare is not None:  # another checkout of mailgateway, as one more peer
            before = Gateway(workdir, args.recipient, venv, args.compare.resolve(), args.sessions)
            before.name = "mailgateway-before"
            before.queue_concurrency = args.queue_concurrency
            servers.append(before)
        for spec in args.variant:  # the same gateway with other settings, as one more peer
            label, _, items = spec.partition(":")
            variant = Gateway(workdir, args.recipient, venv, REPO, args.sessions)
            variant.name = f"mailgateway-{label}"
            variant.queue_concurrency = args.queue_concurrency
            variant.accept_workers = args.accept_workers
            variant.more = tuple(parse_set(item) for item in [*args.set, *items.split(";")]
                                 if item.strip())
            servers.append(variant)
        for name in args.servers:
            server: Setup = (Gateway(workdir, args.recipient, venv, REPO, args.sessions)
                             if name == "mailgateway"
                             else PostfixDovecot(workdir, args.recipient, args.sessions))
            if isinstance(server, Gateway):
                server.queue_concurrency = args.queue_concurrency
                server.accept_workers = args.accept_workers
                if args.runner_process is not None:
                    server.runner_process = args.runner_process == "true"
                server.more = tuple(parse_set(item) for item in args.set)
            try:
                server.check()
                servers.append(server)
            except Unavailable as exc:
                say(f"{server.name} left out: {exc}")
        for inbox in args.inbox:
            if inbox == 0:
                trees[0] = workdir / "empty" / "cur"
                trees[0].mkdir(parents=True)
                continue
            say(f"building the prefilled INBOX ({inbox:,} messages) ...")
            tree = build_tree(args.tree or workdir / f"tree-{inbox}", inbox, args.seed)
            trees[inbox] = tree.path / "cur"
        # Every (server, INBOX size) pair is one "server" of run_in_turn: all take turns.
        return [Turn(s, inbox) for inbox in args.inbox for s in servers]

    servers, results, interrupted = run_in_turn(
        make, args.rounds, lambda turn, rnd: run_round(turn.setup, rnd, turn.inbox, args,
                                                       trees, workdir),
        lambda res: (f"INBOX {res.inbox:,}: accepted in {res.accepted_s:.2f} s, in the mailbox "
                     f"in {fmt(res.mailbox_s, 2)} s, CPU {fmt(res.cpu_ms, 2)} ms/msg, "
                     f"RSS {res.rss_mib:.1f} MiB, first STATUS {res.index_s:.2f} s"),
        workdir, args.keep)
    if not servers and not interrupted:
        say("no server can run here")
        return 2
    names = list(dict.fromkeys(t.setup.name for t in servers))
    by_name: dict[str, list[Round]] = {n: [] for n in names}
    for rounds in results.values():
        for r in rounds:
            by_name[r.server].append(r)
    return publish(by_name, interrupted,
                   lambda: report(args, names, by_name, command, venv, interrupted),
                   args.append, ": from the 250 to the mailbox, bench/mailbox_bench.py")


@dataclass
class Turn:
    """One (setup, INBOX size) pair: what run_in_turn calls a server."""

    setup: Any
    inbox: int

    @property
    def name(self) -> str:
        return f"{self.setup.name} INBOX {self.inbox}"

    def stop(self) -> None:
        self.setup.stop()


if __name__ == "__main__":
    sys.exit(main())
