"""A delivery's job survives its receiver: killed after the 202 and before the
deploy, the restarted receiver deploys it, once.

GitHub itself cannot run here: tests/github_standin.py stands in for its REST
API and its asset host, and holds the download back until the test lets it go.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import httpx

from otaship.receiver.github.signature import signature_of
from tests.esp_image import build_image
from tests.github_standin import github_standin, release_payload
from tests.receiver_process import ReceiverProcess, migrated_env, otaship, otaship_json
from tests.waiting import eventually

KEY = "restart-test-key-" + "s" * 32
TOKEN = "ghp_" + "RestartT0kenRestartT0kenRestartT0ken"
COMMIT = "6dcb09b5b57875f334f61aebed695e2e4193db5e"


def rows(database: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(database) as connection:
        return connection.execute(query).fetchall()


def test_a_receiver_killed_after_the_202_deploys_after_its_restart_once(tmp_path: Path) -> None:
    with github_standin() as standin:
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
        )
        secret = bound["secret"]
        image = build_image("1.4.0")
        standin.host.assets[7] = image
        standin.commits["v1.4.0"] = COMMIT
        standin.host.gate = threading.Event()  # the download waits

        receiver = ReceiverProcess(env).start()
        logs = []
        try:
            body = json.dumps(release_payload(assets=[(7, "firmware.bin", len(image))])).encode()
            delivery = str(uuid.uuid4())
            response = httpx.post(
                f"{receiver.url}/v1/webhooks/github?binding={bound['id']}",
                content=body,
                headers={
                    "X-GitHub-Event": "release",
                    "X-GitHub-Delivery": delivery,
                    "X-Hub-Signature-256": signature_of(secret, body),
                    "Content-Type": "application/json",
                },
            )
            assert response.status_code == 202, response.text
            eventually(lambda: len(standin.host.seen) == 1, "the download to start")
            receiver.kill()
            logs.append(receiver.stop())
            database = data / "otaship.db"
            assert rows(database, "SELECT outcome, attempts FROM github_deliveries") == [("queued", 1)]
            assert rows(database, "SELECT COUNT(*) FROM deployments") == [(0,)]

            standin.host.gate.set()
            restarted_at = time.monotonic()
            receiver = ReceiverProcess(env).start()
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
        assert secret not in log and TOKEN not in log
