"""Hostile clients against a real gateway while a well-behaved client sends and reads mail.

Issue 11's proof: each attack runs for a few seconds against a fresh
`twistd -n mailgateway` on loopback. Meanwhile a well-behaved client (from
127.0.0.2, so the attackers' failed logins on 127.0.0.1 are not its own)
sends a message over SMTP, logs in over POP3 and reads the newest message's
envelope over IMAP, again and again. For each
attack the report gives the well-behaved client's worst latency, the
gateway's peak RSS growth over its size while serving only that client, and
pass/fail against limits over the run without attack ("none", the noise of
the machine):

    worst latency < none's + 0.5 s    RSS growth < none's + 50 MB    no traceback

    .venv/bin/python bench/abuse.py [--seconds 5] [--only lsub,search] [--code DIR]

--code DIR runs the gateway from another checkout (e.g. `git archive` of an
older commit unpacked in DIR) with this venv, for before/after figures.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peers import RssSampler, free_port, wait_greeting  # noqa: E402

BIN = Path(sys.executable).parent
PASSWORD = "correct horse battery staple"
USER = "alice@example.test"
GOOD = "127.0.0.2"  # the well-behaved client's address
LATENCY_LIMIT = 0.5
RSS_LIMIT_MB = 50


class Gateway:
    def __init__(self, root: Path, code: Path | None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ports = {n: free_port() for n in ("smtp", "submission", "pop3", "imap")}
        # big_relay's remote server (Postfix's smtp-sink): mail for sink.test goes there.
        self.sink_port = free_port()
        listen = "".join(f'{n} = "tcp:{p}:interface=127.0.0.1"\n' for n, p in self.ports.items())
        self.config = root / "gw.toml"
        # Run as root, it refuses to serve unless told so in as many words.
        user = 'user = "root"\n' if os.geteuid() == 0 else ""
        self.config.write_text(
            f'[server]\nhostname = "mx.example.test"\ndomains = ["example.test"]\n{user}'
            f'state_dir = "{root / "var"}"\n[listen]\n{listen}'
            f'[auth]\nplaintext_from_loopback = true\n'
            f'[relay]\nnameservers = ["127.0.0.1"]\ndns_port = {free_port()}\ntls = "none"\n'
            f'[relay.routes]\n"sink.test" = "[127.0.0.1]:{self.sink_port}"\n'
            # No SPF/DKIM/DMARC: the name server above is a closed port.
            f'[inbound_auth]\ncheck = false\n')
        # One malloc arena per thread pool thread would add tens of MB of RSS noise that
        # has nothing to do with what a client makes the gateway hold.
        self.env = dict(os.environ, MALLOC_ARENA_MAX="2")
        if code is not None:
            self.env["PYTHONPATH"] = str(code)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "twistd.log"

    def cli(self, *args: str, stdin: str = "") -> None:
        subprocess.run([str(BIN / "mailgateway"), "--config", str(self.config), *args],
                       input=stdin.encode(), check=True, env=self.env, capture_output=True)

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "twistd"), "-n", "--pidfile=", "mailgateway", "--config",
                 str(self.config)], cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, start_new_session=True)
        try:
            for name, port in self.ports.items():
                ready = {"pop3": b"+OK", "imap": b"* OK"}.get(name, b"220")
                wait_greeting(port, time.monotonic() + 60, lambda: self.proc.poll() is None,
                              ready, b"QUIT\r\n" if name != "imap" else b"a LOGOUT\r\n")
        except BaseException:
            self.stop()  # never leave a gateway running behind the bench
            raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


def conn(port: int, source: str = "127.0.0.1", timeout: float = 30) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0))


def expect(s: socket.socket, token: bytes) -> bytes:
    data = b""
    while token not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before {token!r}: {data[-200:]!r}")
        data += chunk
    return data


# -- the well-behaved client ----------------------------------------------------------

class GoodClient(threading.Thread):
    """Sends one message, then logs in over POP3, in a loop; keeps the worst latency."""

    def __init__(self, gw: Gateway) -> None:
        super().__init__(daemon=True)
        self.gw, self.stop = gw, threading.Event()
        self.worst, self.ops, self.errors = 0.0, 0, []

    def timed(self, op: Callable[[], None]) -> None:
        t = time.monotonic()
        try:
            op()
        except Exception as e:  # noqa: BLE001  reported, and counts as the worst latency
            self.errors.append(repr(e)[:120])
        self.worst = max(self.worst, time.monotonic() - t)
        self.ops += 1

    def send(self) -> None:
        with smtplib.SMTP("127.0.0.1", self.gw.ports["smtp"], timeout=60,
                          source_address=(GOOD, 0)) as s:
            s.sendmail("bob@remote.test", [USER], b"Subject: good\r\n\r\nhello\r\n")

    def read(self) -> None:
        with conn(self.gw.ports["pop3"], GOOD, 60) as s:
            expect(s, b"\r\n")
            s.sendall(f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode())
            expect(s, b"+OK Logged in")
            s.sendall(b"QUIT\r\n")
            expect(s, b"\r\n")

    def read_imap(self) -> None:
        with conn(self.gw.ports["imap"], GOOD, 60) as s:
            expect(s, b"\r\n")
            s.sendall(f'l LOGIN {USER} "{PASSWORD}"\r\ns EXAMINE INBOX\r\n'
                      f'f FETCH * (FLAGS ENVELOPE)\r\nq LOGOUT\r\n'.encode())
            expect(s, b"q OK")

    def run(self) -> None:
        while not self.stop.is_set():
            self.timed(self.send)
            self.timed(self.read)
            self.timed(self.read_imap)
            self.stop.wait(0.1)


# -- the attacks: each runs until stop is set ------------------------------------------

def imap_login(port: int, timeout: float = 120) -> socket.socket:
    s = conn(port, timeout=timeout)
    expect(s, b"\r\n")
    s.sendall(f'l LOGIN {USER} "{PASSWORD}"\r\n'.encode())
    expect(s, b"l OK")
    return s


def lsub(gw: Gateway, stop: threading.Event) -> None:
    with imap_login(gw.ports["imap"]) as s:
        s.sendall(b"c CREATE " + b"a" * 60 + b"\r\ns SUBSCRIBE " + b"a" * 60 + b"\r\n")
        expect(s, b"s ")
        while not stop.is_set():
            s.sendall(b'x LSUB "" "' + b"*a" * 7 + b'b"\r\n')
            expect(s, b"x ")


def smtp_pipeline(gw: Gateway, stop: threading.Event) -> None:
    socks = []
    for _ in range(2):
        s = conn(gw.ports["smtp"])
        expect(s, b"\r\n")
        s.sendall(b"EHLO a\r\nMAIL FROM:<b@remote.test>\r\nRCPT TO:<" + USER.encode()
                  + b">\r\nDATA\r\n")
        expect(s, b"354")
        s.settimeout(5)
        try:  # 2 MB of NOOPs behind the spool write, never reading the replies
            s.sendall(b"hi\r\n.\r\n" + b"NOOP\r\n" * 350_000)
        except OSError:
            pass
        socks.append(s)
    stop.wait()
    for s in socks:
        s.close()


def auth_guess(gw: Gateway, stop: threading.Event) -> None:
    token = base64.b64encode(f"\0{USER}\0guess".encode())

    def one() -> None:
        while not stop.is_set():
            try:
                with conn(gw.ports["smtp"], timeout=20) as s:
                    expect(s, b"\r\n")
                    s.sendall(b"EHLO a\r\n")
                    expect(s, b"250 ")
                    while not stop.is_set():
                        s.sendall(b"AUTH PLAIN " + token + b"\r\n")
                        reply = expect(s, b"\r\n")
                        if reply.startswith(b"421"):
                            break
            except OSError:
                pass
    run_threads(one, 40, stop)


def search(gw: Gateway, stop: threading.Event) -> None:
    keys = b" ".join(b"NOT BODY q%d NOT TEXT q%d" % (i, i) for i in range(30))  # 60 terms

    def one() -> None:
        with imap_login(gw.ports["imap"]) as s:
            s.sendall(b"s SELECT INBOX\r\n")
            expect(s, b"s OK")
            while not stop.is_set():
                s.sendall(b"x SEARCH " + keys + b"\r\n")
                expect(s, b"x ")
    run_threads(one, 24, stop)


def deep_search(gw: Gateway, stop: threading.Event) -> None:
    with imap_login(gw.ports["imap"]) as s:
        s.sendall(b"s SELECT INBOX\r\n")
        expect(s, b"s OK")
        for command in (b"(" * 20000 + b"ALL" + b")" * 20000, b"NOT " * 8000 + b"ALL",
                        b"OR " * 5000 + b"ALL " * 5001):
            if stop.is_set():
                break
            s.sendall(b"x SEARCH " + command + b"\r\n")
            expect(s, b"x ")
        stop.wait()


def unread_output(gw: Gateway, stop: threading.Event) -> None:
    jobs = [("pop3", b"CAPA\r\n"), ("smtp", b"HELP\r\n"), ("imap", b"a CAPABILITY\r\n")]

    def flood(port: int, line: bytes) -> None:
        with conn(port) as s:
            s.settimeout(1)
            data, sent = line * (10_000_000 // len(line)), 0
            while sent < len(data) and not stop.is_set():
                try:
                    sent += s.send(data[sent:sent + 65536])
                except (TimeoutError, BlockingIOError):
                    continue  # the gateway stopped reading: good
                except OSError:
                    break
            stop.wait()
    threads = [threading.Thread(target=flood, args=(gw.ports[n], line), daemon=True)
               for n, line in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def big_messages(gw: Gateway, stop: threading.Event) -> None:
    body = (b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 34_000)

    def one() -> None:
        with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=120) as s:
            s.sendmail("bob@remote.test", [USER], body)
    run_threads(one, 8, stop, repeat=False)


def big_relay(gw: Gateway, stop: threading.Event) -> None:
    """8 x 34 MB relayed at once to smtp-sink: after the 250 the relay must stream them."""
    from relay_bench import Sink  # smtp-sink with its message counter

    body = (b"Subject: big\r\n\r\n" + (b".x" * 499 + b"\r\n") * 34_000)
    sink = Sink()
    sink.target = 8
    sink.start(gw.sink_port, time.monotonic() + 30)
    try:
        def one() -> None:
            with smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=120) as s:
                s.login(USER, PASSWORD)  # relaying needs a login
                s.sendmail(USER, ["far@sink.test"], body)
        threads = [threading.Thread(target=one, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        if not sink.wait(time.monotonic() + 600, lambda: not stop.is_set()):
            raise RuntimeError(f"only {sink.count} of 8 relayed before the attack ended")
        stop.wait()
    finally:
        sink.stop()


def literals(gw: Gateway, stop: threading.Event) -> None:
    def one() -> None:
        try:
            with conn(gw.ports["imap"], timeout=5) as s:
                expect(s, b"\r\n")
                s.sendall(b"a LOGIN" + (b" {65536+}\r\n" + b"x" * 65536) * 63 + b"\r\n")
                stop.wait()
        except OSError:
            pass
    run_threads(one, 20, stop, repeat=False)


def eightbit(gw: Gateway, stop: threading.Event) -> None:
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=60) as s:
        s.sendmail("bob@remote.test", [USER],
                   b"From: J\xfcrgen <j@remote.test>\r\nSubject: caf\xe9\r\n\r\nx\r\n")
    deadline = time.monotonic() + 20
    with imap_login(gw.ports["imap"]) as s:
        while True:
            s.sendall(b"s SELECT INBOX\r\nf FETCH 1:* (ENVELOPE)\r\nh SEARCH SUBJECT caf\r\n")
            out = expect(s, b"h ")
            if b"f OK" in out and b"* SEARCH" in out and b"* SEARCH\r\n" not in out:
                break
            if b"f NO" in out or b"h NO" in out or time.monotonic() > deadline:
                raise RuntimeError("mailbox broken: " + out.split(b"\r\n")[-2].decode())
            time.sleep(0.2)
    stop.wait()


def run_threads(target: Callable[[], None], n: int, stop: threading.Event,
                repeat: bool = True) -> None:
    def guarded() -> None:
        try:
            target()
        except OSError:
            pass
    threads = [threading.Thread(target=guarded, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(timeout=5)


def idle(gw: Gateway, stop: threading.Event) -> None:
    stop.wait()  # no attack: the noise floor of the machine


ATTACKS = {"none": idle, "lsub": lsub, "smtp_pipeline": smtp_pipeline, "auth_guess": auth_guess,
           "search": search, "deep_search": deep_search, "unread_output": unread_output,
           "big_messages": big_messages, "big_relay": big_relay, "literals": literals,
           "eightbit": eightbit}


# -- one attack ----------------------------------------------------------------------

def attack(name: str, root: Path, code: Path | None, seconds: float) -> dict:
    gw = Gateway(root, code)
    gw.start()
    try:
        good = GoodClient(gw)
        good.start()
        time.sleep(2)  # warm-up: the size while serving the good client is the baseline
        base = gw.rss_kib()
        good.worst = 0.0
        sampler = RssSampler(lambda: [gw.proc.pid])
        sampler.start()
        stop, failure = threading.Event(), []

        def run() -> None:
            try:
                ATTACKS[name](gw, stop)
            except Exception as e:  # noqa: BLE001  the attack's own outcome is a result
                failure.append(repr(e)[:200])
        t = threading.Thread(target=run, daemon=True)
        t.start()
        time.sleep(seconds)
        stop.set()
        good.stop.set()
        good.join(timeout=120)
        t.join(timeout=30)
        peak, _ = sampler.finish()
    finally:
        gw.stop()
    log = gw.log.read_text(errors="replace")
    gw.log.unlink()
    return {"name": name, "worst": good.worst, "ops": good.ops, "errors": good.errors,
            "rss_mb": (peak - base) / 1024, "tracebacks": log.count("Traceback"),
            "failure": failure}


def prepare(root: Path, code: Path | None) -> None:
    """A user and 300 messages (for SEARCH) in a state dir every attack starts from."""
    gw = Gateway(root, code)
    gw.cli("user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n")
    gw.start()
    try:
        with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=60) as s:
            for n in range(300):
                s.sendmail("bob@remote.test", [USER],
                           b"Subject: m%d\r\n\r\n" % n + b"line of text\r\n" * 200)
        maildir = root / "var" / "mail" / "example.test" / "alice" / "new"
        deadline = time.monotonic() + 120
        while len(list(maildir.iterdir()) if maildir.is_dir() else []) < 300:
            if time.monotonic() > deadline:
                raise RuntimeError("setup messages not delivered")
            time.sleep(0.2)
    finally:
        gw.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--only", default="", help="comma-separated attack names")
    ap.add_argument("--code", type=Path, help="run the gateway from this checkout")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(ATTACKS)
    work = Path(tempfile.mkdtemp(prefix="abuse-"))
    rows = []
    try:
        prepare(work / "seed", args.code)
        for name in names:
            root = work / name
            shutil.copytree(work / "seed", root, symlinks=True,
                            ignore=shutil.ignore_patterns("twistd.log", "run"))
            print(f"{name} ...", file=sys.stderr, flush=True)
            rows.append(attack(name, root, args.code, args.seconds))
            shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"| attack ({args.seconds:g} s) | worst latency | good ops | RSS growth | tracebacks "
          "| result |\n|---|---|---|---|---|---|")
    # Limits over the idle run ("none"): the machine's own noise (other work on it, the
    # good client's scrypt at 16 MB a hash) is not the attack's.
    idle = next((r for r in rows if r["name"] == "none"), {"worst": 0.0, "rss_mb": 0.0})
    for r in rows:
        ok = (r["worst"] < idle["worst"] + LATENCY_LIMIT
              and r["rss_mb"] < max(0.0, idle["rss_mb"]) + RSS_LIMIT_MB
              and not r["tracebacks"] and not r["errors"] and not r["failure"])
        notes = "; ".join(r["errors"][:1] + r["failure"][:1])
        verdict = ("pass" if ok else "FAIL") + (f" ({notes})" if notes else "")
        print(f"| {r['name']} | {r['worst']:.2f} s | {r['ops']} | {r['rss_mb']:.0f} MB "
              f"| {r['tracebacks']} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
