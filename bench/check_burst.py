"""1. Device check burst: every device of a fleet asks `latest` at once after a deploy.

wrk (64 connections) on `GET /v1/ota/group/latest/<id>` against `otaship serve`
(one worker, on the server it runs on by default), and on a bare Starlette
route returning a constant JSON, on granian and on uvicorn with one worker each.
Goal: at least 0.8 of the bare granian route's requests per second.
"""

from __future__ import annotations

import httpx

from bench import servers, wrk
from bench.context import Context, image
from bench.fleet import create_owner, deploy
from bench.results import Figure, Goal, Row
from bench.system import cpu_seconds

NAME = "check"


def run(ctx: Context) -> list[Row]:
    scale = ctx.scale
    env = servers.receiver_env(ctx.folder("check") / "data")
    owner, (group,) = create_owner(env, [("fleet", None)])
    ours: list[wrk.LoadResult] = []
    our_cpu: list[float] = []  # requests per CPU-second of the server process
    bare: dict[str, list[wrk.LoadResult]] = {"granian": [], "uvicorn": []}
    bare_cpu: dict[str, list[float]] = {"granian": [], "uvicorn": []}
    with (
        servers.receiver(env, ctx.log_dir) as receiver,
        servers.baseline(ctx.log_dir, server="granian") as on_granian,
        servers.baseline(ctx.log_dir, server="uvicorn") as on_uvicorn,
    ):
        deploy(receiver.url, owner, group, "1.0.0", image("1.0.0", 64 * 1024))
        latest = f"{receiver.url}/v1/ota/group/latest/{group.id}"
        answer = httpx.get(latest, timeout=10)
        assert answer.status_code == 200 and answer.json() == {"ver": "1.0.0"}, answer.text
        baselines = {"granian": on_granian, "uvicorn": on_uvicorn}

        def load(url: str, pid: int, cpu: list[float]) -> wrk.LoadResult:
            before = cpu_seconds(pid)
            result = wrk.run(
                url, connections=scale.check_connections, seconds=scale.load_seconds, work_dir=ctx.work_dir
            )
            if result.errors:
                raise RuntimeError(f"{result.errors} failed requests on {url}")
            cpu.append(result.requests / max(cpu_seconds(pid) - before, 1e-6))
            return result

        # Warm all (imports, caches, connection setup) before measuring.
        for url in (latest, *(f"{b.url}/json" for b in baselines.values())) if scale.warmup else ():
            wrk.run(url, connections=scale.check_connections, seconds=1, work_dir=ctx.work_dir)
        # Interleaved, so drift in the machine's load hits all alike.
        for _ in range(ctx.repetitions):
            ours.append(load(latest, receiver.pid, our_cpu))
            for name, server in baselines.items():
                bare[name].append(load(f"{server.url}/json", server.pid, bare_cpu[name]))
    rows = []
    for name, goal in (("granian", Goal(">=", 0.8)), ("uvicorn", None)):
        notes = [
            f"{scale.check_connections} connections, {scale.load_seconds:g} s per repetition, wrk -t2; "
            f"latency p50/p99 {_latency(ours)} (otaship) vs {_latency(bare[name])} (bare {name})",
        ]
        rows += [
            Row(
                NAME,
                f"1. check burst: GET latest (req/s) vs bare {name}",
                Figure.of([r.requests_per_second for r in ours], "req/s"),
                Figure.of([r.requests_per_second for r in bare[name]], "req/s"),
                f"bare Starlette JSON on {name}",
                goal,
                notes,
                paired=True,
            ),
            Row(
                NAME,
                f"1. check burst: requests per server CPU-second vs bare {name}",
                Figure.of(our_cpu, "req/CPU-s"),
                Figure.of(bare_cpu[name], "req/CPU-s"),
                f"bare Starlette JSON on {name}",
                None,
                [
                    "the same load counted against the server's own CPU time (/proc/<pid>/stat): "
                    "less sensitive than req/s to other processes taking the cores"
                ],
                paired=True,
            ),
        ]
    return rows


def _latency(results: list[wrk.LoadResult]) -> str:
    best = sorted(results, key=lambda r: r.p50_ms)[len(results) // 2]
    return f"{best.p50_ms:.2f}/{best.p99_ms:.2f} ms"
