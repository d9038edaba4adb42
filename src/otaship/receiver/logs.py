"""Logging: one configuration for the receiver and its server, text or JSON lines, no secrets.

`configure_logging(settings)` is the only place that touches handlers. Every
line goes through `redact`, whoever logged it (our code, uvicorn, amqtt, an
exception's text): group tokens ride in the download URL, API keys in the
Authorization header, and passwords in broker and database URLs, so a log
line must never be trusted to have left them out.

Records are formatted and written off the event loop: the handler on the root
logger only puts each record on a queue, and a listener thread formats,
redacts and writes it. Formatting, the redaction's regular expressions and the
write cost about 100 µs a line, more than a device check costs without them.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import queue
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any

from otaship.receiver.settings import Settings, SettingsError

ACCESS_LOGGER = "otaship.access"
REDACTED = "[redacted]"

# The token follows the 24-hex group id in the download URL, /v1/ota/group/download/<id><token>
# (not in its route template, /v1/ota/group/download/{credentials}), and in the
# IoTaaP storage path that the API shows, ota/group/<id><token>/firmware.bin.
_DOWNLOAD_TOKEN = re.compile(r"(/v1/ota/group/download/[0-9A-Fa-f]{0,24})[^\s/?#\"'\\{]+")
_STORAGE_PATH_TOKEN = re.compile(r"(ota/group/[0-9A-Fa-f]{24})[A-Za-z0-9]+(?=/)")
# The same pair on any other route, where a client put it by mistake
# (`latest/<id><token>`): a whole path segment of 24 hex and 16 token characters.
_ID_TOKEN_SEGMENT = re.compile(r"(?<=/)([0-9A-Fa-f]{24})[A-Za-z0-9]{16}(?![A-Za-z0-9])")
# Credentials are long; "basic checks" in a sentence is left alone.
_AUTH_HEADER = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=\-]{8,}")
_API_KEY = re.compile(r"\bosk_[A-Za-z0-9_\-]+")
# GitHub's tokens (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_) and the webhook secrets otaship makes.
_GITHUB_SECRET = re.compile(r"\b(gh[pousr]_|github_pat_|oshk_)[A-Za-z0-9_\-]+")
# Capabilities in query strings, such as a GCS resumable upload's upload_id in an error.
_QUERY_SECRET = re.compile(
    r"(?i)\b(upload_id|access_token|token|api_key|password|secret|signature|X-Goog-Signature)=[^&\s\"'\\]+"
)
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@\"'\\]*:)[^\s@/\"'\\]+@")

LEVELS = {"critical": 50, "error": 40, "warning": 30, "info": 20, "debug": 10, "trace": 5}

# Attributes every LogRecord has; anything else on a record came in through `extra`.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
    "taskName",
}

# Marks the handler configure_logging installed, so calling it again replaces it.
_OURS = "_otaship_handler"


def short_error(exc: BaseException) -> str:
    """An exception as a log line or an API answer may show it: its type and
    first line, redacted. A database error's later lines quote the statement."""
    first = next(iter(str(exc).strip().splitlines()), "")
    return redact(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)[:200]


def redact(text: str) -> str:
    """`text` with group tokens, API keys and URL passwords replaced by [redacted]."""
    text = _DOWNLOAD_TOKEN.sub(rf"\1{REDACTED}", text)
    text = _STORAGE_PATH_TOKEN.sub(rf"\1{REDACTED}", text)
    text = _ID_TOKEN_SEGMENT.sub(rf"\1{REDACTED}", text)
    text = _AUTH_HEADER.sub(rf"\1\2{REDACTED}", text)
    text = _API_KEY.sub(f"osk_{REDACTED}", text)
    text = _GITHUB_SECRET.sub(rf"\1{REDACTED}", text)
    text = _QUERY_SECRET.sub(rf"\1={REDACTED}", text)
    return _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, then the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # Redacting the serialised line also reaches nested extras; the patterns
        # stop at quotes and backslashes, so the JSON stays valid.
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


class _RedactedLastResort(logging.StreamHandler):  # type: ignore[type-arg]
    """Python's handler of last resort (warnings and errors, bare, to stderr), redacted."""

    def __init__(self) -> None:
        super().__init__()
        self.setLevel(logging.WARNING)

    @property
    def stream(self) -> IO[str]:
        # Looked up at each line, as logging's own last resort does, so that
        # a replaced sys.stderr is honoured.
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def redact_unconfigured_logs() -> None:
    """The admin commands and `simulate` configure no logging, so Python writes
    their warnings and errors through `logging.lastResort`: redact those too."""
    logging.lastResort = _RedactedLastResort()


def log_level(settings: Settings) -> int:
    try:
        return LEVELS[settings.log_level]
    except KeyError:
        raise SettingsError(
            f"OTASHIP_LOG_LEVEL must be one of {', '.join(LEVELS)}, not {settings.log_level!r}"
        ) from None


class _QueueHandler(logging.handlers.QueueHandler):
    """Puts records on the queue as they are: the listener thread formats them.

    The standard QueueHandler formats in the caller's thread (to make records
    picklable for other processes), which is the cost this handler exists to
    move. Only the message's arguments are merged here, in place (a copy of
    the record would cost more than the rest of the call), so that a mutable
    argument changed after the call still logs what it was; other handlers
    get the same message from it.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        return record


# Loggers of the HTTP servers' lifecycle, written without the queue.
SERVER_LIFECYCLE_LOGGERS = ("uvicorn.error", "_granian")

# The listener configure_logging started, and the queue it empties.
_listener: logging.handlers.QueueListener | None = None
_queue: queue.Queue[logging.LogRecord] | None = None


def flush_logs(timeout: float = 5.0) -> None:
    """Wait until every record logged so far is written (blocking), or `timeout`
    seconds: a stuck output must not keep a server from stopping."""
    pending = _queue
    if pending is None or _listener is None:
        return
    with pending.all_tasks_done:
        pending.all_tasks_done.wait_for(lambda: pending.unfinished_tasks == 0, timeout)


def stop_logging() -> None:
    """Write what is queued and stop the listener thread (after `serve`, and at exit).

    Records logged afterwards are written at once, by the same handler."""
    global _listener, _queue
    if _listener is None:
        return
    root = logging.getLogger()
    for queued in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(queued)
    _listener.stop()
    for handler in _listener.handlers:
        setattr(handler, _OURS, True)
        root.addHandler(handler)
    _listener = _queue = None


def configure_logging(settings: Settings, *, stream: IO[str] | None = None) -> logging.Handler:
    """Send every logger, uvicorn's included, to one handler in OTASHIP_LOG_FORMAT,
    through a queue that a thread of its own empties; returns the writing handler."""
    level = log_level(settings)
    logging.addLevelName(LEVELS["trace"], "TRACE")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    stop_logging()
    global _listener, _queue
    _queue = queue.Queue()
    _listener = logging.handlers.QueueListener(_queue, handler)
    _listener.start()
    queued = _QueueHandler(_queue)
    setattr(queued, _OURS, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
    root.addHandler(queued)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(level)
    # The servers' own lines (started, shutdown complete, …) are few, and the last
    # of them come after the app is gone: uvicorn then re-raises SIGTERM, which
    # ends the process before any atexit hook could empty the queue. Written at
    # once, they are never lost.
    for name in SERVER_LIFECYCLE_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(level)
    # The receiver writes its own access line (route, status, duration, token
    # redacted; see metrics.ObserveRequests), under any ASGI server; uvicorn's
    # would repeat it with the raw URL. This also covers
    # `uvicorn --factory otaship.receiver.app:app_from_env`, which keeps its access log on.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    return handler


def _restart_in_child() -> None:
    """A forked process has the queue but not the thread that empties it (a
    server that forks its workers after the app was configured): start its own."""
    global _listener, _queue
    if _listener is None:
        return
    handlers = _listener.handlers
    _queue = queue.Queue()
    _listener = logging.handlers.QueueListener(_queue, *handlers)
    _listener.start()
    for queued in logging.getLogger().handlers:
        if isinstance(queued, _QueueHandler):
            queued.queue = _queue


# Registered after logging's own shutdown hook, so it runs before it: what is
# still queued at exit is written.
atexit.register(stop_logging)
os.register_at_fork(after_in_child=_restart_in_child)
