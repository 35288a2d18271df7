"""One mailbox owner for the POP3 and IMAP dialogues: IUserDirectory without scrypt."""

from __future__ import annotations

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer

BOX = "alice@example.test"
PASSWORD = "correct horse"


class FakeUsers:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def exists(self, address: str) -> bool:
        return address.lower() == BOX

    def authenticate(self, address: str, password: str, client: str = "") -> defer.Deferred:
        self.calls.append((address, password))
        if address.lower() == BOX and password == PASSWORD:
            return defer.succeed(BOX)
        return defer.fail(UnauthorizedLogin("bad user name or password"))
