"""SMTP accept on port 25 with sender checks on: mailgateway (SPF, DKIM, DMARC) beside
Postfix with OpenDKIM (verifying milter) and policyd-spf, same load, same run.

Every message comes from sender@<domain> whose SPF record allows 127.0.0.1, is
DKIM-signed (RSA 2048, relaxed/relaxed) by that domain and has a DMARC
p=reject record, all served by a loopback DNS server (tests/integration/
dns_server.py) on 127.0.0.1:53. smtp-source sends the one signed message file
(-F) again and again, as smtp_accept.py does otherwise (its rounds, report and
ratios). The peer: Postfix with `check_policy_service` policyd-spf (Debian's
postfix-policyd-spf-python, its pyspf resolving through /etc/resolv.conf, which
for Postfix's processes alone is bind-mounted to name 127.0.0.1, in a mount
namespace of their own) and opendkim (`Mode v`, libunbound forwarding to 127.0.0.1) as its
milter, adding Authentication-Results. The peer does no DMARC: mailgateway's
figures include that work.

OpenDKIM's resolver (libunbound) asks the loopback name server with
`Nameservers 127.0.0.1` (opendkim.conf; addresses only, no port: the server
is on port 53 for that reason). The sender's domain is under example. (RFC
2606), not test.: unbound answers every name under test. (RFC 6761) NXDOMAIN
itself, without a query, and undoing that takes a ResolverConfiguration
file, which libunbound parses again per context and not thread-safely (under
10 sessions opendkim logged "unbound.conf: syntax error" and answered 451
4.7.1). The name server's queries are listed at the end of each run, by
name, to check that both servers asked for the key.
BENCH_DKIM_ALGORITHM=ed25519 signs with ed25519 instead of RSA 2048.

Run as root (Postfix, port 53): .venv/bin/python bench/inbound_auth_bench.py -m 2000
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

import dkim  # noqa: E402
from peers import Mailgateway, Postfix, Unavailable, free_port, toml_dumps  # noqa: E402
from rounds import (  # noqa: E402
    command_line,
    open_workdir,
    pick_venv,
    publish,
    run_in_turn,
    say,
    usable,
)
from smtp_accept import ensure_postfix, fmt, parse_args, report, run_round  # noqa: E402

from gateway.sign.keys import generate, txt_record  # noqa: E402

DOMAIN = "sender.example"
SELECTOR = "b1"
ALGORITHM = os.environ.get("BENCH_DKIM_ALGORITHM", "rsa")


def zone(public_txt: str) -> dict:
    # TXT strings of at most 255 octets: the RSA key's record is split.
    key = " ".join(f'"{public_txt[i:i + 200]}"' for i in range(0, len(public_txt), 200))
    return {
        (DOMAIN, "TXT"): ['"v=spf1 ip4:127.0.0.1 -all"'],
        (DOMAIN, "MX"): [f"10 mx.{DOMAIN}."],
        (f"_dmarc.{DOMAIN}", "TXT"): ['"v=DMARC1; p=reject"'],
        (f"{SELECTOR}._domainkey.{DOMAIN}", "TXT"): [key],
        ("localhost", "A"): ["127.0.0.1"],
        ("1.0.0.127.in-addr.arpa", "PTR"): ["localhost."],
    }


def signed_message(private: bytes, recipient: str, size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    body = line * max(1, size // len(line))
    message = (f"From: Sender <sender@{DOMAIN}>\r\nTo: {recipient}\r\n"
               f"Subject: inbound auth bench\r\nMessage-ID: <bench@{DOMAIN}>\r\n"
               "Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\n").encode() + body
    return dkim.sign(message, SELECTOR.encode(), DOMAIN.encode(), private,
                     canonicalize=(b"relaxed", b"relaxed"),
                     signature_algorithm=(b"ed25519-sha256" if ALGORITHM == "ed25519"
                                          else b"rsa-sha256"),
                     include_headers=[b"from", b"to", b"subject", b"message-id",
                                      b"date"]) + message


class CheckingMailgateway(Mailgateway):
    inbound_auth = True

    def write_config(self, path: Path, state: Path, port: int) -> None:
        super().write_config(path, state, port)
        settings = tomllib.loads(path.read_text())
        relay = settings.setdefault("relay", {})
        relay["nameservers"], relay["dns_port"] = ["127.0.0.1"], 53
        path.write_text(toml_dumps(settings))


POLICYD_CONF = """\
debugLevel = 0
HELO_reject = Fail
Mail_From_reject = Fail
PermError_reject = False
TempError_Defer = False
skip_addresses = 192.0.2.0/24
"""

OPENDKIM_CONF = """\
Mode v
Socket inet:{port}@127.0.0.1
{resolver}
AuthservID mx.example.test
AlwaysAddARHeader yes
Syslog no
UMask 007
PidFile {pidfile}
UserID opendkim
Canonicalization relaxed/relaxed
"""


class CheckingPostfix(Postfix):
    name = "Postfix+OpenDKIM+policyd-spf"

    def __init__(self, workdir: Path, recipient: str, sessions: int, resolv: Path):
        super().__init__(workdir, recipient, sessions)
        self.resolv = resolv
        self.opendkim: subprocess.Popen[bytes] | None = None

    def check(self) -> None:
        super().check()
        for tool in ("/usr/sbin/opendkim", "/usr/bin/policyd-spf", "/usr/bin/unshare"):
            if not os.access(tool, os.X_OK):
                raise Unavailable(f"{tool} is missing (Debian packages opendkim, "
                                  "postfix-policyd-spf-python, util-linux)")

    def _postfix(self, command: str, timeout: float) -> None:
        if command != "start":
            return super()._postfix(command, timeout)
        milter = free_port()
        conf = self.confdir
        (conf / "policyd-spf.conf").write_text(POLICYD_CONF)
        # libunbound, forwarding to the loopback name server (module docstring).
        (conf / "opendkim.conf").write_text(OPENDKIM_CONF.format(
            port=milter, pidfile=self.rundir / "opendkim.pid",
            resolver="Nameservers 127.0.0.1"))
        with open(conf / "main.cf", "a") as f:
            f.write(f"smtpd_milters = inet:127.0.0.1:{milter}\nmilter_default_action = accept\n"
                    "policyd-spf_time_limit = 3600\n"
                    "smtpd_recipient_restrictions = reject_unauth_destination, "
                    "check_policy_service unix:private/policyd-spf\n")
        with open(conf / "master.cf", "a") as f:
            f.write("policyd-spf unix - n n - 0 spawn user=nobody "
                    f"argv=/usr/bin/policyd-spf {conf / 'policyd-spf.conf'}\n")
        with open(self.log(), "ab") as log:
            self.opendkim = subprocess.Popen(
                ["/usr/bin/unshare", "--mount", "sh", "-c",
                 'mount --bind "$1" /etc/resolv.conf && exec /usr/sbin/opendkim -f -x "$2"',
                 "sh", str(self.resolv), str(conf / "opendkim.conf")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        # Postfix and what it spawns (policyd-spf) see the loopback name server.
        done = subprocess.run(
            ["/usr/bin/unshare", "--mount", "sh", "-c",
             'mount --bind "$1" /etc/resolv.conf && exec /usr/sbin/postfix -c "$2" start',
             "sh", str(self.resolv), str(conf)],
            capture_output=True, timeout=timeout, check=False)
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace").strip()
            raise Unavailable(f"postfix start failed: {out}")

    def pids(self) -> list[int]:
        # opendkim is not Postfix's child: count its CPU and memory too.
        extra = [self.opendkim.pid] if self.opendkim and self.opendkim.poll() is None else []
        return super().pids() + extra

    def stop(self) -> None:
        super().stop()
        if self.opendkim is not None:
            self.opendkim.terminate()
            try:
                self.opendkim.wait(10)
            except subprocess.TimeoutExpired:
                self.opendkim.kill()
                self.opendkim.wait()
            self.opendkim = None


def ensure_peer_packages(install: bool) -> None:
    """apt-get install opendkim and postfix-policyd-spf-python unless present (their
    system services are not started: the policy-rc.d of smtp_accept.py is not needed,
    neither package starts a listener of its own on install that the peer uses)."""
    if (Path("/usr/sbin/opendkim").exists() and Path("/usr/bin/policyd-spf").exists()) \
            or not install or shutil.which("apt-get") is None:
        return
    say("installing opendkim and postfix-policyd-spf-python with apt-get ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "--no-install-recommends", "opendkim",
                  "postfix-policyd-spf-python"]):
        done = subprocess.run(argv, env=env, capture_output=True, timeout=900, check=False)
        if done.returncode != 0:
            say(f"`{' '.join(argv)}` failed:\n{done.stderr.decode(errors='replace')[-1500:]}")
            return


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.sender = f"sender@{DOMAIN}"
    command = command_line("inbound_auth_bench.py", argv)
    venv = pick_venv(args.venv)
    if os.geteuid() != 0:
        say("needs root: Postfix, and the name server on port 53")
        return 2
    if not ensure_postfix(not args.no_install):
        return 2
    ensure_peer_packages(not args.no_install)
    from dns_server import DNSServer

    private, public = generate(ALGORITHM)
    workdir = open_workdir(args.workdir, "mailgateway-inbound-", venv)
    args.message_file = workdir / "signed.eml"
    # smtp-source -F appends CRLF to each line it reads: give it LF-ended lines.
    args.message_file.write_bytes(
        signed_message(private, args.recipient, args.size).replace(b"\r\n", b"\n"))
    resolv = workdir / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
    dns = DNSServer(zone(txt_record(ALGORITHM, public))).start(port=53)
    try:
        def make() -> list:
            servers = []
            if "mailgateway" in args.servers:
                servers.append(CheckingMailgateway(workdir, args.recipient, venv,
                                                   Path(__file__).resolve().parent.parent,
                                                   args.sessions))
            if "postfix" in args.servers:
                servers.append(CheckingPostfix(workdir, args.recipient, args.sessions, resolv))
            return usable(servers)

        servers, results, interrupted = run_in_turn(
            make, args.rounds, lambda server, rnd: run_round(server, rnd, args, venv, workdir),
            lambda res: (f"{fmt(res.rate)} msg/s, last in Maildir {fmt(res.last_s, 2)} s, "
                         f"CPU {fmt(res.cpu_ms, 2)} ms/msg, {res.delivered} delivered"),
            workdir, args.keep)
    finally:
        dns.stop()
        asked = Counter(f"{name} {kind}" for name, kind in dns.queries)
        say(f"name server: {len(dns.queries)} queries "
            f"({', '.join(f'{q} x{n}' for q, n in sorted(asked.items()))})")
    names = [s.name for s in servers]
    return publish(results, interrupted,
                   lambda: report(args, names, results, command, venv, interrupted),
                   args.append, "")


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    say(f"done in {time.monotonic() - started:.0f} s")
    sys.exit(code)
