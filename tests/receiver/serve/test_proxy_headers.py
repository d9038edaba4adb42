"""Proxy headers on each server: X-Forwarded-For is believed from FORWARDED_ALLOW_IPS only.

Seen through what depends on the client's address: the limit on requests
with a bad API key, counted per address.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.receiver_process import SERVERS, ReceiverProcess, migrated_env

BAD_KEY = {"Authorization": "Bearer osk_not-a-key"}


def _statuses(url: str, forwarded_for: str, count: int) -> list[int]:
    headers = {**BAD_KEY, "X-Forwarded-For": forwarded_for}
    return [httpx.get(f"{url}/v1/ota/group", headers=headers, timeout=10).status_code for _ in range(count)]


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("trusted", [None, "10.9.9.9"])
def test_forwarded_for_is_believed_from_trusted_addresses_only(
    tmp_path: Path, server: str, trusted: str | None
) -> None:
    extra = {"OTASHIP_RATE_LIMIT_BAD_KEYS": "3/day"}
    if trusted is not None:
        extra["FORWARDED_ALLOW_IPS"] = trusted
    receiver = ReceiverProcess(migrated_env(tmp_path / "data", server=server, **extra)).start()
    try:
        # Untrusted, every request counts for 127.0.0.1, and start()'s one probe
        # (no key) already took one of the three.
        first = [401, 401, 401, 429] if trusted is None else [401, 401, 429, 429]
        assert _statuses(receiver.url, "203.0.113.7", 4) == first
        # Another client behind the same proxy: its own count when the proxy (the
        # default trusted address, 127.0.0.1) is believed, the proxy's otherwise.
        other = _statuses(receiver.url, "203.0.113.8", 1)
        assert other == ([401] if trusted is None else [429])
    finally:
        receiver.stop()
