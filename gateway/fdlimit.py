"""The open-files limit, raised at start to what the kernel allows this process.

Why: every IMAP session may hold up to [imap] max_fetch_contents files open while
a FETCH streams them (filesend.py), beside its socket; with the TLS front's
max_connections (1000) that is far past the soft RLIMIT_NOFILE of 1024 most
systems start a process with. The soft limit is the process's own to raise up to
the hard one (setrlimit(2)), as nginx's worker_rlimit_nofile and Dovecot's master
do; past the hard limit only the service manager can go (the shipped systemd unit
sets LimitNOFILE=65536). Running out still fails safely: Twisted stops accepting
for a moment on EMFILE, a FETCH that cannot open its file answers NO.
"""

from __future__ import annotations

import resource

from twisted.logger import Logger

log = Logger()

WANTED = 65536  # enough for every limit's default at once; more only if the hard limit says so


def raise_open_files(wanted: int = WANTED) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards wanted (never above the hard limit,
    never lower than it is); returns (before, after) and logs the change."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target <= soft:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as e:
        log.warn("open files limit stays {soft}: cannot raise it to {target}: {reason}",
                 soft=soft, target=target, reason=e)
        return soft, soft
    log.info("open files limit raised from {soft} to {target} (hard limit {hard})",
             soft=soft, target=target, hard="unlimited" if hard == resource.RLIM_INFINITY else hard)
    return soft, target
