"""FETCH throughput with COMPRESS=DEFLATE on and off: mailgateway beside Dovecot (issue 12).

Why: RFC 4978 trades server CPU for octets on the wire. This measures both
on loopback (where the wire is free, so it shows the CPU side): one session
per run does `FETCH 1:* BODY.PEEK[]` on an INBOX built by imap_bench.py's
builder (mixed sizes, real headers), with and without COMPRESS DEFLATE, and
the client reads the whole answer (raw socket, zlib when compressed: no
imaplib parsing in the way). Dovecot gets its imap_zlib plugin (its
default level, 6; mailgateway at its [imap] compress_level default, 1, since
2026-11-27; 6 before).
Each server and mode is measured `--rounds` times after a warm-up FETCH
(index built, files in the page cache); medians are printed.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imap_bench import build_tree  # noqa: E402
from peers import (  # noqa: E402
    LOOPBACK,
    Dovecot,
    MailgatewayImap,
    Unavailable,
    cpu_seconds,
    free_port,
)
from rounds import REPO, make_workdir, pick_venv, say  # noqa: E402

DOVECOT_ZLIB = "protocol imap {\n  mail_plugins = $mail_plugins imap_zlib\n}\n"


class Client:
    """A bare IMAP client: enough to log in, select, compress and read a FETCH."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=300)
        self.out = self.inp = None
        self.wire = 0
        got = b""
        while b"\r\n" not in got:  # the greeting
            got += self.recv()
        for tag, cmd in ((b"l", b'LOGIN "%s" "%s"' % (user.encode(), password.encode())),
                         (b"s", b"SELECT INBOX")):
            self.command(tag, cmd)

    def send(self, data: bytes) -> None:
        if self.out is not None:
            data = self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def recv(self) -> bytes:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError("closed")
        self.wire += len(chunk)
        return self.inp.decompress(chunk) if self.inp is not None else chunk

    def command(self, tag: bytes, cmd: bytes) -> bytes:
        """Send; read until the tagged answer ends what came."""
        self.send(tag + b" " + cmd + b"\r\n")
        got = bytearray()
        while True:
            got += self.recv()
            if not got.endswith(b"\r\n"):
                continue
            at = got.rfind(b"\r\n", 0, len(got) - 2)
            at = 0 if at < 0 else at + 2  # the last line's start
            if got.startswith(tag + b" ", at):
                if not got.startswith(tag + b" OK", at):
                    raise RuntimeError(f"{cmd[:30]!r}: {bytes(got[at:at + 200])!r}")
                return bytes(got)

    def compress(self) -> None:
        self.command(b"c", b"COMPRESS DEFLATE")
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inp = zlib.decompressobj(-15)

    def close(self) -> None:
        self.sock.close()


def measure(server, compress: bool) -> tuple[float, float, int, int]:
    """(seconds, server CPU seconds, octets of the answer, octets on the wire)."""
    c = Client(server.port, server.recipient, server.password)
    try:
        if compress:
            c.compress()
        c.wire = 0
        cpu = cpu_seconds(server.pids())
        started = time.perf_counter()
        text = c.command(b"f", b"FETCH 1:* BODY.PEEK[]")
        secs = time.perf_counter() - started
        return secs, cpu_seconds(server.pids()) - cpu, len(text), c.wire
    finally:
        c.close()


def start(name: str, workdir: Path, recipient: str, venv: Path, cur: Path) -> Any:
    """mailgateway, or Dovecot with imap_zlib, up on the INBOX cur/; None (said) if not."""
    server = (MailgatewayImap(workdir, recipient, venv, REPO, 10) if name == "mailgateway"
              else Dovecot(workdir, recipient, 10))
    try:
        server.check()
        server.setup(workdir / name, free_port(), cur)
        if name == "dovecot":
            server.config.write_text(server.config.read_text() + DOVECOT_ZLIB)
        server.launch(time.monotonic() + 120)
    except Unavailable as exc:
        say(f"{name} left out: {exc}")
        return None
    return server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", "-m", type=int, default=5000)
    p.add_argument("--rounds", "-r", type=int, default=3)
    p.add_argument("--servers", default="mailgateway,dovecot")
    p.add_argument("--recipient", default="alice@example.test")
    args = p.parse_args(argv)
    venv = pick_venv(None)
    workdir = make_workdir(None, "mailgateway-compress-bench-")
    tree = build_tree(workdir / "tree", args.messages, 3)
    say(f"INBOX: {tree.count} messages, {tree.size / 2**20:.0f} MiB")
    rows = []
    for name in args.servers.split(","):
        server = start(name, workdir, args.recipient, venv, tree.path / "cur")
        if server is None:
            continue
        try:
            measure(server, False)  # warm-up: index, page cache
            for compress in (False, True):
                runs = [measure(server, compress) for _ in range(args.rounds)]
                secs = statistics.median(r[0] for r in runs)
                cpu = statistics.median(r[1] for r in runs)
                size, wire = runs[0][2], runs[0][3]
                rows.append((server.name, "on" if compress else "off", secs, cpu,
                             size / secs / 2**20, wire / 2**20, size / wire))
                say(f"{rows[-1]}")
        finally:
            server.stop()
    print("| server | COMPRESS | FETCH 1:* BODY.PEEK[] s | server CPU s | MiB/s (text) "
          "| MiB on the wire | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, mode, secs, cpu, rate, wire, ratio in rows:
        print(f"| {name} | {mode} | {secs:.2f} | {cpu:.2f} | {rate:.0f} | {wire:.1f} "
              f"| {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
