"""RFC 8058 one-click unsubscribe end to end: a real gateway serving [web] over TLS
with its [tls] certificate, a post delivered to a member, the member's copy's
List-Unsubscribe link POSTed with urllib, as a mail client does."""

from __future__ import annotations

import email
import re
import smtplib
import urllib.error
import urllib.request
from email import policy

from conftest import client_context, free_port, port_open, wait_for

LIST = "dev@example.test"
USERS = ("owner@example.test", "alice@example.test", "bob@example.test")


def members(gw) -> list[str]:
    out = gw.cli("list", "members", LIST)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def post(url: str, ctx, body: bytes = b"List-Unsubscribe=One-Click") -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_one_click_unsubscribe_from_a_delivered_copy(make_tls_gateway, ca):
    port = free_port()
    gw = make_tls_gateway(f'[web]\nlisten = "tcp:{port}:interface=127.0.0.1"\n', users=USERS)
    wait_for(lambda: port_open(port), what="the web port")
    for command in (("list", "create", LIST, "--owner", "owner@example.test"),
                    ("list", "set", LIST, f"web_base_url=https://127.0.0.1:{port}"),
                    ("list", "add", LIST, "alice@example.test", "bob@example.test")):
        done = gw.cli(*command)
        assert done.returncode == 0, done.stderr
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=10) as s:
        s.sendmail("alice@example.test", [LIST],
                   b"From: <alice@example.test>\r\nTo: <dev@example.test>\r\n"
                   b"Subject: friday\r\nMessage-ID: <oc1@example.test>\r\n\r\nlet us meet\r\n")
    raw = wait_for(lambda: [m for m in gw.messages("bob@example.test") if b"friday" in m],
                   what="bob's copy")[0]
    copy = email.message_from_bytes(raw, policy=policy.default)
    assert copy["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    links = re.findall(r"<([^>]+)>", str(copy["List-Unsubscribe"]))
    assert links[1] == "mailto:dev-leave@example.test"
    url = links[0]
    assert url.startswith(f"https://127.0.0.1:{port}/lists/dev@example.test/unsubscribe?")
    assert "bob%40example.test" in url  # bob's own link, not alice's
    ctx = client_context(ca)

    # A link scanner's GET: a page with the button, and bob stays.
    with urllib.request.urlopen(url, context=ctx, timeout=10) as page:
        assert page.status == 200 and b'<form method="post">' in page.read()
    # A tampered signature, and bob's link turned on alice: 403, nobody leaves.
    forged = url[:-1] + ("0" if url[-1] != "0" else "1")
    assert post(forged, ctx)[0] == 403
    assert post(url.replace("bob%40", "alice%40"), ctx)[0] == 403
    assert members(gw) == ["alice@example.test", "bob@example.test"]

    code, text = post(url, ctx)
    assert code == 200, text
    assert "bob@example.test has been unsubscribed from dev@example.test" in text
    assert members(gw) == ["alice@example.test"]
    assert "bob@example.test unsubscribed (one-click from 127.0.0.1)" in gw.log_text()
