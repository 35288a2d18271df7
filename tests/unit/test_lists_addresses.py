"""List addresses (gateway/lists/addresses.py): roles, VERP round trip."""

import pytest

from gateway.lists.addresses import ListAddress, classify, role_address, verp_sender

NAMES = {"dev@example.test", "dev-team@example.test", "announce-request@example.test"}


@pytest.mark.parametrize("local, expected", [
    ("dev", ListAddress("dev@example.test", "post")),
    ("DEV", ListAddress("dev@example.test", "post")),
    ("dev-request", ListAddress("dev@example.test", "request")),
    ("dev-owner", ListAddress("dev@example.test", "owner")),
    ("dev-bounces", ListAddress("dev@example.test", "bounces")),
    ("dev-join", ListAddress("dev@example.test", "join")),
    ("dev-subscribe", ListAddress("dev@example.test", "join")),
    ("dev-leave", ListAddress("dev@example.test", "leave")),
    ("Dev-Unsubscribe", ListAddress("dev@example.test", "leave")),
    ("dev-team", ListAddress("dev-team@example.test", "post")),
    ("dev-team-request", ListAddress("dev-team@example.test", "request")),
    # a list whose own name ends like a role is that list, not a role of another
    ("announce-request", ListAddress("announce-request@example.test", "post")),
    ("dev-bounces+alice=example.org",
     ListAddress("dev@example.test", "bounces", "alice@example.org")),
    ("dev-bounces+Al.ice+tag=Example.ORG",
     ListAddress("dev@example.test", "bounces", "Al.ice+tag@example.org")),
    ("dev-bounces+a=b=c.example", ListAddress("dev@example.test", "bounces", "a=b@c.example")),
    ("dev-bounces+junk", ListAddress("dev@example.test", "bounces")),
    ("dev-request+x", None),
    ("dev-admin", None),
    ("devs", None),
    ("other-request", None),
    ("bob", None),
])
def test_classify(local, expected):
    assert classify(local, "Example.TEST", NAMES) == expected


def test_other_domain_is_not_the_list():
    assert classify("dev", "example.org", NAMES) is None


@pytest.mark.parametrize("member", [
    "alice@example.org", "Bob.Smith+lists@Mail.Example.COM", "x=y@example.net", "o'hara@ex.ie",
])
def test_verp_round_trip(member):
    sender = verp_sender("dev@example.test", member)
    local, _, domain = sender.rpartition("@")
    assert domain == "example.test"
    found = classify(local, domain, NAMES)
    assert found.list == "dev@example.test" and found.role == "bounces"
    mlocal, _, mdomain = member.rpartition("@")
    assert found.member == f"{mlocal}@{mdomain.lower()}"


def test_verp_sender_form_and_fallbacks():
    assert verp_sender("dev@example.test", "alice@Example.ORG") == \
        "dev-bounces+alice=example.org@example.test"
    long_member = "a" * 50 + "@example.org"
    assert verp_sender("dev@example.test", long_member) == "dev-bounces@example.test"
    assert verp_sender("dev@example.test", '"odd user"@example.org') == \
        "dev-bounces@example.test"


def test_role_address():
    assert role_address("dev@example.test", "request") == "dev-request@example.test"
    assert role_address("dev@example.test", "post") == "dev@example.test"
