"""A deploy reported back to GitHub as a Deployment (`github-deployment: true`):
created once the image is uploaded, with `in_progress` statuses at the upload and
at each stage of the rollout, then `success` or `failure`.

Reporting is a courtesy, never the verdict: a call GitHub refuses or does not
answer is tried ATTEMPTS times with backoff, then given up with a warning and a
line in the job summary; the deploy and the job's exit code are unchanged.
The workflow needs `permissions: deployments: write`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from otaship import __version__

ATTEMPTS = 3
API_VERSION = "2022-11-28"
# GitHub keeps at most 140 characters of a status's description.
MAX_DESCRIPTION = 140
SUCCESS_STATES = frozenset({"complete"})
FAILURE_STATES = frozenset({"halted", "aborted", "rolled_back"})


@dataclass(frozen=True)
class GithubTarget:
    """Where to report: the API, a token that may write deployments, the repository."""

    api_url: str
    token: str
    repository: str
    # The workflow run's page, where a plain deploy (no rollout) links.
    run_url: str | None = None


def environment_for(group_name: str) -> str:
    """`firmware/<group name>`, as the receiver names a webhook-started deploy's."""
    return f"firmware/{group_name}"


def stage_counts(rollout: Mapping[str, Any] | None) -> str:
    """`canary 10/10, fleet 412/1000`: each stage that started, succeeded of targeted."""
    if not rollout:
        return ""
    parts = [
        f"{stage.get('name')} {stage.get('succeeded', 0)}/{stage.get('targeted', 0)}"
        for stage in rollout.get("stages") or []
        if isinstance(stage, Mapping) and stage.get("started_at")
    ]
    return ", ".join(parts)


def stage_of(rollout: Mapping[str, Any] | None) -> str:
    """The stage a rollout is in: its state, or `wave N` past the first of its waves
    (their state stays `canary`), as the receiver reports a release's."""
    state = str(rollout.get("state", "")) if rollout else ""
    wave = rollout.get("wave") if rollout else None
    return f"wave {wave}" if state == "canary" and isinstance(wave, int) and wave > 1 else state


def progress_status(version: str, rollout: Mapping[str, Any] | None) -> tuple[str, str]:
    """The `in_progress` status while the rollout runs (pure)."""
    counts = stage_counts(rollout)
    state = stage_of(rollout)
    head = f"{version}: {state}" if state else f"{version} uploaded"
    return "in_progress", (f"{head}, {counts}" if counts else head)[:MAX_DESCRIPTION]


def final_status(
    version: str, rollout: Mapping[str, Any] | None, *, failure: str | None, timed_out: bool
) -> tuple[str, str]:
    """The last status of the run (pure): success, failure, or still in progress."""
    counts = stage_counts(rollout)
    state = str(rollout.get("state", "")) if rollout else ""
    if timed_out:
        text = f"{version}: still {state} when the job stopped following" + (f", {counts}" if counts else "")
        return "in_progress", text[:MAX_DESCRIPTION]
    if failure is not None or state in FAILURE_STATES:
        what = f"{version}: {state}" if state in FAILURE_STATES else f"{version}: deploy failed"
        detail = counts or (failure or "")
        return "failure", (f"{what}, {detail}" if detail else what)[:MAX_DESCRIPTION]
    if rollout is None:
        return "success", f"{version} deployed"[:MAX_DESCRIPTION]
    return "success", (f"{version}: {state}, {counts}" if counts else f"{version}: {state}")[:MAX_DESCRIPTION]


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return False


def _why(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"GitHub answered {exc.response.status_code}"
    return f"{type(exc).__name__}: {exc}"


class GithubDeployment:
    """One Deployment and its statuses; every failure is kept, none is raised."""

    def __init__(
        self,
        target: GithubTarget,
        *,
        warn: Callable[[str], None],
        backoff: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.target = target
        self.warn = warn
        self.backoff = backoff
        self.sleep = sleep
        self.deployment_id: int | None = None
        self.failures: list[str] = []
        self.log_url: str | None = target.run_url
        self._last: tuple[str, str] | None = None
        self._client = httpx.Client(
            base_url=target.api_url.rstrip("/"),
            headers={
                "Accept": "application/vnd.github+json",
                "Authorization": f"Bearer {target.token}",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": f"otaship-deploy/{__version__}",
            },
            timeout=30.0,
        )

    def close(self) -> None:
        self._client.close()

    def _post(self, what: str, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        delay = self.backoff
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = self._client.post(path, json=body)
                response.raise_for_status()
                answer: dict[str, Any] = response.json()
                return answer
            except (httpx.HTTPError, ValueError) as exc:
                if attempt < ATTEMPTS and _retryable(exc):
                    self.sleep(delay)
                    delay *= 2
                    continue
                message = f"{what}: {_why(exc)} (attempt {attempt} of {ATTEMPTS}); the deploy is not affected"
                self.failures.append(message)
                self.warn(message)
                return None
        return None

    def create(self, *, ref: str, group_name: str, version: str, rollout_id: str | None) -> None:
        created = self._post(
            "creating the GitHub deployment",
            f"/repos/{self.target.repository}/deployments",
            {
                "ref": ref,
                "environment": environment_for(group_name),
                "description": f"otaship {version}",
                "payload": {"version": version, "rollout_id": rollout_id},
                # Already built and uploaded: no checks to wait for, no merge.
                "auto_merge": False,
                "required_contexts": [],
                "production_environment": True,
            },
        )
        if created is not None and isinstance(created.get("id"), int):
            self.deployment_id = created["id"]

    def status(self, state: str, description: str) -> None:
        """Posted once per change: the same state and description again is not news."""
        if self.deployment_id is None or self._last == (state, description):
            return
        self._last = (state, description)
        body: dict[str, Any] = {"state": state, "description": description}
        if self.log_url:
            body["log_url"] = self.log_url
        self._post(
            f"posting the GitHub deployment status {state}",
            f"/repos/{self.target.repository}/deployments/{self.deployment_id}/statuses",
            body,
        )
