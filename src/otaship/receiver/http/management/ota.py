"""The IoTaaP Group OTA API: list and deploy (docs/api.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func
from sqlmodel import Session, col, select
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from otaship.receiver.db.enums import State
from otaship.receiver.db.groups import get_owned_group
from otaship.receiver.db.models import Group, GroupOta, Rollout, User
from otaship.receiver.db.path_search import owned_paths_containing
from otaship.receiver.db.signing_keys import NotSignedForGroup
from otaship.receiver.fields import BadField, choice, text, whole_number
from otaship.receiver.http import wire
from otaship.receiver.http.auth import owner_of
from otaship.receiver.http.management.deploy_form import (
    NoFile,
    check_version,
    parse_options,
    parse_target,
)
from otaship.receiver.http.management.route import owner_route
from otaship.receiver.http.responses import answer, message, server_error
from otaship.receiver.http.views import ota_view
from otaship.receiver.http.wire import DEPLOYED
from otaship.receiver.ids import secret_matches_plain, utcnow
from otaship.receiver.intake.in_flight import Hold, ObjectNotStored
from otaship.receiver.intake.multipart import (
    MalformedUpload,
    Upload,
    UploadTimedOut,
    UploadTooLarge,
    receive_upload,
)
from otaship.receiver.metrics import Metrics
from otaship.receiver.rollouts.admission import (
    SecureVersionRefused,
    admission,
    check_secure_version,
    secure_version_refusal,
)
from otaship.receiver.rollouts.deploy import (
    DeployResult,
    StoredFirmware,
    VersionConflict,
    current_ota,
    deploy_firmware,
)
from otaship.receiver.rollouts.policy import Policy, PolicyError
from otaship.receiver.rollouts.store import (
    CanaryDeploy,
    RolloutConflict,
    RolloutError,
    deploy_with_canary,
    validate_waves,
)
from otaship.receiver.services import Services
from otaship.receiver.storage import StorageError, object_key

if TYPE_CHECKING:
    from otaship.firmware.image import FirmwareImage

log = logging.getLogger("otaship.api")

LIST_ERROR = "Error when getting group OTA's."
UPLOAD_ERROR = "Error when uploading firmware file"
FREE_PLAN = "Group OTA update is not available in free model. Please upgrade your account."
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
# Far past any owner's number of groups, and within a 32-bit integer.
MAX_OFFSET = 1_000_000_000
# A path is 62 characters: a longer search cannot match.
MAX_SEARCH_LENGTH = 256
MAX_DRAW_LENGTH = 64
# Stalled uploads free their slots within the idle timeout; a retry after this
# many seconds usually finds one.
UPLOADS_RETRY_AFTER = 5


# --- GET /v1/ota/group ---------------------------------------------------------


@dataclass(frozen=True)
class ListQuery:
    search: str
    offset: int
    limit: int
    descending: bool
    draw: str


def parse_list_query(request: Request) -> ListQuery:
    """The listing's query parameters; BadField names the first bad one."""
    query = request.query_params
    offset = whole_number(query.get("offset"), name="offset", default=0, minimum=0, maximum=MAX_OFFSET)
    # The spec clamps a larger limit rather than refusing it.
    limit = whole_number(
        query.get("limit"), name="limit", default=DEFAULT_LIMIT, minimum=0, maximum=MAX_LIMIT, clamp=True
    )
    order_dir = choice(query.get("order_dir"), name="order_dir", choices=("asc", "desc"), default="desc")
    return ListQuery(
        search=text(query.get("search_value"), name="search_value", max_length=MAX_SEARCH_LENGTH),
        offset=offset,
        limit=limit,
        descending=order_dir == "desc",
        draw=text(query.get("draw"), name="draw", max_length=MAX_DRAW_LENGTH),
    )


def list_otas(
    *, session: Session, owner_id: str, query: ListQuery, known_total: int | None = None
) -> tuple[list[GroupOta], int, int]:
    owned = col(GroupOta.owner_id) == owner_id
    total = (
        known_total
        if known_total is not None
        else session.exec(select(func.count()).select_from(GroupOta).where(owned)).one()
    )
    filters = (
        owned_paths_containing(session, owner_id=owner_id, search=query.search, owner_rows=total)
        if query.search
        else [owned]
    )
    filtered = (
        total
        if not query.search
        else session.exec(select(func.count()).select_from(GroupOta).where(*filters)).one()
    )
    order = col(GroupOta.last_updated).desc() if query.descending else col(GroupOta.last_updated).asc()
    tiebreak = col(GroupOta.id).desc() if query.descending else col(GroupOta.id).asc()
    rows = session.exec(
        select(GroupOta).where(*filters).order_by(order, tiebreak).offset(query.offset).limit(query.limit)
    ).all()
    return list(rows), total, filtered


def group_names(session: Session, group_ids: list[str]) -> dict[str, str]:
    """Each group's name, for the records shown: one query for the page, not one per row."""
    if not group_ids:
        return {}
    rows = session.exec(select(Group.id, Group.name).where(col(Group.id).in_(group_ids))).all()
    return dict(rows)


def _listed(
    session: Session, *, owner_id: str, query: ListQuery, known_total: int | None
) -> tuple[list[GroupOta], dict[str, str], int, int]:
    rows, total, filtered = list_otas(
        session=session, owner_id=owner_id, query=query, known_total=known_total
    )
    return rows, group_names(session, [ota.group_id for ota in rows]), total, filtered


async def get_group_otas(request: Request) -> Response:
    owner_id = owner_of(request).id
    try:
        query = parse_list_query(request)
    except BadField as exc:
        return message(400, str(exc))
    services = Services.of(request)
    rows, names, total, filtered = await services.run_db(
        lambda session: _listed(
            session,
            owner_id=owner_id,
            query=query,
            known_total=services.listing_totals.get(owner_id),
        )
    )
    services.listing_totals.put(owner_id, total)
    return answer(
        wire.OtaList(
            otas=[ota_view(ota, names.get(ota.group_id, "")) for ota in rows],
            recordsTotal=total,
            recordsFiltered=filtered,
            draw=query.draw,
        )
    )


# --- POST /v1/ota/group --------------------------------------------------------


# Looks at an upload once it is read and before any of it is checked: an
# answer refuses it, None goes on. The console checks its CSRF token here.
BeforeDeploy = Callable[[Upload], Response | None]


async def post_group_ota(request: Request) -> Response:
    return await receive_and_deploy(request, owner_of(request))


async def receive_and_deploy(request: Request, owner: User, before: BeforeDeploy | None = None) -> Response:
    """POST /v1/ota/group's work for `owner`: the API's, and the console's deploy form's."""
    services = Services.of(request)
    with services.upload_slots.hold(owner.id) as held:
        if not held:
            return _body_refused(
                429,
                f"Too many uploads in flight for this account (at most {services.upload_slots.per_owner} "
                "at a time): try again shortly",
                headers={"Retry-After": str(UPLOADS_RETRY_AFTER)},
            )
        return await _receive_and_deploy(request, services, owner, before)


def _body_refused(status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    """An answer before the body was read to its end: the connection cannot carry another request."""
    response = message(status, reason)
    response.headers.update({"Connection": "close", **(headers or {})})
    return response


async def _receive_and_deploy(
    request: Request, services: Services, owner: User, before: BeforeDeploy | None
) -> Response:
    settings = services.settings
    try:
        upload = await receive_upload(
            request,
            spool_dir=settings.tmp_dir,
            max_file_bytes=settings.max_firmware_bytes,
            flush_to_disk=services.storage.keeps_source_blocks,
            idle_timeout=settings.upload_idle_timeout,
            total_timeout=settings.upload_timeout,
        )
    except ClientDisconnect:
        # The client went away mid-upload: nothing was stored, nobody to answer.
        log.info("a firmware upload was abandoned by its client")
        return message(400, "The upload was interrupted")
    except UploadTooLarge as exc:
        return _body_refused(413, str(exc))
    except UploadTimedOut as exc:
        log.info("a firmware upload timed out: %s", exc)
        return _body_refused(408, str(exc))
    except MalformedUpload as exc:
        return _body_refused(400, str(exc))
    except OSError as exc:
        return server_error(UPLOAD_ERROR, exc)
    metrics = Metrics.of(request)
    metrics.upload_bytes.inc(upload.file_size)
    try:
        refused = before(upload) if before is not None else None
        if refused is not None:
            return refused
        return await deploy_upload(services, owner, upload, metrics)
    finally:
        upload.discard()


async def deploy_upload(services: Services, owner: User, upload: Upload, metrics: Metrics | None) -> Response:
    """An upload's deploy, from its fields to its record: the one intake of a POST
    and of a GitHub release (github/jobs.py), with the same checks and answers."""
    from otaship.firmware.image import InvalidFirmware, inspect_firmware

    try:
        target = parse_target(upload.fields, has_file=upload.file_path is not None)
    except NoFile as exc:
        return message(400, str(exc), hint=exc.hint)
    except BadField as exc:
        return message(400, str(exc))
    group_id, token, version = target.group_id, target.token, target.version

    if owner.plan == "free":
        return message(403, FREE_PLAN)

    group = await services.run_db(
        lambda session: get_owned_group(session=session, owner_id=owner.id, group_id=group_id)
    )
    if group is None:
        return message(404, "No such group")
    if not secret_matches_plain(token, group.token):
        return message(400, "Group token is not valid")
    try:
        check_version(version)
        options = parse_options(upload.fields)
    except (BadField, PolicyError) as exc:
        return message(400, str(exc))
    commit, canary_id, policy = options.commit, options.canary_id, options.policy
    if canary_id is not None:
        # Checked again when the rollout starts; here so that a bad wave
        # stores nothing.
        wave_ids = [canary_id, *(wave_id for wave_id, _ in options.waves)]
        try:
            await services.run_db(
                lambda session: validate_waves(session=session, group=group, wave_ids=wave_ids)
            )
        except RolloutError as exc:
            return message(400, str(exc))

    assert upload.file_path is not None
    file_path = upload.file_path
    facts = upload.facts
    try:
        image = await services.run_blocking(
            lambda: inspect_firmware(file_path, expected_chip=group.chip, facts=facts)
        )
    except InvalidFirmware as exc:
        return message(400, str(exc))
    refusal, signers = await _admit(services, group, file_path, image)
    if refusal is not None:
        return message(400, refusal)

    firmware = StoredFirmware(
        object_key=object_key(image.sha256),
        sha256=image.sha256,
        md5=image.md5,
        size=image.size,
        chip=image.chip,
        project_name=image.app.project_name if image.app else None,
        app_version=image.app.version if image.app else None,
        idf_ver=image.app.idf_ver if image.app else None,
        secure_version=image.app.secure_version if image.app else None,
        signers=tuple(signers),
    )

    def store(hold: Hold) -> None:
        hold.storing()
        _store(services, firmware.object_key, file_path)

    def plain(session: Session) -> DeployResult:
        # Anti-rollback again, in the deploy's transaction: a deploy or a change
        # of the setting since `_admit` read them counts.
        check_secure_version(session=session, group_id=group.id, secure_version=firmware.secure_version)
        return deploy_firmware(
            session=session,
            group_id=group.id,
            version=version,
            firmware=firmware,
            commit=commit,
            notify=services.notify,
            now=utcnow(),
        )

    def staged(session: Session, canary_id: str, policy: Policy) -> CanaryDeploy:
        check_secure_version(session=session, group_id=group.id, secure_version=firmware.secure_version)
        return deploy_with_canary(
            session=session,
            group_id=group.id,
            canary_id=canary_id,
            version=version,
            firmware=firmware,
            policy=policy,
            commit=commit,
            notify=services.notify,
            now=utcnow(),
            waves=options.waves,
            rollback=options.rollback,
        )

    async def write_record(hold: Hold) -> tuple[bool, wire.Deployed]:
        # `hold.checked` runs inside the transaction, before it commits.
        if canary_id is None:
            result: DeployResult = await services.run_write(lambda session: hold.checked(plain(session)))
            deployed = wire.Deployed(
                message=DEPLOYED, deployed=result.deployed, ota=ota_view(result.ota, group.name)
            )
            return result.deployed, deployed
        assert policy is not None
        canary, rollout_policy = canary_id, policy
        return await services.run_write(
            lambda session: _canary_body(
                session, hold.checked(staged(session, canary, rollout_policy)), 1 + len(options.waves)
            )
        )

    try:
        with services.objects_in_flight.hold(
            firmware.object_key, commit_within=services.settings.gc_grace / 2
        ) as hold:
            current = await services.run_db(lambda session: current_ota(session=session, group_id=group.id))
            if current is None or current.version != version:
                # Objects are immutable and content-addressed: writing one before the
                # record means a record never points at an incomplete object, and a
                # failed commit leaves only an unreferenced object behind.
                await services.run_blocking(lambda: store(hold))
            try:
                deployed, body = await write_record(hold)
            except ObjectNotStored:
                # Another deploy moved the group off this version since `current`
                # was read: this one deploys after all, and needs its object.
                await services.run_blocking(lambda: store(hold))
                deployed, body = await write_record(hold)
    except VersionConflict as exc:
        return _conflict(exc, version)
    except RolloutConflict as exc:
        return answer(wire.Conflict(message=str(exc), version=version), 409)
    except (RolloutError, NotSignedForGroup, SecureVersionRefused) as exc:
        return message(400, str(exc))
    except (StorageError, OSError) as exc:
        return server_error(UPLOAD_ERROR, exc)

    if deployed:
        services.deployed()
        if metrics is not None:
            metrics.deploys.labels("plain" if canary_id is None else "canary").inc()
    return answer(body, 201)


async def _admit(
    services: Services, group: Group, file_path: Path, image: FirmwareImage
) -> tuple[str | None, list[str]]:
    """Why the group refuses the image (None if it takes it), and the digests
    of its keys that signed it: the signature and anti-rollback checks."""
    from otaship.firmware.signatures import SignatureRefused, verify_signature

    rules = await services.run_db(lambda session: admission(session=session, group=group))
    signers: list[str] = []
    if rules.keys:
        try:
            signed = await services.run_blocking(lambda: verify_signature(file_path, image, rules.keys))
        except SignatureRefused as exc:
            return str(exc), []
        signers = list(signed.key_digests)
    if rules.anti_rollback_by is not None:
        refusal = secure_version_refusal(
            new=image.app.secure_version if image.app else None,
            running=rules.running_secure_version,
            set_by=rules.anti_rollback_by,
        )
        if refusal is not None:
            return refusal, []
    return None, signers


def canary_message(rollout: Rollout, waves: int = 1) -> str:
    """Where a rollout's image went: to the canary subgroup only, not the group."""
    healthy = "once the canary is healthy" if waves == 1 else f"once its {waves} waves are healthy, in order"
    then = healthy if rollout.auto_promote else f"when rollout {rollout.id} is promoted"
    return (
        f"{DEPLOYED} to canary subgroup {rollout.canary_group_id} of group {rollout.group_id}; "
        f"the whole group gets it {then}"
    )


def _canary_body(session: Session, staged: CanaryDeploy, waves: int = 1) -> tuple[bool, wire.Deployed]:
    rollout = staged.rollout
    names = group_names(
        session,
        [*([staged.ota.group_id] if staged.ota else []), *([rollout.group_id] if rollout else [])],
    )
    return staged.deployed, wire.Deployed(
        message=canary_message(rollout, waves)
        if rollout is not None and rollout.state == State.CANARY
        else DEPLOYED,
        deployed=staged.deployed,
        **wire.given(
            ota=ota_view(staged.ota, names.get(staged.ota.group_id, "")) if staged.ota is not None else None,
            rollout=wire.DeployedRollout(
                id=rollout.id,
                state=rollout.state,
                group=rollout.group_id,
                group_name=names.get(rollout.group_id, ""),
            )
            if rollout is not None
            else None,
        ),
    )


def _store(services: Services, key: str, source: Any) -> None:
    # An object already there may be an old orphan that a sweep is about to
    # remove: refreshed, it counts as stored just now.
    if not services.storage.refresh(key):
        services.storage.put(key, source)


def _conflict(current: VersionConflict, version: str) -> Response:
    return answer(
        wire.Conflict(
            message=f"Version {version} is already deployed to this group with different firmware. "
            "Devices compare version strings and would never fetch it: bump the version.",
            version=current.version,
            sha256=current.sha256,
            commit=current.commit,
        ),
        409,
    )


routes = [
    owner_route("/v1/ota/group", get_group_otas, "GET", failure=LIST_ERROR),
    # The key is looked up before the body is read.
    owner_route("/v1/ota/group", post_group_ota, "POST", failure=UPLOAD_ERROR, unread_body=True),
]
