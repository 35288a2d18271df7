"""SPF, DKIM, DMARC and the verdict of gateway/verify/, against a fake resolver (no sockets)."""

from __future__ import annotations

import base64

import dkim
import pytest
from fake_dns import FakeResolver
from twisted.internet import defer
from twisted.internet.task import Clock

from gateway.config import InboundAuthSettings
from gateway.sign.keys import generate, txt_record
from gateway.verify import results
from gateway.verify.checker import GRACE, AuthFacts, InboundAuth, from_domains
from gateway.verify.dkimcheck import verify_all
from gateway.verify.dmarc import evaluate, parse_record, published_policy
from gateway.verify.dnsquery import DnsQuery
from gateway.verify.orgdomain import OrgDomains
from gateway.verify.spf import SpfResult, check_spf

ORGS = OrgDomains()
MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.test\r\n"
           b"Subject: hello\r\nMessage-ID: <1@example.org>\r\n\r\nHello Bob.\r\n")


def spf(records: dict, sender: str = "a@example.org", ip: str = "192.0.2.9",
        helo: str = "mail.example.org") -> SpfResult:
    return check_spf(DnsQuery(FakeResolver(records), 5), ip, sender, helo, "mx.example.test")


def txt(name: str, text: str) -> dict:
    """One TXT record, in strings of at most 200 octets (RFC 7208 3.3: joined again)."""
    return {(name, "TXT"): [" ".join(f'"{text[i:i + 200]}"' for i in range(0, len(text), 200))]}


# --- SPF (RFC 7208) -----------------------------------------------------------------


@pytest.mark.parametrize("record, expected", [
    ("v=spf1 ip4:192.0.2.0/24 -all", "pass"),
    ("v=spf1 ip4:198.51.100.1 -all", "fail"),
    ("v=spf1 ~all", "softfail"),
    ("v=spf1 ?all", "neutral"),
    ("v=spf1 ip4:192.0.2.0/24 moo -all", "permerror"),
])
def test_spf_results(record, expected):
    result = spf(txt("example.org", record))
    assert result.result == expected
    assert result.identity == "mailfrom" and result.domain == "example.org"
    assert result.received_spf.lower().startswith(expected)
    assert "client-ip=192.0.2.9" in result.received_spf


def test_spf_none_without_record():
    assert spf({("example.org", "MX"): ["10 mx.example.org."]}).result == "none"


def test_spf_temperror_when_dns_fails():
    assert spf({("example.org", "TXT"): "SERVFAIL"}).result == "temperror"
    assert spf({("example.org", "TXT"): "TIMEOUT"}).result == "temperror"


def test_spf_null_sender_checks_helo():
    result = spf(txt("mail.example.org", "v=spf1 -all"), sender="")
    assert (result.result, result.identity, result.domain) == ("fail", "helo",
                                                              "mail.example.org")


def test_spf_mechanisms_through_dns():
    records = {**txt("example.org", "v=spf1 include:_spf.example.org a mx -all"),
               **txt("_spf.example.org", "v=spf1 ip4:203.0.113.0/24 -all"),
               ("example.org", "A"): ["198.51.100.7"],
               ("example.org", "MX"): ["10 mx.example.org."],
               ("mx.example.org", "A"): ["192.0.2.9"]}
    assert spf(records).result == "pass"  # through mx
    assert spf(records, ip="203.0.113.5").result == "pass"  # through include
    assert spf(records, ip="198.51.100.7").result == "pass"  # through a
    assert spf(records, ip="198.51.100.8").result == "fail"


def test_spf_ten_dns_mechanisms_allowed_eleven_permerror():
    def chain(n: int) -> dict:
        records = txt("example.org", " ".join(["v=spf1"] + [f"include:i{k}.example.org"
                                                             for k in range(n)] + ["-all"]))
        for k in range(n):
            records.update(txt(f"i{k}.example.org", "v=spf1 ip4:203.0.113.1 -all"))
        return records

    assert spf(chain(10)).result == "fail"
    result = spf(chain(11))
    assert result.result == "permerror"
    assert "lookups" in result.text.lower()


def test_spf_third_void_lookup_permerror():
    def voids(n: int) -> str:
        return " ".join(["v=spf1"] + [f"a:void{k}.example.org" for k in range(n)] + ["-all"])

    assert spf(txt("example.org", voids(2))).result == "fail"
    assert spf(txt("example.org", voids(3))).result == "permerror"


# --- DKIM (RFC 6376, RFC 8463) ----------------------------------------------------------


@pytest.fixture(scope="module")
def keys():
    made = {}
    for algorithm in ("ed25519", "rsa"):
        private, public = generate(algorithm)
        made[algorithm] = (private, txt_record(algorithm, public))
    return made


def signed(keys, algorithm="ed25519", domain="example.org", selector="s1", message=MESSAGE,
           length=False) -> bytes:
    private = keys[algorithm][0]
    sig = dkim.sign(message, selector.encode(), domain.encode(), private,
                    canonicalize=(b"relaxed", b"relaxed"), length=length,
                    signature_algorithm=(b"ed25519-sha256" if algorithm == "ed25519"
                                         else b"rsa-sha256"),
                    include_headers=[b"from", b"to", b"subject", b"message-id"])
    return sig + message


def key_records(keys, algorithm="ed25519", domain="example.org", selector="s1") -> dict:
    return txt(f"{selector}._domainkey.{domain}", keys[algorithm][1])


def dkim_results(message: bytes, records: dict):
    return verify_all(message, DnsQuery(FakeResolver(records), 5))


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa"])
def test_dkim_pass(keys, algorithm):
    [r] = dkim_results(signed(keys, algorithm), key_records(keys, algorithm))
    assert (r.result, r.domain, r.selector) == ("pass", "example.org", "s1")
    assert r.algorithm == ("ed25519-sha256" if algorithm == "ed25519" else "rsa-sha256")


def test_dkim_every_signature_judged(keys):
    message = signed(keys, "rsa", selector="r1", message=signed(keys, "ed25519"))
    records = {**key_records(keys, "ed25519"), **key_records(keys, "rsa", selector="r1")}
    assert [r.result for r in dkim_results(message, records)] == ["pass", "pass"]
    # the RSA key gone: only that signature fails to verify
    assert [r.result for r in dkim_results(message, key_records(keys))] == ["permerror",
                                                                            "pass"]


def test_dkim_body_modified_fails(keys):
    message = signed(keys).replace(b"Hello Bob.", b"Pay Mallory.")
    [r] = dkim_results(message, key_records(keys))
    assert r.result == "fail" and "body hash" in r.reason


def test_dkim_expired_fails(keys):
    message = signed(keys).replace(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; x=1000000000;")
    [r] = dkim_results(message, key_records(keys))
    assert r.result == "fail" and "x=" in r.reason


def test_dkim_bad_key_fails(keys):
    other_private, other_public = generate("ed25519")
    records = {("s1._domainkey.example.org", "TXT"): [
        f'"{txt_record("ed25519", other_public)}"']}
    assert dkim_results(signed(keys), records)[0].result == "fail"
    garbage = {("s1._domainkey.example.org", "TXT"): ['"v=DKIM1; k=rsa; p=bm90IGEga2V5"']}
    assert dkim_results(signed(keys, "rsa"), garbage)[0].result == "fail"


def test_dkim_key_lookup_failure_is_temperror(keys):
    records = {("s1._domainkey.example.org", "TXT"): "TIMEOUT"}
    assert dkim_results(signed(keys), records)[0].result == "temperror"


def test_dkim_body_length_short_of_body_is_only_policy(keys):
    message = signed(keys, length=True)
    assert dkim_results(message, key_records(keys))[0].result == "pass"  # l= whole body
    appended = message + b"\r\nClick here: http://evil.example/\r\n"
    [r] = dkim_results(appended, key_records(keys))
    assert r.result == "policy" and "l=" in r.reason


def test_dkim_unparsable_signature_neutral():
    message = b"DKIM-Signature: garbage\r\n" + MESSAGE
    assert dkim_results(message, {})[0].result == "neutral"


# --- DMARC (RFC 7489) ---------------------------------------------------------------


def spf_pass(domain: str) -> SpfResult:
    return SpfResult("pass", "mailfrom", domain, "", "")


def dmarc(records: dict, domain="example.org", spf_result=None, dkims=(), rng=lambda: 0.0):
    return evaluate(DnsQuery(FakeResolver(records), 5), domain, spf_result, list(dkims), ORGS,
                    rng)


def test_dmarc_record_parsing():
    assert parse_record("v=DMARC1; p=reject; adkim=s; pct=20").pct == 20
    assert parse_record("v=DMARC1; p=bogus") is None
    assert parse_record("p=reject; v=DMARC1") is None  # v= must come first
    assert parse_record("v=spf1 -all") is None


def test_dmarc_none_without_record():
    assert dmarc({}).result == "none"


def test_dmarc_fail_and_pass_by_aligned_identifier(keys):
    records = txt("_dmarc.example.org", "v=DMARC1; p=reject")
    fail = dmarc(records, spf_result=spf_pass("other.net"))
    assert (fail.result, fail.policy) == ("fail", "reject")
    # relaxed SPF alignment: a subdomain's MAIL FROM aligns with the From domain
    assert dmarc(records, spf_result=spf_pass("bounces.example.org")).result == "pass"
    [good] = dkim_results(signed(keys), key_records(keys))
    assert dmarc(records, dkims=[good]).result == "pass"


def test_dmarc_strict_alignment():
    records = txt("_dmarc.example.org", "v=DMARC1; p=quarantine; aspf=s")
    assert dmarc(records, spf_result=spf_pass("bounces.example.org")).result == "fail"
    assert dmarc(records, spf_result=spf_pass("example.org")).result == "pass"


def test_dmarc_subdomain_policy_from_organizational_domain():
    records = txt("_dmarc.example.co.uk", "v=DMARC1; p=none; sp=reject")
    result = dmarc(records, domain="news.example.co.uk")
    assert (result.result, result.policy) == ("fail", "reject")
    assert dmarc(records, domain="example.co.uk").policy == "none"


def test_dmarc_np_for_a_subdomain_that_does_not_exist():
    # RFC 9091: np= for a From domain with NXDOMAIN for A, AAAA and MX; sp= otherwise.
    records = txt("_dmarc.example.org", "v=DMARC1; p=none; sp=quarantine; np=reject")
    records[("real.example.org", "MX")] = ["10 mx.example.org."]
    assert dmarc(records, domain="ghost.example.org").policy == "reject"
    assert dmarc(records, domain="real.example.org").policy == "quarantine"
    assert dmarc(records, domain="example.org").policy == "none"
    # without np=, a non-existent subdomain gets sp=, then p=
    assert dmarc(txt("_dmarc.example.org", "v=DMARC1; p=reject; sp=none"),
                 domain="ghost.example.org").policy == "none"
    assert dmarc(txt("_dmarc.example.org", "v=DMARC1; p=reject"),
                 domain="ghost.example.org").policy == "reject"


def test_dmarc_np_existence_lookups_only_when_the_policy_is_applied():
    records = txt("_dmarc.example.org", "v=DMARC1; p=none; np=reject")
    resolver = FakeResolver(records)
    result = evaluate(DnsQuery(resolver, 5), "ghost.example.org",
                      spf_pass("ghost.example.org"), [], ORGS)
    assert result.result == "pass"
    assert [q for q in resolver.queries if q[1] != "TXT"] == []
    records[("ghost.example.org", "A")] = "SERVFAIL"
    result = dmarc(records, domain="ghost.example.org")
    assert (result.result, result.policy) == ("temperror", "reject")


def test_dmarc_published_policy_is_the_one_lists_ask():
    records = txt("_dmarc.example.org", "v=DMARC1; p=reject; sp=none; np=quarantine")
    assert published_policy(DnsQuery(FakeResolver(records), 5), "example.org", ORGS) == "reject"
    assert published_policy(DnsQuery(FakeResolver(records), 5), "ghost.example.org",
                            ORGS) == "quarantine"
    records[("a.example.org", "A")] = ["192.0.2.1"]
    assert published_policy(DnsQuery(FakeResolver(records), 5), "a.example.org", ORGS) == "none"
    assert published_policy(DnsQuery(FakeResolver({}), 5), "example.net", ORGS) == "none"


def test_dmarc_pct_applies_the_milder_policy_outside_the_sample():
    records = txt("_dmarc.example.org", "v=DMARC1; p=reject; pct=10")
    assert dmarc(records, rng=lambda: 0.05).policy == "reject"
    assert dmarc(records, rng=lambda: 0.5).policy == "quarantine"


def test_dmarc_dns_failure_is_temperror():
    assert dmarc({("_dmarc.example.org", "TXT"): "SERVFAIL"}).result == "temperror"


def test_organizational_domain_from_the_public_suffix_list(tmp_path):
    assert ORGS.org("a.b.example.co.uk") == "example.co.uk"
    assert ORGS.aligned("mail.example.org", "example.org", strict=False)
    assert not ORGS.aligned("example.org", "example.com", strict=False)
    # a newer list from a file: it knows a suffix the packaged one may not
    psl = tmp_path / "psl.dat"
    psl.write_text("// test\norg\nexample.org\n")
    assert OrgDomains(str(psl)).org("a.b.example.org") == "b.example.org"


# --- Authentication-Results (RFC 8601) ------------------------------------------------


def test_strip_claims_only_our_authserv_id():
    header = (b"Authentication-Results: MX.example.test; dkim=pass header.d=bank.test\r\n"
              b"Received: from x\r\n"
              b"authentication-results: (forged)\r\n mx.example.test;\r\n spf=pass\r\n"
              b"Authentication-Results: other.test; spf=fail\r\n\r\n")
    kept, dropped = results.strip_claims(header, "mx.example.test")
    assert dropped == 2
    assert kept == b"Received: from x\r\nAuthentication-Results: other.test; spf=fail\r\n\r\n"


def test_authentication_results_field(keys):
    [good] = dkim_results(signed(keys), key_records(keys))
    text = results.authentication_results(
        "mx.example.test", spf_pass("example.org"), [good],
        dmarc(txt("_dmarc.example.org", "v=DMARC1; p=reject"), dkims=[good])).decode()
    assert text.startswith("Authentication-Results: mx.example.test;\r\n\t")
    assert "spf=pass smtp.mailfrom=example.org" in text
    assert "dkim=pass header.d=example.org header.s=s1 header.a=ed25519-sha256" in text
    assert "dmarc=pass (p=reject dis=none) header.from=example.org" in text


def test_from_domains():
    assert from_domains(b"From: a@X.org, \"b\" <b@y.org>\r\nTo: c@z\r\n\r\n") == ["x.org",
                                                                                 "y.org"]
    assert from_domains(b"To: c@z\r\n\r\n") == []


# --- the verdict ------------------------------------------------------------------------


def checker(records: dict, clock=None, run_blocking=None, **settings) -> InboundAuth:
    def now(f, *args):
        return defer.maybeDeferred(f, *args)

    return InboundAuth(InboundAuthSettings(**settings), "mx.example.test",
                       FakeResolver(records), run_blocking or now, clock or Clock(), ORGS)


def verdict(auth: InboundAuth, message=MESSAGE, sender="a@example.org", skip=False):
    out = []
    auth.check(AuthFacts("192.0.2.9", "mail.example.org", sender), message, skip).addBoth(
        out.append)
    return out[0]


def test_verdict_spf_fail_rejects_or_marks():
    records = txt("example.org", "v=spf1 -all")
    v = verdict(checker(records))
    assert (v.refusal.code, v.refusal.enhanced) == (550, "5.7.23")
    v = verdict(checker(records, spf_fail="mark"))
    assert v.refusal is None
    assert b"Received-SPF: Fail" in v.headers and b"spf=fail" in v.headers


def test_verdict_dmarc_reject_quarantine_and_mark():
    records = {**txt("example.org", "v=spf1 ?all"),
               **txt("_dmarc.example.org", "v=DMARC1; p=reject")}
    assert verdict(checker(records)).refusal.enhanced == "5.7.1"
    moved = verdict(checker(records, dmarc_reject="quarantine"))
    assert (moved.refusal, moved.folder) == (None, "Junk")
    marked = verdict(checker(records, dmarc_reject="mark"))
    assert (marked.refusal, marked.folder) == (None, "")
    assert b"dmarc=fail (p=reject dis=reject)" in marked.headers
    records.update(txt("_dmarc.example.org", "v=DMARC1; p=quarantine"))
    assert verdict(checker(records)).folder == "Junk"
    assert verdict(checker(records, dmarc_quarantine="mark")).folder == ""


def test_verdict_dns_trouble_under_reject_is_451():
    records = {("example.org", "TXT"): "TIMEOUT",
               **txt("_dmarc.example.org", "v=DMARC1; p=reject")}
    v = verdict(checker(records))
    assert (v.refusal.code, v.refusal.enhanced) == (451, "4.7.1")
    # with p=none the same trouble only shows in the header
    records.update(txt("_dmarc.example.org", "v=DMARC1; p=none"))
    v = verdict(checker(records))
    assert v.refusal is None and b"spf=temperror" in v.headers


def test_verdict_rewrite_replaces_forged_results():
    forged = b"Authentication-Results: mx.example.test; dmarc=pass\r\n" + MESSAGE
    v = verdict(checker(txt("example.org", "v=spf1 ip4:192.0.2.9 -all")), forged)
    out = v.rewrite(b"Received: by us\r\n" + forged)
    assert out.count(b"Authentication-Results:") == 1
    assert out.startswith(b"Authentication-Results: mx.example.test;\r\n\tspf=pass")
    assert b"dmarc=pass\r\n" not in out
    # skipped (a trusted or authenticated client): no checks, forged results still go
    skipped = verdict(checker({}), forged, skip=True)
    assert skipped.headers == b"" and b"Authentication-Results" not in skipped.rewrite(forged)


def test_verdict_when_the_thread_never_answers():
    clock = Clock()
    auth = checker({}, clock=clock, run_blocking=lambda f, *a: defer.Deferred(), timeout=20)
    out = []
    auth.check(AuthFacts("192.0.2.9", "h", "a@example.org"), MESSAGE).addBoth(out.append)
    clock.advance(20 + GRACE - 1)
    assert out == []
    clock.advance(1)
    assert out[0].refusal is None and b"none (checks timed out)" in out[0].headers


def test_dnsquery_budget_spent_is_temperror():
    times = iter([0.0, 30.0])
    query = DnsQuery(FakeResolver(txt("example.org", "v=spf1 -all")), 20,
                     clock=lambda: next(times))
    result = check_spf(query, "192.0.2.9", "a@example.org", "h", "mx")
    assert result.result == "temperror"


def test_key_record_of_rsa_keys_is_usable(keys):
    assert base64.b64decode(keys["rsa"][1].split("p=")[1])


# --- the call site in accept/smtp.py, and the settings -----------------------------------


SPF_FAIL = txt("remote.test", "v=spf1 -all")


def session(records: dict, peer="192.0.2.9", trusted=(), run_blocking=None, **settings):
    from smtp_dialogue import Dialogue

    d = Dialogue(peer=peer, trusted=trusted)
    d.factory.authcheck = checker(records, run_blocking=run_blocking, **settings)
    d.ehlo()
    d.mail("bob@remote.test")
    d.rcpt("alice@example.test")
    return d


def test_smtp_spf_fail_refused_at_mail_from_and_session_goes_on():
    # RFC 7208 2.4: checked at MAIL FROM, refused before any DATA is sent.
    from smtp_dialogue import Dialogue

    d = Dialogue(peer="192.0.2.9")
    d.factory.authcheck = checker({**SPF_FAIL, **txt("good.test", "v=spf1 ip4:192.0.2.9 -all")})
    resolver = d.factory.authcheck.resolver
    d.ehlo()
    d.mail("bob@remote.test", expect=b"550 5.7.23 SPF: remote.test")
    d.rcpt("alice@example.test", expect=b"503")  # no transaction was opened
    d.mail("ann@good.test")  # the session goes on
    d.rcpt("alice@example.test")
    spf_queries = [q for q in resolver.queries if q == ("good.test", "TXT")]
    d.data(b"From: ann@good.test\r\n\r\nhi\r\n")
    # the result of MAIL FROM is the one written at the dot: no second SPF lookup
    assert [q for q in resolver.queries if q == ("good.test", "TXT")] == spf_queries
    [(_, message)] = d.spool.stored
    assert b"spf=pass smtp.mailfrom=good.test" in message and b"Received-SPF: Pass" in message


def test_smtp_spf_at_mail_from_waits_off_the_reactor_and_times_out():
    from smtp_dialogue import Dialogue

    clock = Clock()
    d = Dialogue(peer="192.0.2.9")
    d.factory.authcheck = checker(SPF_FAIL, clock=clock, timeout=20,
                                  run_blocking=lambda f, *a: defer.Deferred())
    d.ehlo()
    assert d.send(b"MAIL FROM:<bob@remote.test>\r\nRCPT TO:<alice@example.test>\r\n") == b""
    clock.advance(20 + GRACE)  # the pool thread never answered: temperror, not refused
    assert d.transport.value().startswith(b"250 2.1.0")


def test_smtp_spf_result_of_an_early_check_reused_at_the_dot():
    auth = checker({**txt("remote.test", "v=spf1 ?all")})
    early = []
    auth.check_sender(AuthFacts("192.0.2.9", "h", "bob@remote.test")).addBoth(early.append)
    assert early[0].result == "neutral"
    failed = SpfResult("fail", "mailfrom", "remote.test", "", "Fail (test)")
    v = []
    auth.check(AuthFacts("192.0.2.9", "h", "bob@remote.test", failed), MESSAGE).addBoth(
        v.append)
    assert b"Received-SPF: Fail (test)" in v[0].headers and v[0].spf is failed


def test_smtp_marked_message_is_spooled_with_results_on_top():
    d = session(SPF_FAIL, spf_fail="mark")
    forged = b"Authentication-Results: mx.example.test; spf=pass\r\n"
    d.data(forged + b"From: bob@remote.test\r\n\r\nhi\r\n")
    [(envelope, message)] = d.spool.stored
    assert message.startswith(b"Authentication-Results: mx.example.test;\r\n\tspf=fail")
    assert message.count(b"Authentication-Results") == 1
    assert b"\r\nReceived-SPF: Fail" in message and b"\r\nReceived: from client.test" in message
    assert envelope.folder == "" and envelope.size == len(message)


def test_smtp_quarantine_marks_the_envelope():
    records = {**txt("remote.test", "v=spf1 ?all"),
               **txt("_dmarc.remote.test", "v=DMARC1; p=quarantine")}
    d = session(records)
    d.data(b"From: bob@remote.test\r\n\r\nhi\r\n")
    assert d.spool.stored[0][0].folder == "Junk"


def test_smtp_trusted_client_not_checked():
    d = session(SPF_FAIL, peer="10.1.2.3", trusted=("10.0.0.0/8",))
    d.data(b"From: bob@remote.test\r\n\r\nhi\r\n")
    assert b"Authentication-Results" not in d.spool.stored[0][1]


def test_inbound_auth_settings_and_faults():
    from gateway.config import parse
    from gateway.errors import ConfigError

    base = {"server": {"domains": ["example.test"]}}
    assert parse(base).inbound_auth.check is True
    s = parse({**base, "inbound_auth": {"spf_fail": "mark", "dmarc_reject": "quarantine",
                                        "timeout": 5}}).inbound_auth
    assert (s.spf_fail, s.dmarc_reject, s.timeout) == ("mark", "quarantine", 5.0)
    with pytest.raises(ConfigError) as e:
        parse({**base, "inbound_auth": {"spf_fail": "drop", "junk_folder": "a/b",
                                        "public_suffix_list": "/nonexistent/psl.dat"}})
    text = str(e.value)
    assert "inbound_auth.spf_fail" in text and "reject, mark" in text
    assert "inbound_auth.junk_folder" in text and "inbound_auth.public_suffix_list" in text


def test_strip_claims_keeps_every_other_byte_with_bare_linefeeds():
    message = (b"Authentication-Results: mx.example.test; spf=pass\n"
               b"Subject: x\n folded\n\nAuthentication-Results: mx.example.test; body\n")
    header, body = results.split_header(message)
    assert body == b"Authentication-Results: mx.example.test; body\n"
    kept, dropped = results.strip_claims(header, "mx.example.test")
    assert (kept, dropped) == (b"Subject: x\n folded\n\n", 1)
    untouched = b"Subject: y\r\nX-A: authentication-results\r\n\r\n"
    assert results.strip_claims(untouched, "mx.example.test") == (untouched, 0)
