"""IMAP keywords in the Maildir itself, the way Dovecot keeps them.

Sits in store/, under store/folder.py. A folder's keywords are numbered in
its "dovecot-keywords" file, one "<index> <name>" line each, index 0 to 25;
a message carries keyword n as the lower-case letter chr(ord("a") + n) in
the info of its file name ("<unique>:2,FSab"). Dovecot reads and writes the
same file and letters (its maildir-keywords.c), so mutt-style readers keep the
letters when they rename, Dovecot shows the same keywords, and an index
rebuilt from the Maildir (store/index.py) gets them back.

Only 26 letters exist: a keyword that finds no free slot is kept in the
index only, as Dovecot does with more than 26 keywords, and is lost when
the index is rebuilt.

Writing: the file is only ever extended (a slot once given keeps its name,
or letters already in file names would change meaning). The new version is
written to "dovecot-keywords.lock", fsync'd and renamed over the file: the
same dotlock Dovecot takes, so two writers never lose each other's slots,
and the names are durable before any file name uses their letters.
"""

from __future__ import annotations

import os
import string
import time
from pathlib import Path

from twisted.logger import Logger

KEYWORDS_NAME = "dovecot-keywords"
LETTERS = string.ascii_lowercase  # slot n is LETTERS[n]
_ATOM_SPECIALS = set('(){%*"\\]')
_STALE_LOCK_S = 30  # a lock older than this was left by a crashed writer
_log = Logger()


def is_keyword(name: str) -> bool:
    """An IMAP flag-keyword: an atom (RFC 3501 9), so it can be sent in FLAGS as it is."""
    return bool(name) and name[0] != "\\" and all(
        "!" <= c <= "~" and c not in _ATOM_SPECIALS for c in name)


def parse(text: str) -> dict[int, str]:
    """Slot -> name of a dovecot-keywords file; lines that are not "<0-25> <name>" skipped."""
    slots: dict[int, str] = {}
    for line in text.splitlines():
        number, _, name = line.partition(" ")
        if number.isdigit() and int(number) < len(LETTERS) and name:
            slots.setdefault(int(number), name)
    return slots


class KeywordTable:
    """One folder's slots. Not thread-safe by itself: the Folder's lock guards it."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / KEYWORDS_NAME
        self.by_letter: dict[str, str] = {}
        self.by_name: dict[str, str] = {}
        # Every slot the file names, also with a name IMAP cannot carry (another
        # writer's): never given again, and written back as it was.
        self._slots: dict[int, str] = {}
        self._stamp: tuple[int, int, int] | None = None
        self.reload()

    def reload(self) -> bool:
        """Read the file again if another program changed it; True when it did."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            stamp = None
        else:
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return False
        try:
            text = self.path.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            text = ""
        self._stamp = stamp
        # Slots already known stay as they are: letters in file names must keep meaning.
        for n, name in sorted(parse(text).items()):
            self._slots.setdefault(n, name)
            letter = LETTERS[n]
            if is_keyword(name) and letter not in self.by_letter and name not in self.by_name:
                self.by_letter[letter] = name
                self.by_name[name] = letter
        return True

    def names(self, letters: str) -> list[str]:
        """The keywords of these info letters, in letter order; unknown letters skipped."""
        return [self.by_letter[c] for c in letters if c in self.by_letter]

    def letters(self, names: list[str]) -> tuple[str, list[str]]:
        """(letters, names left without one) for these keywords, giving free slots to
        names that have none yet (written to the file before they are returned)."""
        missing = [n for n in dict.fromkeys(names) if n not in self.by_name and is_keyword(n)]
        if missing:
            self.reload()  # another writer may have given them slots already
            missing = [n for n in missing if n not in self.by_name]
            if missing and len(self._slots) < len(LETTERS):
                self._extend(missing)
        letters = "".join(sorted({self.by_name[n] for n in names if n in self.by_name}))
        return letters, [n for n in names if n not in self.by_name]

    def _extend(self, names: list[str]) -> None:
        """Give names the lowest free slots (as many as there are; the rest stay in
        the index only), under Dovecot's dotlock, the file durable before use."""
        lock = self.path.with_name(KEYWORDS_NAME + ".lock")
        try:
            fd = self._take_lock(lock)
        except OSError as e:
            _log.warn("keywords of {path} kept in the index only: {error}",
                      path=str(self.path.parent), error=str(e))
            return
        try:
            self.reload()  # under the lock: nobody else adds slots now
            free = [n for n in range(len(LETTERS)) if n not in self._slots]
            given = list(zip(free, [n for n in names if n not in self.by_name], strict=False))
            slots = dict(self._slots)
            slots.update(given)
            body = "".join(f"{n} {name}\n" for n, name in sorted(slots.items()))
            os.write(fd, body.encode("utf-8", "surrogateescape"))
            os.fsync(fd)
            os.rename(lock, self.path)
        except BaseException:
            lock.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        for n, name in given:
            self._slots[n] = name
            self.by_letter[LETTERS[n]], self.by_name[name] = name, LETTERS[n]
        st = os.stat(self.path)
        self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)

    @staticmethod
    def _take_lock(lock: Path) -> int:
        for _ in range(2):
            try:
                return os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                try:
                    age = os.stat(lock).st_mtime
                except FileNotFoundError:
                    continue
                if time.time() - age < _STALE_LOCK_S:
                    raise
                lock.unlink(missing_ok=True)  # left by a writer that died
        raise FileExistsError(f"{lock} is held")
