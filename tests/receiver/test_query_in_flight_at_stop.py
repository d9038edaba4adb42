"""A background task stopped while its database call runs in a worker thread.

The app stops its background tasks (the rollout clock, the trigger publisher,
the report ingester, the webhook jobs: each runs its database work through
threads.in_thread, as Services.run_db and run_write do) by cancelling them, and the engine is disposed
right after. A thread cannot be cancelled: had the task ended at once, the
thread's connection would come back to a disposed pool, never to be closed (on
PostgreSQL, psycopg then warns when the connection is collected, in whichever
test runs next).
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import text
from sqlmodel import Session

from otaship.receiver.services import Services


def test_a_cancelled_task_gives_its_connection_back_first(services: Services) -> None:
    inside, release = threading.Event(), threading.Event()

    def slow(session: Session) -> int:
        value = int(session.exec(text("SELECT 1")).one()[0])  # type: ignore[call-overload]
        inside.set()
        release.wait(10)
        return value

    async def scenario() -> tuple[bool, int]:
        task = asyncio.create_task(services.run_write(slow))
        while not inside.is_set():
            await asyncio.sleep(0.01)
        assert services.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        task.cancel()
        await asyncio.sleep(0.2)
        # Still waiting for its thread, which holds the connection.
        waiting = not task.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return waiting, services.engine.pool.checkedout()  # type: ignore[attr-defined]

    assert asyncio.run(scenario()) == (True, 0)
