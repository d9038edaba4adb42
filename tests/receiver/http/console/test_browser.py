"""The console in a real browser: Debian's Chromium, driven by Playwright, against
`otaship serve` with its embedded broker and simulated IoTaaP devices.

One receiver and one browser for the module; the steps of the issue chained in
a few tests, in order (each test goes on from where the one before left the
fleet). Without /usr/bin/chromium the tests skip, and with
OTASHIP_REQUIRE_SERVICES=1 (CI) they fail, as the services' tests do.
Playwright's own browser download cannot run here; its driver talks to Chromium.
A screenshot of each page goes to OTASHIP_CONSOLE_SCREENSHOTS (or a temporary
folder); docs/console-rollout.png is the rollout page's.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from otaship.receiver.db.devices import create_device
from otaship.receiver.db.engine import create_db_engine, ensure_schema, read_session, write_session
from otaship.receiver.db.groups import create_group
from otaship.receiver.db.logins import set_password
from otaship.receiver.db.models import Device, RolloutDevice, User
from otaship.receiver.db.models import Group as GroupRow
from otaship.receiver.db.users import create_user
from otaship.receiver.ids import utcnow
from otaship.receiver.settings import Settings
from otaship.simulator.config import SimulationConfig
from otaship.simulator.fleet import register_devices, simulate
from tests import services
from tests.device_fleet import Group
from tests.esp_image import build_image
from tests.receiver_process import ReceiverProcess, cli_env
from tests.waiting import eventually

if TYPE_CHECKING:
    from playwright.sync_api import Dialog, FilePayload, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "browser test password"
EMAIL = "sim@example.com"
XSS_NAME = "<script>alert(1)</script>"
TIMEOUT_MS = 20_000


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: apt-get install chromium"
    if os.environ.get("OTASHIP_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


class Fleets:
    """Simulated devices in a thread of their own, each group's fleet stopped at the end."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stops: list[asyncio.Event] = []
        self.runs: list[Any] = []

    def start(self, settings: Settings, config: SimulationConfig) -> None:
        register_devices(settings, config)

        async def begin() -> None:
            stop = asyncio.Event()
            self.stops.append(stop)
            self.runs.append(asyncio.ensure_future(simulate(config, stop=stop)))

        asyncio.run_coroutine_threadsafe(begin(), self.loop).result(10)

    def stop(self) -> None:
        async def end() -> None:
            for stop in self.stops:
                stop.set()
            await asyncio.gather(*self.runs, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(end(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Account:
    user_id: str
    api_key: str
    mqtt_user: str
    mqtt_password: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@dataclass
class World:
    receiver: ReceiverProcess
    engine: Engine
    account: Account
    page: Page
    shots: Path
    thermostats: Group
    canary: Group
    lamps: Group
    lamps_canary: Group
    dialogs: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.receiver.url

    @property
    def headers(self) -> dict[str, str]:
        return self.account.headers

    def shot(self, name: str, *, full_page: bool = True) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=full_page)

    def versions(self, group_ids: tuple[str, ...] = ()) -> dict[str | None, int]:
        """How many seen devices (of these groups) run each version."""
        query = select(Device.firmware_version, func.count()).where(col(Device.last_seen).is_not(None))
        if group_ids:
            query = query.where(col(Device.group_id).in_(group_ids))
        with read_session(self.engine) as session:
            rows = session.exec(query.group_by(col(Device.firmware_version))).all()
        return dict(rows)

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.url}/v1/rollouts/{rollout_id}", headers=self.headers).json()
        return body

    def owner(self, email: str, *, password: str | None = None) -> Account:
        """A pro user, straight in the database (as `otaship user create` and `user password` do)."""
        with write_session(self.engine) as session:
            created = create_user(session=session, email=email, plan="pro")
            if password is not None:
                set_password(session=session, user=created.user, password=password, now=utcnow())
        user = created.user
        return Account(user.id, created.api_key, user.mqtt_user, created.mqtt_password)

    def group(self, account: Account, name: str, parent: Group | None = None) -> Group:
        with write_session(self.engine) as session:
            user = session.get(User, account.user_id)
            assert user is not None
            made = create_group(
                session=session, owner=user, name=name, parent_id=parent.id if parent else None
            )
        return Group(made.id, made.token)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    port = services.free_port()
    data_dir = tmp_path_factory.mktemp("console") / "data"
    env = cli_env(data_dir, OTASHIP_MQTT_URL=f"embedded://127.0.0.1:{port}", OTASHIP_LOG_LEVEL="warning")
    settings = Settings.from_env(env)
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(settings.resolved_database_url)
    fleets = Fleets()
    receiver = ReceiverProcess(env)
    playwright = sync_playwright().start()
    try:
        # SQLite migrates itself: the schema is the receiver's before it starts.
        ensure_schema(engine)
        receiver.start()
        shots = Path(os.environ.get("OTASHIP_CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
        shots.mkdir(parents=True, exist_ok=True)
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        none = Group("", "")
        world = World(receiver, engine, Account("", "", "", ""), page, shots, none, none, none, none)
        world.account = world.owner(EMAIL, password=PASSWORD)
        world.thermostats = world.group(world.account, "thermostats")
        world.canary = world.group(world.account, "canary", world.thermostats)
        world.lamps = world.group(world.account, "lamps")
        world.lamps_canary = world.group(world.account, "lamps canary", world.lamps)
        world.group(world.account, XSS_NAME)
        account = world.account
        mqtt_url = f"mqtt://{account.mqtt_user}:{account.mqtt_password}@127.0.0.1:{port}"

        def config(group: Group, devices: int, prefix: str, **options: Any) -> SimulationConfig:
            return SimulationConfig(
                server=receiver.url,
                mqtt_url=mqtt_url,
                group_id=group.id,
                token=group.token,
                devices=devices,
                version="1.0.0",
                id_prefix=prefix,
                status_interval=1.0,
                **options,
            )

        fleets.start(settings, config(world.thermostats, 4, "thermo", reboot_delay=(0.1, 0.3)))
        # Slow to reboot: the rollout page is open before their reports change its counts.
        fleets.start(settings, config(world.canary, 2, "early", reboot_delay=(2.5, 3.0)))
        fleets.start(settings, config(world.lamps, 1, "lamp", reboot_delay=(0.1, 0.3)))
        # Each comes back on its old version: a failed update.
        fleets.start(
            settings, config(world.lamps_canary, 1, "bad-lamp", fail_rate=1.0, reboot_delay=(0.1, 0.3))
        )

        def on_dialog(dialog: Dialog) -> None:
            world.dialogs.append(dialog.message)
            dialog.accept()

        page.on("dialog", on_dialog)
        # Every device online (seen) before the first page.
        eventually(
            lambda: world.versions() == {"1.0.0": 8},
            "the simulated devices to report",
            timeout=30,
            interval=0.2,
        )
        yield world
        browser.close()
    finally:
        playwright.stop()
        fleets.stop()
        receiver.stop()
        engine.dispose()


def firmware(version: str) -> FilePayload:
    return {"name": "firmware.bin", "mimeType": "application/octet-stream", "buffer": build_image(version)}


def labelled(page: Page) -> list[str]:
    """The fields of the page without a label: none, on every page."""
    missing: list[str] = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
            .filter(e => e.labels.length === 0 && !e.getAttribute('aria-label')).map(e => e.name || e.id)"""
    )
    return missing


def tab_to(page: Page, element_id: str, limit: int = 80) -> None:
    """Reach an element with the Tab key alone."""
    page.locator("body").focus()
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement && document.activeElement.id") == element_id:
            return
    raise AssertionError(f"#{element_id} cannot be reached with the keyboard")


def test_sign_in_see_the_tree_deploy_and_promote_a_live_canary(world: World) -> None:
    page = world.page
    # 1. Sign in.
    page.goto(f"{world.url}/console/")
    assert page.url == f"{world.url}/console/sign-in"
    assert labelled(page) == []
    world.shot("sign-in")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Password").press("Enter")
    page.wait_for_url(f"{world.url}/console/")

    # 2. The tree and the version bars; the script-named group is text.
    rows = page.locator("table.tree tbody tr")
    assert rows.count() == 5
    thermostats = page.locator(f'tr[data-group="{world.thermostats.id}"]')
    assert thermostats.locator("td.devices").inner_text() == "4"
    assert thermostats.locator("svg.bar rect").count() == 1
    assert thermostats.locator("svg.bar").get_attribute("aria-label") == "1.0.0: 4"
    assert page.locator(f'tr[data-group="{world.canary.id}"] td').first.inner_text().startswith("canary")
    assert page.get_by_text(XSS_NAME, exact=True).count() == 1
    assert page.locator("#online-count").inner_text() == "8"
    world.shot("fleet")

    # 3. Deploy an example image through the form: a bad version first, shown by its field.
    page.get_by_role("link", name="thermostats").click()
    assert labelled(page) == []
    image = firmware("1.1.0")
    page.get_by_label("Firmware image").set_input_files(image)
    page.get_by_label("Version", exact=True).fill("1.1")
    page.get_by_role("button", name="Deploy").click()
    assert "not valid: use semantic versioning" in page.locator("#version-error").inner_text()
    page.get_by_label("Firmware image").set_input_files(image)
    page.get_by_label("Version", exact=True).fill("1.1.0")
    page.get_by_role("button", name="Deploy").click()
    page.wait_for_url(re.compile(r".*\?deployed=True$"))
    assert page.get_by_role("status").inner_text() == "Deployed."
    assert page.locator("#history tbody tr").first.locator("td").first.inner_text() == "1.1.0"
    world.shot("group")
    # A device busy updating misses a trigger, as a real one does: the canary
    # rollout starts once the group and its canary run 1.1.0.
    tree = (world.thermostats.id, world.canary.id)
    eventually(
        lambda: world.versions(tree) == {"1.1.0": 6}, "the group to run 1.1.0", timeout=20, interval=0.1
    )

    # 4. A canary rollout through the form, held for a promote.
    page.get_by_label("Firmware image").set_input_files(firmware("1.2.0"))
    page.get_by_label("Version", exact=True).fill("1.2.0")
    page.get_by_label("Canary subgroup").select_option(label="canary")
    page.get_by_label("Promote", exact=True).select_option("false")
    page.get_by_role("button", name="Deploy").click()
    page.wait_for_url(re.compile(r".*/console/rollouts/[0-9a-f]{24}$"))
    rollout_id = page.url.rsplit("/", 1)[1]
    assert page.locator("#rollout-state").inner_text() == "canary"
    succeeded = page.locator('[data-stage="canary"] [data-count="succeeded"]')
    assert succeeded.inner_text() == "0"

    # 5. The counts change as the devices report, with no reload.
    page.evaluate(
        """() => {
            window.notReloaded = true;
            new MutationObserver(() => {
                const count = document.querySelector('[data-stage="canary"] [data-count="succeeded"]');
                if (count && count.textContent === "2" && !window.shownAt) { window.shownAt = Date.now(); }
            }).observe(document.getElementById("live"), {childList: true, subtree: true, characterData: true});
        }"""
    )
    page.wait_for_function(
        """() => document.querySelector('[data-stage="canary"] [data-count="succeeded"]').textContent === "2" """
    )
    assert page.evaluate("() => window.notReloaded") is True
    assert int(page.locator("#live").get_attribute("data-updates") or "0") >= 1
    # From the receiver storing the second device's report to the page showing it.
    with read_session(world.engine) as session:
        stored = session.exec(
            select(func.max(RolloutDevice.updated_at)).where(
                col(RolloutDevice.rollout_id) == rollout_id, col(RolloutDevice.stage) == "canary"
            )
        ).one()
    assert stored is not None
    stored_ms = stored.replace(tzinfo=stored.tzinfo or UTC).timestamp() * 1000
    print(
        f"a device's report reached the open rollout page in {(page.evaluate('() => window.shownAt') - stored_ms) / 1000:.2f} s"
    )

    # 6. Promote, with the keyboard alone, past the confirmation.
    tab_to(page, "promote")
    page.keyboard.press("Enter")
    page.wait_for_function("""() => document.getElementById("rollout-state").textContent !== "canary" """)
    assert world.dialogs[-1].startswith("Promote this rollout: deploy 1.2.0 to the whole group?")
    page.wait_for_function(
        """() => document.getElementById("rollout-state").textContent === "complete" """, timeout=30_000
    )
    fleet_stage = page.locator('[data-stage="fleet"]')
    targeted = fleet_stage.locator('[data-count="targeted"]').inner_text()
    assert int(targeted) >= 4
    assert fleet_stage.locator('[data-count="succeeded"]').inner_text() == targeted
    assert "Complete: " in page.locator("#rollout-reason").inner_text()
    world.shot("rollout")


def test_a_failing_canary_halts_in_words_and_a_rollout_is_aborted(world: World) -> None:
    page = world.page
    # 7. A canary whose device fails: its halt reason, in words.
    answer = httpx.post(
        f"{world.url}/v1/ota/group",
        headers=world.headers,
        data={
            "group": world.lamps.id,
            "token": world.lamps.token,
            "version": "2.0.0",
            "canary": world.lamps_canary.id,
        },
        files={"firmware": ("firmware.bin", build_image("2.0.0"))},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    page.goto(f"{world.url}/console/rollouts/{answer.json()['rollout']['id']}")
    page.wait_for_function("""() => document.getElementById("rollout-state").textContent === "halted" """)
    assert page.locator("#rollout-reason").inner_text() == (
        "Halted: 1 canary device(s) failed; error_threshold tolerates 0"
    )
    assert page.locator('[data-stage="canary"] [data-count="failed"]').inner_text() == "1"
    assert page.locator("#promote").count() == 0

    # 8. Pause, resume and abort a rollout held for its promote, with the mouse this time.
    held = httpx.post(
        f"{world.url}/v1/ota/group",
        headers=world.headers,
        data={
            "group": world.thermostats.id,
            "token": world.thermostats.token,
            "version": "1.3.0",
            "canary": world.canary.id,
            "auto_promote": "false",
        },
        files={"firmware": ("firmware.bin", build_image("1.3.0"))},
        timeout=30,
    )
    assert held.status_code == 201, held.text
    held_id = held.json()["rollout"]["id"]
    page.goto(f"{world.url}/console/rollouts/{held_id}")
    # Pause it and resume it, with the mouse: no confirmation; the page says who paused it.
    dialogs = len(world.dialogs)
    page.get_by_role("button", name="Pause").click()
    page.wait_for_selector("#rollout-paused")
    assert page.locator("#rollout-paused").inner_text().startswith(f"Paused by {EMAIL} at ")
    assert page.locator("#promote").count() == 0 and page.locator("#pause").count() == 0
    assert world.rollout(held_id)["paused"] is True
    page.get_by_role("button", name="Resume").click()
    page.wait_for_selector("#pause")
    assert page.locator("#rollout-paused").count() == 0 and page.locator("#resume").count() == 0
    assert [c["action"] for c in world.rollout(held_id)["controls"]] == ["pause", "resume"]
    assert len(world.dialogs) == dialogs
    page.get_by_role("button", name="Abort").click()
    page.wait_for_function("""() => document.getElementById("rollout-state").textContent === "aborted" """)
    assert world.dialogs[-1].startswith("Abort this rollout?")
    assert page.locator("#rollout-reason").inner_text() == "Aborted: aborted by request"


def test_keys_csrf_cross_owner_and_sign_out(world: World) -> None:
    page = world.page
    # 9. Create an API key (shown once), use it, revoke it.
    page.goto(f"{world.url}/console/keys")
    assert labelled(page) == []
    page.get_by_role("button", name="Create a key").click()
    key = page.get_by_label("New API key").input_value()
    assert key.startswith("osk_")
    world.shot("keys")
    bearer = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{world.url}/v1/ota/group", headers=bearer).status_code == 200
    page.goto(f"{world.url}/console/keys")
    page.get_by_role("button", name=f"Revoke {key[:12]}").click()
    page.wait_for_url(f"{world.url}/console/keys")
    assert page.get_by_text(key[:12]).count() == 0
    assert httpx.get(f"{world.url}/v1/ota/group", headers=bearer).status_code == 401

    # CSRF: the same form without its token is refused, and nothing is created.
    keys_before = page.locator("#keys tbody tr").count()
    page.evaluate(
        """() => document.querySelector('form[action="/console/keys"] input[name=csrf]').remove()"""
    )
    page.get_by_role("button", name="Create a key").click()
    assert page.get_by_role("heading", name="Refused").count() == 1
    page.goto(f"{world.url}/console/keys")
    assert page.locator("#keys tbody tr").count() == keys_before

    # Another owner's rollout is a 404 page.
    other = world.owner("other@example.com")
    group = world.group(other, "theirs")
    early = world.group(other, "early", group)
    with write_session(world.engine) as session:
        early_row = session.get(GroupRow, early.id)
        assert early_row is not None
        create_device(session=session, group=early_row, name="one")
    theirs = httpx.post(
        f"{world.url}/v1/ota/group",
        headers=other.headers,
        data={"group": group.id, "token": group.token, "version": "9.0.0", "canary": early.id},
        files={"firmware": ("firmware.bin", build_image("9.0.0"))},
        timeout=30,
    )
    assert theirs.status_code == 201, theirs.text
    response = page.goto(f"{world.url}/console/rollouts/{theirs.json()['rollout']['id']}")
    assert response is not None and response.status == 404
    assert page.get_by_text("There is no such rollout in your account.").count() == 1

    # The API reference, from /openapi.json, offline.
    page.goto(f"{world.url}/docs")
    assert page.locator("#login h3").inner_text() == "POST /v1/auth/login"
    world.shot("docs", full_page=False)

    # 10. Sign out: the pages send the browser to sign in.
    page.goto(f"{world.url}/console/")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{world.url}/console/sign-in")
    page.goto(f"{world.url}/console/rollouts/{theirs.json()['rollout']['id']}")
    assert page.url == f"{world.url}/console/sign-in"
    page.goto(f"{world.url}/console/keys")
    assert page.url == f"{world.url}/console/sign-in"
    # No script ever ran from a user's text: the only dialogs were the confirmations.
    assert all(m.startswith(("Promote", "Abort", "Revoke")) for m in world.dialogs)
