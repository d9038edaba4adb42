"""Settings: the receiver's whole configuration, read once from OTASHIP_* variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

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
# Retries of a failed device's group trigger (rollouts/retries.py): how many,
# the wait before the first (doubled before each next one), and how long a
# device that announced its update (201) may stay silent before it counts as
# failed. AWS IoT Jobs allows up to 10 retries.
DEFAULT_TRIGGER_RETRIES = 3
MAX_TRIGGER_RETRIES = 10
DEFAULT_TRIGGER_RETRY_BACKOFF = 60
DEFAULT_TRIGGER_DARK_AFTER = 600


class SettingsError(ValueError):
    """A configuration value is unusable; the message names the variable."""


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
    trigger_retries: int = DEFAULT_TRIGGER_RETRIES
    trigger_retry_backoff: float = DEFAULT_TRIGGER_RETRY_BACKOFF
    trigger_dark_after: float = DEFAULT_TRIGGER_DARK_AFTER

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        log_format = env.get("OTASHIP_LOG_FORMAT", "text").strip().lower() or "text"
        if log_format not in ("text", "json"):
            raise SettingsError(f"OTASHIP_LOG_FORMAT must be text or json, not {log_format!r}")
        return cls(
            host=env.get("OTASHIP_HOST", "").strip() or "127.0.0.1",
            port=_int(env, "OTASHIP_PORT", 8080),
            data_dir=Path(env.get("OTASHIP_DATA_DIR", "").strip() or "otaship-data"),
            database_url=env.get("OTASHIP_DATABASE_URL", "").strip() or None,
            storage_url=env.get("OTASHIP_STORAGE_URL", "").strip() or None,
            mqtt_url=env.get("OTASHIP_MQTT_URL", "").strip() or "embedded://127.0.0.1:1883",
            mqtt_client_id=env.get("OTASHIP_MQTT_CLIENT_ID", "").strip() or None,
            public_url=env.get("OTASHIP_PUBLIC_URL", "").strip() or None,
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
            trigger_retries=_int(
                env, "OTASHIP_TRIGGER_RETRIES", DEFAULT_TRIGGER_RETRIES, maximum=MAX_TRIGGER_RETRIES
            ),
            trigger_retry_backoff=_int(
                env, "OTASHIP_TRIGGER_RETRY_BACKOFF", DEFAULT_TRIGGER_RETRY_BACKOFF, minimum=1
            ),
            trigger_dark_after=_int(env, "OTASHIP_TRIGGER_DARK_AFTER", DEFAULT_TRIGGER_DARK_AFTER, minimum=1),
        )

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

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
