"""DKIM signatures (RFC 6376) and ARC sets (RFC 8617) on the mail the server sends, what
the server can say of a post's authentication as it came in (sealed by ARC), and keys.

Signing runs once per recipient of a personal copy, on the delivery hot path: the key
is loaded once, the RSA operation is OpenSSL's (through `cryptography`), the body is
hashed once for both DKIM and ARC, and only the fields we sign are canonicalised. dkimpy
does its RSA in pure Python (about 6 ms a signature against 0.3 ms); it verifies what
comes in, once per post, and the tests check our signatures with it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from listserv.config import ConfigError, DkimConfig
from listserv.dmarc import aligned
from listserv.headers import split_head
from listserv.resolver import LookupFailed, Resolver

log = logging.getLogger("listserv.signing")

# What the signatures cover: the fields a reader sees and trusts, threading, and the
# list's unsubscribe fields, which RFC 8058 §4 requires be signed.
SIGNED = (b"from", b"subject", b"date", b"message-id", b"to", b"cc", b"reply-to",
          b"in-reply-to", b"references", b"list-id", b"list-unsubscribe",
          b"list-unsubscribe-post", b"mime-version", b"content-type",
          b"content-transfer-encoding")
# Named once more in h= than they appear (RFC 6376 §8.15): a copy of one added on the
# way (a second From or List-Unsubscribe a reader or a mail client may act on) then
# breaks the signature instead of riding on it.
OVERSIGNED = (b"from", b"subject", b"list-unsubscribe", b"list-unsubscribe-post")
_ARC = (b"arc-authentication-results", b"arc-message-signature", b"arc-seal")
_INSTANCE = re.compile(rb"(?:^|;)\s*i\s*=\s*(\d+)")
_ARC_RESULT = re.compile(rb";\s*arc\s*=\s*(none|pass|fail)\b", re.IGNORECASE)
MAX_ARC_INSTANCE = 50  # RFC 8617 §4.2.1
MAX_VERIFIED = 5  # signatures of one incoming post worth DNS lookups


def _unfold(value: bytes) -> bytes:
    return re.sub(rb"[ \t]+", b" ", value.replace(b"\r\n", b"")).strip()


def _relaxed(name: bytes, value: bytes) -> bytes:
    """RFC 6376 §3.4.2, without the CRLF."""
    return name.lower().rstrip() + b":" + _unfold(value)


_WSP = re.compile(rb"[ \t]+")
_TRAILING_WSP = re.compile(rb"[ \t]+\r\n")


def _relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4. Most bodies have nothing to change: a substring test finds that
    out ten times faster than a regular expression."""
    if b" \r\n" in body or b"\t\r\n" in body:
        body = _TRAILING_WSP.sub(b"\r\n", body)
    if b"  " in body or b"\t" in body:
        body = _WSP.sub(b" ", body)
    end = len(body)
    while body.endswith(b"\r\n", 0, end):  # empty lines at the end (a bare CR stays)
        end -= 2
    return body[:end] + b"\r\n" if end else b""


def _split(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Header fields as (name, value after the colon, folding kept) and the body."""
    end = data.find(b"\r\n\r\n")
    head, body = (data, b"") if end < 0 else (data[:end + 2], data[end + 4:])
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n")[:-1] if head.endswith(b"\r\n") else head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        elif b":" in line:
            name, _, value = line.partition(b":")
            fields.append((name, value))
    return fields, body


def _fold(tags: list[bytes]) -> bytes:
    """Tags as "a; b; c", a line break before any that would pass 78 columns."""
    items = [t + b";" for t in tags[:-1]] + tags[-1:]
    out, width = b"", 16
    for item in items:
        if out and width + 1 + len(item) > 78:
            out, width = out + b"\r\n\t", 8
        elif out:
            out, width = out + b" ", width + 1
        out, width = out + item, width + len(item)
    return out


def _fold_b64(signature: bytes) -> bytes:
    return b"\r\n\t".join(signature[i:i + 70] for i in range(0, len(signature), 70))


@dataclass(frozen=True)
class Signer:
    """The list domain's key, loaded once, and what it signs with."""

    domain: str
    selector: str
    key: rsa.RSAPrivateKey
    arc: bool = False

    @classmethod
    def from_config(cls, config: DkimConfig) -> Signer | None:
        """None when [dkim] is not set; a ConfigError naming the file when its key is bad,
        so `serve` stops at start instead of sending unsigned mail."""
        if not config.enabled:
            return None
        path = config.private_key_file
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except OSError as exc:
            raise ConfigError(f"[dkim] private_key_file {path}: {exc.strerror}") from exc
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"[dkim] private_key_file {path}: not an unencrypted PEM "
                              "private key") from exc
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"[dkim] private_key_file {path}: not an RSA key")
        return cls(config.domain, config.selector, key, config.arc)

    def sign(self, data: bytes) -> bytes:
        """The message with our ARC set (when sealing, and the copy carries our
        Authentication-Results) and our DKIM-Signature on top."""
        fields, body = _split(data)
        body_hash = base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest())
        signed, names = self._selected(fields)
        now = str(int(time.time())).encode()
        arc = self._seal(fields, signed, names, body_hash, now) if self.arc else b""
        tags = [b"v=1", b"a=rsa-sha256", b"c=relaxed/relaxed", b"d=" + self.domain.encode(),
                b"s=" + self.selector.encode(), b"t=" + now, b"h=" + b":".join(names),
                b"bh=" + body_hash]
        return self._field(b"DKIM-Signature", tags, signed) + arc + data

    def _selected(self, fields: list[tuple[bytes, bytes]]) -> tuple[list[bytes], list[bytes]]:
        """The canonical fields signed and their h= names: every instance of each SIGNED
        name, bottom-up as verifiers pick them (RFC 6376 §5.4.2), and the OVERSIGNED
        names once more, which stands for no field (§5.4)."""
        by_name: dict[bytes, list[bytes]] = {}
        for name, value in fields:
            key = name.lower().rstrip()
            if key in SIGNED:
                by_name.setdefault(key, []).append(_relaxed(name, value))
        signed, names = [], []
        for name in SIGNED:
            for canonical in reversed(by_name.get(name, ())):
                signed.append(canonical)
                names.append(name)
            if name in OVERSIGNED:
                names.append(name)
        return signed, names

    def _field(self, name: bytes, tags: list[bytes], signed: list[bytes]) -> bytes:
        """The signature field over `signed` (canonical fields, in order) and itself with
        an empty b= (RFC 6376 §3.7)."""
        value = b" " + _fold(tags) + b";\r\n\tb="
        data = b"".join(f + b"\r\n" for f in signed) + _relaxed(name, value)
        signature = base64.b64encode(self.key.sign(data, padding.PKCS1v15(), hashes.SHA256()))
        return name + b":" + value + _fold_b64(signature) + b"\r\n"

    def _seal(self, fields: list[tuple[bytes, bytes]], signed: list[bytes],
              names: list[bytes], body_hash: bytes, now: bytes) -> bytes:
        """Our ARC set (RFC 8617 §5.1): our Authentication-Results as the AAR, a message
        signature like DKIM's, and the seal over every set of the chain. A copy without
        our Authentication-Results, or a chain that ended, gets none."""
        ours = self._our_results(fields)
        sets = {i: dict(chain) for i, chain in _arc_sets(fields).items()}
        instance = max(sets, default=0) + 1
        if ours is None or instance > MAX_ARC_INSTANCE:
            return b""
        found = _ARC_RESULT.search(ours)
        cv = found.group(1).lower() if found else b"none"
        if (instance == 1) != (cv == b"none"):
            return b""  # a first set must say none, a later one what the chain was
        i = b"i=" + str(instance).encode()
        common = [b"a=rsa-sha256", b"d=" + self.domain.encode(),
                  b"s=" + self.selector.encode(), b"t=" + now]
        aar = b"ARC-Authentication-Results: " + i + b"; " + ours.strip() + b"\r\n"
        ams = self._field(b"ARC-Message-Signature", [
            i, common[0], b"c=relaxed/relaxed", *common[1:], b"h=" + b":".join(names),
            b"bh=" + body_hash], signed)
        chain: list[bytes] = []
        if cv != b"fail":  # a failed chain is not vouched for: seal our own set only
            for n in sorted(sets):
                chain += [sets[n].get(k, b"") for k in _ARC]
        for field in (aar, ams):
            name, _, value = field.partition(b":")
            chain.append(_relaxed(name, value.rstrip(b"\r\n")))
        seal = self._field(b"ARC-Seal", [i, b"cv=" + cv, *common], chain)
        return seal + ams + aar

    def _our_results(self, fields: list[tuple[bytes, bytes]]) -> bytes | None:
        """The Authentication-Results compose put on the copy for us (our domain's id)."""
        for name, value in fields:
            if (name.lower().rstrip() == b"authentication-results"
                    and value.partition(b";")[0].strip().lower() == self.domain.encode()):
                return _unfold(value)
        return None


def _arc_sets(fields: list[tuple[bytes, bytes]]) -> dict[int, list[tuple[bytes, bytes]]]:
    """The ARC header fields already on a message, canonical, by instance."""
    sets: dict[int, list[tuple[bytes, bytes]]] = {}
    for name, value in fields:
        key = name.lower().rstrip()
        found = _INSTANCE.search(_unfold(value)) if key in _ARC else None
        if found:
            sets.setdefault(int(found.group(1)), []).append((key, _relaxed(name, value)))
    return sets


def dnsfunc(resolver: Resolver) -> Callable[..., bytes | None]:
    """dkimpy's key lookup through our resolver (its cache, `[dns] nameserver`)."""
    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            records = resolver.txt(name.decode("ascii", "replace"))
        except LookupFailed as exc:
            raise dkim.DnsTimeoutError(str(exc)) from exc
        return records[0] if records else None
    return txt


def inbound_results(raw: bytes, authserv_id: str, resolver: Resolver) -> str:
    """Authentication-Results (RFC 8601) for a post as it came, which our ARC set seals:
    each DKIM signature checked, and the ARC chain it carried. SPF is not claimed: behind
    an MTA the list does not see the host that sent the post."""
    txt = dnsfunc(resolver)
    try:
        checker = dkim.DKIM(raw, timeout=5)
        count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
        results = [_dkim_result(checker, i, txt) for i in range(min(count, MAX_VERIFIED))]
        cv = dkim.arc_verify(raw, dnsfunc=txt)[0].decode()
    except Exception:
        # dkimpy reads whatever a sender wrote; should it trip over a post, the post must
        # still go out, unvouched for (no ARC set follows a failed chain at i=1), and
        # not be refused with 451 at every retry.
        log.exception("could not check the post's DKIM and ARC; its copies go unsealed")
        results, cv = ["dkim=permerror"], "fail"
    return "; ".join([authserv_id, *(results or ["dkim=none"]), f"arc={cv}"])


_D_TAG = re.compile(rb"(?:^|;)\s*d\s*=\s*([^;\s]+)")


def aligned_pass(raw: bytes, from_domain: str, resolver: Resolver) -> bool:
    """Whether a DKIM signature on the post that aligns with its From domain verifies:
    that domain vouches for the From (RFC 7489's DKIM alignment, relaxed). Signatures of
    other domains are not checked at all, so most posts cost no lookup; a post with no
    signature costs no parse either (this runs for every post the receiver takes)."""
    fields, _ = split_head(raw)
    if not any(field[:15].lower() == b"dkim-signature:" for field in fields):
        return False
    txt = dnsfunc(resolver)
    try:
        checker = dkim.DKIM(raw, timeout=5)
        values = [v for n, v in checker.headers if n.lower() == b"dkim-signature"]
        for index, value in enumerate(values[:MAX_VERIFIED]):
            found = _D_TAG.search(_unfold(value))
            domain = found.group(1).decode("ascii", "replace") if found else ""
            if aligned(domain, from_domain) and _verifies(checker, index, txt):
                return True
    except Exception:  # dkimpy reads whatever a sender wrote, and may trip over it
        log.info("could not check the post's DKIM signatures", exc_info=True)
    return False


def _verifies(checker: dkim.DKIM, index: int, txt: Callable[..., bytes | None]) -> bool:
    try:
        return bool(checker.verify(idx=index, dnsfunc=txt))
    except dkim.DKIMException:
        return False


_TOKEN = re.compile(r"[^A-Za-z0-9._-]")


def _dkim_result(checker: dkim.DKIM, index: int, txt) -> str:  # type: ignore[no-untyped-def]
    try:
        result = "pass" if checker.verify(idx=index, dnsfunc=txt) else "fail"
    except dkim.DnsTimeoutError:
        result = "temperror"
    except dkim.DKIMException:
        result = "permerror"
    tags = checker.signature_fields if hasattr(checker, "signature_fields") else {}
    properties = [f"header.{k}={_TOKEN.sub('', tags[k.encode()].decode('ascii', 'replace'))}"
                  for k in ("d", "s") if tags.get(k.encode())]
    return " ".join([f"dkim={result}", *properties])


@dataclass(frozen=True)
class NewKey:
    private_file: Path
    public_file: Path
    record: str  # the TXT record in zone-file form, in strings of at most 255 characters


def keygen(domain: str, selector: str, out: Path) -> NewKey:
    """A 2048-bit RSA key pair for `selector`: the private key readable by its owner only,
    and the DNS record that publishes the public key (RFC 6376 §3.6.1)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key()
    stem = out / f"{selector}.{domain}"
    private_file, public_file = Path(f"{stem}.key"), Path(f"{stem}.pub")
    _create(private_file, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()), 0o600)
    _create(public_file, public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    return NewKey(private_file, public_file, dns_record(domain, selector, public))


def public_key_text(key: rsa.RSAPublicKey) -> str:
    """The key as the p= of a DKIM record: base64 of its DER SubjectPublicKeyInfo."""
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode("ascii")


def dns_record(domain: str, selector: str, key: rsa.RSAPublicKey) -> str:
    """The TXT record that publishes `key`, in zone-file form, in strings of at most 255
    characters."""
    text = "v=DKIM1; k=rsa; p=" + public_key_text(key)
    strings = " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))
    return f"{selector}._domainkey.{domain}. IN TXT {strings}"


def _create(path: Path, data: bytes, mode: int) -> None:
    """Never over an existing key: the old one may be the one published in DNS."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
