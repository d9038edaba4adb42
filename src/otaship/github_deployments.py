"""The GitHub Deployment otaship creates for a deploy, shared by the action's
`github-deployment` and the receiver's reports of release deploys, so that both
land in the same environment with the same payload.

Creating a deployment is not idempotent: a request GitHub received but did not
answer in time, or answered 5xx after it had acted, may have created one, and a
blind retry would create a second. Each creation therefore carries a key of its
own in its payload, and a retry first lists the deployments of the same ref and
environment and takes the one with that key (`created_with`). This module
imports only the standard library, as the action needs.
"""

from __future__ import annotations

from typing import Any

# The payload field that names one creation; GitHub keeps payloads as given.
KEY_FIELD = "otaship_key"
# GitHub lists at most 100 a page, newest first; a retry looks seconds after its
# creation, so the first page holds it.
LOOKUP_PAGE = 100


def environment_for(group_name: str) -> str:
    """`firmware/<group name>`: one environment per group, whoever deploys to it."""
    return f"firmware/{group_name}"


def deployment_request(
    *, ref: str, environment: str, version: str, rollout_id: str | None, key: str
) -> dict[str, Any]:
    """The body of `POST /repos/{repo}/deployments` for one deploy."""
    return {
        "ref": ref,
        "environment": environment,
        "description": f"otaship {version}",
        "payload": {"version": version, "rollout_id": rollout_id, KEY_FIELD: key},
        # Already built and released: no status checks to wait for, and no merge
        # of the default branch into the commit.
        "auto_merge": False,
        "required_contexts": [],
        "production_environment": True,
    }


def lookup_query(request: dict[str, Any]) -> dict[str, str]:
    """The query of `GET /repos/{repo}/deployments` that lists what `request` may have created."""
    return {
        "ref": str(request["ref"]),
        "environment": str(request["environment"]),
        "per_page": str(LOOKUP_PAGE),
    }


def created_with(listed: object, key: str) -> int | None:
    """The id of the deployment in a `GET .../deployments` answer whose payload
    carries `key` (pure); None when there is none, or the answer is not a list."""
    if not isinstance(listed, list):
        return None
    for deployment in listed:
        if not isinstance(deployment, dict):
            continue
        payload = deployment.get("payload")
        found = deployment.get("id")
        if (
            isinstance(payload, dict)
            and payload.get(KEY_FIELD) == key
            and isinstance(found, int)
            and not isinstance(found, bool)
        ):
            return found
    return None
