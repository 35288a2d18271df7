"""APPEND latency with the servers side by side: all up at once, one APPEND to each in turn.

imap_transfer.py runs its servers one after another. On this machine the disk's
sync latency changes from minute to minute, so the APPEND ratio of two rounds
measured a minute apart moved between 0.87 and 1.24. Here every server (mailgateway
checkouts to compare, and Dovecot) is started first; then each step sends one
APPEND to each server, in an order that flips every step, so all of them meet the
same disk at the same moment. Each client is imaplib, waiting for its tagged OK.

Per server: mean latency and its rate (1 / mean), p50, p90, p99, and the server's
CPU (its process tree, user and system) per APPEND. Both servers fsync what they
save (their defaults). A benchmark: figures and ratios, no verdicts.
"""

from __future__ import annotations

import argparse
import imaplib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import Dovecot, MailgatewayImap, Unavailable, cpu_seconds, free_port  # noqa: E402
from rounds import (  # noqa: E402
    REPO,
    command_line,
    fs_type,
    open_workdir,
    pick_venv,
    publish,
    say,
)
from smtp_accept import fmt, ratio  # noqa: E402

RECIPIENT = "bench@example.test"


def start(servers: list[Any], workdir: Path) -> list[imaplib.IMAP4]:
    clients = []
    for n, server in enumerate(servers):
        home = workdir / f"server-{n}"
        (home / "tree" / "cur").mkdir(parents=True)
        port = free_port()
        server.setup(home / "run", port, home / "tree" / "cur")
        server.launch(time.monotonic() + 60)
        client = imaplib.IMAP4("127.0.0.1", port, timeout=60)
        client.login(RECIPIENT, server.password)
        client.create("Appended")
        clients.append(client)
    return clients


def append(client: imaplib.IMAP4, body: bytes) -> float:
    started = time.perf_counter()
    typ, data = client.append("Appended", None, None, body)
    took = time.perf_counter() - started
    if typ != "OK":
        raise RuntimeError(f"APPEND: {typ} {data!r:.200}")
    return took


def measure(servers: list[Any], clients: list[imaplib.IMAP4], args: argparse.Namespace
            ) -> list[dict[str, float]]:
    body = b"Subject: appended\r\n\r\n" + b"x" * (args.size - 23) + b"\r\n"
    for client in clients:  # the code paths and the folders' indexes warm
        for _ in range(args.warmup):
            append(client, body)
    times: list[list[float]] = [[] for _ in clients]
    cpu = [cpu_seconds(s.pids()) for s in servers]
    order = list(range(len(clients)))
    for _ in range(args.appends):
        for k in order:
            times[k].append(append(clients[k], body))
        order.reverse()  # neither always first nor always last
    out = []
    for k, server in enumerate(servers):
        t = sorted(times[k])
        mean = statistics.fmean(t)
        out.append({"rate": 1 / mean, "mean": mean * 1000, "p50": t[len(t) // 2] * 1000,
                    "p90": t[len(t) * 9 // 10] * 1000, "p99": t[len(t) * 99 // 100] * 1000,
                    "cpu": (cpu_seconds(server.pids()) - cpu[k]) * 1000 / args.appends})
    return out


def report(args: argparse.Namespace, names: list[str], figures: list[dict[str, float]],
           command: str, workdir_fs: str) -> str:
    peer = figures[names.index("Dovecot")] if "Dovecot" in names else None
    lines = [f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"Command: `{command}`",
             f"Load: {args.appends} APPENDs of {args.size} B to each server, one to each in "
             f"turn (after {args.warmup} each to warm up); all servers up at once; state on "
             f"{workdir_fs}; client imaplib", "",
             "| server | msg/s (1/mean) | mean ms | p50 ms | p90 ms | p99 ms | server CPU "
             "per APPEND, ms | msg/s against Dovecot |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, f in zip(names, figures, strict=True):
        lines.append(f"| {name} | {fmt(f['rate'], 1)} | {fmt(f['mean'], 3)} | "
                     f"{fmt(f['p50'], 3)} | {fmt(f['p90'], 3)} | {fmt(f['p99'], 3)} | "
                     f"{fmt(f['cpu'], 3)} | "
                     f"{ratio(f['rate'], peer['rate']) if peer and f is not peer else '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", metavar="LABEL=PATH",
                        help="a mailgateway checkout to run (default: mailgateway=this one); "
                             "repeat to compare commits")
    parser.add_argument("--no-dovecot", action="store_true")
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--size", type=int, default=2048, help="bytes per message")
    parser.add_argument("--venv", type=Path)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--append", metavar="RESULTS_MD")
    args = parser.parse_args(argv)
    command = command_line("append_side_by_side.py", argv)
    venv = pick_venv(args.venv)
    workdir = open_workdir(args.workdir, "mailgateway-append-side-by-side-", venv)
    checkouts = [c.split("=", 1) for c in args.checkout or [f"mailgateway={REPO}"]]
    servers: list[Any] = []
    for label, path in checkouts:
        server = MailgatewayImap(workdir, RECIPIENT, venv, Path(path).resolve(), 10)
        server.name = label
        servers.append(server)
    if not args.no_dovecot:
        servers.append(Dovecot(workdir, RECIPIENT, 10))
    try:
        for server in servers:
            server.check()
        clients = start(servers, workdir)
        say(f"{len(servers)} servers up; {args.appends} APPENDs to each, in turn")
        figures = measure(servers, clients, args)
    except (OSError, RuntimeError, imaplib.IMAP4.error, Unavailable) as exc:
        say(f"failed: {type(exc).__name__}: {exc}")
        return 1
    finally:
        for server in servers:
            server.stop()
    names = [s.name for s in servers]
    results = {name: [f] for name, f in zip(names, figures, strict=True)}
    return publish(results, False, lambda: report(args, names, figures, command,
                                                  fs_type(workdir)),
                   args.append, ": APPEND side by side, bench/append_side_by_side.py")


if __name__ == "__main__":
    sys.exit(main())
