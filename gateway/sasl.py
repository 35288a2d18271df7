"""SASL pieces every login path shares: base64 responses and the PLAIN mechanism.

Used by accept/smtp.py (RFC 4954), access/pop3.py (RFC 5034) and IMAP
AUTHENTICATE (RFC 3501), so the three servers parse credentials one way.
"""

from __future__ import annotations

import base64
import binascii


class SASLError(ValueError):
    """A response that is not valid base64 or not a valid PLAIN message."""


def decode_response(line: bytes) -> bytes:
    """A client's base64 response; "=" is the empty response (RFC 4954 4)."""
    if line == b"=":
        return b""
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise SASLError("invalid base64 data") from None


def parse_plain(message: bytes) -> tuple[bytes, bytes]:
    """(user, password) of an RFC 4616 PLAIN message: [authzid] NUL authcid NUL passwd.

    Acting as another user (an authzid other than the authcid) is not offered,
    so it is refused like a wrong password would be: with an empty user.
    """
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise SASLError("malformed PLAIN response")
    authzid, user, password = parts
    if authzid and authzid != user:
        return b"", password
    return user, password
