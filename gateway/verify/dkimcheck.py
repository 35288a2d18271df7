"""DKIM verification (RFC 6376; ed25519-sha256 RFC 8463 and rsa-sha256) of every signature.

dkimpy verifies, the library gateway/sign/ signs with, its key lookups through our
DnsQuery (dkimpy's dnsfunc hook). Each DKIM-Signature gets its own result:
pass, fail (bad signature, changed body, expired x=, unusable key), neutral (a
signature dkimpy cannot parse), temperror (the key lookup failed for now),
permerror (no key). A signature whose l= covers less than the body is only
"policy" (RFC 6376 8.2, RFC 8601 2.7.1): text appended after the signed part
would otherwise pass as the signer's, so it never counts for DMARC.
Blocking; runs in checker.py's pool.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dkim
import dkim.util

from gateway.verify.dnsquery import DnsQuery, TempDNSError

# dkimpy logs each failure at ERROR through its own logger; the result says it all.
_quiet = logging.getLogger("mailgateway.dkimverify")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


@dataclass(frozen=True)
class DkimResult:
    result: str  # pass fail neutral policy temperror permerror
    domain: str  # d=
    selector: str  # s=
    algorithm: str  # a=
    b: str  # the first characters of b=, to tell signatures apart (RFC 6008)
    reason: str = ""


class _KeyMissing(Exception):
    pass


def verify_all(message: bytes, query: DnsQuery, minkey: int = 1024) -> list[DkimResult]:
    """One result per DKIM-Signature of message, topmost first (blocking)."""
    try:
        d = dkim.DKIM(message, logger=_quiet, minkey=minkey)
    except dkim.DKIMException as e:
        return [DkimResult("permerror", "", "", "", "", f"unreadable message: {e}")]
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    return [_verify_one(d, i, query) for i in range(count)]


def unverified(signature: bytes, reason: str) -> DkimResult:
    """neutral for the DKIM-Signature field value signature, not verified (a message
    over [inbound_auth] max_verify_size); its d=, s=, a= and b= named when readable."""
    try:
        fields = dkim.util.parse_tag_value(b"".join(signature.split()))
    except Exception:  # noqa: BLE001 - an unreadable signature is named by reason only
        fields = {}
    return _result("neutral", fields, reason)


def _verify_one(d: dkim.DKIM, idx: int, query: DnsQuery) -> DkimResult:
    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        records = query.txt(text.rstrip("."))  # TempDNSError goes through dkimpy
        if not records:
            raise _KeyMissing(text)
        return records[0]

    d.signature_fields = {}  # not the previous signature's, if this one is unreadable
    try:
        sig, include, headers = d.verify_headerprep(idx)
        ok = d.verify_sig(sig, include, headers[idx], dnsfunc)
    except Exception as e:  # noqa: BLE001 - a hostile signature must never cost the message
        return _failed(e, d.signature_fields)
    fields = d.signature_fields
    if not ok:
        return _result("fail", fields, "signature did not verify")
    length = fields.get(b"l")
    if length is not None and int(length) < _canonical_body_length(d, fields):
        return _result("policy", fields, f"l={int(length)} signs only part of the body")
    return _result("pass", fields)


def _failed(e: Exception, fields: dict) -> DkimResult:
    if isinstance(e, TempDNSError):
        return _result("temperror", fields, f"key lookup: {e}")
    if isinstance(e, _KeyMissing):
        return _result("permerror", fields, f"no key at {e}")
    if isinstance(e, dkim.DKIMException) and fields:
        return _result("fail", fields, str(e))  # invalid tags, expired, bad key, ...
    return _result("neutral", fields, f"{type(e).__name__}: {e}")


def _canonical_body_length(d: dkim.DKIM, fields: dict) -> int:
    policy = dkim.CanonicalizationPolicy.from_c_value(fields.get(b"c", b"simple/simple"))
    return len(policy.canonicalize_body(d.body))


def _text(fields: dict, tag: bytes) -> str:
    return fields.get(tag, b"").decode("ascii", "replace")


def _result(result: str, fields: dict, reason: str = "") -> DkimResult:
    b = "".join(_text(fields, b"b").split())[:8]
    return DkimResult(result, _text(fields, b"d").lower(), _text(fields, b"s"),
                      _text(fields, b"a"), b, reason)
