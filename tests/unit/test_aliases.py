"""resolve/aliases.py and the router's expansion: aliases(5) as sendmail users know it."""

from __future__ import annotations

import pytest

from gateway.errors import MailError
from gateway.resolve.aliases import AliasOptions, parse
from gateway.resolve.router import Router


class Users:
    def __init__(self, *names: str):
        self.names = set(names)

    def exists(self, address: str) -> bool:
        return address in self.names


def table(text: str, files: dict[str, str] | None = None, **options):
    def read(path: str) -> str:
        if files and path in files:
            return files[path]
        raise FileNotFoundError(2, "No such file or directory")

    return parse(text, "etc/aliases", read=read, options=AliasOptions(**options),
                 domains=["example.test", "other.test"])


def router(text: str, *users: str, files=None, **kw) -> Router:
    aliases, faults = table(text, files)
    assert faults == []
    return Router(["example.test", "other.test"], Users(*users), aliases=aliases, **kw)


def test_format_comments_continuations_quotes_and_case():
    aliases, faults = table(
        "# role addresses\n"
        "Team: alice,\n"
        "   bob@example.test, \"carol@example.org\"\n"
        "\n"
        "info: \"|/usr/bin/prog --flag x, y\"\n"
        "archive: /var/mail/archive\n"
        "abuse@other.test: \\alice\n")
    assert faults == []
    assert [(t.kind, t.value) for t in aliases.entries["team"]] == [
        ("name", "alice"), ("address", "bob@example.test"), ("address", "carol@example.org")]
    assert [(t.kind, t.value) for t in aliases.entries["info"]] == [
        ("program", "/usr/bin/prog --flag x, y")]
    assert aliases.entries["archive"][0].kind == "file"
    assert aliases.lookup("ABUSE", "other.test")[0] == "abuse@other.test"
    assert aliases.lookup("abuse", "example.test") is None
    assert aliases.entries["team"][2].source == "etc/aliases:2"


def test_faults_name_file_and_line():
    _, faults = table("ok: alice\n"
                      "bad line without colon\n"
                      "x: relative/path\n"
                      "y: \"|\"\n"
                      "ok: bob\n"
                      "z@elsewhere.test: alice\n"
                      "w: :include:relative\n")
    assert faults == [
        "etc/aliases:2: expected \"name: target, ...\", not 'bad line without colon'",
        "etc/aliases:3: unknown target 'relative/path': a file target needs an absolute path",
        "etc/aliases:3: alias 'x' has no usable target",
        "etc/aliases:4: empty command after |",
        "etc/aliases:4: alias 'y' has no usable target",
        "etc/aliases:5: alias 'ok' is defined twice (first at line 1)",
        "etc/aliases:6: alias 'z@elsewhere.test': elsewhere.test is not a local domain "
        "(server.domains)",
        "etc/aliases:7: :include: needs an absolute path, not 'relative'",
        "etc/aliases:7: alias 'w' has no usable target",
    ]


def test_include_refuses_programs_and_files_unless_allowed():
    files = {"/etc/staff": "# staff\nalice\nbob, carol@example.org\n|/bin/evil\n/tmp/file\n"}
    aliases, faults = table("staff: :include:/etc/staff\n", files)
    assert [t.value for t in aliases.entries["staff"]] == ["alice", "bob", "carol@example.org"]
    assert faults == [
        "/etc/staff:4: program target '|/bin/evil' not allowed in an :include: file "
        "(aliases.allow_include_commands)",
        "/etc/staff:5: file target '/tmp/file' not allowed in an :include: file "
        "(aliases.allow_include_files)"]
    aliases, faults = table("staff: :include:/etc/staff\n", files, include_commands=True,
                            include_files=True)
    assert faults == [] and [t.kind for t in aliases.entries["staff"]][-2:] == [
        "program", "file"]
    assert aliases.files == ("etc/aliases", "/etc/staff")


def test_include_of_missing_file_and_self_inclusion_are_faults():
    _, faults = table("a: :include:/etc/nothere\n")
    assert faults[0] == "etc/aliases:1: :include: /etc/nothere: No such file or directory"
    _, faults = table("a: :include:/etc/loop\n", {"/etc/loop": ":include:/etc/loop\n"})
    assert "includes itself" in faults[0]


def test_fan_out_to_mailboxes_and_remote_addresses():
    r = router("team: alice, bob, carol@example.org\n", "alice@example.test",
               "bob@example.test")
    routes = r.expand("team@example.test")
    assert [(x.kind, x.mailbox or x.address) for x in routes] == [
        ("local", "alice@example.test"), ("local", "bob@example.test"),
        ("remote", "carol@example.org")]
    assert all(x.original == "team@example.test" for x in routes)
    assert r.route("TEAM@example.test").kind == "alias"


def test_recursion_duplicates_and_self_reference():
    r = router("all: team, alice\nteam: alice, bob\nbob: bob, carol\n",
               "alice@example.test", "bob@example.test", "carol@example.test")
    got = [x.mailbox for x in r.expand("all@example.test")]
    assert got == ["alice@example.test", "bob@example.test", "carol@example.test"]


def test_loop_without_a_mailbox_is_a_554():
    r = router("a: b\nb: a\n")
    with pytest.raises(MailError) as e:
        r.expand("a@example.test")
    assert (e.value.code, e.value.enhanced) == (554, "5.4.6")
    assert "a -> b -> a" in e.value.text


def test_depth_is_limited():
    text = "".join(f"a{i}: a{i + 1}\n" for i in range(30)) + "a30: alice\n"
    r = router(text, "alice@example.test", max_depth=10)
    with pytest.raises(MailError) as e:
        r.expand("a0@example.test")
    assert "deeper than 10" in e.value.text


def test_owner_becomes_the_sender_of_the_expansion():
    r = router("dev: alice, \"|/bin/cat\"\nowner-dev: alice\n", "alice@example.test")
    routes = r.expand("dev@example.test")
    assert {x.sender for x in routes} == {"owner-dev@example.test"}
    plain = router("dev: alice\n", "alice@example.test").expand("dev@example.test")
    assert plain[0].sender is None


def test_program_and_file_routes_carry_options_and_extension():
    r = router("info: \"|/usr/bin/bot\", /var/mail/info\n", shell=["info"], reply=["info"])
    program, file = r.expand("info+help@example.test")
    assert (program.kind, program.command, program.options) == (
        "program", "/usr/bin/bot", ("shell", "reply"))
    assert (program.address, program.extension) == ("info+help@example.test", "help")
    assert (file.kind, file.path) == ("file", "/var/mail/info")


def test_unknown_target_inside_an_alias_is_an_error_route_not_a_failure_of_all():
    r = router("team: alice, ghost\n", "alice@example.test")
    routes = r.expand("team@example.test")
    assert [x.kind for x in routes] == ["local", "error"]
    assert routes[1].error.startswith("550 5.1.1 <ghost@example.test>")


def test_subaddress_reaches_the_user_with_its_folder():
    r = router("", "alice@example.test")
    (route,) = r.expand("alice+lists@example.test")
    assert (route.kind, route.mailbox, route.folder) == ("local", "alice@example.test", "lists")
    off = router("", "alice@example.test", delimiter="")
    with pytest.raises(MailError):
        off.expand("alice+lists@example.test")


@pytest.mark.parametrize("address", [
    '"|/bin/sh"@example.test', "/etc/passwd@example.test", '"/etc/passwd"@example.test',
    '"../../etc/x"@example.test', "alice+../../x@example.test", '":include:/etc/x"@example.test',
    '"|cmd"+x@example.test', "|cmd@example.test",
])
def test_addresses_from_the_network_never_become_commands_or_files(address):
    r = router("info: \"|/usr/bin/bot\"\n", "alice@example.test")
    try:
        routes = r.expand(address)
    except MailError as e:
        assert e.code in (550, 553, 501)
        return
    assert all(x.kind == "local" and x.mailbox == "alice@example.test" for x in routes)
