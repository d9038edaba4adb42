"""otaship.protocol: the device protocol's topics, codes, paths and MQTT URLs, on their own."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from otaship import protocol
from otaship.protocol import (
    RESPONSE,
    RESPONSE_CODES,
    STATUS,
    BrokerAddress,
    MqttUrlError,
    ReportTopic,
    ResponseCode,
    TriggerTopic,
    parse_mqtt_url,
    parse_report_topic,
    parse_trigger_topic,
)
from otaship.receiver.mqtt.broker import owner_may_use

PROPERTY = settings(max_examples=300, derandomize=True, deadline=None, database=None)
DOCS = Path(__file__).resolve().parent.parent / "docs" / "device-protocol.md"

# One topic level: anything but a separator, a wildcard or NUL.
levels = st.text(st.characters(codec="utf-8", exclude_characters="/+#\x00"), min_size=1, max_size=40)
kinds = st.sampled_from([STATUS, RESPONSE])


# --- response codes -----------------------------------------------------------------------


def test_response_codes_are_the_documented_ones() -> None:
    assert [(c.name, int(c)) for c in ResponseCode] == [
        ("TRIGGER_RECEIVED", 200),
        ("UPDATE_STARTING", 201),
        ("ALREADY_CURRENT", 202),
        ("ERROR", 203),
    ]
    assert RESPONSE_CODES == (200, 201, 202, 203)
    assert all(type(code) is int for code in RESPONSE_CODES)
    # The table in docs/device-protocol.md lists the same codes.
    documented = re.findall(r"^\s*\| (\d{3}) \|", DOCS.read_text(), flags=re.MULTILINE)
    assert tuple(map(int, documented)) == RESPONSE_CODES


def test_a_code_is_sent_as_a_plain_number() -> None:
    assert json.dumps({"code": ResponseCode.UPDATE_STARTING}) == '{"code": 201}'
    assert ResponseCode(json.loads('{"code": 203}')["code"]) is ResponseCode.ERROR
    with pytest.raises(ValueError):
        ResponseCode(204)


# --- topics -------------------------------------------------------------------------------


def test_topics_are_the_documented_strings() -> None:
    assert protocol.trigger_topic("u1", "g1") == "/u1/groups/g1/update-trigger"
    assert protocol.status_topic("u1", "d1") == "/u1/devices/d1/status"
    assert protocol.response_topic("u1", "d1") == "/u1/devices/d1/update-response"
    assert protocol.report_topic("u1", "d1", STATUS) == "/u1/devices/d1/status"
    assert protocol.owner_prefix("u1") == "/u1/"
    assert protocol.REPORT_KINDS == ("status", "update-response")


def test_the_receivers_subscriptions() -> None:
    assert protocol.report_filters() == ["/+/devices/+/update-response", "/+/devices/+/status"]
    assert protocol.report_filters(shared=True) == [
        "$share/otaship//+/devices/+/update-response",
        "$share/otaship//+/devices/+/status",
    ]
    assert protocol.report_filters(shared=True, group="staging") == [
        "$share/staging//+/devices/+/update-response",
        "$share/staging//+/devices/+/status",
    ]
    assert protocol.report_filters(mqtt_user="alice") == [
        "/alice/devices/+/update-response",
        "/alice/devices/+/status",
    ]


@PROPERTY
@given(user=levels, group=levels)
def test_a_trigger_topic_reads_back(user: str, group: str) -> None:
    topic = protocol.trigger_topic(user, group)
    assert parse_trigger_topic(topic) == TriggerTopic(user, group)
    assert parse_report_topic(topic) is None
    assert not any(topic_matches_sub(f, topic) for f in protocol.report_filters())
    # The embedded broker lets the owner, and only the owner, use it.
    assert owner_may_use(user, topic)
    assert not owner_may_use(user + "x", topic)


@PROPERTY
@given(user=levels, device=levels, kind=kinds)
def test_a_report_topic_reads_back(user: str, device: str, kind: str) -> None:
    topic = protocol.report_topic(user, device, kind)
    assert parse_report_topic(topic) == ReportTopic(user, device, kind)
    assert parse_trigger_topic(topic) is None
    # Exactly one of the receiver's filters takes it, and the owner's own filters too.
    assert [topic_matches_sub(f, topic) for f in protocol.report_filters()] == [
        kind == RESPONSE,
        kind == STATUS,
    ]
    assert sum(topic_matches_sub(f, topic) for f in protocol.report_filters(mqtt_user=user)) == 1
    assert owner_may_use(user, topic)


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "/",
        "u/devices/d/status",
        "/u/devices/d",
        "/u/devices/d/status/x",
        "/u/devices/d/other",
        "/u/device/d/status",
        "/u/groups/g/status",
        "//u/devices/d/status",
        "/u/devices/d/Status",
    ],
)
def test_other_topics_are_not_reports(topic: str) -> None:
    assert parse_report_topic(topic) is None


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "u/groups/g/update-trigger",
        "/u/groups/g",
        "/u/groups/g/update-trigger/",
        "/u/devices/g/update-trigger",
        "/u/groups/g/update-response",
    ],
)
def test_other_topics_are_not_triggers(topic: str) -> None:
    assert parse_trigger_topic(topic) is None


def test_the_structure_is_read_and_the_levels_are_left_to_the_caller() -> None:
    # The receiver checks user names and device ids itself (report_payload.py).
    assert parse_report_topic("//devices//status") == ReportTopic("", "", STATUS)
    assert parse_trigger_topic("/+/groups/#/update-trigger") == TriggerTopic("+", "#")


@pytest.mark.parametrize(
    ("level", "usable"),
    [
        ("alice", True),
        ("a b", True),
        ("", False),
        ("a/b", False),
        ("+", False),
        ("a#", False),
        ("a\x00", False),
    ],
)
def test_usable_in_topic(level: str, usable: bool) -> None:
    assert protocol.usable_in_topic(level) is usable


# --- device paths -------------------------------------------------------------------------

GROUP = "5e10fc5e77ba18070312e171"
TOKEN = "AATluvfLURijoH9d"


def test_device_paths() -> None:
    assert protocol.latest_path(GROUP) == f"/v1/ota/group/latest/{GROUP}"
    assert protocol.download_path(GROUP, TOKEN) == f"/v1/ota/group/download/{GROUP}{TOKEN}"
    assert protocol.LATEST_ROUTE == "/v1/ota/group/latest/{group_id}"
    assert protocol.DOWNLOAD_ROUTE == "/v1/ota/group/download/{credentials}"


@PROPERTY
@given(
    group=st.text("0123456789abcdef", min_size=24, max_size=24),
    token=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=16, max_size=16),
)
def test_download_credentials_split_back(group: str, token: str) -> None:
    credentials = protocol.download_path(group, token).rsplit("/", 1)[1]
    assert protocol.split_credentials(credentials) == (group, token)


@pytest.mark.parametrize("length", [0, 1, 24, 39, 41, 80])
def test_credentials_of_another_length_are_none(length: int) -> None:
    assert protocol.split_credentials("a" * length) is None


# --- MQTT URLs: the receiver's form -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("embedded://127.0.0.1:1883", BrokerAddress("embedded", "127.0.0.1", 1883)),
        ("embedded://0.0.0.0:1884", BrokerAddress("embedded", "0.0.0.0", 1884)),
        ("embedded://", BrokerAddress("embedded", "127.0.0.1", 1883)),
        ("embedded://[::1]:2883", BrokerAddress("embedded", "::1", 2883)),
        ("mqtt://broker", BrokerAddress("mqtt", "broker", 1883)),
        ("mqtts://broker", BrokerAddress("mqtts", "broker", 8883)),
        ("mqtts://Broker.Example:9883", BrokerAddress("mqtts", "broker.example", 9883)),
        ("mqtt://otaship:s%40cr%3At@broker:1883", BrokerAddress("mqtt", "broker", 1883, "otaship", "s@cr:t")),
        ("mqtt://otaship@broker", BrokerAddress("mqtt", "broker", 1883, "otaship", None)),
        # An empty user or password is none.
        ("mqtt://otaship:@broker", BrokerAddress("mqtt", "broker", 1883, "otaship", None)),
        ("mqtt://:pw@broker", BrokerAddress("mqtt", "broker", 1883, None, "pw")),
        ("mqtt://", BrokerAddress("mqtt", "127.0.0.1", 1883)),
    ],
)
def test_receiver_urls(url: str, address: BrokerAddress) -> None:
    assert parse_mqtt_url(url) == address


@pytest.mark.parametrize("url", ["none", "NONE", " None\n"])
def test_none_turns_mqtt_off(url: str) -> None:
    assert parse_mqtt_url(url) is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "http://u:p@h",
            "OTASHIP_MQTT_URL must be embedded://HOST:PORT, mqtt://…, mqtts://… or none, not 'http'",
        ),
        ("", "OTASHIP_MQTT_URL must be embedded://HOST:PORT, mqtt://…, mqtts://… or none, not ''"),
        (
            "broker:1883",
            "OTASHIP_MQTT_URL must be embedded://HOST:PORT, mqtt://…, mqtts://… or none, not 'broker'",
        ),
        ("mqtt://u:secret@h:notaport", "OTASHIP_MQTT_URL has an invalid port"),
        ("embedded://127.0.0.1:65536", "OTASHIP_MQTT_URL has an invalid port"),
        ("mqtt://u:secret@[::1", "Invalid IPv6 URL"),
    ],
)
def test_refused_receiver_urls(url: str, message: str) -> None:
    with pytest.raises(MqttUrlError) as refused:
        parse_mqtt_url(url)
    assert str(refused.value) == message
    assert isinstance(refused.value, ValueError)


def test_describe_leaves_the_password_out() -> None:
    address = parse_mqtt_url("mqtts://otaship:hunter2@broker:8883")
    assert address is not None and address.tls and not address.embedded
    assert address.describe() == "mqtts://otaship@broker:8883"
    assert BrokerAddress("embedded", "127.0.0.1", 1883).describe() == "embedded://127.0.0.1:1883"


# --- MQTT URLs: a device's form -----------------------------------------------------------


def test_device_urls() -> None:
    plain = parse_mqtt_url("mqtt://owner%40x:p%3Ass@broker.example:1884", device=True)
    assert plain == BrokerAddress("mqtt", "broker.example", 1884, "owner@x", "p:ss")
    assert not plain.tls
    tls = parse_mqtt_url("mqtts://owner:pw@broker.example", device=True)
    assert (tls.port, tls.tls) == (8883, True)
    assert parse_mqtt_url("mqtt://owner@h", device=True) == BrokerAddress("mqtt", "h", 1883, "owner", None)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://u:p@h", "unsupported MQTT URL scheme in 'http://u:p@h': use mqtt:// or mqtts://"),
        (
            "embedded://u:p@h:1883",
            "unsupported MQTT URL scheme in 'embedded://u:p@h:1883': use mqtt:// or mqtts://",
        ),
        ("none", "unsupported MQTT URL scheme in 'none': use mqtt:// or mqtts://"),
        ("mqtt://u:p@", "the MQTT URL 'mqtt://u:p@' has no host"),
        (
            "mqtt://h:1883",
            "the MQTT URL needs the owner's mqtt_user (devices publish under /<mqtt_user>/...): "
            "mqtt://MQTT_USER:MQTT_PASSWORD@HOST:PORT",
        ),
        ("mqtt://u:p@h:notaport", "bad port in MQTT URL 'mqtt://u:p@h:notaport'"),
        ("mqtt://u:p@[::1", "bad MQTT URL 'mqtt://u:p@[::1': Invalid IPv6 URL"),
    ],
)
def test_refused_device_urls(url: str, message: str) -> None:
    with pytest.raises(MqttUrlError) as refused:
        parse_mqtt_url(url, device=True)
    assert str(refused.value) == message


users = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,15}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True)


@PROPERTY
@given(
    scheme=st.sampled_from(["mqtt", "mqtts", "embedded"]),
    user=users,
    password=users,
    host=hosts,
    port=st.one_of(st.none(), st.integers(1, 65535)),
    device=st.booleans(),
)
def test_a_url_reads_back(
    scheme: str, user: str, password: str, host: str, port: int | None, device: bool
) -> None:
    url = f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if port is not None:
        url += f":{port}"
    if device and scheme == "embedded":
        with pytest.raises(MqttUrlError, match="unsupported MQTT URL scheme"):
            parse_mqtt_url(url, device=True)
        return
    address = parse_mqtt_url(url, device=True) if device else parse_mqtt_url(url)
    default = 8883 if scheme == "mqtts" else 1883
    assert address == BrokerAddress(scheme, host, port or default, user, password)


@PROPERTY
@given(url=st.text(st.characters(codec="utf-8"), max_size=60), device=st.booleans())
@example(url="mqtt://[", device=False)
@example(url="mqtt://u@h:99999999999999999999", device=True)
@example(url="mqtt://u@h\uff03x", device=True)
def test_any_text_is_an_address_or_a_clear_refusal(url: str, device: bool) -> None:
    try:
        address = parse_mqtt_url(url, device=True) if device else parse_mqtt_url(url)
    except MqttUrlError as exc:
        assert str(exc)
        return
    if address is None:
        assert not device and url.strip().lower() == "none"
        return
    assert address.scheme in (("mqtt", "mqtts") if device else ("embedded", "mqtt", "mqtts"))
    assert address.host and 0 < address.port <= 65535
    if device:
        assert address.username


@PROPERTY
@given(
    password=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=8, max_size=20),
    port=st.sampled_from(["x", "70000", "-1", "1.5"]),
)
def test_the_receivers_refusals_never_quote_the_password(password: str, port: str) -> None:
    with pytest.raises(MqttUrlError) as refused:
        parse_mqtt_url(f"mqtt://otaship:{password}@broker:{port}")
    assert password not in str(refused.value)


# --- no dependencies ----------------------------------------------------------------------


def test_protocol_and_the_simulator_need_nothing_of_the_receiver() -> None:
    script = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import otaship.protocol\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(new - set(sys.stdlib_module_names) - {'otaship'}))\n"
        "import otaship.simulator.cli\n"
        "print(sorted(m for m in sys.modules if m.startswith('otaship.receiver')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.splitlines() == ["[]", "[]"]
