"""The addresses of a list (Mailman's conventions), pure: which list and role a
local address is, and the VERP envelope sender of one member's copy.

resolve/ calls classify() for a recipient of a local domain; the exploder
calls verp_sender() for each member's copy. For a list dev@example.test:

  dev@                       post to the list                   role "post"
  dev-request@               commands (requests.py)              role "request"
  dev-owner@                 reaches the owners                  role "owner"
  dev-bounces@               bounces (bounces.py)                role "bounces"
  dev-bounces+alice=example.org@   VERP bounce for alice@example.org
  dev-join@, dev-subscribe@  subscribe the sender                role "join"
  dev-leave@, dev-unsubscribe@     unsubscribe the sender        role "leave"

VERP (Variable Envelope Return Path, as Postfix and Mailman write it): the
member's "@" becomes "=", after a "+", so a bounce names the member whatever
the remote MTA writes in it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

# RFC 5321 4.5.3.1.1: a local part longer than this may be refused by the
# receiver; such a member's copy goes out with the plain -bounces sender.
MAX_LOCAL_PART = 64

_SUFFIXES = {
    "request": "request", "owner": "owner", "bounces": "bounces",
    "join": "join", "subscribe": "join", "leave": "leave", "unsubscribe": "leave",
}


@dataclass(frozen=True)
class ListAddress:
    list: str            # the list's posting address, lower-case: "dev@example.test"
    role: str            # post | request | owner | bounces | join | leave
    member: str | None = None  # the member a VERP bounce address names


def classify(local: str, domain: str, names: Collection[str]) -> ListAddress | None:
    """The list address local@domain is, or None. names: the lists' addresses,
    lower-case (ListStore.names()); a set, as it is asked up to twice per call."""
    domain = domain.lower()
    lowered = local.lower()
    if f"{lowered}@{domain}" in names:
        return ListAddress(f"{lowered}@{domain}", "post")
    name, plus, tag = local.partition("+")
    base, dash, suffix = name.lower().rpartition("-")
    if not dash or suffix not in _SUFFIXES:
        return None
    address = f"{base}@{domain}"
    if address not in names:
        return None
    role = _SUFFIXES[suffix]
    if not plus:
        return ListAddress(address, role)
    if role != "bounces":
        return None  # no tags on other roles: dev-request+x@ is nobody
    member_local, eq, member_domain = tag.rpartition("=")
    if not eq or not member_local or not member_domain or "@" in tag:
        return ListAddress(address, "bounces")  # a malformed tag still reaches the bounces
    return ListAddress(address, "bounces", f"{member_local}@{member_domain.lower()}")


def bounces_address(list_address: str) -> str:
    name, _, domain = list_address.partition("@")
    return f"{name}-bounces@{domain}"


def role_address(list_address: str, role: str) -> str:
    """dev@example.test, "request" -> dev-request@example.test ("post": the list itself)."""
    if role == "post":
        return list_address
    name, _, domain = list_address.partition("@")
    return f"{name}-{role}@{domain}"


def verp_sender(list_address: str, member: str) -> str:
    """The envelope sender of member's copy: dev-bounces+alice=example.org@example.test.

    The plain dev-bounces@ when the member's address cannot be carried (a quoted
    local part) or the result's local part would be over 64 octets.
    """
    name, _, domain = list_address.partition("@")
    member_local, at, member_domain = member.rpartition("@")
    local = f"{name}-bounces+{member_local}={member_domain.lower()}"
    if not at or '"' in member_local or len(local.encode()) > MAX_LOCAL_PART:
        return bounces_address(list_address)
    return f"{local}@{domain}"
