"""The alias table: aliases(5) text -> names and their targets, every fault named.

Pure: the text of the aliases file and of its :include: files comes in (the
caller reads them, resolve/ does no I/O), an AliasTable and a list of faults
("etc/aliases:12: unknown target ...") come out. resolve/router.py expands
addresses with it; `mailgateway check-config` prints the faults; the gateway
keeps its old table when a reloaded file has any (service.py).

The format is sendmail's and Postfix's aliases(5):
  name: target, target, ...      # comment lines start with "#"
      target, ...                # a line starting with white space continues
  "name with spaces": ...        # quoted names and targets
Targets: a local name or a full address (expanded again, or a mailbox, or a
remote address), \\name (the mailbox itself, no further expansion),
/absolute/path (append to an mbox file), |command (a program recipient, the
message on its standard input), :include:/absolute/path (one target per line
or comma). A name is a local part valid in every local domain, or a full
address valid for that domain only. Commands and files come only from here:
an address from the network is only ever a key of this table (the old
sendmail holes: "|cmd"@domain, /etc/passwd@domain).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gateway.envelope import parse_address
from gateway.errors import MailError

_LOCAL_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
INCLUDE = ":include:"
# :include: files that include others: deeper than this is a fault (a cycle, usually).
MAX_INCLUDE_DEPTH = 5


@dataclass(frozen=True)
class Target:
    """One target of an alias. kind: "name" (a local part), "address", "mailbox"
    (\\name), "program", "file". source: "file:line" for faults and `alias show`."""

    kind: str
    value: str
    source: str


@dataclass
class AliasTable:
    """Names (lower-cased local parts, or full addresses with the domain lower-cased)
    -> their targets, in file order."""

    entries: dict[str, list[Target]] = field(default_factory=dict)
    # Files read to make it: the aliases file and every :include: file (for reloads).
    files: tuple[str, ...] = ()

    def lookup(self, local: str, domain: str) -> tuple[str, list[Target]] | None:
        """The entry for local@domain: the full address first, then the local part."""
        local = local.lower()
        full = f"{local}@{domain}"
        if full in self.entries:
            return full, self.entries[full]
        if local in self.entries:
            return local, self.entries[local]
        return None

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(frozen=True)
class AliasOptions:
    """What an :include: file may hold (Postfix allow_mail_to_commands / _files)."""

    include_commands: bool = False
    include_files: bool = False


def _split_targets(text: str) -> list[str]:
    """Comma-separated targets, commas inside double quotes kept."""
    out, cur, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == "," and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [t.strip() for t in out if t.strip()]


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return text[1:-1].replace('\\"', '"')
    return text


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """(first line number, joined text) per entry: continuation lines start with blanks."""
    start, parts = 0, []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t" and parts:
            parts.append(line.strip())
            continue
        if parts:
            yield start, " ".join(parts)
        start, parts = number, [line.strip()]
    if parts:
        yield start, " ".join(parts)


class _Parser:
    def __init__(self, read: Callable[[str], str], options: AliasOptions,
                 domains: frozenset[str]):
        self.read = read
        self.options = options
        self.domains = domains
        self.faults: list[str] = []
        self.files: list[str] = []

    def fault(self, where: str, reason: str) -> None:
        self.faults.append(f"{where}: {reason}")

    def target(self, token: str, where: str, included: int, chain: tuple[str, ...]
               ) -> list[Target]:
        text = _unquote(token.strip())
        if text.startswith("|"):
            if included and not self.options.include_commands:
                self.fault(where, f"program target {text!r} not allowed in an :include: file "
                           "(aliases.allow_include_commands)")
                return []
            if not text[1:].strip():
                self.fault(where, "empty command after |")
                return []
            return [Target("program", text[1:].strip(), where)]
        if text.startswith("/"):
            if included and not self.options.include_files:
                self.fault(where, f"file target {text!r} not allowed in an :include: file "
                           "(aliases.allow_include_files)")
                return []
            if text.endswith("/") or "\x00" in text or "/../" in text + "/":
                self.fault(where, f"file target {text!r} must name a file by its absolute path")
                return []
            return [Target("file", text, where)]
        if text.lower().startswith(INCLUDE):
            return self.include(text[len(INCLUDE):].strip(), where, included, chain)
        if text.startswith("\\"):
            name = text[1:]
            if not _LOCAL_NAME.match(name):
                self.fault(where, f"unknown target {token!r}: \\ must precede a local name")
                return []
            return [Target("mailbox", name.lower(), where)]
        if "@" in text:
            try:
                local, domain = parse_address(text)
            except MailError:
                self.fault(where, f"unknown target {token!r}: not an address")
                return []
            return [Target("address", f"{local}@{domain}", where)]
        if "/" in text:
            self.fault(where, f"unknown target {token!r}: a file target needs an absolute path")
            return []
        if _LOCAL_NAME.match(text):
            return [Target("name", text.lower(), where)]
        self.fault(where, f"unknown target {token!r}")
        return []

    def include(self, path: str, where: str, included: int, chain: tuple[str, ...]
                ) -> list[Target]:
        if not path.startswith("/"):
            self.fault(where, f":include: needs an absolute path, not {path!r}")
            return []
        if path in chain or included >= MAX_INCLUDE_DEPTH:
            self.fault(where, f":include: {path} includes itself, or nests deeper than "
                       f"{MAX_INCLUDE_DEPTH}")
            return []
        try:
            text = self.read(path)
        except OSError as e:
            self.fault(where, f":include: {path}: {e.strerror or e}")
            return []
        except UnicodeDecodeError:
            self.fault(where, f":include: {path}: not UTF-8 text")
            return []
        self.files.append(path)
        targets: list[Target] = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            for token in _split_targets(line):
                targets += self.target(token, f"{path}:{number}", included + 1, chain + (path,))
        return targets

    def name(self, text: str, where: str) -> str | None:
        text = _unquote(text.strip())
        if "@" in text:
            try:
                local, domain = parse_address(text)
            except MailError:
                self.fault(where, f"alias name {text!r} is not an address")
                return None
            if domain not in self.domains:
                self.fault(where, f"alias {text!r}: {domain} is not a local domain "
                           "(server.domains)")
                return None
            return f"{local.lower()}@{domain}"
        if not _LOCAL_NAME.match(text):
            self.fault(where, f"alias name {text!r} is not a local part")
            return None
        return text.lower()


def parse(text: str, source: str, *, read: Callable[[str], str],
          options: AliasOptions = AliasOptions(), domains: Iterable[str] = ()
          ) -> tuple[AliasTable, list[str]]:
    """The table of an aliases file's text, and its faults ("file:line: reason").

    read(path) returns an :include: file's text (raises OSError when it cannot).
    """
    p = _Parser(read, options, frozenset(d.lower() for d in domains))
    entries: dict[str, list[Target]] = {}
    first: dict[str, int] = {}
    for number, line in _logical_lines(text):
        where = f"{source}:{number}"
        name_text, sep, rest = line.partition(":")
        if name_text.startswith('"'):
            end = line.find('"', 1)
            name_text, sep, rest = line[:end + 1], line[end + 1:end + 2], line[end + 2:]
        if sep != ":":
            p.fault(where, f"expected \"name: target, ...\", not {line[:60]!r}")
            continue
        name = p.name(name_text, where)
        if name is None:
            continue
        if name in entries:
            p.fault(where, f"alias {name!r} is defined twice (first at line {first[name]})")
            continue
        targets: list[Target] = []
        for token in _split_targets(rest):
            targets += p.target(token, where, 0, ())
        if not targets:
            p.fault(where, f"alias {name!r} has no usable target")
            continue
        entries[name] = targets
        first[name] = number
    return AliasTable(entries, (source, *p.files)), p.faults


def load(path: str, *, read: Callable[[str], str], options: AliasOptions = AliasOptions(),
         domains: Iterable[str] = ()) -> tuple[AliasTable, list[str]]:
    """parse() of the file at path, read with read(); an unreadable file is one fault."""
    try:
        text = read(path)
    except OSError as e:
        return AliasTable(files=(path,)), [f"{path}: cannot read: {e.strerror or e}"]
    except UnicodeDecodeError:
        return AliasTable(files=(path,)), [f"{path}: not UTF-8 text"]
    return parse(text, path, read=read, options=options, domains=domains)
