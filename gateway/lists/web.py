"""RFC 8058 one-click unsubscription: the web endpoint behind each personal copy's
List-Unsubscribe https link (posting.one_click_url), with twisted.web.

Where it sits: beside the flow, like the metrics endpoint. service.py serves
site() on [web] listen, over TLS with the [tls] certificate or in plaintext
behind a reverse proxy that terminates TLS ([web] tls). It reads the list
store, and takes a member off through requests.unsubscribe: the same call a
confirmed unsubscribe by mail makes. Store calls block (SQLite, fsync), so
they run in a pool thread (run_blocking).

    <web_base_url>/lists/<list address>/unsubscribe?member=<address>&sig=<hmac>

  POST, body List-Unsubscribe=One-Click (application/x-www-form-urlencoded or
        multipart/form-data, RFC 8058 3.2): the member is off at once, 200.
  GET   a small page whose button makes that POST; nothing changes. Mail
        scanners and link previews fetch every link they see (RFC 8058 1).
  403   a signature that is missing or not the list's for that member;
  404   an unknown list, or one without web_base_url (it offers no link);
  400   a POST without List-Unsubscribe=One-Click, a malformed address;
  405   other methods; 413 a body over [web] max_request_size.
The path may carry a prefix (a reverse proxy's); only its last three segments
count. Names from the network are looked up in SQLite by value and checked
for syntax first; none becomes a file name.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from gateway.lists.posting import check_one_click
from gateway.lists.requests import unsubscribe
from gateway.lists.store import ListStore, normalize
from gateway.metrics_web import QuietSite

log = Logger()

_SIGNATURE = re.compile(r"[0-9a-fA-F]{32}")
# What every answer carries: never cached (it is personal), never framed (a button
# under someone else's page), and the URL (member and signature) never passed on.
_HEADERS = {
    b"cache-control": b"no-store",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
    b"content-security-policy": b"default-src 'none'; form-action 'self'; "
                                b"frame-ancestors 'none'",
    b"x-content-type-options": b"nosniff",
}

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Unsubscribe</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body>
<p>Unsubscribe <b>{member}</b> from the list <b>{list}</b>?</p>
<form method="post">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button>
</form>
</body></html>
"""


class Answer(Exception):
    """An HTTP answer other than the normal one: code and a line of text."""

    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.code = code
        self.text = text


def parse_target(postpath: list[bytes], uri: bytes) -> tuple[str, str, str]:
    """(list address, member, signature) of a one-click URL, or Answer(400/403/404)."""
    if len(postpath) < 3 or postpath[-3] != b"lists" or postpath[-1] != b"unsubscribe":
        raise Answer(404, "Not found.")
    try:
        address = normalize(postpath[-2].decode("utf-8")).lower()
    except (UnicodeDecodeError, ValueError):
        raise Answer(404, "No such list.") from None
    query = parse_qs(urlsplit(uri).query.decode("latin-1"), keep_blank_values=True)
    members, signatures = query.get("member", []), query.get("sig", [])
    if len(signatures) != 1 or not _SIGNATURE.fullmatch(signatures[0]):
        raise Answer(403, "This unsubscribe link is not valid (no or a bad signature).")
    if len(members) != 1:
        raise Answer(400, "The link names no member.")
    try:
        # parse_qs decoded %XX as latin-1: back to the bytes, then UTF-8 (RFC 6531).
        member = normalize(members[0].encode("latin-1").decode("utf-8"))
    except (UnicodeError, ValueError):
        raise Answer(400, "The link's member is not an address.") from None
    return address, member, signatures[0]


def is_one_click(args: dict[bytes, list[bytes]]) -> bool:
    """The POST's form says List-Unsubscribe=One-Click (RFC 8058 3.1)."""
    return args.get(b"List-Unsubscribe") == [b"One-Click"]


class OneClick(resource.Resource):
    """Every path of the site: the one-click URLs, and 404 for anything else."""

    isLeaf = True

    def __init__(self, store: ListStore, run_blocking: Callable[..., defer.Deferred]):
        super().__init__()
        self.store = store
        self.run_blocking = run_blocking

    def render(self, request: Any) -> Any:
        # Not Resource.render's render_<METHOD> dispatch: its 405 page is a
        # deprecated class (a warning per request), and this one answers plainly.
        if request.method in (b"GET", b"HEAD"):
            return self._answer(request, post=False)
        if request.method == b"POST":
            return self._answer(request, post=True)
        request.setHeader(b"allow", b"GET, HEAD, POST")
        return _text(request, 405, "Method not allowed.")

    def _answer(self, request: Any, post: bool) -> Any:
        for name, value in _HEADERS.items():
            request.setHeader(name, value)
        try:
            address, member, signature = parse_target(request.postpath, request.uri)
            if post and not is_one_click(request.args):
                raise Answer(400, "Expected the form field List-Unsubscribe=One-Click "
                                  "(RFC 8058).")
        except Answer as e:
            return _text(request, e.code, e.text)
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = self.run_blocking(self._act, address, member, signature, post,
                              _client(request))

        def done(result: tuple[int, str, str]) -> None:
            code, kind, body = result
            if gone:
                return
            request.setResponseCode(code)
            request.setHeader(b"content-type", kind.encode())
            request.write(body.encode("utf-8"))
            request.finish()

        def failed(failure) -> None:
            log.failure("one-click unsubscribe for {list}", failure, list=address)
            if not gone:
                request.setResponseCode(500)
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                request.write(b"Internal error; nothing was changed.\n")
                request.finish()

        d.addCallback(done).addErrback(failed)
        return server.NOT_DONE_YET

    def _act(self, address: str, member: str, signature: str, post: bool, client: str
             ) -> tuple[int, str, str]:
        """(code, content type, body); in a pool thread."""
        plain = "text/plain; charset=utf-8"
        mlist = self.store.get(address)
        if mlist is None or not mlist.web_base_url:
            return 404, plain, "No such list.\n"
        if not check_one_click(mlist, member, signature):
            log.info("list {list}: one-click unsubscribe of {member} from {client} refused: "
                     "bad signature", list=address, member=member, client=client)
            return 403, plain, "This unsubscribe link is not valid.\n"
        if not post:
            return 200, "text/html; charset=utf-8", PAGE.format(
                member=html.escape(member), list=html.escape(mlist.address))
        left = unsubscribe(self.store, mlist.address, member, f"one-click from {client}")
        if left:
            return 200, plain, f"{member} has been unsubscribed from {mlist.address}.\n"
        return 200, plain, f"{member} is not subscribed to {mlist.address}.\n"


def _text(request: Any, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return (text + "\n").encode("utf-8")


def _client(request: Any) -> str:
    peer = request.getClientAddress()
    return getattr(peer, "host", None) or str(peer)


class _Request(server.Request):
    """A request whose body may not exceed max_body bytes: a one-click POST is a few
    dozen, so more is refused with 413 and the connection closed, not buffered."""

    max_body = 65536
    _refused = False

    def gotLength(self, length: int | None) -> None:  # noqa: N802 (Twisted's name)
        self._seen = 0
        if length is not None and length > self.max_body:
            self._refuse()
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        if self._refused:
            return
        self._seen += len(data)
        if self._seen > self.max_body:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # noqa: N802
        if not self._refused:
            super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._refused = True
        transport = self.channel.transport
        transport.write(b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\n"
                        b"Content-Type: text/plain\r\nContent-Length: 15\r\n\r\n"
                        b"Body too large\n")
        transport.loseConnection()


def site(store: ListStore, run_blocking: Callable[..., defer.Deferred], *,
         max_body: int = 65536, timeout: float = 60.0) -> server.Site:
    """The one-click site. No access log: its URLs carry members' addresses; the
    unsubscriptions themselves are logged (requests.unsubscribe)."""
    request = type("Request", (_Request,), {"max_body": max_body})
    web = QuietSite(OneClick(store, run_blocking), requestFactory=request, timeout=timeout)
    web.noisy = False  # also when wrapped in TLS: no "Starting factory" lines
    return web
