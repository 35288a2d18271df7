"""The router: recipient address -> Routes. Implements IRouter.

Sits between accept (which asks route() at RCPT time, so unknown users are
refused with 550 5.1.1 before DATA, RFC 5321 3.3) and the queue runner (which
asks expand() at delivery time, since users and aliases may change meanwhile).
A local part is looked up, in this order, as:
  1. an alias (resolve/aliases.py), expanded recursively: loops are found
     (a name met again on its own path is its mailbox if it has one, else a
     554 5.4.6 loop), depth limited; owner-NAME, when defined, becomes the
     envelope sender of what NAME expands to (sendmail's and Postfix's rule,
     so delivery errors reach the owner, not the poster);
  2. a mailing list address (lists/, through the `lists` callable);
  3. a mailbox;
and, when none matches, once more without its subaddress (RFC 5233:
user+tag, delimiter a setting): user+tag reaches user, in folder "tag" when
that folder exists (deliver/ checks), or alias user with EXTENSION=tag.
Deciding stays here; running programs, appending to files and exploding
lists stays in deliver/ and lists/.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

from zope.interface import implementer

from gateway.envelope import parse_address
from gateway.errors import MailError
from gateway.interfaces import IRouter, IUserDirectory, Route
from gateway.resolve.aliases import AliasTable, Target

# RFC 5321 4.5.1: postmaster must be accepted for every local domain.
POSTMASTER = "postmaster"


def _unknown(mailbox: str) -> MailError:
    return MailError(550, "5.1.1", f"<{mailbox}>: Recipient address rejected: "
                     "User unknown in local recipient table")


@implementer(IRouter)
class Router:
    def __init__(self, domains: Iterable[str], users: IUserDirectory, *,
                 aliases: AliasTable | None = None, delimiter: str = "+",
                 max_depth: int = 20, shell: Iterable[str] = (), reply: Iterable[str] = (),
                 lists: Callable[[str, str], Route | None] | None = None):
        self.domains = frozenset(d.lower() for d in domains)
        self.users = users
        # Replaced whole on reload (service.py): a lookup sees one table or the other.
        self.aliases = aliases or AliasTable()
        self.delimiter = delimiter
        self.max_depth = max_depth
        self.shell = frozenset(n.lower() for n in shell)
        self.reply = frozenset(n.lower() for n in reply)
        self.lists = lists

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.domains

    # --- RCPT TO: is it ours? -----------------------------------------------------------

    def route(self, address: str) -> Route:
        local, domain = parse_address(address)
        if not self.is_local_domain(domain):
            return Route(kind="remote", address=f"{local}@{domain}", domain=domain)
        found = self._classify(local, domain)
        if found is None:
            mailbox = f"{local.lower()}@{domain}"
            if local.lower() == POSTMASTER:
                # Without an explicit postmaster mailbox or alias, the first user
                # of the domain would be a guess; refuse clearly instead.
                raise MailError(550, "5.1.1", f"<{mailbox}>: postmaster has no mailbox here yet")
            raise _unknown(mailbox)
        kind, value, extension = found
        if kind == "alias":
            return Route(kind="alias", address=f"{local}@{domain}", extension=extension)
        if kind == "list":
            return value
        return Route(kind="local", address=f"{local.lower()}@{domain}", mailbox=value,
                     folder=extension)

    def _classify(self, local: str, domain: str):
        """("alias", (key, targets), ext), ("list", Route, ""), ("local", mailbox, ext) or None."""
        found = self._classify_exact(local, domain)
        if found is not None or not self.delimiter:
            return found
        base, sep, extension = local.partition(self.delimiter)
        if not sep or not base or not extension:
            return None
        found = self._classify_exact(base, domain)
        if found is None or found[0] == "list":
            return None
        return found[0], found[1], extension

    def _classify_exact(self, local: str, domain: str):
        entry = self.aliases.lookup(local, domain)
        if entry is not None:
            return "alias", entry, ""
        if self.lists is not None:
            route = self.lists(local, domain)
            if route is not None:
                return "list", route, ""
        mailbox = f"{local.lower()}@{domain}"
        if self.users.exists(mailbox):
            return "local", mailbox, ""
        return None

    # --- delivery: every final route --------------------------------------------------

    def expand(self, address: str) -> list[Route]:
        local, domain = parse_address(address)
        if not self.is_local_domain(domain):
            return [Route(kind="remote", address=f"{local}@{domain}", domain=domain)]
        top = self.route(address)  # 550 for an unknown name, as at RCPT
        if top.kind != "alias":
            return [top]
        out: dict[tuple, Route] = {}
        self._expand(local, domain, _Walk(original=f"{local}@{domain}", chain=(), sender=None),
                     out)
        return list(out.values())

    def _expand(self, local: str, domain: str, walk: _Walk, out: dict[tuple, Route]) -> None:
        if len(walk.chain) > self.max_depth:
            raise MailError(554, "5.4.6", f"alias expansion deeper than {self.max_depth}: "
                            + " -> ".join(walk.chain))
        found = self._classify(local, domain)
        if found is None:
            mailbox = f"{local.lower()}@{domain}"
            _add(out, Route(kind="error", address=mailbox, original=walk.original,
                            sender=walk.sender, error=f"550 5.1.1 <{mailbox}>: unknown user "
                            f"(alias {' -> '.join(walk.chain)})"))
            return
        kind, value, extension = found
        if kind == "list":
            _add(out, replace(value, original=walk.original, sender=walk.sender))
            return
        if kind == "local":
            _add(out, Route(kind="local", address=value, mailbox=value, folder=extension,
                            original=walk.original, sender=walk.sender))
            return
        key, targets = value
        name = key.partition("@")[0]
        if key in walk.chain:
            mailbox = f"{name}@{domain}"
            if self.users.exists(mailbox):  # "alice: alice, bob": alice's own mailbox
                _add(out, Route(kind="local", address=mailbox, mailbox=mailbox,
                                original=walk.original, sender=walk.sender))
                return
            raise MailError(554, "5.4.6", "alias loop: " + " -> ".join(walk.chain + (key,)))
        owner = self.aliases.lookup(f"owner-{name}", domain)
        inner = _Walk(original=walk.original, chain=walk.chain + (key,),
                      sender=f"owner-{name}@{domain}" if owner else walk.sender)
        here = f"{name}{self.delimiter if extension else ''}{extension}@{domain}"
        for target in targets:
            self._target(target, here, name, extension, domain, inner, out)

    def _target(self, t: Target, here: str, name: str, extension: str, domain: str,
                walk: _Walk, out: dict[tuple, Route]) -> None:
        common = {"original": walk.original, "sender": walk.sender}
        if t.kind == "name":
            self._expand(t.value, domain, walk, out)
        elif t.kind == "address":
            local, target_domain = parse_address(t.value)
            if self.is_local_domain(target_domain):
                self._expand(local, target_domain, walk, out)
            else:
                _add(out, Route(kind="remote", address=t.value, domain=target_domain, **common))
        elif t.kind == "mailbox":
            mailbox = f"{t.value}@{domain}"
            if self.users.exists(mailbox):
                _add(out, Route(kind="local", address=mailbox, mailbox=mailbox, **common))
            else:
                _add(out, Route(kind="error", address=mailbox, error=f"550 5.1.1 <{mailbox}>: "
                                f"no such mailbox ({t.source})", **common))
        elif t.kind == "program":
            options = tuple(o for o, names in (("shell", self.shell), ("reply", self.reply))
                            if name in names)
            _add(out, Route(kind="program", address=here, command=t.value, options=options,
                            extension=extension, **common))
        elif t.kind == "file":
            _add(out, Route(kind="file", address=here, path=t.value, **common))


class _Walk:
    """Where an expansion is: the RCPT address, the aliases passed, the sender to use."""

    __slots__ = ("original", "chain", "sender")

    def __init__(self, original: str, chain: tuple[str, ...], sender: str | None):
        self.original = original
        self.chain = chain
        self.sender = sender


def _add(out: dict[tuple, Route], route: Route) -> None:
    """Each final target once per message (sendmail and Postfix drop duplicates)."""
    what = route.mailbox or route.command or route.path or route.address.lower()
    out.setdefault((route.kind, what, route.folder), route)
