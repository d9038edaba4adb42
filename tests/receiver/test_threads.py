"""in_thread: a cancelled task waits for its thread, which may hold a database connection."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from otaship.receiver.threads import in_thread


def test_a_cancel_waits_for_the_thread_to_end() -> None:
    started, release, ended = threading.Event(), threading.Event(), threading.Event()

    def work() -> str:
        started.set()
        release.wait(timeout=10)
        ended.set()
        return "done"

    async def scenario() -> None:
        task = asyncio.create_task(in_thread(work))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        # The cancel is delivered, but the task stays until the work is over.
        done, _ = await asyncio.wait({task}, timeout=0.3)
        assert done == set() and not ended.is_set()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ended.is_set()

    asyncio.run(scenario())


def test_the_work_s_answer_and_error_reach_the_caller() -> None:
    def fail() -> None:
        raise LookupError("no such row")

    async def scenario() -> None:
        assert await in_thread(lambda: 42) == 42
        with pytest.raises(LookupError, match="no such row"):
            await in_thread(fail)

    asyncio.run(scenario())


def test_an_error_after_a_cancel_is_not_reported_as_never_retrieved(caplog: pytest.LogCaptureFixture) -> None:
    started, release = threading.Event(), threading.Event()

    def fail() -> None:
        started.set()
        release.wait(timeout=10)
        raise LookupError("late")

    async def scenario() -> None:
        task = asyncio.create_task(in_thread(fail))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    gc.collect()
    assert "never retrieved" not in caplog.text
