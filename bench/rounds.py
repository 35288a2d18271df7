"""How every benchmark in bench/ runs: a work folder, the servers in turn, rounds, Ctrl-C,
clean-up, and the report on stdout (and appended to a results file when asked).

The six scripts (smtp_accept, mailbox_bench, relay_bench, imap_bench, tlsfront_bench,
alias_bench) differ in
what a round measures, not in this.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from peers import Unavailable, append_report

REPO = Path(__file__).resolve().parents[1]


def say(text: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(text, file=sys.stderr, flush=True)


def usable(candidates: Iterable[Any]) -> list[Any]:
    """The servers (or fronts) asked for whose check() passes, each checked once
    before round 1; any other is left out, saying why."""
    kept = []
    for server in candidates:
        try:
            server.check()
        except (Unavailable, OSError, subprocess.TimeoutExpired) as exc:
            say(f"skipping {server.name}: {exc}")
            continue
        kept.append(server)
    return kept


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command as the report shows it: this Python (relative to the checkout) and script."""
    python = Path(sys.executable)
    shown = python.relative_to(REPO) if python.is_relative_to(REPO) else python
    return shlex.join([str(shown), f"bench/{script}", *(sys.argv[1:] if argv is None else argv)])


def parse_set(item: str) -> tuple[str, str, Any]:
    """--set SECTION.KEY=VALUE -> (section, key, the TOML value)."""
    name, _, value = item.partition("=")
    section, _, key = name.partition(".")
    return section, key, tomllib.loads(f"v = {value}")["v"]


def pick_venv(given: Path | None) -> Path:
    """The venv that has (or will get) mailgateway and the Python peers."""
    if given is not None:
        return given
    for candidate in (REPO / ".venv", Path("/tmp/v")):
        if (candidate / "bin" / "python").exists():
            return candidate
    return REPO / ".venv"


def fs_type(path: Path) -> str:
    """The file system type holding PATH: fsync on tmpfs costs nothing and would flatter all."""
    best, kind = "", "?"
    real = str(path.resolve())
    with open("/proc/mounts") as fh:
        for line in fh:
            fields = line.split()
            mount = fields[1]
            inside = real == mount or real.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, fields[2]
    return kind


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP behave like Ctrl-C, so the clean-up stops every server.

    SIGINT is set too: a shell that starts us in the background ignores it otherwise.
    """
    raise KeyboardInterrupt(f"signal {signum}")


def make_workdir(parent: Path | None, prefix: str) -> Path:
    """A fresh work folder (0755: peers' daemons run as other users); signals now interrupt."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    parent = parent or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    workdir.chmod(0o755)
    return workdir


def open_workdir(parent: Path | None, prefix: str, venv: Path) -> Path:
    """make_workdir, saying where it is and warning when fsync costs nothing there."""
    workdir = make_workdir(parent, prefix)
    kind = fs_type(workdir)
    if kind in ("tmpfs", "ramfs"):
        say(f"warning: {workdir} is on {kind}: fsync is free there, figures flatter everyone")
    say(f"venv {venv}, work folder {workdir} ({kind})")
    return workdir


def run_in_turn(make: Callable[[], list[Any]], rounds: int, run: Callable[[Any, int], Any],
                tell: Callable[[Any], str], workdir: Path, keep: bool
                ) -> tuple[list[Any], dict[str, list[Any]], bool]:
    """(servers, results by server name, interrupted).

    make() gives the servers that can run; each then runs once per round, the
    first one rotating so no server always goes first. Ctrl-C (or SIGTERM)
    ends early and keeps the rounds done. Every server is stopped and the
    work folder removed (unless keep) whatever happens.
    """
    servers: list[Any] = []
    results: dict[str, list[Any]] = {}
    interrupted = False
    try:
        servers = make()
        results = {s.name: [] for s in servers}
        for rnd in range(1, rounds + 1):
            shift = (rnd - 1) % max(1, len(servers))
            for server in servers[shift:] + servers[:shift]:
                say(f"round {rnd}/{rounds}: {server.name} ...")
                res = run(server, rnd)
                results[server.name].append(res)
                say("  " + tell(res) + (f"\n  ERROR: {res.error}" if res.error else ""))
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: stopping the servers; the report covers the rounds done")
    finally:
        for server in servers:
            server.stop()
        if keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return servers, results, interrupted


def publish(results: dict[str, list[Any]], interrupted: bool, report: Callable[[], str],
            append: str | None, title: str) -> int:
    """Print the report (and append it to a results file); the exit code."""
    if not any(results.values()):
        return 130 if interrupted else 1
    text = report()
    print(text)
    if append is not None:
        append_report(append, title, text)
        say(f"appended to {append}")
    return 130 if interrupted else 0
