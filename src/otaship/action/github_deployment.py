"""A deploy reported back to GitHub as a Deployment (`github-deployment: true`):
created once the image is uploaded, with `in_progress` statuses at the upload and
at each stage of the rollout, then `success` or `failure`.

Reporting is a courtesy, never the verdict: a call GitHub refuses or does not
answer is tried ATTEMPTS times with backoff, then given up with a warning and a
line in the job summary; the deploy and the job's exit code are unchanged. A
retry of the creation first looks for the deployment the failed try may have
created (github_deployments.py), so that a deploy never has two.
The workflow needs `permissions: deployments: write`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from otaship import __version__
from otaship.github_deployments import (
    KEY_FIELD,
    created_with,
    deployment_request,
    environment_for,
    lookup_query,
)

ATTEMPTS = 3
API_VERSION = "2022-11-28"
# GitHub keeps at most 140 characters of a status's description.
MAX_DESCRIPTION = 140
SUCCESS_STATES = frozenset({"complete"})
FAILURE_STATES = frozenset({"halted", "aborted", "rolled_back"})
T = TypeVar("T")


@dataclass(frozen=True)
class GithubTarget:
    """Where to report: the API, a token that may write deployments, the repository."""

    api_url: str
    token: str
    repository: str
    # The workflow run's page, where a plain deploy (no rollout) links.
    run_url: str | None = None


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
        timeout: float = 30.0,
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
            timeout=timeout,
        )

    def close(self) -> None:
        self._client.close()

    def _tried(self, what: str, call: Callable[[], T]) -> T | None:
        delay = self.backoff
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return call()
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

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._client.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def create(self, *, ref: str, group_name: str, version: str, rollout_id: str | None) -> None:
        path = f"/repos/{self.target.repository}/deployments"
        request = deployment_request(
            ref=ref,
            environment=environment_for(group_name),
            version=version,
            rollout_id=rollout_id,
            key=uuid.uuid4().hex,
        )
        tried = False

        def create_once() -> int | None:
            # A try that failed may still have created it: a retry looks first.
            nonlocal tried
            if tried:
                found = created_with(
                    self._json("GET", path, params=lookup_query(request)), request["payload"][KEY_FIELD]
                )
                if found is not None:
                    return found
            tried = True
            created = self._json("POST", path, json=request)
            deployment_id = created.get("id") if isinstance(created, dict) else None
            if not isinstance(deployment_id, int):
                raise ValueError("GitHub's answer carries no deployment id")
            return deployment_id

        self.deployment_id = self._tried("creating the GitHub deployment", create_once)

    def status(self, state: str, description: str) -> None:
        """Posted once per change: the same state and description again is not news."""
        if self.deployment_id is None or self._last == (state, description):
            return
        self._last = (state, description)
        body: dict[str, Any] = {"state": state, "description": description}
        if self.log_url:
            body["log_url"] = self.log_url
        self._tried(
            f"posting the GitHub deployment status {state}",
            lambda: self._json(
                "POST",
                f"/repos/{self.target.repository}/deployments/{self.deployment_id}/statuses",
                json=body,
            ),
        )
