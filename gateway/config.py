"""Settings: the TOML configuration, checked whole, every fault named.

Kernel module. `load()` returns a Settings or raises ConfigError listing each
(file, key, reason); `mailgateway check-config` prints them. With no path the
embedded default (gateway/default.toml, linked as etc/mailgateway.toml) is used.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

DEFAULT_PATH = Path(__file__).with_name("default.toml")

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


@dataclass(frozen=True)
class QueueSettings:
    concurrency: int
    retry_initial: float
    retry_max: float
    max_age: float


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
    pop3_idle_timeout: float
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "queue"

    @property
    def mail_dir(self) -> Path:
        return self.state_dir / "mail"

    @property
    def users_file(self) -> Path:
        return self.state_dir / "users"


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


def load(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and check a configuration file (the embedded default when path is None)."""
    file = Path(path) if path is not None else DEFAULT_PATH
    source = str(file)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError([(source, "", f"cannot read: {e.strerror}")]) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([(source, "", f"not valid TOML: {e}")]) from e
    return parse(data, source)


def parse(data: dict[str, Any], source: str = "<config>") -> Settings:
    r = _Reader(source, data)
    hostname = r.get("server", "hostname", str, "localhost")
    if not hostname or any(c.isspace() for c in hostname):
        r.fault("server", "hostname", f"must be a host name, not {hostname!r}")
    domains = r.get("server", "domains", list, [])
    if not domains or not all(isinstance(d, str) and d for d in domains):
        r.fault("server", "domains", "must be a non-empty list of domain names")
        domains = []
    state_dir = Path(r.get("server", "state_dir", str, "./var"))
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
        listen[name] = value

    cert = r.get("tls", "certificate", str, "")
    key = r.get("tls", "private_key", str, "")
    if bool(cert) != bool(key):
        r.fault("tls", "certificate" if not cert else "private_key",
                "certificate and private_key must be given together")
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
    )
    if smtp.max_line_length < 80:
        r.fault("smtp", "max_line_length", "must be at least 80")
    queue = QueueSettings(
        concurrency=r.positive("queue", "concurrency", int, 8),
        retry_initial=r.positive("queue", "retry_initial", float, 300.0),
        retry_max=r.positive("queue", "retry_max", float, 3600.0),
        max_age=r.positive("queue", "max_age", float, 432000.0),
    )
    pop3_idle = r.positive("pop3", "idle_timeout", float, 600.0)
    plaintext = r.get("auth", "plaintext_from_loopback", bool, False)
    r.unknown_keys()
    if r.problems:
        raise ConfigError(r.problems)
    tls_dir = state_dir / "tls"
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
        pop3_idle_timeout=pop3_idle,
        raw=data,
    )
