"""COMPRESS=DEFLATE against the client's speed: a big attachment to a fast and a slow reader.

Why: RFC 4978 trades server CPU for octets on the wire, which pays on a slow
link and costs on a fast one. mailgateway codes a big message's octets only
while the client reads them slower than zlib codes them (gateway/deflate.py,
LinkGauge); Dovecot's imap_zlib codes everything at its level. This fetches
one message of a base64 attachment (`--mib` of random octets, a third more
as base64) under COMPRESS DEFLATE, read by a client that paces itself to
each `--rates` MiB/s of octets on the wire, as a link of that speed would
(0: as fast as it can, as on loopback or a LAN), with a
receive buffer of `--window` octets (a slow link's few round trips of data in
flight; loopback's own buffers would take megabytes at once), and prints
per server and rate: the seconds until the tagged OK, the share of
the message that crossed the wire, and the server's CPU seconds. Medians of
`--rounds` FETCHes in one session.

    python bench/compress_link.py [--mib 6] [--rates 0,32,8] [--window 65536] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imap_compress_bench import Client, start  # noqa: E402
from peers import cpu_seconds  # noqa: E402
from rounds import make_workdir, pick_venv, say  # noqa: E402


def paced_fetch(c: Client, rate: float) -> tuple[float, int, int]:
    """FETCH 1 BODY.PEEK[], read at `rate` MiB/s of the wire (0: at once): (seconds,
    octets of the answer, octets on the wire)."""
    c.wire = 0
    c.send(b"f FETCH 1 BODY.PEEK[]\r\n")
    started, got, tail = time.perf_counter(), 0, b""
    while not (tail.endswith(b"\r\n") and b"\r\nf OK" in b"\r\n" + tail[-200:]):
        chunk = c.recv()
        got += len(chunk)
        tail = (tail + chunk)[-300:]
        if rate:
            due = started + c.wire / (rate * 2**20)
            if due > time.perf_counter():
                time.sleep(due - time.perf_counter())
    return time.perf_counter() - started, got, c.wire


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mib", type=int, default=6)
    p.add_argument("--rates", default="0,32,8")
    p.add_argument("--window", type=int, default=65536)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--recipient", default="alice@example.test")
    args = p.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    workdir = make_workdir(None, "mailgateway-compress-link-")
    cur = workdir / "tree" / "cur"
    cur.mkdir(parents=True)
    message = (b"From: a@example.test\r\nSubject: attachment\r\n\r\n"
               + base64.encodebytes(os.urandom(args.mib << 20)).replace(b"\n", b"\r\n"))
    (cur / "1700000000.M0P1.bench:2,S").write_bytes(message)
    say(f"one message of {len(message) / 2**20:.1f} MiB (base64 of random octets)")
    rows = []
    for name in ("mailgateway", "dovecot"):
        server = start(name, workdir, args.recipient, pick_venv(None), cur)
        if server is None:
            continue
        try:
            for rate in rates:
                c = Client(server.port, server.recipient, server.password)
                if rate:
                    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.window)
                c.compress()
                paced_fetch(c, 0)  # warm-up: index, page cache
                runs = []
                for _ in range(args.rounds):
                    cpu = cpu_seconds(server.pids())
                    secs, size, wire = paced_fetch(c, rate)
                    runs.append((secs, wire / size, cpu_seconds(server.pids()) - cpu))
                c.close()
                rows.append((server.name, rate, *(statistics.median(r[i] for r in runs)
                                                  for i in range(3))))
                say(f"  {rows[-1]}")
        finally:
            server.stop()
    print("| server | link, MiB/s | FETCH s | on the wire, share | server CPU s |")
    print("|---|---:|---:|---:|---:|")
    for name, rate, secs, share, cpu in rows:
        print(f"| {name} | {rate:g} | {secs:.2f} | {share:.2f} | {cpu:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
