"""The receiver's HTTP API as the action uses it: deploy, and read rollouts.

httpx streams a file object passed in `files=` in 64 KiB reads, so an image is
never held in memory whole; each attempt reopens the file, so a retry sends it
from the start.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from otaship.action.retry import RetryPolicy, is_retryable_status, parse_retry_after

USER_AGENT = "otaship-deploy/0.1"
DEPLOY_PATH = "/v1/ota/group"
# Uploads and the receiver's image check can take a while; connecting should not.
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)


class ReceiverError(Exception):
    """The receiver did not accept a request; `message` is the receiver's own when it sent one."""

    def __init__(
        self, message: str, *, status: int | None = None, body: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body: Mapping[str, Any] = body or {}


class ReceiverRejected(ReceiverError):
    """A 4xx other than 429: sending the same request again would not help."""


class ReceiverUnavailable(ReceiverError):
    """Connection errors, 5xx or 429 that outlasted every retry."""


@dataclass(frozen=True)
class RolloutRequest:
    """The staged-rollout fields of a deploy; all empty means a plain deploy."""

    canary: str | None = None
    canary_timeout: int | None = None
    success_threshold: float | None = None
    error_threshold: int | None = None
    soak: int | None = None
    auto_promote: bool | None = None
    # Subgroup ids in order, comma-separated, the first being the canary.
    waves: str | None = None
    max_failure_rate: float | None = None
    min_devices: int | None = None
    rollback: bool | None = None

    @property
    def staged(self) -> bool:
        return bool(self.canary or self.waves)

    def form_fields(self) -> dict[str, object | None]:
        return {
            "canary": self.canary,
            "waves": self.waves,
            "max_failure_rate": self.max_failure_rate,
            "min_devices": self.min_devices,
            "canary_timeout": self.canary_timeout,
            "success_threshold": self.success_threshold,
            "error_threshold": self.error_threshold,
            "soak": self.soak,
            "auto_promote": None if self.auto_promote is None else str(self.auto_promote).lower(),
            "rollback": None if self.rollback is None else str(self.rollback).lower(),
        }


@dataclass(frozen=True)
class Deployment:
    """The form fields of one POST /v1/ota/group, besides the image."""

    group: str
    token: str
    version: str
    commit: str | None = None
    rollout: RolloutRequest = RolloutRequest()

    def form_fields(self) -> dict[str, str]:
        fields = {"group": self.group, "token": self.token, "version": self.version}
        optional: dict[str, object | None] = {"commit": self.commit, **self.rollout.form_fields()}
        fields.update(
            {key: str(value) for key, value in optional.items() if value is not None and value != ""}
        )
        return fields


def response_message(response: httpx.Response) -> tuple[str, dict[str, Any]]:
    """The receiver's `message` (with `error` for a 500), or a short text for a non-JSON body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = str(body.get("message") or f"HTTP {response.status_code}")
        if body.get("error"):
            message = f"{message}: {body['error']}"
        return message, body
    text = response.text.strip().replace("\n", " ")
    return (text[:200] or f"HTTP {response.status_code} {response.reason_phrase}"), {}


def build_deploy_request(
    http: httpx.Client, deployment: Deployment, firmware: BinaryIO, filename: str
) -> httpx.Request:
    return http.build_request(
        "POST",
        DEPLOY_PATH,
        data=deployment.form_fields(),
        files={"firmware": (filename, firmware, "application/octet-stream")},
    )


class ReceiverClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT},
            timeout=timeout,
            transport=transport,
        )
        self._policy = policy or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._on_retry = on_retry or (lambda message: None)

    def __enter__(self) -> ReceiverClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, what: str, make_request: Callable[[], httpx.Response]) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = make_request()
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                raise ReceiverRejected(f"the receiver URL {self.base_url!r} is not usable: {exc}") from exc
            except httpx.TransportError as exc:
                problem = f"could not reach the receiver at {self.base_url} ({type(exc).__name__}: {exc})"
                if not self._policy.should_retry(attempt):
                    raise ReceiverUnavailable(f"{what}: {problem}, after {attempt} attempts") from exc
                self._wait(attempt, problem, None)
                continue
            if response.is_success:
                return response
            message, body = response_message(response)
            if not is_retryable_status(response.status_code):
                raise ReceiverRejected(message, status=response.status_code, body=body)
            if not self._policy.should_retry(attempt):
                raise ReceiverUnavailable(
                    f"{what}: the receiver answered {response.status_code} ({message}) {attempt} times",
                    status=response.status_code,
                    body=body,
                )
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            self._wait(attempt, f"the receiver answered {response.status_code} ({message})", retry_after)

    def _wait(self, attempt: int, problem: str, retry_after: float | None) -> None:
        delay = self._policy.delay(attempt, self._rng, retry_after)
        self._on_retry(
            f"{problem}; retrying in {delay:.1f}s (attempt {attempt + 1} of {self._policy.attempts})"
        )
        self._sleep(delay)

    def deploy(self, deployment: Deployment, firmware: Path) -> dict[str, Any]:
        """POST the image; the 2xx body. Raises ReceiverRejected / ReceiverUnavailable."""

        def attempt() -> httpx.Response:
            with firmware.open("rb") as handle:
                return self._http.send(build_deploy_request(self._http, deployment, handle, firmware.name))

        return _json_object(self._send("deploy", attempt))

    def group_name(self, group_id: str) -> str | None:
        """The group's name from its OTA record in `GET /v1/ota/group`; None when the
        group has no record yet (nothing ever deployed to it, only to its canary)."""
        body = _json_object(
            self._send(
                "list OTA records",
                # Each record's path holds its group's id: the search finds the group's own.
                lambda: self._http.get(DEPLOY_PATH, params={"search_value": group_id, "limit": 100}),
            )
        )
        otas = body.get("otas")
        for ota in otas if isinstance(otas, list) else []:
            if isinstance(ota, dict) and ota.get("group") == group_id:
                name = ota.get("group_name")
                return name if isinstance(name, str) and name else None
        return None

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return _json_object(self._send("read rollout", lambda: self._http.get(f"/v1/rollouts/{rollout_id}")))

    def rollouts(self, group: str) -> list[dict[str, Any]]:
        """The group's rollouts, newest first."""
        body = _json_object(
            self._send("list rollouts", lambda: self._http.get("/v1/rollouts", params={"group": group}))
        )
        rollouts = body.get("rollouts", [])
        return [item for item in rollouts if isinstance(item, dict)] if isinstance(rollouts, list) else []


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise ReceiverError(
            f"the receiver answered {response.status_code} with a body that is not JSON; is the receiver URL right?",
            status=response.status_code,
        ) from None
    if not isinstance(body, dict):
        raise ReceiverError(
            f"the receiver answered {response.status_code} with unexpected JSON", status=response.status_code
        )
    return body
