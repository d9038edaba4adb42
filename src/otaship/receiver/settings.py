"""Settings: the receiver's whole configuration, read once from OTASHIP_* variables."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from otaship.protocol import MqttUrlError, parse_mqtt_url, usable_in_topic

DEFAULT_MAX_FIRMWARE_BYTES = 16 * 1024 * 1024
# hawkBit's DoS filter allows 200 reads and 50 writes a second per client.
DEFAULT_RATE_LIMIT_READS = "200/second"
DEFAULT_RATE_LIMIT_WRITES = "50/second"
# Each bad API key costs a database lookup; an honest client sends few.
DEFAULT_RATE_LIMIT_BAD_KEYS = "20/second"
# The orphan sweep: how often `serve` runs it, and how old an unreferenced object
# must be before it goes. A deploy must commit within half the grace period of
# storing its object (receiver/sweep.py), so the grace period has a floor.
DEFAULT_GC_INTERVAL = 3600
DEFAULT_GC_GRACE = 3600
MIN_GC_GRACE = 60
# Uploads: seconds without a byte, seconds for the whole body, and how many one
# owner may have in flight on a replica.
DEFAULT_UPLOAD_IDLE_TIMEOUT = 30
DEFAULT_UPLOAD_TIMEOUT = 600
DEFAULT_MAX_UPLOADS_PER_OWNER = 8
# The HTTP servers `otaship serve` can run the app on; the first is the default.
SERVERS = ("granian", "uvicorn")

# Retries of a failed device's group trigger (rollouts/retries.py): how many,
# the wait before the first (doubled before each next one), and how long a
# device that announced its update (201) may stay silent before it counts as
# failed. AWS IoT Jobs allows up to 10 retries.
DEFAULT_TRIGGER_RETRIES = 3
MAX_TRIGGER_RETRIES = 10
DEFAULT_TRIGGER_RETRY_BACKOFF = 60
# Silence after a 201 counts as gone dark after three status intervals of an
# IoTaaP OS device (5 s) plus the image's download at the slowest rate allowed
# for, since a device publishes nothing while it downloads: 16 KiB/s, a weak
# Wi-Fi link, gives a 1.5 MiB image 96 s and a 4 MiB app partition 256 s.
DEFAULT_TRIGGER_DARK_AFTER = 15
DEFAULT_TRIGGER_DOWNLOAD_RATE = 16 * 1024
# A device on the new version that boots again more than this many times
# while its stage is judged is in a reboot loop (rollouts/policy.py). Three
# rides out a reboot or two that the firmware itself asks for (a settings
# change, a watchdog after a slow start); the bound only keeps the setting
# meaningful.
DEFAULT_REBOOT_LOOP_BOOTS = 3
MAX_REBOOT_LOOP_BOOTS = 1000
# Three status reports of a device that reports every minute: seen within this is online.
DEFAULT_ONLINE_WITHIN = 180

# GitHub webhooks (receiver/github/): where its REST API is, seconds for each
# request to it, and how long a replica holds a delivery's job before another
# may take it over (renewed while the job runs, so only a dead replica's lapses).
DEFAULT_GITHUB_API_URL = "https://api.github.com"
DEFAULT_GITHUB_TIMEOUT = 30
DEFAULT_GITHUB_JOB_LEASE = 60
# OTASHIP_SECRET_KEY encrypts the webhook secrets and GitHub tokens: long enough
# that guessing it is out of reach.
MIN_SECRET_KEY_LENGTH = 32


class SettingsError(ValueError):
    """A configuration value is unusable; the message names the variable."""


# What each URL may start with. A URL's user and password never appear in a
# message: only its scheme is quoted back.
STORAGE_SCHEMES = ("file", "gs")
# SQLAlchemy's backend[+driver]; the drivers are the ones otaship installs.
DATABASE_SCHEMES = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg")


def _scheme(url: str) -> str | None:
    scheme, separator, _rest = url.partition("://")
    # Anything else before "://" (a user:password@host typed first) is not quoted back.
    if not separator or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme):
        return None
    return scheme.lower()


def _what(scheme: str | None) -> str:
    return f"{scheme}://…" if scheme else "a value without a scheme"


def _storage_url(env: Mapping[str, str]) -> str | None:
    url = env.get("OTASHIP_STORAGE_URL", "").strip() or None
    if url is not None and _scheme(url) not in STORAGE_SCHEMES:
        scheme = _scheme(url)
        raise SettingsError(
            "OTASHIP_STORAGE_URL must be file:///PATH or gs://BUCKET[/PREFIX], not " + _what(scheme)
        )
    return url


def _database_url(env: Mapping[str, str]) -> str | None:
    url = env.get("OTASHIP_DATABASE_URL", "").strip() or None
    if url is not None and _scheme(url) not in DATABASE_SCHEMES:
        scheme = _scheme(url)
        raise SettingsError(
            "OTASHIP_DATABASE_URL must be sqlite:///PATH or "
            "postgresql+psycopg://HOST/DATABASE, not " + _what(scheme)
        )
    return url


def _mqtt_url(env: Mapping[str, str]) -> str:
    url = env.get("OTASHIP_MQTT_URL", "").strip() or "embedded://127.0.0.1:1883"
    try:
        parse_mqtt_url(url)
    except MqttUrlError as exc:
        # The receiver's form of these messages never quotes the URL.
        raise SettingsError(str(exc)) from None
    return url


def _int(
    env: Mapping[str, str], name: str, default: int, *, minimum: int = 0, maximum: int | None = None
) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, not {value}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be at most {maximum}, not {value}")
    return value


def _rate(env: Mapping[str, str], name: str, default: str) -> str | None:
    """A rate limit in the `limits` package's notation (`200/second`, `1000 per
    2 minutes`), a plain number of requests a second, or None for 0 or `off`."""
    raw = " ".join(env.get(name, "").split()).lower()
    if not raw:
        return default
    if raw in ("0", "off"):
        return None
    if raw.isascii() and raw.isdigit():
        raw = f"{int(raw)}/second"
    from limits import parse_many

    try:
        items = parse_many(raw)
    except ValueError:
        items = []
    if len(items) != 1:
        raise SettingsError(
            f"{name} must be requests per second (200), a rate such as 200/second or "
            f"1000/minute, or off, not {raw!r}"
        )
    return None if items[0].amount == 0 else raw


def _share_group(env: Mapping[str, str]) -> str | None:
    raw = env.get("OTASHIP_MQTT_SHARE_GROUP", "").strip()
    if not raw:
        return None
    if not usable_in_topic(raw) or len(raw) > 128 or not raw.isprintable():
        raise SettingsError(
            f"OTASHIP_MQTT_SHARE_GROUP must be one MQTT topic level (no /, + or #, at most 128 characters), not {raw!r}"
        )
    return raw


def _public_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("OTASHIP_PUBLIC_URL", "").strip()
    if not raw:
        return None
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
    ):
        raise SettingsError(
            f"OTASHIP_PUBLIC_URL must be the receiver's base URL, such as https://ota.example.com, not {raw!r}"
        )
    return raw.rstrip("/")


def _secret_key(env: Mapping[str, str]) -> str | None:
    raw = env.get("OTASHIP_SECRET_KEY", "").strip()
    if not raw:
        return None
    if len(raw) < MIN_SECRET_KEY_LENGTH:
        # The value itself is never quoted back.
        raise SettingsError(
            f"OTASHIP_SECRET_KEY must be at least {MIN_SECRET_KEY_LENGTH} characters "
            "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)"
        )
    return raw


def _github_api_url(env: Mapping[str, str]) -> str:
    raw = env.get("OTASHIP_GITHUB_API_URL", "").strip() or DEFAULT_GITHUB_API_URL
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise SettingsError(
            f"OTASHIP_GITHUB_API_URL must be GitHub's REST API base URL, such as {DEFAULT_GITHUB_API_URL}, "
            f"not {raw!r}"
        )
    return raw.rstrip("/")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = field(default_factory=lambda: Path("otaship-data"))
    # None means "derive from data_dir": the embedded defaults.
    database_url: str | None = None
    storage_url: str | None = None
    mqtt_url: str = "embedded://127.0.0.1:1883"
    # A stable id gives this replica a persistent session on an external broker.
    mqtt_client_id: str | None = None
    # None means "derive from the database": see resolved_mqtt_share_group.
    mqtt_share_group: str | None = None
    public_url: str | None = None
    rollout_tick: float = 1.0
    max_firmware_bytes: int = DEFAULT_MAX_FIRMWARE_BYTES
    upload_idle_timeout: float = DEFAULT_UPLOAD_IDLE_TIMEOUT
    upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT
    max_uploads_per_owner: int = DEFAULT_MAX_UPLOADS_PER_OWNER
    log_level: str = "info"
    log_format: str = "text"
    # Per replica, in the `limits` package's notation; None turns a limit off.
    rate_limit_reads: str | None = DEFAULT_RATE_LIMIT_READS
    rate_limit_writes: str | None = DEFAULT_RATE_LIMIT_WRITES
    rate_limit_bad_keys: str | None = DEFAULT_RATE_LIMIT_BAD_KEYS
    gc_interval: float = DEFAULT_GC_INTERVAL
    gc_grace: float = DEFAULT_GC_GRACE
    server: str = SERVERS[0]
    # None: the default for the broker (see serve/workers.py).
    workers: int | None = None
    trigger_retries: int = DEFAULT_TRIGGER_RETRIES
    trigger_retry_backoff: float = DEFAULT_TRIGGER_RETRY_BACKOFF
    trigger_dark_after: float = DEFAULT_TRIGGER_DARK_AFTER
    trigger_download_rate: float = DEFAULT_TRIGGER_DOWNLOAD_RATE
    reboot_loop_boots: int = DEFAULT_REBOOT_LOOP_BOOTS
    # Never logged nor shown: see _secret_key and receiver/github/sealed.py.
    secret_key: str | None = field(default=None, repr=False)
    github_api_url: str = DEFAULT_GITHUB_API_URL
    github_timeout: float = DEFAULT_GITHUB_TIMEOUT
    github_job_lease: float = DEFAULT_GITHUB_JOB_LEASE
    # The console counts a device online when it was seen this recently.
    online_within: float = DEFAULT_ONLINE_WITHIN

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        log_format = env.get("OTASHIP_LOG_FORMAT", "text").strip().lower() or "text"
        if log_format not in ("text", "json"):
            raise SettingsError(f"OTASHIP_LOG_FORMAT must be text or json, not {log_format!r}")
        server = env.get("OTASHIP_SERVER", "").strip().lower() or SERVERS[0]
        if server not in SERVERS:
            raise SettingsError(f"OTASHIP_SERVER must be {' or '.join(SERVERS)}, not {server!r}")
        workers = (
            _int(env, "OTASHIP_WORKERS", 0, minimum=1) if env.get("OTASHIP_WORKERS", "").strip() else None
        )
        return cls(
            host=env.get("OTASHIP_HOST", "").strip() or "127.0.0.1",
            port=_int(env, "OTASHIP_PORT", 8080, maximum=65535),
            data_dir=Path(env.get("OTASHIP_DATA_DIR", "").strip() or "otaship-data"),
            database_url=_database_url(env),
            storage_url=_storage_url(env),
            mqtt_url=_mqtt_url(env),
            mqtt_client_id=env.get("OTASHIP_MQTT_CLIENT_ID", "").strip() or None,
            mqtt_share_group=_share_group(env),
            public_url=_public_url(env),
            max_firmware_bytes=_int(env, "OTASHIP_MAX_FIRMWARE_BYTES", DEFAULT_MAX_FIRMWARE_BYTES, minimum=1),
            upload_idle_timeout=_int(
                env, "OTASHIP_UPLOAD_IDLE_TIMEOUT", DEFAULT_UPLOAD_IDLE_TIMEOUT, minimum=1
            ),
            upload_timeout=_int(env, "OTASHIP_UPLOAD_TIMEOUT", DEFAULT_UPLOAD_TIMEOUT, minimum=1),
            max_uploads_per_owner=_int(
                env, "OTASHIP_MAX_UPLOADS_PER_OWNER", DEFAULT_MAX_UPLOADS_PER_OWNER, minimum=1
            ),
            log_level=env.get("OTASHIP_LOG_LEVEL", "").strip().lower() or "info",
            log_format=log_format,
            rate_limit_reads=_rate(env, "OTASHIP_RATE_LIMIT_READS", DEFAULT_RATE_LIMIT_READS),
            rate_limit_writes=_rate(env, "OTASHIP_RATE_LIMIT_WRITES", DEFAULT_RATE_LIMIT_WRITES),
            rate_limit_bad_keys=_rate(env, "OTASHIP_RATE_LIMIT_BAD_KEYS", DEFAULT_RATE_LIMIT_BAD_KEYS),
            gc_interval=_int(env, "OTASHIP_GC_INTERVAL", DEFAULT_GC_INTERVAL),
            gc_grace=_int(env, "OTASHIP_GC_GRACE", DEFAULT_GC_GRACE, minimum=MIN_GC_GRACE),
            server=server,
            workers=workers,
            trigger_retries=_int(
                env, "OTASHIP_TRIGGER_RETRIES", DEFAULT_TRIGGER_RETRIES, maximum=MAX_TRIGGER_RETRIES
            ),
            trigger_retry_backoff=_int(
                env, "OTASHIP_TRIGGER_RETRY_BACKOFF", DEFAULT_TRIGGER_RETRY_BACKOFF, minimum=1
            ),
            trigger_dark_after=_int(env, "OTASHIP_TRIGGER_DARK_AFTER", DEFAULT_TRIGGER_DARK_AFTER, minimum=1),
            trigger_download_rate=_int(
                env, "OTASHIP_TRIGGER_DOWNLOAD_RATE", DEFAULT_TRIGGER_DOWNLOAD_RATE, minimum=1
            ),
            reboot_loop_boots=_int(
                env,
                "OTASHIP_REBOOT_LOOP_BOOTS",
                DEFAULT_REBOOT_LOOP_BOOTS,
                minimum=1,
                maximum=MAX_REBOOT_LOOP_BOOTS,
            ),
            secret_key=_secret_key(env),
            github_api_url=_github_api_url(env),
            github_timeout=_int(env, "OTASHIP_GITHUB_TIMEOUT", DEFAULT_GITHUB_TIMEOUT, minimum=1),
            github_job_lease=_int(env, "OTASHIP_GITHUB_JOB_LEASE", DEFAULT_GITHUB_JOB_LEASE, minimum=3),
            online_within=_int(env, "OTASHIP_ONLINE_WITHIN", DEFAULT_ONLINE_WITHIN, minimum=1),
        )

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def resolved_mqtt_share_group(self) -> str:
        """The name under which this receiver's replicas share the reports.

        Replicas of one receiver use one database; two receivers on one broker
        (staging and production, say) use two. Derived from the database, the
        name keeps each receiver's reports its own with no setting, where one
        fixed name would let one receiver take, and drop, the other's reports.
        The password plays no part, so rotating it changes nothing.
        """
        if self.mqtt_share_group:
            return self.mqtt_share_group
        parts = urlsplit(self.resolved_database_url)
        if parts.password is not None:
            netloc = parts.netloc.rpartition("@")
            user = parts.username or ""
            parts = parts._replace(netloc=f"{user}@{netloc[2]}")
        digest = hashlib.sha256(urlunsplit(parts).encode()).hexdigest()[:12]
        return f"otaship-{digest}"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'otaship.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "objects").resolve().as_uri()

    @property
    def tmp_dir(self) -> Path:
        """Where uploads are spooled while they stream in and are validated."""
        return self.data_dir / "tmp"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"
