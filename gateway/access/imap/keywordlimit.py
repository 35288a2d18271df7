"""Bounds on IMAP keywords: how many one folder may know, how long one may be.

Part of access/imap, called by STORE (selected.py), APPEND, COPY, MOVE (account.py)
before they hand flags to store/folder.py, and by View.flag_responses()
(mailbox.py) for PERMANENTFLAGS. Without a bound a client could grow a
folder's FLAGS response, its dovecot-keywords file and every session's
memory without end, one new keyword per STORE. The bounds are [imap]
max_keywords_per_folder and max_keyword_length (Dovecot has
mail_max_keyword_length = 50 too); beyond them the command fails whole with
NO [LIMIT] (RFC 5530 3), and a full folder stops offering "\\*" in
PERMANENTFLAGS (RFC 3501 7.1: the client may not create new keywords), so a
well-behaved client does not try.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.access.imap.wire import No
from gateway.config import ImapSettings
from gateway.store.folder import FLAG_LETTERS, Folder


def keywords_in(flags: Iterable[str]) -> list[str]:
    """The keywords among flags (not system flags, not $Forwarded: a file-name letter)."""
    return [f for f in dict.fromkeys(flags) if f not in FLAG_LETTERS and not f.startswith("\\")]


def full(folder: Folder, settings: ImapSettings) -> bool:
    """True when the folder may learn no new keyword."""
    return len(folder.keyword_names) >= settings.max_keywords_per_folder


def check(folder: Folder, flags: Iterable[str], settings: ImapSettings) -> None:
    """NO [LIMIT] if these flags hold a keyword too long, or more new keywords than
    the folder has room for. Call under folder.lock, just before the change, so two
    sessions cannot both take the last slot."""
    keywords = keywords_in(flags)
    longest = settings.max_keyword_length
    if any(len(k) > longest for k in keywords):
        raise No(f"[LIMIT] A keyword may have at most {longest} characters")
    known = set(folder.keyword_names)
    new = [k for k in keywords if k not in known]
    most = settings.max_keywords_per_folder
    if new and len(known) + len(new) > most:
        raise No(f"[LIMIT] This folder has {len(known)} keywords and may have at most "
                 f"{most}: use one it has")
