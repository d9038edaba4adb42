"""The database goes away under traffic: every request is still answered.

A real `otaship serve` (a subprocess, with its embedded MQTT broker) on a
PostgreSQL database of its own, reached through a TCP proxy that the test
controls. Two outages, each under a mix of about 200 requests over every route:

- every backend of the database is terminated, again and again, mid-traffic;
- the proxy stops listening and cuts its connections: connections are refused.

Devices must not notice: `latest` and `download` answer 200 with the right
version and bytes from what the receiver last knew. Management routes answer
the spec's 500 for the route, with a short `error`; never a dropped connection.
A device that logged in before the outage logs in again during it, and its
report is stored once the database is back. Then everything works again,
without a restart: the listing, a deploy, and the rollout clock, which promotes
the canary on that report.

The PostgreSQL server itself is never stopped.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from otaship.receiver.http.management.ota import LIST_ERROR, UPLOAD_ERROR
from otaship.receiver.http.management.rollouts import CHANGE_ERROR, READ_ERROR
from tests.esp_image import build_image
from tests.postgres import OwnDatabase
from tests.receiver_process import ReceiverProcess, cli_env, otaship_json
from tests.services import POSTGRES, free_port
from tests.tcp_proxy import TcpProxy
from tests.waiting import eventually

pytestmark = pytest.mark.postgres

ROUNDS = 10
WORKERS = 8
UNKNOWN_ROLLOUT = "0" * 24


@dataclass
class Stack:
    server: ReceiverProcess
    env: dict[str, str]
    proxy: TcpProxy
    database: OwnDatabase
    headers: dict[str, str]
    mqtt_user: str
    mqtt_password: str
    mqtt_port: int
    fleet: dict[str, Any]
    canary: dict[str, Any]
    canary_device: str
    rollout_id: str
    images: dict[str, bytes] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture
def stack(own_postgres_database: OwnDatabase, tmp_path: Path) -> Iterator[Stack]:
    with TcpProxy(POSTGRES) as proxy:
        mqtt_port = free_port()
        env = cli_env(
            tmp_path / "data",
            OTASHIP_DATABASE_URL=own_postgres_database.url_via("127.0.0.1", proxy.port),
            OTASHIP_MQTT_URL=f"embedded://127.0.0.1:{mqtt_port}",
            # Not what this test is about: ~200 requests a second from one address.
            OTASHIP_RATE_LIMIT_READS="off",
            OTASHIP_RATE_LIMIT_WRITES="off",
            OTASHIP_RATE_LIMIT_BAD_KEYS="off",
            OTASHIP_GC_INTERVAL="0",
        )
        user = otaship_json(env, "user", "create", "ops@example.com", "--plan", "pro")
        fleet = otaship_json(env, "group", "create", "fleet", "--owner", "ops@example.com")
        canary = otaship_json(
            env, "group", "create", "canary", "--owner", "ops@example.com", "--parent", fleet["id"]
        )
        canary_device = "bench-1"
        otaship_json(
            env,
            "device",
            "create",
            canary_device,
            "--group",
            canary["id"],
            "--firmware-version",
            "1.0.0",
            "--id",
            canary_device,
        )
        otaship_json(
            env,
            "device",
            "create",
            "field-1",
            "--group",
            fleet["id"],
            "--firmware-version",
            "1.0.0",
            "--id",
            "field-1",
        )
        server = ReceiverProcess(env).start()
        try:
            headers = {"Authorization": f"Bearer {user['api_key']}"}
            images = {version: build_image(version) for version in ("1.0.0", "1.1.0", "1.2.0")}
            deploy(server.url, headers, fleet, "1.0.0", images["1.0.0"])
            staged = deploy(server.url, headers, fleet, "1.1.0", images["1.1.0"], canary=canary["id"])
            assert staged["rollout"]["state"] == "canary"
            yield Stack(
                server=server,
                env=env,
                proxy=proxy,
                database=own_postgres_database,
                headers=headers,
                mqtt_user=user["mqtt_user"],
                mqtt_password=user["mqtt_password"],
                mqtt_port=mqtt_port,
                fleet=fleet,
                canary=canary,
                canary_device=canary_device,
                rollout_id=staged["rollout"]["id"],
                images=images,
            )
        finally:
            log = server.stop()
            if "Traceback" in log:
                print(log[-20000:])


def deploy(
    url: str, headers: dict[str, str], group: dict[str, Any], version: str, image: bytes, **fields: str
) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/v1/ota/group",
        headers=headers,
        data={"group": group["id"], "token": group["token"], "version": version, **fields},
        files={"firmware": ("firmware.bin", image)},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


# --- the traffic -------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request and what it must get: `normal` when the database answers, `outage` when not."""

    route: str
    method: str
    path: str
    check: Callable[[httpx.Response, bool], str | None]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    call: Call
    status: int | None  # None: no HTTP answer at all
    problem: str | None


def spec_500(text: str) -> Callable[[httpx.Response], str | None]:
    def check(response: httpx.Response) -> str | None:
        body = response.json()
        if body.get("message") != text:
            return f"message {body.get('message')!r}, not {text!r}"
        error = body.get("error")
        if not isinstance(error, str) or not error or len(error) > 200 or "Traceback" in error:
            return f"error {error!r} is not a short cause"
        if set(body) != {"message", "error"}:
            return f"unexpected fields {sorted(body)}"
        return None

    return check


def management(
    normal: Callable[[httpx.Response], str | None], text: str
) -> Callable[[httpx.Response, bool], str | None]:
    """A management route: its normal answer, or (the database failing) the spec's 500."""
    failed = spec_500(text)

    def check(response: httpx.Response, outage_only: bool) -> str | None:
        if response.status_code == 500:
            return failed(response)
        if outage_only:
            return f"status {response.status_code}, not the spec's 500: {response.text[:200]}"
        return normal(response)

    return check


def status_is(code: int) -> Callable[[httpx.Response], str | None]:
    def check(response: httpx.Response) -> str | None:
        return None if response.status_code == code else f"status {response.status_code}, not {code}"

    return check


def device(expect: Callable[[httpx.Response], str | None]) -> Callable[[httpx.Response, bool], str | None]:
    """A device route: the same answer whether the database is there or not."""
    return lambda response, _outage_only: expect(response)


def latest_is(version: str) -> Callable[[httpx.Response], str | None]:
    def check(response: httpx.Response) -> str | None:
        if response.status_code != 200:
            return f"status {response.status_code}: {response.text[:200]}"
        return None if response.json() == {"ver": version} else f"answered {response.text!r}"

    return check


def image_is(image: bytes, *, head: bool = False) -> Callable[[httpx.Response], str | None]:
    def check(response: httpx.Response) -> str | None:
        if response.status_code != 200:
            return f"status {response.status_code}: {response.text[:200]}"
        if response.headers.get("x-md5") != hashlib.md5(image).hexdigest():
            return f"x-MD5 {response.headers.get('x-md5')!r}"
        if head:
            return None if response.headers.get("content-length") == str(len(image)) else "wrong length"
        return None if response.content == image else f"{len(response.content)} bytes, not the image"

    return check


def calls(stack: Stack) -> list[Call]:
    """One round of the mix: every route, device routes the most."""
    fleet, canary = stack.fleet, stack.canary
    fleet_download = f"/v1/ota/group/download/{fleet['id']}{fleet['token']}"
    canary_download = f"/v1/ota/group/download/{canary['id']}{canary['token']}"
    listing = management(status_is(200), LIST_ERROR)
    wrong_token = {
        "headers": stack.headers,
        "data": {"group": fleet["id"], "token": "x" * 16, "version": "9.9.9"},
        "files": {"firmware": ("firmware.bin", stack.images["1.2.0"])},
    }
    return [
        *[Call("latest", "GET", f"/v1/ota/group/latest/{fleet['id']}", device(latest_is("1.0.0")))] * 4,
        *[Call("latest", "GET", f"/v1/ota/group/latest/{canary['id']}", device(latest_is("1.1.0")))] * 2,
        *[Call("download", "GET", fleet_download, device(image_is(stack.images["1.0.0"])))] * 2,
        Call("download", "GET", canary_download, device(image_is(stack.images["1.1.0"]))),
        Call("download", "HEAD", fleet_download, device(image_is(stack.images["1.0.0"], head=True))),
        *[Call("list", "GET", "/v1/ota/group", listing, {"headers": stack.headers})] * 2,
        Call("deploy", "POST", "/v1/ota/group", management(status_is(400), UPLOAD_ERROR), wrong_token),
        Call(
            "rollouts",
            "GET",
            f"/v1/rollouts?group={fleet['id']}",
            management(status_is(200), READ_ERROR),
            {"headers": stack.headers},
        ),
        Call(
            "rollout",
            "GET",
            f"/v1/rollouts/{stack.rollout_id}",
            management(status_is(200), READ_ERROR),
            {"headers": stack.headers},
        ),
        Call(
            "promote",
            "POST",
            f"/v1/rollouts/{UNKNOWN_ROLLOUT}/promote",
            management(status_is(404), CHANGE_ERROR),
            {"headers": stack.headers},
        ),
        Call(
            "abort",
            "POST",
            f"/v1/rollouts/{UNKNOWN_ROLLOUT}/abort",
            management(status_is(404), CHANGE_ERROR),
            {"headers": stack.headers},
        ),
        Call("healthz", "GET", "/healthz", device(status_is(200))),
        Call(
            "readyz",
            "GET",
            "/readyz",
            device(lambda r: None if r.status_code in (200, 503) else str(r.status_code)),
        ),
        Call("metrics", "GET", "/metrics", device(status_is(200))),
        Call("openapi", "GET", "/openapi.json", device(status_is(200))),
    ]


def fire(stack: Stack, plan: list[Call], *, outage_only: bool) -> list[Outcome]:
    """Send every call, WORKERS at a time; nothing is retried.

    Each worker keeps its connection alive from one request to the next, as
    API clients and proxies do: a server that closes a connection after an
    answer loses the request that was already on its way.
    """
    local = threading.local()
    clients: list[httpx.Client] = []

    def send(call: Call) -> Outcome:
        client: httpx.Client | None = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=stack.url, timeout=30)
            clients.append(client)
        try:
            response = client.request(call.method, call.path, **call.kwargs)
        except httpx.HTTPError as exc:
            return Outcome(call, None, f"no answer: {type(exc).__name__}: {exc}")
        return Outcome(call, response.status_code, call.check(response, outage_only))

    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            return list(pool.map(send, plan))
    finally:
        for client in clients:
            client.close()


def tally(outcomes: list[Outcome]) -> dict[str, Any]:
    by_status = Counter("no answer" if o.status is None else str(o.status) for o in outcomes)
    by_route = Counter(f"{o.call.route} {o.status}" for o in outcomes)
    return {
        "sent": len(outcomes),
        "answered": sum(1 for o in outcomes if o.status is not None),
        "by_status": dict(sorted(by_status.items())),
        "by_route": dict(sorted(by_route.items())),
    }


def assert_all_answered(outcomes: list[Outcome], what: str) -> None:
    figures = tally(outcomes)
    print(f"\n{what}: {json.dumps(figures)}")
    problems = Counter(
        f"{o.call.method} {o.call.route}: {o.problem}" for o in outcomes if o.problem is not None
    )
    assert figures["answered"] == figures["sent"], f"{what}: {figures}; {dict(problems)}"
    assert not problems, f"{what}: {dict(problems)}"


# --- MQTT --------------------------------------------------------------------------


def mqtt_login(stack: Stack, password: str) -> tuple[mqtt.Client, int]:
    """A device's login to the embedded broker: the client (connected or not) and the CONNACK code."""
    answered = threading.Event()
    codes: list[int] = []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"dev-{time.monotonic_ns()}", protocol=mqtt.MQTTv311
    )
    client.username_pw_set(stack.mqtt_user, password)

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        codes.append(int(reason.value))
        answered.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", stack.mqtt_port, keepalive=30)
    client.loop_start()
    assert answered.wait(15), "no CONNACK from the embedded broker"
    if codes[0] != 0:
        client.loop_stop()
    return client, codes[0]


# --- the test ----------------------------------------------------------------------


def test_every_request_is_answered_through_a_database_outage(stack: Stack) -> None:
    plan = calls(stack) * ROUNDS
    assert 180 <= len(plan) <= 220

    # What devices will ask during the outage, asked once before it, and a
    # device's login that the broker will remember.
    assert_all_answered(fire(stack, calls(stack), outage_only=False), "before the outage")
    device, code = mqtt_login(stack, stack.mqtt_password)
    assert code == 0
    device.disconnect()
    device.loop_stop()

    # (a) Every backend of the receiver's database terminated, again and again, mid-traffic.
    terminated = 0
    with ThreadPoolExecutor(1) as runner:
        traffic = runner.submit(fire, stack, plan, outage_only=False)
        while not traffic.done():
            terminated += stack.database.terminate_backends()
            time.sleep(0.02)
        outcomes = traffic.result()
    print(f"\nbackends terminated: {terminated}")
    assert terminated > 0
    assert_all_answered(outcomes, "backends terminated mid-traffic")

    # (b) Connections refused: the proxy no longer listens and has cut every connection.
    with stack.proxy.closed():
        started = time.monotonic()
        outcomes = fire(stack, plan, outage_only=True)
        took = time.monotonic() - started
        assert_all_answered(outcomes, f"connections refused ({took:.1f} s)")
        assert all(
            o.status == 500 for o in outcomes if o.call.route in ("list", "deploy", "rollouts", "rollout")
        )
        ready = httpx.get(f"{stack.url}/readyz", timeout=10)
        assert (ready.status_code, ready.json()["failed"]) == (503, ["database"])

        # A device the broker saw log in logs in again, and reports; a wrong password is refused.
        device, code = mqtt_login(stack, stack.mqtt_password)
        assert code == 0, f"CONNACK {code} for a device that logged in before the outage"
        try:
            status = {"fw_version": "1.1.0", "uptime": 7}
            topic = f"/{stack.mqtt_user}/devices/{stack.canary_device}/status"
            device.publish(topic, json.dumps(status), qos=1).wait_for_publish(10)
        finally:
            device.disconnect()
            device.loop_stop()
        _, refused = mqtt_login(stack, stack.mqtt_password + "x")
        assert refused == 135  # "Not authorized": paho reports 3.1.1 code 5 so
        # Fail fast: no request waited on a connection timeout.
        assert took < 20

    # Back without a restart: readiness, the listing, the report taken during the
    # outage, and the rollout clock promoting the canary on it.
    eventually(lambda: httpx.get(f"{stack.url}/readyz", timeout=10).status_code == 200, "readiness")
    listing = httpx.get(f"{stack.url}/v1/ota/group", headers=stack.headers, timeout=10)
    assert listing.status_code == 200 and listing.json()["recordsTotal"] == 2, listing.text
    devices = {d["id"]: d for d in otaship_json(stack.env, "device", "list")}
    eventually(
        lambda: (
            {d["id"]: d for d in otaship_json(stack.env, "device", "list")}[stack.canary_device][
                "firmware_version"
            ]
            == "1.1.0"
        ),
        f"the report sent during the outage to be stored (devices: {devices})",
    )

    def rollout_state() -> str:
        body = httpx.get(
            f"{stack.url}/v1/rollouts/{stack.rollout_id}", headers=stack.headers, timeout=10
        ).json()
        return str(body["state"])

    eventually(lambda: rollout_state() == "fleet", "the rollout clock to promote the canary")
    eventually(
        lambda: (
            httpx.get(f"{stack.url}/v1/ota/group/latest/{stack.fleet['id']}", timeout=10).json()
            == {"ver": "1.1.0"}
        ),
        "the promotion to reach the fleet's latest",
    )
    deployed = deploy(stack.url, stack.headers, stack.fleet, "1.2.0", stack.images["1.2.0"])
    assert deployed["deployed"] is True
    latest = httpx.get(f"{stack.url}/v1/ota/group/latest/{stack.fleet['id']}", timeout=10)
    assert latest.json() == {"ver": "1.2.0"}
    download = httpx.get(
        f"{stack.url}/v1/ota/group/download/{stack.fleet['id']}{stack.fleet['token']}", timeout=30
    )
    assert download.content == stack.images["1.2.0"]
