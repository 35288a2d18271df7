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
                                    [--compare DIR] [--rounds N] [--peer]

--code DIR runs the gateway from another checkout (e.g. `git archive` of an
older commit unpacked in DIR) with this venv, for before/after figures.
--compare DIR also runs the gateway from DIR (as mailgateway-before) in each round.
--rounds N runs each attack N times (a row each): one round is noise on a shared disk.
--peer also runs the attacks that make sense against any SMTP server (PEER_ATTACKS:
none, big_messages, big_relay) on a private Postfix delivering into a private Dovecot's Maildir
(bench/peers.py, needs root), in turn with the gateway in each round, so a latency
limit is read against what they do on this disk. Its good client sends over SMTP and
reads over IMAP (the peer's Dovecot serves no POP3).
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
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peers import (  # noqa: E402
    Dovecot,
    PostfixDovecot,
    RssSampler,
    Unavailable,
    free_port,
    process_tree,
    wait_greeting,
)

BIN = Path(sys.executable).parent
PASSWORD = "correct horse battery staple"
USER = "alice@example.test"
GOOD = "127.0.0.2"  # the well-behaved client's address
LATENCY_LIMIT = 0.5
RSS_LIMIT_MB = 50


class Gateway:
    name = "mailgateway"
    password = PASSWORD

    def __init__(self, root: Path, code: Path | None, name: str = "mailgateway") -> None:
        self.root, self.name = root, name
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

    def pids(self) -> list[int]:
        return [self.proc.pid]

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def log_text(self) -> str:
        text = self.log.read_text(errors="replace")
        self.log.unlink()
        return text


class Peer:
    """Postfix delivering into the Maildir a private Dovecot serves, as Gateway is used."""

    name = "Postfix+Dovecot"
    password = Dovecot.password

    def __init__(self, root: Path, code: Path | None = None) -> None:
        self.root = root
        self.ports = {"smtp": free_port(), "imap": free_port()}
        self.setup = PostfixDovecot(root, USER, sessions=20)
        # The gateway's default [smtp] max_message_size; Postfix's own (10 MB) would
        # refuse the 34 MB messages at once, which is no test of its disk.
        # big_relay: 127.0.0.1 (the attackers; the good client is 127.0.0.2) may relay,
        # and sink.test goes to smtp-sink, as the gateway's [relay.routes] sends it.
        self.sink_port = free_port()
        self.setup.postfix.main_cf_extra = (
            "message_size_limit = 36700160\n"
            "mynetworks = 127.0.0.1/32\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
            "relay_domains = sink.test\n"
            f"transport_maps = inline:{{ sink.test=smtp:[127.0.0.1]:{self.sink_port} }}\n"
            "smtp_tls_security_level = none\n")
        self.log = root / "twistd.log"  # none: Postfix and Dovecot log apart

    def start(self) -> None:
        cur = self.root / "seed-cur"
        cur.mkdir(parents=True)
        (cur / "1.seed:2,").write_bytes(b"Subject: seed\r\n\r\nseed\r\n")
        self.setup.prepare(self.root / "run", self.ports["smtp"], self.ports["imap"], cur)
        try:
            self.setup.launch(time.monotonic() + 60)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.setup.stop()

    def pids(self) -> list[int]:
        return self.setup.pids()

    def rss_kib(self) -> int:
        total = 0
        for pid in process_tree(self.pids()):
            try:
                with open(f"/proc/{pid}/status") as fh:
                    total += next((int(line.split()[1]) for line in fh
                                   if line.startswith("VmRSS:")), 0)
            except OSError:
                pass
        return total

    def log_text(self) -> str:
        return ""


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
        self.worst_by_op: dict[str, float] = {}  # which operation was slow: send, pop3, imap

    def reset(self) -> None:
        self.worst, self.worst_by_op = 0.0, {}

    def timed(self, name: str, op: Callable[[], object], count: bool = True) -> None:
        t = time.monotonic()
        try:
            op()
        except Exception as e:  # noqa: BLE001  reported, and counts as the worst latency
            self.errors.append(repr(e)[:120])
        took = time.monotonic() - t
        self.worst_by_op[name] = max(self.worst_by_op.get(name, 0.0), took)
        if count:  # a whole operation, not a part of one
            self.worst = max(self.worst, took)
            self.ops += 1

    def run_once(self) -> None:
        self.timed("send", self.send)  # its last part (DATA to the 250) also as "data"
        if "pop3" in self.gw.ports:
            self.timed("pop3", self.read)
        self.timed("imap", self.read_imap)

    def send(self) -> None:
        with smtplib.SMTP("127.0.0.1", self.gw.ports["smtp"], timeout=60,
                          source_address=(GOOD, 0)) as s:
            s.ehlo()
            s.mail("bob@remote.test")
            s.rcpt(USER)
            # DATA to the 250: the part that waits for the message to be on disk.
            self.timed("data", lambda: s.data(b"Subject: good\r\n\r\nhello\r\n"), count=False)

    def read(self) -> None:
        with conn(self.gw.ports["pop3"], GOOD, 60) as s:
            expect(s, b"\r\n")
            s.sendall(f"USER {USER}\r\nPASS {self.gw.password}\r\n".encode())
            expect(s, b"+OK Logged in")
            s.sendall(b"QUIT\r\n")
            expect(s, b"\r\n")

    def read_imap(self) -> None:
        with conn(self.gw.ports["imap"], GOOD, 60) as s:
            expect(s, b"\r\n")
            s.sendall(f'l LOGIN {USER} "{self.gw.password}"\r\ns EXAMINE INBOX\r\n'
                      f'f FETCH * (FLAGS ENVELOPE)\r\nq LOGOUT\r\n'.encode())
            expect(s, b"q OK")

    def run(self) -> None:
        while not self.stop.is_set():
            self.run_once()
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
    message = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 34_000 + b".\r\n"
    refused: list[str] = []

    def one() -> None:
        # Raw SMTP, the message ready to send: smtplib would run regexes over each 34 MB
        # message holding this process's GIL, and the well-behaved client (a thread of
        # this process) would wait for that, not for the server (seconds, for any server).
        try:
            with conn(gw.ports["smtp"], timeout=120) as s:
                expect(s, b"\r\n")
                for command, ok in ((b"EHLO big.test", b"250 "), (b"MAIL FROM:<bob@remote.test>",
                                    b"\r\n"), (f"RCPT TO:<{USER}>".encode(), b"\r\n"),
                                    (b"DATA", b"\r\n")):
                    s.sendall(command + b"\r\n")
                    reply = expect(s, ok)
                    if reply[:1] not in (b"2", b"3"):
                        raise ConnectionError(f"{command!r}: {reply[:80]!r}")
                s.sendall(message)
                reply = expect(s, b"\r\n")
                if not reply.startswith(b"250"):
                    raise ConnectionError(f"at the dot: {reply[:80]!r}")
                s.sendall(b"QUIT\r\n")
        except OSError as e:  # a refusal would be no flood at all
            refused.append(repr(e)[:120])
    started = time.monotonic()
    threads = [threading.Thread(target=one, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # How fast the flood itself went: a server that kept the others fast by stalling
    # the big uploads would show here.
    gw.note = f"8 x 34 MB accepted in {time.monotonic() - started:.1f} s"
    if refused:
        raise RuntimeError(f"{len(refused)} of 8 big messages not accepted: {refused[0]}")
    stop.wait()


def raw_send(port: int, message: bytes, recipient: str, login: bool) -> None:
    """One message over raw SMTP, `message` already dot-stuffed and ending in CRLF.CRLF.

    Not smtplib: it runs two regex substitutions over each 34 MB message holding this
    process's GIL, and the well-behaved client (a thread of this process) would wait for
    that, not for the server (seconds, for any server), as an attacker's C client would not.
    """
    with conn(port, timeout=120) as s:
        expect(s, b"\r\n")
        commands = [(b"EHLO big.test", b"250 ")]
        if login:  # relaying from the gateway's submission port needs a login
            token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
            commands.append((b"AUTH PLAIN " + token, b"\r\n"))
        commands += [(b"MAIL FROM:<%s>" % (USER if login else "bob@remote.test").encode(),
                      b"\r\n"), (f"RCPT TO:<{recipient}>".encode(), b"\r\n"),
                     (b"DATA", b"\r\n")]
        for command, ok in commands:
            s.sendall(command + b"\r\n")
            reply = expect(s, ok)
            if reply[:1] not in (b"2", b"3"):
                raise ConnectionError(f"{command[:20]!r}: {reply[:80]!r}")
        s.sendall(message)
        reply = expect(s, b"\r\n")
        if not reply.startswith(b"250"):
            raise ConnectionError(f"at the dot: {reply[:80]!r}")
        s.sendall(b"QUIT\r\n")


def big_relay(gw: Gateway | Peer, stop: threading.Event) -> None:
    """8 x 34 MB relayed at once to smtp-sink: after the 250 the relay must stream them.

    Every line starts with a dot, so the relay stuffs every line. The gateway is sent to
    on submission with a login; the peer (Postfix, no SASL) on port 25 from 127.0.0.1,
    which its mynetworks trusts for this attack.
    """
    from relay_bench import Sink  # smtp-sink with its message counter

    # Stuffed once here (each ".x" line goes on the wire as "..x"), as a C client would.
    message = b"Subject: big\r\n\r\n" + (b"." + b".x" * 499 + b"\r\n") * 34_000 + b".\r\n"
    login = "submission" in gw.ports
    sink = Sink()
    sink.target = 8
    sink.start(gw.sink_port, time.monotonic() + 30)
    refused: list[str] = []
    try:
        def one() -> None:
            try:
                raw_send(gw.ports["submission" if login else "smtp"], message,
                         "far@sink.test", login)
            except OSError as e:
                refused.append(repr(e)[:120])
        started = time.monotonic()
        threads = [threading.Thread(target=one, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        accepted = time.monotonic() - started
        if refused:
            raise RuntimeError(f"{len(refused)} of 8 big messages not accepted: {refused[0]}")
        if not sink.wait(time.monotonic() + 600, lambda: not stop.is_set()):
            raise RuntimeError(f"only {sink.count} of 8 relayed before the attack ended")
        gw.note = (f"8 x 34 MB accepted in {accepted:.1f} s, "
                   f"at the sink in {time.monotonic() - started:.1f} s")
        stop.wait()
    finally:
        sink.stop()


def compressed_fetch(gw: Gateway, stop: threading.Event) -> None:
    """COMPRESS DEFLATE, then a 16 MB attachment-like message fetched again and again:
    zlib takes about a second for it, which must not be the reactor's second."""
    body = base64.encodebytes(os.urandom(12_000_000)).replace(b"\n", b"\r\n")
    message = b"Subject: attachment\r\n\r\n" + body
    with imap_login(gw.ports["imap"]) as s:
        s.sendall(b"c CREATE Big\r\na APPEND Big {%d+}\r\n" % len(message) + message
                  + b"\r\ns SELECT Big\r\nz COMPRESS DEFLATE\r\n")
        expect(s, b"z OK")
        out, inp = zlib.compressobj(1, zlib.DEFLATED, -15), zlib.decompressobj(-15)
        n = 0
        while not stop.is_set():
            n += 1
            s.sendall(out.compress(b"f%d FETCH 1 BODY.PEEK[]\r\n" % n)
                      + out.flush(zlib.Z_SYNC_FLUSH))
            got, tail = b"", b"f%d OK" % n
            while tail not in got[-200:]:
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("closed during the FETCH")
                got = got[-200:] + inp.decompress(chunk)
    gw.note = f"{n} compressed FETCHes of 16 MB"


def many_parts(gw: Gateway, stop: threading.Event, item: bytes = b"BODY.PEEK[1]") -> None:
    """A 16 MB attachment asked for 32 times in each FETCH (max_fetch_contents): held
    once per item, that is half a gigabyte for one command."""
    body = base64.encodebytes(os.urandom(12_000_000)).replace(b"\n", b"\r\n")
    message = (b"Subject: attachment\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"\r\n--b--\r\n")
    items = b" ".join([item] * 32)
    with imap_login(gw.ports["imap"]) as s:
        s.sendall(b"c CREATE Parts\r\na APPEND Parts {%d+}\r\n" % len(message) + message
                  + b"\r\ns SELECT Parts\r\n")
        expect(s, b"s OK")
        n = 0
        while not stop.is_set():
            n += 1
            s.sendall(b"f%d FETCH 1 (%s)\r\n" % (n, items))
            got, tail = b"", b"f%d OK" % n
            while tail not in got:
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("closed during the FETCH")
                got = got[-200:] + chunk
    gw.note = f"{n} FETCHes of 32 x {item.decode()}"


def many_binary(gw: Gateway, stop: threading.Event) -> None:
    """many_parts with the attachment decoded (RFC 3516 BINARY): 32 x 12 MB."""
    many_parts(gw, stop, b"BINARY.PEEK[1]")


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
           "eightbit": eightbit, "compressed_fetch": compressed_fetch,
           "many_parts": many_parts, "many_binary": many_binary}


# Attacks that need nothing of the gateway's (no user database, no SEARCH seed): also
# run against the peer with --peer.
PEER_ATTACKS = ("none", "big_messages", "big_relay")


# -- one attack ----------------------------------------------------------------------

def attack(name: str, gw: Gateway | Peer, seconds: float) -> dict:
    gw.start()
    try:
        good = GoodClient(gw)
        good.start()
        time.sleep(2)  # warm-up: the size while serving the good client is the baseline
        base = gw.rss_kib()
        good.reset()
        sampler = RssSampler(gw.pids)
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
    log = gw.log_text()
    return {"name": name, "server": gw.name, "note": getattr(gw, "note", ""),
            "worst": good.worst, "by_op": good.worst_by_op,
            "ops": good.ops, "errors": good.errors, "rss_mb": (peak - base) / 1024,
            "tracebacks": log.count("Traceback"), "failure": failure}


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
    ap.add_argument("--compare", type=Path,
                    help="also run the gateway from this checkout, as mailgateway-before, "
                         "in the same rounds")
    ap.add_argument("--rounds", type=int, default=1, help="each attack this many times")
    ap.add_argument("--peer", action="store_true",
                    help=f"also run {', '.join(PEER_ATTACKS)} against Postfix+Dovecot")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(ATTACKS)
    peer = args.peer
    if peer:
        try:
            Peer(Path(tempfile.gettempdir())).setup.check()
        except Unavailable as e:
            print(f"no peer: {e}", file=sys.stderr)
            peer = False
    work = Path(tempfile.mkdtemp(prefix="abuse-"))
    work.chmod(0o755)  # Postfix and Dovecot drop privileges and must reach their folders
    rows = []
    try:
        prepare(work / "seed", args.code)
        for n in range(1, args.rounds + 1):
            for name in names:
                gateways = [("mailgateway", args.code)]
                if args.compare:
                    gateways.append(("mailgateway-before", args.compare))
                for label, code in gateways:
                    root = work / f"{name}-{n}-{label}"
                    shutil.copytree(work / "seed", root, symlinks=True,
                                    ignore=shutil.ignore_patterns("twistd.log", "run"))
                    print(f"round {n}: {name} on {label} ...", file=sys.stderr, flush=True)
                    rows.append(attack(name, Gateway(root, code, label), args.seconds)
                                | {"round": n})
                    print(f"  {rows[-1]}", file=sys.stderr, flush=True)  # kept if a later one fails
                    shutil.rmtree(root, ignore_errors=True)
                if peer and name in PEER_ATTACKS:
                    root = work / f"{name}-{n}-peer"
                    print(f"round {n}: {name} on the peer ...", file=sys.stderr, flush=True)
                    try:
                        rows.append(attack(name, Peer(root), args.seconds) | {"round": n})
                        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
                    except Unavailable as e:  # the peer did not start: a round lost, not all
                        print(f"round {n}: {name}: the peer did not start: {e}",
                              file=sys.stderr, flush=True)
                    shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"| round | server | attack ({args.seconds:g} s) | worst latency | worst by operation "
          "| good ops | RSS growth | tracebacks | result |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        # Limits over the idle run ("none") of the same round and server: the machine's
        # own noise (other work on it, the good client's scrypt at 16 MB a hash) is not
        # the attack's.
        idle = next((i for i in rows if i["name"] == "none" and i["round"] == r["round"]
                     and i["server"] == r["server"]), {"worst": 0.0, "rss_mb": 0.0})
        # The RSS limit is the gateway's: the peer's processes (an smtpd and a cleanup
        # per session) come and go, and their sum is reported, not judged.
        rss_ok = r["server"] == Peer.name or r["rss_mb"] < max(0.0, idle["rss_mb"]) + RSS_LIMIT_MB
        ok = (r["worst"] < idle["worst"] + LATENCY_LIMIT and rss_ok
              and not r["tracebacks"] and not r["errors"] and not r["failure"])
        notes = "; ".join(r["errors"][:1] + r["failure"][:1] + ([r["note"]] if r["note"] else []))
        verdict = ("pass" if ok else "FAIL") + (f" ({notes})" if notes else "")
        by_op = ", ".join(f"{op} {t:.2f}" for op, t in r["by_op"].items())
        print(f"| {r['round']} | {r['server']} | {r['name']} | {r['worst']:.2f} s | {by_op} "
              f"| {r['ops']} | {r['rss_mb']:.0f} MB | {r['tracebacks']} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
