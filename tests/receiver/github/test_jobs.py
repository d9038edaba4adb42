"""A delivery's job survives its receiver: killed after the 202 and before the
deploy, the restarted receiver deploys it, once; killed after it created the
GitHub deployment, the restarted receiver finds it rather than create another.

GitHub itself cannot run here: tests/github_standin.py stands in for its REST
API and its asset host, and holds the download back until the test lets it go.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from otaship.github_deployments import KEY_FIELD
from otaship.receiver.github.signature import signature_of
from tests.esp_image import build_image
from tests.github_standin import GithubStandIn, github_standin, release_payload
from tests.receiver_process import ReceiverProcess, migrated_env, otaship, otaship_json
from tests.waiting import eventually

KEY = "restart-test-key-" + "s" * 32
TOKEN = "ghp_" + "RestartT0kenRestartT0kenRestartT0ken"
COMMIT = "6dcb09b5b57875f334f61aebed695e2e4193db5e"


def rows(database: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(database) as connection:
        return connection.execute(query).fetchall()


@dataclass
class Bound:
    env: dict[str, str]
    database: Path
    binding_id: str
    secret: str


def bound_receiver(tmp_path: Path, standin: GithubStandIn, *bind_args: str) -> Bound:
    """A receiver's data with a group bound to the repository, its job lease 3 s."""
    data = tmp_path / "data"
    env = migrated_env(
        data,
        OTASHIP_SECRET_KEY=KEY,
        OTASHIP_GITHUB_API_URL=standin.api_url,
        OTASHIP_GITHUB_JOB_LEASE="3",
        OTASHIP_GITHUB_TOKEN_FOR_TEST=TOKEN,
        OTASHIP_LOG_LEVEL="debug",
    )
    otaship(env, "user", "create", "ada@example.com", "--plan", "pro")
    group = otaship_json(env, "group", "create", "fleet", "--owner", "ada@example.com")
    bound = otaship_json(
        env,
        "github",
        "bind",
        "--owner",
        "ada@example.com",
        "--repo",
        "octo-org/thermostat",
        "--group",
        group["id"],
        "--token-env",
        "OTASHIP_GITHUB_TOKEN_FOR_TEST",
        *bind_args,
    )
    standin.commits["v1.4.0"] = COMMIT
    return Bound(env, data / "otaship.db", bound["id"], bound["secret"])


def deliver(receiver: ReceiverProcess, bound: Bound, asset_id: int, size: int) -> str:
    body = json.dumps(release_payload(assets=[(asset_id, "firmware.bin", size)])).encode()
    delivery = str(uuid.uuid4())
    response = httpx.post(
        f"{receiver.url}/v1/webhooks/github?binding={bound.binding_id}",
        content=body,
        headers={
            "X-GitHub-Event": "release",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature_of(bound.secret, body),
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == 202, response.text
    return delivery


def test_a_receiver_killed_after_the_202_deploys_after_its_restart_once(tmp_path: Path) -> None:
    with github_standin() as standin:
        bound = bound_receiver(tmp_path, standin)
        database = bound.database
        image = build_image("1.4.0")
        standin.host.assets[7] = image
        standin.host.gate = threading.Event()  # the download waits

        receiver = ReceiverProcess(bound.env).start()
        logs = []
        try:
            delivery = deliver(receiver, bound, 7, len(image))
            eventually(lambda: len(standin.host.seen) == 1, "the download to start")
            receiver.kill()
            logs.append(receiver.stop())
            assert rows(database, "SELECT outcome, attempts FROM github_deliveries") == [("queued", 1)]
            assert rows(database, "SELECT COUNT(*) FROM deployments") == [(0,)]

            standin.host.gate.set()
            restarted_at = time.monotonic()
            receiver = ReceiverProcess(bound.env).start()
            eventually(
                lambda: rows(database, "SELECT outcome FROM github_deliveries") == [("deployed",)],
                "the restarted receiver to deploy the release",
            )
            took = time.monotonic() - restarted_at
            assert rows(database, 'SELECT version, "commit", revision FROM group_otas') == [
                ("1.4.0", COMMIT, 0)
            ]
            assert rows(database, "SELECT COUNT(*) FROM deployments") == [(1,)]
            assert rows(database, "SELECT attempts FROM github_deliveries") == [(2,)]
            # Taken over once the dead replica's lease (3 s) had lapsed.
            assert took < 30
        finally:
            if standin.host.gate is not None:
                standin.host.gate.set()
            logs.append(receiver.stop())
        log = "\n".join(logs)
        assert f"github delivery {delivery} (v1.4.0): deployed" in log
        # Neither the webhook's secret nor the token is in any line, at debug level.
        assert bound.secret not in log and TOKEN not in log


def test_a_receiver_killed_after_creating_the_github_deployment_does_not_create_another(
    tmp_path: Path,
) -> None:
    with github_standin() as standin:
        bound = bound_receiver(tmp_path, standin, "--report-deployments")
        database = bound.database
        image = build_image("1.4.0")
        standin.host.assets[7] = image
        standin.creation_delay = 30  # GitHub creates it, then the receiver dies waiting

        receiver = ReceiverProcess(bound.env).start()
        try:
            delivery = deliver(receiver, bound, 7, len(image))
            eventually(lambda: len(standin.deployments) == 1, "the deployment to be created")
            receiver.kill()
            receiver.stop()
            assert rows(database, "SELECT outcome, github_deployment_id FROM github_deliveries") == [
                ("queued", None)
            ]
            standin.creation_delay = 0
            receiver = ReceiverProcess(bound.env).start()
            eventually(
                lambda: (
                    rows(database, "SELECT outcome, github_deployment_id FROM github_deliveries")
                    == [("deployed", 1000)]
                ),
                "the restarted receiver to finish the delivery",
            )
            eventually(lambda: len(standin.statuses) == 1, "the success status")
        finally:
            receiver.stop()
        # The job ran again: its deploy changed nothing, and it found its deployment.
        assert rows(database, "SELECT attempts FROM github_deliveries") == [(2,)]
        assert rows(database, "SELECT COUNT(*) FROM deployments") == [(1,)]
        assert [body["payload"][KEY_FIELD] for body in standin.deployments] == [delivery]
        deployment_calls = [
            seen.method for seen in standin.api_seen if seen.path == "/repos/octo-org/thermostat/deployments"
        ]
        assert deployment_calls == ["POST", "GET"]
        assert standin.statuses == [(1000, {"state": "success", "description": "1.4.0 deployed"})]
