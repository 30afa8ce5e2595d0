"""DKIM signing and ARC sealing end to end: posts go in over SMTP, the copies that reach
the smarthost are checked with dkimpy's verifiers, which fetch the public keys from the
test's own DNS server on loopback, where `listserv dkim keygen`'s record is published."""

from __future__ import annotations

import base64
import re
import stat
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization

from listserv import config as config_mod
from listserv import db, list_settings, roster, signing
from listserv.config import ConfigError, DkimConfig
from tests.helpers import (
    LIST,
    assert_one_line_error,
    message,
    published,
    run_listserv,
    write_config,
)

DOMAIN = "lists.example.org"
MEMBERS = ["bob@example.com", "carol@example.net"]


@pytest.fixture
def key(tmp_path: Path, dns_server) -> Path:
    """A key made by keygen, its public half served by the loopback DNS server."""
    made = signing.keygen(DOMAIN, "listserv", tmp_path)
    name, text = published(made.record)
    dns_server.records[name] = [text]
    return made.private_file


@pytest.fixture
def signing_server(make_server, key):
    def start(arc: bool = False):
        return make_server(dkim={"domain": DOMAIN, "selector": "listserv",
                                 "private_key_file": str(key), "arc": arc})
    return start


def copies(sink, count: int) -> list[bytes]:
    sink.wait_for(count)
    return [m.data for m in sink.received]


def tags(data: bytes, field: bytes = b"DKIM-Signature") -> dict[bytes, bytes]:
    """The tags of the topmost such field, whitespace removed."""
    d = dkim.DKIM(data)
    value = next(v for k, v in d.headers if k.lower() == field.lower())
    return dict(dkim.util.parse_tag_value(re.sub(rb"\s+", b"", value)))


def test_every_copy_is_signed_and_verifies_against_the_published_key(
        signing_server, make_list, sink, dns_server):
    make_list(members=MEMBERS, owner=None)
    srv = signing_server()
    srv.send("bob@example.com", [LIST], message())
    got = copies(sink, 2)
    assert got[0] != got[1]  # each member's own unsubscribe link
    for data in got:
        assert dkim.verify(data, dnsfunc=dns_server.txt)
        signature = tags(data)
        assert signature[b"d"] == DOMAIN.encode() and signature[b"s"] == b"listserv"
        assert signature[b"a"] == b"rsa-sha256" and signature[b"c"] == b"relaxed/relaxed"
        signed = signature[b"h"].lower().split(b":")
        for name in (b"from", b"subject", b"date", b"message-id", b"to", b"list-id",
                     b"list-unsubscribe", b"list-unsubscribe-post"):
            assert name in signed
        for name in (b"from", b"subject", b"list-unsubscribe", b"list-unsubscribe-post"):
            assert signed.count(name) == 2  # one field, signed twice (RFC 6376 8.15)
    assert "listserv._domainkey.lists.example.org" in dns_server.queries


@pytest.mark.parametrize("change", [
    (rb"(/unsubscribe/)(.)", rb"\1x\2"),  # another member's link put in
    (rb"Hi all\.", b"Hi ALL."),  # the body
    (rb"Subject: \[Dev\] Hello", b"Subject: [Dev] Hello!"),
    # A second copy of a field added on the way (RFC 6376 8.15): a reader may see it.
    (rb"\A", b"From: Support <help@bank.example>\r\n"),
    (rb"\A", b"Subject: Your account is locked\r\n"),
    (rb"\A", b"List-Unsubscribe: <https://evil.example/u>\r\n"),
    (rb"\A", b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"),
])
def test_a_tampered_copy_fails_verification(signing_server, make_list, sink, dns_server,
                                            change):
    make_list(members=["bob@example.com"], owner=None)
    signing_server().send("bob@example.com", [LIST], message())
    data = copies(sink, 1)[0]
    tampered = re.sub(change[0], change[1], data, count=1)
    assert tampered != data
    assert not dkim.verify(tampered, dnsfunc=dns_server.txt)


def test_notices_are_signed_too(signing_server, make_list, sink, dns_server):
    make_list(owner=None)
    signing_server().send("dan@example.org", ["dev-join@lists.example.org"],
                          message(sender="dan@example.org"))
    data = sink.copies_to("dan@example.org")[0]
    assert dkim.verify(data, dnsfunc=dns_server.txt)


def signed_post(author_key: bytes) -> bytes:
    raw = message(sender="Alice <alice@author.example>").encode()
    return dkim.sign(raw, b"a", b"author.example", author_key,
                     include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]
                     ) + raw


def signatures(data: bytes) -> list[dict[bytes, bytes]]:
    d = dkim.DKIM(data)
    return [dict(dkim.util.parse_tag_value(re.sub(rb"\s+", b"", v)))
            for k, v in d.headers if k.lower() == b"dkim-signature"]


def test_the_authors_signature_stays_when_the_list_changes_nothing_it_signs(
        signing_server, make_list, sink, dns_server, author_key, engine):
    make_list(members=["alice@author.example", "bob@example.com"], owner=None)
    with db.session(engine) as s:
        mlist = roster.get_list(s, LIST)
        list_settings.set_setting(mlist, "subject_prefix", "")
        list_settings.set_setting(mlist, "footer", "")
        s.add(mlist)
        s.commit()
    signing_server().send("alice@author.example", [LIST], signed_post(author_key))
    data = sink.copies_to("bob@example.com")[0]
    assert [s[b"d"] for s in signatures(data)] == [DOMAIN.encode(), b"author.example"]
    assert dkim.DKIM(data).verify(idx=1, dnsfunc=dns_server.txt)
    assert dkim.verify(data, dnsfunc=dns_server.txt)


def test_the_authors_signature_is_removed_when_the_list_changes_the_post(
        signing_server, make_list, sink, dns_server, author_key):
    make_list(members=["alice@author.example", "bob@example.com"], owner=None)
    signing_server().send("alice@author.example", [LIST], signed_post(author_key))
    data = sink.copies_to("bob@example.com")[0]
    assert [s[b"d"] for s in signatures(data)] == [DOMAIN.encode()]
    assert dkim.verify(data, dnsfunc=dns_server.txt)


def test_arc_seals_what_the_post_carried_and_verifies(signing_server, make_list, sink,
                                                      dns_server, author_key):
    make_list(members=["alice@author.example", "bob@example.com"], owner=None)
    signing_server(arc=True).send("alice@author.example", [LIST], signed_post(author_key))
    data = sink.copies_to("bob@example.com")[0]
    cv, results, reason = dkim.arc_verify(data, dnsfunc=dns_server.txt)
    assert cv == b"pass", reason
    assert [r["instance"] for r in results] == [1]
    aar = results[0]["aar-value"]
    assert b"lists.example.org; dkim=pass header.d=author.example header.s=a" in aar
    assert b"arc=none" in aar
    assert tags(data, b"ARC-Seal")[b"cv"] == b"none"
    assert dkim.verify(data, dnsfunc=dns_server.txt)  # and DKIM, on top of it


def test_a_post_sealed_upstream_gets_the_next_arc_set(signing_server, make_list, sink,
                                                      dns_server, author_key):
    """A forwarder (forwarder.example, here with the author's key) sealed the post as
    i=1; the list checks that chain, says arc=pass and seals i=2 over both sets."""
    make_list(members=["bob@example.com", "alice@example.org"], owner=None)
    dns_server.records["a._domainkey.forwarder.example"] = dns_server.records[
        "a._domainkey.author.example"]
    raw = ("Authentication-Results: forwarder.example; arc=none\r\n"
           + message(sender="alice@example.org")).encode()
    sealed = b"".join(dkim.arc_sign(raw, b"a", b"forwarder.example", author_key,
                                    b"forwarder.example")) + raw
    signing_server(arc=True).send("alice@example.org", [LIST], sealed)
    data = sink.copies_to("bob@example.com")[0]
    cv, results, reason = dkim.arc_verify(data, dnsfunc=dns_server.txt)
    assert cv == b"pass", reason
    assert [r["instance"] for r in results] == [2, 1]
    assert b"lists.example.org; dkim=none; arc=pass" in results[0]["aar-value"]


def test_a_forged_authentication_results_of_ours_is_not_sealed(signing_server, make_list,
                                                               sink, dns_server):
    make_list(members=["bob@example.com"], owner=None)
    forged = message(headers={"Authentication-Results":
                              "lists.example.org; dkim=pass header.d=bank.example"})
    signing_server(arc=True).send("bob@example.com", [LIST], forged)
    data = copies(sink, 1)[0]
    assert b"bank.example" not in data
    assert dkim.arc_verify(data, dnsfunc=dns_server.txt)[0] == b"pass"


def test_keygen_writes_a_private_key_for_its_owner_and_prints_the_record(tmp_path):
    proc = run_listserv("dkim", "keygen", "Lists.Example.org", "--selector", "s2026",
                        "--out", tmp_path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    private = tmp_path / "s2026.lists.example.org.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    line = next(x for x in proc.stdout.splitlines() if " IN TXT " in x)
    name, text = published(line)
    assert name == "s2026._domainkey.lists.example.org"
    assert text.startswith("v=DKIM1; k=rsa; p=")
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    assert key.key_size == 2048
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    assert base64.b64decode(text.partition("p=")[2]) == der
    config = proc.stdout[proc.stdout.index("[dkim]"):]
    assert config_mod.from_dict(
        config_mod.tomllib.loads(config)).dkim.private_key_file == str(private.resolve())
    again = run_listserv("dkim", "keygen", "lists.example.org", "--selector", "s2026",
                         "--out", tmp_path, cwd=tmp_path)
    assert again.returncode == 1 and "exists" in again.stderr


def test_a_half_set_dkim_config_stops_listserv(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[dkim]\ndomain = "lists.example.org"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"private_key_file must be set together"):
        config_mod.load(path, environ={})


def test_serve_with_a_missing_key_file_stops_with_one_line(tmp_path, db_url):
    # Ports 0: serve binds before it loads the key, and the default ports may be taken.
    config = write_config(tmp_path / "c.toml", db_url, '[dkim]\ndomain = "lists.example.org"\n'
                          'selector = "s"\nprivate_key_file = "/nonexistent/s.key"\n'
                          '[smtp]\nport = 0\n[web]\nport = 0\n')
    proc = run_listserv("--config", config, "serve", cwd=tmp_path)
    assert_one_line_error(proc, "/nonexistent/s.key")


def test_an_unreadable_key_names_the_file(tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("not a key", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.key: not an unencrypted PEM"):
        signing.Signer.from_config(DkimConfig(domain=DOMAIN, selector="s",
                                              private_key_file=str(bad)))


@pytest.mark.parametrize("body", [
    b"", b"\r\n", b"Hi.\r\n\r\n\r\n", b"no line end", b"tab\tand  spaces \t\r\n",
    b"bare\rCR\r\r\n", b" \r\n leading\r\n", b"-- \r\nsignature\r\n",
])
def test_signatures_verify_whatever_the_white_space(key, dns_server, body):
    signer = signing.Signer.from_config(DkimConfig(domain=DOMAIN, selector="listserv",
                                                   private_key_file=str(key)))
    head = (b"From: Bob <bob@example.com>\r\nSubject:  folded\r\n\tsubject \r\n"
            b"To: dev@lists.example.org\r\n\r\n")
    assert dkim.verify(signer.sign(head + body), dnsfunc=dns_server.txt)
