"""Schemathesis against the real app: every operation of /openapi.json, fuzzed.

Each operation gets cases drawn from its documented schema, valid and
invalid (schemathesis' positive and negative modes), sent with the seeded
owner's API key. Half the time a value that names a group, a rollout or a
device's credentials (path, query or form), and a Range, a version or a
firmware file, is swapped for a real one from the seeded database, so cases
get past "No such group" into the code behind it. Every answer must be no
5xx, a documented status, with the documented content type, headers and body.

OTASHIP_FUZZ_EXAMPLES sets the cases per operation (default 30: a few hundred
in all, for `make test`; `make fuzz` runs thousands). The seed is fixed, so a
run is repeatable; a failure prints the case as a curl command.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient

from otaship.firmware.signing_keys import Scheme
from otaship.receiver.app import create_app
from otaship.receiver.db.models import Group
from otaship.receiver.http.openapi import document
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from tests.conftest import SUMMARY, Fleet, Owner
from tests.esp_image import build_image
from tests.signing import private_pem, public_pem

EXAMPLES = int(os.environ.get("OTASHIP_FUZZ_EXAMPLES", "30"))
SEED = 20240101
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
OPERATIONS = [f"{method.upper()} {path}" for path, item in document()["paths"].items() for method in item]
# 5xx answers that remain, by operation, with the reason each cannot be fixed:
# none, and the list should stay empty.
KNOWN: dict[str, str] = {}
RANGES = [
    "bytes=0-99",
    "bytes=-500",
    "bytes=100-",
    "bytes=0-9,20-29",
    "bytes=99999999-",
    "bytes=5-1",
    "bytes=0-0,-1",
    "bytes=",
    "bytes=-0",
    "items=0-9",
]


@dataclass(frozen=True)
class Seeded:
    """Real values from the seeded database."""

    api_key: str
    groups: Sequence[Group]
    rollout_ids: Sequence[str]
    canary_ids: Sequence[str]
    versions: Sequence[str]
    images: Sequence[bytes]
    # PEM public keys, one per scheme: the chips of the seeded groups take some of them.
    public_keys: Sequence[str] = ()


# Answers by operation and status, and how often a value was swapped for a
# real one, for the summary at the end of the module.
TALLIES: dict[str, Counter[int]] = {}
CHOICES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def summary(pytestconfig: pytest.Config) -> Iterator[None]:
    yield
    if not TALLIES:
        return
    lines = pytestconfig.stash.setdefault(SUMMARY, [])
    total = sum(sum(t.values()) for t in TALLIES.values())
    lines.append(
        f"schemathesis: {total} cases on {len(TALLIES)} operations (seed {SEED}), "
        f"real ids and values in {CHOICES['real']} of {CHOICES.total()} places that take them"
    )
    for label, statuses in TALLIES.items():
        answers = ", ".join(f"{status}x{count}" for status, count in sorted(statuses.items()))
        lines.append(f"  {label}: {sum(statuses.values())} ({answers})")


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    # Overrides the conftest's: SQLite alone keeps the fuzzer quick.
    return f"sqlite:///{tmp_path / 'otaship.db'}"


def seed(settings: Settings, services: Services, fleet: Fleet) -> Seeded:
    """An owner with groups, devices, OTAs and two rollouts (one aborted, one held); another owner's group."""
    owner = fleet.owner()
    plain = fleet.group(owner, name="plain")
    parent = fleet.group(owner, name="fleet")
    canary = fleet.group(owner, name="canary", parent=parent)
    bench = fleet.group(owner, name="bench", parent=parent)
    empty = fleet.group(owner, name="empty")
    for i in range(2):
        fleet.device(canary, name=f"canary{i}", firmware_version="1.0.0")
    fleet.device(bench, name="bench", firmware_version="1.0.0")
    other = fleet.owner()
    foreign = fleet.group(other, name="foreign")

    with TestClient(create_app(settings, services=services)) as client:

        def deploy(who: Owner, group: Group, version: str, **extra: str) -> dict[str, Any]:
            response = client.post(
                "/v1/ota/group",
                headers=who.headers,
                data={"group": group.id, "token": group.token, "version": version, **extra},
                files={"firmware": ("firmware.bin", build_image(version))},
            )
            assert response.status_code == 201, response.text
            body: dict[str, Any] = response.json()
            return body

        deploy(owner, plain, "1.0.0")
        deploy(owner, parent, "1.0.0")
        deploy(other, foreign, "1.0.0")
        ended = deploy(owner, parent, "1.1.0", canary=canary.id, auto_promote="false")["rollout"]["id"]
        assert client.post(f"/v1/rollouts/{ended}/abort", headers=owner.headers).status_code == 200
        held = deploy(owner, parent, "1.2.0", canary=canary.id, auto_promote="false")["rollout"]["id"]

    return Seeded(
        api_key=owner.api_key,
        groups=[plain, parent, canary, bench, empty, foreign],
        rollout_ids=[ended, held],
        canary_ids=[canary.id, bench.id, plain.id],
        versions=["1.0.0", "1.2.0", "1.3.0", "2.0.0"],
        images=[build_image("1.3.0"), build_image("2.0.0"), build_image("1.0.0", seed=1)],
        public_keys=[public_pem(private_pem(scheme)).decode() for scheme in Scheme],
    )


# The operation's type varies by schema kind; these helpers take any.
AnyCase = schemathesis.Case[Any]


def half_the_time(case: AnyCase, key: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A real value half the time, else None: keep what schemathesis generated.

    Hypothesis draws its simplest choice far more than half the time in a short
    run, so its coin is flipped by a bit of the generated case's own hash: half
    and half either way, and still a function of the case, so a failing case
    replays and shrinks.
    """
    # No body is a sentinel object whose repr holds its address: it would change the coin from run to run.
    body = case.body if isinstance(case.body, dict | list | str | bytes | int | float | bool) else None
    generated = repr((key, case.path_parameters, case.query, case.headers, body)).encode()
    flip = zlib.crc32(generated) & 1 == 1
    return st.booleans().flatmap(lambda coin: values if coin != flip else st.none())


def real_values(seeded: Seeded, case: AnyCase) -> dict[str, st.SearchStrategy[Any]]:
    """A strategy per "location name" the case's operation takes that has real values."""
    groups = st.sampled_from(seeded.groups)
    by_name: dict[str, st.SearchStrategy[Any]] = {
        "path group_id": groups.map(lambda g: g.id),
        "path credentials": groups.map(lambda g: g.id + g.token),
        "path rollout_id": st.sampled_from(seeded.rollout_ids),
        "query group": groups.map(lambda g: g.id),
        "header Range": st.sampled_from(RANGES),
    }
    operation = case.operation
    declared = (
        {f"path {p.name}" for p in operation.path_parameters}
        | {f"query {p.name}" for p in operation.query}
        | {f"header {p.name}" for p in operation.headers}
    )
    if isinstance(case.body, dict) and case.media_type == "application/json":
        by_name["json public_key"] = st.sampled_from(seeded.public_keys)
        declared.add("json public_key")
    elif isinstance(case.body, dict) and case.media_type == "multipart/form-data":
        # The group and its token go together: a real group with another's token is only a 400.
        by_name |= {
            "form group": groups,
            "form canary": st.sampled_from(seeded.canary_ids),
            "form version": st.sampled_from(seeded.versions),
            "form firmware": st.sampled_from(seeded.images),
        }
        declared |= {"form group", "form canary", "form version", "form firmware"}
    return {key: half_the_time(case, key, values) for key, values in by_name.items() if key in declared}


def authorization(api_key: str) -> st.SearchStrategy[str]:
    """The valid key seven times in eight: without it every operation but the devices' is a 401."""
    valid = f"Bearer {api_key}"
    bad = [
        "",
        "Bearer",
        "Bearer osk_wrong",
        "Basic b3duZXI6a2V5",
        "Bearer " + "x" * 300,
        f"bearer   {api_key}  ",
        api_key,
        f"Bearer {api_key}x",
    ]
    return st.sampled_from([False] * 7 + [True]).flatmap(
        lambda wrong: st.sampled_from(bad) if wrong else st.just(valid)
    )


def with_real_values(case: AnyCase, seeded: Seeded) -> st.SearchStrategy[AnyCase]:
    def apply(picks: dict[str, Any]) -> AnyCase:
        headers: dict[str, Any] = {
            **dict(case.headers or {}),
            "Authorization": picks.pop("header Authorization"),
        }
        body: Any = case.body  # real_values offers form fields only for a form
        for key, value in picks.items():
            CHOICES["real" if value is not None else "generated"] += 1
            if value is None:
                continue
            where, name = key.split(" ", 1)
            if where == "form" and name == "group":
                body.update(group=value.id, token=value.token)
            elif where in ("form", "json"):
                body[name] = value
            elif where == "path":
                case.path_parameters = {**(case.path_parameters or {}), name: value}
            elif where == "query":
                case.query = {**(case.query or {}), name: value}
            else:
                headers[name] = value
        case.headers = headers  # type: ignore[assignment]  # schemathesis takes any mapping
        return case

    return st.fixed_dictionaries(
        {**real_values(seeded, case), "header Authorization": authorization(seeded.api_key)}
    ).map(lambda picks: apply(dict(picks)))


@pytest.fixture
def schema(settings: Settings, services: Services, fleet: Fleet) -> Iterator[tuple[Any, Seeded]]:
    # The rate limits have their own tests; here they would only cut cases short.
    # With OTASHIP_SECRET_KEY, GitHub bindings can be made: without it their 503 is all there is.
    unlimited = settings.with_overrides(
        rate_limit_reads=None, rate_limit_writes=None, rate_limit_bad_keys=None, secret_key="k" * 40
    )
    services = dataclasses.replace(services, settings=unlimited)
    seeded = seed(unlimited, services, fleet)
    loaded = schemathesis.openapi.from_asgi("/openapi.json", create_app(unlimited, services=services))

    @loaded.hook
    def flatmap_case(context: schemathesis.HookContext, case: AnyCase) -> st.SearchStrategy[Any]:
        return with_real_values(case, seeded)

    try:
        yield loaded, seeded
    finally:
        # The fuzzer's client started the app's lifespan: end it before the services go.
        asgi.shutdown_lifespans()


@pytest.mark.parametrize("label", OPERATIONS)
def test_every_operation_answers_as_documented(label: str, schema: tuple[Any, Seeded]) -> None:
    loaded, _ = schema
    method, path = label.split(" ", 1)
    operation = loaded[path][method]
    tally = TALLIES.setdefault(label, Counter())
    strategy = st.one_of(
        operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
        operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )

    @hypothesis.seed(SEED)
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def run(case: AnyCase) -> None:
        response = case.call()
        tally[response.status_code] += 1
        if response.status_code >= 500 and label in KNOWN:
            return
        case.validate_response(response, checks=CHECKS)

    run()


def test_known_server_errors_name_operations() -> None:
    assert set(KNOWN) <= set(OPERATIONS)
