"""Sleeping until woken or a timeout, in a way a cancel always ends."""

from __future__ import annotations

import asyncio


async def sleep_until_woken(wake: asyncio.Event, timeout: float) -> None:
    """Wait for `wake` at most `timeout` seconds, then clear it.

    Not asyncio.wait_for: on Python 3.11 it can swallow a cancel that lands
    just as the event is set, and a background loop then never stops.
    """
    try:
        async with asyncio.timeout(timeout):
            await wake.wait()
    except TimeoutError:
        pass
    wake.clear()
