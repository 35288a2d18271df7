"""A migrated Maildir (never indexed) over IMAP: its first SELECT answers before the
index has a row per message (store/folder.py _index_listed); a kill -9 at once, or
after a STORE, loses no UID, UIDVALIDITY or flag that a client was told."""

from __future__ import annotations

import re

COUNT = 1200  # above store/folder.py LAZY_STAT: the bulk first listing


def subjects(m) -> dict[int, bytes]:
    typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK"
    out = {}
    for item in data:
        if isinstance(item, tuple):
            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
            out[uid] = item[1].strip()
    return out


def select(gw):
    m = gw.imap_login("alice@example.test")
    typ, data = m.select("INBOX")
    assert typ == "OK" and int(data[0]) == COUNT
    return m, int(m.response("UIDVALIDITY")[1][0])


def test_a_kill9_after_the_first_select_keeps_every_uid_and_flag(make_gateway):
    gw = make_gateway("[auth]\nplaintext_from_loopback = true\n")
    gw.stop()  # the files come in as a migration leaves them, with no index
    box = gw.maildir("alice@example.test")
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    for n in range(COUNT):  # names out of time order on disk: UIDs follow the times
        t = 1_700_000_000 + (n * 7919) % COUNT
        (box / "cur" / f"{t}.M{n}P1.old:2,{'S' if n % 3 else ''}").write_bytes(
            b"Subject: m%d\r\n\r\nbody\r\n" % t)
    gw.start()
    m, uidvalidity = select(gw)
    first = subjects(m)
    assert first[1] == b"Subject: m1700000000" and len(first) == COUNT
    gw.kill9()  # before or while the rows are written: the saved listing holds the UIDs
    m.shutdown()

    gw.start()
    m, again = select(gw)
    assert again == uidvalidity and subjects(m) == first
    assert m.uid("STORE", "7", "+FLAGS", "(\\Flagged)")[0] == "OK"
    gw.kill9()
    m.shutdown()

    gw.start()
    m, again = select(gw)
    assert again == uidvalidity and subjects(m) == first
    typ, data = m.uid("FETCH", "7", "(FLAGS)")
    assert b"\\Flagged" in data[0]
    m.logout()
    gw.stop()
