"""A device report as it arrives over MQTT: its topic and payload, checked strictly.

Everything a device sends is outside input, and one device's report is stored
in the same transaction as other owners' reports: a value the database would
refuse (a NUL in a string, a number out of range) would fail the whole batch.
So a report is checked here, before it is queued, and anything malformed is
a BadReport: dropped and counted, never batched, never an exception of another
kind in the MQTT client's thread.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from otaship.protocol import RESPONSE, RESPONSE_CODES, parse_report_topic
from otaship.receiver.db.devices import DEVICE_ID_PATTERN
from otaship.receiver.fields import has_control, quoted
from otaship.receiver.ids import utcnow

# IoTaaP OS sends a few short fields; anything this large is not a report.
MAX_PAYLOAD_BYTES = 4096
MAX_VERSION_LENGTH = 64
# Objects and arrays inside the payload: a report is flat, so this is generous.
MAX_DEPTH = 4
# A century of seconds: well past any uptime, and exact in a double.
MAX_UPTIME = 100 * 365 * 24 * 3600
# User names are ids, and device ids follow the rule `otaship device create` applies.
_NAME = re.compile(DEVICE_ID_PATTERN)


@dataclass(frozen=True)
class Report:
    mqtt_user: str
    device_id: str
    kind: str  # STATUS or RESPONSE
    fw_version: str | None = None
    uptime: float | None = None
    code: int | None = None
    at: datetime = field(default_factory=utcnow)


class BadReport(ValueError):
    """The message is not a report this receiver can store; the text says why (safe to log)."""


def parse_report(topic: str, payload: bytes) -> Report:
    """The report a message carries, or BadReport; never any other exception."""
    mqtt_user, device_id, kind = _parse_topic(topic)
    body = _parse_body(payload)
    if kind == RESPONSE:
        code = body.get("code")
        if type(code) is not int or code not in RESPONSE_CODES:
            raise BadReport(f"code must be one of {', '.join(map(str, RESPONSE_CODES))}, not {_shown(code)}")
        return Report(mqtt_user, device_id, kind, code=code)
    version = body.get("fw_version")
    if not isinstance(version, str) or not version.strip() or len(version) > MAX_VERSION_LENGTH:
        raise BadReport(
            f"fw_version must be a string of 1 to {MAX_VERSION_LENGTH} characters, not {_shown(version)}"
        )
    uptime = body.get("uptime")
    if uptime is not None and (
        isinstance(uptime, bool) or not isinstance(uptime, int | float) or not 0 <= uptime <= MAX_UPTIME
    ):
        raise BadReport(f"uptime must be a number of seconds from 0 to {MAX_UPTIME}, not {_shown(uptime)}")
    return Report(
        mqtt_user, device_id, kind, fw_version=version, uptime=None if uptime is None else float(uptime)
    )


def _parse_topic(topic: str) -> tuple[str, str, str]:
    parsed = parse_report_topic(topic)
    if parsed is None:
        raise BadReport(f"not a report topic: {quoted(topic)}")
    if not _NAME.fullmatch(parsed.mqtt_user) or not _NAME.fullmatch(parsed.device_id):
        raise BadReport(f"not a user and device id in the topic: {quoted(topic)}")
    return parsed.mqtt_user, parsed.device_id, parsed.kind


def _parse_body(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise BadReport(f"payload of {len(payload)} bytes is over the limit of {MAX_PAYLOAD_BYTES}")
    try:
        # Strictly UTF-8: json.loads would also take UTF-16 and UTF-32 bytes.
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise BadReport("payload is not UTF-8") from None
    try:
        body = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers too long to convert.
        raise BadReport(f"malformed JSON: {str(exc)[:80]}") from None
    if not isinstance(body, dict):
        raise BadReport("payload is not a JSON object")
    _check_values(body, depth=1)
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_values(value: Any, depth: int) -> None:
    """Every string (keys too) free of control characters, every number finite."""
    if isinstance(value, str):
        if has_control(value):
            raise BadReport(f"a string holds a control character: {quoted(value)}")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BadReport("a number is out of range")
    elif isinstance(value, dict | list):
        if depth > MAX_DEPTH:
            raise BadReport(f"nested deeper than {MAX_DEPTH} levels")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str):
                _check_values(key, depth)
            _check_values(item, depth + 1)


def _shown(value: Any) -> str:
    """A refused value as a log line shows it: its type, or the start of its text."""
    if isinstance(value, str):
        return quoted(value)
    if value is None or isinstance(value, bool | int | float):
        return quoted(repr(value))
    return type(value).__name__
