"""RFC 8058 one-click unsubscribe endpoint (gateway/lists/web.py), through the real
twisted.web Site on a StringTransport: raw HTTP in, raw HTTP out, no socket."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from gateway.config import load, parse
from gateway.durable import run_now
from gateway.errors import ConfigError
from gateway.lists.posting import one_click_url
from gateway.lists.store import ListStore
from gateway.lists.web import site

LIST = "dev@example.test"
CAROL = "Carol@example.org"


@pytest.fixture
def store(tmp_path):
    s = ListStore(tmp_path / "lists")
    s.create(LIST, ["owner@example.test"])
    s.set(LIST, web_base_url="https://lists.example.test/")
    s.add_members(LIST, [CAROL, "dave@example.org"])
    yield s
    s.close()


def http(store, raw: bytes, max_body: int = 65536) -> tuple[int, dict[str, str], bytes]:
    """One request through the site; (status, headers, body) of the answer."""
    factory = site(store, run_now, max_body=max_body)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(raw)
    out = transport.value()
    protocol.connectionLost(None)
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return int(lines[0].split()[1]), headers, body


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, data = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, data = out + data[:n], data[n + 2:]
    return out


def target(store, member: str = CAROL) -> bytes:
    url = urlsplit(one_click_url(store.get(LIST), member))
    return f"{url.path}?{url.query}".encode()


def post(path: bytes, body: bytes = b"List-Unsubscribe=One-Click",
         kind: bytes = b"application/x-www-form-urlencoded") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: lists.example.test\r\nContent-Type: " + kind
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def get(path: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: lists.example.test\r\n\r\n"


def test_one_click_post_unsubscribes_at_once(store):
    code, headers, body = http(store, post(target(store)))
    assert code == 200, body
    assert body == b"Carol@example.org has been unsubscribed from dev@example.test.\n"
    assert store.members(LIST) == ["dave@example.org"]
    assert headers["cache-control"] == "no-store"
    assert headers["referrer-policy"] == "no-referrer"
    # Again (a client retrying): still 200, nothing else changes.
    code, _, body = http(store, post(target(store)))
    assert (code, body) == (200, b"Carol@example.org is not subscribed to dev@example.test.\n")
    assert store.members(LIST) == ["dave@example.org"]


def test_multipart_form_data_works_too(store):
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\n"
            b"One-Click\r\n--XyZ--\r\n")
    code, _, answer = http(store, post(target(store), body, b"multipart/form-data; boundary=XyZ"))
    assert code == 200, answer
    assert store.members(LIST) == ["dave@example.org"]


def test_get_shows_a_confirm_button_and_changes_nothing(store):
    code, headers, body = http(store, get(target(store)))
    assert code == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert b'<form method="post">' in body
    assert b'name="List-Unsubscribe" value="One-Click"' in body
    assert b"Carol@example.org" in body and b"dev@example.test" in body
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert CAROL in store.members(LIST)
    code, _, _ = http(store, b"HEAD " + target(store) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert code == 200 and CAROL in store.members(LIST)


@pytest.mark.parametrize("tamper", [
    lambda p: p[:-1] + (b"0" if p[-1:] != b"0" else b"1"),      # one digit of the signature
    lambda p: p.replace(b"Carol%40example.org", b"dave%40example.org"),  # another member
    lambda p: p.split(b"&sig=")[0],                               # no signature
    lambda p: p + b"&sig=00000000000000000000000000000000",        # two signatures
    lambda p: p.split(b"&sig=")[0] + b"&sig=%C3%A9" + b"a" * 30,   # not hex
])
def test_forged_links_get_403_and_change_nothing(store, tamper):
    for request in (post(tamper(target(store))), get(tamper(target(store)))):
        code, _, body = http(store, request)
        assert code == 403, body
    assert store.members(LIST) == ["Carol@example.org", "dave@example.org"]


def test_a_signature_of_another_lists_secret_is_refused(store):
    path = target(store)
    store.create("ops@example.test", ["owner@example.test"])
    store.set("ops@example.test", web_base_url="https://lists.example.test/")
    store.add_members("ops@example.test", [CAROL])
    other = path.replace(b"/dev@example.test/", b"/ops@example.test/")
    assert http(store, post(other))[0] == 403
    assert store.members("ops@example.test") == [CAROL]


@pytest.mark.parametrize("path, code", [
    (b"/lists/nobody@example.test/unsubscribe", 404),   # unknown list (signature checked later)
    (b"/lists/..%2F..%2Fetc%2Fpasswd/unsubscribe", 404),  # not an address: never a path
    (b"/lists/dev@example.test/subscribe", 404),
    (b"/metrics", 404),
])
def test_unknown_lists_and_paths_get_404(store, path, code):
    query = target(store).partition(b"?")[2]
    assert http(store, post(path + b"?" + query))[0] == code
    assert len(store.members(LIST)) == 2


def test_a_list_without_web_base_url_offers_no_one_click(store):
    path = target(store)
    store.set(LIST, web_base_url="")
    assert http(store, post(path))[0] == 404
    assert CAROL in store.members(LIST)


def test_a_prefix_before_lists_is_allowed(store):
    """A reverse proxy may pass its own path prefix on: the last segments count."""
    assert http(store, post(b"/mail" + target(store)))[0] == 200
    assert CAROL not in store.members(LIST)


def test_post_without_one_click_field_is_400(store):
    for body in (b"", b"List-Unsubscribe=Yes", b"unsubscribe=1"):
        code, _, answer = http(store, post(target(store), body))
        assert code == 400 and b"List-Unsubscribe=One-Click" in answer
    assert CAROL in store.members(LIST)


def test_bad_member_is_400_and_other_methods_405(store):
    query = target(store).partition(b"?")[2].replace(b"Carol%40example.org", b"not-an-address")
    assert http(store, post(b"/lists/dev@example.test/unsubscribe?" + query))[0] == 400
    code, _, _ = http(store, b"PUT " + target(store) + b" HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: 0\r\n\r\n")
    assert code == 405
    assert CAROL in store.members(LIST)


def test_a_body_over_the_limit_is_refused_413(store):
    code, headers, _ = http(store, post(target(store), b"List-Unsubscribe=One-Click&x="
                                        + b"a" * 200), max_body=100)
    assert code == 413 and headers["connection"] == "close"
    assert CAROL in store.members(LIST)


def test_web_settings_default_off_and_checked():
    base = {"server": {"domains": ["example.test"]}}
    web = parse(base).web
    assert (web.listen, web.tls, web.max_request_size) == ("", True, 65536)
    assert load().web.listen == ""  # the embedded default.toml: off
    web = parse({**base, "web": {"listen": "tcp:8080:interface=127.0.0.1", "tls": False}}).web
    assert (web.listen, web.tls) == ("tcp:8080:interface=127.0.0.1", False)
    for bad, key in (({"listen": "8080"}, "web.listen"), ({"tls": "yes"}, "web.tls"),
                     ({"max_request_size": 0}, "web.max_request_size"),
                     ({"idle_timeout": -1}, "web.idle_timeout")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse({**base, "web": bad})
