"""IMAP on a 100,000-message INBOX: mailgateway beside Dovecot, same client, same run (issue 3).

Why this shape: a big mailbox is where an IMAP server's index design shows,
and Dovecot (Debian's dovecot-imapd) is what users would pick instead. The
INBOX is built once per run as a Maildir (mixed sizes, some multipart, real
headers); every round hard-links a fresh copy of it (`cp -al`) for each
server, so each starts with no index, and the servers take turns. The client
is Python's imaplib, not ours. Per server and round:

  SELECT first     no index yet: the server builds it from the Maildir
  SELECT restart   first SELECT after a restart, the index on disk
  SELECT warm      a new session's SELECT while the server runs (median of 3)
  UID FETCH 1:* (FLAGS), FETCH 1:10000 (ENVELOPE), SEARCH FROM, SEARCH BODY:
                   first (nothing cached) and again (cached)
  APPEND           messages/s into another folder, one session, in sequence
  memory           RSS and PSS of the server's processes with N idle logged-in
                   sessions, INBOX not selected, then selected in all of them

Before each server's round the message files are read once, so both servers
find them in the page cache (warm cache figures for both; a tree reused with
--tree was otherwise cold for the first server only, and its first SEARCH
paid the disk that the second server's did not). --cold instead drops them
from the page cache (posix_fadvise DONTNEED) before each round: both read
from the disk. This is a benchmark, not a test: it prints
figures and ratios, never judges them. Everything started is stopped at the
end, on Ctrl-C and on errors too.
"""

from __future__ import annotations

import argparse
import base64
import imaplib
import json
import os
import random
import shutil
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import (  # noqa: E402  (bench/ is not a package: found via the line above)
    DOVECOT,
    LOOPBACK,
    Dovecot,
    MailgatewayImap,
    RssSampler,
    Unavailable,
    cpu_seconds,
    free_port,
    report_footer,
    tail,
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
)
from smtp_accept import _output, fmt, median, ratio  # noqa: E402

TREE_VERSION = 1

# --- the mailbox -----------------------------------------------------------------------------

FIRST = ("Alice Bruno Chen Dana Emil Fatima Greta Hiro Ines Jonas Kofi Lena Mateo Nora Omar "
         "Priya Quentin Rosa Sven Tariq Uma Viktor Wen Yusuf Zoe").split()
LAST = ("Adams Berg Costa Dubois Eriksen Fischer Garcia Haddad Ito Jensen Kowalski Lopez "
        "Moreau Nakamura Okafor Petrov Quinn Rossi Schmidt Tanaka").split()
DOMAINS = ("example.org", "example.net", "mail.example.com", "lists.example.org",
           "corp.example", "uni.example.edu")
WORDS = ("the of and to in is that for it as with was on be by at this from or have an are not "
         "but which were all we when your can said there use each she do how their if will up "
         "other about out many then them these so some her would make like him into time has "
         "look two more write go see number no way could people my than first water been call "
         "who oil its now find long down day did get come made may part report budget meeting "
         "release server invoice patch review schedule draft kernel network project").split()
SENDERS = 25_000  # distinct From addresses: SEARCH FROM one finds about four messages
BODY_NEEDLE = "quokka-canary-7"  # in a dozen text bodies, never in the word list


@dataclass
class Tree:
    """A built INBOX (a Maildir whose cur/ holds the messages) and what SEARCH must find."""

    path: Path
    count: int
    seed: int
    from_needle: str = ""
    from_hits: int = 0
    body_needle: str = BODY_NEEDLE
    body_hits: int = 0
    size: int = 0
    multipart: int = 0


def _body(rng: random.Random, lines: list[str], size: int, needle: bool) -> str:
    out, total, i = [], 0, rng.randrange(len(lines))
    while total < size:
        out.append(lines[i % len(lines)])
        total += len(out[-1]) + 1
        i += 1
    if needle:
        out.insert(len(out) // 2, f"See {BODY_NEEDLE} for the details.")
    return "\n".join(out) + "\n"


def _message(rng: random.Random, lines: list[str], n: int, when: int, needle: bool
             ) -> tuple[bytes, int, bool]:
    """One message of 300 B to 20 KB: (bytes, sender id, multipart)."""
    sid = rng.randrange(SENDERS)
    first, last = FIRST[sid % len(FIRST)], LAST[sid // len(FIRST) % len(LAST)]
    domain = DOMAINS[sid % len(DOMAINS)]
    addr = f"{first.lower()}.{last.lower()}.s{sid:05d}@{domain}"
    name = "=?UTF-8?Q?Jos=C3=A9_M=C3=BCller?=" if sid % 23 == 0 else f'"{first} {last}"'
    date = formatdate(when, usegmt=True)
    pick = rng.random()
    target = (rng.randint(300, 2000) if pick < 0.55 else rng.randint(2000, 8000)
              if pick < 0.85 else rng.randint(8000, 20000))
    head = []
    if target > 900 or rng.random() < 0.5:
        head += [f"Return-Path: <{addr}>", "Delivered-To: alice@example.test",
                 f"Received: from mx{n % 7}.{domain} (mx{n % 7}.{domain} [192.0.2.{n % 250 + 1}])"
                 f"\n\tby mail.example.test with ESMTPS id {rng.getrandbits(48):012X}"
                 f"\n\tfor <alice@example.test>; {date}",
                 f"Received: from [10.0.{n % 200}.{n % 250}] by mx.{domain} with ESMTPSA; {date}",
                 "X-Mailer: Thunderbird 115.5.0"]
    subject = " ".join(rng.choices(WORDS, k=rng.randint(3, 8))).capitalize()
    head += [f"Date: {date}", f"From: {name} <{addr}>", "To: Alice Example <alice@example.test>"]
    if rng.random() < 0.2:
        other = rng.randrange(SENDERS)
        head.append(f"Cc: {FIRST[other % 25]} <{FIRST[other % 25].lower()}{other}@example.net>")
    reply = rng.random() < 0.2
    head += [f"Subject: {'Re: ' if reply else ''}{subject}",
             f"Message-ID: <{n}.{rng.getrandbits(32):08x}@{domain}>"]
    if reply:
        head.append(f"In-Reply-To: <{n - 1}.{rng.getrandbits(32):08x}@example.net>")
    head.append("MIME-Version: 1.0")
    left = max(40, target - sum(len(h) + 1 for h in head) - 120)
    kind = rng.random()
    if kind < 0.75 and target < 14000:
        head += ["Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit"]
        body = _body(rng, lines, left, needle)
    else:
        b = f"b{n:06d}{rng.getrandbits(32):08x}"
        head.append(f'Content-Type: multipart/{"alternative" if kind < 0.85 else "mixed"}; '
                    f'boundary="{b}"')
        text = _body(rng, lines, left // 3 if kind >= 0.85 else left // 2, needle)
        if kind < 0.85:
            html = "<html><body><p>" + text.replace("\n", "</p>\n<p>") + "</p></body></html>\n"
            second = f"Content-Type: text/html; charset=us-ascii\n\n{html}"
        else:
            raw = base64.encodebytes(rng.randbytes(max(30, (left - len(text)) * 3 // 4))).decode()
            second = ('Content-Type: application/pdf; name="report.pdf"\n'
                      'Content-Disposition: attachment; filename="report.pdf"\n'
                      f"Content-Transfer-Encoding: base64\n\n{raw}")
        body = (f"This is a multi-part message in MIME format.\n\n--{b}\n"
                f"Content-Type: text/plain; charset=us-ascii\n\n{text}\n--{b}\n{second}\n--{b}--\n")
    return ("\n".join(head) + "\n\n" + body).encode(), sid, not (kind < 0.75 and target < 14000)


def build_tree(path: Path, count: int, seed: int) -> Tree:
    """Write COUNT messages into PATH/cur (":2," or ":2,S"), mtimes = Date; reuse a match."""
    manifest = path / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        if (data.pop("version", 0), data["count"], data["seed"]) == (TREE_VERSION, count, seed):
            return Tree(path=path, **data)
        shutil.rmtree(path)
    rng = random.Random(seed)
    lines = [" ".join(rng.choices(WORDS, k=rng.randint(6, 13))).capitalize() + "."
             for _ in range(20_000)]
    needles = set(rng.sample(range(count), min(12, count)))
    cur = path / "cur"
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    tree = Tree(path=path, count=count, seed=seed, body_hits=len(needles))
    senders: Counter[int] = Counter()
    start, step = 1_704_067_200, max(1, 2 * 365 * 86400 // count)  # two years from 2024
    started = time.monotonic()
    for n in range(count):
        when = start + n * step + rng.randrange(step)
        data, sid, multi = _message(rng, lines, n, when, n in needles)
        senders[sid] += 1
        tree.size += len(data)
        tree.multipart += multi
        name = cur / f"{when}.M{n % 1_000_000:06d}P4242Q{n}.bench:2,{'S' * (rng.random() < 0.7)}"
        with open(name, "wb") as fh:
            fh.write(data)
        os.utime(name, (when, when))  # INTERNALDATE: both servers take the file's mtime
        if n and n % 20_000 == 0:
            say(f"  {n} messages written ({time.monotonic() - started:.0f} s)")
    sid = min((s for s, c in senders.items() if 3 <= c <= 6), default=next(iter(senders)))
    tree.from_needle, tree.from_hits = f"s{sid:05d}@", senders[sid]
    record = {k: v for k, v in vars(tree).items() if k != "path"}
    manifest.write_text(json.dumps({"version": TREE_VERSION, **record}))
    os.sync()  # no writeback of the new files while the servers are measured
    return tree


# --- one round -------------------------------------------------------------------------------

# Figure keys, in report order: (key, column title). Seconds unless noted.
TIMES = [("sel_first", "SELECT first (no index)"), ("sel_restart", "SELECT after restart"),
         ("sel_warm", "SELECT warm"), ("flags", "UID FETCH 1:* (FLAGS)"),
         ("env_first", "FETCH 1:10000 (ENVELOPE) first"), ("env_again", "... again"),
         ("from_first", "SEARCH FROM first"), ("from_again", "... again"),
         ("body_first", "SEARCH BODY first"), ("body_again", "... again")]
MEMORY = [("rss_base", "RSS 1 session"), ("rss_auth", "RSS N auth"),
          ("rss_sel", "RSS N selected"), ("pss_base", "PSS 1 session"),
          ("pss_auth", "PSS N auth"), ("pss_sel", "PSS N selected")]
ImapServer = MailgatewayImap | Dovecot


@dataclass
class Round:
    """One server's figures for one round; error is set when the round is not usable."""

    server: str
    number: int
    secs: dict[str, float] = field(default_factory=dict)  # wall seconds per TIMES key
    cpu: dict[str, float] = field(default_factory=dict)  # server CPU seconds, same keys
    mem: dict[str, float] = field(default_factory=dict)  # MiB per MEMORY key
    append_rate: float = 0.0  # APPENDs/s with imaplib
    append_raw: float = 0.0  # APPENDs/s sending each literal and its CRLF in one write
    hits: dict[str, int] = field(default_factory=dict)
    error: str = ""


def ok(reply: tuple[str, list], what: str) -> list:
    """The data of an OK reply; anything else ends the round with the server's words."""
    typ, data = reply
    if typ != "OK":
        raise RuntimeError(f"{what}: {typ} {data[:1]!r}")
    return data


def session(server: ImapServer, timeout: float) -> imaplib.IMAP4:
    imap = imaplib.IMAP4(LOOPBACK, server.port, timeout=timeout)
    ok(imap.login(server.recipient, server.password), "LOGIN")
    return imap


def close(imap: imaplib.IMAP4) -> None:
    try:
        imap.logout()
    except (OSError, imaplib.IMAP4.error):
        imap.shutdown()


class Meter:
    """Wall time and the server's CPU time of each step of a round."""

    def __init__(self, server: ImapServer, rnd: Round) -> None:
        self.server, self.rnd = server, rnd

    def __call__(self, key: str, step: Callable[[], object]) -> object:
        cpu = cpu_seconds(self.server.pids())
        started = time.perf_counter()
        result = step()
        self.rnd.secs[key] = time.perf_counter() - started
        self.rnd.cpu[key] = cpu_seconds(self.server.pids()) - cpu
        return result


def timed_select(server: ImapServer, meter: Meter, key: str, timeout: float) -> None:
    """A new session: LOGIN (not timed), then SELECT INBOX (timed)."""
    imap = session(server, timeout)
    try:
        meter(key, lambda: ok(imap.select("INBOX"), "SELECT"))
    finally:
        close(imap)


def raw_appends(server: ImapServer, count: int, message: bytes, timeout: float) -> float:
    """APPENDs/s of a client that sends each literal and the CRLF after it in one write.

    imaplib writes them apart: with Nagle's algorithm the CRLF then waits for
    the server to ACK the literal, which a server that delays its ACKs does
    only after ~40 ms. This client shows the server's own cost beside it.
    """
    with socket.create_connection((LOOPBACK, server.port), timeout=timeout) as sock:
        reader = sock.makefile("rb")

        def answer(tag: bytes) -> bytes:
            while line := reader.readline(65536):
                if line.startswith((tag + b" ", b"+")):
                    return line
            raise RuntimeError("the server closed the connection")

        reader.readline(65536)  # the greeting
        sock.sendall(b'a LOGIN "%s" "%s"\r\n' % (server.recipient.encode(),
                                                server.password.encode()))
        if not answer(b"a").startswith(b"a OK"):
            raise RuntimeError("LOGIN refused")
        started = time.perf_counter()
        for i in range(count):
            tag = b"r%d" % i
            sock.sendall(tag + b" APPEND Bench {%d}\r\n" % len(message))
            if not answer(tag).startswith(b"+"):
                raise RuntimeError("APPEND: no continuation")
            sock.sendall(message + b"\r\n")
            if not (line := answer(tag)).startswith(tag + b" OK"):
                raise RuntimeError(f"APPEND: {line[:200]!r}")
        rate = count / (time.perf_counter() - started)
        sock.sendall(b"z LOGOUT\r\n")
    return rate


def memory(server: ImapServer, rnd: Round, suffix: str) -> None:
    """RSS and PSS (MiB) summed over the server's processes now."""
    time.sleep(1.0)  # let the sessions settle (Dovecot's login processes exit)
    sampler = RssSampler(server.pids)
    sampler.sample()
    rnd.mem["rss_" + suffix] = sampler.peak_kib / 1024
    rnd.mem["pss_" + suffix] = sampler.peak_pss_kib / 1024


def cache_tree(cur: Path, cold: bool) -> None:
    """Every message file in the page cache (read once), or none of it (cold)."""
    for entry in os.scandir(cur):
        fd = os.open(entry.path, os.O_RDONLY)
        try:
            if cold:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while os.read(fd, 1 << 20):
                    pass
        finally:
            os.close(fd)


def run_round(server: ImapServer, number: int, args: argparse.Namespace, tree: Tree,
              workdir: Path) -> Round:
    """Fresh copy, no index: start, SELECT, restart, SELECT, then the commands and memory."""
    rnd = Round(server.name, number)
    meter, timeout = Meter(server, rnd), args.timeout
    rundir = workdir / f"{server.name.lower()}-{number}"
    sessions: list[imaplib.IMAP4] = []
    try:
        cache_tree(tree.path / "cur", args.cold)  # the same for each server
        server.setup(rundir, free_port(), tree.path / "cur")
        server.launch(time.monotonic() + args.start_timeout)
        timed_select(server, meter, "sel_first", timeout)
        server.stop()
        server.launch(time.monotonic() + args.start_timeout)
        timed_select(server, meter, "sel_restart", timeout)
        warm = []
        for _ in range(3):
            timed_select(server, meter, "sel_warm", timeout)
            warm.append((rnd.secs["sel_warm"], rnd.cpu["sel_warm"]))
        rnd.secs["sel_warm"], rnd.cpu["sel_warm"] = sorted(warm)[1]
        imap = session(server, timeout)
        sessions.append(imap)
        exists = int(ok(imap.select("INBOX"), "SELECT")[0])
        if exists != tree.count:
            raise RuntimeError(f"SELECT says {exists} messages, the INBOX has {tree.count}")
        flags = meter("flags", lambda: ok(imap.uid("FETCH", "1:*", "(FLAGS)"), "UID FETCH"))
        if len(flags) != tree.count:
            raise RuntimeError(f"UID FETCH 1:* gave {len(flags)} answers for {tree.count}")
        last = min(10_000, tree.count)
        for key in ("env_first", "env_again"):
            meter(key, lambda: ok(imap.fetch(f"1:{last}", "(ENVELOPE)"), "FETCH"))
        for key, crit in (("from", f'FROM "{tree.from_needle}"'),
                          ("body", f'BODY "{tree.body_needle}"')):
            if key in args.skip:
                continue
            for when in ("first", "again"):
                found = meter(f"{key}_{when}", lambda c=crit: ok(imap.search(None, c), "SEARCH"))
                rnd.hits[key] = len(found[0].split())  # type: ignore[index]
        if "append" not in args.skip:
            appends(server, imap, rnd, args, timeout)
        if "memory" not in args.skip:
            memory(server, rnd, "base")
            with ThreadPoolExecutor(8) as pool:
                sessions += pool.map(lambda _: session(server, timeout), range(args.connections))
                memory(server, rnd, "auth")
                list(pool.map(lambda s: ok(s.select("INBOX"), "SELECT"), sessions[1:]))
                memory(server, rnd, "sel")
    except Exception as exc:  # a failed round is reported, the others still run
        rnd.error = f"{type(exc).__name__}: {exc}\n{tail(server.log())}"
    finally:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(close, sessions))
        server.stop()
        if not args.keep:
            shutil.rmtree(rundir, ignore_errors=True)
    return rnd


def appends(server: ImapServer, imap: imaplib.IMAP4, rnd: Round, args: argparse.Namespace,
            timeout: float) -> None:
    """APPENDs/s into a new folder: imaplib's, then one write per APPEND (raw_appends)."""
    ok(imap.create("Bench"), "CREATE")
    head = b"From: bench@example.test\r\nTo: alice@example.test\r\nSubject: append\r\n\r\n"
    message = head + (b"x" * 70 + b"\r\n") * max(1, (args.append_size - len(head)) // 72)
    started = time.perf_counter()
    for _ in range(args.appends):
        ok(imap.append("Bench", "", None, message), "APPEND")
    rnd.append_rate = args.appends / (time.perf_counter() - started)
    rnd.append_raw = raw_appends(server, args.appends, message, timeout)


# --- the report ------------------------------------------------------------------------------


def medians(rounds: list[Round]) -> dict[str, float | None]:
    """Medians over the rounds of a server: seconds, CPU ("cpu_" keys), MiB, APPEND rate.

    A round that failed still gives the figures it measured before the error.
    """
    good = rounds
    out: dict[str, float | None] = {}
    for key, _ in TIMES:
        out[key] = median([r.secs[key] for r in good if key in r.secs])
        out["cpu_" + key] = median([r.cpu[key] for r in good if key in r.cpu])
    for key, _ in MEMORY:
        out[key] = median([r.mem[key] for r in good if key in r.mem])
    out["append"] = median([r.append_rate for r in good if r.append_rate])
    out["append_raw"] = median([r.append_raw for r in good if r.append_raw])
    return out


def versions(servers: list[ImapServer]) -> str:
    """What was measured: figures without versions cannot be compared later."""
    parts = []
    for server in servers:
        if isinstance(server, MailgatewayImap):
            # rev-parse only reads: the checkout is shared and its index is not ours to touch.
            commit = _output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "?"
            probe = "import platform, twisted as t; print(platform.python_version(), t.__version__)"
            py, tw = (_output([str(server.venv / "bin" / "python"), "-c", probe]).split()
                      + ["?", "?"])[:2]
            parts.append(f"mailgateway {commit} (working tree), Python {py}, Twisted {tw}")
        else:
            parts.append(f"Dovecot {_output([str(DOVECOT), '--version']) or '?'}")
    return "; ".join(parts)


def report(args: argparse.Namespace, servers: list[ImapServer], results: dict[str, list[Round]],
           tree: Tree, command: str, interrupted: bool) -> str:
    """Markdown: the load, one row per figure (medians, ratios, server CPU), failed rounds."""
    names = [s.name for s in servers if results.get(s.name)]
    sums = {name: medians(results[name]) for name in names}
    peers = [p for p in names if p != "mailgateway"] if "mailgateway" in names else []
    n = args.connections
    for s in sums.values():  # memory per session, from the PSS sums
        for key, was in (("per_auth", "pss_base"), ("per_sel", "pss_auth")):
            now = s["pss_" + key[4:]]
            s[key] = None if now is None or s[was] is None else (now - s[was]) * 1024 / n
    rows = [(f"{title}, s", key, 3) for key, title in TIMES] + [
        ("APPEND (imaplib), msg/s", "append", 0),
        ("APPEND (literal and CRLF in one write), msg/s", "append_raw", 0),
        *((f"{title.replace('N', str(n))}, MiB", key, 1) for key, title in MEMORY),
        ("PSS per idle session, KiB", "per_auth", 0),
        ("PSS added by SELECT per session, KiB", "per_sel", 0)]
    heads = [*names, *(f"mailgateway/{p}" for p in peers), *(f"{m} CPU s" for m in names)]
    lines = [
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}, host {socket.gethostname()}, "
        f"{os.cpu_count()} CPUs",
        f"Command: `{command}`",
        f"Versions: {versions(servers)}",
        f"Load: INBOX of {tree.count:,} messages ({tree.size / 2**20:,.0f} MiB, "
        f"{tree.multipart:,} multipart) in cur/, client imaplib, {args.rounds} rounds "
        f"(servers in turn), medians; SEARCH FROM \"{tree.from_needle}\" ({tree.from_hits} "
        f"messages), SEARCH BODY \"{tree.body_needle}\" ({tree.body_hits}); {args.appends} "
        f"APPENDs of {args.append_size} B; N = {n} sessions; message files "
        + ("dropped from the page cache" if args.cold else "read into the page cache")
        + " before each server's round",
        "",
        "| figure | " + " | ".join(heads) + " |",
        "|---|" + "---:|" * len(heads),
    ]
    for title, key, digits in rows:
        cells = [fmt(sums[m][key], digits) for m in names]
        cells += [ratio(sums["mailgateway"][key], sums[p][key]) for p in peers]
        cells += [fmt(sums[m].get("cpu_" + key), 2) for m in names]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Ratios: above 1 is worse for seconds and memory, better for msg/s. CPU: "
                 "the server's user+system seconds in that step (all its processes).")
    gw = sums.get("mailgateway")
    if gw is not None:
        lines += ["", f"Issue 3 targets: warm SELECT under 1 s: {fmt(gw['sel_warm'], 3)} s; "
                  f"UID FETCH 1:* (FLAGS) of {tree.count:,} under 3 s: {fmt(gw['flags'], 3)} s."]
    built = {"from": tree.from_hits, "body": tree.body_hits}
    hits = sorted({f"- {r.server} round {r.number}: {r.hits}" for m in names
                   for r in results[m] if any(built[k] != v for k, v in r.hits.items())})
    if hits:
        lines += ["", "SEARCH hit counts other than the built ones:", *hits]
    lines += report_footer([r for m in names for r in results[m]], interrupted,
                           "Rounds that failed (their figures up to the error are kept):")
    return "\n".join(lines) + "\n"


# --- main ------------------------------------------------------------------------------------


SKIPPABLE = ("body", "append", "memory")  # SEARCH BODY; the APPENDs; the N sessions


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Figures and their meaning: bench/README.md. Results log: bench/RESULTS.md.")
    parser.add_argument("--messages", "-m", type=int, default=100_000, help="INBOX size")
    parser.add_argument("--rounds", "-r", type=int, default=3, help="rounds per server (3)")
    parser.add_argument("--servers", default="mailgateway,dovecot",
                        help="comma-separated subset of mailgateway,dovecot")
    parser.add_argument("--connections", "-n", type=int, default=200,
                        help="idle sessions for the memory figures (200)")
    parser.add_argument("--appends", type=int, default=500, help="APPENDs (500)")
    parser.add_argument("--append-size", type=int, default=2048, help="bytes per APPEND")
    parser.add_argument("--seed", type=int, default=3, help="of the built INBOX (3)")
    parser.add_argument("--tree", type=Path, help="build the INBOX here and keep it; reused "
                        "by later runs with the same --messages and --seed")
    parser.add_argument("--venv", type=Path, help="default: REPO/.venv, else /tmp/v")
    parser.add_argument("--recipient", default="alice@example.test")
    parser.add_argument("--timeout", type=float, default=300, help="per IMAP command (300 s)")
    parser.add_argument("--start-timeout", type=float, default=120, help="to greet (120)")
    parser.add_argument("--workdir", type=Path, help="parent of the run's temporary folder")
    parser.add_argument("--cold", action="store_true", help="drop the INBOX's files from "
                        "the page cache before each round (default: read them into it)")
    parser.add_argument("--keep", action="store_true", help="keep the run's folders and logs")
    parser.add_argument("--skip", default="", metavar="STEPS",
                        help="comma-separated steps left out to keep a run short: "
                        + ", ".join(SKIPPABLE) + " (their rows show -)")
    parser.add_argument("--append", type=Path, metavar="FILE", help="append the report to FILE")
    args = parser.parse_args(argv)
    for name in ("messages", "rounds", "connections", "appends"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    args.servers = [s.strip().lower() for s in args.servers.split(",") if s.strip()]
    args.skip = {s.strip().lower() for s in args.skip.split(",") if s.strip()}
    if args.skip - set(SKIPPABLE):
        parser.error("--skip: " + ", ".join(SKIPPABLE))
    if set(args.servers) - {"mailgateway", "dovecot"}:
        parser.error("--servers: mailgateway, dovecot")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line("imap_bench.py", argv)
    venv = pick_venv(args.venv)
    workdir = make_workdir(args.workdir, "mailgateway-imap-bench-")  # Dovecot's as nobody
    say(f"venv {venv}, work folder {workdir} ({fs_type(workdir)})")
    tree: Tree | None = None

    def make() -> list[ImapServer]:
        nonlocal tree
        servers: list[ImapServer] = []
        for name in args.servers:
            server: ImapServer = (
                MailgatewayImap(workdir, args.recipient, venv, REPO, args.connections)
                if name == "mailgateway"
                else Dovecot(workdir, args.recipient, args.connections))
            try:
                server.check()
                servers.append(server)
            except Unavailable as exc:
                say(f"{server.name} left out: {exc}")
        if servers:
            started = time.monotonic()
            say(f"building the INBOX ({args.messages:,} messages) ...")
            tree = build_tree(args.tree or workdir / "tree", args.messages, args.seed)
            say(f"  ready in {time.monotonic() - started:.0f} s: {tree.size / 2**20:,.0f} MiB")
        return servers

    servers, results, interrupted = run_in_turn(
        make, args.rounds, lambda server, rnd: run_round(server, rnd, args, tree, workdir),
        lambda res: (", ".join(f"{k} {v:.2f}" for k, v in res.secs.items())
                     + f", append {res.append_rate:.0f}/s ({res.append_raw:.0f}/s one write), "
                     + ", ".join(f"{k} {v:.0f}" for k, v in res.mem.items())),
        workdir, args.keep)
    if not servers and not interrupted:
        return 2
    return publish(results, interrupted,
                   lambda: report(args, servers, results, tree, command, interrupted),
                   args.append, ": IMAP, bench/imap_bench.py")


if __name__ == "__main__":
    sys.exit(main())
