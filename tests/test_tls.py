"""STARTTLS on the receiving side (RFC 3207): offered when `[smtp] tls_cert_file` and
`tls_key_file` are set, never required, and a certificate that cannot be loaded stops
`listserv serve` with one line."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers import assert_one_line_error, mails_to, message, run_listserv, write_config
from tests.servers import connect_when_counted_out

LIST = "dev@lists.example.org"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lists.example.org")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def trusting_nothing() -> ssl.SSLContext:
    """What most MTAs do on port 25: encrypt, without checking the certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_a_post_sent_over_starttls_is_stored_and_delivered(tmp_path, make_server, make_list,
                                                           sink):
    make_list(LIST, members=["bob@example.com", "carol@example.com"])
    cert_file, key_file = self_signed(tmp_path)
    srv = make_server(smtp={"tls_cert_file": str(cert_file), "tls_key_file": str(key_file),
                            "max_connections_per_ip": 1})
    for _ in range(2):  # a TLS connection is counted once, and counted out when it closes
        with connect_when_counted_out(srv) as client:
            client.ehlo("client.example")
            assert client.has_extn("starttls")
            assert client.starttls(context=trusting_nothing())[0] == 220
            client.ehlo("client.example")
            assert not client.has_extn("starttls")  # once per connection
            assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
            client.sendmail("bob@example.com", [LIST], message(subject="over TLS"))
    assert [m["Subject"] for m in mails_to(sink, "carol@example.com", 2)] == ["[Dev] over TLS"] * 2


def test_without_a_certificate_starttls_is_not_offered(running, make_list):
    make_list(LIST)
    with running.smtp() as client:
        client.ehlo("client.example")
        assert not client.has_extn("starttls")
        assert client.docmd("STARTTLS")[0] == 454


def test_tls_is_never_required(tmp_path, make_server, make_list, sink):
    make_list(LIST, members=["bob@example.com", "carol@example.com"])
    cert_file, key_file = self_signed(tmp_path)
    srv = make_server(smtp={"tls_cert_file": str(cert_file), "tls_key_file": str(key_file)})
    srv.send("bob@example.com", [LIST], message(subject="in the clear"))
    assert [m["Subject"] for m in mails_to(sink, "carol@example.com")] == ["[Dev] in the clear"]


def test_a_certificate_without_its_key_stops_listserv(tmp_path, db_url):
    cert_file, _ = self_signed(tmp_path)
    config = write_config(tmp_path / "c.toml", db_url, f'[smtp]\ntls_cert_file = "{cert_file}"\n')
    proc = run_listserv("--config", config, "serve", cwd=tmp_path)
    assert_one_line_error(proc, "tls_cert_file and tls_key_file must be set together")


@pytest.mark.parametrize("broken", ["missing", "not a key"])
def test_a_key_that_cannot_be_loaded_stops_listserv(tmp_path, db_url, broken):
    cert_file, key_file = self_signed(tmp_path)
    if broken == "missing":
        key_file = tmp_path / "nonexistent.pem"
    else:
        key_file.write_text("not a key\n")
    # Ports 0: serve binds before it loads the key, and the default ports may be taken.
    config = write_config(tmp_path / "c.toml", db_url,
                          f'[smtp]\nport = 0\ntls_cert_file = "{cert_file}"\n'
                          f'tls_key_file = "{key_file}"\n[web]\nport = 0\n')
    proc = run_listserv("--config", config, "serve", cwd=tmp_path)
    assert_one_line_error(proc, "cannot load tls_cert_file", str(key_file))
