"""The IoTaaP device protocol in code: topics, response codes, device paths, MQTT URLs.

docs/device-protocol.md describes the protocol; this module is its one
implementation, shared by the receiver, the simulator and the tests. It imports
only the standard library, so the simulator and the action need none of the
receiver's dependencies to speak it.

Topic names are built and read here by their structure only. What a level may
hold (which user names and device ids the receiver accepts) is the receiver's
rule, checked where reports come in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal, overload
from urllib.parse import unquote, urlsplit

# --- response codes -----------------------------------------------------------


class ResponseCode(enum.IntEnum):
    """What a device answers on its update-response topic, as `{"code": N}`."""

    TRIGGER_RECEIVED = 200
    UPDATE_STARTING = 201  # the check found a new version
    ALREADY_CURRENT = 202
    ERROR = 203  # the check or the download failed, or there is no firmware


RESPONSE_CODES: tuple[int, ...] = tuple(int(code) for code in ResponseCode)

# --- topics -------------------------------------------------------------------

TRIGGER = "update-trigger"
RESPONSE = "update-response"
STATUS = "status"
REPORT_KINDS = (STATUS, RESPONSE)

_GROUPS = "groups"
_DEVICES = "devices"
# A topic level holding one of these would widen or split a topic.
TOPIC_UNSAFE = frozenset("/+#\x00")
# The receiver's subscriptions are shared among its replicas under this name
# (MQTT 5 brokers only).
SHARED_GROUP = "otaship"


def usable_in_topic(level: str) -> bool:
    """Whether `level` can stand as one topic level: not empty, no separator or wildcard."""
    return bool(level) and TOPIC_UNSAFE.isdisjoint(level)


def owner_prefix(mqtt_user: str) -> str:
    """Every topic of an owner's devices starts with this; the broker confines the owner to it."""
    return f"/{mqtt_user}/"


def trigger_topic(mqtt_user: str, group_id: str) -> str:
    """Where the receiver tells a group's devices to check for an update."""
    return f"/{mqtt_user}/{_GROUPS}/{group_id}/{TRIGGER}"


def report_topic(mqtt_user: str, device_id: str, kind: str) -> str:
    """Where a device publishes its reports of `kind` (STATUS or RESPONSE)."""
    return f"/{mqtt_user}/{_DEVICES}/{device_id}/{kind}"


def response_topic(mqtt_user: str, device_id: str) -> str:
    return report_topic(mqtt_user, device_id, RESPONSE)


def status_topic(mqtt_user: str, device_id: str) -> str:
    return report_topic(mqtt_user, device_id, STATUS)


@dataclass(frozen=True)
class TriggerTopic:
    mqtt_user: str
    group_id: str


@dataclass(frozen=True)
class ReportTopic:
    mqtt_user: str
    device_id: str
    kind: str  # STATUS or RESPONSE


def parse_trigger_topic(topic: str) -> TriggerTopic | None:
    """The owner and group of an update-trigger topic; None for any other topic."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "" or parts[2] != _GROUPS or parts[4] != TRIGGER:
        return None
    return TriggerTopic(parts[1], parts[3])


def parse_report_topic(topic: str) -> ReportTopic | None:
    """The owner, device and kind of a status or update-response topic; None for any other topic."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "" or parts[2] != _DEVICES or parts[4] not in REPORT_KINDS:
        return None
    return ReportTopic(parts[1], parts[3], parts[4])


def report_filters(*, shared: bool = False, mqtt_user: str = "+", group: str = SHARED_GROUP) -> list[str]:
    """Subscription filters for every device's reports: of every owner (the receiver),
    or of one; `shared` spreads them over the receiver's replicas (and worker
    processes) that subscribe under the same share `group`."""
    filters = [report_topic(mqtt_user, "+", kind) for kind in (RESPONSE, STATUS)]
    # Topics start with "/", hence the double slash after the share name.
    return [f"$share/{group}/{f}" for f in filters] if shared else filters


# --- the device's HTTP paths --------------------------------------------------

GROUP_ID_LENGTH = 24
GROUP_TOKEN_LENGTH = 16
LATEST_ROUTE = "/v1/ota/group/latest/{group_id}"
DOWNLOAD_ROUTE = "/v1/ota/group/download/{credentials}"


def latest_path(group_id: str) -> str:
    """Where a device asks which version its group should run."""
    return LATEST_ROUTE.format(group_id=group_id)


def download_path(group_id: str, token: str) -> str:
    """Where a device downloads its group's image: the id and the token joined, no separator."""
    return DOWNLOAD_ROUTE.format(credentials=group_id + token)


def split_credentials(credentials: str) -> tuple[str, str] | None:
    """The group id and token of a download path's last part; None when its length is wrong."""
    if len(credentials) != GROUP_ID_LENGTH + GROUP_TOKEN_LENGTH:
        return None
    return credentials[:GROUP_ID_LENGTH], credentials[GROUP_ID_LENGTH:]


# --- MQTT URLs ----------------------------------------------------------------

EMBEDDED = "embedded"
MQTT = "mqtt"
MQTTS = "mqtts"
MQTT_PORT = 1883
MQTTS_PORT = 8883
# embedded:// without a host listens here.
DEFAULT_HOST = "127.0.0.1"


class MqttUrlError(ValueError):
    """The URL is not one of the accepted forms; the message says what to write (no secret in it)."""


@dataclass(frozen=True)
class BrokerAddress:
    scheme: str  # EMBEDDED, MQTT or MQTTS
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def embedded(self) -> bool:
        return self.scheme == EMBEDDED

    @property
    def tls(self) -> bool:
        return self.scheme == MQTTS

    def describe(self) -> str:
        """For logs: never the password."""
        who = f"{self.username}@" if self.username else ""
        return f"{self.scheme}://{who}{self.host}:{self.port}"


@overload
def parse_mqtt_url(url: str) -> BrokerAddress | None: ...
@overload
def parse_mqtt_url(url: str, *, device: Literal[True]) -> BrokerAddress: ...


def parse_mqtt_url(url: str, *, device: bool = False) -> BrokerAddress | None:
    """The broker an MQTT URL names, in one of two forms.

    The receiver's (OTASHIP_MQTT_URL): `embedded://HOST:PORT`, `mqtt://USER:PASSWORD@HOST:PORT`,
    `mqtts://…`, or `none` (None); a missing host is 127.0.0.1.

    A device's (`device=True`, the simulator's --mqtt-url): `mqtt://` or `mqtts://` only,
    with a host and the owner's mqtt_user, which names the devices' topic namespace.

    The port defaults to 1883 (8883 for mqtts); the user and password are
    percent-decoded, and an empty one is none. Errors are MqttUrlError; the
    receiver's never quote the URL, the device's do (the simulator redacts them).
    """
    if not device and url.strip().lower() == "none":
        return None
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unbalanced [ or ] around the host
        raise MqttUrlError(f"bad MQTT URL {url!r}: {exc}" if device else str(exc)) from None
    if device:
        if parts.scheme not in (MQTT, MQTTS):
            raise MqttUrlError(f"unsupported MQTT URL scheme in {url!r}: use mqtt:// or mqtts://")
        if not parts.hostname:
            raise MqttUrlError(f"the MQTT URL {url!r} has no host")
        if not parts.username:
            raise MqttUrlError(
                "the MQTT URL needs the owner's mqtt_user (devices publish under /<mqtt_user>/...): "
                "mqtt://MQTT_USER:MQTT_PASSWORD@HOST:PORT"
            )
    elif parts.scheme not in (EMBEDDED, MQTT, MQTTS):
        raise MqttUrlError(
            f"OTASHIP_MQTT_URL must be embedded://HOST:PORT, mqtt://…, mqtts://… or none, not {parts.scheme!r}"
        )
    try:
        port = parts.port
    except ValueError:
        message = f"bad port in MQTT URL {url!r}" if device else "OTASHIP_MQTT_URL has an invalid port"
        raise MqttUrlError(message) from None
    return BrokerAddress(
        scheme=parts.scheme,
        host=parts.hostname or DEFAULT_HOST,
        port=port or (MQTTS_PORT if parts.scheme == MQTTS else MQTT_PORT),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )
