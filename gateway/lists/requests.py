"""Commands by mail: what the gateway does with mail to dev-request@, dev-join@
and dev-leave@, and the notice that asks moderators about a held post.

Called by the list delivery target for each message to those addresses
(blocking: the store fsyncs). The replies it returns are queued as new
messages; approved posts go through the outbox (outbox.py), the one path by
which held posts reach the members, and are listed in `release` as well.

Commands (Mailman's, one a line) are read from the Subject, then from the
body's first text/plain part: blank lines, quoted lines ("> ...") and
everything after a signature separator ("-- ") are skipped, reading stops at
"end" or after a few lines that are not commands (the rest of a letter).

  subscribe [address]     mails a token to the address (double opt-in)
  unsubscribe [address]   mails a token to the address, if it is a member
  confirm TOKEN           completes either; found anywhere in the Subject, so
                          a plain Reply ("Re: confirm TOKEN") is enough
  who                     the members, if who_allowed lets the asker see them
  help                    this list of commands
  approve|reject TOKEN    a held post, by a moderator; a moderator's plain
                          Reply to the hold notice approves, and a reply whose
                          first line is "reject" rejects

Nothing is ever answered to the null sender or to automatically submitted
mail (RFC 3834 2): an out-of-office reply to a confirmation mail carries the
token in its Subject, but it must not confirm anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

from twisted.logger import Logger

from gateway.lists import outbox
from gateway.lists.addresses import role_address
from gateway.lists.notices import Outgoing, moderators_of, notice
from gateway.lists.posting import is_auto_submitted, is_loop
from gateway.lists.store import DAY, ListStore, MailingList, normalize

__all__ = ["Outgoing", "RequestResult", "handle", "join", "leave", "unsubscribe", "hold_notice",
           "held_ack", "TOKEN_TTL"]

log = Logger()

# How long a confirmation token lives (Mailman's pending_request_life).
TOKEN_TTL = 3 * DAY
# Lines read for commands, and non-commands tolerated before the rest is a letter.
MAX_LINES = 25
MAX_UNKNOWN = 3

HELP = """\
  Commands, one a line, in the Subject or the body of a message to {request}:
    subscribe [address]     join the list (a confirmation is mailed to the address)
    unsubscribe [address]   leave the list (likewise)
    confirm TOKEN           complete either; replying to the confirmation is enough
    who                     the members, if this list shows them to you
    help                    this text
  Mail to {join} subscribes you; mail to {leave} unsubscribes you."""

_TOKEN = re.compile(r"\bconfirm\s+([0-9a-fA-F]{32})\b", re.IGNORECASE)
_COMMANDS = ("subscribe", "unsubscribe", "confirm", "who", "help", "approve", "reject",
             "join", "leave", "end", "stop")


@dataclass
class RequestResult:
    replies: list[Outgoing] = field(default_factory=list)
    # Approved held posts (sender, message); already in the outbox, which the
    # gateway explodes (outbox.py): listed here for logs and callers' checks.
    release: list[tuple[str, bytes]] = field(default_factory=list)


def handle(store: ListStore, mlist: MailingList, sender: str, message: bytes, now: float,
           ttl: float = TOKEN_TTL) -> RequestResult:
    """Carry out the commands of one message to dev-request@."""
    msg = _parse(message)
    if not _answerable(mlist, sender, msg):
        return RequestResult()
    session = _Session(store, mlist, sender, msg, now, ttl)
    session.run(_command_lines(msg))
    return session.finish()


def join(store: ListStore, mlist: MailingList, sender: str, message: bytes, now: float,
         ttl: float = TOKEN_TTL) -> RequestResult:
    """Mail to dev-join@: subscribe whoever sent it (after confirmation)."""
    return _one(store, mlist, sender, message, now, ttl, ["subscribe"])


def leave(store: ListStore, mlist: MailingList, sender: str, message: bytes, now: float,
          ttl: float = TOKEN_TTL) -> RequestResult:
    """Mail to dev-leave@: unsubscribe whoever sent it (after confirmation)."""
    return _one(store, mlist, sender, message, now, ttl, ["unsubscribe"])


def _one(store, mlist, sender, message, now, ttl, command) -> RequestResult:
    msg = _parse(message)
    if not _answerable(mlist, sender, msg):
        return RequestResult()
    session = _Session(store, mlist, sender, msg, now, ttl)
    session.run([command])
    return session.finish()


def unsubscribe(store: ListStore, list_address: str, member: str, how: str) -> bool:
    """Take member off the list now, and log it: the one way out, for a confirmed
    request by mail and for an RFC 8058 one-click POST (web.py). True if a member."""
    left = store.remove_members(list_address, [member]) > 0
    log.info("list {list}: {member} unsubscribed ({how}){note}", list=list_address,
             member=member, how=how, note="" if left else ": was not a member")
    return left


def hold_notice(mlist: MailingList, held_id: str, sender: str, message: bytes, reason: str,
                now: float) -> Outgoing:
    """Tell the moderators (or the owners) a post waits; a plain Reply approves it."""
    text = (f"A post from {sender} to {mlist.address} is held for approval:\n"
            f"    {reason}\n\n"
            "To approve it, reply to this message (keep the Subject).\n"
            "To reject it, reply with the single word \"reject\" on the first line.\n"
            f"Or on the gateway: mailgateway list approve|reject {held_id}\n\n"
            "The post is attached.\n")
    return notice(mlist, moderators_of(mlist),
                  f"{mlist.name}: post from {sender} held (confirm {held_id})", text,
                  now=now, attach=message)


def held_ack(mlist: MailingList, sender: str, reason: str, now: float) -> Outgoing | None:
    """Tell the poster the post waits for a moderator (None for the null sender)."""
    if not sender:
        return None
    return notice(mlist, (sender,), f"Your post to {mlist.address} awaits a moderator",
                  f"Your post to {mlist.address} is held for a moderator's approval:\n"
                  f"    {reason}\n\nYou will hear if it is rejected.\n", now=now,
                  from_role="owner")


def _answerable(mlist: MailingList, sender: str, msg: EmailMessage | None) -> bool:
    """Not the null sender, not automatic mail (RFC 3834), not our own notice back."""
    return bool(msg is not None and sender and not is_auto_submitted(msg)
                and not is_loop(mlist, msg))


def _parse(message: bytes) -> EmailMessage | None:
    try:
        return message_from_bytes(message, policy=policy.default)  # type: ignore[return-value]
    except Exception:  # the email package is lenient; this is for the truly broken
        return None


def _body_text(msg: EmailMessage) -> str:
    try:
        part = msg.get_body(preferencelist=("plain",))
        return part.get_content() if part is not None else ""
    except (LookupError, UnicodeError, AttributeError):
        return ""


def _command_lines(msg: EmailMessage) -> list[list[str]]:
    """The Subject's command (if it is one), then the body's lines worth reading."""
    lines: list[list[str]] = []
    subject = str(msg.get("Subject", "")).strip()
    token = _TOKEN.search(subject)
    if token:
        lines.append(["confirm", token.group(1)])
    else:
        words = re.sub(r"^((re|aw|sv|fwd?|tr)\s*:\s*)+", "", subject, flags=re.I).split()
        if words and words[0].lower() in _COMMANDS:
            lines.append(words)
    # Commands sit at the top: a bounded slice keeps a huge body from costing much.
    for line in _body_text(msg)[:MAX_LINES * 200].splitlines()[:MAX_LINES * 4]:
        if line.rstrip() == "--" or line.startswith("-- "):
            break
        line = line.strip()
        if not line or line.startswith(">"):
            continue
        lines.append(line.split())
        if len(lines) > MAX_LINES:
            break
    return lines


class _Session:
    """One message's commands and the answers they collect."""

    def __init__(self, store, mlist, sender, msg, now, ttl):
        self.store: ListStore = store
        self.mlist: MailingList = mlist
        self.sender: str = sender
        self.msg: EmailMessage = msg
        self.now: float = now
        self.ttl: float = ttl
        self.identity = self._identity()
        self.lines: list[str] = []
        self.result = RequestResult()
        self.done_tokens: set[str] = set()

    def _identity(self) -> str:
        """Who asks: the From address (the person), else the envelope sender."""
        try:
            addresses = self.msg["From"].addresses if self.msg["From"] else ()
            return normalize(addresses[0].addr_spec) if addresses else normalize(self.sender)
        except (ValueError, IndexError, AttributeError, TypeError):
            return self.sender

    def run(self, commands: list[list[str]]) -> None:
        # A bare "approve" or "reject" line is the verdict on the Subject's held post.
        bare = [w[0].lower() for w in commands if len(w) == 1
                and w[0].lower() in ("approve", "reject")]
        bare_verdict = bare[0] if bare else None
        unknown = 0
        for words in commands:
            verb = words[0].lower()
            if verb in ("end", "stop"):
                break
            if verb in ("approve", "reject") and len(words) == 1:
                continue
            handler = getattr(self, "do_" + verb, None) if verb in _COMMANDS else None
            if handler is None:
                unknown += 1
                if unknown >= MAX_UNKNOWN:
                    break
                continue
            self.lines.append("> " + " ".join(words))
            handler(words[1:], bare_verdict)

        if bare_verdict and not self.done_tokens:
            token = _TOKEN.search(str(self.msg.get("Subject", "")))
            if token:
                self.moderate(token.group(1), bare_verdict)

    def finish(self) -> RequestResult:
        if self.lines:
            subject = str(self.msg.get("Subject", "")).strip()
            text = ("Results of your commands to " + role_address(self.mlist.address, "request")
                    + ":\n\n" + "\n".join(self.lines) + "\n")
            self.reply((self.sender,), f"Re: {subject}" if subject else "Results", text)
        return self.result

    def reply(self, to: tuple[str, ...], subject: str, text: str) -> None:
        self.result.replies.append(notice(
            self.mlist, to, subject, text, now=self.now,
            in_reply_to=str(self.msg.get("Message-ID", "")).strip()))

    def _target(self, args: list[str]) -> str | None:
        try:
            return normalize(args[0].strip("<>")) if args else self.identity
        except ValueError:
            self.lines.append(f"  {args[0]!r} is not an address.")
            return None

    def do_help(self, args, _verdict) -> None:
        self.lines.append(HELP.format(request=role_address(self.mlist.address, "request"),
                                      join=role_address(self.mlist.address, "join"),
                                      leave=role_address(self.mlist.address, "leave")))

    def do_subscribe(self, args, _verdict) -> None:
        self._ask("subscribe", self._target(args))

    do_join = do_subscribe

    def do_unsubscribe(self, args, _verdict) -> None:
        target = self._target(args)
        if target and self.store.is_member(self.mlist.address, target):
            self._ask("unsubscribe", target)
        elif target:
            # The same answer either way: nobody learns who is a member by asking.
            self.lines.append(f"  A confirmation request has been sent to {target}.")

    do_leave = do_unsubscribe

    def _ask(self, action: str, target: str | None) -> None:
        if target is None:
            return
        token = self.store.new_token(self.mlist.address, action, target, self.now, self.ttl)
        text = (f"Someone ({self.identity}) asked to {action} {target} "
                f"{'to' if action == 'subscribe' else 'from'} the list {self.mlist.address}.\n\n"
                "To confirm, reply to this message (keep the Subject), or send\n"
                f"    confirm {token}\n"
                f"to {role_address(self.mlist.address, 'request')}.\n\n"
                f"If you did not ask for this, ignore it: it expires in "
                f"{int(self.ttl // 3600)} hours.\n")
        self.result.replies.append(notice(self.mlist, (target,), f"confirm {token}", text,
                                          now=self.now))
        self.lines.append(f"  A confirmation request has been sent to {target}.")

    def do_confirm(self, args, verdict) -> None:
        if not args or not re.fullmatch(r"[0-9a-fA-F]{32}", args[0]):
            self.lines.append("  confirm needs the token of the confirmation message.")
            return
        token = args[0].lower()
        if token in self.done_tokens:
            self.lines.pop()  # the same token twice (Subject and body): once is enough
            return
        self.done_tokens.add(token)
        found = self.store.confirm(token, self.now)
        if found is None:
            if self.store.get_held(token) is not None:
                self.moderate(token, verdict or "approve")
                return
            self.lines.append("  Unknown or expired token; nothing done.")
            return
        list_address, action, target = found
        if list_address != self.mlist.address:
            self.lines.append("  That token belongs to another list; nothing done.")
        elif action == "subscribe":
            self.store.add_members(list_address, [target])
            self.store.enable(list_address, target)  # a re-subscribe clears a bounce disable
            self.lines.append(f"  {target} is now a member of {list_address}.")
        elif action == "unsubscribe":
            unsubscribe(self.store, list_address, target, "confirmed by mail")
            self.lines.append(f"  {target} has left {list_address}.")

    def do_approve(self, args, _verdict) -> None:
        self.moderate(args[0], "approve")

    def do_reject(self, args, _verdict) -> None:
        self.moderate(args[0], "reject")

    def moderate(self, held_id: str, verdict: str) -> None:
        held_id = held_id.lower()
        self.done_tokens.add(held_id)
        if not self.mlist.is_moderator(self.identity):
            self.lines.append("  Only the list's moderators may approve or reject posts.")
            return
        held = self.store.get_held(held_id)
        if held is None or held.list != self.mlist.address:
            self.lines.append("  No such held post (handled already?).")
            return
        if verdict == "approve":
            if outbox.release(self.store, held_id) is not None:
                self.result.release.append((held.sender, held.message))
                self.lines.append(f"  The post from {held.sender} is approved.")
            return
        if self.store.take_held(held_id) is None:
            return
        self.lines.append(f"  The post from {held.sender} is rejected.")
        if held.sender:
            self.result.replies.append(notice(
                self.mlist, (held.sender,), f"Your post to {self.mlist.address} was rejected",
                f"A moderator of {self.mlist.address} rejected your post; it is attached.\n",
                now=self.now, from_role="owner", attach=held.message))

    def do_who(self, args, _verdict) -> None:
        allowed = self.mlist.who_allowed
        may = (self.mlist.is_moderator(self.identity) if allowed == "owners"
               else allowed == "members" and (
                   self.store.is_member(self.mlist.address, self.identity)
                   or self.mlist.is_moderator(self.identity)))
        if not may:
            self.lines.append("  The member list of this list is not available to you.")
            return
        members = self.store.members(self.mlist.address)
        self.lines.append(f"  {len(members)} members:")
        self.lines.extend(f"    {m}" for m in members)
