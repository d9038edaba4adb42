"""Properties of the MQTT report parser, checked with hypothesis.

Whatever a device (or anybody with its owner's MQTT login) publishes, the
parser returns a report whose every value PostgreSQL and SQLite can store, or
refuses it with BadReport: never another exception, which would escape into
paho's thread, and never a value that would fail the batch it is stored in.
Derandomized, as in test_input_properties.py.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from otaship.protocol import RESPONSE, RESPONSE_CODES, STATUS
from otaship.receiver.fields import has_control
from otaship.receiver.mqtt.report_payload import (
    MAX_PAYLOAD_BYTES,
    MAX_UPTIME,
    MAX_VERSION_LENGTH,
    BadReport,
    Report,
    parse_report,
)

PROPERTY = settings(max_examples=300, derandomize=True, deadline=None, database=None)

USER = "5e10fc5e77ba18070312e171"
DEVICE = "bench-1"
STATUS_TOPIC = f"/{USER}/devices/{DEVICE}/status"
RESPONSE_TOPIC = f"/{USER}/devices/{DEVICE}/update-response"

names = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)
# Any text a device could put in a string, control characters and NUL included.
any_text = st.text(st.characters(codec="utf-8"), max_size=80)
clean_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=MAX_VERSION_LENGTH
).filter(str.strip)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
topics = st.one_of(
    any_text,
    st.builds(
        lambda user, device, kind: f"/{user}/devices/{device}/{kind}",
        any_text,
        any_text,
        st.sampled_from([STATUS, RESPONSE, "other"]),
    ),
    st.sampled_from([STATUS_TOPIC, RESPONSE_TOPIC]),
)


def storable(report: Report) -> None:
    """What every parsed report must be: values both databases take."""
    for value in (report.mqtt_user, report.device_id, report.fw_version):
        if value is not None:
            assert not has_control(value)
            assert 0 < len(value) <= 64
    if report.kind == STATUS:
        assert report.fw_version is not None and report.code is None
        assert report.uptime is None or (math.isfinite(report.uptime) and 0 <= report.uptime <= MAX_UPTIME)
    else:
        assert report.kind == RESPONSE
        assert report.code in RESPONSE_CODES and report.fw_version is None


@PROPERTY
@given(topic=topics, payload=st.binary(max_size=300))
@example(topic=STATUS_TOPIC, payload=b"[" * 100_000)
@example(topic=STATUS_TOPIC, payload=b'{"fw_version": "1.0.0", "uptime": 1' + b"0" * 5000 + b"}")
@example(topic=STATUS_TOPIC, payload='{"fw_version": "1.0.0"}'.encode("utf-16"))
@example(topic=STATUS_TOPIC, payload=b'{"fw_version": "1.0.0\xff"}')
@example(topic=STATUS_TOPIC, payload=b"\xef\xbb\xbf{}")
def test_any_bytes_are_a_storable_report_or_a_bad_one(topic: str, payload: bytes) -> None:
    try:
        report = parse_report(topic, payload)
    except BadReport as exc:
        assert str(exc)
        return
    storable(report)


@PROPERTY
@given(topic=st.sampled_from([STATUS_TOPIC, RESPONSE_TOPIC]), body=json_values)
@example(topic=STATUS_TOPIC, body={"fw_version": "9.9.9\u0000"})
@example(topic=STATUS_TOPIC, body={"fw_version": "1.0.0", "uptime": float("nan")})
@example(topic=STATUS_TOPIC, body={"fw_version": "1.0.0", "uptime": 10**400})
@example(topic=STATUS_TOPIC, body={"fw_version": "1.0.0", "core_version": "1.0\x1b[2J"})
@example(topic=STATUS_TOPIC, body={"fw_version": "1.0.0", "\u0085": 1})
@example(topic=RESPONSE_TOPIC, body={"code": True})
@example(topic=RESPONSE_TOPIC, body={"code": 201.0})
def test_any_json_is_a_storable_report_or_a_bad_one(topic: str, body: Any) -> None:
    payload = json.dumps(body).encode()
    try:
        report = parse_report(topic, payload)
    except BadReport:
        return
    storable(report)
    # Nothing anywhere in an accepted payload holds a control character or a non-finite number.
    for value in leaves(body):
        assert not (isinstance(value, str) and has_control(value))
        assert not (isinstance(value, float) and not math.isfinite(value))


def leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [*value, *(leaf for item in value.values() for leaf in leaves(item))]
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaves(item)]
    return [value]


@PROPERTY
@given(
    user=names,
    device=names,
    version=clean_text,
    uptime=st.one_of(st.none(), st.integers(0, MAX_UPTIME), st.floats(0, MAX_UPTIME)),
    extra=st.dictionaries(
        st.sampled_from(["battery", "core_version"]),
        st.one_of(st.integers(0, 100), st.from_regex(r"[0-9.]{1,8}", fullmatch=True)),
    ),
)
def test_a_valid_status_reads_back(
    user: str, device: str, version: str, uptime: float | None, extra: dict[str, Any]
) -> None:
    body: dict[str, Any] = {**extra, "fw_version": version}
    if uptime is not None:
        body["uptime"] = uptime
    report = parse_report(f"/{user}/devices/{device}/status", json.dumps(body).encode())
    assert (report.mqtt_user, report.device_id, report.kind) == (user, device, STATUS)
    assert (report.fw_version, report.uptime, report.code) == (version, uptime, None)


@PROPERTY
@given(user=names, device=names, code=st.sampled_from(RESPONSE_CODES))
def test_a_valid_update_response_reads_back(user: str, device: str, code: int) -> None:
    report = parse_report(f"/{user}/devices/{device}/update-response", json.dumps({"code": code}).encode())
    assert (report.mqtt_user, report.device_id, report.kind, report.code) == (user, device, RESPONSE, code)


@PROPERTY
@given(version=clean_text, at=st.integers(0, 64), control=st.characters(categories=["Cc"]))
def test_a_control_character_anywhere_in_a_string_is_refused(version: str, at: int, control: str) -> None:
    poisoned = version[:at] + control + version[at:]
    for body in (
        {"fw_version": poisoned},
        {"fw_version": "1.0.0", "note": poisoned},
        {"fw_version": "1.0.0", poisoned: 1},
        {"fw_version": "1.0.0", "list": [[poisoned]]},
    ):
        with pytest.raises(BadReport, match="control character"):
            parse_report(STATUS_TOPIC, json.dumps(body).encode())


@pytest.mark.parametrize(
    ("topic", "payload", "why"),
    [
        (STATUS_TOPIC, b'{"fw_version": "9.9.9\\u0000"}', "control character"),
        (STATUS_TOPIC, b'{"fw_version": ""}', "fw_version must be a string of 1 to 64"),
        (STATUS_TOPIC, b'{"fw_version": "   "}', "fw_version must be a string of 1 to 64"),
        (
            STATUS_TOPIC,
            json.dumps({"fw_version": "1" * 65}).encode(),
            "fw_version must be a string of 1 to 64",
        ),
        (STATUS_TOPIC, b'{"fw_version": 7}', "fw_version must be a string"),
        (STATUS_TOPIC, b'{"fw_version": "1.0.0", "uptime": "5"}', "uptime must be a number"),
        (STATUS_TOPIC, b'{"fw_version": "1.0.0", "uptime": -1}', "uptime must be a number"),
        (STATUS_TOPIC, b'{"fw_version": "1.0.0", "uptime": true}', "uptime must be a number"),
        (STATUS_TOPIC, b'{"fw_version": "1.0.0", "uptime": NaN}', "malformed JSON"),
        (STATUS_TOPIC, b'{"fw_version": "1.0.0", "battery": 1e400}', "out of range"),
        (RESPONSE_TOPIC, b'{"code": 500}', "code must be one of 200, 201, 202, 203"),
        (RESPONSE_TOPIC, b'{"code": "201"}', "code must be one of"),
        (STATUS_TOPIC, b"[1, 2]", "not a JSON object"),
        (STATUS_TOPIC, b"\xff\xfe{}", "not UTF-8"),
        (STATUS_TOPIC, b'{"a": [[[[[1]]]]], "fw_version": "1.0.0"}', "nested deeper"),
        (STATUS_TOPIC, b"{" + b" " * MAX_PAYLOAD_BYTES + b"}", "over the limit"),
        (f"/{USER}/devices/bad\x00id/status", b'{"fw_version": "1.0.0"}', "not a user and device id"),
        (f"/{USER}/devices/{'d' * 65}/status", b'{"fw_version": "1.0.0"}', "not a user and device id"),
        (f"/{USER}/devices/{DEVICE}/other", b"{}", "not a report topic"),
    ],
)
def test_what_is_refused_and_why(topic: str, payload: bytes, why: str) -> None:
    with pytest.raises(BadReport, match=why.replace("(", r"\(")):
        parse_report(topic, payload)


def test_the_reports_devices_send_are_accepted() -> None:
    # As receiver/simulate.py (and IoTaaP OS) publish them.
    report = parse_report(
        STATUS_TOPIC, b'{"battery":3.9,"uptime":65,"core_version":"1.0.0","fw_version":"1.2.7"}'
    )
    assert (report.fw_version, report.uptime) == ("1.2.7", 65)
    assert parse_report(STATUS_TOPIC, b'{"fw_version": "1.2.7", "uptime": null}').uptime is None
    assert parse_report(RESPONSE_TOPIC, b'{"code": 201}').code == 201
