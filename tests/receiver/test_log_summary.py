"""Lines that stand for many events (device checks, reports of devices that are
not the reporter's), and the log written from a thread of its own."""

from __future__ import annotations

import io
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from otaship.receiver.app import create_app
from otaship.receiver.log_summary import Summaries, Tally, counts_text
from otaship.receiver.logs import configure_logging, flush_logs, stop_logging
from otaship.receiver.metrics import Metrics, write_device_checks
from otaship.receiver.mqtt.reports import ReportIngester, not_owned_summary
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from tests.conftest import Fleet
from tests.receiver.http.management.test_ota import deploy
from tests.receiver.test_logs import restore_logging

__all__ = ["restore_logging"]  # the fixture, shared with test_logs.py

# Only the logging settings matter to configure_logging: no database, no broker.
TEXT_AT_INFO = Settings(mqtt_url="none", log_format="text", log_level="info")


def test_device_checks_are_one_line_a_minute_by_status(
    settings: Settings, services: Services, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="otaship.access")
    owner = fleet.owner()
    group = fleet.group(owner)
    app = create_app(settings, services=services)
    metrics: Metrics = app.state.metrics
    with TestClient(app) as client:
        deploy(client, owner, group, "1.0.0")
        for _ in range(3):
            assert client.get(f"/v1/ota/group/latest/{group.id}").status_code == 200
        assert client.get("/v1/ota/group/latest/" + "0" * 24).status_code == 404
        assert client.get("/v1/ota/group/latest/not-an-id").status_code == 404
        # Each check still has its line, at debug.
        debug = [r for r in caplog.records if r.levelno == logging.DEBUG and "/latest/" in r.getMessage()]
        assert len(debug) == 5
        caplog.clear()
        write_device_checks(metrics, 60.0)
        assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
            (logging.INFO, "device checks (GET latest) in the last 60 s: 5 (200=3 404=2)")
        ]
        # Counted once: with no check since, there is nothing to say.
        caplog.clear()
        write_device_checks(metrics, 60.0)
        assert caplog.records == []


def test_reports_of_unregistered_and_foreign_devices_are_summarised(
    services: Services, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="otaship.reports")
    owner, stranger = fleet.owner(), fleet.owner()
    device = fleet.device(fleet.group(owner), name="d1")
    status = b'{"fw_version": "1.0.0", "uptime": 1}'
    ingester = ReportIngester(services.engine)
    ingester.ingest_messages(
        [
            (f"/{owner.user.mqtt_user}/devices/{device.id}/status", status),
            *[(f"/{owner.user.mqtt_user}/devices/never-registered/status", status)] * 3,
            *[(f"/{stranger.user.mqtt_user}/devices/{device.id}/status", status)] * 2,
            (f"/nobody-{owner.user.mqtt_user}/devices/ghost/status", status),
        ]
    )
    assert (ingester.accepted, ingester.dropped) == (1, 6)
    assert caplog.records == []  # nothing per report at info
    ingester.write_summary(60.0)
    assert [r.getMessage() for r in caplog.records] == [
        "dropped 6 report(s) of unregistered or foreign devices in the last 60 s "
        f"(foreign=2 unknown_user=1 unregistered=3) from 3 device(s): never-registered=3 {device.id}=2 ghost=1"
    ]
    caplog.clear()
    ingester.write_summary(60.0)
    assert caplog.records == []


def test_a_summary_names_five_devices_at_most() -> None:
    by_device = {f"d{i}": 10 - i for i in range(7)}
    assert not_owned_summary(61.2, {"unregistered": 49}, by_device) == (
        "dropped 49 report(s) of unregistered or foreign devices in the last 61 s "
        "(unregistered=49) from 7 device(s): d0=10 d1=9 d2=8 d3=7 d4=6 and 2 more"
    )


def test_summaries_write_once_a_window_and_when_stopped() -> None:
    now = [100.0]
    summaries = Summaries(window=60, clock=lambda: now[0])
    seen: list[float] = []
    summaries.add(seen.append)
    now[0] = 160.0
    summaries.write()
    now[0] = 172.5
    summaries.write()
    assert seen == [60.0, 12.5]
    tally = Tally()
    tally.add("404")
    tally.add("200", 2)
    assert counts_text(tally.take()) == "200=2 404=1" and tally.take() == {}


class ThreadRecordingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def write(self, text: str) -> int:
        self.threads.add(threading.current_thread().name)
        return super().write(text)


@pytest.fixture
def logging_stopped() -> Iterator[None]:
    yield
    stop_logging()


def test_lines_are_formatted_and_written_off_the_callers_thread(
    restore_logging: None, logging_stopped: None
) -> None:
    stream = ThreadRecordingStream()
    configure_logging(TEXT_AT_INFO, stream=stream)
    fields = {"state": "before"}
    logging.getLogger("otaship").info("what was logged: %s, key osk_abcdefgh123", fields)
    fields["state"] = "after"  # changed once logged: the line keeps what it was
    flush_logs()
    assert stream.getvalue().endswith(
        " INFO otaship: what was logged: {'state': 'before'}, key osk_[redacted]\n"
    )
    assert stream.threads and threading.current_thread().name not in stream.threads
    # Stopped (after `serve`, at exit): what is logged then is written at once, here.
    stop_logging()
    logging.getLogger("otaship").warning("after the listener")
    assert stream.getvalue().endswith(" WARNING otaship: after the listener\n")
    assert threading.current_thread().name in stream.threads


def test_a_forked_worker_writes_its_lines_too(
    tmp_path: Path, restore_logging: None, logging_stopped: None
) -> None:
    """A server may fork its workers after the app configured logging: the
    child has the queue, and needs a thread of its own to empty it."""
    path = tmp_path / "log.txt"
    with path.open("w") as stream:
        configure_logging(TEXT_AT_INFO, stream=stream)
        child = os.fork()
        if child == 0:  # pragma: no cover (the child's coverage is not collected)
            logging.getLogger("otaship").info("from the worker")
            flush_logs()
            os._exit(0)
        deadline = time.monotonic() + 10
        while (done := os.waitpid(child, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
                pytest.fail("the forked worker never wrote its line")
            time.sleep(0.02)
        assert os.waitstatus_to_exitcode(done[1]) == 0
    assert path.read_text().endswith(" INFO otaship: from the worker\n")
