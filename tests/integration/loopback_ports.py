"""Free loopback ports for the servers the integration tests and the benches start.

Below the kernel's ephemeral range, and never one handed out before in this
process. A port the kernel gives a bind to port 0 comes from the ephemeral
range, which also serves outgoing connections: a client's connect (a
test's, smtp-source's) could take it between the choice and the server's
bind (a bench round was lost to "listen.imap: 127.0.0.1:38209 is in use");
and the kernel may give the same port to two binds in a row once the first
is closed (a gateway found its IMAP port taken by its own POP3 listener).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10000
_handed_out: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port on host nobody listens on now, below the ephemeral range, not given before."""
    top = max(_ephemeral_start(), LOWEST + 1000)
    for _ in range(1000):
        port = random.randrange(LOWEST, top)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue  # in use, or lingering: another
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port on {host} between {LOWEST} and {top}")
