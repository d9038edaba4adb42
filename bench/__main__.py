"""`python -m bench`: run the benchmark suite and print one table.

Each row is a figure of otaship next to a baseline measured in the same run on
the same machine, their ratio, and the goal; each figure is the median of the
repetitions with its min and max. Results go to bench/results/latest.json and
latest.md (or --output).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench import check_burst, download, fleet_rollout, listing, status_ingestion, upload, waves_rollout
from bench.context import SCALES, Context, Scale
from bench.results import Failure, Row, render_text, write_results
from bench.system import ToolMissing, ensure_http_tools, machine_description

EXIT_OK = 0
EXIT_FAILED = 1  # a benchmark could not run (a missed goal is not a failure)
EXIT_USAGE = 2

RESULTS = Path(__file__).resolve().parent / "results"

BENCHMARKS: dict[str, Callable[[Context], list[Row]]] = {
    check_burst.NAME: check_burst.run,
    download.NAME: download.run,
    upload.NAME: upload.run,
    status_ingestion.NAME: status_ingestion.run,
    listing.NAME: listing.run,
    fleet_rollout.NAME: fleet_rollout.run,
    waves_rollout.NAME: waves_rollout.run,
}
NEEDS_HTTP_TOOLS = {check_burst.NAME, download.NAME, fleet_rollout.NAME}

NOTE = (
    "the machine is shared with other test runs, so absolute figures move "
    "from run to run; only the ratios within this run mean anything"
)


def run_suite(
    names: Sequence[str],
    scale: Scale,
    *,
    work_dir: Path,
    log: Callable[[str], None] = print,
) -> tuple[list[Row], list[Failure]]:
    rows: list[Row] = []
    failures: list[Failure] = []
    tools_error: str | None = None
    if NEEDS_HTTP_TOOLS & set(names):
        try:
            ensure_http_tools()
        except ToolMissing as exc:
            tools_error = str(exc)
    for name in names:
        if name in NEEDS_HTTP_TOOLS and tools_error is not None:
            failures.append(Failure(name, tools_error))
            log(f"bench: {name}: skipped: {tools_error}")
            continue
        log(f"bench: {name} ...")
        started = time.monotonic()
        try:
            produced = BENCHMARKS[name](Context(scale, work_dir / name))
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            failures.append(Failure(name, f"{type(exc).__name__}: {first_line[:160]}"))
            log(f"bench: {name}: FAILED after {time.monotonic() - started:.0f} s")
            continue
        rows += produced
        log(f"bench: {name}: done in {time.monotonic() - started:.0f} s")
        for row in produced:
            log(f"  {row.label}: {row.figure.text()} vs {row.baseline.text()} ({row.ratio:.2f}×)")
    return rows, failures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="otaship benchmarks, each next to a baseline measured in the same run.",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        default=[],
        help=f"run only these (repeatable, or comma-separated): {', '.join(BENCHMARKS)}",
    )
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument(
        "--quick",
        action="store_const",
        const="quick",
        dest="scale",
        help="scaled-down sizes and 3 s loads (a few minutes)",
    )
    sizes.add_argument("--scale", choices=sorted(SCALES), help="full (default), quick, or tiny (smoke)")
    parser.add_argument(
        "--repetitions", type=int, metavar="N", help="repetitions per figure (default 3; 1 at --scale tiny)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS,
        metavar="DIR",
        help=f"where latest.json and latest.md go (default {RESULTS})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, data)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [n.strip() for item in args.only for n in item.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(
            f"bench: unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    scale = SCALES[args.scale or "full"]
    if args.repetitions is not None:
        if args.repetitions < 1:
            print("bench: --repetitions must be at least 1", file=sys.stderr)
            return EXIT_USAGE
        scale = Scale(**{**scale.__dict__, "repetitions": args.repetitions})

    started = time.monotonic()
    load_before = os.getloadavg()
    work_dir = Path(tempfile.mkdtemp(prefix="otaship-bench-"))
    try:
        rows, failures = run_suite(names, scale, work_dir=work_dir)
    finally:
        if args.keep:
            print(f"bench: work folder kept at {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    load_after = os.getloadavg()
    meta = {
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_s": time.monotonic() - started,
        "scale": scale.name,
        "repetitions": scale.repetitions,
        "benchmarks": names,
        "machine": machine_description(),
        "load_average": {"before": list(load_before), "after": list(load_after)},
        "note": f"{NOTE} (1-minute load average {load_before[0]:.1f} before, {load_after[0]:.1f} after)",
    }
    print()
    print(render_text(rows, failures))
    print()
    print(f"machine: {meta['machine']}")
    print(f"note: {meta['note']}")
    for row in rows:
        for note in row.notes:
            print(f"- {row.label}: {note}")
    json_path, md_path = write_results(args.output, rows, failures, meta)
    print(f"\nwritten: {json_path} and {md_path}")
    return EXIT_FAILED if failures else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
