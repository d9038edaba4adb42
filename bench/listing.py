"""5. Listing at scale: `GET /v1/ota/group` with 1,000 and 100,000 groups under one owner.

On SQLite and on PostgreSQL, two kinds of request, each sequential on one
keep-alive connection: paging (`limit=10`, offsets over the first 100 pages)
and searching (`search_value` = a piece of one group's id, which matches that
group's `path`). Goal: the p50 at 100k at most twice the p50 at 1k (indexed,
no full scan per request). Both p50 and p99 are reported.
"""

from __future__ import annotations

import random
import secrets
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from sqlalchemy import create_engine, text

from bench import servers
from bench.context import Context
from bench.fleet import GroupRef, create_owner, insert_groups_with_otas
from bench.results import Figure, Goal, Row
from tests.services import POSTGRES, port_open

NAME = "listing"
POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
KINDS = ("page", "search")
PAGES = 100


@dataclass(frozen=True)
class Latencies:
    p50_ms: float
    p99_ms: float


def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    backends = ["sqlite"]
    if port_open(*POSTGRES):
        backends.append("postgresql")
    small, large = ctx.scale.listing_sizes
    for backend in backends:
        measured = {size: _measure(ctx, backend, size) for size in (small, large)}
        for kind in KINDS:
            big, little = measured[large][kind], measured[small][kind]
            rows.append(
                Row(
                    NAME,
                    f"5. listing {backend}, {kind}: p50 at {large:,} groups",
                    Figure.of([run.p50_ms for run in big], "ms"),
                    Figure.of([run.p50_ms for run in little], "ms"),
                    f"p50 at {small:,}",
                    Goal("<=", 2.0),
                    [
                        f"p99 {statistics.median(run.p99_ms for run in big):.1f} ms at {large:,} vs "
                        f"{statistics.median(run.p99_ms for run in little):.1f} ms at {small:,}; "
                        f"{ctx.scale.listing_requests} sequential requests per repetition; "
                        + (
                            "offsets 0-990 step 10, limit=10"
                            if kind == "page"
                            else "search_value = 8 characters of one group's id, limit=10"
                        )
                    ],
                )
            )
    if "postgresql" not in backends:
        rows_note = "PostgreSQL is not listening on 127.0.0.1:5432: its rows are missing"
        rows[-1].notes.append(rows_note)
    return rows


@contextmanager
def _database(backend: str) -> Iterator[str | None]:
    if backend == "sqlite":
        yield None
        return
    name = f"otaship_bench_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _measure(ctx: Context, backend: str, size: int) -> dict[str, list[Latencies]]:
    folder = ctx.folder(f"listing-{backend}-{size}")
    with _database(backend) as url:
        extra = {"OTASHIP_DATABASE_URL": url} if url else {}
        # The requests follow one another as fast as they are answered: the per-key
        # read limit (200 a second) would answer 429 to a measurement, not a client.
        env = servers.receiver_env(folder / "data", OTASHIP_RATE_LIMIT_READS="off", **extra)
        owner, _ = create_owner(env)
        groups = insert_groups_with_otas(env, owner, size)
        if url:
            # Statistics and the visibility map as autovacuum leaves them on a live
            # server (100k fresh rows trigger it within a minute): without the map an
            # index-only count would read every heap page.
            analyze = create_engine(url, isolation_level="AUTOCOMMIT")
            with analyze.connect() as conn:
                conn.execute(text("VACUUM ANALYZE"))
            analyze.dispose()
        with (
            servers.receiver(env, ctx.log_dir) as receiver,
            httpx.Client(base_url=receiver.url, headers=owner.headers, timeout=60) as client,
        ):
            _check(client, size)
            rng = random.Random(size)
            # Warm the connection pools, the statement caches and the page cache.
            for kind in KINDS if ctx.scale.warmup else ():
                _series(client, kind, groups, rng, max(5, ctx.scale.listing_requests // 10))
            results: dict[str, list[Latencies]] = {kind: [] for kind in KINDS}
            for _ in range(ctx.repetitions):
                for kind in KINDS:
                    results[kind].append(_series(client, kind, groups, rng, ctx.scale.listing_requests))
            return results


def _check(client: httpx.Client, size: int) -> None:
    answer = client.get("/v1/ota/group", params={"limit": 10, "draw": "1"})
    body = answer.json()
    if (
        answer.status_code != 200
        or body.get("recordsTotal") != size
        or len(body.get("otas", [])) != min(10, size)
    ):
        raise RuntimeError(f"the listing is not what was inserted: {answer.status_code} {answer.text[:300]}")


def _series(
    client: httpx.Client, kind: str, groups: list[GroupRef], rng: random.Random, count: int
) -> Latencies:
    pages = min(PAGES, max(1, len(groups) // 10))
    timings = []
    for _ in range(count):
        if kind == "page":
            params = {"limit": "10", "offset": str(10 * rng.randrange(pages))}
        else:
            group = rng.choice(groups)
            start = rng.randrange(0, 24 - 8)
            params = {"limit": "10", "offset": "0", "search_value": group.id[start : start + 8]}
        started = time.perf_counter()
        answer = client.get("/v1/ota/group", params=params)
        timings.append(time.perf_counter() - started)
        if answer.status_code != 200:
            raise RuntimeError(f"listing answered {answer.status_code}: {answer.text[:300]}")
        if kind == "search" and answer.json()["recordsFiltered"] < 1:
            raise RuntimeError(f"search {params['search_value']!r} found nothing")
    timings.sort()
    return Latencies(
        statistics.median(timings) * 1000, timings[min(len(timings) - 1, int(len(timings) * 0.99))] * 1000
    )
