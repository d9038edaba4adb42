"""1. Device check burst: every device of a fleet asks `latest` at once after a deploy.

wrk (64 connections) on `GET /v1/ota/group/latest/<id>` against `otaship serve`
(one worker, on the server it runs on by default), and on a bare Starlette
route returning a constant JSON, on granian and on uvicorn with one worker each.
Goal: at least 0.8 of the bare granian route's requests per second.

The receiver runs twice, side by side on the same data: with the defaults of
`make run` (OTASHIP_LOG_LEVEL unset: info, access lines and all), which is the
figure the goal is about, and at `warning`, which shows what logging still costs.
"""

from __future__ import annotations

import httpx

from bench import servers, wrk
from bench.context import Context, image
from bench.fleet import create_owner, deploy
from bench.results import Figure, Goal, Row
from bench.system import cpu_seconds

NAME = "check"


def defaults_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the log level left to the receiver's default, as `make run` has it."""
    return {key: value for key, value in env.items() if key != "OTASHIP_LOG_LEVEL"}


def run(ctx: Context) -> list[Row]:
    scale = ctx.scale
    env = servers.receiver_env(ctx.folder("check") / "data")
    owner, (group,) = create_owner(env, [("fleet", None)])
    ours: list[wrk.LoadResult] = []
    quiet: list[wrk.LoadResult] = []  # the receiver at warning
    our_cpu: list[float] = []  # requests per CPU-second of the server process
    bare: dict[str, list[wrk.LoadResult]] = {"granian": [], "uvicorn": []}
    bare_cpu: dict[str, list[float]] = {"granian": [], "uvicorn": []}
    with (
        servers.receiver(defaults_env(env), ctx.log_dir) as receiver,
        servers.receiver(env, ctx.log_dir) as quiet_receiver,
        servers.baseline(ctx.log_dir, server="granian") as on_granian,
        servers.baseline(ctx.log_dir, server="uvicorn") as on_uvicorn,
    ):
        deploy(receiver.url, owner, group, "1.0.0", image("1.0.0", 64 * 1024))
        latest = f"{receiver.url}/v1/ota/group/latest/{group.id}"
        quiet_latest = f"{quiet_receiver.url}/v1/ota/group/latest/{group.id}"
        for url in (latest, quiet_latest):
            answer = httpx.get(url, timeout=10)
            assert answer.status_code == 200 and answer.json() == {"ver": "1.0.0"}, answer.text
        baselines = {"granian": on_granian, "uvicorn": on_uvicorn}

        def load(url: str, pid: int, cpu: list[float] | None = None) -> wrk.LoadResult:
            before = cpu_seconds(pid)
            result = wrk.run(
                url, connections=scale.check_connections, seconds=scale.load_seconds, work_dir=ctx.work_dir
            )
            if result.errors:
                raise RuntimeError(f"{result.errors} failed requests on {url}")
            if cpu is not None:
                cpu.append(result.requests / max(cpu_seconds(pid) - before, 1e-6))
            return result

        # Warm all (imports, caches, connection setup) before measuring.
        for url in (
            (latest, quiet_latest, *(f"{b.url}/json" for b in baselines.values())) if scale.warmup else ()
        ):
            wrk.run(url, connections=scale.check_connections, seconds=1, work_dir=ctx.work_dir)
        # Interleaved, so drift in the machine's load hits all alike.
        for _ in range(ctx.repetitions):
            ours.append(load(latest, receiver.pid, our_cpu))
            quiet.append(load(quiet_latest, quiet_receiver.pid))
            for name, server in baselines.items():
                bare[name].append(load(f"{server.url}/json", server.pid, bare_cpu[name]))
    defaults_note = "otaship with the defaults of `make run` (OTASHIP_LOG_LEVEL unset, so info), its log written to a file"
    rows = []
    for name, goal in (("granian", Goal(">=", 0.8)), ("uvicorn", None)):
        notes = [
            f"{scale.check_connections} connections, {scale.load_seconds:g} s per repetition, wrk -t2; "
            f"latency p50/p99 {_latency(ours)} (otaship) vs {_latency(bare[name])} (bare {name})",
            defaults_note,
        ]
        rows += [
            Row(
                NAME,
                f"1. check burst: GET latest, defaults (req/s) vs bare {name}",
                Figure.of([r.requests_per_second for r in ours], "req/s"),
                Figure.of([r.requests_per_second for r in bare[name]], "req/s"),
                f"bare Starlette JSON on {name}",
                goal,
                notes,
                paired=True,
            ),
            Row(
                NAME,
                f"1. check burst: requests per server CPU-second, defaults, vs bare {name}",
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
    rows.append(
        Row(
            NAME,
            "1. check burst: GET latest, OTASHIP_LOG_LEVEL=warning (req/s) vs bare granian",
            Figure.of([r.requests_per_second for r in quiet], "req/s"),
            Figure.of([r.requests_per_second for r in bare["granian"]], "req/s"),
            "bare Starlette JSON on granian",
            None,
            [f"latency p50/p99 {_latency(quiet)}; next to the defaults row, what the log level still costs"],
            paired=True,
        )
    )
    return rows


def _latency(results: list[wrk.LoadResult]) -> str:
    best = sorted(results, key=lambda r: r.p50_ms)[len(results) // 2]
    return f"{best.p50_ms:.2f}/{best.p99_ms:.2f} ms"
