"""The URLs clients and devices use to reach this receiver, and shell assignments that carry them.

The admin CLI reads the same settings as `serve`, so it knows where the receiver
listens. `--format env` prints what the next command needs (an API key, a group's
id and token, the receiver's URL, the devices' MQTT URL) as `export NAME=VALUE`
lines, so that `eval "$(otaship user create … --format env)"` sets them. The
names are the ones `otaship-deploy` reads where it reads one.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from urllib.parse import quote, urlsplit

from otaship.protocol import MQTT, MQTTS, parse_mqtt_url
from otaship.receiver.settings import Settings

# Addresses a server binds to mean "every interface"; a client cannot connect to them.
_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})
_LOOPBACK = "127.0.0.1"


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def receiver_url(settings: Settings) -> str:
    """OTASHIP_PUBLIC_URL when set, else the address `serve` binds, as a client reaches it."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = _LOOPBACK if settings.host in _WILDCARDS else settings.host
    return f"http://{_host_for_url(host)}:{settings.port}"


def device_mqtt_url(settings: Settings, mqtt_user: str, mqtt_password: str) -> str | None:
    """The broker as an owner's devices log in to it, with that owner's credentials; None without MQTT.

    The embedded broker speaks plain MQTT on the address it binds; bound to every
    interface, devices reach it at the host of OTASHIP_PUBLIC_URL (else this machine).
    An external broker is the one in OTASHIP_MQTT_URL, with the owner's login instead
    of the receiver's.
    """
    address = parse_mqtt_url(settings.mqtt_url)
    if address is None:
        return None
    host = address.host
    if address.embedded and host in _WILDCARDS:
        public_host = urlsplit(settings.public_url).hostname if settings.public_url else None
        host = public_host or _LOOPBACK
    scheme = MQTTS if address.tls else MQTT
    login = f"{quote(mqtt_user, safe='')}:{quote(mqtt_password, safe='')}"
    return f"{scheme}://{login}@{_host_for_url(host)}:{address.port}"


def shell_exports(assignments: Iterable[tuple[str, str | None]]) -> str:
    """`export NAME=VALUE` lines, each value quoted for POSIX shells; None values are left out."""
    return "\n".join(
        f"export {name}={shlex.quote(value)}" for name, value in assignments if value is not None
    )
