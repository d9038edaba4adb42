"""Each benchmark still runs, at a tiny size and in seconds; its figures are not judged.

The benchmarks themselves (`make bench`) never run in `make test`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import check_burst, download, fleet_rollout, listing, status_ingestion, waves_rollout
from bench.__main__ import run_suite
from bench.context import SCALES
from bench.results import Figure, Row, repetitions_text
from bench.system import ToolMissing, ensure_http_tools, mosquitto_binary
from tests.services import MOSQUITTO, POSTGRES, require

ROOT = Path(__file__).resolve().parent.parent
TINY = SCALES["tiny"]


def _run(name: str, tmp_path: Path) -> list[Row]:
    rows, failures = run_suite([name], TINY, work_dir=tmp_path, log=lambda _line: None)
    assert not failures, failures
    assert rows and all(row.benchmark == name for row in rows)
    for row in rows:
        assert row.figure.median >= 0 and row.baseline.median > 0, row
    return rows


def _http_tools() -> None:
    """wrk and nginx, installed from Debian's packages when missing; skip only if that fails."""
    try:
        ensure_http_tools()
    except ToolMissing as exc:
        if os.environ.get("OTASHIP_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{exc}, and OTASHIP_REQUIRE_SERVICES=1 requires them")
        pytest.skip(str(exc))


def _mosquitto() -> None:
    # The benchmarks start a private broker from the machine's Mosquitto binary.
    require("Mosquitto", MOSQUITTO)
    if mosquitto_binary() is None:
        reason = "the mosquitto binary is not on this machine (apt-get install mosquitto)"
        if os.environ.get("OTASHIP_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def test_check_burst_runs(tmp_path: Path) -> None:
    _http_tools()
    rows = _run(check_burst.NAME, tmp_path)
    # Against the bare route on granian (the goal's), then on uvicorn; then at warning.
    assert [row.figure.unit for row in rows] == ["req/s", "req/CPU-s"] * 2 + ["req/s"] and rows[
        0
    ].goal is not None
    assert [row.baseline_label for row in rows][::2] == [
        "bare Starlette JSON on granian",
        "bare Starlette JSON on uvicorn",
        "bare Starlette JSON on granian",
    ]


def test_download_runs(tmp_path: Path) -> None:
    _http_tools()
    rows = _run(download.NAME, tmp_path)
    # Against the bare FileResponse on granian and on uvicorn, nginx, then memory.
    assert [row.figure.unit for row in rows] == ["MiB/s", "MiB/s", "MiB/s", "MiB"]


def test_status_ingestion_runs(tmp_path: Path) -> None:
    _mosquitto()
    rows = _run(status_ingestion.NAME, tmp_path)
    assert rows[0].figure.unit == "msg/s"


@pytest.mark.postgres
def test_listing_runs_on_sqlite_and_postgresql(tmp_path: Path) -> None:
    require("PostgreSQL", POSTGRES)
    rows = _run(listing.NAME, tmp_path)
    assert {row.label.split(",")[0] for row in rows} == {"5. listing sqlite", "5. listing postgresql"}


@pytest.mark.mosquitto
def test_fleet_rollout_runs(tmp_path: Path) -> None:
    _mosquitto()
    _http_tools()
    rows = _run(fleet_rollout.NAME, tmp_path)
    assert [row.figure.unit for row in rows] == ["devices/min", "devices/min", "CPU-ms", "CPU-ms"]
    assert [row.baseline_label for row in rows][2:] == ["nginx serving the image once"] * 2


@pytest.mark.mosquitto
def test_waves_rollout_runs(tmp_path: Path) -> None:
    _mosquitto()
    rows = _run(waves_rollout.NAME, tmp_path)
    assert [row.figure.unit for row in rows] == ["s", "s"]
    assert [len(wave) for wave in (rows[0].extra["per_wave"])] == [2, 2, 2, 2]


def test_a_device_left_behind_is_named() -> None:
    behind = [
        ("fl-00007", "5.0.0", 203, "error", 3),
        ("fl-00008", "5.0.0", 201, None, 1),
        ("ca-00001", "5.0.0", None, None, 0),
    ]
    assert fleet_rollout.left_behind_message(behind, "5.0.1", 10_000) == (
        "3 of 10000 devices left behind, not on 5.0.1: fl-00007 (on 5.0.0, last code 203, error), "
        "fl-00008 (on 5.0.0, last code 201, still updating), ca-00001 (on 5.0.0, last code -, never triggered)"
    )
    many = [(f"fl-{n:05d}", "5.0.0", 203, "error", 1) for n in range(25)]
    message = fleet_rollout.left_behind_message(many, "5.0.1", 10_000)
    assert message.startswith("25 of 10000 devices left behind, not on 5.0.1: fl-00000 (on 5.0.0")
    assert message.endswith("fl-00019 (on 5.0.0, last code 203, error) and 5 more")


def test_the_header_says_how_many_runs_the_figures_hold() -> None:
    def row(*values: float, baseline: tuple[float, ...] = (1.0,)) -> Row:
        return Row("x", "x", Figure.of(values, "s"), Figure.of(baseline, "s"), "b")

    # The waves benchmark: one rollout of each kind, whatever the scale's repetitions.
    assert (
        repetitions_text([row(25.6, baseline=(16.9,)), row(64.2, baseline=(6.3,))], 3) == "one run per figure"
    )
    assert repetitions_text([row(1, 2, 3, baseline=(1, 2, 3))], 3) == "3 repetitions per figure"
    # A rollout of thousands of devices next to repeated loads, an anchor as a baseline.
    assert repetitions_text([row(1, 2, 3, baseline=(1, 2, 3)), row(10_169, baseline=(1000,))], 3) == (
        "up to 3 repetitions per figure (a figure without [min–max] is a single value)"
    )
    # Every benchmark failed: only the setting is known.
    assert repetitions_text([], 3) == "3 repetitions per figure"


def test_command_line_runs_the_upload_benchmark_and_writes_results(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--scale", "tiny", "--only", "upload", "--output", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("benchmark  ") == 1  # one table header
    data = json.loads((tmp_path / "latest.json").read_text())
    assert data["scale"] == "tiny" and [row["benchmark"] for row in data["rows"]] == ["upload"] * 3
    assert [row["otaship"]["unit"] for row in data["rows"]] == ["s", "s", "MiB"]
    assert [row["baseline"]["label"] for row in data["rows"]][:2] == [
        "bare Starlette streaming to disk",
        "bare Starlette streaming to disk + SHA-256 + MD5 + fsync, inline",
    ]
    assert "| 3. upload" in (tmp_path / "latest.md").read_text()


def test_unknown_benchmark_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "unknown benchmark nope" in result.stderr
