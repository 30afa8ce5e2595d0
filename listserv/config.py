"""Typed settings, loaded once from TOML and passed explicitly to whatever needs them.

Defaults are defined here only; `config.example.toml` documents the same keys and a
test keeps the two in step. Unknown keys, wrong types and numbers out of range stop
startup with one line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The largest value of an integer column on PostgreSQL (and so of an id or a per-list
# number): anything larger typed on the command line or in a URL names nothing. Kept
# here, not with the models: every command loads the config, and the models are sqlmodel.
MAX_INT = 2**31 - 1


class ConfigError(Exception):
    """A config problem a user can fix; its text names the key."""


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///listserv.db"


@dataclass(frozen=True)
class SmtpConfig:
    host: str = "127.0.0.1"
    port: int = 8025
    max_message_bytes: int = 10485760
    # "lmtp" when Postfix hands mail over with lmtp:inet:host:port.
    protocol: str = "smtp"
    # Posting rate limits (0 = none): messages stored from one envelope sender in the
    # last hour, and SMTP connections open at once from one IP address (per process).
    max_messages_per_sender_per_hour: int = 100
    max_connections_per_ip: int = 20
    # SMTP connections open at once in all (per process): one more gets 421.
    max_connections: int = 500
    # The header block of a message taken at all (552 above it).
    max_header_bytes: int = 1048576
    # RCPTs taken in one transaction; one more gets 452 4.5.3 (RFC 5321 §4.5.3.1.10).
    max_recipients: int = 100
    # PEM files of a certificate (with its chain) and its key: set both and EHLO offers
    # STARTTLS (RFC 3207). Never required: a public MX must take plain mail too.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # The authserv-ids (RFC 8601) of the MTAs in front whose Authentication-Results
    # fields are believed: a DMARC pass there lets a held non-member be told.
    trusted_authserv_ids: list[str] = field(default_factory=list, hash=False)


@dataclass(frozen=True)
class SmarthostConfig:
    """One of several smarthosts ([[delivery.smarthost]]); `weight` is its share of the
    connections, against the others' weights."""

    host: str = ""
    port: int = 25
    weight: int = 1


@dataclass(frozen=True)
class DeliveryConfig:
    smarthost_host: str = "127.0.0.1"
    smarthost_port: int = 25
    # Several smarthosts instead of the one above (a list: TOML's array of tables).
    smarthost: list[SmarthostConfig] = field(default_factory=list)
    max_recipients_per_transaction: int = 100
    concurrency: int = 4
    retry_initial_seconds: int = 60
    retry_max_hours: int = 72
    # How long a claimed job stays reserved for a worker that stopped answering; a live
    # worker renews its leases every third of this.
    lease_seconds: int = 30
    # Shaping by destination (the recipients' domain), in each delivery process: SMTP
    # transactions in flight to one domain at most, and copies (recipients) a minute to
    # one domain at most (0: no limit). Postfix's own default concurrency is 20.
    max_connections_per_domain: int = 20
    max_copies_per_minute_per_domain: int = 0
    # A "domain" of the two above, and of a deferral's back-off, is the MX host set
    # where DNS has answered, shared by every domain with those hosts (mx_groups.py).
    group_by_mx: bool = True
    # Members of a post read, and their jobs written, in one transaction of its
    # expansion after the 250 (a kill -9 loses or repeats none of them).
    expansion_chunk: int = 5000

    def smarthosts(self) -> list[SmarthostConfig]:
        """Where copies go out: the [[delivery.smarthost]] entries, else the one host of
        smarthost_host and smarthost_port."""
        return self.smarthost or [SmarthostConfig(self.smarthost_host, self.smarthost_port)]


@dataclass(frozen=True)
class WebConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    base_url: str = "http://127.0.0.1:8080"
    secret: str = ""
    # How long the signed link that opens a private archive to a member stays valid.
    archive_link_days: int = 30
    # How long a link to a member's page of subscriptions (/manage/TOKEN) stays valid.
    manage_link_hours: int = 24


@dataclass(frozen=True)
class ListsConfig:
    confirm_expiry_hours: int = 72
    hold_expiry_days: int = 14
    max_autoreplies_per_day: int = 10
    # A sender's next post to one thread is held after this many in thread_rate_minutes
    # (0 = no limit): what stops an autoresponder loop.
    max_posts_per_sender_per_thread: int = 5
    thread_rate_minutes: int = 10
    # Requests by mail (-join, -leave, -request) answered per list and per client IP in
    # an hour (0 = no limit); beyond it they are stored unanswered, the owners told once.
    max_confirmations_per_hour: int = 50
    # The hour (UTC) of the daily mail to moderators listing held posts; "" (None): none.
    held_summary_hour: int | None = 8


@dataclass(frozen=True)
class BouncesConfig:
    # Delivery is disabled when a member's score reaches this.
    score_threshold: float = 5.0
    # What one day's bounce adds: a dead mailbox, or an unexplained failure that repeats.
    hard_bounce_score: float = 1.0
    soft_bounce_score: float = 0.5
    # A score goes back to 0 after this many days without a bounce that counted.
    stale_after_days: int = 7
    # Notices to a disabled member, each with a re-enable link, before removal.
    warnings: int = 3
    warning_interval_days: int = 7


@dataclass(frozen=True)
class DnsConfig:
    # The resolver for DMARC policies, DKIM keys and the MX of recipient domains
    # (`[delivery] group_by_mx`); "" uses the system's (resolv.conf).
    nameserver: str = ""
    port: int = 53


@dataclass(frozen=True)
class DkimConfig:
    # All three set: every mail the server sends is signed with this key (d=domain).
    domain: str = ""
    selector: str = ""
    private_key_file: str = ""
    # Seal list copies with ARC (RFC 8617) as well, with the same key.
    arc: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.domain and self.selector and self.private_key_file)


@dataclass(frozen=True)
class RetentionConfig:
    # Days housekeeping keeps finished delivery jobs (and their copies' bytes), the raw
    # bytes of bounces it has read, and spent or expired tokens; 0 keeps them forever.
    delivered_days: int = 30
    bounce_raw_days: int = 90
    tokens_days: int = 30


@dataclass(frozen=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    web: WebConfig = field(default_factory=WebConfig)
    lists: ListsConfig = field(default_factory=ListsConfig)
    bounces: BouncesConfig = field(default_factory=BouncesConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)


# What a `listserv serve` process does (`--roles`); every one of them by default.
ROLES = ("smtp", "deliver", "web", "housekeeping")


def parse_roles(text: str) -> tuple[str, ...]:
    """`--roles smtp,deliver`: the roles named, in ROLES' order."""
    words = {word.strip() for word in text.split(",") if word.strip()}
    unknown = sorted(words - set(ROLES))
    if unknown or not words:
        what = f"unknown role {', '.join(unknown)}" if unknown else "no role given"
        raise ConfigError(f"{what}; the roles are {', '.join(ROLES)}, separated by commas")
    return tuple(role for role in ROLES if role in words)


_CHOICES = {("smtp", "protocol"): ("smtp", "lmtp")}
# What a number may be, checked at start so a value that cannot work stops the server
# with its name rather than failing later (a port that cannot be bound, no delivery
# worker, a date past the year 9999). Any other number: 0 to MAX_INT, and finite.
_DAYS = 36_500  # 100 years: longer than any expiry or retry means anything
_PORT = (1, 65_535)
_LISTEN = (0, 65_535)  # 0: any free port, named in the "listening" log line
_RANGES: dict[tuple[str, str], tuple[int, int]] = {
    ("smtp", "port"): _LISTEN, ("web", "port"): _LISTEN, ("dns", "port"): _PORT,
    ("delivery", "smarthost_port"): _PORT,
    ("delivery.smarthost", "port"): _PORT,
    ("delivery.smarthost", "weight"): (1, 1000),
    ("delivery", "concurrency"): (1, 1000),
    ("delivery", "max_recipients_per_transaction"): (1, 100_000),
    ("delivery", "retry_initial_seconds"): (1, _DAYS * 86_400),
    ("delivery", "retry_max_hours"): (0, _DAYS * 24),
    ("delivery", "lease_seconds"): (1, _DAYS * 86_400),
    ("delivery", "max_connections_per_domain"): (1, 1000),
    ("delivery", "expansion_chunk"): (1, 1_000_000),
    ("web", "archive_link_days"): (1, _DAYS),
    ("web", "manage_link_hours"): (1, _DAYS * 24),
    ("lists", "confirm_expiry_hours"): (1, _DAYS * 24),
    ("lists", "hold_expiry_days"): (1, _DAYS),
    ("lists", "thread_rate_minutes"): (1, _DAYS * 1440),
    ("lists", "held_summary_hour"): (0, 23),
    ("bounces", "stale_after_days"): (0, _DAYS),
    ("bounces", "warning_interval_days"): (0, _DAYS),
}
_NUMBER = (0, MAX_INT)
# Optional settings whose "" in TOML (which has no null) turns them off.
_EMPTY_IS_NONE = {("lists", "held_summary_hour")}


def _check_number(name: str, key: str, value: float) -> None:
    low, high = _RANGES.get((name, key), _NUMBER)
    if not (math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"[{name}] {key} must be from {low} to {high}, not {value}")
# Named as TOML names them, since the user wrote TOML.
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean", float: "a float",
               dict: "a table", list: "an array"}


def _toml_type(value: object) -> str:
    return _TYPE_NAMES.get(type(value), "a date or time")


def _section(cls: type, name: str, values: object) -> object:
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown key [{name}] {key}; valid keys: {', '.join(fields)}")
        if (name, key) in _EMPTY_IS_NONE and value == "":
            kwargs[key] = None
            continue
        expected = type(getattr(cls(), key))
        # TOML has no int/bool confusion, but Python does: True is an int.
        if type(value) is not expected:
            raise ConfigError(
                f"[{name}] {key} must be {_TYPE_NAMES[expected]}, not {_toml_type(value)}"
            )
        choices = _CHOICES.get((name, key))
        if choices and value not in choices:
            raise ConfigError(f"[{name}] {key} must be one of {', '.join(choices)}")
        if expected in (int, float):
            _check_number(name, key, value)
        if (name, key) in _TABLE_ARRAYS:
            value = _tables(name, key, value)
        elif expected is list and not all(isinstance(item, str) for item in value):
            raise ConfigError(f"[{name}] {key} must be an array of strings")
        kwargs[key] = value
    return cls(**kwargs)


# Arrays of tables, by section and key: the dataclass of each entry.
_TABLE_ARRAYS: dict[tuple[str, str], type] = {("delivery", "smarthost"): SmarthostConfig}


def _tables(name: str, key: str, values: list) -> list:
    kind = _TABLE_ARRAYS[(name, key)]
    return [_section(kind, f"{name}.{key}", value) for value in values]


def from_dict(data: dict) -> Config:
    """Build a Config from parsed TOML, refusing anything we would silently ignore."""
    defaults = Config()
    sections = [f.name for f in dataclasses.fields(Config)]
    kwargs: dict[str, Any] = {}  # each a section of its dataclass, as _section makes it
    for name, values in data.items():
        if name not in sections:
            raise ConfigError(f"unknown section [{name}]; valid sections: {', '.join(sections)}")
        kwargs[name] = _section(type(getattr(defaults, name)), name, values)
    return Config(**kwargs)


def load(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read the file named by --config or LISTSERV_CONFIG; defaults when neither is set."""
    env = os.environ if environ is None else environ
    path = path or env.get("LISTSERV_CONFIG")
    data: dict = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config {path} is not UTF-8 text (TOML must be)") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
    config = from_dict(data)
    _check_smarthosts(data.get("delivery", {}))
    _check_database_url(config.database.url, "[database] url")
    _check_dkim(config.dkim)
    _check_tls(config.smtp)
    url = env.get("LISTSERV_DATABASE_URL")
    if url:
        _check_database_url(url, "LISTSERV_DATABASE_URL")
        config = dataclasses.replace(config, database=DatabaseConfig(url=url))
    return config


# SQLAlchemy would otherwise try to import a driver we do not ship (mysql://) and fail
# with a traceback. The scheme is all the message shows: the URL may hold a password.
_DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres", "postgresql+psycopg")


def _check_database_url(url: str, source: str) -> None:
    scheme = url.partition(":")[0]
    if scheme not in _DATABASE_SCHEMES:
        raise ConfigError(f"{source} must be sqlite:///PATH or postgresql://..., not {scheme}:")


def _check_smarthosts(delivery: dict) -> None:
    """[[delivery.smarthost]] replaces smarthost_host and smarthost_port: a file with
    both would leave one of them ignored while the owner believes it used."""
    entries = delivery.get("smarthost", [])
    single = [k for k in ("smarthost_host", "smarthost_port") if k in delivery]
    if entries and single:
        raise ConfigError(f"[[delivery.smarthost]] replaces [delivery] {' and '.join(single)}:"
                          " set one or the other")
    if any(not entry.get("host") for entry in entries):
        raise ConfigError("[delivery.smarthost] host must be set in every "
                          "[[delivery.smarthost]]")


def _check_dkim(dkim: DkimConfig) -> None:
    """Half a DKIM setup would send unsigned mail while the owner believes it signed."""
    keys = ("domain", "selector", "private_key_file")
    given = [k for k in keys if getattr(dkim, k)]
    if given and len(given) < len(keys):
        raise ConfigError(f"[dkim] {', '.join(keys)} must be set together "
                          f"(only {', '.join(given)} is set)")
    if dkim.arc and not dkim.enabled:
        raise ConfigError("[dkim] arc = true needs domain, selector and private_key_file")


def _check_tls(smtp: SmtpConfig) -> None:
    """A certificate without its key (or the other way round) would quietly offer no TLS."""
    if bool(smtp.tls_cert_file) != bool(smtp.tls_key_file):
        given = "tls_cert_file" if smtp.tls_cert_file else "tls_key_file"
        raise ConfigError(f"[smtp] tls_cert_file and tls_key_file must be set together "
                          f"(only {given} is set)")
