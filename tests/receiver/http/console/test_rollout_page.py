"""The rollout page: stages drawn from the rollout's data, outcomes, the reason in
words, Promote, Pause, Resume and Abort behind the CSRF token, the event stream,
and another owner's rollout as a 404."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlmodel import col, select
from starlette.testclient import TestClient

from otaship.receiver.db.engine import write_session
from otaship.receiver.db.enums import Outcome
from otaship.receiver.db.models import RolloutDevice
from otaship.receiver.http.console import rollout_page
from otaship.receiver.services import Services
from tests.conftest import Fleet, Owner
from tests.esp_image import build_image
from tests.receiver.http.console.conftest import Console, SignIn
from tests.receiver.rollouts.test_rollouts import tick


def start_rollout(client: TestClient, fleet: Fleet, owner: Owner, **policy: str) -> str:
    group = fleet.group(owner, name="fleet")
    canary = fleet.group(owner, name="canary <b>", parent=group)
    fleet.device(canary, name="c1", firmware_version="1.0.0")
    fleet.device(group, name="f1", firmware_version="1.0.0")
    answer = client.post(
        "/v1/ota/group",
        headers=owner.headers,
        data={"group": group.id, "token": group.token, "version": "2.0.0", "canary": canary.id, **policy},
        files={"firmware": ("firmware.bin", build_image("2.0.0"))},
    )
    assert answer.status_code == 201, answer.text
    rollout_id: str = answer.json()["rollout"]["id"]
    return rollout_id


def test_the_page_shows_every_stage_and_device_and_refuses_a_promote_with_words(
    client: TestClient, fleet: Fleet, console: Console
) -> None:
    rollout_id = start_rollout(client, fleet, console.owner, auto_promote="false")
    page = console.client.get(f"/console/rollouts/{rollout_id}")
    assert page.status_code == 200
    text = page.text
    assert '<span id="rollout-state" class="state state-canary">canary</span>' in text
    assert [stage for stage in ("canary", "fleet") if f'data-stage="{stage}"' in text] == ["canary", "fleet"]
    assert "canary &lt;b&gt;" in text and "canary <b>" not in text
    assert '<dd data-count="targeted">1</dd>' in text
    assert "<td>c1</td><td>canary</td>" in text
    assert 'data-confirm="Promote this rollout' in text
    csrf = console.csrf(f"/console/rollouts/{rollout_id}")
    refused = console.client.post(f"/console/rollouts/{rollout_id}/promote", data={"csrf": csrf})
    assert refused.status_code == 409
    assert (
        "Not promoted: the canary has not reached its success threshold: 0 of 1 succeeded, 1 needed"
        in refused.text
    )


def test_promote_abort_and_csrf(
    client: TestClient, services: Services, fleet: Fleet, console: Console
) -> None:
    rollout_id = start_rollout(client, fleet, console.owner, auto_promote="false")
    url = f"/console/rollouts/{rollout_id}"
    # As if the canary device had reported its update (the browser test has real ones).
    with write_session(services.engine) as session:
        for row in session.exec(select(RolloutDevice).where(col(RolloutDevice.rollout_id) == rollout_id)):
            row.outcome = Outcome.SUCCEEDED
            session.add(row)
    # Without the token: refused, and the rollout is as it was.
    assert console.client.post(f"{url}/promote", data={}).status_code == 403
    assert console.client.post(f"{url}/abort", data={"csrf": "0" * 64}).status_code == 403
    assert client.get(f"/v1/rollouts/{rollout_id}", headers=console.owner.headers).json()["state"] == "canary"
    csrf = console.csrf(url)
    promoted = console.client.post(f"{url}/promote", data={"csrf": csrf}, follow_redirects=False)
    assert (promoted.status_code, promoted.headers["location"]) == (303, url)
    assert 'class="state state-fleet">fleet</span>' in console.client.get(url).text
    aborted = console.client.post(f"{url}/abort", data={"csrf": csrf}, follow_redirects=False)
    assert aborted.status_code == 303
    page = console.client.get(url).text
    assert '<p id="rollout-reason" class="reason reason-aborted">Aborted: aborted by request</p>' in page
    assert 'id="promote"' not in page and 'id="abort"' not in page


def test_pause_resume_and_csrf(client: TestClient, fleet: Fleet, console: Console) -> None:
    rollout_id = start_rollout(client, fleet, console.owner, auto_promote="false")
    url = f"/console/rollouts/{rollout_id}"
    email = console.owner.user.email

    def api() -> dict[str, Any]:
        body: dict[str, Any] = client.get(f"/v1/rollouts/{rollout_id}", headers=console.owner.headers).json()
        return body

    page = console.client.get(url).text
    assert 'action="/console/rollouts/' + rollout_id + '/pause"' in page
    assert 'id="pause"' in page and 'id="resume"' not in page and 'id="rollout-paused"' not in page
    # Without the token, or with another: refused, and the rollout is as it was.
    assert console.client.post(f"{url}/pause", data={}).status_code == 403
    assert console.client.post(f"{url}/pause", data={"csrf": "0" * 64}).status_code == 403
    assert (api()["paused"], api()["controls"]) == (False, [])

    csrf = console.csrf(url)
    paused = console.client.post(f"{url}/pause", data={"csrf": csrf}, follow_redirects=False)
    assert (paused.status_code, paused.headers["location"]) == (303, url)
    body = api()
    assert (body["state"], body["paused"]) == ("canary", True)
    assert [(c["action"], c["by"]) for c in body["controls"]] == [("pause", email)]
    page = console.client.get(url).text
    assert (
        f'<p id="rollout-paused" class="paused">Paused by {email} at {body["controls"][0]["at"]}: no wave '
        "advances and no stage times out until it is resumed; devices already updating carry on.</p>"
    ) in page
    # Paused: Resume and Abort, no Pause and no Promote.
    assert 'id="resume"' in page and 'id="abort"' in page
    assert 'id="pause"' not in page and 'id="promote"' not in page
    # The buttons of a page opened before the pause: refused in words, nothing changed.
    again = console.client.post(f"{url}/pause", data={"csrf": csrf})
    assert again.status_code == 409
    assert (
        '<p class="error" role="alert" id="problem">Not paused: the rollout is already paused</p>'
        in again.text
    )
    promoted = console.client.post(f"{url}/promote", data={"csrf": csrf})
    assert promoted.status_code == 409
    assert "Not promoted: the rollout is paused: resume it first" in promoted.text
    assert len(api()["controls"]) == 1

    assert console.client.post(f"{url}/resume", data={}).status_code == 403
    assert api()["paused"] is True
    resumed = console.client.post(f"{url}/resume", data={"csrf": csrf}, follow_redirects=False)
    assert (resumed.status_code, resumed.headers["location"]) == (303, url)
    body = api()
    assert (body["state"], body["paused"]) == ("canary", False)
    assert [(c["action"], c["by"]) for c in body["controls"]] == [("pause", email), ("resume", email)]
    page = console.client.get(url).text
    assert 'id="pause"' in page and 'id="promote"' in page
    assert 'id="resume"' not in page and 'id="rollout-paused"' not in page
    again = console.client.post(f"{url}/resume", data={"csrf": csrf})
    assert again.status_code == 409
    assert "Not resumed: the rollout is not paused" in again.text

    # An ended rollout has none of the buttons, and refuses a pause from an old page.
    assert console.client.post(f"{url}/abort", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    ended = console.client.post(f"{url}/pause", data={"csrf": csrf})
    assert ended.status_code == 409
    assert "Not paused: the rollout has already ended: aborted" in ended.text
    assert 'id="pause"' not in ended.text and 'id="resume"' not in ended.text
    assert len(api()["controls"]) == 2


def test_a_rolled_back_rollout_shows_its_halt_and_each_waves_rollback(
    client: TestClient, services: Services, fleet: Fleet, console: Console
) -> None:
    rollout_id = start_rollout(client, fleet, console.owner, rollback="true")
    # As if the canary device had answered 203.
    with write_session(services.engine) as session:
        for row in session.exec(select(RolloutDevice).where(col(RolloutDevice.rollout_id) == rollout_id)):
            row.outcome = Outcome.FAILED
            row.reason = "code"
            session.add(row)
    # The app's own clock may get there first: tick retries while it holds the row.
    tick(services)
    page = console.client.get(f"/console/rollouts/{rollout_id}").text
    assert '<span id="rollout-state" class="state state-rolled_back">rolled_back</span>' in page
    assert (
        '<p id="rollout-reason" class="reason reason-rolled_back">Halted and rolled back: '
        "1 canary device(s) failed; error_threshold tolerates 0</p>"
    ) in page
    assert '<h2 id="rollback-heading">Rollback</h2>' in page
    assert "left as it is: it had no previous firmware</td>" in page
    assert 'id="promote"' not in page and 'id="abort"' not in page


def test_the_event_stream_carries_the_live_block(
    client: TestClient, fleet: Fleet, console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    rollout_id = start_rollout(client, fleet, console.owner)
    monkeypatch.setattr(rollout_page, "STREAM_SECONDS", 0.1)
    with console.client.stream("GET", f"/console/rollouts/{rollout_id}/events") as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = list(events.iter_lines())
    assert lines[:2] == ["retry: 1000", ""]
    assert lines[2] == "event: rollout"
    html = json.loads(lines[3].removeprefix("data: "))["html"]
    assert '<span id="rollout-state" class="state state-canary">canary</span>' in html


def test_another_owners_rollout_is_a_404(client: TestClient, fleet: Fleet, sign_in: SignIn) -> None:
    other = fleet.owner()
    rollout_id = start_rollout(client, fleet, other)
    console = sign_in(fleet.owner())
    for path in (f"/console/rollouts/{rollout_id}", f"/console/rollouts/{rollout_id}/events"):
        answer = console.client.get(path)
        assert answer.status_code == 404
        assert "There is no such rollout in your account." in answer.text
    csrf = console.csrf()
    for action in ("abort", "pause", "resume"):
        answer = console.client.post(f"/console/rollouts/{rollout_id}/{action}", data={"csrf": csrf})
        assert answer.status_code == 404, action
    body = client.get(f"/v1/rollouts/{rollout_id}", headers=other.headers).json()
    assert (body["state"], body["paused"], body["controls"]) == ("canary", False, [])
