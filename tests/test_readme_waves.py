"""The README's "Waves and rollback" walk-through, run as a reader pastes it.

Its ```bash blocks (between `<!-- waves: begin -->` and `<!-- waves: end -->`)
run as `tests/readme_run.py` says, after what the section asks of the reader:
the Quick start's first block (the user, its key, the receiver's URL) and
`.venv/bin` on PATH, as the README's own line puts it there. The blocks make
their own group, waves and simulated devices; the assertions check their
printed answers and, through the API, where each rollout and group ended.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.readme_run import (
    README,
    marked_blocks,
    outside,
    processes_in,
    reader_env,
    run_blocks,
    scratch_folder,
    serving,
    wait_until,
)
from tests.test_readme_quickstart import quickstart_blocks

HEADING = "### Waves and rollback"
PATH_LINE = 'export PATH="$PWD/.venv/bin:$PATH"'
REPORT = 'echo "waves-report $OTASHIP_API_KEY $LAMPS $WAVES"'
# About 105 s alone; 260 s on a machine busy with other suites.
SCRIPT_TIMEOUT = 600

pytestmark = pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux's /proc")


def waves_blocks() -> list[str]:
    return marked_blocks(HEADING, "waves")


def test_the_section_and_its_links() -> None:
    assert len(waves_blocks()) == 6
    # What the section asks of the reader is what the test gives it.
    assert f"(`{PATH_LINE}`)" in README
    assert "**Try it** after the Quick start's first block" in README
    # The old headings are gone, and every link to the section finds it.
    assert "### Waves and pause" not in README and "### Automatic rollback" not in README
    assert "#waves-and-pause" not in README and "#automatic-rollback" not in README
    assert README.count("(#waves-and-rollback)") == 4


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    yield from scratch_folder(tmp_path)


def line(output: str, pattern: str) -> re.Match[str]:
    found = re.search(pattern, output, re.MULTILINE)
    assert found is not None, f"{pattern!r} not in\n{output}"
    return found


def test_waves_pause_and_rollback_run_as_pasted(folder: Path) -> None:
    env = reader_env()
    with serving(folder, env) as served:
        blocks = [quickstart_blocks()[0], PATH_LINE, *waves_blocks(), REPORT]
        output = run_blocks(folder, env, blocks, SCRIPT_TIMEOUT)
        api_key, lamps, waves = line(output, r"^waves-report (\S+) (\S+) (\S+)$").groups()
        wave_ids = waves.split(",")
        assert len(wave_ids) == 3
        headers = {"Authorization": f"Bearer {api_key}"}

        def get(path: str, **params: str) -> Any:
            answer = httpx.get(f"{served.url}{path}", params=params, headers=headers)
            assert answer.status_code == 200, answer.text
            return answer.json()

        # The plain deploy, then 1.1.0's answer.
        assert '"Firmware successfully deployed"\n' in output
        line(
            output,
            rf'^"Firmware successfully deployed to canary subgroup {wave_ids[0]} of group {lamps}; '
            r'the whole group gets it once its 3 waves are healthy, in order"$',
        )
        # Paused in wave 1 (its 10 s soak holds it there), a promote refused, resumed.
        line(output, r'^\{"state":"canary","wave":1,"paused":true\}$')
        line(output, r'^\{"message":"the rollout is paused: resume it first"\}$')
        line(
            output,
            r'^\{"state":"canary","wave":1,"paused":false,"controls":\[\{"action":"pause","by":"you@example\.com"\},'
            r'\{"action":"resume","by":"you@example\.com"\}\]\}$',
        )
        stages = [
            '{"name":"canary","wave":1,"targeted":3,"succeeded":3,"failed":0}',
            '{"name":"wave","wave":2,"targeted":3,"succeeded":3,"failed":0}',
            '{"name":"wave","wave":3,"targeted":3,"succeeded":3,"failed":0}',
            '{"name":"fleet","wave":null,"targeted":12,"succeeded":12,"failed":0}',
        ]
        assert "\n".join(stages) in output, output
        line(output, r"^rollout \w+: complete, fleet stage 12/12 succeeded, 0 failed, 0 pending$")

        rollouts = {r["version"]: r for r in get("/v1/rollouts", group=lamps)["rollouts"]}
        assert set(rollouts) == {"1.1.0", "1.2.0"}
        done = rollouts["1.1.0"]
        assert (done["state"], done["waves"], done["paused"]) == ("complete", wave_ids, False)
        assert [(c["action"], c["by"]) for c in done["controls"]] == [
            ("pause", "you@example.com"),
            ("resume", "you@example.com"),
        ]
        assert (done["policy"]["max_failure_rate"], done["policy"]["min_devices"]) == (0.2, 3)
        policies = [
            (p["wave"], p["soak"], p["error_threshold"], p["canary_timeout"]) for p in done["wave_policies"]
        ]
        assert policies == [(1, 10, 0, 1800), (2, 0, 0, 1800), (3, 0, 1, 600)]

        # 1.2.0: wave 1 took it, wave 2 came back on 1.1.0, and both went back to 1.1.0.
        assert "otaship-deploy exited with 3 (3: the rollout halted)" in output
        halted = rollouts["1.2.0"]
        assert halted["state"] == "rolled_back"
        # The clock halts at its first tick after a failure: by then one to three had failed.
        reason = r"([123]) wave 2 device\(s\) failed; error_threshold tolerates 0"
        failed = int(line(halted["reason"], rf"^{reason}$").group(1))
        line(output, rf'^"rolled_back"\n"{reason}"$')
        by_stage = {(s["name"], s["wave"]): s for s in halted["stages"]}
        assert (by_stage[("canary", 1)]["succeeded"], by_stage[("canary", 1)]["state"]) == (3, "passed")
        assert by_stage[("wave", 2)]["failed_by_reason"] == {"reverted": failed}
        # Wave 3 and the fleet were never deployed to.
        assert by_stage[("wave", 3)]["targeted"] == by_stage[("fleet", None)]["targeted"] == 0
        assert by_stage[("wave", 3)]["started_at"] is None
        assert (by_stage[("wave", 3)]["state"], by_stage[("fleet", None)]["state"]) == ("skipped", "skipped")
        for k, name in ((1, "canary"), (2, "wave 2")):
            line(
                output,
                rf'^\{{"wave":{k},"result":"{name} \({wave_ids[k - 1]}\) rolled back to 1\.1\.0",'
                r'"targeted":3,"went_back":3,"did_not":0,"unreachable":0\}$',
            )
        assert [(r["wave"], r["group"], r["version"], r["pending"]) for r in halted["rollback"]] == [
            (1, wave_ids[0], "1.1.0", 0),
            (2, wave_ids[1], "1.1.0", 0),
        ]
        # What each group's devices are told to run: 1.1.0 everywhere.
        for group in (lamps, *wave_ids):
            assert httpx.get(f"{served.url}/v1/ota/group/latest/{group}").json() == {"ver": "1.1.0"}

        # The last block stopped the simulators; each wrote its summary as it went.
        wait_until(
            lambda: outside(served.server.pid, processes_in(folder)) == [], 30, "the simulators to stop"
        )
    for name in ("lamps", "wave-1", "wave-2", "wave-3"):
        log = (folder / f"{name}.log").read_text()
        assert re.search(r"^running versions +1\.1\.0: 3$", log, re.MULTILINE), (name, log)
