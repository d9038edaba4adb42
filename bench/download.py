"""2. Firmware download: 200 devices fetching a 1.5 MiB image at once.

wrk on the receiver's download endpoint (`otaship serve`, one worker, on its
default server), on a bare Starlette FileResponse of the same file on granian
and on uvicorn, and on nginx serving it statically. Goals: at least 0.4 of
nginx's throughput and 0.9 of the bare FileResponse's on granian, and flat
memory (the receiver's peak RSS grows no more than the bare FileResponse's,
plus one image).
"""

from __future__ import annotations

import httpx

from bench import servers, wrk
from bench.context import Context, MiB, image, mib
from bench.fleet import create_owner, deploy
from bench.results import Figure, Goal, Row
from bench.system import PeakGrowth, memory

NAME = "download"


def run(ctx: Context) -> list[Row]:
    scale = ctx.scale
    folder = ctx.folder("download")
    firmware = image("2.0.0", scale.download_image)
    static = folder / "static"
    static.mkdir(exist_ok=True)
    (static / "firmware.bin").write_bytes(firmware)
    env = servers.receiver_env(folder / "data")
    owner, (group,) = create_owner(env, [("fleet", None)])

    results: dict[str, list[wrk.LoadResult]] = {"otaship": [], "starlette": [], "uvicorn": [], "nginx": []}
    growth: dict[str, list[int]] = {"otaship": [], "starlette": [], "uvicorn": []}
    with (
        servers.receiver(env, ctx.log_dir) as receiver,
        servers.baseline(ctx.log_dir, file=static / "firmware.bin", server="granian") as bare,
        servers.baseline(ctx.log_dir, file=static / "firmware.bin", server="uvicorn") as bare_uvicorn,
        servers.nginx(static, ctx.log_dir) as nginx,
    ):
        deploy(receiver.url, owner, group, "2.0.0", firmware)
        targets = {
            "otaship": (f"{receiver.url}/v1/ota/group/download/{group.id}{group.token}", receiver.pid),
            "starlette": (f"{bare.url}/file", bare.pid),
            "uvicorn": (f"{bare_uvicorn.url}/file", bare_uvicorn.pid),
            "nginx": (f"{nginx.url}/firmware.bin", None),
        }
        idle = {name: memory(pid).rss for name, (_, pid) in targets.items() if pid is not None}
        for name, (url, _) in targets.items():
            answer = httpx.get(url, timeout=30)
            if answer.status_code != 200 or answer.content != firmware:
                raise RuntimeError(f"{name} did not serve the image: {answer.status_code}")
            if scale.warmup:
                wrk.run(url, connections=scale.download_connections, seconds=1, work_dir=ctx.work_dir)

        for _ in range(ctx.repetitions):
            for name, (url, pid) in targets.items():
                if pid is None:
                    result = _load(ctx, url)
                else:
                    with PeakGrowth(pid, idle[name]) as peak:
                        result = _load(ctx, url)
                    growth[name].append(peak.bytes)
                results[name].append(result)

    def throughput(name: str) -> Figure:
        return Figure.of([r.mib_per_second for r in results[name]], "MiB/s")

    label = f"{scale.download_connections} devices × {mib(len(firmware))}"
    common = f"{label}, {scale.load_seconds:g} s per repetition, wrk -t2"
    footprint = Figure.of([g / MiB for g in growth["otaship"]], "MiB")
    return [
        Row(
            NAME,
            "2. download: throughput vs bare FileResponse on granian",
            throughput("otaship"),
            throughput("starlette"),
            "bare Starlette FileResponse on granian",
            Goal(">=", 0.9),
            [common],
            paired=True,
        ),
        Row(
            NAME,
            "2. download: throughput vs bare FileResponse on uvicorn",
            throughput("otaship"),
            throughput("uvicorn"),
            "bare Starlette FileResponse on uvicorn",
            None,
            [common],
            paired=True,
        ),
        Row(
            NAME,
            "2. download: throughput vs nginx",
            throughput("otaship"),
            throughput("nginx"),
            "nginx static (1 worker, sendfile)",
            Goal(">=", 0.4),
            [common],
            paired=True,
        ),
        Row(
            NAME,
            "2. download: server peak RSS growth",
            footprint,
            Figure.of([(g + len(firmware)) / MiB for g in growth["starlette"]], "MiB"),
            "bare FileResponse's growth on granian + 1 image",
            Goal("<=", 1.0),
            [
                "flat: the receiver's peak RSS above its idle RSS stays within a bare FileResponse's "
                "under the same load, plus one image"
            ],
            paired=True,
        ),
    ]


def _load(ctx: Context, url: str) -> wrk.LoadResult:
    result = wrk.run(
        url, connections=ctx.scale.download_connections, seconds=ctx.scale.load_seconds, work_dir=ctx.work_dir
    )
    if result.errors:
        raise RuntimeError(f"{result.errors} failed downloads from {url}")
    return result
