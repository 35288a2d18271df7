"""IMAP transfer throughput: FETCH MiB/s in plaintext and over implicit TLS, APPEND msg/s.

Issue 13's last two targets ("APPEND and FETCH throughput >= 1.0x Dovecot"), measured
beside a private Dovecot in the same run, same client (Python's imaplib), servers in
turn. Per server and round, on a fresh INBOX hard-linked from one built tree:

  FETCH plain   UID FETCH 1:* (BODY.PEEK[]) of the whole INBOX in one command, on
                the plaintext port: MiB of message data per second at the client
  FETCH TLS     the same over implicit TLS: mailgateway's TLS front (993-style,
                [[tlsfront]]) and Dovecot's own imaps listener, one certificate
  FETCH STARTTLS  the same on the plaintext port after STARTTLS (RFC 3501 6.2.1),
                as Thunderbird does on 143: TLS inside each server's own process
                (mailgateway reads a big message a piece of [imap] fetch_buffer
                at a time, as sendfile cannot serve)
  FETCH raw     the plain and implicit-TLS FETCH, read by a client that only
                counts octets until the tagged OK (no parsing): imaplib is
                slower than either server, so its rate is mostly its own; this
                one shows the servers'. Mail clients in C (mutt, mbsync,
                Thunderbird) sit between the two.
  mbsync        the same INBOX pulled by mbsync (isync, a mail client in C) into a
                new local Maildir (FSync no): the wall time of one run (start,
                LOGIN, SELECT, one UID FETCH per message, pipelined, the local
                files written), MiB/s. mbsync uses COMPRESS=DEFLATE whenever the
                server offers it: mailgateway does, Dovecot's defaults do not
                (its imap_zlib plugin is off), so this row compares what each
                server gives mbsync as shipped
  mbsync small  the same for a folder of --small messages of --small-size bytes
                (2,000 of 20 KB: a first sync on a new device), msg/s: one
                command per message, so the server's time per command counts
  APPEND        --appends messages of --append-size bytes, one after another
                (imaplib waits for each tagged OK), msg/s

Each FETCH row is the median of --fetches FETCHes in a round (this machine's rate
moves by a third from one second to the next), then of the rounds.

Beside each rate, the CPU it took: the server's (its whole process tree, user and
system) per MiB sent or per APPEND, and for FETCH the client's share of the time
(near 100%: imaplib, not the server, sets the rate).

Both servers fsync what they save (their defaults), and keep their own defaults
otherwise. The INBOX files stay in the page cache. A benchmark: figures and ratios,
no verdicts.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import random
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import (  # noqa: E402  (bench/ is not a package: found via the line above)
    LOOPBACK,
    Dovecot,
    MailgatewayImap,
    Unavailable,
    cpu_seconds,
    free_port,
    link_maildir,
    report_footer,
)
from rounds import (  # noqa: E402
    REPO,
    command_line,
    fs_type,
    make_workdir,
    pick_venv,
    publish,
    run_in_turn,
    say,
    usable,
)
from smtp_accept import fmt, median, ratio  # noqa: E402

RECIPIENT = "bench@example.test"


def build_tree(path: Path, count: int, size: int, seed: int) -> int:
    """COUNT messages of about SIZE bytes in PATH (a cur/ folder); their total bytes."""
    path.mkdir(parents=True)
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(2000)]
    total = 0
    for n in range(count):
        head = (f"From: Sender {n} <s{n}@example.org>\r\nTo: {RECIPIENT}\r\n"
                f"Subject: transfer {n}\r\nDate: Thu, 26 Nov 2026 12:00:00 +0000\r\n"
                f"Message-ID: <t{n}@example.org>\r\n\r\n").encode()
        lines, length = [], len(head)
        while length < size:
            line = b" ".join(rng.choice(words) for _ in range(12)) + b"\r\n"
            lines.append(line)
            length += len(line)
        data = head + b"".join(lines)
        (path / f"{1700000000 + n}.M{n}P1.bench:2,S").write_bytes(data)
        total += len(data)
    return total


@dataclass
class Round:
    server: str
    number: int
    rates: dict[str, float] = field(default_factory=dict)
    error: str = ""


class TlsMailgateway(MailgatewayImap):
    """mailgateway's IMAP with the TLS front on tls_port (same certificate as Dovecot)."""

    tls_port = 0
    cert: tuple[Path, Path] = (Path(), Path())

    def more_settings(self, settings: dict[str, Any]) -> None:
        settings["tls"] = {"certificate": str(self.cert[0]), "private_key": str(self.cert[1])}
        settings["tlsfront"] = [{"name": "imaps", "connect": "imap",
                                 "accept": f"tcp:{self.tls_port}:interface=127.0.0.1"}]


class TlsDovecot(Dovecot):
    """Dovecot with its own imaps listener on tls_port."""

    tls_port = 0
    cert: tuple[Path, Path] = (Path(), Path())

    def setup(self, rundir: Path, port: int, cur: Path) -> None:
        super().setup(rundir, port, cur)
        text = self.config.read_text()
        text = text.replace("ssl = no\n", f"ssl = yes\nssl_cert = <{self.cert[0]}\n"
                                          f"ssl_key = <{self.cert[1]}\n")
        text = text.replace("inet_listener imaps {\n    port = 0\n",
                            f"inet_listener imaps {{\n    address = 127.0.0.1\n"
                            f"    port = {self.tls_port}\n    ssl = yes\n")
        if f"port = {self.tls_port}" not in text:
            raise Unavailable("could not add the imaps listener to Dovecot's configuration")
        self.config.write_text(text)


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raw_fetch(sock: socket.socket, password: str) -> tuple[int, float]:
    """Log in, UID FETCH 1:* (BODY.PEEK[]) of the INBOX, and read the answer without
    parsing it; the octets received (message data and the protocol's few lines) and
    the seconds from the FETCH sent to its tagged OK."""
    buf = bytearray(1 << 18)
    view = memoryview(buf)

    def until(done: bytes) -> int:
        seen, count = b"\r\n", 0  # the last octets received: the tagged line is last
        while done not in seen or not seen.endswith(b"\r\n"):
            n = sock.recv_into(buf)
            if not n:
                raise RuntimeError(f"connection closed before {done!r}")
            count += n
            seen = (seen + bytes(view[max(0, n - 8192):n]))[-16384:]
        if b"\r\n" + done.split()[0] + b" OK" not in seen:
            raise RuntimeError(f"not OK: {seen[-200:]!r}")
        return count

    until(b"* OK")
    sock.sendall(b"x1 LOGIN %s %s\r\n" % (RECIPIENT.encode(), password.encode()))
    until(b"\r\nx1 ")
    sock.sendall(b"x2 EXAMINE INBOX\r\n")
    until(b"\r\nx2 ")
    # The tag cannot occur in the messages: build_tree writes lowercase words.
    started = time.monotonic()
    sock.sendall(b"X3 UID FETCH 1:* (BODY.PEEK[])\r\n")
    size = until(b"\r\nX3 ")
    took = time.monotonic() - started
    sock.sendall(b"x4 LOGOUT\r\n")
    return size, took


def mbsync_pull(port: int, password: str, workdir: Path, folder: str = "INBOX") -> float:
    """Seconds one mbsync run takes to pull the folder into a new local Maildir."""
    local = workdir / "mbsync-local"
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir()
    rc = workdir / "mbsyncrc"
    rc.write_text(f"FSync no\n\nIMAPAccount bench\nHost {LOOPBACK}\nPort {port}\n"
                  f"User {RECIPIENT}\nPass \"{password}\"\nSSLType None\nAuthMechs LOGIN\n\n"
                  f"IMAPStore far\nAccount bench\n\nMaildirStore near\nPath {local}/\n"
                  f"Inbox {local}/INBOX\n\nChannel pull\nFar :far:\nNear :near:\n"
                  f"Patterns {folder}\nCreate Near\nSyncState *\nSync Pull\n")
    started = time.monotonic()
    done = subprocess.run(["mbsync", "-q", "-c", str(rc), "-a"], capture_output=True,
                          text=True, timeout=300, check=False)
    took = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"mbsync: {(done.stdout + done.stderr).strip()[-300:]}")
    shutil.rmtree(local, ignore_errors=True)
    return took


SMALL = "Small"  # the folder of --small messages


def small_tree(workdir: Path) -> Path:
    return workdir / "small" / "cur"


def add_folder(server: Any, cur: Path, name: str) -> None:
    """A folder NAME (Maildir++ .NAME, as both servers keep them) linked from CUR, its
    directories owned as the server's INBOX."""
    folder = server.maildir() / f".{name}"
    link_maildir(cur, folder)
    owner = server.maildir().stat()
    for path in (folder, *(folder / sub for sub in ("tmp", "new", "cur"))):
        os.chown(path, owner.st_uid, owner.st_gid)


def fetch_all(client: imaplib.IMAP4) -> int:
    """UID FETCH 1:* (BODY.PEEK[]); the bytes of message data received."""
    client.select("INBOX", readonly=True)
    typ, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
    if typ != "OK":
        raise RuntimeError(f"FETCH: {typ} {data!r:.200}")
    return sum(len(item[1]) for item in data if isinstance(item, tuple))


def starttls(port: int, context: ssl.SSLContext) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=120)
    client.starttls(ssl_context=context)
    return client


def run_round(server: Any, number: int, args: argparse.Namespace, tree: Path,
              workdir: Path, ca: Any) -> Round:
    result = Round(server.name, number)
    port, server.tls_port = free_port(), free_port()
    try:
        server.setup(workdir / f"{server.name}-{number}", port, tree)
        if args.small:
            add_folder(server, small_tree(workdir), SMALL)
        server.launch(time.monotonic() + 60)
        context = ssl.create_default_context()
        ca.configure_trust(context)
        clients = {
            "fetch_plain": lambda: imaplib.IMAP4("127.0.0.1", port, timeout=120),
            "fetch_tls": lambda: imaplib.IMAP4_SSL("127.0.0.1", server.tls_port,
                                                   ssl_context=context, timeout=120),
            "fetch_starttls": lambda: starttls(port, context),
        }
        for name, connect in clients.items():
            client = connect()
            client.login(RECIPIENT, server.password)
            fetch_all(client)  # once to warm the server's index and caches, as a client would
            rates = []
            cpu, mine, started = cpu_seconds(server.pids()), client_cpu(), time.monotonic()
            for _ in range(args.fetches):
                begun = time.monotonic()
                size = inbox = fetch_all(client)
                rates.append(size / 2**20 / (time.monotonic() - begun))
            took = time.monotonic() - started
            result.rates[name] = median(rates)
            result.rates[name + "_cpu"] = (cpu_seconds(server.pids()) - cpu) * 1000 / (
                args.fetches * size / 2**20)
            result.rates[name + "_client"] = (client_cpu() - mine) * 100 / took
            client.logout()
        raw = {"fetch_plain_raw": lambda: socket.create_connection(("127.0.0.1", port), 120),
               "fetch_tls_raw": lambda: context.wrap_socket(
                   socket.create_connection(("127.0.0.1", server.tls_port), 120),
                   server_hostname="127.0.0.1")}
        for name, connect in raw.items():
            rates = []
            for _ in range(args.fetches):
                with connect() as sock:
                    size, took = raw_fetch(sock, server.password)
                    rates.append(size / 2**20 / took)
            result.rates[name] = median(rates)
        if shutil.which("mbsync"):  # Debian's isync; the rows stay empty without it
            if args.small:  # indexed by the server before the clock, as the INBOX was
                client = imaplib.IMAP4("127.0.0.1", port, timeout=120)
                client.login(RECIPIENT, server.password)
                client.select(SMALL, readonly=True)
                client.uid("FETCH", "1:*", "(FLAGS)")
                client.logout()
            here = workdir / f"{server.name}-{number}"
            try:
                result.rates["fetch_mbsync"] = median(
                    [inbox / 2**20 / mbsync_pull(port, server.password, here)
                     for _ in range(args.fetches)])
                if args.small:
                    result.rates["fetch_mbsync_small"] = median(
                        [args.small / mbsync_pull(port, server.password, here, SMALL)
                         for _ in range(args.fetches)])
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
                say(f"  mbsync rows left out: {exc}")
        client = imaplib.IMAP4("127.0.0.1", port, timeout=120)
        client.login(RECIPIENT, server.password)
        client.create("Appended")
        body = b"Subject: appended\r\n\r\n" + b"x" * (args.append_size - 23) + b"\r\n"
        cpu, started = cpu_seconds(server.pids()), time.monotonic()
        for _ in range(args.appends):
            typ, data = client.append("Appended", None, None, body)
            if typ != "OK":
                raise RuntimeError(f"APPEND: {typ} {data!r:.200}")
        result.rates["append"] = args.appends / (time.monotonic() - started)
        result.rates["append_cpu"] = (cpu_seconds(server.pids()) - cpu) * 1000 / args.appends
        client.logout()
    except (OSError, RuntimeError, imaplib.IMAP4.error, Unavailable) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        server.stop()
    return result


FIGURES = (("fetch_plain", "FETCH plain, MiB/s"), ("fetch_tls", "FETCH over TLS, MiB/s"),
           ("fetch_starttls", "FETCH over STARTTLS, MiB/s"),
           ("fetch_plain_raw", "FETCH plain, octet-counting client, MiB/s"),
           ("fetch_tls_raw", "FETCH over TLS, octet-counting client, MiB/s"),
           ("fetch_mbsync", "mbsync pull of the INBOX, plain, MiB/s"),
           ("fetch_mbsync_small", "mbsync pull of a folder of small messages, plain, msg/s"),
           ("append", "APPEND, msg/s"))
RATES = {key for key, _ in FIGURES}
# CPU figures: lower is better, so their ratio is the peer's over ours (above 1: we use less).
CPU_FIGURES = (("fetch_plain_cpu", "server CPU per MiB, FETCH plain, ms"),
               ("fetch_tls_cpu", "server CPU per MiB, FETCH over TLS, ms"),
               ("fetch_starttls_cpu", "server CPU per MiB, FETCH over STARTTLS, ms"),
               ("append_cpu", "server CPU per APPEND, ms"))
CLIENT_FIGURES = (("fetch_plain_client", "client (imaplib) CPU, FETCH plain, % of its time"),
                  ("fetch_tls_client", "client (imaplib) CPU, FETCH over TLS, % of its time"),
                  ("fetch_starttls_client",
                   "client (imaplib) CPU, FETCH over STARTTLS, % of its time"))


def report(args: argparse.Namespace, results: dict[str, list[Round]], command: str,
           total: int, workdir_fs: str, interrupted: bool) -> str:
    keys = [key for key, _ in FIGURES + CPU_FIGURES + CLIENT_FIGURES]
    medians = {name: {key: median([r.rates[key] for r in rounds
                                   if not r.error and key in r.rates])
                      for key in keys} for name, rounds in results.items()}
    names = list(results)
    lines = [f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"Command: `{command}`",
             f"Load: INBOX of {args.messages} messages ({total / 2**20:.1f} MiB, about "
             f"{args.size:,} B each) on {workdir_fs}; a folder of {args.small} messages of "
             f"{args.small_size:,} B for mbsync; {args.appends} APPENDs of "
             f"{args.append_size} B; client imaplib; {args.rounds} rounds in turn, "
             f"{args.fetches} FETCHes a row and round; medians", "",
             "| figure | " + " | ".join(names) + " | mailgateway/Dovecot |",
             "|---|" + "---:|" * (len(names) + 1)]
    for key, label in FIGURES:
        row = [fmt(medians[n][key], 1) for n in names]
        mine, peer = medians.get("mailgateway", {}).get(key), medians.get("Dovecot", {}).get(key)
        lines.append(f"| {label} | " + " | ".join(row) + f" | {ratio(mine, peer)} |")
    for key, label in CPU_FIGURES + CLIENT_FIGURES:
        row = [fmt(medians[n][key], 2 if key.endswith("_cpu") else 0) for n in names]
        mine, peer = medians.get("mailgateway", {}).get(key), medians.get("Dovecot", {}).get(key)
        shown = ratio(peer, mine) if key.endswith("_cpu") else "-"
        lines.append(f"| {label} | " + " | ".join(row) + f" | {shown} |")
    lines.append("")
    lines.append("Ratios above 1: mailgateway is faster, or (CPU rows: Dovecot/mailgateway) "
                 "uses less CPU.")
    lines += report_footer([r for rounds in results.values() for r in rounds], interrupted)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", nargs="+", default=["mailgateway", "Dovecot"])
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes per message")
    parser.add_argument("--appends", type=int, default=500)
    parser.add_argument("--append-size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", type=int, default=2000,
                        help="messages in the folder mbsync pulls one at a time (0: none)")
    parser.add_argument("--small-size", type=int, default=20000, help="bytes per such message")
    parser.add_argument("--fetches", type=int, default=5,
                        help="FETCHes of the INBOX per row and round (their median)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--venv", type=Path)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--append", metavar="RESULTS_MD")
    args = parser.parse_args(argv)
    command = command_line("imap_transfer.py", argv)
    venv = pick_venv(args.venv)
    workdir = make_workdir(args.workdir, "mailgateway-imap-transfer-")
    workdir_fs = fs_type(workdir)
    say(f"venv {venv}, work folder {workdir} ({workdir_fs})")
    import trustme  # in the venv (a test dependency); one certificate for both servers
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
    cert.private_key_pem.write_to_path(str(workdir / "key.pem"))
    (workdir / "key.pem").chmod(0o600)
    paths = (workdir / "cert.pem", workdir / "key.pem")
    tree = workdir / "tree" / "cur"
    total = 0

    def make() -> list[Any]:
        nonlocal total
        made: list[Any] = []
        for name in args.servers:
            server: Any = (TlsMailgateway(workdir, RECIPIENT, venv, REPO, 10)
                           if name == "mailgateway" else TlsDovecot(workdir, RECIPIENT, 10))
            server.cert = paths
            made.append(server)
        kept = usable(made)
        if kept:
            total = build_tree(tree, args.messages, args.size, args.seed)
            if args.small:
                build_tree(small_tree(workdir), args.small, args.small_size, args.seed + 1)
        return kept

    servers, results, interrupted = run_in_turn(
        make, args.rounds, lambda server, rnd: run_round(server, rnd, args, tree, workdir, ca),
        lambda res: ", ".join(f"{k} {v:.1f}" for k, v in res.rates.items() if k in RATES),
        workdir, args.keep)
    if not servers and not interrupted:
        return 2
    return publish(results, interrupted,
                   lambda: report(args, results, command, total, workdir_fs, interrupted),
                   args.append, ": IMAP transfer, bench/imap_transfer.py")


if __name__ == "__main__":
    sys.exit(main())
