"""The rollout clock's lifecycle: stopping it never leaves a pass running behind."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import create_engine

from otaship.receiver.rollouts.clock import RolloutRunner


class HeldPass(RolloutRunner):
    """A pass that runs until the test lets it finish: a stand-in for one that
    is slow, such as one waiting for a lock, whose timing a test cannot hold."""

    def __init__(self) -> None:
        super().__init__(create_engine("sqlite://"), notify=False, tick=0.01)
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished: list[bool] = []

    def evaluate_all(self) -> bool:
        self.started.set()
        self.release.wait(10)
        self.finished.append(True)
        return False


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_stopping_the_clock_waits_for_the_pass_in_flight() -> None:
    """The receiver stopped while a pass ran in its worker thread: the pass used
    to go on alone, and could promote a rollout after the receiver had shut down."""
    runner = HeldPass()
    task = asyncio.create_task(runner.run())
    assert await asyncio.to_thread(runner.started.wait, 10)
    task.cancel()
    # Let the pass finish a moment later; the cancel must not return before.
    threading.Timer(0.2, runner.release.set).start()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runner.finished == [True]
