"""The IoTaaP Group OTA API: list and deploy (spec/group-ota-api.md)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import semver
from sqlalchemy import func
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.api.responses import UNAUTHORIZED, message, server_error
from receiver.auth import authenticated_owner
from receiver.deploy import DeployResult, StoredFirmware, VersionConflict, current_ota, deploy_firmware
from receiver.groups import get_owned_group
from receiver.ids import is_id, iso_utc, secret_matches_plain
from receiver.metrics import Metrics
from receiver.models import GroupOta, Rollout, User
from receiver.path_search import owned_paths_containing
from receiver.rollout import CANARY, Policy, PolicyError, validate_policy
from receiver.rollouts import CanaryDeploy, RolloutConflict, RolloutError, deploy_with_canary
from receiver.services import Services
from receiver.storage import StorageError, object_key
from receiver.upload import MalformedUpload, Upload, UploadTooLarge, receive_upload

log = logging.getLogger("otaship.api")

LIST_ERROR = "Error when getting group OTA's."
UPLOAD_ERROR = "Error when uploading firmware file"
# The spec's answer to a deploy.
DEPLOYED = "Firmware successfully deployed"
FREE_PLAN = "Group OTA update is not available in free model. Please upgrade your account."
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_VERSION_LENGTH = 64
MANDATORY_FIELDS = ("group", "token", "version")


def ota_json(ota: GroupOta) -> dict[str, Any]:
    return {
        "_id": ota.id,
        "group": ota.group_id,
        "__v": ota.revision,
        "last_updated": iso_utc(ota.last_updated),
        "owner": ota.owner_id,
        "path": ota.path,
        "version": ota.version,
        "sha256": ota.sha256,
        "md5": ota.md5,
        "size": ota.size,
        "chip": ota.chip,
        "project_name": ota.project_name,
        "app_version": ota.app_version,
        "idf_ver": ota.idf_ver,
        "commit": ota.commit,
    }


# --- GET /v1/ota/group ---------------------------------------------------------


class BadQuery(ValueError):
    pass


@dataclass(frozen=True)
class ListQuery:
    search: str
    offset: int
    limit: int
    descending: bool
    draw: str


def _non_negative(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw.strip() == "":
        return default
    raw = raw.strip()
    if not raw.isdigit():
        raise BadQuery(f"{name} must be a non-negative whole number, not {raw!r}")
    return int(raw)


def parse_list_query(request: Request) -> ListQuery:
    offset = _non_negative(request, "offset", 0)
    limit = min(_non_negative(request, "limit", DEFAULT_LIMIT), MAX_LIMIT)
    order_dir = (request.query_params.get("order_dir") or "desc").strip().lower()
    if order_dir not in ("asc", "desc"):
        raise BadQuery(f"order_dir must be asc or desc, not {order_dir!r}")
    return ListQuery(
        search=request.query_params.get("search_value") or "",
        offset=offset,
        limit=limit,
        descending=order_dir == "desc",
        draw=request.query_params.get("draw") or "",
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


async def get_group_otas(request: Request) -> Response:
    owner = await authenticated_owner(request)
    if owner is None:
        return message(401, UNAUTHORIZED)
    try:
        query = parse_list_query(request)
    except BadQuery as exc:
        return message(400, str(exc))
    services = Services.of(request)
    try:
        rows, total, filtered = await services.run_db(
            lambda session: list_otas(
                session=session, owner_id=owner.id, query=query,
                known_total=services.listing_totals.get(owner.id),
            )
        )
    except SQLAlchemyError as exc:
        return server_error(LIST_ERROR, exc)
    services.listing_totals.put(owner.id, total)
    return JSONResponse(
        {
            "otas": [ota_json(ota) for ota in rows],
            "recordsTotal": total,
            "recordsFiltered": filtered,
            "draw": query.draw,
        }
    )


# --- POST /v1/ota/group --------------------------------------------------------


def valid_version(version: str) -> bool:
    return len(version) <= MAX_VERSION_LENGTH and semver.Version.is_valid(version)


def _field_error(upload: Upload) -> str | None:
    for name in MANDATORY_FIELDS:
        if not upload.fields.get(name, "").strip():
            return f"{name} is a mandatory field"
    if not is_id(upload.fields["group"].strip()):
        return "Group ID is not valid"
    if upload.file_path is None:
        return "No file uploaded"
    return None


ROLLOUT_FIELDS = ("canary_timeout", "success_threshold", "error_threshold", "soak", "auto_promote")
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def _whole(fields: dict[str, str], name: str, default: int, *, positive: bool) -> int:
    raw = fields.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or (positive and int(raw) == 0):
        kind = "a positive" if positive else "a non-negative"
        raise PolicyError(f"{name} must be {kind} whole number, not {raw[:32]!r}")
    return int(raw)


def parse_policy(fields: dict[str, str]) -> Policy:
    """The rollout fields of a POST; they only mean something with `canary`."""
    raw_threshold = fields.get("success_threshold", "").strip()
    try:
        threshold = float(raw_threshold) if raw_threshold else 1.0
    except ValueError:
        raise PolicyError(f"success_threshold must be a number in (0, 1], not {raw_threshold[:32]!r}") from None
    if not (0 < threshold <= 1):
        raise PolicyError(f"success_threshold must be a number in (0, 1], not {raw_threshold[:32]!r}")
    raw_auto = fields.get("auto_promote", "").strip().lower()
    if raw_auto and raw_auto not in TRUE_WORDS + FALSE_WORDS:
        raise PolicyError(f"auto_promote must be true or false, not {raw_auto[:32]!r}")
    return validate_policy(
        Policy(
            success_threshold=threshold,
            error_threshold=_whole(fields, "error_threshold", 0, positive=False),
            canary_timeout=_whole(fields, "canary_timeout", 1800, positive=True),
            soak=_whole(fields, "soak", 0, positive=False),
            auto_promote=raw_auto not in FALSE_WORDS,
        )
    )


async def post_group_ota(request: Request) -> Response:
    owner = await authenticated_owner(request)
    if owner is None:
        return message(401, UNAUTHORIZED)
    services = Services.of(request)
    settings = services.settings
    try:
        upload = await receive_upload(
            request, spool_dir=settings.tmp_dir, max_file_bytes=settings.max_firmware_bytes,
            flush_to_disk=services.storage.keeps_source_blocks,
        )
    except ClientDisconnect:
        # The client went away mid-upload: nothing was stored, nobody to answer.
        log.info("a firmware upload was abandoned by its client")
        return message(400, "The upload was interrupted")
    except UploadTooLarge as exc:
        return message(
            413,
            f"Firmware is larger than the limit of {exc.limit} bytes "
            f"({exc.limit / (1024 * 1024):.1f} MiB)",
        )
    except MalformedUpload as exc:
        return message(400, str(exc))
    except OSError as exc:
        return server_error(UPLOAD_ERROR, exc)
    Metrics.of(request).upload_bytes.inc(upload.file_size)
    try:
        return await _deploy_upload(request, services, owner, upload)
    finally:
        upload.discard()


async def _deploy_upload(request: Request, services: Services, owner: User, upload: Upload) -> Response:
    from receiver.firmware import InvalidFirmware, inspect_firmware

    problem = _field_error(upload)
    if problem is not None:
        return message(400, problem)
    group_id = upload.fields["group"].strip()
    token = upload.fields["token"].strip()
    version = upload.fields["version"].strip()
    commit = upload.fields.get("commit", "").strip()[:64] or None

    if owner.plan == "free":
        return message(403, FREE_PLAN)

    try:
        group = await services.run_db(
            lambda session: get_owned_group(session=session, owner_id=owner.id, group_id=group_id)
        )
    except SQLAlchemyError as exc:
        return server_error(UPLOAD_ERROR, exc)
    if group is None:
        return message(404, "No such group")
    if not secret_matches_plain(token, group.token):
        return message(400, "Group token is not valid")
    if not valid_version(version):
        return message(
            400,
            f"Version {version[:MAX_VERSION_LENGTH]!r} is not valid: use semantic versioning, e.g. 1.5.7",
        )

    canary_id = upload.fields.get("canary", "").strip() or None
    policy: Policy | None = None
    if canary_id is None:
        stray = [name for name in ROLLOUT_FIELDS if upload.fields.get(name, "").strip()]
        if stray:
            return message(400, f"{stray[0]} only applies to a rollout: add a canary subgroup")
    else:
        if not is_id(canary_id):
            return message(400, "Canary ID is not valid")
        try:
            policy = parse_policy(upload.fields)
        except PolicyError as exc:
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

    firmware = StoredFirmware(
        object_key=object_key(image.sha256),
        sha256=image.sha256,
        md5=image.md5,
        size=image.size,
        chip=image.chip,
        project_name=image.app.project_name if image.app else None,
        app_version=image.app.version if image.app else None,
        idf_ver=image.app.idf_ver if image.app else None,
    )
    try:
        current = await services.run_db(lambda session: current_ota(session=session, group_id=group.id))
        if current is None or current.version != version:
            # Objects are immutable and content-addressed: writing one before the
            # record means a record never points at an incomplete object, and a
            # failed commit leaves only an unreferenced object behind.
            await services.run_blocking(lambda: _store(services, firmware.object_key, file_path))
        if canary_id is None:
            result: DeployResult = await services.run_write(
                lambda session: deploy_firmware(
                    session=session, group_id=group.id, version=version, firmware=firmware,
                    commit=commit, notify=services.notify,
                )
            )
            body: dict[str, Any] = {"deployed": result.deployed, "ota": ota_json(result.ota)}
            deployed = result.deployed
        else:
            assert policy is not None
            rollout_policy = policy
            staged = await services.run_write(
                lambda session: _canary_body(
                    deploy_with_canary(
                        session=session, group_id=group.id, canary_id=canary_id, version=version,
                        firmware=firmware, policy=rollout_policy, commit=commit, notify=services.notify,
                    )
                )
            )
            deployed, body = staged
    except VersionConflict as exc:
        return _conflict(exc, version)
    except RolloutConflict as exc:
        return message(409, str(exc), version=version)
    except RolloutError as exc:
        return message(400, str(exc))
    except (StorageError, SQLAlchemyError, OSError) as exc:
        return server_error(UPLOAD_ERROR, exc)

    if deployed:
        services.deployed()
        Metrics.of(request).deploys.labels("plain" if canary_id is None else "canary").inc()
    text = body.pop("message", DEPLOYED)
    return JSONResponse({"message": text, **body}, status_code=201)


def canary_message(rollout: Rollout) -> str:
    """Where a rollout's image went: to the canary subgroup only, not the group."""
    then = (
        "once the canary is healthy" if rollout.auto_promote
        else f"when rollout {rollout.id} is promoted"
    )
    return (
        f"{DEPLOYED} to canary subgroup {rollout.canary_group_id} of group {rollout.group_id}; "
        f"the whole group gets it {then}"
    )


def _canary_body(staged: CanaryDeploy) -> tuple[bool, dict[str, Any]]:
    body: dict[str, Any] = {"deployed": staged.deployed}
    if staged.rollout is not None and staged.rollout.state == CANARY:
        body["message"] = canary_message(staged.rollout)
    if staged.ota is not None:
        body["ota"] = ota_json(staged.ota)
    if staged.rollout is not None:
        body["rollout"] = {"id": staged.rollout.id, "state": staged.rollout.state}
    return staged.deployed, body


def _store(services: Services, key: str, source: Any) -> None:
    if not services.storage.exists(key):
        services.storage.put(key, source)


def _conflict(current: VersionConflict, version: str) -> Response:
    return message(
        409,
        f"Version {version} is already deployed to this group with different firmware. "
        "Devices compare version strings and would never fetch it: bump the version.",
        version=current.version,
        sha256=current.sha256,
        commit=current.commit,
    )


routes = [
    Route("/v1/ota/group", get_group_otas, methods=["GET"]),
    Route("/v1/ota/group", post_group_ota, methods=["POST"]),
]
