"""List explosion: one post to a list of 10,000 members, until every copy has arrived.

Why this shape (issue 10, "Speed"): a list server is judged by how long its
members wait for a post. One post goes to a list of --members members, half
local mailboxes (Maildir) and half on --domains remote domains; the remote
side is Postfix's smtp-sink on loopback, and for mailgateway a loopback DNS
server (tests/integration/dns_server.py) gives each remote domain an MX that
resolves to 127.0.0.1. The clock starts at the 250 for the post's DATA and
stops when the last copy is in its Maildir (the newest ctime in the new/
folders: the rename that delivers) or handed to the sink (the sink's dump
file, which it appends to at each message's final dot), both read once
everything is there. Recipients at the sink are counted from its dump
(one X-Rcpt-Args line each), so batches of any size count right.

Servers, each with VERP on and off, taking turns round after round:
  mailgateway   twistd with its default.toml: users, `list create --policy open`,
                `list add --file -`, [relay] port/nameservers/dns_port to the
                sink and the DNS server, tls "none" (the sink has no STARTTLS);
                --one-click adds web_base_url (a personal copy, one queue entry,
                per member: RFC 8058 links), which the peers have no match for
  mlmmj         Debian's mlmmj behind a private Postfix: Postfix pipes the
                list's mail to mlmmj-receive (transport_maps), mlmmj-send
                hands the copies back to Postfix's smtpd (VERP on: verp =
                "postfix", XVERP; off: verp empty, maxverprecips default 100),
                Postfix delivers local members with virtual(8) and relays the
                rest to the sink (transport_maps, no DNS: Postfix asks the
                system resolver only)
  Mailman       Mailman 3 core (PyPI `mailman`, in a venv of its own, its own
                var dir and SQLite), Postfix handing the list's mail over LMTP
                and Mailman's out runner sending the copies back through
                Postfix's smtpd (VERP on: [mta] verp_delivery_interval 1)

Peak RSS/PSS are sums over each server's processes (for the peers: Postfix,
mlmmj or Mailman's runners together), sampled every 0.1 s.
This is a benchmark, not a test: it prints figures and never judges them.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
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
    wait_banner,
    wait_greeting,
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
from smtp_accept import (  # noqa: E402  (same conventions, same report format)
    _output,
    ensure_postfix,
    fmt,
    median,
    ratio,
    start_profile,
    stop_profile,
)

SMTP_SINK = Path("/usr/sbin/smtp-sink")
LIST = "dev@lists.test"
LIST_DOMAIN = "lists.test"
LOCAL_DOMAIN = "local.test"
OWNER = f"owner@{LOCAL_DOMAIN}"
POSTER = "poster@outside.test"
MX_HOST = "mx.remote.test"
TRUSTED = "127.0.0.0/8"
ONE_CLICK_BASE = "https://lists.test"


def remote_domains(count: int) -> list[str]:
    return [f"r{i:03d}.remote.test" for i in range(count)]


def local_members(args: argparse.Namespace) -> list[str]:
    return [f"u{i:05d}@{LOCAL_DOMAIN}" for i in range(args.members // 2)]


def remote_members(args: argparse.Namespace) -> list[str]:
    domains = remote_domains(args.domains)
    count = args.members - args.members // 2
    return [f"m{i:05d}@{domains[i % len(domains)]}" for i in range(count)]


def post_message(size: int) -> bytes:
    """The post: plain text of about SIZE bytes, addressed to the list."""
    head = (f"From: Poster <{POSTER}>\r\nTo: {LIST}\r\nSubject: list benchmark\r\n"
            f"Message-ID: <{time.time_ns()}.bench@outside.test>\r\n"
            f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
    line = "The quick brown fox jumps over the lazy dog, once per member of the list.\r\n"
    return (head + line * max(1, (size - len(head)) // len(line))).encode()


# --- the remote side: DNS and the sink -----------------------------------------------------------


class Sink:
    """smtp-sink dumping every message (`-D FILE`), and the count of recipients it took.

    The dump has one "X-Rcpt-Args: <addr>" line per accepted RCPT of a message
    that got its final 250; reading it as it grows counts recipients, whatever
    the batch size of the sender.
    """

    _RCPT = re.compile(rb"^X-Rcpt-Args: <([^>]*)>", re.M)
    _MAIL = re.compile(rb"^X-Mail-Args: <([^>]*)>", re.M)

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.dump = Path()
        self.rcpts: list[bytes] = []
        self.senders: set[bytes] = set()
        self.messages = 0
        self._offset = 0

    def start(self, rundir: Path, port: int, deadline: float) -> None:
        self.port = port
        folder = rundir / "sink"
        folder.mkdir(parents=True)
        argv = [str(SMTP_SINK)]
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(folder, nobody.pw_uid, nobody.pw_gid)
            argv += ["-u", "nobody"]  # smtp-sink refuses to keep root privileges
        self.dump = folder / "dump"
        argv += ["-D", str(self.dump), f"{LOOPBACK}:{port}", "1024"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_banner(port, deadline, alive=lambda: bool(self.proc and self.proc.poll() is None))

    def poll(self) -> int:
        """Recipients in the dump so far (whole messages are kept; the last one, which
        may still be being written, is read again next time)."""
        try:
            with open(self.dump, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return 0
        end = data.rfind(b"\nX-Client-Addr:") + 1  # 0: no whole message yet
        chunk = data[:end]
        self._offset += len(chunk)
        self.rcpts += self._RCPT.findall(chunk)
        self.senders.update(self._MAIL.findall(chunk))
        self.messages += chunk.count(b"X-Client-Addr:")
        return len(self.rcpts) + len(self._RCPT.findall(data, end))

    def finish(self) -> None:
        """Count the last message too (called after the sink stopped writing)."""
        try:
            with open(self.dump, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        self.rcpts += self._RCPT.findall(data)
        self.senders.update(self._MAIL.findall(data))
        self.messages += data.count(b"X-Client-Addr:")

    def last_write(self) -> float | None:
        try:
            return self.dump.stat().st_mtime
        except FileNotFoundError:
            return None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=5)
            self.proc = None


def start_dns(args: argparse.Namespace):
    """The loopback DNS server of the integration tests: MX of each remote domain -> 127.0.0.1."""
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    from dns_server import DNSServer  # dnspython: run this script with the venv's Python

    records: dict[tuple[str, str], list[str] | str] = {(MX_HOST, "A"): ["127.0.0.1"]}
    for domain in remote_domains(args.domains):
        records[(domain, "MX")] = [f"10 {MX_HOST}."]
    return DNSServer(records).start()


# --- local mailboxes -----------------------------------------------------------------------------


class Boxes:
    """The local members' new/ folders: how many hold a copy, and when the last arrived."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = folders
        self._cursor = 0

    def poll(self) -> int:
        """Members with their copy so far, scanning on from the first without one.

        Copies arrive in any order, but the scan stops at the first empty
        folder: each poll costs the folders newly filled plus one, not all of them.
        """
        while self._cursor < len(self.folders):
            try:
                if not os.listdir(self.folders[self._cursor]):
                    break
            except FileNotFoundError:
                break
            self._cursor += 1
        return self._cursor

    def tally(self) -> tuple[int, int, float | None]:
        """(folders with a copy, copies in all, newest ctime): read once all is done."""
        filled = copies = 0
        newest: float | None = None
        for folder in self.folders:
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            filled += bool(entries)
            copies += len(entries)
            for entry in entries:
                ctime = entry.stat().st_ctime
                newest = ctime if newest is None or ctime > newest else newest
        return filled, copies, newest


# --- the servers ---------------------------------------------------------------------------------


class ListGateway(Mailgateway):
    """mailgateway hosting the list: its default.toml and what this load needs."""

    def __init__(self, args: argparse.Namespace, workdir: Path, venv: Path, verp: bool) -> None:
        super().__init__(workdir, OWNER, venv, REPO, 4)
        self.args, self.verp = args, verp
        self.name = f"mailgateway{'' if verp else ' no-VERP'}"
        self.sink_port = self.dns_port = 0

    def settings_text(self) -> str:
        sync = f'[queue] sync = "{self.args.gateway_sync}"; ' if self.args.gateway_sync else ""
        if self.args.one_click:
            sync += (f"web_base_url={ONE_CLICK_BASE} (a personal copy per member, RFC 8058 "
                     "one-click); ")
        return (f"{sync}`list create {LIST} --policy open`, verp={str(self.verp).lower()} "
                '(the rest `list` defaults, archive on); [relay] tls = "none", port = the sink\'s, '
                "nameservers = [\"127.0.0.1\"], dns_port = the DNS server's; the rest as in "
                "gateway/default.toml")

    def write_config(self, path: Path, state: Path, port: int) -> None:
        super().write_config(path, state, port)
        with open(path, "rb") as fh:
            settings = tomllib.load(fh)
        settings["server"]["domains"] = [LOCAL_DOMAIN, LIST_DOMAIN]
        settings.setdefault("relay", {}).update(
            tls="none", port=self.sink_port, nameservers=[LOOPBACK], dns_port=self.dns_port)
        if self.args.gateway_sync:
            settings.setdefault("queue", {})["sync"] = self.args.gateway_sync
        settings["tlsfront"] = []
        path.write_text("# Written by bench/list_bench.py\n" + toml_dumps(settings))

    def _cli(self, *argv: str, stdin: str = "") -> None:
        done = subprocess.run([*self.cli(), *argv, "--config", str(self.rundir / "gw.toml")],
                              cwd=self.rundir, env=self.env(), input=stdin.encode(),
                              capture_output=True, timeout=600, check=False)
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace").strip()
            raise Unavailable(f"`mailgateway {' '.join(argv)}` failed: {out[-800:]}")

    def start(self, rundir: Path, port: int, deadline: float) -> None:
        self.rundir, self.port = rundir, port
        rundir.mkdir(parents=True)
        config = rundir / "gw.toml"
        self.write_config(config, rundir / "state", port)
        self._cli("user", "add", OWNER, "--password-stdin", stdin=self.password + "\n")
        # 5000 scrypt hashes would take minutes: the members share the owner's.
        users = rundir / "state" / "users"
        text = users.read_text()
        stored = next(line for line in text.splitlines() if line.startswith(OWNER + ":"))
        hashed = stored.split(":", 1)[1]
        with open(users, "a") as fh:
            fh.writelines(f"{m}:{hashed}\n" for m in local_members(self.args))
        self._cli("list", "create", LIST, "--owner", OWNER, "--policy", "open")
        if not self.verp:
            self._cli("list", "set", LIST, "verp=false")
        if self.args.one_click:
            self._cli("list", "set", LIST, f"web_base_url={ONE_CLICK_BASE}")
        members = local_members(self.args) + remote_members(self.args)
        self._cli("list", "add", LIST, "--file", "-", stdin="\n".join(members) + "\n")
        self.serve(config, port, deadline)

    def boxes(self) -> list[Path]:
        return [self.rundir / "state" / "mail" / LOCAL_DOMAIN / m.split("@")[0] / "new"
                for m in local_members(self.args)]


class ListPostfix(Postfix):
    """The private Postfix of peers.py in front of a list manager: local members by
    virtual(8), remote domains to the sink (transport_maps), loopback trusted so the
    list manager can hand its copies back through smtpd."""

    def __init__(self, args: argparse.Namespace, workdir: Path, verp: bool) -> None:
        super().__init__(workdir, OWNER, 20)
        self.args, self.verp = args, verp
        self.sink_port = 0
        self.dns_port = 0  # Postfix has no resolver port setting: transport_maps instead

    def list_transport(self) -> str:
        """The transport(5) next hop of the list's domain."""
        raise NotImplementedError

    def master_extra(self) -> str:
        return ""

    def extra_settings(self) -> list[str]:
        return []

    def _postfix(self, command: str, timeout: float) -> None:
        if command == "start":
            conf, domains = self.confdir, self.args.domains
            hop = f"smtp:[{LOOPBACK}]:{self.sink_port}"
            (conf / "transport").write_text(
                f"{LIST_DOMAIN} {self.list_transport()}\n"
                + "".join(f"{d} {hop}\n" for d in remote_domains(self.args.domains)))
            (conf / "vmailbox").write_text("".join(
                f"{m} {LOCAL_DOMAIN}/{m.split('@')[0]}/\n"
                for m in [OWNER, *local_members(self.args)]))
            with open(conf / "master.cf", "a") as fh:
                fh.write(self.master_extra())
            argv = ["/usr/sbin/postconf", "-c", str(conf), "-e", f"mynetworks = {TRUSTED}",
                    "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
                    "relay_domains = " + ", ".join([LIST_DOMAIN, *remote_domains(domains)]),
                    f"transport_maps = texthash:{conf / 'transport'}",
                    "smtp_tls_security_level = none", "recipient_delimiter = +",
                    *self.extra_settings()]
            done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
            if done.returncode != 0:
                raise Unavailable(f"postconf -e failed: {done.stderr.decode(errors='replace')}")
        super()._postfix(command, timeout)

    def boxes(self) -> list[Path]:
        return [self.rundir / "maildirs" / LOCAL_DOMAIN / m.split("@")[0] / "new"
                for m in local_members(self.args)]


MLMMJ_RECEIVE = Path("/usr/bin/mlmmj-receive")
MLMMJ_DIRS = ("incoming", "queue", "queue/discarded", "archive", "text", "subconf", "unsubconf",
              "bounce", "control", "moderation", "subscribers.d", "digesters.d", "requeue",
              "nomailsubs.d")


class Mlmmj(ListPostfix):
    """mlmmj behind the private Postfix, set up as its README.postfix says (pipe transport)."""

    def __init__(self, args: argparse.Namespace, workdir: Path, verp: bool) -> None:
        super().__init__(args, workdir, verp)
        self.name = f"mlmmj{'' if verp else ' no-VERP'}"

    def check(self) -> None:
        super().check()
        if not MLMMJ_RECEIVE.exists():
            raise Unavailable(f"{MLMMJ_RECEIVE} is missing (Debian package mlmmj)")

    def settings_text(self) -> str:
        verp = 'verp = "postfix" (XVERP)' if self.verp else "verp empty (no VERP)"
        return (f"{verp}, maxverprecips default (100), relayhost = Postfix's smtpd; Postfix: "
                "pipe transport `flags=ORhu user=nobody argv=mlmmj-receive -F -L DIR/$nexthop`, "
                "mlmmj_destination_recipient_limit = 1, remote domains by transport_maps to the "
                "sink, Postfix's defaults otherwise")

    def list_transport(self) -> str:
        return "mlmmj:dev"

    def master_extra(self) -> str:
        return ("mlmmj     unix  -       n       n       -       -       pipe\n"
                f"  flags=ORhu user=nobody argv={MLMMJ_RECEIVE} -F -L "
                f"{self.rundir / 'mlmmj'}/$nexthop\n")

    def extra_settings(self) -> list[str]:
        return ["mlmmj_destination_recipient_limit = 1"]

    def start(self, rundir: Path, port: int, deadline: float) -> None:
        listdir = rundir / "mlmmj" / "dev"
        for sub in MLMMJ_DIRS:
            (listdir / sub).mkdir(parents=True)
        skel = Path("/usr/share/mlmmj/text.skel/en")
        if skel.is_dir():
            shutil.rmtree(listdir / "text")
            shutil.copytree(skel, listdir / "text")
        control = listdir / "control"
        (control / "listaddress").write_text(LIST + "\n")
        (control / "owner").write_text(OWNER + "\n")
        (control / "relayhost").write_text(LOOPBACK + "\n")
        (control / "smtpport").write_text(f"{port}\n")
        (control / "verp").write_text("postfix\n" if self.verp else "")
        (listdir / "index").write_text("")
        by_letter: dict[str, list[str]] = {}
        for member in local_members(self.args) + remote_members(self.args):
            by_letter.setdefault(member[0], []).append(member)
        for letter, members in by_letter.items():
            (listdir / "subscribers.d" / letter).write_text("\n".join(members) + "\n")
        nobody = pwd.getpwnam("nobody")
        for path in [rundir / "mlmmj", *(rundir / "mlmmj").rglob("*")]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        super().start(rundir, port, deadline)


MAILMAN_CFG = """\
# Written by bench/list_bench.py: a private Mailman 3, loopback only.
[paths.here]
var_dir: {var}
[mailman]
layout: here
site_owner: {owner}
[mta]
incoming: mailman.mta.null.NullMTA
lmtp_host: 127.0.0.1
lmtp_port: {lmtp}
smtp_host: 127.0.0.1
smtp_port: {smtp}
verp_delivery_interval: {verp}
[webservice]
hostname: 127.0.0.1
port: {rest}
[archiver.prototype]
enable: no
"""

MAILMAN_SETUP = """\
import sys
from mailman.core.initialize import initialize
initialize(sys.argv[1])
from zope.component import getUtility
from mailman.app.lifecycle import create_list
from mailman.config import config
from mailman.interfaces.action import Action
from mailman.interfaces.domain import IDomainManager
from mailman.interfaces.usermanager import IUserManager
from mailman.interfaces.member import MemberRole
getUtility(IDomainManager).add(sys.argv[2])
mlist = create_list(sys.argv[3])
mlist.default_nonmember_action = Action.accept
mlist.send_welcome_message = False
users = getUtility(IUserManager)
for line in sys.stdin:
    address = users.create_address(line.strip())
    address.verified_on = address.registered_on
    mlist.subscribe(address, MemberRole.member)
config.db.commit()
print(mlist.members.member_count)
"""


class Mailman(ListPostfix):
    """Mailman 3 core in its own venv and var dir, the private Postfix handing it the list's
    mail over LMTP. The list and its members are made once per run (SQLite), and each round
    starts from a copy of that var dir."""

    def __init__(self, args: argparse.Namespace, workdir: Path, verp: bool) -> None:
        super().__init__(args, workdir, verp)
        self.name = f"Mailman 3{'' if verp else ' no-VERP'}"
        self.venv = args.mailman_venv
        self.template = workdir / "mailman-template"
        self.lmtp_port = 0
        self.var = Path()

    def mailman(self) -> Path:
        return self.venv / "bin" / "mailman"

    def check(self) -> None:
        super().check()
        if not self.mailman().exists():
            raise Unavailable(f"{self.mailman()} is missing (python3 -m venv DIR; DIR/bin/pip "
                              "install mailman; --mailman-venv DIR)")
        if not self.template.exists():
            self._make_template()

    def _config(self, var: Path, lmtp: int, smtp: int, rest: int) -> Path:
        path = var.parent / "mailman.cfg"
        path.write_text(MAILMAN_CFG.format(var=var, owner=OWNER, lmtp=lmtp, smtp=smtp,
                                           verp=1 if self.verp else 0, rest=rest))
        return path

    def _make_template(self) -> None:
        """The list and its members in Mailman's database, once (a few minutes of SQLite)."""
        say(f"  Mailman: creating {LIST} with {self.args.members} members (once per run) ...")
        folder = self.template.with_name("mailman-template-tmp")
        var = folder / "var"
        var.mkdir(parents=True)
        config = self._config(var, free_port(), free_port(), free_port())
        members = local_members(self.args) + remote_members(self.args)
        done = subprocess.run(
            [str(self.venv / "bin" / "python"), "-c", MAILMAN_SETUP, str(config), LIST_DOMAIN,
             LIST], input="\n".join(members).encode(), capture_output=True, timeout=3600,
            check=False)
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace").strip()
            raise Unavailable(f"Mailman's list set-up failed: {out[-1500:]}")
        say(f"  Mailman: {done.stdout.decode().strip()} members")
        folder.rename(self.template)

    def settings_text(self) -> str:
        return (f"[mta] verp_delivery_interval = {1 if self.verp else 0}, max_recipients "
                "default (10), smtp to Postfix's smtpd, NullMTA with Postfix transport_maps "
                f'"{LIST_DOMAIN} lmtp:[127.0.0.1]:LMTP", default_nonmember_action = accept, '
                "prototype archiver off; Mailman 3's defaults otherwise")

    def list_transport(self) -> str:
        return f"lmtp:[{LOOPBACK}]:{self.lmtp_port}"

    def _mm(self, *argv: str, timeout: float = 120) -> tuple[int, str]:
        """Run `mailman ARGV`; (exit code, output). Output goes through a file: the master
        that `mailman start` leaves running keeps a pipe open for ever."""
        out = self.var.parent / "mailman-cli.log"
        with open(out, "wb") as fh:
            done = subprocess.run(
                [str(self.mailman()), "--run-as-root", "-C", str(self.var.parent / "mailman.cfg"),
                 *argv], cwd=self.var.parent, stdin=subprocess.DEVNULL, stdout=fh,
                stderr=subprocess.STDOUT, timeout=timeout, check=False)
        return done.returncode, out.read_text(errors="replace").strip()

    def start(self, rundir: Path, port: int, deadline: float) -> None:
        rundir.mkdir(parents=True)
        self.var = rundir / "mailman" / "var"
        shutil.copytree(self.template / "var", self.var)
        self.lmtp_port = free_port()
        self._config(self.var, self.lmtp_port, port, free_port())
        super().start(rundir, port, deadline)
        code, out = self._mm("start", "--force")
        if code != 0:
            raise Unavailable(f"mailman start failed: {out[-800:]}")
        # The master writes its pid file a few seconds after `mailman start` returns.
        grace = time.monotonic() + 60
        wait_greeting(self.lmtp_port, deadline, goodbye=b"QUIT\r\n",
                      alive=lambda: time.monotonic() < grace or self.mailman_pid() is not None)

    def mailman_pid(self) -> int | None:
        try:
            pid = int((self.var / "master.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def pids(self) -> list[int]:
        mm = self.mailman_pid()
        return super().pids() + ([mm] if mm else [])

    def log(self) -> Path:
        return self.rundir / "maillog"

    def stop(self) -> None:
        pid = self.mailman_pid()
        if pid is not None:
            self._mm("stop")
            deadline = time.monotonic() + 30
            while self.mailman_pid() and time.monotonic() < deadline:
                time.sleep(0.2)
            if self.mailman_pid():
                os.kill(pid, 9)
        super().stop()


# --- one round -----------------------------------------------------------------------------------


@dataclass
class Round:
    """One server's figures for one round; error is set when the round is not usable."""

    server: str
    number: int
    seconds: float | None = None
    local_s: float | None = None
    remote_s: float | None = None
    rss_mib: float = 0.0
    pss_mib: float = 0.0
    cpu_s: float | None = None
    local: int = 0
    remote: int = 0
    transactions: int = 0
    senders: int = 0
    error: str = ""


def post(port: int, size: int) -> float:
    """Send the post; the wall-clock time of the 250 after DATA."""
    with smtplib.SMTP(LOOPBACK, port, timeout=120) as client:
        client.sendmail(POSTER, [LIST], post_message(size))
        return time.time()


def run_round(server: ListGateway | ListPostfix, rnd: int, args: argparse.Namespace, venv: Path,
              workdir: Path, dns) -> Round:
    """Fresh sink, fresh server with the list; one post; wait for every copy; stop both."""
    result = Round(server.name, rnd)
    rundir = workdir / f"{server.name.replace(' ', '-')}-round{rnd}"
    sink = Sink()
    sampler: RssSampler | None = None
    profile = None
    want_local, want_remote = args.members // 2, args.members - args.members // 2
    try:
        rundir.mkdir(parents=True)
        sink.start(rundir, free_port(), time.monotonic() + args.start_timeout)
        server.sink_port, server.dns_port = sink.port, dns.port
        server.start(rundir / "server", free_port(), time.monotonic() + args.start_timeout)
        boxes = Boxes(server.boxes())
        os.sync()  # the set-up's dirty pages must not be written back while measured
        sampler = RssSampler(server.pids)
        sampler.start()
        profile = start_profile(args, venv, server, rnd)
        cpu_before = cpu_seconds(server.pids())
        accepted = post(server.port, args.size)
        deadline = time.monotonic() + args.timeout
        while boxes.poll() < want_local or sink.poll() < want_remote:
            if time.monotonic() >= deadline:
                result.error = (f"after {args.timeout:.0f} s: {boxes.poll()} local, "
                                f"{sink.poll()} at the sink")
                break
            if not server.pids():
                result.error = "the server exited"
                break
            time.sleep(0.2)
        result.cpu_s = cpu_seconds(server.pids()) - cpu_before
        time.sleep(args.settle)  # a duplicate in flight would show in the final counts
        filled, copies, newest = boxes.tally()
        sink.finish()
        last_remote = sink.last_write()
        result.local, result.remote = copies, len(sink.rcpts)
        result.transactions, result.senders = sink.messages, len(sink.senders)
        if newest is not None:
            result.local_s = newest - accepted
        if last_remote is not None and sink.rcpts:
            result.remote_s = last_remote - accepted
        if not result.error:
            result.seconds = max(result.local_s or 0.0, result.remote_s or 0.0)
            unique = len(set(sink.rcpts))
            if copies != filled or unique != len(sink.rcpts):
                result.error = (f"duplicates: {copies} local copies in {filled} mailboxes, "
                                f"{len(sink.rcpts)} remote for {unique} addresses")
    except Unavailable as exc:
        result.error = f"did not start: {exc}"
    except (OSError, smtplib.SMTPException) as exc:
        result.error = f"the post failed: {exc}"
    finally:
        stop_profile(profile)
        if sampler is not None:
            rss, pss = sampler.finish()
            result.rss_mib, result.pss_mib = rss / 1024, pss / 1024
        server.stop()
        sink.stop()
    if result.error and args.keep:
        say(tail(server.log()))
    if not args.keep:
        shutil.rmtree(rundir, ignore_errors=True)
    return result


# --- the report ----------------------------------------------------------------------------------


def versions(venv: Path, mailman_venv: Path) -> str:
    python = _output([str(venv / "bin" / "python"), "-c",
                      "import platform, twisted; print(platform.python_version(), "
                      "twisted.__version__)"]).split() + ["?", "?"]
    commit = _output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "no commit"
    postfix = _output(["/usr/sbin/postconf", "-h", "mail_version"]) or "?"
    mlmmj = _output(["dpkg-query", "-W", "-f", "${Version}", "mlmmj"]) or "?"
    mailman = _output([str(mailman_venv / "bin" / "python"), "-c",
                       "from importlib.metadata import version; print(version('mailman'))"])
    return (f"mailgateway {commit} (working tree), Python {python[0]}, Twisted {python[1]}, "
            f"Postfix {postfix}, mlmmj {mlmmj}, Mailman {mailman or '-'}")


def summarize(rounds: list[Round]) -> dict[str, float | None]:
    ok = [r for r in rounds if not r.error]
    sums: dict[str, float | None] = {
        key: median([v for r in ok if (v := getattr(r, key)) is not None])
        for key in ("seconds", "local_s", "remote_s", "rss_mib", "pss_mib", "cpu_s",
                    "transactions", "senders")
    }
    sums["min"] = min((r.seconds for r in ok if r.seconds is not None), default=None)
    sums["max"] = max((r.seconds for r in ok if r.seconds is not None), default=None)
    sums["ok"], sums["all"] = float(len(ok)), float(len(rounds))
    return sums


def report(args: argparse.Namespace, servers: list[Server], results: dict[str, list[Round]],
           command: str, venv: Path, interrupted: bool) -> str:
    lines = [
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}, host {socket.gethostname()}, "
        f"{os.cpu_count()} CPUs",
        f"Command: `{command}`",
        f"Versions: {versions(venv, args.mailman_venv)}",
        f"Load: one post of {args.size} bytes to {LIST} with {args.members} members "
        f"({args.members // 2} local Maildirs, the rest on {args.domains} remote domains, "
        f"all at one smtp-sink); {args.rounds} rounds (servers in turn), medians. Seconds "
        "from the post's 250 until the last copy was in its Maildir or at the sink.",
    ]
    lines += [f"Settings, {s.name}: {s.settings_text()}" for s in servers]  # type: ignore[attr-defined]
    lines += [
        "",
        "| server | all copies s | min-max | last local s | last remote s | SMTP transactions "
        "| envelope senders | CPU s | peak RSS MiB | peak PSS MiB | rounds ok |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = [s.name for s in servers]
    sums = {name: summarize(results[name]) for name in names}
    for name in names:
        s = sums[name]
        spread = f"{fmt(s['min'], 1)}-{fmt(s['max'], 1)}" if s["min"] is not None else "-"
        lines.append(
            f"| {name} | {fmt(s['seconds'], 2)} | {spread} | {fmt(s['local_s'], 2)} "
            f"| {fmt(s['remote_s'], 2)} | {fmt(s['transactions'])} | {fmt(s['senders'])} "
            f"| {fmt(s['cpu_s'], 1)} | {fmt(s['rss_mib'], 1)} | {fmt(s['pss_mib'], 1)} "
            f"| {int(s['ok'] or 0)}/{int(s['all'] or 0)} |")
    pairs = []
    for gw in (n for n in names if n.startswith("mailgateway")):
        suffix = gw[len("mailgateway"):]
        pairs += [(gw, n) for n in names if not n.startswith("mailgateway")
                  and n.endswith(suffix) and (suffix or "no-VERP" not in n)]
    if pairs:
        lines += ["", "| ratio (same VERP setting) | all copies s | CPU s | peak RSS | peak PSS |",
                  "|---|---:|---:|---:|---:|"]
        for gw, peer in pairs:
            a, b = sums[gw], sums[peer]
            lines.append(f"| {gw} / {peer} | {ratio(a['seconds'], b['seconds'])} "
                         f"| {ratio(a['cpu_s'], b['cpu_s'])} | {ratio(a['rss_mib'], b['rss_mib'])} "
                         f"| {ratio(a['pss_mib'], b['pss_mib'])} |")
    lines += ["", "Issue 10's target: mailgateway ahead of both peers, and under 30 s."]
    lines += report_footer([r for name in names for r in results[name]], interrupted)
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Figures and their meaning: bench/README.md. Results log: bench/RESULTS.md.")
    parser.add_argument("--members", type=int, default=10000, help="list members (10000)")
    parser.add_argument("--domains", type=int, default=100, help="remote domains (100)")
    parser.add_argument("--size", "-l", type=int, default=2048, help="post bytes (2048)")
    parser.add_argument("--rounds", "-r", type=int, default=3, help="rounds per server (3)")
    parser.add_argument("--servers", default="mailgateway,mlmmj,mailman",
                        help="mailgateway,mlmmj,mailman")
    parser.add_argument("--verp", default="on,off", help="on, off or on,off (on,off)")
    parser.add_argument("--gateway-sync", choices=("filesystem", "file"),
                        help="mailgateway's [queue] sync (default.toml's)")
    parser.add_argument("--one-click", action="store_true",
                        help="mailgateway's list with web_base_url: RFC 8058 personal copies")
    parser.add_argument("--venv", type=Path, help="default: REPO/.venv, else /tmp/v")
    parser.add_argument("--mailman-venv", type=Path, default=Path("/tmp/mailman-venv"),
                        help="a venv with PyPI mailman (/tmp/mailman-venv)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds from the post until every copy must be there (600)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds to wait for duplicates after the last copy (1)")
    parser.add_argument("--start-timeout", type=float, default=180, help="to greet (180)")
    parser.add_argument("--workdir", type=Path, help="parent of the run's temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the run's folders and logs")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get postfix")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record the gateway with py-spy into DIR (slows the gateway rounds)")
    parser.add_argument("--append", type=Path, metavar="FILE", help="append the report to FILE")
    args = parser.parse_args(argv)
    for name in ("members", "domains", "size", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.members < 2:
        parser.error("--members must be at least 2 (half local, half remote)")
    args.servers = [s.strip().lower() for s in args.servers.split(",") if s.strip()]
    if set(args.servers) - {"mailgateway", "mlmmj", "mailman"}:
        parser.error("--servers takes mailgateway, mlmmj and/or mailman")
    args.verp = [v.strip().lower() for v in args.verp.split(",") if v.strip()]
    if not args.verp or set(args.verp) - {"on", "off"}:
        parser.error("--verp takes on, off or on,off")
    return args


def make_servers(args: argparse.Namespace, venv: Path, workdir: Path) -> list[Server]:
    return usable(ListGateway(args, workdir, venv, verp) if name == "mailgateway"
                  else Mlmmj(args, workdir, verp) if name == "mlmmj"
                  else Mailman(args, workdir, verp)
                  for name in args.servers for verp in (v == "on" for v in args.verp))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line("list_bench.py", argv)
    venv = pick_venv(args.venv)
    if not ensure_postfix(not args.no_install) or not SMTP_SINK.exists():
        say("Postfix's smtp-sink (Debian package postfix) is needed")
        return 2
    workdir = open_workdir(args.workdir, "mailgateway-lists-", venv)
    dns = start_dns(args)
    try:
        servers, results, interrupted = run_in_turn(
            lambda: make_servers(args, venv, workdir), args.rounds,
            lambda server, rnd: run_round(server, rnd, args, venv, workdir, dns),
            lambda res: (f"all copies in {fmt(res.seconds, 2)} s (local {fmt(res.local_s, 2)}, "
                         f"remote {fmt(res.remote_s, 2)}), {res.local} local, {res.remote} at "
                         f"the sink in {res.transactions} transactions from {res.senders} "
                         f"senders, CPU {fmt(res.cpu_s, 1)} s, RSS {fmt(res.rss_mib, 1)} MiB, "
                         f"PSS {fmt(res.pss_mib, 1)} MiB"),
            workdir, args.keep)
    finally:
        dns.stop()
    if not servers and not interrupted:
        say("no list server can run here")
        return 2
    return publish(results, interrupted,
                   lambda: report(args, servers, results, command, venv, interrupted),
                   args.append, ": one post to a 10,000-member list")


if __name__ == "__main__":
    sys.exit(main())
