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

from pydantic import BaseModel, ConfigDict, Field, JsonValue, PlainSerializer
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, SkipJsonSchema, models_json_schema
from pydantic_core import core_schema

from otaship.receiver.db.enums import Outcome, Stage, State
from otaship.receiver.ids import iso_utc

ID_PATTERN = "^[0-9a-f]{24}$"
SHA256_PATTERN = "^[0-9a-f]{64}$"
MD5_PATTERN = "^[0-9a-f]{32}$"
# The spec's answer to a deploy.
DEPLOYED = "Firmware successfully deployed"
DEPLOY_STATES = ("following", "ended")
STAGE_STATES = ("pending", "running", "passed", "failed", "complete", "halted", "aborted", "skipped")
REF_TEMPLATE = "#/components/schemas/{model}"


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


class OtaList(Wire):
    otas: list[Ota]
    recordsTotal: Count = Field(description="The owner's OTA records")
    recordsFiltered: Count = Field(description="Those matching search_value")
    draw: str = Field(description="The request's draw, echoed")


class DeployedRollout(Wire):
    id: Id
    state: str = Field(json_schema_extra=one_of(State))


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
    name: str = Field(json_schema_extra=one_of(Stage))
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
    started_at: Timestamp | None
    ended_at: Timestamp | None


class RolloutDevice(Wire):
    id: str
    name: str
    group: Id
    stage: str = Field(json_schema_extra=one_of(Stage))
    outcome: str = Field(json_schema_extra=one_of(Outcome))
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


class Rollout(Wire):
    id: Id
    group: Id
    canary: Id
    version: str
    sha256: Sha256
    commit: str | None
    state: str = Field(json_schema_extra=one_of(State))
    reason: str | None = Field(description="Why it is in this state")
    policy: RolloutPolicy
    created_at: Timestamp = Field(description="ISO 8601 UTC with milliseconds")
    updated_at: Timestamp = Field(description="ISO 8601 UTC with milliseconds")
    ended_at: Timestamp | None
    stages: list[RolloutStage]
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
    Health,
    Readiness,
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
