"""GitHub: the webhook that turns a published release into a deploy, its
deliveries, and the bindings of repositories to groups (receiver/github/)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pydantic
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from otaship.receiver.client_urls import receiver_url
from otaship.receiver.db.models import GithubBinding, GithubDelivery
from otaship.receiver.fields import BadField, text
from otaship.receiver.github.bindings import (
    BindingError,
    BindRequest,
    create_binding,
    delete_binding,
    list_bindings,
    owned_binding,
    webhook_url,
)
from otaship.receiver.github.deliveries import Outcome, find_delivery, owned_deliveries
from otaship.receiver.github.release import NotARelease, ignored_because, release_of
from otaship.receiver.github.sealed import NO_KEY, SealError, unseal
from otaship.receiver.github.signature import signature_valid
from otaship.receiver.http import wire
from otaship.receiver.http.auth import owner_of
from otaship.receiver.http.management.json_body import first_error, read_limited
from otaship.receiver.http.management.owned import MAX_ID_LENGTH, path_id
from otaship.receiver.http.management.route import owner_route
from otaship.receiver.http.responses import answer, database_errors, message
from otaship.receiver.ids import is_id
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings

log = logging.getLogger("otaship.github")

# GitHub caps a payload at 25 MB; a bigger body is no delivery of its.
MAX_WEBHOOK_BYTES = 25 * 1024 * 1024
MAX_DELIVERY_ID_LENGTH = 64
MAX_EVENT_LENGTH = 64
WEBHOOK_ERROR = "Error when receiving the webhook delivery"
READ_ERROR = "Error when getting GitHub bindings"
CHANGE_ERROR = "Error when changing GitHub bindings"
DELIVERIES_ERROR = "Error when getting webhook deliveries"
NO_BINDING = "No such GitHub binding"
NO_SIGNATURE = "X-Hub-Signature-256 is missing: set the webhook's secret to the one `github bind` printed"
BAD_SIGNATURE = "X-Hub-Signature-256 does not match the body: check the webhook's secret"
TOO_LARGE = f"The delivery is over {MAX_WEBHOOK_BYTES} bytes, GitHub's limit"
NO_BINDING_PARAM = "binding is a mandatory parameter: use the webhook URL `github bind` printed"
PONG = "pong: the webhook reaches otaship"


# --- POST /v1/webhooks/github ----------------------------------------------------


async def _body_within(request: Request, limit: int) -> bytes | None:
    """The raw body, or None past `limit` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    return await read_limited(request, limit)


def _header(request: Request, name: str, max_length: int) -> str:
    value = text(request.headers.get(name), name=name, max_length=max_length)
    if not value:
        raise BadField(f"{name} is missing: is this a GitHub webhook delivery?")
    return value


def _decide(binding: GithubBinding, event: str, payload: Any) -> tuple[Outcome, str, str | None, str | None]:
    """(outcome, reason, tag, the release as JSON when queued) of a verified delivery."""
    action = payload.get("action") if isinstance(payload, dict) else None
    if event == "ping":
        return Outcome.IGNORED, PONG, None, None
    if event != "release":
        return Outcome.IGNORED, f"{event} events are not acted on: only release", None, None
    release = release_of(payload)
    why = ignored_because(
        action if isinstance(action, str) else None, release, allow_prereleases=binding.prereleases
    )
    if why is not None:
        return Outcome.IGNORED, why, release.tag, None
    return Outcome.QUEUED, f"release {release.tag} queued for deploy", release.tag, release.to_json()


async def receive_webhook(request: Request) -> Response:
    services = Services.of(request)
    raw_binding = request.query_params.get("binding", "")
    if not raw_binding:
        return message(400, NO_BINDING_PARAM)
    body = await _body_within(request, MAX_WEBHOOK_BYTES)
    if body is None:
        response = message(413, TOO_LARGE)
        response.headers["Connection"] = "close"
        return response
    binding = (
        await services.run_db(lambda session: session.get(GithubBinding, raw_binding))
        if is_id(raw_binding)
        else None
    )
    if binding is None:
        return message(404, NO_BINDING)
    try:
        secret = unseal(services.settings.secret_key, binding.secret_sealed)
    except SealError as exc:
        log.error("webhook delivery for binding %s not checked: %s", binding.id, exc)
        return message(503, str(exc) if services.settings.secret_key else NO_KEY)
    signature = request.headers.get("x-hub-signature-256")
    if not signature_valid(secret, body, signature):
        # Neither the body nor the signature is logged: only who it claims to be.
        log.warning(
            "refused a webhook delivery for binding %s (%s): %s",
            binding.id,
            binding.repo,
            "no signature" if signature is None else "bad signature",
            extra={"event": "github_delivery_refused", "binding": binding.id},
        )
        return message(401, NO_SIGNATURE if signature is None else BAD_SIGNATURE)
    try:
        delivery_id = _header(request, "X-GitHub-Delivery", MAX_DELIVERY_ID_LENGTH)
        event = _header(request, "X-GitHub-Event", MAX_EVENT_LENGTH)
        payload = json.loads(body)
        outcome, reason, tag, release = _decide(binding, event, payload)
    except BadField as exc:
        return message(400, str(exc))
    except ValueError as exc:
        # json's errors, and NotARelease.
        return message(400, str(exc) if isinstance(exc, NotARelease) else "The body is not JSON")
    action = payload.get("action") if isinstance(payload, dict) else None
    row = GithubDelivery(
        binding_id=binding.id,
        owner_id=binding.owner_id,
        delivery_id=delivery_id,
        event=event,
        action=action[:64] if isinstance(action, str) else None,
        tag=tag[:255] if tag else None,
        release=release,
        outcome=outcome,
        reason=None if outcome == Outcome.QUEUED else reason,
    )

    def record(session: Session) -> tuple[GithubDelivery, bool]:
        existing = find_delivery(session=session, binding_id=binding.id, delivery_id=delivery_id)
        if existing is not None:
            return existing, False
        session.add(row)
        session.flush()
        return row, True

    try:
        stored, new = await services.run_write(record)
    except IntegrityError:
        # The same delivery, recorded by another request a moment ago.
        found = await services.run_db(
            lambda session: find_delivery(session=session, binding_id=binding.id, delivery_id=delivery_id)
        )
        if found is None:
            raise
        stored, new = found, False
    if not new:
        return answer(
            wire.WebhookAnswer(
                message=f"delivery {delivery_id} was already received: nothing changed",
                delivery=delivery_id,
                outcome=stored.outcome,
            )
        )
    log.info(
        "github delivery %s (%s %s of %s): %s",
        delivery_id,
        event,
        action,
        binding.repo,
        reason,
        extra={
            "event": "github_delivery",
            "delivery": delivery_id,
            "binding": binding.id,
            "github_event": event,
            "outcome": str(outcome),
            "reason": reason,
        },
    )
    if outcome == Outcome.QUEUED:
        background = getattr(request.app.state, "background", None)
        jobs = getattr(background, "github_jobs", None)
        if jobs is not None:
            jobs.wake()
    status = 200 if event == "ping" else 202
    return answer(wire.WebhookAnswer(message=reason, delivery=delivery_id, outcome=outcome), status)


# --- deliveries -----------------------------------------------------------------


def delivery_view(row: GithubDelivery) -> wire.GithubDelivery:
    return wire.GithubDelivery(
        id=row.delivery_id,
        binding=row.binding_id,
        event=row.event,
        action=row.action,
        tag=row.tag,
        outcome=row.outcome,
        reason=row.reason,
        version=row.version,
        commit=row.commit,
        rollout=row.rollout_id,
        attempts=row.attempts,
        received_at=row.received_at,
        finished_at=row.finished_at,
    )


async def list_deliveries(request: Request) -> Response:
    owner_id = owner_of(request).id
    try:
        binding_id = (
            text(request.query_params.get("binding"), name="binding", max_length=MAX_ID_LENGTH) or None
        )
    except BadField as exc:
        return message(400, str(exc))

    def read(session: Session) -> wire.GithubDeliveryList | None:
        if binding_id is not None and not _owns_or_owned(session, owner_id, binding_id):
            return None
        rows = owned_deliveries(session=session, owner_id=owner_id, binding_id=binding_id)
        return wire.GithubDeliveryList(deliveries=[delivery_view(r) for r in rows])

    body = await Services.of(request).run_db(read)
    return message(404, NO_BINDING) if body is None else answer(body)


def _owns_or_owned(session: Session, owner_id: str, binding_id: str) -> bool:
    """The owner's binding, or a removed one whose deliveries were the owner's."""
    if owned_binding(session=session, owner_id=owner_id, binding_id=binding_id) is not None:
        return True
    return is_id(binding_id) and bool(
        owned_deliveries(session=session, owner_id=owner_id, binding_id=binding_id)
    )


# --- bindings -------------------------------------------------------------------


def binding_view(settings: Settings, binding: GithubBinding) -> wire.GithubBinding:
    return wire.GithubBinding(
        id=binding.id,
        repo=binding.repo,
        group=binding.group_id,
        canary=binding.canary_group_id,
        waves=binding.waves,
        asset=binding.asset_pattern,
        prereleases=binding.prereleases,
        report_deployments=binding.report_deployments,
        token=binding.token_sealed is not None,
        webhook_url=webhook_url(receiver_url(settings), binding.id),
        created_at=binding.created_at,
    )


async def create_binding_route(request: Request) -> Response:
    owner_id = owner_of(request).id
    services = Services.of(request)
    settings = services.settings
    try:
        given = wire.GithubBind.model_validate_json(await request.body())
    except pydantic.ValidationError as exc:
        return message(400, first_error(exc, whole="body"))
    if settings.secret_key is None:
        return message(503, NO_KEY)
    bind = BindRequest(
        repo=given.repo,
        group_id=given.group,
        canary_id=given.canary,
        waves=given.waves,
        asset=given.asset,
        prereleases=given.prereleases,
        report_deployments=given.report_deployments,
        token=given.token,
    )

    def create(session: Session) -> wire.GithubBound:
        binding, secret = create_binding(
            session=session, owner_id=owner_id, request=bind, secret_key=settings.secret_key
        )
        return wire.GithubBound(binding=binding_view(settings, binding), secret=secret)

    try:
        body = await services.run_write(create)
    except BindingError as exc:
        return message(404 if exc.not_found else 400, str(exc))
    log.info(
        "bound %s to group %s (binding %s)",
        bind.repo,
        bind.group_id,
        body.binding.id,
        extra={"event": "github_bound", "binding": body.binding.id, "repo": bind.repo},
    )
    return answer(body, 201)


async def list_bindings_route(request: Request) -> Response:
    owner_id = owner_of(request).id
    services = Services.of(request)
    rows = await services.run_db(lambda session: list_bindings(session=session, owner_id=owner_id))
    return answer(wire.GithubBindingList(bindings=[binding_view(services.settings, b) for b in rows]))


async def delete_binding_route(request: Request) -> Response:
    owner_id = owner_of(request).id
    try:
        binding_id = path_id(request, "binding_id")
    except BadField as exc:
        return message(400, str(exc))
    removed = await Services.of(request).run_write(
        lambda session: delete_binding(session=session, owner_id=owner_id, binding_id=binding_id)
    )
    if not removed:
        return message(404, NO_BINDING)
    log.info(
        "removed GitHub binding %s", binding_id, extra={"event": "github_unbound", "binding": binding_id}
    )
    return answer(wire.Message(message=f"binding {binding_id} removed: its deliveries are kept"))


# Signed by the binding's secret, not an API key: no owner_route, and no API key's rate limits.
webhook_routes = [
    Route("/v1/webhooks/github", database_errors(WEBHOOK_ERROR)(receive_webhook), methods=["POST"]),
]
routes = [
    owner_route("/v1/webhooks/github/deliveries", list_deliveries, "GET", failure=DELIVERIES_ERROR),
    owner_route("/v1/github/bindings", list_bindings_route, "GET", failure=READ_ERROR),
    owner_route("/v1/github/bindings", create_binding_route, "POST", failure=CHANGE_ERROR),
    owner_route("/v1/github/bindings/{binding_id}", delete_binding_route, "DELETE", failure=CHANGE_ERROR),
]
