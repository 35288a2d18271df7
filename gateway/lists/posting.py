"""A post to a list: may it go out (decide), and the headers each copy gets (decorate).

Pure functions, called by the exploder when mail for dev@ comes out of the
queue (or by accept/ at DATA time, for an early refusal): decide() follows
the list's policy the way Mailman's posting chain does (loop, auto-submitted,
size, then moderation); decorate() turns the poster's message into the
list's copy: RFC 2369 and RFC 2919 headers, Precedence, X-Loop, subject
prefix, Reply-To policy, and Mailman 3's DMARC mitigation.

decorate() edits the header section as bytes, field by field: fields it does
not touch, and the whole body, stay byte for byte what the poster sent
(8-bit bodies, DKIM-signed bodies, odd line ends). The email package parses
the few values it reads (From, Reply-To, Cc, Subject; RFC 2047 encoded words)
and writes the ones it makes (policy SMTP: CRLF, encoded words for
non-ASCII); the List-* fields are ASCII made here and written as they are.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.message import Message
from email.utils import formataddr
from urllib.parse import quote

from gateway.errors import MailError
from gateway.lists.addresses import role_address
from gateway.lists.store import MailingList, member_key

_POLICY = policy.SMTP


@dataclass(frozen=True)
class Decision:
    action: str                 # "accept" | "hold" | "reject"
    reason: str = ""            # why held or refused, for the moderators and the logs
    error: MailError | None = None  # the SMTP refusal when action is "reject"


ACCEPT = Decision("accept")


def list_id(mlist: MailingList) -> str:
    """RFC 2919 list identifier: dev@example.test -> dev.example.test."""
    return f"{mlist.name}.{mlist.domain}"


def is_auto_submitted(headers: Message) -> bool:
    """RFC 3834 2: Auto-Submitted other than "no"; or Precedence bulk, junk or list
    (the older convention vacation programs and lists still use)."""
    for value in headers.get_all("Auto-Submitted", []):
        if str(value).split(";")[0].strip().lower() not in ("", "no"):
            return True
    return any(str(v).strip().lower() in ("bulk", "junk", "list")
               for v in headers.get_all("Precedence", []))


def is_loop(mlist: MailingList, headers: Message) -> bool:
    """This list's own List-Id or X-Loop on an incoming post: it came back to us."""
    own = f"<{list_id(mlist)}>"
    if any(own in str(v).lower() for v in headers.get_all("List-Id", [])):
        return True
    return any(str(v).strip().strip("<>").lower() == mlist.address
               for v in headers.get_all("X-Loop", []))


def decide(mlist: MailingList, sender: str, is_member: bool, headers: Message, size: int
           ) -> Decision:
    """Accept, hold (with the reason) or reject (with the SMTP error) one post.

    sender is the poster (the envelope sender, or From as the caller prefers);
    owners and moderators count as members and may post to any list.
    """
    if is_loop(mlist, headers):
        return _reject(550, "5.4.6", f"Mail loop: this message has been on <{mlist.address}> "
                       "already")
    if not sender or is_auto_submitted(headers):
        return _reject(550, "5.7.1", f"<{mlist.address}> does not accept automatically "
                       "submitted mail (RFC 3834)")
    refusal = too_big(mlist, size)
    if refusal is not None:
        return refusal
    privileged = mlist.is_moderator(sender)
    if mlist.policy == "announce" and not privileged:
        return _reject(550, "5.7.1", f"<{mlist.address}> is an announcement list: only its "
                       "owners and moderators may post")
    if mlist.policy == "moderated" and not privileged:
        return Decision("hold", "the list is moderated")
    if mlist.policy == "members" and not (is_member or privileged):
        return Decision("hold", f"{sender} is not a member")
    return ACCEPT


def too_big(mlist: MailingList, size: int) -> Decision | None:
    """The refusal of a message over the list's max_size (None: it fits)."""
    if mlist.max_size and size > mlist.max_size:
        return _reject(552, "5.3.4", f"Message too big for <{mlist.address}> (largest: "
                       f"{mlist.max_size} bytes)")
    return None


def _reject(code: int, enhanced: str, text: str) -> Decision:
    return Decision("reject", text, MailError(code, enhanced, text))


# --- RFC 8058 one-click unsubscription -----------------------------------------

def one_click_signature(mlist: MailingList, member: str) -> str:
    """HMAC of (list, member) under the list's secret: the link needs no stored state."""
    data = f"{mlist.address}\n{member_key(member)}".encode()
    return hmac.new(mlist.secret.encode(), data, hashlib.sha256).hexdigest()[:32]


def check_one_click(mlist: MailingList, member: str, signature: str) -> bool:
    return hmac.compare_digest(one_click_signature(mlist, member), signature.lower())


def one_click_url(mlist: MailingList, member: str) -> str:
    base = mlist.web_base_url.rstrip("/")
    return (f"{base}/lists/{quote(mlist.address, safe='@')}/unsubscribe?member="
            f"{quote(member, safe='')}&sig={one_click_signature(mlist, member)}")


# --- decorate -------------------------------------------------------------------

# Removed from each copy: list headers of the poster or of an upstream list
# (ours replace them), read receipts to the poster from every member (as Mailman).
_REMOVE = frozenset({
    "list-id", "list-post", "list-help", "list-subscribe", "list-unsubscribe",
    "list-unsubscribe-post", "list-archive", "list-owner", "precedence",
    "return-receipt-to", "disposition-notification-to", "x-confirm-reading-to",
})

_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")


def decorate(message: bytes, mlist: MailingList, poster_dmarc_strict: bool,
             member: str | None = None) -> bytes:
    """The list's copy of a post. member (optional): the one recipient of this copy,
    for a personal RFC 8058 one-click unsubscribe link (needs web_base_url)."""
    head, body = _split(message)
    eol = b"\r\n" if (head or body).find(b"\r\n") >= 0 or not (head or body) else b"\n"
    fields = _fields(head)
    if fields and not fields[-1][1].endswith(b"\n"):  # headers only, no final line end
        fields[-1] = (fields[-1][0], fields[-1][1] + eol)
    values = {name: _value(raw) for name, raw in reversed(fields)}  # the first of each
    edits: dict[str, bytes | None] = {}

    subject = _subject(values.get("subject"), mlist.subject_prefix, eol)
    if subject is not None:
        edits["subject"] = subject

    poster = _addresses("From", values.get("from"))
    reply_to = _addresses("Reply-To", values.get("reply-to"))
    munge = mlist.dmarc == "always" or (mlist.dmarc == "munge_from" and poster_dmarc_strict)
    if munge and poster:
        first = poster[0]
        name = first.display_name or first.addr_spec
        edits["from"] = _fold("From", str(Address(display_name=f"{name} via {mlist.name}",
                                                  addr_spec=mlist.address)), eol)
        if mlist.reply_to == "list":
            # Replies go to the list; the poster stays reachable in Cc (Mailman 3).
            edits["reply-to"] = _fold("Reply-To", mlist.address, eol)
            cc = _addresses("Cc", values.get("cc")) + poster
            edits["cc"] = _fold("Cc", ", ".join(str(a) for a in cc), eol)
        else:
            edits["reply-to"] = _fold("Reply-To", ", ".join(str(a) for a in reply_to or poster),
                                      eol)
    elif mlist.reply_to == "list":
        edits["reply-to"] = _fold("Reply-To", mlist.address, eol)
    elif mlist.reply_to == "poster" and not reply_to and poster:
        edits["reply-to"] = _fold("Reply-To", ", ".join(str(a) for a in poster), eol)

    out: list[bytes] = []
    for name, raw in fields:
        if name in _REMOVE:
            continue
        if name in edits:
            replacement = edits.pop(name)
            if replacement is not None:
                out.append(replacement)
            edits[name] = None  # later duplicates of an edited field go
            continue
        out.append(raw)
    out.extend(v for v in edits.values() if v is not None)
    out.extend(f"{n}: {v}".encode("ascii") + eol for n, v in _list_headers(mlist, member))
    return b"".join(out) + body


def _list_headers(mlist: MailingList, member: str | None) -> list[tuple[str, str]]:
    """RFC 2919 List-Id, RFC 2369 List-*, RFC 8058 List-Unsubscribe-Post."""
    description = mlist.description[:200]
    headers = [("List-Id", formataddr((description, list_id(mlist))) if description
                else f"<{list_id(mlist)}>")]
    request = role_address(mlist.address, "request")
    headers.append(("List-Help", f"<mailto:{request}?subject=help>"))
    headers.append(("List-Post", "NO (posting is reserved to the owners)"
                    if mlist.policy == "announce" else f"<mailto:{mlist.address}>"))
    headers.append(("List-Subscribe", f"<mailto:{role_address(mlist.address, 'join')}>"))
    leave = f"<mailto:{role_address(mlist.address, 'leave')}>"
    base = mlist.web_base_url.rstrip("/")
    if base and member:
        # RFC 8058 3.1: List-Unsubscribe-Post only beside an https URI that takes the
        # one-click POST (gateway/lists/web.py serves it); exactly then.
        headers.append(("List-Unsubscribe", f"<{one_click_url(mlist, member)}>, {leave}"))
        headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    else:
        # No member (the archive's copy): no personal link, so mail only.
        headers.append(("List-Unsubscribe", leave))
    if mlist.archive:
        # RFC 5092: the IMAP name, "." the delimiter (access/imap/shared.py). Not a web
        # page even with web_base_url: the web endpoint serves one-click only.
        where = f"imap://{mlist.domain}/Lists.{quote(mlist.name)}"
        headers.append(("List-Archive", f"<{where}>"))
    headers.append(("List-Owner", f"<mailto:{role_address(mlist.address, 'owner')}>"))
    headers.append(("Precedence", "list"))
    headers.append(("X-Loop", mlist.address))
    return headers


def _split(message: bytes) -> tuple[bytes, bytes]:
    """(header section, the rest from the empty line on)."""
    if message.startswith((b"\r\n", b"\n")):
        return b"", message
    ends = [i for i in (message.find(b"\r\n\r\n"), message.find(b"\n\n")) if i >= 0]
    if not ends:
        return message, b""
    end = min(ends)
    cut = end + (2 if message.startswith(b"\r\n", end) else 1)
    return message[:cut], message[cut:]


def _fields(head: bytes) -> list[tuple[str, bytes]]:
    """The header fields as (lower-case name, raw bytes with folds and line end)."""
    fields: list[tuple[str, bytes]] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line)
            continue
        m = _FIELD_NAME.match(line)
        fields.append((m.group(1).decode("ascii").lower() if m else "", line))
    return fields


def _value(raw: bytes) -> bytes:
    """A field's unfolded value (RFC 5322 2.2.3)."""
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    return re.sub(rb"\r?\n(?=[ \t])", b"", value).strip()


def _fold(name: str, value: str, eol: bytes) -> bytes:
    folded = _POLICY.header_factory(name, value).fold(policy=_POLICY)
    return folded.encode("ascii").replace(b"\r\n", eol)


def _addresses(name: str, raw: bytes | None) -> tuple[Address, ...]:
    if not raw:
        return ()
    try:
        header = _POLICY.header_factory(name, raw.decode("utf-8", "replace"))
        return tuple(a for a in header.addresses if a.addr_spec and "@" in a.addr_spec)
    except Exception:  # an unparseable address field: treated as absent
        return ()


def _subject(raw: bytes | None, prefix: str, eol: bytes) -> bytes | None:
    """The Subject field with the list's prefix; None to keep the poster's as it is
    (no prefix set, or already there: a reply's "Re: [dev] ...")."""
    if not prefix.strip():
        return None
    raw = raw or b""
    if not raw.isascii():
        # RFC 6532 UTF-8 header (SMTPUTF8 mail): prefix it in the same form.
        if prefix.strip().lower() in raw.decode("utf-8", "replace").lower():
            return None
        return b"Subject: " + prefix.encode("utf-8") + raw + eol
    text = str(_POLICY.header_factory("Subject", raw.decode("ascii")))
    if prefix.strip().lower() in text.lower():
        return None
    return _fold("Subject", prefix + (text or "(no subject)"), eol)
