"""Properties of every parser of outside input, checked with hypothesis.

Each parser takes any text (or any body, in any chunks) and either returns a
value within its field's bounds or refuses with the error that becomes a 4xx:
never another exception, which would be a 500, and never a spool file left
behind. Derandomized with a bounded number of examples, so `make test` runs
the same cases every time, quickly; raise max_examples locally to dig deeper.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import semver
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.testclient import TestClient

from otaship.receiver.fields import BadField, choice, flag, fraction, has_control, text, whole_number
from otaship.receiver.http.management.deploy_form import (
    MAX_STAGE_SECONDS,
    MAX_TOLERATED_FAILURES,
    ROLLOUT_FIELDS,
    parse_options,
    parse_target,
    valid_version,
)
from otaship.receiver.intake.multipart import (
    MalformedUpload,
    Upload,
    UploadTimedOut,
    UploadTooLarge,
    receive_upload,
)
from otaship.receiver.rollouts.policy import PolicyError
from tests import multipart
from tests.conftest import Fleet, Owner

# The fixtures these tests take (a spool folder, an app) are fit for every
# example: each example leaves them as it found them, which the tests check.
PROPERTY = settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
# Cases that go through the app (and its database) cost more each.
ROUTE_PROPERTY = settings(PROPERTY, max_examples=40)

# Anything a query string or a form can carry, Unicode digits and control characters included.
any_text = st.text(st.characters(codec="utf-8"), max_size=80)
digits_and_tricks = st.text(
    st.sampled_from(list("0123456789 \t\r\n+-._eE\x00\x7f²³١٣\u00a0\uff11")), max_size=40
)
values = st.one_of(any_text, digits_and_tricks, st.integers().map(str), st.floats().map(repr))


# --- numbers ---------------------------------------------------------------------


@PROPERTY
@given(raw=st.one_of(st.none(), values), clamp=st.booleans())
@example(raw="9" * 5000, clamp=False)
@example(raw="²", clamp=False)
def test_a_whole_number_is_in_its_bounds_or_refused_by_name(raw: str | None, clamp: bool) -> None:
    try:
        number = whole_number(raw, name="offset", default=7, minimum=3, maximum=1000, clamp=clamp)
    except BadField as exc:
        assert str(exc).startswith("offset must be a whole number ")
        assert raw is not None
        return
    assert 3 <= number <= 1000 or number == 7
    if raw is not None and raw.strip(" \t\r\n"):
        stripped = raw.strip(" \t\r\n")
        assert stripped.isascii() and stripped.isdigit()


@PROPERTY
@given(
    number=st.integers(min_value=0, max_value=10**40),
    zeros=st.integers(0, 5),
    pad=st.sampled_from(["", " ", "\t", "\r\n"]),
)
def test_ascii_digits_read_as_their_number(number: int, zeros: int, pad: str) -> None:
    raw = f"{pad}{'0' * zeros}{number}{pad}"
    if number <= 1000:
        assert whole_number(raw, name="n", default=0, minimum=0, maximum=1000) == number
    else:
        with pytest.raises(BadField, match=r"^n must be a whole number from 0 to 1000, not "):
            whole_number(raw, name="n", default=0, minimum=0, maximum=1000)
    assert whole_number(raw, name="n", default=0, minimum=0, maximum=1000, clamp=True) == min(number, 1000)


@PROPERTY
@given(digit=st.characters(categories=("Nd", "No")).filter(lambda c: not c.isascii()))
def test_no_unicode_digit_is_a_number(digit: str) -> None:
    with pytest.raises(BadField):
        whole_number(digit, name="n", default=0, minimum=0, maximum=10**9)
    with pytest.raises(BadField):
        fraction(f"0.{digit}", name="f", default=1.0)


@PROPERTY
@given(raw=st.one_of(st.none(), values))
@example(raw="1e-400")
@example(raw="nan")
@example(raw="1e99999")
def test_a_fraction_is_finite_in_0_1_or_refused_by_name(raw: str | None) -> None:
    try:
        number = fraction(raw, name="success_threshold", default=1.0)
    except BadField as exc:
        assert str(exc).startswith("success_threshold must be a number in (0, 1], not ")
        return
    assert 0 < number <= 1


@PROPERTY
@given(number=st.floats(min_value=0, max_value=1, exclude_min=True))
def test_every_fraction_a_client_writes_reads_back(number: float) -> None:
    # The action sends str(float): `1e-05`, `0.5`, `1.0`.
    assert fraction(str(number), name="f", default=1.0) == number
    assert fraction(repr(number), name="f", default=1.0) == number


# --- text ------------------------------------------------------------------------


@PROPERTY
@given(raw=st.one_of(st.none(), values), max_length=st.integers(1, 64))
def test_text_has_no_control_character_and_fits_or_is_refused(raw: str | None, max_length: int) -> None:
    try:
        value = text(raw, name="search_value", max_length=max_length)
    except BadField as exc:
        assert str(exc) in (
            "search_value must not contain control characters",
            f"search_value is too long: at most {max_length} characters",
        )
        return
    assert not has_control(value)
    assert len(value) <= max_length
    assert value == ("" if raw is None else raw.strip(" \t\r\n"))


@PROPERTY
@given(raw=st.one_of(st.none(), values))
def test_words_are_one_of_theirs_or_refused_by_name(raw: str | None) -> None:
    try:
        assert flag(raw, name="devices", default=True) in (True, False)
    except BadField as exc:
        assert str(exc).startswith("devices must be true or false, not ")
    try:
        assert choice(raw, name="order_dir", choices=("asc", "desc"), default="desc") in ("asc", "desc")
    except BadField as exc:
        assert str(exc).startswith("order_dir must be asc or desc, not ")


# --- versions --------------------------------------------------------------------

numeric = st.integers(0, 10**6).map(str)
alphanumerics = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-"
# A prerelease identifier is numeric, or holds at least one letter or hyphen.
identifier = st.one_of(
    numeric,
    st.tuples(
        st.text(alphabet=alphanumerics, max_size=5),
        st.sampled_from("abcXYZ-"),
        st.text(alphabet=alphanumerics, max_size=5),
    ).map("".join),
)


def _semantic(core: tuple[str, str, str], pre: list[str], build: list[str]) -> str:
    return ".".join(core) + (f"-{'.'.join(pre)}" if pre else "") + (f"+{'.'.join(build)}" if build else "")


semantic_versions = st.builds(
    _semantic,
    st.tuples(numeric, numeric, numeric),
    st.lists(identifier, max_size=3),
    st.lists(st.text(alphabet=alphanumerics, min_size=1, max_size=8), max_size=2),
)


@PROPERTY
@given(version=semantic_versions)
def test_every_semantic_version_up_to_64_characters_is_valid(version: str) -> None:
    assert valid_version(version) is (len(version) <= 64)


@PROPERTY
@given(version=st.one_of(values, semantic_versions.map(lambda v: v + "\x00"), semantic_versions))
def test_a_valid_version_is_plain_ascii_and_reads_back(version: str) -> None:
    if valid_version(version):
        assert version.isascii() and not has_control(version) and len(version) <= 64
        assert str(semver.Version.parse(version)) == version


# --- the form fields of a deploy --------------------------------------------------

form_names = st.sampled_from(["group", "token", "version", "commit", "canary", *ROLLOUT_FIELDS, "other"])
form_values = st.one_of(values, st.just("5e1dce30005aff52dbf0f3fd"), st.just("604800"), st.just("0.5"))


@PROPERTY
@given(fields=st.dictionaries(form_names, form_values, max_size=10), has_file=st.booleans())
def test_form_fields_parse_within_bounds_or_are_refused(fields: dict[str, str], has_file: bool) -> None:
    try:
        target = parse_target(fields, has_file=has_file)
    except BadField:
        pass
    else:
        assert len(target.group_id) == 24 and target.token and target.version
    try:
        options = parse_options(fields)
    except (BadField, PolicyError):
        return
    if options.commit is not None:
        assert not has_control(options.commit) and len(options.commit) <= 64
    if options.policy is None:
        assert options.canary_id is None
        return
    assert options.canary_id is not None and len(options.canary_id) == 24
    policy = options.policy
    assert 1 <= policy.canary_timeout <= MAX_STAGE_SECONDS
    assert 0 <= policy.soak <= MAX_STAGE_SECONDS
    assert 0 <= policy.error_threshold <= MAX_TOLERATED_FAILURES
    assert 0 < policy.success_threshold <= 1


# --- multipart framing -------------------------------------------------------------


def request_of(chunks: list[bytes], content_type: str = multipart.CONTENT_TYPE) -> Request:
    messages = iter(
        [{"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks]
        + [{"type": "http.request", "body": b"", "more_body": False}]
    )

    async def receive() -> dict[str, object]:
        return next(messages)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/ota/group",
        "query_string": b"",
        "headers": [(b"content-type", content_type.encode())],
    }
    return Request(scope, receive)


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(body)) for cut in cuts})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


def parse(
    chunks: list[bytes], spool: Path, max_file_bytes: int = 4096
) -> tuple[dict[str, str], bytes | None] | str:
    """The fields and file bytes of a body, or the refusal's class and message; the spool emptied."""
    try:
        upload: Upload = asyncio.run(
            receive_upload(
                request_of(chunks),
                spool_dir=spool,
                max_file_bytes=max_file_bytes,
                idle_timeout=5,
                total_timeout=30,
            )
        )
    except (MalformedUpload, UploadTooLarge, UploadTimedOut) as exc:
        outcome: tuple[dict[str, str], bytes | None] | str = f"{type(exc).__name__}: {exc}"
    else:
        data = upload.file_path.read_bytes() if upload.file_path is not None else None
        if upload.facts is not None:
            assert data is not None and upload.facts.sha256 == hashlib.sha256(data).hexdigest()
        outcome = (upload.fields, data)
        upload.discard()
    assert list(spool.glob("*")) == [], "a spool file outlived its upload"
    return outcome


field_names = st.sampled_from(["group", "token", "version", "commit", "canary", "soak", "x"])
field_values = st.text(st.characters(codec="utf-8"), max_size=60).filter(
    lambda v: multipart.BOUNDARY not in v
)
cut_lists = st.lists(st.integers(0, 8192), max_size=12)


@pytest.fixture
def spool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("spool")


@settings(PROPERTY, max_examples=100)
@given(
    fields=st.dictionaries(field_names, field_values, max_size=6),
    firmware=st.one_of(st.none(), st.binary(max_size=3000)),
    cuts=cut_lists,
    other_cuts=cut_lists,
)
def test_a_valid_body_parses_the_same_however_it_is_chunked(
    spool: Path, fields: dict[str, str], firmware: bytes | None, cuts: list[int], other_cuts: list[int]
) -> None:
    body = multipart.form(fields, firmware)
    whole = parse([body], spool)
    assert whole == (fields, firmware)
    assert parse(split(body, cuts), spool) == whole
    assert parse(split(body, other_cuts), spool) == whole
    assert parse([bytes([b]) for b in body[:300]] + [body[300:]], spool) == whole


@st.composite
def damaged_bodies(draw: st.DrawFn) -> bytes:
    body = bytearray(
        multipart.form(
            draw(st.dictionaries(field_names, field_values, max_size=4)),
            draw(st.one_of(st.none(), st.binary(max_size=6000))),
        )
    )
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        kind = draw(st.sampled_from(["cut", "insert", "overwrite", "extra part"]))
        if kind == "cut":
            del body[at:]
        elif kind == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "overwrite":
            junk = draw(st.sampled_from([b"\r\n", b"--", multipart.BOUNDARY.encode(), b"\x00", b'"', b";"]))
            body[at : at + len(junk)] = junk
        else:
            body[at:at] = draw(
                st.sampled_from(
                    [
                        multipart.file_part(b"x" * 100, "extra"),
                        multipart.file_part(b"\xe9" * 10),
                        multipart.field_part("", "nameless"),
                        multipart.field_part("group", "y" * 5000),
                        b"epilogue" * 2000,
                    ]
                )
            )
    return bytes(body)


@PROPERTY
@given(body=damaged_bodies(), cuts=cut_lists)
def test_any_body_in_any_chunks_is_parsed_or_refused_and_leaves_no_spool(
    spool: Path, body: bytes, cuts: list[int]
) -> None:
    outcome = parse(split(body, cuts), spool)
    if isinstance(outcome, tuple):
        _fields, data = outcome
        assert data is None or len(data) <= 4096


# --- through the app ---------------------------------------------------------------------

query_names = st.sampled_from(["offset", "limit", "search_value", "draw", "order_dir", "other"])


@ROUTE_PROPERTY
@given(query=st.dictionaries(query_names, values, max_size=5))
def test_any_listing_query_is_answered_200_or_400(
    client: TestClient, lister: Owner, query: dict[str, str]
) -> None:
    response = client.get("/v1/ota/group", params=query, headers=lister.headers)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert any(response.json()["message"].startswith(name) for name in query)


@pytest.fixture
def lister(fleet: Fleet) -> Owner:
    return fleet.owner()


@ROUTE_PROPERTY
@given(body=damaged_bodies())
def test_any_post_body_is_answered_below_500_and_stores_nothing(
    client: TestClient, lister: Owner, body: bytes
) -> None:
    app_settings = client.app.state.services.settings  # type: ignore[attr-defined]
    response = client.post(
        "/v1/ota/group",
        content=body,
        headers={**lister.headers, "Content-Type": multipart.CONTENT_TYPE},
    )
    assert response.status_code < 500, response.text
    assert list(app_settings.tmp_dir.iterdir()) == []
    # None of these bodies names a group of this owner: nothing may be stored.
    objects = app_settings.data_dir / "objects"
    assert not objects.exists() or not [p for p in objects.rglob("*") if p.is_file()]
