"""The group page's deploy form: posted through the same code as POST
/v1/ota/group, its errors shown next to the field they concern."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from otaship.receiver.db.groups import get_owned_group
from otaship.receiver.http.console.group_page import DeployFormState, group_response
from otaship.receiver.http.console.guard import refused_csrf
from otaship.receiver.http.console.render import not_found, see_other, to_sign_in
from otaship.receiver.http.console.session import CSRF_FIELD, visitor_of
from otaship.receiver.http.management.deploy_form import ROLLOUT_FIELDS
from otaship.receiver.http.management.ota import receive_and_deploy
from otaship.receiver.intake.multipart import Upload
from otaship.receiver.services import Services

FORM_FIELDS = ("version", "commit", "canary", *ROLLOUT_FIELDS)
# Named in a message, most specific first: `canary_timeout` before `canary`.
_NAMED = (*ROLLOUT_FIELDS, "commit", "canary", "version")


def field_for(status: int, text: str) -> str | None:
    """Which of the form's fields an answer of POST /v1/ota/group is about; None
    for the form as a whole (the plan, a rollout in the way, a server error)."""
    lowered = text.lower()
    for name in _NAMED:
        if name in lowered:
            return name
    if status == 413 or "file" in lowered or "image" in lowered or "firmware" in lowered:
        return "firmware"
    if status == 400 and "group" not in lowered and "token" not in lowered:
        # The rest of the POST's 400s are the image's own checks (magic, chip, checksum).
        return "firmware"
    return None


class _CsrfRefused(Response):
    pass


async def deploy(request: Request) -> Response:
    visitor = await visitor_of(request)
    if visitor is None:
        return to_sign_in()
    group_id = str(request.path_params["group_id"])
    owner_id = visitor.user.id
    group = await Services.of(request).run_db(
        lambda session: get_owned_group(session=session, owner_id=owner_id, group_id=group_id)
    )
    if group is None:
        return not_found(request, visitor, "group")
    sent: dict[str, str] = {}

    def before(upload: Upload) -> Response | None:
        sent.update({name: upload.fields[name] for name in FORM_FIELDS if name in upload.fields})
        if not visitor.csrf_matches(upload.fields.get(CSRF_FIELD)):
            return _CsrfRefused(status_code=403)
        # The group is the page's; its token is the owner's to use, never in the page.
        upload.fields["group"] = group.id
        upload.fields["token"] = group.token
        if upload.fields.get("canary", "") == "":
            # A plain deploy: the rollout fields the form always sends mean nothing.
            for name in ROLLOUT_FIELDS:
                upload.fields.pop(name, None)
        return None

    answer = await receive_and_deploy(request, visitor.user, before)
    if isinstance(answer, _CsrfRefused):
        return refused_csrf(request, visitor)
    body = json.loads(bytes(answer.body)) if answer.body else {}
    if answer.status_code == 201:
        rollout = body.get("rollout")
        if isinstance(rollout, dict) and isinstance(rollout.get("id"), str):
            return see_other(f"/console/rollouts/{rollout['id']}")
        return see_other(f"/console/groups/{group.id}?deployed={body.get('deployed') is True}")
    text = str(body.get("message", "The deploy failed"))
    field = field_for(answer.status_code, text)
    state = DeployFormState(values=sent)
    if field is None:
        state.general = text
    else:
        state.errors[field] = text
    return await group_response(request, visitor, group.id, state, status=answer.status_code)
