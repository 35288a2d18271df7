"""Bounce processing: mail to dev-bounces@ (or its VERP form) raises the score of
the member whose copy failed; a member over the list's threshold is disabled
and the owners are told.

Called by the list delivery target for a message to a "bounces" list address
(addresses.classify gives the VERP member). Blocking: the store fsyncs.

Reading a bounce is flufl.bounce's job: the library Mailman uses, with
detectors for RFC 3464 DSNs first and then for the formats MTAs and
providers send without them (qmail's QSBMF, Exim's X-Failed-Recipients,
Postfix, Exchange, GroupWise, Yahoo, AOL and others). It answers
(temporary, permanent) failed recipients.

What counts (as Mailman 3):
  - only permanent failures; a "delayed" DSN or a temporary failure is not
    a bounce (the sending MTA is still trying);
  - with VERP the address decides whose copy failed: a permanent failure of
    whatever recipient the report names (a forward of the member fails under
    another name) counts for the member; so does a bounce nobody can parse,
    if it looks like one (from MAILER-DAEMON, a report, a failure subject),
    but not an out-of-office reply;
  - without VERP, each permanently failed address that is a member counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from email.utils import parseaddr

from flufl.bounce import all_failures
from twisted.logger import Logger

from gateway.lists.notices import Outgoing, notice
from gateway.lists.posting import is_auto_submitted
from gateway.lists.store import ListStore, MailingList, member_key

log = Logger()

_BOUNCE_SENDER = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mailer)\b", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery (status|fail|problem)|returned mail|failure notice|"
    r"mail delivery (failed|system)|could not be delivered|non.?delivery", re.I)


@dataclass(frozen=True)
class Failures:
    permanent: frozenset[str]
    temporary: frozenset[str]


def parse(message: bytes) -> Failures:
    """The recipients a bounce reports as failed, each with its domain lower-cased."""
    msg = message_from_bytes(message)  # compat32: what flufl.bounce's detectors expect
    temporary, permanent = all_failures(msg)
    return Failures(frozenset(_addresses(permanent)), frozenset(_addresses(temporary)))


def _addresses(found: frozenset[bytes]) -> list[str]:
    out = []
    for raw in found:
        text = raw.decode("ascii", "replace").strip().strip("<>")
        local, at, domain = text.rpartition("@")
        if at and local:
            out.append(f"{local}@{domain.lower()}")
    return out


def looks_like_bounce(msg: Message) -> bool:
    """A failure report we cannot read, rather than a person's or a vacation reply."""
    if msg.get_content_type() == "multipart/report":
        return True
    sender = parseaddr(str(msg.get("From", "")))[1]
    if _BOUNCE_SENDER.match(sender):
        return True
    subject = str(msg.get("Subject", ""))
    return bool(_BOUNCE_SUBJECT.search(subject)) and not _is_vacation(msg)


def _is_vacation(msg: Message) -> bool:
    subject = str(msg.get("Subject", "")).lower()
    return is_auto_submitted(msg) and any(
        w in subject for w in ("out of office", "vacation", "auto", "abwesen", "absence"))


def process(store: ListStore, mlist: MailingList, member_from_verp: str | None,
            message: bytes, now: float) -> list[Outgoing]:
    """Score the members this bounce is about; notices for the owners of any disabled."""
    failures = parse(message)
    if member_from_verp:
        if failures.permanent:
            bounced = [member_from_verp]
        elif failures.temporary:
            bounced = []
        else:
            bounced = [member_from_verp] if looks_like_bounce(message_from_bytes(message)) \
                else []
    else:
        bounced = sorted(failures.permanent)
    notices = []
    for member in bounced:
        if not store.is_member(mlist.address, member):
            continue
        disabled = store.record_bounce(mlist.address, member, now)
        log.info("list {list}: bounce from {member}{disabled}", list=mlist.address,
                 member=member, disabled=" (disabled)" if disabled else "")
        if disabled:
            notices.append(_disabled_notice(mlist, member, message, now))
    return notices


def _disabled_notice(mlist: MailingList, member: str, bounce: bytes, now: float) -> Outgoing:
    text = (f"{member} is no longer sent posts of {mlist.address}: its bounce score "
            f"reached {mlist.bounce_threshold:g}.\n\n"
            "The last bounce is attached. The member is enabled again by subscribing\n"
            f"again, or on the gateway with: mailgateway list enable {mlist.address} "
            f"{member}\n")
    return notice(mlist, mlist.owners, f"{mlist.name}: {member_key(member)} disabled "
                  "after bounces", text, now=now, from_role="owner", attach=bounce)
