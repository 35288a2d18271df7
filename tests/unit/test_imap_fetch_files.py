"""FETCH batches when big messages go from their files (fetch.batches with files_from),
and the [imap] sendfile_from setting. The sending itself: tests/integration/
test_imap_sendfile_flow.py (sendfile needs a real socket)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway import config
from gateway.access.imap import fetch
from gateway.access.imap.wire import Atom
from gateway.errors import ConfigError

MIB = 1 << 20


class Sizes:
    """A folder of messages of the given sizes, UIDs 1..n."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes

    def message(self, uid: int):
        return SimpleNamespace(size=self.sizes[uid - 1])


def pairs(n: int) -> list[tuple[int, int]]:
    return [(u, u) for u in range(1, n + 1)]


def test_messages_read_into_memory_make_batches_of_fetch_buffer():
    folder = Sizes([MIB] * 40)
    items = fetch.parse([Atom(b"BODY.PEEK[]")])
    assert [len(b) for b in fetch.batches(folder, pairs(40), items, MIB)] == [1] * 40


def test_messages_sent_from_files_go_many_to_a_batch_but_bounded():
    folder = Sizes([MIB] * 40 + [100] * 3)
    items = fetch.parse([[Atom(b"UID"), Atom(b"BODY.PEEK[]")]])
    got = fetch.batches(folder, pairs(43), items, MIB, files_from=65536)
    assert [len(b) for b in got] == [16, 16, 11]
    assert [p for b in got for p in b] == pairs(43)


def test_a_part_or_binary_goes_from_a_file_too():
    folder = Sizes([MIB] * 4)
    for other in (b"BODY.PEEK[1]", b"BINARY.PEEK[1]"):
        items = fetch.parse([[Atom(b"BODY.PEEK[]"), Atom(other)]])
        got = fetch.batches(folder, pairs(4), items, MIB, files_from=65536)
        assert [len(b) for b in got] == [4]  # two ranges a message: 8 of the 16


@pytest.mark.parametrize("line, key", [
    ("sendfile_from = -1", "imap.sendfile_from"),  # 0 or more
    ('sendfile_local = "yes"', "imap.sendfile_local"),  # true or false
])
def test_a_bad_sendfile_setting_is_named(tmp_path, line, key):
    path = tmp_path / "c.toml"
    path.write_text(f'[server]\ndomains = ["example.test"]\n[imap]\n{line}\n')
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert [k for _, k, _ in e.value.problems] == [key]
    path.write_text('[server]\ndomains = ["example.test"]\n')
    assert config.load(path).imap.sendfile_local is False  # copied to this host's clients


def test_each_content_item_counts_a_message_again_in_octets_and_in_files():
    # BODY[] asked twice: each copy of the message is held (or opened) at once.
    twice = fetch.parse([[Atom(b"BODY.PEEK[]"), Atom(b"BODY.PEEK[]<0.99999999>")]])
    folder = Sizes([400 * 1024] * 4)
    assert [len(b) for b in fetch.batches(folder, pairs(4), twice, MIB)] == [1, 1, 1, 1]
    once = fetch.parse([Atom(b"BODY.PEEK[]")])
    assert [len(b) for b in fetch.batches(folder, pairs(4), once, MIB)] == [2, 2]
    big = Sizes([MIB] * 20)
    got = fetch.batches(big, pairs(20), twice, MIB, files_from=65536)
    assert [len(b) for b in got] == [8, 8, 4]  # 16 open files a batch, as for one item


def test_a_fetch_asking_for_more_contents_than_max_fetch_contents_is_refused(tmp_path):
    from imap_dialogue import BOX, Session, fresh_store, make_factory
    from twisted.internet.testing import MemoryReactorClock

    assert config.ImapSettings().max_fetch_contents >= 8  # a named setting, generous
    store = fresh_store(tmp_path)
    store.deliver(BOX, b"Subject: one\r\n\r\nbody\r\n", "1000.U1.host")
    s = Session(make_factory(store, MemoryReactorClock(), {"max_fetch_contents": 3}),
                "127.0.0.1")
    s.login()
    s("SELECT INBOX")
    out = s("FETCH 1 (BODY.PEEK[] BODY.PEEK[TEXT] BODY.PEEK[1] BINARY.PEEK[1])",
            expect=b"NO")
    assert b"[LIMIT]" in out and b"max_fetch_contents 3" in out and b"body" not in out
    # Headers and metadata do not count; three contents are answered.
    out = s("FETCH 1 (FLAGS ENVELOPE BODY.PEEK[HEADER] BODY.PEEK[] BODY.PEEK[TEXT] "
            "BODY.PEEK[1])")
    assert out.count(b"body") == 3

