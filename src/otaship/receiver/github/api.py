"""The few GitHub REST calls otaship makes: a release asset's bytes, a tag's
commit, and deployments with their statuses.

Each request is tried up to ATTEMPTS times with backoff when GitHub (or the
asset host it redirects to) times out, drops the connection, answers 5xx or
429; any other 4xx is final. The token goes only to the API's own host: httpx
drops the Authorization header on a redirect to another origin, which is what
GitHub's asset downloads do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

from otaship import __version__
from otaship.github_deployments import KEY_FIELD, created_with, lookup_query
from otaship.receiver.logs import short_error

log = logging.getLogger("otaship.github")

ATTEMPTS = 3
API_VERSION = "2022-11-28"
T = TypeVar("T")


class GithubError(Exception):
    """A call to GitHub failed; the message says which and why, never the token."""


class AssetTooLarge(GithubError):
    pass


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return False


def _json_of(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        raise GithubError(
            f"{response.request.method} {response.request.url.path}: GitHub's answer is not JSON"
        ) from None


def _why(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} from {exc.request.url.host}"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return short_error(exc)


class GithubApi:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float,
        backoff: float = 1.0,
        attempts: int = ATTEMPTS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.backoff = backoff
        self.attempts = attempts
        self._headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": f"otaship/{__version__}",
        }
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        async with httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self.timeout,
            follow_redirects=True,
            # Proxies come from settings, not from the environment of the process.
            trust_env=False,
        ) as client:
            yield client

    async def _tried(self, what: str, call: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._client() as client:
                    return await call(client)
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                if attempt == self.attempts or not _retryable(exc):
                    raise GithubError(f"{what}: {_why(exc)} (attempt {attempt} of {self.attempts})") from None
                log.info("%s: %s; trying again in %.0f s", what, _why(exc), delay)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def download_asset(self, repo: str, asset_id: int, dest: Path, *, max_bytes: int) -> int:
        """The asset's bytes into `dest`; its size. Refused past `max_bytes`."""

        async def download(client: httpx.AsyncClient) -> int:
            async with client.stream(
                "GET",
                f"/repos/{repo}/releases/assets/{asset_id}",
                headers={"Accept": "application/octet-stream"},
            ) as response:
                response.raise_for_status()
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise AssetTooLarge(f"the asset is {int(declared)} bytes, over the limit of {max_bytes}")
                size = 0
                with dest.open("wb") as out:
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > max_bytes:
                            raise AssetTooLarge(f"the asset is over the limit of {max_bytes} bytes")
                        out.write(chunk)
                return size

        return await self._tried(f"downloading asset {asset_id} of {repo}", download)

    async def commit_of(self, repo: str, ref: str) -> str:
        """The commit SHA a tag or branch points at."""

        async def read(client: httpx.AsyncClient) -> str:
            response = await client.get(
                f"/repos/{repo}/commits/{ref}", headers={"Accept": "application/vnd.github.sha"}
            )
            response.raise_for_status()
            return response.text.strip()

        return await self._tried(f"reading the commit of {ref} in {repo}", read)

    async def create_deployment(self, repo: str, request: dict[str, Any], *, look_first: bool = False) -> int:
        """The id of the deployment `request` (github_deployments.deployment_request)
        creates. Every retry, and the first try when `look_first` (a job run again),
        first looks for one an earlier try created, so that none is created twice."""
        tried = look_first

        async def create(client: httpx.AsyncClient) -> int:
            nonlocal tried
            if tried:
                listed = await client.get(f"/repos/{repo}/deployments", params=lookup_query(request))
                listed.raise_for_status()
                found = created_with(_json_of(listed), request["payload"][KEY_FIELD])
                if found is not None:
                    return found
            tried = True
            response = await client.post(f"/repos/{repo}/deployments", json=request)
            response.raise_for_status()
            created = _json_of(response)
            deployment_id = created.get("id") if isinstance(created, dict) else None
            if not isinstance(deployment_id, int):
                raise GithubError(
                    f"creating a deployment in {repo}: GitHub's answer carries no deployment id"
                )
            return deployment_id

        return await self._tried(f"creating a deployment in {repo}", create)

    async def create_status(
        self, repo: str, deployment_id: int, *, state: str, description: str, log_url: str | None
    ) -> None:
        # GitHub cuts descriptions at 140 characters.
        body: dict[str, Any] = {"state": state, "description": description[:140]}
        if log_url:
            body["log_url"] = log_url

        async def post(client: httpx.AsyncClient) -> None:
            response = await client.post(f"/repos/{repo}/deployments/{deployment_id}/statuses", json=body)
            response.raise_for_status()

        await self._tried(f"posting deployment status {state} in {repo}", post)
