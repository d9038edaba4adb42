"""What every benchmark gets: the sizes to run at, a work folder, and real ESP32 images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
# build_image(code_size=n) is n plus about 340 bytes of headers, descriptor and checksums.
IMAGE_OVERHEAD = 512


@dataclass(frozen=True)
class Scale:
    name: str
    repetitions: int
    load_seconds: float
    check_connections: int
    download_connections: int
    download_image: int
    upload_images: tuple[int, ...]
    status_devices: int
    status_messages: int  # per device
    listing_sizes: tuple[int, int]  # small, large: the goal compares their p50
    listing_requests: int  # per repetition and kind of query
    fleet_devices: int
    canary_devices: int
    fleet_image: int
    # The simulator's processes for the fleet group, and rollouts of each kind.
    fleet_processes: int = 1
    fleet_repetitions: int = 1
    # Seconds between a simulated device's status reports.
    fleet_status_interval: float = 5.0
    warmup: bool = True  # a short unmeasured load before measuring
    # The rollout in waves (bench/waves_rollout.py): the devices of its group.
    waves_devices: int = 1000


SCALES = {
    "full": Scale(
        name="full",
        repetitions=3,
        load_seconds=10,
        check_connections=64,
        download_connections=200,
        # The receiver refuses images over 16 MiB (its default limit), so the
        # "16 MiB" upload is the largest real image that fits: 16 MiB - 512 B.
        download_image=int(1.5 * MiB),
        upload_images=(4 * MiB, 16 * MiB),
        status_devices=1000,
        status_messages=100,
        listing_sizes=(1_000, 100_000),
        listing_requests=300,
        # One rollout of each kind at 10,000 devices: a few minutes each here.
        fleet_devices=10_000,
        canary_devices=100,
        fleet_image=int(1.5 * MiB),
        fleet_processes=2,
        fleet_repetitions=1,
        # At 5 s, 10,000 devices send 2,000 reports a second before any deploy,
        # which left 5,380 devices behind after 10 minutes on this shared machine
        # (load average 10 to 17); the update traffic is the same either way.
        fleet_status_interval=30.0,
    ),
    "quick": Scale(
        name="quick",
        repetitions=3,
        load_seconds=3,
        check_connections=64,
        download_connections=200,
        download_image=int(1.5 * MiB),
        upload_images=(4 * MiB, 16 * MiB),
        status_devices=500,
        status_messages=40,
        listing_sizes=(1_000, 20_000),
        listing_requests=100,
        fleet_devices=200,
        canary_devices=10,
        fleet_image=256 * 1024,
        fleet_repetitions=3,
        waves_devices=200,
    ),
    # For the smoke test: every benchmark runs, in seconds, and its figures mean nothing.
    "tiny": Scale(
        name="tiny",
        repetitions=1,
        load_seconds=1,
        check_connections=4,
        download_connections=4,
        download_image=64 * 1024,
        upload_images=(128 * 1024,),
        # Enough status messages that each subscriber uses a few clock ticks of
        # CPU (10 ms each in /proc/<pid>/stat): with fewer, the per-CPU figure is 0/0.
        status_devices=10,
        status_messages=300,
        listing_sizes=(20, 200),
        listing_requests=10,
        fleet_devices=6,
        canary_devices=2,
        fleet_image=16 * 1024,
        fleet_processes=2,
        warmup=False,
        waves_devices=8,
    ),
}


@dataclass(frozen=True)
class Context:
    scale: Scale
    work_dir: Path

    @property
    def repetitions(self) -> int:
        return self.scale.repetitions

    @property
    def log_dir(self) -> Path:
        path = self.work_dir / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def folder(self, name: str) -> Path:
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def image(version: str, size: int, *, seed: int = 0) -> bytes:
    """A real ESP32 application image of at most `size` bytes (esptool-built, validates)."""
    from tests.esp_image import build_image

    return build_image(version, code_size=size - IMAGE_OVERHEAD, seed=seed)


def mib(value: int | float) -> str:
    return f"{value / MiB:.3g} MiB"
