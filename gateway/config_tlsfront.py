"""Settings of the TLS front: [[tlsfront]] sections and [proxied] listeners.

Kernel module, part of config.py (split out for size; it imports nothing from
gateway): config.parse() and config.load_fronts() call fronts() with their
reader, so faults come out the same way, each with file, key and reason.
gateway/tlsfront/ reads FrontSettings; service.py wires ProxiedSettings.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

PROXY_VERSIONS = ("v2", "v1", "none")
FRONT_PROTOCOLS = ("smtp", "pop3", "imap", "")
CLIENT_VERIFY = ("none", "optional", "required")
TLS_VERSIONS = ("1.2", "1.3")
PROXIED_LISTENERS = ("smtp", "submission", "pop3", "imap")
# Mozilla's "intermediate" TLS 1.2 list: forward secrecy and AEAD only.
DEFAULT_FRONT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"
_UNIX_PATH_MAX = 107  # sockaddr_un.sun_path on Linux, NUL excluded


@dataclass(frozen=True)
class FrontCertificate:
    certificate: Path
    private_key: Path


@dataclass(frozen=True)
class FrontSettings:
    """One [[tlsfront]]: implicit TLS on `accept`, plaintext (+ PROXY header) to `connect`."""

    accept: str
    connect: str  # a client endpoint string (a listener name is resolved to its proxied one)
    certificates: tuple[FrontCertificate, ...]  # the first is the default (no SNI, no match)
    name: str = ""
    backend: str = ""  # the gateway listener behind this front; "" for any other server
    proxy: str = "v2"
    protocol: str = ""  # what the backend speaks, for the "service not available" greeting
    client_ca: Path | None = None
    client_verify: str = "none"
    min_version: str = "1.2"
    ciphers: str = DEFAULT_FRONT_CIPHERS
    handshake_timeout: float = 30.0
    idle_timeout: float = 3600.0
    connect_timeout: float = 10.0
    close_timeout: float = 30.0
    max_connections: int = 1000
    max_connections_per_client: int = 50
    max_handshakes_per_second: float = 10.0
    buffer_size: int = 65536
    reload_interval: float = 5.0
    hostname: str = ""


def _default_proxied_sources() -> tuple:
    return (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class ProxiedSettings:
    """[proxied]: gateway listeners that require a PROXY header (only a front reaches them)."""

    listen: dict[str, str] = field(default_factory=dict)
    trusted_sources: tuple = field(default_factory=_default_proxied_sources)
    header_timeout: float = 10.0


def escape_endpoint(text: str) -> str:
    """A path or value made safe inside a Twisted endpoint string (":" and "\\" escaped)."""
    return text.replace("\\", "\\\\").replace(":", "\\:")


def split_endpoint(text: str) -> list[str]:
    parts, current, escaped = [], "", False
    for c in text:
        if escaped:
            current, escaped = current + c, False
        elif c == "\\":
            escaped = True
        elif c == ":":
            parts.append(current)
            current = ""
        else:
            current += c
    return parts + [current]


def client_endpoint_for(server: str) -> str | None:
    """The client endpoint string that reaches a tcp:/tcp6:/unix: server endpoint string."""
    kind, *args = split_endpoint(server)
    positional = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    if kind == "unix":
        path = named.get("address") or (positional[0] if positional else "")
        return f"unix:{escape_endpoint(path)}" if path else None
    if kind in ("tcp", "tcp6"):
        port = named.get("port") or (positional[0] if positional else "")
        host = named.get("interface") or ("::1" if kind == "tcp6" else "127.0.0.1")
        if host in ("0.0.0.0", "::", ""):
            host = "::1" if ":" in host else "127.0.0.1"
        return f"tcp:host={escape_endpoint(host)}:port={port}" if port.isdigit() else None
    return None


def _front_entry(r: Any, i: int, entry: Any, default_cert: Path | None,
                 default_key: Path | None, with_listeners: bool) -> FrontSettings | None:
    s = f"tlsfront[{i}]"
    if not isinstance(entry, dict):
        r.fault(s, "", "must be a table ([[tlsfront]])")
        return None
    sub = type(r)(r.source, {s: entry})  # config._Reader, for this entry alone
    accept = sub.get(s, "accept", str, "")
    if not accept.startswith(("tcp:", "tcp6:", "unix:", "systemd:")):
        sub.fault(s, "accept", f"{accept!r} is not a plain Twisted server endpoint "
                  "(tcp:PORT:interface=ADDRESS): the front does TLS itself")
    connect = sub.get(s, "connect", str, "")
    backend = connect if connect in PROXIED_LISTENERS else ""
    if backend and not with_listeners:
        sub.fault(s, "connect", f"{connect!r} names a gateway listener, but this file has no "
                  "gateway; give an endpoint string (tcp:HOST:PORT, unix:PATH)")
    elif not backend and not connect.startswith(("tcp:", "tcp6:", "unix:")):
        sub.fault(s, "connect", f"must be {', '.join(PROXIED_LISTENERS)} or a client endpoint "
                  f"string (tcp:HOST:PORT, unix:PATH), not {connect!r}")
    proxy = sub.get(s, "proxy", str, "v2")
    if proxy not in PROXY_VERSIONS:
        sub.fault(s, "proxy", f"must be one of {', '.join(PROXY_VERSIONS)}, not {proxy!r}")
    elif backend and proxy != "v2":
        # The gateway's proxied listeners require a header, and only v2 says "TLS".
        sub.fault(s, "proxy", f"must be \"v2\" in front of the gateway's {backend} listener")
    inferred = {"smtp": "smtp", "submission": "smtp"}.get(backend, backend)
    protocol = sub.get(s, "protocol", str, inferred)
    if protocol not in FRONT_PROTOCOLS:
        sub.fault(s, "protocol", f"must be smtp, pop3, imap or \"\", not {protocol!r}")
    certs = []
    for j, item in enumerate(sub.get(s, "certificates", list, [])):
        key = f"certificates[{j}]"
        if not isinstance(item, dict) or set(item) != {"certificate", "private_key"} or not all(
                isinstance(v, str) and v for v in item.values()):
            sub.fault(s, key, "must be {certificate = \"PEM\", private_key = \"PEM\"}")
            continue
        for k in ("certificate", "private_key"):
            if not Path(item[k]).is_file():
                sub.fault(s, f"{key}.{k}", f"no such file: {item[k]}")
        certs.append(FrontCertificate(Path(item["certificate"]), Path(item["private_key"])))
    if not certs and default_cert is not None and default_key is not None:
        certs.append(FrontCertificate(default_cert, default_key))
    elif not certs:
        sub.fault(s, "certificates", "at least one certificate is needed")
    client_ca = sub.get(s, "client_ca", str, "")
    verify = sub.get(s, "client_verify", str, "none")
    if verify not in CLIENT_VERIFY:
        sub.fault(s, "client_verify", f"must be one of {', '.join(CLIENT_VERIFY)}, not {verify!r}")
    elif verify != "none" and not client_ca:
        sub.fault(s, "client_ca", f"a CA file is needed with client_verify = {verify!r}")
    if client_ca and not Path(client_ca).is_file():
        sub.fault(s, "client_ca", f"no such file: {client_ca}")
    version = sub.get(s, "min_version", str, "1.2")
    if version not in TLS_VERSIONS:
        sub.fault(s, "min_version", f"must be \"1.2\" or \"1.3\" (RFC 8996), not {version!r}")
    reload_interval = sub.get(s, "reload_interval", float, 5.0)
    if reload_interval < 0:
        sub.fault(s, "reload_interval", f"must be 0 (SIGHUP only) or more, not {reload_interval}")
    front = FrontSettings(
        accept=accept, connect=connect, certificates=tuple(certs),
        name=sub.get(s, "name", str, "") or backend or accept, backend=backend, proxy=proxy,
        protocol=protocol, client_ca=Path(client_ca) if client_ca else None,
        client_verify=verify, min_version=version,
        ciphers=sub.get(s, "ciphers", str, DEFAULT_FRONT_CIPHERS),
        handshake_timeout=sub.positive(s, "handshake_timeout", float, 30.0),
        idle_timeout=sub.positive(s, "idle_timeout", float, 3600.0),
        connect_timeout=sub.positive(s, "connect_timeout", float, 10.0),
        close_timeout=sub.positive(s, "close_timeout", float, 30.0),
        max_connections=sub.positive(s, "max_connections", int, 1000),
        max_connections_per_client=sub.positive(s, "max_connections_per_client", int, 50),
        max_handshakes_per_second=sub.positive(s, "max_handshakes_per_second", float, 10.0),
        buffer_size=sub.positive(s, "buffer_size", int, 65536),
        reload_interval=reload_interval,
        hostname=sub.get(s, "hostname", str, ""))
    sub.unknown_keys()
    r.problems += sub.problems
    return None if sub.problems else front


def _proxied_settings(r: Any, listen: dict[str, str]) -> ProxiedSettings:
    s = "proxied"
    endpoints = {}
    for name in PROXIED_LISTENERS:
        value = r.get(s, name, str, "")
        if not value:
            continue
        if not value.startswith(("tcp:", "tcp6:", "unix:")):
            r.fault(s, name, f"{value!r} is not a tcp: or unix: Twisted endpoint string")
        elif value in listen.values():
            r.fault(s, name, "must not be a [listen] endpoint: public ports never accept PROXY")
        else:
            endpoints[name] = value
    sources = []
    for net in r.get(s, "trusted_sources", list, ["127.0.0.1/32", "::1/128"]):
        try:
            sources.append(ipaddress.ip_network(str(net), strict=False))
        except ValueError:
            r.fault(s, "trusted_sources", f"{net!r} is not a network in CIDR form")
    return ProxiedSettings(listen=endpoints, trusted_sources=tuple(sources),
                           header_timeout=r.positive(s, "header_timeout", float, 10.0))


def fronts(r: Any, state_dir: Path | None, cert: Path | None, key: Path | None,
            listen: dict[str, str], hostname: str = "",
            ) -> tuple[tuple[FrontSettings, ...], ProxiedSettings]:
    """The [[tlsfront]] entries and [proxied]; a front naming a listener gets a proxied one,
    by default a unix socket <state_dir>/run/NAME.sock that only our user may open."""
    r.known.setdefault("tlsfront", set())
    entries = r.data.get("tlsfront", [])
    if not isinstance(entries, list):
        r.fault("tlsfront", "", "must be an array of tables ([[tlsfront]])")
        entries = []
    with_listeners = state_dir is not None
    proxied = _proxied_settings(r, listen) if with_listeners else ProxiedSettings()
    fronts = []
    for i, entry in enumerate(entries):
        front = _front_entry(r, i, entry, cert, key, with_listeners)
        if front is None:
            continue
        if front.backend:
            server = proxied.listen.get(front.backend)
            if server is None:
                path = str(state_dir / "run" / f"{front.backend}.sock")
                if len(os.fsencode(path)) > _UNIX_PATH_MAX:
                    r.fault(f"tlsfront[{i}]", "connect", f"socket path {path} is too long for "
                            "a unix socket: use a shorter server.state_dir or [proxied]")
                server = f"unix:{escape_endpoint(path)}:mode=600:lockfile=1"
                proxied.listen[front.backend] = server
            client = client_endpoint_for(server)
            if client is None:
                r.fault("proxied", front.backend, f"the front cannot reach {server!r}")
                continue
            front = replace(front, connect=client)
        fronts.append(replace(front, hostname=front.hostname or hostname))
    names = [f.name for f in fronts]
    for name in {n for n in names if names.count(n) > 1}:
        r.fault("tlsfront", "name", f"{name!r} names two fronts")
    return tuple(fronts), proxied
