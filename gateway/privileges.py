"""Who the gateway serves as: bind as root, prepare state_dir, then drop for good.

Where it sits: tap.py (twistd) and cli.py call it before anything touches
state_dir. The serving user is twistd's --uid/--gid, else [server] user and
group. Started as root, the gateway
  1. makes state_dir (mode 0700) and gives the serving user whatever in it
     is not yet theirs (a first `user add` or start made as root),
  2. builds the service while acting as that user (seteuid), so every file it
     makes is theirs and a key they cannot read stops the start now,
  3. binds the listeners as root (ports below 1024), hands the unix sockets
     to the user, and drops root for good before serving (startup.Guard).
It never serves as root: started as root with no serving user, it refuses.
The CLI acts as the same user (or as the owner of state_dir), so its files
are the gateway's too. Postfix does the same with mail_owner.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from twisted.logger import Logger

from gateway.errors import StartupError

log = Logger()


@dataclass(frozen=True)
class Identity:
    """A user to serve as: uid, primary gid, and the supplementary groups of the name."""

    uid: int
    gid: int
    name: str

    @property
    def groups(self) -> list[int]:
        return os.getgrouplist(self.name, self.gid)

    def __str__(self) -> str:
        return f"{self.name} (uid {self.uid}, gid {self.gid})"


def identity(user: str | int | None, group: str | int | None = None) -> Identity | None:
    """The Identity of a user name or uid (group: a name or gid, else the user's own)."""
    if user is None or user == "":
        return None
    try:
        pw = pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    except KeyError:
        raise StartupError(f"server.user: no such user {user!r}") from None
    gid = pw.pw_gid
    if group not in (None, ""):
        try:
            gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
        except KeyError:
            raise StartupError(f"server.group: no such group {group!r}") from None
    return Identity(pw.pw_uid, gid, pw.pw_name)


def owner_of(path: Path) -> Identity | None:
    """The owner of an existing path as an Identity (the CLI acts as it), or None."""
    try:
        st = path.stat()
        return Identity(st.st_uid, st.st_gid, pwd.getpwuid(st.st_uid).pw_name)
    except (OSError, KeyError):
        return None


def prepare_state_dir(state_dir: Path, who: Identity | None) -> int:
    """Make state_dir (0700; missing parents 0755, whatever the umask) and give who
    whatever in it is someone else's (who None: the caller keeps it).

    Only walks the whole tree when the top or one of its first two levels has
    the wrong owner (a state made as root), so a big mail store costs nothing
    at an ordinary start. Strips "other" permission bits from state_dir.
    Returns how many entries changed owner.
    """
    missing = [p for p in reversed(state_dir.parents) if not p.exists()]
    for parent in missing:  # others must reach state_dir; only it is private
        parent.mkdir(exist_ok=True)
        parent.chmod(0o755)
    state_dir.mkdir(exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(state_dir.stat().st_mode)
    if mode & 0o007:
        state_dir.chmod(mode & 0o770)
    if who is None:
        return 0
    changed = 0
    for path in _wrongly_owned(state_dir, who):
        os.lchown(path, who.uid, who.gid)
        changed += 1
    if changed:
        log.info("state_dir {path}: gave {count} entries to {who}", path=str(state_dir),
                 count=changed, who=str(who))
    return changed


def _wrongly_owned(top: Path, who: Identity) -> Iterator[Path]:
    def wrong(p: Path) -> bool:
        st = p.lstat()
        return (st.st_uid, st.st_gid) != (who.uid, who.gid)

    shallow = [top] + [c for c in top.iterdir()]
    shallow += [g for c in shallow[1:] if c.is_dir() and not c.is_symlink() for g in c.iterdir()]
    if not any(wrong(p) for p in shallow):
        return
    for root, dirs, files in os.walk(top):
        for name in [".", *dirs, *files]:
            p = Path(root) / name if name != "." else Path(root)
            if wrong(p):
                yield p


@contextlib.contextmanager
def acting_as(who: Identity | None) -> Iterator[None]:
    """Effective uid/gid/groups of who inside, root again after (no-op unless root)."""
    if who is None or os.geteuid() != 0:
        yield
        return
    groups, gid = os.getgroups(), os.getegid()
    os.setgroups(who.groups)
    os.setegid(who.gid)
    os.seteuid(who.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(gid)
        os.setgroups(groups)


def child_identity(serving: Identity | None) -> Identity | None:
    """Who a child process (runner, accept worker) is told to become: serving, when
    this process is root. Asked while building, inside acting_as(serving): the
    effective uid is serving's then, the real one still root's."""
    return serving if serving is not None and os.getuid() == 0 else None


def drop(who: Identity) -> None:
    """Become who for good (real, effective and saved ids); root cannot come back."""
    os.setgroups(who.groups)
    os.setgid(who.gid)
    os.setuid(who.uid)
    if os.geteuid() == 0 or os.getuid() == 0:
        raise StartupError(f"could not drop root for {who}")
    log.info("serving as {who}", who=str(who))


def refuse_root() -> StartupError:
    return StartupError("refusing to serve as root: set [server] user (and group) or give "
                        "twistd --uid/--gid an unprivileged user")
