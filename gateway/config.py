"""Settings: the TOML configuration, checked whole, every fault named.

Kernel module. `load()` returns a Settings or raises ConfigError listing each
(file, key, reason); `mailgateway check-config` prints them. With no path the
embedded default (gateway/default.toml, linked as etc/mailgateway.toml) is used.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.config_checks import endpoint_fault
from gateway.config_tlsfront import (  # noqa: F401 (config.FrontSettings etc. for callers)
    CLIENT_VERIFY,
    DEFAULT_FRONT_CIPHERS,
    FRONT_PROTOCOLS,
    PROXIED_LISTENERS,
    PROXY_VERSIONS,
    TLS_VERSIONS,
    FrontCertificate,
    FrontSettings,
    ProxiedSettings,
    client_endpoint_for,
    escape_endpoint,
)
from gateway.config_tlsfront import fronts as _fronts
from gateway.errors import ConfigError

DEFAULT_PATH = Path(__file__).with_name("default.toml")
# Where twistd and the CLI look when neither --config nor $MAILGATEWAY_CONFIG names a file.
SYSTEM_PATH = Path("/etc/mailgateway/mailgateway.toml")
ENVIRONMENT_VARIABLE = "MAILGATEWAY_CONFIG"
EMBEDDED = "the embedded default"

# More accepting processes than this only fight over the cores and the spool's disk.
MAX_ACCEPT_WORKERS = 64

_ENDPOINT_KINDS = ("tcp:", "tcp6:", "unix:", "ssl:", "systemd:")


@dataclass(frozen=True)
class SmtpSettings:
    max_message_size: int
    max_line_length: int
    max_command_length: int
    max_recipients: int
    max_bad_commands: int
    idle_timeout: float
    max_connections_per_client: int
    vrfy: bool
    bare_linefeeds: str
    # A logged-in user may send only as their own addresses (Postfix's
    # reject_sender_login_mismatch): 553 5.7.1 otherwise.
    sender_login_match: bool = True
    # Bytes of input held while a command is busy (accept/smtp.py); beyond: 421 and close.
    max_pending_input: int = 1 << 20
    # Seconds from the 354 to the final dot, whatever the pace: beyond, 421 and close.
    data_timeout: float = 600.0
    # Bytes of a message a session holds while DATA streams to the spool file.
    data_buffer_size: int = 1 << 18
    # Processes that accept SMTP beside the gateway (gateway/acceptproc); 0: the
    # gateway's own reactor accepts, as before.
    accept_workers: int = 0


@dataclass(frozen=True)
class PopSettings:
    """[pop3]: the limits of access/pop3.py (RFC 1939, 2449)."""

    max_command_length: int
    max_pending_input: int
    max_bad_commands: int
    max_auth_failures: int
    auth_failure_delay: float
    idle_timeout: float
    max_connections_per_client: int
    # Seconds from connecting to a successful login, in all (commands do not restart it).
    login_timeout: float = 60.0


@dataclass(frozen=True)
class ImapSettings:
    """[imap]: the limits of access/imap (RFC 3501, 2177 IDLE, 7888 LITERAL+)."""

    idle_timeout: float = 1800.0
    login_timeout: float = 60.0
    max_command_length: int = 65536
    max_literal_size: int = 65536
    max_message_size: int = 36700160
    max_bad_commands: int = 20
    max_auth_failures: int = 3
    auth_failure_delay: float = 1.0
    poll_interval: float = 10.0
    max_connections_per_client: int = 50
    # Parentheses in one command, and NOT/OR/parentheses in one SEARCH, nested deeper: BAD.
    max_nesting: int = 32
    # Search keys in one SEARCH, and message bytes it may read (BODY, TEXT, HEADER).
    max_search_keys: int = 100
    max_search_bytes: int = 1073741824  # 1 GiB: a BODY search of a 100,000-message INBOX
    # Header fields a first SEARCH FROM/SUBJECT/... must fill past which a child
    # process parses them too, from the other end, beside the search thread (0: never).
    search_process_min: int = 20000
    # Octets of all literals of one command (APPEND's message apart), and before login.
    max_command_literals: int = 262144
    max_unauthenticated_literals: int = 8192
    # Seconds one literal may take to arrive, whatever its pace (APPEND's message too).
    literal_timeout: float = 600.0
    # An APPEND message up to this many octets is held in memory as it arrives and
    # written in the thread pool; a larger one is streamed to its file in tmp/.
    append_in_memory: int = 262144
    # Keywords one folder may know, and the longest keyword (Dovecot's
    # mail_max_keyword_length); beyond: NO [LIMIT] (RFC 5530).
    max_keywords_per_folder: int = 128
    max_keyword_length: int = 50
    # Bytes of messages one FETCH reads and renders at a time; the next batch is
    # prepared while this one is sent (what a session holds for its client). A
    # bigger section, where sendfile is not used, goes in pieces of this size.
    fetch_buffer: int = 1048576
    max_fetch_contents: int = 32
    # A section literal of at least this many octets goes from its file to a
    # plaintext client by sendfile(2), never through Python (filesend.py); 0: never.
    sendfile_from: int = 65536
    # sendfile also to a client on this host; false: copied through a buffer (filesend.py).
    sendfile_local: bool = False
    # zlib level of COMPRESS=DEFLATE (RFC 4978): 1 fastest .. 9 smallest (Dovecot's 6);
    # 0: COMPRESS not offered.
    compress_level: int = 1


@dataclass(frozen=True)
class AuthGuardSettings:
    """[auth]: the password-guessing budget of access/authguard.py, shared by all protocols,
    and the memory of successful logins (access/authcache.py)."""

    max_failures_per_client: int = 10
    max_failures_per_account: int = 30
    failure_window: float = 900.0
    failure_delay: float = 0.5
    failure_delay_max: float = 8.0
    # Successful logins remembered (access/authcache.py): seconds, entries; 0 is off.
    cache_ttl: float = 300.0
    cache_size: int = 10000


@dataclass(frozen=True)
class ThreadSettings:
    """[threads]: pools by kind of slow work (service.py), so one kind never waits on another."""

    auth: int = 2  # password hashes (scrypt) for SMTP AUTH, POP3 and IMAP logins
    mailbox: int = 4  # POP3 and IMAP folder work: opening, FETCH, COPY, EXPUNGE
    search: int = 1  # IMAP SEARCH


# [queue] sync: how a group commit makes writes durable (gateway/durable.py).
SYNC_MODES = ("filesystem", "file")


@dataclass(frozen=True)
class QueueSettings:
    concurrency: int
    retry_initial: float
    retry_max: float
    max_age: float
    # Seconds after arrival before a "delayed" DSN; 0: never (Postfix delay_warning_time).
    delay_warning: float = 0.0
    # More Received headers than this is a mail loop (Postfix hopcount_limit).
    max_hops: int = 50
    # A DSN returns the whole message up to this size, only its headers above.
    bounce_size_limit: int = 50000
    # Bytes of whole-message work in flight at once after the 250 (DKIM signing and
    # ARC sealing by the relay, list posts); more waits its turn. All else streams
    # from the spool file in pieces (issue 11).
    whole_message_memory: int = 64 * 1024 * 1024
    # Seconds between looks at the control directory (`mailgateway queue hold` ...).
    control_interval: float = 1.0
    # How a group commit makes the spool and Maildir writes durable (gateway/durable.py).
    sync: str = "filesystem"
    # A spool or Maildir file past this many bytes is written back as it is written,
    # at most this far behind (durable.Writeback); 0: off.
    writeback_window: int = 4 << 20
    # Local copies of one message (an alias's or a list's mailboxes) written as one
    # call of a group commit, one sync for their data and one for their names.
    local_batch: int = 1000
    # Files of removed spool entries kept, emptied, for new entries to reuse instead
    # of creating files (queue/spare.py); 0: every file is unlinked.
    spare_files: int = 1000
    # The queue runner and every delivery in a process of their own, beside the
    # listeners' (gateway/runnerproc): two cores instead of one GIL (bench/RESULTS.md,
    # 2026-11-27: faster to the mailbox and the relay).
    runner_process: bool = True


@dataclass(frozen=True)
class RelaySettings:
    """[relay]: outbound SMTP (deliver/relay.py, deliver/mx.py, resolve/transport.py)."""

    smarthost: str = ""
    smarthost_user: str = ""
    smarthost_password_file: str = ""
    port: int = 25
    nameservers: tuple[str, ...] = ()
    dns_port: int = 53
    dns_timeout: float = 10.0
    helo_name: str = ""
    tls: str = "may"
    tls_ca_file: str = ""
    tls_policy: dict[str, str] = field(default_factory=dict)
    routes: dict[str, str] = field(default_factory=dict)
    concurrency: int = 50
    destination_concurrency: int = 10
    recipients_per_transaction: int = 50
    max_addresses: int = 5
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    connection_cache_time: float = 2.0


@dataclass(frozen=True)
class AliasSettings:
    """[aliases]: the aliases(5) table (resolve/aliases.py, resolve/router.py)."""

    file: str = ""
    # The embedded default's "etc/aliases" is relative to wherever the gateway runs:
    # missing there, it is an empty table (and is read once it appears).
    file_optional: bool = False
    allow_include_commands: bool = False
    allow_include_files: bool = False
    max_depth: int = 20
    recipient_delimiter: str = "+"
    shell: tuple[str, ...] = ()
    reply: tuple[str, ...] = ()
    check_interval: float = 5.0


@dataclass(frozen=True)
class ProgramSettings:
    """[program]: program recipients (deliver/program.py), as Postfix's local(8) runs them."""

    user: str = "nobody"
    group: str = "nogroup"
    directory: str = "/"
    path: str = "/usr/local/bin:/usr/bin:/bin"
    timeout: float = 1000.0
    concurrency: int = 10
    output_limit: int = 4096
    reply_limit: int = 65536
    # The program spawner (deliver/spawner.py) is asked whether it is alive every
    # ping_interval seconds while programs run; unanswered after ping_timeout, it is
    # killed and started again, and the deliveries it held are retried (451).
    ping_interval: float = 5.0
    ping_timeout: float = 2.0


@dataclass(frozen=True)
class MboxSettings:
    """[mbox]: file recipients (deliver/mbox.py)."""

    lock_timeout: float = 30.0


@dataclass(frozen=True)
class DkimSettings:
    """[dkim]: outbound DKIM signing (gateway/sign/), keys in <state_dir>/dkim/."""

    sign: bool = True
    check_interval: float = 5.0


@dataclass(frozen=True)
class InboundAuthSettings:
    """[inbound_auth]: SPF, DKIM and DMARC of mail arriving on port 25 (gateway/verify/)."""

    check: bool = True
    spf_fail: str = "reject"  # reject (550 5.7.23) | mark
    dmarc_reject: str = "reject"  # what p=reject does: reject (550 5.7.1) | quarantine | mark
    dmarc_quarantine: str = "junk"  # what p=quarantine does: junk | mark
    junk_folder: str = "Junk"
    timeout: float = 20.0  # seconds of DNS for one message, all its lookups together
    threads: int = 16
    public_suffix_list: str = ""  # a newer public_suffix_list.dat; "": the packaged one
    dkim_min_key_bits: int = 1024
    # Bytes of a message read whole for its DKIM body hashes; a bigger one gets
    # dkim=neutral (not verified), so memory per check stays bounded.
    max_verify_size: int = 10485760


SPF_FAIL_ACTIONS = ("reject", "mark")
DMARC_REJECT_ACTIONS = ("reject", "quarantine", "mark")
DMARC_QUARANTINE_ACTIONS = ("junk", "mark")


@dataclass(frozen=True)
class ArcSettings:
    """[arc]: ARC sealing (RFC 8617, gateway/sign/arc.py) with the DKIM keys."""

    seal_lists: bool = True
    seal_relayed: bool = False
    domain: str = ""        # the sealing domain of relayed mail; "" is the first of domains
    authserv_id: str = ""   # RFC 8601 authserv-id; "" is hostname


@dataclass(frozen=True)
class WebSettings:
    """[web]: the RFC 8058 one-click unsubscribe endpoint (gateway/lists/web.py)."""

    # Twisted endpoint string; "" (the default) is off.
    listen: str = ""
    # True: HTTPS with the [tls] certificate; False: plain HTTP for a reverse proxy
    # that terminates TLS in front of it.
    tls: bool = True
    max_request_size: int = 65536
    idle_timeout: float = 60.0


@dataclass(frozen=True)
class Settings:
    source: str
    hostname: str
    domains: tuple[str, ...]
    state_dir: Path
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    listen: dict[str, str]
    certificate: Path
    private_key: Path
    plaintext_auth_from_loopback: bool
    smtp: SmtpSettings
    queue: QueueSettings
    pop3: PopSettings
    relay: RelaySettings = field(default_factory=RelaySettings)
    imap: ImapSettings = field(default_factory=ImapSettings)
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    # The TLS fronts ([[tlsfront]]) and the PROXY-requiring listeners behind them.
    tlsfront: tuple[FrontSettings, ...] = ()
    proxied: ProxiedSettings = field(default_factory=lambda: ProxiedSettings())
    aliases: AliasSettings = field(default_factory=AliasSettings)
    program: ProgramSettings = field(default_factory=ProgramSettings)
    mbox: MboxSettings = field(default_factory=MboxSettings)
    threads: ThreadSettings = field(default_factory=ThreadSettings)
    auth_guard: AuthGuardSettings = field(default_factory=AuthGuardSettings)
    # [server] user/group: who serves once the ports are bound (gateway/privileges.py).
    user: str = ""
    group: str = ""
    # [metrics] listen: the Prometheus and `mailgateway status` endpoint; "" is off.
    metrics_listen: str = ""
    # [log]: the log writer's bound and batching (gateway/logwriter.py).
    log_queue_lines: int = 10000
    log_flush_interval: float = 0.1
    dkim: DkimSettings = field(default_factory=DkimSettings)
    inbound_auth: InboundAuthSettings = field(default_factory=InboundAuthSettings)
    arc: ArcSettings = field(default_factory=ArcSettings)
    # [mailbox] quota: each user's storage limit in bytes (RFC 9208), 0: none;
    # <state_dir>/quotas overrides it per user (gateway/store/quota.py).
    mailbox_quota: int = 0
    # [mailbox] quota_grace: percent of the quota a delivery may go past it.
    mailbox_quota_grace: int = 10
    # [mailbox] vanished_uids: expunged UIDs each folder remembers for QRESYNC
    # (store/index.py); a client that knew an older state is sent every missing UID.
    mailbox_vanished_uids: int = 50000
    # [mailbox] read_ahead: message files one reader opens ahead of the one it reads
    # (store/folder.py Folder.heads), so the disk reads them in parallel.
    mailbox_read_ahead: int = 64
    web: WebSettings = field(default_factory=WebSettings)

    @property
    def authserv_id(self) -> str:
        """The RFC 8601 authserv-id of our Authentication-Results: one name for the
        inbound checks that write them (gateway/verify/) and the ARC sealer that
        carries them on (gateway/sign/arc.py arrival_results), or the seal would
        find none. [arc] authserv_id, "" being the hostname."""
        return self.arc.authserv_id or self.hostname

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "queue"

    @property
    def mail_dir(self) -> Path:
        return self.state_dir / "mail"

    @property
    def users_file(self) -> Path:
        return self.state_dir / "users"

    @property
    def quotas_file(self) -> Path:
        return self.state_dir / "quotas"

    @property
    def dkim_dir(self) -> Path:
        return self.state_dir / "dkim"


class _Reader:
    """Reads typed values out of the parsed TOML, collecting every fault."""

    def __init__(self, source: str, data: dict[str, Any]):
        self.source = source
        self.data = data
        self.problems: list[tuple[str, str, str]] = []
        self.known: dict[str, set[str]] = {}

    def get(self, section: str, key: str, kind: type, default: Any) -> Any:
        self.known.setdefault(section, set()).add(key)
        table = self.data.get(section, {})
        if not isinstance(table, dict):
            return default
        value = table.get(key, default)
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            self.fault(section, key, f"must be {kind.__name__}, not {type(value).__name__}")
            return default
        return value

    def positive(self, section: str, key: str, kind: type, default: Any) -> Any:
        value = self.get(section, key, kind, default)
        if value <= 0:
            self.fault(section, key, f"must be greater than 0, not {value}")
            return default
        return value

    def fault(self, section: str, key: str, reason: str) -> None:
        self.problems.append((self.source, f"{section}.{key}" if key else section, reason))

    def unknown_keys(self) -> None:
        for section, table in self.data.items():
            if section not in self.known:
                self.fault(section, "", "unknown section")
                continue
            if isinstance(table, dict):
                for key in table:
                    if key not in self.known[section]:
                        self.fault(section, key, "unknown key")


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: object) -> int:
    """Bytes from 1048576, "500M", "1G" (binary units, as Dovecot reads them);
    "" and 0 are 0. ValueError names what is wrong."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("must be a size such as \"1G\" or a number of bytes")
    if isinstance(value, int):
        number = value
    else:
        text = value.strip().upper().removesuffix("B")
        unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
        digits = text[:len(text) - len(unit)].strip()
        if not text:
            return 0
        if not digits.isdigit():
            raise ValueError(f"must be a size such as \"1G\", \"500M\" or a number of "
                             f"bytes, not {value!r}")
        number = int(digits) * _SIZE_UNITS[unit]
    if number < 0:
        raise ValueError(f"must be 0 (unlimited) or more, not {value!r}")
    return number


def locate(path: str | os.PathLike[str] | None = None,
           environ: dict[str, str] | None = None) -> tuple[Path, str]:
    """The configuration file twistd and the CLI use, and why that one: the given
    path (--config), else $MAILGATEWAY_CONFIG, else SYSTEM_PATH if it exists, else
    the embedded default. Both look it up here, so they never disagree."""
    env = os.environ if environ is None else environ
    if path:
        return Path(path), "--config"
    if env.get(ENVIRONMENT_VARIABLE):
        return Path(env[ENVIRONMENT_VARIABLE]), f"${ENVIRONMENT_VARIABLE}"
    if SYSTEM_PATH.exists():
        return SYSTEM_PATH, "the system configuration"
    return DEFAULT_PATH, EMBEDDED


def _read(file: Path) -> dict[str, Any]:
    """The parsed TOML of file, or ConfigError with one line saying why not."""
    source = str(file)
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError([(source, "", f"cannot read: {e.strerror}")]) from e
    except UnicodeDecodeError as e:
        line = e.object.count(b"\n", 0, e.start) + 1
        raise ConfigError([(source, "", f"not UTF-8: byte 0x{e.object[e.start]:02x} "
                                        f"on line {line}")]) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([(source, "", f"not valid TOML: {e}")]) from e


def load(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and check a configuration file (the embedded default when path is None)."""
    file = Path(path) if path is not None else DEFAULT_PATH
    return parse(_read(file), str(file))


def parse(data: dict[str, Any], source: str = "<config>") -> Settings:
    r = _Reader(source, data)
    hostname = r.get("server", "hostname", str, "localhost")
    if not hostname or any(c.isspace() for c in hostname):
        r.fault("server", "hostname", f"must be a host name, not {hostname!r}")
    domains = r.get("server", "domains", list, [])
    if not domains or not all(isinstance(d, str) and d for d in domains):
        r.fault("server", "domains", "must be a non-empty list of domain names")
        domains = []
    # Absolute from here on: logs and the CLI name the one directory meant.
    state_text = r.get("server", "state_dir", str, "./var")
    if not state_text:
        r.fault("server", "state_dir", "must be a directory name")
    state_dir = Path(state_text or "./var").absolute()
    user, group = r.get("server", "user", str, ""), r.get("server", "group", str, "")
    networks = []
    for net in r.get("server", "trusted_networks", list, []):
        try:
            networks.append(ipaddress.ip_network(str(net), strict=False))
        except ValueError:
            r.fault("server", "trusted_networks", f"{net!r} is not a network in CIDR form")

    listen = {}
    for name, default in (("smtp", ""), ("submission", ""), ("pop3", ""), ("imap", "")):
        value = r.get("listen", name, str, default)
        if value and not value.startswith(_ENDPOINT_KINDS):
            r.fault("listen", name, f"{value!r} is not a Twisted endpoint string (tcp:PORT:...)")
        elif (fault := endpoint_fault(value)) is not None:
            r.fault("listen", name, fault)
        listen[name] = value

    cert = r.get("tls", "certificate", str, "")
    key = r.get("tls", "private_key", str, "")
    if bool(cert) != bool(key):
        r.fault("tls", "certificate" if not cert else "private_key",
                "certificate and private_key must be given together")
    # Whether they make a pair, and state_dir, are checked by gateway/startup.py
    # (as the serving user), at check-config and at start.
    for k, v in (("certificate", cert), ("private_key", key)):
        if v and not Path(v).is_file():
            r.fault("tls", k, f"no such file: {v}")

    bare = r.get("smtp", "bare_linefeeds", str, "reject")
    if bare not in ("reject", "accept"):
        r.fault("smtp", "bare_linefeeds", f"must be \"reject\" or \"accept\", not {bare!r}")
    smtp = SmtpSettings(
        max_message_size=r.positive("smtp", "max_message_size", int, 36700160),
        max_line_length=r.positive("smtp", "max_line_length", int, 1000),
        max_command_length=r.positive("smtp", "max_command_length", int, 2048),
        max_recipients=r.positive("smtp", "max_recipients", int, 100),
        max_bad_commands=r.positive("smtp", "max_bad_commands", int, 20),
        idle_timeout=r.positive("smtp", "idle_timeout", float, 300.0),
        max_connections_per_client=r.positive("smtp", "max_connections_per_client", int, 50),
        vrfy=r.get("smtp", "vrfy", bool, False),
        bare_linefeeds=bare,
        sender_login_match=r.get("smtp", "sender_login_match", bool, True),
        max_pending_input=r.positive("smtp", "max_pending_input", int, 1 << 20),
        data_timeout=r.positive("smtp", "data_timeout", float, 600.0),
        data_buffer_size=r.positive("smtp", "data_buffer_size", int, 1 << 18),
        accept_workers=r.get("smtp", "accept_workers", int, SmtpSettings.accept_workers),
    )
    if not 0 <= smtp.accept_workers <= MAX_ACCEPT_WORKERS:
        r.fault("smtp", "accept_workers",
                f"must be 0 to {MAX_ACCEPT_WORKERS}, not {smtp.accept_workers}")
        smtp = replace(smtp, accept_workers=0)
    if smtp.max_line_length < 80:
        r.fault("smtp", "max_line_length", "must be at least 80")
    queue = QueueSettings(
        concurrency=r.positive("queue", "concurrency", int, 64),
        retry_initial=r.positive("queue", "retry_initial", float, 300.0),
        retry_max=r.positive("queue", "retry_max", float, 3600.0),
        max_age=r.positive("queue", "max_age", float, 432000.0),
        delay_warning=r.get("queue", "delay_warning", float, 0.0),
        max_hops=r.positive("queue", "max_hops", int, 50),
        bounce_size_limit=r.positive("queue", "bounce_size_limit", int, 50000),
        whole_message_memory=r.positive("queue", "whole_message_memory", int,
                                        QueueSettings.whole_message_memory),
        control_interval=r.positive("queue", "control_interval", float, 1.0),
        sync=r.get("queue", "sync", str, "filesystem"),
        writeback_window=r.get("queue", "writeback_window", int, QueueSettings.writeback_window),
        local_batch=r.positive("queue", "local_batch", int, QueueSettings.local_batch),
        spare_files=r.get("queue", "spare_files", int, QueueSettings.spare_files),
        runner_process=r.get("queue", "runner_process", bool, QueueSettings.runner_process),
    )
    if queue.sync not in SYNC_MODES:
        r.fault("queue", "sync", f"must be \"filesystem\" or \"file\", not {queue.sync!r}")
    if queue.spare_files < 0:
        r.fault("queue", "spare_files",
                f"must be 0 (off) or a number of files, not {queue.spare_files}")
    if queue.writeback_window < 0:
        r.fault("queue", "writeback_window",
                f"must be 0 (off) or a number of bytes, not {queue.writeback_window}")
    if queue.delay_warning < 0:
        r.fault("queue", "delay_warning", f"must be 0 (off) or more, not {queue.delay_warning}")
    relay = _relay_settings(r)
    pop3 = _pop3_settings(r)
    imap = _imap_settings(r)
    aliases, program, mbox = _alias_settings(r)
    plaintext = r.get("auth", "plaintext_from_loopback", bool, False)
    g = AuthGuardSettings
    auth_guard = AuthGuardSettings(
        max_failures_per_client=r.positive("auth", "max_failures_per_client", int,
                                           g.max_failures_per_client),
        max_failures_per_account=r.positive("auth", "max_failures_per_account", int,
                                            g.max_failures_per_account),
        failure_window=r.positive("auth", "failure_window", float, g.failure_window),
        failure_delay=r.get("auth", "failure_delay", float, g.failure_delay),
        failure_delay_max=r.get("auth", "failure_delay_max", float, g.failure_delay_max),
        cache_ttl=r.get("auth", "cache_ttl", float, g.cache_ttl),
        cache_size=r.get("auth", "cache_size", int, g.cache_size))
    for name in ("failure_delay", "failure_delay_max", "cache_ttl", "cache_size"):
        if getattr(auth_guard, name) < 0:
            r.fault("auth", name, f"must be 0 or greater, not {getattr(auth_guard, name)}")
    threads = ThreadSettings(auth=r.positive("threads", "auth", int, ThreadSettings.auth),
                             mailbox=r.positive("threads", "mailbox", int,
                                                ThreadSettings.mailbox),
                             search=r.positive("threads", "search", int, ThreadSettings.search))
    metrics = r.get("metrics", "listen", str, "")
    if metrics and not metrics.startswith(("tcp:", "tcp6:", "unix:")):
        r.fault("metrics", "listen", f"{metrics!r} is not a tcp: or unix: endpoint string")
    log_queue_lines = r.positive("log", "queue_lines", int, 10000)
    log_flush_interval = r.positive("log", "flush_interval", float, 0.1)

    web = WebSettings(listen=r.get("web", "listen", str, WebSettings.listen),
                      tls=r.get("web", "tls", bool, WebSettings.tls),
                      max_request_size=r.positive("web", "max_request_size", int,
                                                  WebSettings.max_request_size),
                      idle_timeout=r.positive("web", "idle_timeout", float,
                                              WebSettings.idle_timeout))
    if web.listen and not web.listen.startswith(("tcp:", "tcp6:", "unix:")):
        r.fault("web", "listen", f"{web.listen!r} is not a tcp: or unix: endpoint string")
    dkim = DkimSettings(sign=r.get("dkim", "sign", bool, DkimSettings.sign),
                        check_interval=r.positive("dkim", "check_interval", float,
                                                  DkimSettings.check_interval))
    inbound_auth = _inbound_auth_settings(r)
    arc = ArcSettings(seal_lists=r.get("arc", "seal_lists", bool, ArcSettings.seal_lists),
                      seal_relayed=r.get("arc", "seal_relayed", bool, ArcSettings.seal_relayed),
                      domain=r.get("arc", "domain", str, "").lower().rstrip("."),
                      authserv_id=r.get("arc", "authserv_id", str, ""))
    if any(c.isspace() or c == ";" for c in arc.authserv_id):
        r.fault("arc", "authserv_id", f"{arc.authserv_id!r} is not a token (RFC 8601 2.5)")
    quota_setting = r.get("mailbox", "quota", object, 0)
    try:
        mailbox_quota = parse_size(quota_setting)
    except ValueError as e:
        r.fault("mailbox", "quota", str(e))
        mailbox_quota = 0
    quota_grace = r.get("mailbox", "quota_grace", int, 10)
    vanished_uids = r.positive("mailbox", "vanished_uids", int, Settings.mailbox_vanished_uids)
    read_ahead = r.positive("mailbox", "read_ahead", int, Settings.mailbox_read_ahead)
    if not 0 <= quota_grace <= 100:
        r.fault("mailbox", "quota_grace", f"must be a percentage from 0 to 100, not {quota_grace}")
        quota_grace = 10
    tls_dir = state_dir / "tls"
    fronts, proxied = _fronts(r, state_dir, Path(cert) if cert else tls_dir / "cert.pem",
                              Path(key) if key else tls_dir / "key.pem", listen, hostname)
    for name, endpoint in proxied.listen.items():
        if endpoint.startswith(("tcp:", "tcp6:")) and networks:
            # Any local user can connect to a tcp: port and claim, in a PROXY header,
            # an address of trusted_networks: an open relay. Unix sockets are guarded
            # by their mode.
            r.fault("proxied", name, f"{endpoint!r} is a tcp: listener while "
                    "server.trusted_networks is not empty: anyone who can connect to it "
                    "can claim a trusted address and relay; use a unix: socket")
    r.unknown_keys()
    if r.problems:
        raise ConfigError(r.problems)
    return Settings(
        source=source,
        hostname=hostname,
        domains=tuple(d.lower().rstrip(".") for d in domains),
        state_dir=state_dir,
        trusted_networks=tuple(networks),
        listen=listen,
        certificate=Path(cert) if cert else tls_dir / "cert.pem",
        private_key=Path(key) if key else tls_dir / "key.pem",
        plaintext_auth_from_loopback=plaintext,
        smtp=smtp,
        queue=queue,
        pop3=pop3,
        relay=relay,
        imap=imap,
        raw=data,
        tlsfront=fronts,
        proxied=proxied,
        aliases=aliases,
        program=program,
        mbox=mbox,
        threads=threads,
        auth_guard=auth_guard,
        user=user,
        group=group,
        metrics_listen=metrics,
        log_queue_lines=log_queue_lines,
        log_flush_interval=log_flush_interval,
        dkim=dkim,
        inbound_auth=inbound_auth,
        arc=arc,
        web=web,
        mailbox_quota=mailbox_quota,
        mailbox_quota_grace=quota_grace,
        mailbox_vanished_uids=vanished_uids,
        mailbox_read_ahead=read_ahead,
    )


def _inbound_auth_settings(r: _Reader) -> InboundAuthSettings:
    d = InboundAuthSettings
    choices = {"spf_fail": SPF_FAIL_ACTIONS, "dmarc_reject": DMARC_REJECT_ACTIONS,
               "dmarc_quarantine": DMARC_QUARANTINE_ACTIONS}
    chosen = {}
    for key, allowed in choices.items():
        value = r.get("inbound_auth", key, str, getattr(d, key))
        if value not in allowed:
            r.fault("inbound_auth", key, f"must be one of {', '.join(allowed)}, not {value!r}")
            value = getattr(d, key)
        chosen[key] = value
    psl = r.get("inbound_auth", "public_suffix_list", str, d.public_suffix_list)
    if psl and not Path(psl).is_file():
        r.fault("inbound_auth", "public_suffix_list", f"no such file: {psl}")
    junk = r.get("inbound_auth", "junk_folder", str, d.junk_folder)
    if not junk or any(c in junk for c in "/\\*%.") or not junk.isprintable():
        r.fault("inbound_auth", "junk_folder", f"must be a top-level folder name, not {junk!r}")
        junk = d.junk_folder
    return InboundAuthSettings(
        check=r.get("inbound_auth", "check", bool, d.check),
        timeout=r.positive("inbound_auth", "timeout", float, d.timeout),
        threads=r.positive("inbound_auth", "threads", int, d.threads),
        dkim_min_key_bits=r.positive("inbound_auth", "dkim_min_key_bits", int,
                                     d.dkim_min_key_bits),
        max_verify_size=r.positive("inbound_auth", "max_verify_size", int,
                                   d.max_verify_size),
        public_suffix_list=psl, junk_folder=junk, **chosen)


def _names(r: _Reader, section: str, key: str) -> tuple[str, ...]:
    names = r.get(section, key, list, [])
    if not all(isinstance(n, str) and n for n in names):
        r.fault(section, key, "must be a list of alias names")
        return ()
    return tuple(n.lower() for n in names)


def _alias_settings(r: _Reader) -> tuple[AliasSettings, ProgramSettings, MboxSettings]:
    """[aliases], [program] and [mbox]; defaults match gateway/default.toml."""
    d = AliasSettings()
    file = r.get("aliases", "file", str, d.file)
    optional = r.source == str(DEFAULT_PATH)
    if file and not optional and not Path(file).is_file():
        r.fault("aliases", "file", f"no such file: {file}")
    delimiter = r.get("aliases", "recipient_delimiter", str, d.recipient_delimiter)
    if len(delimiter) > 1 or (delimiter and (delimiter.isalnum() or delimiter in r'.@"\ ')):
        r.fault("aliases", "recipient_delimiter",
                f"must be one character such as \"+\" or \"-\", or \"\" (off), not {delimiter!r}")
    aliases = AliasSettings(
        file=file,
        file_optional=optional,
        allow_include_commands=r.get("aliases", "allow_include_commands", bool, False),
        allow_include_files=r.get("aliases", "allow_include_files", bool, False),
        max_depth=r.positive("aliases", "max_depth", int, d.max_depth),
        recipient_delimiter=delimiter,
        shell=_names(r, "aliases", "shell"),
        reply=_names(r, "aliases", "reply"),
        check_interval=r.get("aliases", "check_interval", float, d.check_interval),
    )
    p = ProgramSettings()
    directory = r.get("program", "directory", str, p.directory)
    if not directory.startswith("/"):
        r.fault("program", "directory", f"must be an absolute path, not {directory!r}")
    program = ProgramSettings(
        user=r.get("program", "user", str, p.user),
        group=r.get("program", "group", str, p.group),
        directory=directory,
        path=r.get("program", "path", str, p.path),
        timeout=r.positive("program", "timeout", float, p.timeout),
        concurrency=r.positive("program", "concurrency", int, p.concurrency),
        output_limit=r.positive("program", "output_limit", int, p.output_limit),
        reply_limit=r.positive("program", "reply_limit", int, p.reply_limit),
        ping_interval=r.positive("program", "ping_interval", float, p.ping_interval),
        ping_timeout=r.positive("program", "ping_timeout", float, p.ping_timeout),
    )
    mbox = MboxSettings(lock_timeout=r.positive("mbox", "lock_timeout", float, 30.0))
    return aliases, program, mbox


def _imap_settings(r: _Reader) -> ImapSettings:
    """The [imap] section; defaults match gateway/default.toml."""
    d = ImapSettings()
    imap = ImapSettings(
        idle_timeout=r.positive("imap", "idle_timeout", float, d.idle_timeout),
        login_timeout=r.positive("imap", "login_timeout", float, d.login_timeout),
        max_command_length=r.positive("imap", "max_command_length", int, d.max_command_length),
        max_literal_size=r.positive("imap", "max_literal_size", int, d.max_literal_size),
        max_message_size=r.positive("imap", "max_message_size", int, d.max_message_size),
        max_bad_commands=r.positive("imap", "max_bad_commands", int, d.max_bad_commands),
        max_auth_failures=r.positive("imap", "max_auth_failures", int, d.max_auth_failures),
        auth_failure_delay=r.get("imap", "auth_failure_delay", float, d.auth_failure_delay),
        poll_interval=r.positive("imap", "poll_interval", float, d.poll_interval),
        max_connections_per_client=r.positive("imap", "max_connections_per_client", int,
                                              d.max_connections_per_client),
        max_nesting=r.positive("imap", "max_nesting", int, d.max_nesting),
        max_search_keys=r.positive("imap", "max_search_keys", int, d.max_search_keys),
        max_search_bytes=r.positive("imap", "max_search_bytes", int, d.max_search_bytes),
        search_process_min=r.get("imap", "search_process_min", int, d.search_process_min),
        max_command_literals=r.positive("imap", "max_command_literals", int,
                                        d.max_command_literals),
        max_unauthenticated_literals=r.positive("imap", "max_unauthenticated_literals", int,
                                                d.max_unauthenticated_literals),
        literal_timeout=r.positive("imap", "literal_timeout", float, d.literal_timeout),
        append_in_memory=r.get("imap", "append_in_memory", int, d.append_in_memory),
        max_keywords_per_folder=r.positive("imap", "max_keywords_per_folder", int,
                                           d.max_keywords_per_folder),
        max_keyword_length=r.positive("imap", "max_keyword_length", int, d.max_keyword_length),
        fetch_buffer=r.positive("imap", "fetch_buffer", int, d.fetch_buffer),
        max_fetch_contents=r.positive("imap", "max_fetch_contents", int, d.max_fetch_contents),
        sendfile_from=r.get("imap", "sendfile_from", int, d.sendfile_from),
        sendfile_local=r.get("imap", "sendfile_local", bool, d.sendfile_local),
        compress_level=r.get("imap", "compress_level", int, d.compress_level),
    )
    if imap.search_process_min < 0:
        r.fault("imap", "search_process_min",
                f"must be 0 or more, not {imap.search_process_min}")
    if imap.append_in_memory < 0:
        r.fault("imap", "append_in_memory", f"must be 0 or more, not {imap.append_in_memory}")
    if imap.sendfile_from < 0:
        r.fault("imap", "sendfile_from", f"must be 0 or more, not {imap.sendfile_from}")
    if not 0 <= imap.compress_level <= 9:
        r.fault("imap", "compress_level", f"must be 0 to 9, not {imap.compress_level}")
    if imap.idle_timeout < 1800:  # RFC 3501 5.4: the autologout timer is at least 30 minutes
        r.fault("imap", "idle_timeout", f"must be at least 1800, not {imap.idle_timeout}")
    if imap.max_command_length < 1000:  # RFC 7162 3.2.3 asks servers to take 8192
        r.fault("imap", "max_command_length", "must be at least 1000")
    if imap.auth_failure_delay < 0:
        r.fault("imap", "auth_failure_delay",
                f"must be 0 or greater, not {imap.auth_failure_delay}")
    return imap


def _pop3_settings(r: _Reader) -> PopSettings:
    """The [pop3] section; defaults match gateway/default.toml."""
    pop3 = PopSettings(
        max_command_length=r.positive("pop3", "max_command_length", int, 4096),
        max_pending_input=r.positive("pop3", "max_pending_input", int, 1 << 20),
        max_bad_commands=r.positive("pop3", "max_bad_commands", int, 20),
        max_auth_failures=r.positive("pop3", "max_auth_failures", int, 3),
        auth_failure_delay=r.get("pop3", "auth_failure_delay", float, 1.0),
        idle_timeout=r.positive("pop3", "idle_timeout", float, 600.0),
        max_connections_per_client=r.positive("pop3", "max_connections_per_client", int, 50),
        login_timeout=r.positive("pop3", "login_timeout", float, 60.0),
    )
    if pop3.max_command_length < 255:  # RFC 2449 4: commands may be 255 octets
        r.fault("pop3", "max_command_length", "must be at least 255")
    if pop3.auth_failure_delay < 0:
        r.fault("pop3", "auth_failure_delay",
                f"must be 0 or greater, not {pop3.auth_failure_delay}")
    return pop3


# --- [relay] ------------------------------------------------------------------------

TLS_POLICIES = ("none", "may", "encrypt", "verify")


def split_next_hop(text: str) -> tuple[str, int | None, bool] | None:
    """Postfix next-hop syntax: "host", "host:port", "[host]" or "[host]:port".

    Returns (host, port or None, brackets); brackets mean "no MX lookup, the
    host's own address" as in Postfix's transport(5). None when malformed.
    """
    text = text.strip()
    port: int | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text, brackets = rest[1:], True
    else:
        host, _, port_text = text.partition(":")
        brackets = False
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        port = int(port_text)
    # Inside brackets an IPv6 address may carry colons ("[::1]:25").
    bad = "/@[]" if brackets else "/@[]:"
    if not host or any(c.isspace() or c in bad for c in host):
        return None
    return host.lower().rstrip("."), port, brackets


def _relay_settings(r: _Reader) -> RelaySettings:
    """The [relay] section; defaults match gateway/default.toml."""
    s = "relay"
    smarthost = r.get(s, "smarthost", str, "")
    if smarthost and not split_next_hop(smarthost):
        r.fault(s, "smarthost", f"must be host, host:port or [host]:port, not {smarthost!r}")
    user = r.get(s, "smarthost_user", str, "")
    password_file = r.get(s, "smarthost_password_file", str, "")
    if bool(user) != bool(password_file):
        r.fault(s, "smarthost_user" if not user else "smarthost_password_file",
                "smarthost_user and smarthost_password_file must be given together")
    elif password_file and not Path(password_file).is_file():
        r.fault(s, "smarthost_password_file", f"no such file: {password_file}")
    nameservers = r.get(s, "nameservers", list, [])
    for ns in nameservers:
        try:
            ipaddress.ip_address(str(ns))
        except ValueError:
            r.fault(s, "nameservers", f"{ns!r} is not an IP address")
            nameservers = []
            break
    tls = r.get(s, "tls", str, "may")
    if tls not in TLS_POLICIES:
        r.fault(s, "tls", f"must be one of {', '.join(TLS_POLICIES)}, not {tls!r}")
    policy = {}
    for domain, level in r.get(s, "tls_policy", dict, {}).items():
        if level not in TLS_POLICIES:
            r.fault(s, f"tls_policy.{domain}", f"must be one of {', '.join(TLS_POLICIES)}")
        policy[domain.lower().rstrip(".")] = level
    routes = {}
    for domain, hop in r.get(s, "routes", dict, {}).items():
        if not isinstance(hop, str) or not split_next_hop(hop):
            r.fault(s, f"routes.{domain}", "must be host, host:port or [host]:port")
            continue
        routes[domain.lower().rstrip(".")] = hop
    ca_file = r.get(s, "tls_ca_file", str, "")
    if ca_file and not Path(ca_file).is_file():
        r.fault(s, "tls_ca_file", f"no such file: {ca_file}")
    port = r.positive(s, "port", int, 25)
    dns_port = r.positive(s, "dns_port", int, 53)
    for key, value in (("port", port), ("dns_port", dns_port)):
        if value > 65535:
            r.fault(s, key, f"must be a port number, not {value}")
    return RelaySettings(
        smarthost=smarthost, smarthost_user=user, smarthost_password_file=password_file,
        port=port, nameservers=tuple(str(n) for n in nameservers), dns_port=dns_port,
        dns_timeout=r.positive(s, "dns_timeout", float, 10.0),
        helo_name=r.get(s, "helo_name", str, ""),
        tls=tls, tls_ca_file=ca_file, tls_policy=policy, routes=routes,
        concurrency=r.positive(s, "concurrency", int, 50),
        destination_concurrency=r.positive(s, "destination_concurrency", int, 10),
        recipients_per_transaction=r.positive(s, "recipients_per_transaction", int, 50),
        max_addresses=r.positive(s, "max_addresses", int, 5),
        connect_timeout=r.positive(s, "connect_timeout", float, 30.0),
        command_timeout=r.positive(s, "command_timeout", float, 300.0),
        data_timeout=r.positive(s, "data_timeout", float, 600.0),
        connection_cache_time=r.get(s, "connection_cache_time", float, 2.0),
    )


# --- the TLS front alone (`mailgateway tlsfront`); its sections: config_tlsfront.py ---


def load_fronts(path: str | os.PathLike[str]) -> tuple[FrontSettings, ...]:
    """The fronts of a file for `mailgateway tlsfront --config`: a whole gateway
    configuration, or one with only [[tlsfront]] sections (connect to endpoint strings)."""
    source = str(path)
    data = _read(Path(path))
    if set(data) - {"tlsfront"}:
        return parse(data, source).tlsfront
    return parse_fronts(data, source)


def parse_fronts(data: dict[str, Any], source: str = "<command line>",
                 ) -> tuple[FrontSettings, ...]:
    """Fronts alone (no gateway): [[tlsfront]] entries whose connect is an endpoint string."""
    r = _Reader(source, data)
    fronts, _ = _fronts(r, None, None, None, {})
    if not fronts and not r.problems:
        r.fault("tlsfront", "", "no [[tlsfront]] section")
    if r.problems:
        raise ConfigError(r.problems)
    return fronts
