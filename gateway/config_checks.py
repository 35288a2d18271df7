"""Checks of configuration values that need more than their type: config.py's helpers.

Kernel module (imports nothing else of gateway). Each returns the reason a
value is wrong, or None, so that `mailgateway check-config` and the start
report it with file and key instead of failing later (or never) with a
traceback: an endpoint whose port is not a number, a certificate that is
not one or does not match its key, a state_dir that cannot be made.
"""

from __future__ import annotations


def endpoint_fault(value: str) -> str | None:
    """Why a tcp:/tcp6: server endpoint string cannot listen, or None."""
    if not value.startswith(("tcp:", "tcp6:")):
        return None
    port = value.split(":", 2)[1]
    if port.startswith("port="):
        port = port[5:]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"{value!r}: the port must be a number from 0 to 65535, not {port!r}"
    return None
