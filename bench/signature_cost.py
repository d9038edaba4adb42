"""What verifying a Secure Boot V2 signature at upload costs, per scheme, on a 4 MiB image.

`python -m bench.signature_cost`: signs one 4 MiB image per scheme with espsecure,
then times `verify_signature` (what an upload into a keyed group adds) and,
for scale, `inspect_firmware` (the image check every upload already pays).
Each figure is the median of several runs, in this process, files warm in the
page cache. Not part of `make bench`: a figure for the docs, measured on demand.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from otaship.firmware.image import inspect_firmware
from otaship.firmware.signatures import verify_signature
from otaship.firmware.signing_keys import Scheme, load_public_key
from tests.esp_image import build_image
from tests.signing import private_pem, public_pem, sign

MIB = 1024 * 1024
RUNS = 9


def median_ms(work: Callable[[], object], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> int:
    # Chip esp32c5 takes every scheme; the code fills the image to just under 4 MiB.
    image = build_image("1.0.0", chip="esp32c5", code_size=4 * MIB - 512)
    print(f"image: {len(image)} bytes, {RUNS} runs each, median")
    with tempfile.TemporaryDirectory() as folder:
        for scheme in Scheme:
            private = private_pem(scheme)
            key = load_public_key(public_pem(private))
            path = Path(folder) / f"{scheme}.bin"
            path.write_bytes(sign(image, private))
            described = inspect_firmware(path)
            size_mib = path.stat().st_size / MIB
            verify = median_ms(lambda: verify_signature(path, described, [key]))  # noqa: B023
            check = median_ms(lambda: inspect_firmware(path))  # noqa: B023
            print(
                f"{scheme:>11}: verify {verify:6.1f} ms ({verify / size_mib:5.2f} ms/MiB); "
                f"image check {check:6.1f} ms ({check / size_mib:5.2f} ms/MiB)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
