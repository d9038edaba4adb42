"""Bindings of a repository's releases to a group: created with a new webhook
secret (shown once), listed, removed. The CLI and the management API share them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlmodel import Session, col, select

from otaship.receiver.db.groups import get_owned_group
from otaship.receiver.db.models import GithubBinding
from otaship.receiver.github.sealed import new_webhook_secret, seal
from otaship.receiver.ids import is_id

# GitHub's owner and repository names: letters, digits, `-`, `.` and `_`.
REPO = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}")
DEFAULT_ASSET = "*.bin"
MAX_PATTERN_LENGTH = 200
MAX_WAVES_LENGTH = 200
MAX_TOKEN_LENGTH = 500
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
WEBHOOK_PATH = "/v1/webhooks/github"


class BindingError(ValueError):
    """A binding was refused; the message says why. `not_found` for a group not the owner's."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass(frozen=True)
class BindRequest:
    repo: str
    group_id: str
    canary_id: str | None = None
    waves: str | None = None
    asset: str = DEFAULT_ASSET
    prereleases: bool = False
    report_deployments: bool = False
    token: str | None = None


def webhook_url(receiver_url: str, binding_id: str) -> str:
    """The URL to paste into the repository's webhook settings: the binding is in
    it, so that its secret is known before the body is read."""
    return f"{receiver_url.rstrip('/')}{WEBHOOK_PATH}?binding={binding_id}"


def _check(request: BindRequest) -> None:
    if not REPO.fullmatch(request.repo):
        raise BindingError(f"repo must be OWNER/NAME as on GitHub, not {request.repo[:120]!r}")
    if request.canary_id is not None and request.waves is not None:
        raise BindingError("give canary or waves, not both")
    pattern = request.asset
    if not pattern or len(pattern) > MAX_PATTERN_LENGTH or _CONTROL.search(pattern) or "/" in pattern:
        raise BindingError(
            f"asset must be a file name pattern such as 'firmware*.bin' (at most {MAX_PATTERN_LENGTH} characters)"
        )
    waves = request.waves
    if waves is not None and (not waves or len(waves) > MAX_WAVES_LENGTH or _CONTROL.search(waves)):
        raise BindingError(f"waves must be the POST's waves field, at most {MAX_WAVES_LENGTH} characters")
    token = request.token
    if request.report_deployments and not token:
        raise BindingError("report_deployments needs a token that may write the repository's deployments")
    if token is not None and (not token or len(token) > MAX_TOKEN_LENGTH or _CONTROL.search(token)):
        raise BindingError(f"token must be a GitHub token (at most {MAX_TOKEN_LENGTH} characters)")


def create_binding(
    *, session: Session, owner_id: str, request: BindRequest, secret_key: str | None
) -> tuple[GithubBinding, str]:
    """The binding and its webhook secret, which is shown this once."""
    _check(request)
    if get_owned_group(session=session, owner_id=owner_id, group_id=request.group_id) is None:
        raise BindingError("No such group", not_found=True)
    if request.canary_id is not None:
        canary = get_owned_group(session=session, owner_id=owner_id, group_id=request.canary_id)
        if canary is None or canary.parent_id != request.group_id:
            raise BindingError("canary must be a subgroup of the group")
    secret = new_webhook_secret()
    binding = GithubBinding(
        owner_id=owner_id,
        repo=request.repo,
        group_id=request.group_id,
        canary_group_id=request.canary_id,
        waves=request.waves,
        asset_pattern=request.asset,
        prereleases=request.prereleases,
        report_deployments=request.report_deployments,
        secret_sealed=seal(secret_key, secret),
        token_sealed=seal(secret_key, request.token) if request.token else None,
    )
    session.add(binding)
    session.flush()
    return binding, secret


def list_bindings(*, session: Session, owner_id: str | None) -> list[GithubBinding]:
    query = select(GithubBinding).order_by(col(GithubBinding.created_at), col(GithubBinding.id))
    if owner_id is not None:
        query = query.where(col(GithubBinding.owner_id) == owner_id)
    return list(session.exec(query))


def owned_binding(*, session: Session, owner_id: str, binding_id: str) -> GithubBinding | None:
    if not is_id(binding_id):
        return None
    binding = session.get(GithubBinding, binding_id)
    return binding if binding is not None and binding.owner_id == owner_id else None


def delete_binding(*, session: Session, owner_id: str, binding_id: str) -> bool:
    """Its deliveries stay, as history; later deliveries to its URL find no binding."""
    binding = owned_binding(session=session, owner_id=owner_id, binding_id=binding_id)
    if binding is None:
        return False
    session.delete(binding)
    return True
