"""Rate limits on the management API: per API key, and per address for bad keys.

Reads (GET, HEAD) and writes (everything else) of one API key are limited
separately, as hawkBit's DoS filter limits a client's reads and writes. A
request with a missing or bad key answers 401 after a database lookup, so a
flood of random keys would never meet a per-key limit: those are limited per
client address instead. A key that authenticated lately skips that address
check, so that one client's flood of bad keys does not lock out honest
clients behind the same address (a NAT, or a load balancer whose address
the server sees because it does not trust its proxy headers).

The limits package counts in this process's memory with its sliding window
counter: two counters per key, weighted, so a burst at a window's edge does
not get twice the limit through. Its moving window is exact but keeps a
timestamp per request, and the in-memory storage sweeps every key's list
every 10 ms: with a thousand busy keys it cost about 1.5 times as much a request.
The limits are per replica, so N replicas let a client through at N times the
rate. Keys are held only as a keyed hash whose key never leaves the process.
Device routes, probes and /metrics are never limited: the limit wraps only
the routes handed to `limited`.
"""

from __future__ import annotations

import copy
import hashlib
import math
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otaship.receiver.http import wire
from otaship.receiver.http.responses import answer
from otaship.receiver.settings import Settings
from otaship.receiver.ttl_map import TtlMap

READS = frozenset({"GET", "HEAD"})
# How long a key that authenticated is trusted past the bad-key limit of its address.
GOOD_KEY_SECONDS = 3600.0
GOOD_KEYS_KEPT = 10_000


@dataclass(frozen=True)
class Refusal:
    """A request over a limit: what to tell the client."""

    message: str
    retry_after: int


def describe(item: RateLimitItem, what: str) -> str:
    """`200 reads per second`, `1000 writes per 2 minutes`."""
    unit = item.GRANULARITY.name
    per = unit if item.multiples == 1 else f"{item.multiples} {unit}s"
    return f"{item.amount} {what} per {per}"


def retry_after(reset_time: float, now: float) -> int:
    """Whole seconds until the window frees a slot; at least 1, as a client
    told 0 would come straight back."""
    return max(1, math.ceil(reset_time - now))


class RateLimits:
    """The limits of one app, and the moving windows that count against them."""

    def __init__(self, *, reads: str | None, writes: str | None, bad_keys: str | None) -> None:
        self.reads = parse(reads) if reads else None
        self.writes = parse(writes) if writes else None
        self.bad_keys = parse(bad_keys) if bad_keys else None
        self._windows = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._hash_key = secrets.token_bytes(32)
        # digest -> whether its last answer authenticated
        self._good: TtlMap[str, bool] = TtlMap(GOOD_KEY_SECONDS, max_entries=GOOD_KEYS_KEPT)

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits | None:
        """None when every limit is off: the routes are then left unwrapped."""
        if not (settings.rate_limit_reads or settings.rate_limit_writes or settings.rate_limit_bad_keys):
            return None
        return cls(
            reads=settings.rate_limit_reads,
            writes=settings.rate_limit_writes,
            bad_keys=settings.rate_limit_bad_keys,
        )

    def digest(self, credentials: bytes) -> str:
        return hashlib.blake2b(credentials, key=self._hash_key, digest_size=16).hexdigest()

    def admit(self, method: str, digest: str | None, address: str) -> Refusal | None:
        """Count a request; a Refusal when it is over a limit."""
        unproven = digest is None or not self._good.get(digest)
        if (
            self.bad_keys is not None
            and unproven
            and not self._windows.test(self.bad_keys, "bad-key", address)
        ):
            what = "requests with a missing or bad API key"
            return self._refusal(
                self.bad_keys, f"{describe(self.bad_keys, what)} from one address", "bad-key", address
            )
        if digest is None:
            return None
        kind, item = ("read", self.reads) if method in READS else ("write", self.writes)
        if item is not None and not self._windows.hit(item, kind, digest):
            return self._refusal(item, f"{describe(item, kind + 's')} per API key", kind, digest)
        return None

    def answered(self, status: int, digest: str | None, address: str) -> None:
        """Learn from the answer whether the key was good."""
        if status == 401:
            if digest is not None:
                self._good.put(digest, False)
            if self.bad_keys is not None:
                self._windows.hit(self.bad_keys, "bad-key", address)
        elif digest is not None and status < 500:
            self._good.put(digest, True)

    def _refusal(self, item: RateLimitItem, limit: str, *identifiers: str) -> Refusal:
        seconds = retry_after(self._windows.get_window_stats(item, *identifiers).reset_time, time.time())
        return Refusal(f"Rate limit exceeded: at most {limit}. Retry after {seconds} s.", seconds)


def bearer_credentials(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The credentials of the first Authorization header, as otaship.receiver.http.auth reads them."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            credentials = credentials.strip()
            return credentials if scheme.lower() == b"bearer" and credentials else None
    return None


class LimitRequests:
    """Pure ASGI middleware around one route: refuse over the limit, else pass
    the request on and note whether its key was accepted."""

    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        credentials = bearer_credentials(scope["headers"])
        digest = self.limits.digest(credentials) if credentials is not None else None
        client = scope.get("client")
        address = client[0] if client else "unknown"
        refusal = self.limits.admit(scope["method"], digest, address)
        if refusal is not None:
            response = answer(
                wire.Message(message=refusal.message), 429, headers={"Retry-After": str(refusal.retry_after)}
            )
            await response(scope, receive, send)
            return
        noted = False

        async def send_observed(message: Message) -> None:
            nonlocal noted
            if message["type"] == "http.response.start" and not noted:
                # Counted before the answer leaves: a client that asks again the
                # moment it reads a 401 must find that 401 already counted.
                noted = True
                self.limits.answered(message["status"], digest, address)
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            if not noted:
                self.limits.answered(500, digest, address)


def limited(routes: Sequence[BaseRoute], limits: RateLimits | None) -> list[BaseRoute]:
    """Copies of `routes` behind the limits, outside whatever the route already
    wraps its endpoint in (the API key's check, which tells the limits whether
    a key is good). The route lists are module-level and shared by every app
    built in a process, so they are not changed."""
    if limits is None:
        return list(routes)
    wrapped: list[BaseRoute] = []
    for route in routes:
        assert isinstance(route, Route), route
        behind = copy.copy(route)
        behind.app = LimitRequests(route.app, limits)
        wrapped.append(behind)
    return wrapped
