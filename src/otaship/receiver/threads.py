"""Blocking work in a worker thread, and what a cancel does to it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread

T = TypeVar("T")


async def in_thread(work: Callable[[], T]) -> T:
    """Run `work` in one of anyio's worker threads; a cancel waits for it to end.

    A thread cannot be stopped, and anyio lets a task that asyncio cancels (a
    stopping receiver cancels its background loops) return while the thread
    runs on. Left running, the thread would hold a database connection past the
    engine's disposal, which comes next, or write after the receiver stopped.
    """
    running = asyncio.ensure_future(anyio.to_thread.run_sync(work))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        await asyncio.wait({running})
        if not running.cancelled():
            # Retrieved, so that asyncio does not report it as never retrieved:
            # the cancel is what the caller hears of.
            running.exception()
        raise
