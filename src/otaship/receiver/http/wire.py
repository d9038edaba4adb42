"""The JSON bodies the receiver answers with, as pydantic models: one schema for
the answers and for /openapi.json's `components.schemas`.

A body is `model.wire()`: keys in field order, by alias (`_id`, `__v`), and
only the fields that were given. A field given as None is a JSON null; a field
not given is absent. So the keys that are sometimes absent (a rollout's
`devices`, a conflict's `sha256`) default to None and are given only when they
are there (`given` helps); every other field has no default, so that none is
left out by mistake.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, PlainSerializer, StrictBool
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, SkipJsonSchema, models_json_schema
from pydantic_core import core_schema

from otaship.firmware.signing_keys import MAX_PEM_BYTES, Scheme
from otaship.receiver.db.enums import Outcome, Stage, State
from otaship.receiver.ids import iso_utc

ID_PATTERN = "^[0-9a-f]{24}$"
SHA256_PATTERN = "^[0-9a-f]{64}$"
MD5_PATTERN = "^[0-9a-f]{32}$"
# The spec's answer to a deploy.
DEPLOYED = "Firmware successfully deployed"
DEPLOY_STATES = ("following", "ended")
# A rollout's stages: its first wave, the later waves, the whole group.
STAGE_NAMES = ("canary", "wave", "fleet")
# Why a device failed: its code (203), back on another version after a
# reboot, silent after its 201, rebooting over and over, out of time.
FAILURE_REASONS = ("code", "reverted", "dark", "reboot-loop", "timeout")
CONTROL_ACTIONS = ("pause", "resume")
STAGE_STATES = ("pending", "running", "passed", "failed", "complete", "halted", "aborted", "skipped")
REF_TEMPLATE = "#/components/schemas/{model}"
SCHEMES = tuple(Scheme)


def _iso(moment: datetime) -> str:
    text = iso_utc(moment)
    assert text is not None
    return text


Id = Annotated[str, Field(pattern=ID_PATTERN)]
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN)]
# ISO 8601 UTC with milliseconds and Z, as in the spec: 2020-01-17T17:38:59.983Z.
Timestamp = Annotated[datetime, PlainSerializer(_iso, return_type=str)]
Count = Annotated[int, Field(ge=0)]
Dependency = Literal["database", "storage", "mqtt"]
# Absent from the body when not given, and never null: the schema says only the type.
Absent = SkipJsonSchema[None]


def one_of(values: Iterable[str]) -> dict[str, JsonValue]:
    """A text field's values, for its schema only: the receiver writes them itself."""
    choices: list[JsonValue] = [str(value) for value in values]
    return {"enum": choices}


def given(**fields: Any) -> dict[str, Any]:
    """The fields that are not None: keys that are absent, rather than null, without a value."""
    return {name: value for name, value in fields.items() if value is not None}


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def wire(self) -> dict[str, Any]:
        """The body, for JSONResponse to serialise.

        Not model_dump_json: its bytes differ from json.dumps' in small ways
        (a threshold of 1e-07 would read 1e-7), and the answers keep theirs.
        """
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class Message(Wire):
    message: str
    hint: str | Absent = Field(
        default=None, description="What to do, where the spec fixes a message that does not say it"
    )


class ServerError(Wire):
    message: str
    error: str | Absent = Field(default=None, description="The cause in one line: type and message")


class Conflict(Wire):
    """A version already deployed (or rolling out, or halted) with other bytes."""

    message: str
    version: str = Field(description="The version deployed now")
    sha256: str | Absent = Field(default=None, description="Its image's SHA-256")
    commit: str | None = Field(default=None, description="Its source revision, if the deploy sent one")


class Ota(Wire):
    """A group's OTA record, updated in place at each deploy."""

    id: Id = Field(alias="_id")
    group: Id
    group_name: str = Field(description="The name the group was created with")
    revision: int = Field(alias="__v", ge=0, description="0 after the first deploy, +1 for each later one")
    last_updated: Timestamp = Field(description="ISO 8601 UTC with milliseconds")
    owner: Id
    path: str = Field(description="ota/group/<group id><group token>/firmware.bin")
    version: str
    sha256: Sha256
    md5: str = Field(pattern=MD5_PATTERN)
    size: int = Field(ge=1)
    chip: str | None = Field(description="esp32, esp32s3, … as read from the image")
    project_name: str | None = Field(description="From the image's esp_app_desc_t")
    app_version: str | None = Field(description="From the image's esp_app_desc_t")
    idf_ver: str | None = Field(description="From the image's esp_app_desc_t")
    commit: str | None
    signed: bool = Field(description="Whether a signature block by one of the group's keys verified")
    signed_by: Sha256 | None = Field(
        description="The Secure Boot V2 digest of the key whose block verified; null when unsigned"
    )


class OtaList(Wire):
    otas: list[Ota]
    recordsTotal: Count = Field(description="The owner's OTA records")
    recordsFiltered: Count = Field(description="Those matching search_value")
    draw: str = Field(description="The request's draw, echoed")


class DeployedRollout(Wire):
    id: Id
    state: str = Field(json_schema_extra=one_of(State))
    group: Id = Field(description="The group the rollout is for (the canary's parent)")
    group_name: str = Field(description="That group's name")


class Deployed(Wire):
    message: str = Field(
        pattern=f"^{DEPLOYED}( to canary subgroup [0-9a-f]{{24}} of group [0-9a-f]{{24}}; .+)?$",
        description=(
            f"{DEPLOYED!r}, the spec's message. With `canary`, while the rollout is in its canary "
            "stage, it goes on to say that the image went to the canary subgroup of the group, and "
            "when the whole group gets it"
        ),
    )
    deployed: bool = Field(
        description="false when this version and these bytes were already deployed: nothing changed"
    )
    ota: Ota | Absent = Field(default=None, description="The group's record (the canary's, for a rollout)")
    rollout: DeployedRollout | Absent = None


class Latest(Wire):
    ver: str = Field(description="The group's effective firmware version")


class RolloutStage(Wire):
    name: str = Field(
        json_schema_extra=one_of(STAGE_NAMES),
        description="`canary` for the first wave, `wave` for each later one, `fleet` for the whole group",
    )
    wave: int | None = Field(ge=1, description="The wave's number, from 1 (the canary); null for the fleet")
    group: Id
    state: str = Field(json_schema_extra=one_of(STAGE_STATES))
    targeted: Count
    succeeded: Count
    failed: Count
    timed_out: Count = Field(description="Devices that had not finished when the stage's time ran out")
    stopped: Count = Field(
        description="Devices that had not finished when the stage ended early (a halt, an abort, a "
        "promotion); not failures"
    )
    retrying: Count = Field(
        description="Devices that failed and wait for their group's trigger to be published again; "
        "the canary counts them as failures"
    )
    retries: Count = Field(description="Retries made for the stage's devices, all devices together")
    pending: Count
    failed_by_reason: dict[str, int] = Field(
        description=f"Failed devices by the signal that failed them: {', '.join(FAILURE_REASONS[:-1])}"
    )
    started_at: Timestamp | None
    ended_at: Timestamp | None


class RolloutDevice(Wire):
    id: str
    name: str
    group: Id
    stage: str = Field(json_schema_extra=one_of(Stage))
    wave: int | None = Field(
        ge=1, description="Its wave's number in the canary and rollback stages; null in the fleet stage"
    )
    outcome: str = Field(json_schema_extra=one_of(Outcome))
    reason: str | None = Field(
        json_schema_extra={"enum": [*FAILURE_REASONS, None]},
        description="Which signal failed it, when `failed` or `timed_out`",
    )
    fw_version: str | None = Field(
        description="The last version the device reported; still recorded for a day after the rollout ends"
    )
    code: int | None = Field(description="Its last update-response code")
    retries: Count = Field(
        description="Times its group's trigger was published again because it failed (a 203, another "
        "version after its 201, or silence after it); a device `failed` with `retries` at the limit "
        "failed every attempt"
    )
    next_retry_at: Timestamp | None = Field(description="When the next retry is due, while `retrying`")


class RolloutPolicy(Wire):
    canary_timeout: int = Field(ge=1)
    success_threshold: float = Field(ge=0, le=1)
    error_threshold: Count
    soak: Count
    auto_promote: bool
    max_failure_rate: float | None = Field(
        ge=0, le=1, description="A wave halts once `min_devices` finished and more than this share failed"
    )
    min_devices: int = Field(ge=1)


class WavePolicy(Wire):
    """What a wave is judged by: the rollout's policy, with the wave's own overrides."""

    wave: int = Field(ge=1)
    group: Id
    canary_timeout: int = Field(ge=1)
    success_threshold: float = Field(ge=0, le=1)
    error_threshold: Count
    soak: Count


class RolloutControl(Wire):
    action: str = Field(json_schema_extra=one_of(CONTROL_ACTIONS))
    by: str = Field(description="The email of the owner whose API key asked")
    at: Timestamp


class RollbackWave(Wire):
    """What an automatic rollback did with one wave that got the version, and
    how its devices went back."""

    wave: int = Field(ge=1)
    group: Id
    result: str = Field(
        description="Rolled back to which version, or why the wave was left as it is (no previous "
        "firmware, deployed to after the rollout started, the signature check)"
    )
    version: str | None = Field(description="The version it went back to; null when left as it is")
    targeted: Count
    went_back: Count = Field(description="Devices that reported the previous version")
    did_not: Count = Field(description="Devices that answered but did not go back (a 203, another version)")
    unreachable: Count = Field(
        description="Devices that had not reported the previous version when the follow time (the "
        "rollout's canary_timeout) ran out"
    )
    pending: Count
    retrying: Count = Field(
        description="Devices that did not go back and wait for their wave's trigger to be published again"
    )


class Rollout(Wire):
    id: Id
    group: Id
    canary: Id = Field(description="Its first wave")
    waves: list[Id] = Field(description="Its waves' subgroups, in order; the first is the canary")
    wave: int | None = Field(ge=1, description="The wave running, from 1, while the state is `canary`")
    version: str
    sha256: Sha256
    commit: str | None
    state: str = Field(json_schema_extra=one_of(State))
    reason: str | None = Field(description="Why it is in this state")
    paused: bool = Field(description="Paused: no wave advances and no stage times out until a resume")
    policy: RolloutPolicy
    wave_policies: list[WavePolicy]
    controls: list[RolloutControl] = Field(description="Its pauses and resumes, oldest first")
    created_at: Timestamp = Field(description="ISO 8601 UTC with milliseconds")
    updated_at: Timestamp = Field(description="ISO 8601 UTC with milliseconds")
    ended_at: Timestamp | None
    stages: list[RolloutStage]
    rollback: list[RollbackWave] = Field(
        description="With rollback=true, after a halt: each wave that got the version, what its "
        "rollback did and how its devices went back; empty otherwise"
    )
    devices: list[RolloutDevice] | Absent = Field(
        default=None, description="Every targeted device; left out with devices=false and in lists"
    )


class RolloutList(Wire):
    rollouts: list[Rollout]


class DeployDevice(Wire):
    id: str
    name: str
    group: Id
    outcome: str = Field(json_schema_extra=one_of(Outcome))
    fw_version: str | None = Field(description="The last version the device reported while followed")
    code: int | None = Field(description="Its last update-response code")
    retries: Count = Field(description="Times its group's trigger was published again because it failed")
    next_retry_at: Timestamp | None = Field(description="When the next retry is due, while `retrying`")


class Deployment(Wire):
    """A plain deploy (no rollout), and the devices it triggered while it follows them."""

    id: Id = Field(description="The deployment's id")
    group: Id = Field(description="The group deployed to; devices of its subgroups that it reached count too")
    version: str
    state: str = Field(
        json_schema_extra=one_of(DEPLOY_STATES),
        description="`following` while it waits for its devices and retries the failed ones; `ended` after",
    )
    reason: str | None = Field(description="Why the following ended")
    started_at: Timestamp
    ended_at: Timestamp | None
    targeted: Count
    succeeded: Count
    failed: Count = Field(description="Devices that failed every attempt")
    timed_out: Count = Field(description="Devices that had not answered when the following ended")
    stopped: Count = Field(description="Devices still pending when a newer deploy changed their group")
    retrying: Count = Field(description="Devices that failed and wait for their group's trigger again")
    retries: Count = Field(description="Retries made, all devices together")
    pending: Count
    devices: list[DeployDevice] | Absent = Field(
        default=None, description="Every triggered device; left out with devices=false and in lists"
    )


class DeploymentList(Wire):
    deployments: list[Deployment]


class SigningKey(Wire):
    """A Secure Boot V2 public key that a group's firmware must be signed by."""

    id: Id
    group: Id = Field(description="The group the key was added to")
    name: str
    scheme: str = Field(json_schema_extra=one_of(SCHEMES))
    digest: Sha256 = Field(
        description="SHA-256 of the key as a signature block holds it (`espsecure digest-sbv2-public-key`)"
    )
    public_key: str = Field(description="PEM")
    inherited_from: Id | None = Field(
        description="The ancestor group whose key this is; null for the group's own. A subgroup cannot remove it."
    )
    created_at: Timestamp


class SigningKeyList(Wire):
    keys: list[SigningKey] = Field(description="The group's ancestors' keys first, then its own")


class NewSigningKey(Wire):
    """The body of POST /v1/groups/{group_id}/keys."""

    public_key: str = Field(
        min_length=1, max_length=MAX_PEM_BYTES, description="A PEM public key (-----BEGIN PUBLIC KEY-----)"
    )
    name: str | None = Field(default=None, max_length=200, description="Defaults to the scheme and digest")


class AntiRollback(Wire):
    """A group's anti-rollback setting, and the secure_version an upload to it is held to."""

    group: Id
    enabled: bool = Field(description="The group's own setting")
    set_by: Id | None = Field(
        description="The group, or its nearest ancestor, whose setting is on: an upload whose app "
        "descriptor secure_version is lower than `secure_version` is refused. Null when anti-rollback "
        "is off for the group. A subgroup follows its ancestors: turning its own setting off does not "
        "undo theirs."
    )
    secure_version: int | None = Field(
        ge=0,
        description="The secure_version of the firmware the group runs; null when it runs nothing, or "
        "an image without an app descriptor (which any image may then replace)",
    )


class AntiRollbackChange(Wire):
    """The body of PUT /v1/groups/{group_id}/anti-rollback."""

    enabled: StrictBool = Field(
        description="true: refuse uploads whose secure_version is lower than what the group runs"
    )


class LoginUser(Wire):
    id: Id
    role: Literal["user"] = Field(description="Every user owns its groups; there are no other roles")


class Login(Wire):
    """IoTaaP's answer to a sign-in."""

    user: LoginUser
    token: str = Field(
        pattern="^otl_[A-Za-z0-9_-]+$",
        description="A bearer token for this API, as an API key is: 30 days with rememberMe, 12 hours "
        "without; POST /v1/auth/logout revokes it, and so does a new password",
    )


class Health(Wire):
    status: Literal["ok"]


class ReadinessChecks(Wire):
    database: str
    storage: str
    mqtt: str


class Readiness(Wire):
    status: Literal["ready", "unavailable"]
    checks: ReadinessChecks = Field(
        description="Each dependency: `ok`, `not configured` (MQTT with OTASHIP_MQTT_URL=none) or a short "
        "reason it failed"
    )
    failed: list[Dependency] | Absent = None


DELIVERY_OUTCOMES = ("queued", "ignored", "deployed", "refused", "failed")


class GithubBind(Wire):
    """The body of POST /v1/github/bindings."""

    repo: str = Field(max_length=200, description="OWNER/NAME of the repository on GitHub")
    group: Id = Field(description="The group its published releases deploy to")
    canary: Id | Absent = Field(default=None, description="Start a rollout with this canary subgroup")
    waves: str | Absent = Field(
        default=None,
        max_length=200,
        description="Start a rollout in waves: the POST's `waves` field, as given",
    )
    asset: str = Field(
        default="*.bin",
        max_length=200,
        description="Shell-style pattern of the release asset to deploy: exactly one must match",
    )
    prereleases: bool = Field(default=False, description="Deploy prereleases too")
    report_deployments: bool = Field(
        default=False, description="Report the rollouts it starts back to GitHub as deployments"
    )
    token: str | Absent = Field(
        default=None,
        max_length=500,
        description="A GitHub token that may read the repository's contents (and write deployments "
        "with report_deployments); stored encrypted, never shown again. Not needed for a public "
        "repository without report_deployments",
    )


class GithubBinding(Wire):
    id: Id
    repo: str
    group: Id
    canary: Id | None
    waves: str | None
    asset: str
    prereleases: bool
    report_deployments: bool
    token: bool = Field(description="Whether a token is stored (it is never shown)")
    webhook_url: str = Field(description="The Payload URL for the repository's webhook settings")
    created_at: Timestamp


class GithubBound(Wire):
    binding: GithubBinding
    secret: str = Field(
        description="The webhook's secret, for the repository's webhook settings: shown this once"
    )


class GithubBindingList(Wire):
    bindings: list[GithubBinding]


class GithubDelivery(Wire):
    id: str = Field(description="X-GitHub-Delivery")
    binding: Id
    event: str = Field(description="X-GitHub-Event")
    action: str | None
    tag: str | None = Field(description="The release's tag")
    outcome: str = Field(json_schema_extra=one_of(DELIVERY_OUTCOMES))
    reason: str | None = Field(description="Why it was ignored, refused or failed; what the deploy said")
    version: str | None
    commit: str | None
    rollout: Id | None = Field(description="The rollout the deploy started")
    attempts: Count
    received_at: Timestamp
    finished_at: Timestamp | None


class GithubDeliveryList(Wire):
    deliveries: list[GithubDelivery]


class WebhookAnswer(Wire):
    message: str
    delivery: str
    outcome: str = Field(json_schema_extra=one_of(DELIVERY_OUTCOMES))


ANSWERS: list[type[Wire]] = [
    Message,
    ServerError,
    Conflict,
    Ota,
    OtaList,
    Deployed,
    Latest,
    RolloutStage,
    RolloutDevice,
    Rollout,
    RolloutList,
    DeployDevice,
    Deployment,
    DeploymentList,
    SigningKey,
    SigningKeyList,
    NewSigningKey,
    AntiRollback,
    AntiRollbackChange,
    LoginUser,
    Login,
    Health,
    Readiness,
    GithubBind,
    GithubBound,
    GithubBindingList,
    GithubDeliveryList,
    WebhookAnswer,
]


class _Document(GenerateJsonSchema):
    """Schemas as a client reads them: no titles that repeat the names, and no
    `default: null` on fields that are left out rather than null."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        if json_schema.get("default", ...) is None:
            del json_schema["default"]
        return json_schema


def components() -> dict[str, Any]:
    """`components.schemas`: every answer's model and the models inside them."""
    _, top = models_json_schema(
        [(model, "validation") for model in ANSWERS], ref_template=REF_TEMPLATE, schema_generator=_Document
    )
    schemas: dict[str, Any] = top["$defs"]
    for schema in schemas.values():
        schema.pop("title", None)
    return schemas
