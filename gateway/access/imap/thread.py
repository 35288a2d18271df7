"""THREAD (RFC 5256 4): ORDEREDSUBJECT and REFERENCES over the messages SEARCH found.

Part of access/imap, used by selected.py with sort.py's Facts (from the cached
header summaries; no body is read). Runs in the search pool under SEARCH's
Budget, never on the reactor thread. The answer is RFC 5256 4's nested form:
"(3 6 (4 23)(44 7 96))" - a message with one child is followed by it, one
with several by each child's thread in parentheses.
"""

from __future__ import annotations

from gateway.access.imap.sort import Facts, base_subject

ALGORITHMS = (b"ORDEREDSUBJECT", b"REFERENCES")


class Node:
    __slots__ = ("facts", "parent", "children")

    def __init__(self, facts: Facts | None = None) -> None:
        self.facts = facts  # None: a dummy (a referenced message not found)
        self.parent: Node | None = None
        self.children: list[Node] = []

    def adopt(self, child: Node) -> None:
        if child.parent is not None:
            child.parent.children.remove(child)
        child.parent = self
        self.children.append(child)

    def above(self, other: Node) -> bool:
        """True if self is other or one of its ancestors (linking would make a loop)."""
        node: Node | None = other
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False


def _date_key(node: Node) -> tuple[int, int]:
    """A node's sent date and mailbox order; a dummy's are its first child's."""
    while node.facts is None and node.children:
        node = node.children[0]
    return (node.facts.date, node.facts.seq) if node.facts else (0, 0)


def _sort_tree(nodes: list[Node]) -> None:
    stack = list(nodes)
    order = []
    while stack:  # children before their parents (a dummy's date is its first child's)
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    for node in reversed(order):
        node.children.sort(key=_date_key)


def ordered_subject(items: list[Facts]) -> list[Node]:
    """RFC 5256 4 ORDEREDSUBJECT: by base subject, then sent date; each group's first
    message is the parent of the others; threads by their first message's date."""
    keyed = sorted(items, key=lambda f: (base_subject(f.subject)[0].upper(), f.date, f.seq))
    roots: list[Node] = []
    last = None
    for f in keyed:
        subject = base_subject(f.subject)[0].upper()
        if roots and subject == last:
            roots[-1].adopt(Node(f))
        else:
            roots.append(Node(f))
        last = subject
    roots.sort(key=_date_key)
    return roots


def references(items: list[Facts]) -> list[Node]:
    """RFC 5256 4 REFERENCES (after JWZ): link by Message-ID and References, prune
    dummies, gather roots by base subject, sort siblings by sent date."""
    by_id: dict[str, Node] = {}
    ordered = sorted(items, key=lambda f: f.seq)
    for f in ordered:  # (1A) each message's own container; duplicate ids stand alone
        if f.message_id and f.message_id not in by_id:
            by_id[f.message_id] = Node(f)
    nodes = {f.seq: by_id[f.message_id] if by_id.get(f.message_id) and
             by_id[f.message_id].facts is f else Node(f) for f in ordered}
    for f in ordered:
        node = nodes[f.seq]
        chain = []
        for ref in f.references:  # (1B) link the references in order, if no loop
            chain.append(by_id.setdefault(ref, Node()))
        for a, b in zip(chain, chain[1:], strict=False):
            if b.parent is None and not b.above(a) and a is not b:
                a.adopt(b)
        # (1C) the message's parent is the last reference, whatever it had before
        parent = chain[-1] if chain else None
        if parent is not None and (parent is node or node.above(parent)):
            parent = None
        if node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
        if parent is not None:
            parent.adopt(node)
    every = {id(n): n for n in [*by_id.values(), *nodes.values()]}
    roots = [n for n in every.values() if n.parent is None]
    roots = _prune(roots)
    roots.sort(key=_date_key)  # (4)
    roots = _gather_subjects(roots)  # (5)
    _sort_tree(roots)  # (6)
    roots.sort(key=_date_key)
    return roots


def _prune(roots: list[Node]) -> list[Node]:
    """(3) Empty dummies go; a dummy's children take its place, except a dummy at
    the top with more than one child. Children first, without recursion (a long
    reply chain is as deep as it is long)."""
    order, stack = [], list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    roots = list(roots)
    for node in reversed(order):
        if node.facts is not None:
            continue
        parent = node.parent
        if parent is None and len(node.children) > 1:
            continue
        siblings = parent.children if parent is not None else roots
        i = siblings.index(node)
        for c in node.children:
            c.parent = parent
        siblings[i:i + 1] = node.children
        node.children = []
    return roots


def _subject_of(node: Node) -> tuple[str, bool]:
    facts = node.facts or (node.children[0].facts if node.children else None)
    if facts is None:
        return "", False
    base, reply = base_subject(facts.subject)
    return base.upper(), reply and node.facts is not None


def _gather_subjects(roots: list[Node]) -> list[Node]:
    table: dict[str, Node] = {}
    for node in roots:  # (5B, 5C) one container per base subject
        subject, reply = _subject_of(node)
        if not subject:
            continue
        old = table.get(subject)
        if old is None or (node.facts is None and old.facts is not None) or (
                _subject_of(old)[1] and not reply and old.facts is not None
                and node.facts is not None):
            table[subject] = node
    out: list[Node] = []
    for node in roots:  # (5D) merge each root into its subject's container
        if node.parent is not None:
            continue  # put under a new dummy with an earlier root
        subject, reply = _subject_of(node)
        other = table.get(subject) if subject else None
        if other is None or other is node:
            out.append(node)
        elif node.facts is None and other.facts is None:
            for c in list(node.children):
                other.adopt(c)
        elif other.facts is None or (reply and not _subject_of(other)[1]):
            other.adopt(node)
        else:
            dummy = Node()
            if other in out:
                out[out.index(other)] = dummy
            else:
                out.append(dummy)
            dummy.adopt(other)
            dummy.adopt(node)
            table[subject] = dummy
    return out


def render(roots: list[Node], uid: bool) -> bytes:
    """The THREAD response's data: "(1 2 (3)(4))(5)". With a stack, not recursion: a
    mailbox's References can nest branches deeper than Python's recursion limit."""
    out = bytearray()
    todo: list[Node | None] = list(reversed(roots))  # None: close the group opened last
    while todo:
        node = todo.pop()
        if node is None:
            out += b")"
            continue
        parts = []
        while True:  # a chain of only children is one flat run of numbers
            if node.facts is not None:
                parts.append(b"%d" % (node.facts.uid if uid else node.facts.seq))
            if len(node.children) != 1:
                break
            node = node.children[0]
        out += b"(" + b" ".join(parts)
        if node.children:
            out += b" " if parts else b""
            todo.append(None)
            todo.extend(reversed(node.children))
        else:
            out += b")"
    return bytes(out)
