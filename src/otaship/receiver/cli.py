"""otaship: the receiver's command line (serve, migrate, and the admin verbs).

Each `create` prints exactly one JSON object on stdout, for scripts. Errors are
one line on stderr and a non-zero exit: 1 when the command failed, 2 for a
usage error.

The receiver's settings come from OTASHIP_* variables through
`Settings.from_env`, with its own checks and messages; an option such as
`serve --port` only overrides one of them, so it does not read the variable
itself.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any, Concatenate, ParamSpec

import click
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from otaship.closed_pipe import quiet_on_closed_pipe
from otaship.firmware.cli import firmware as firmware_group
from otaship.firmware.signing_keys import MAX_PEM_BYTES, InvalidKey, load_public_key
from otaship.receiver.client_urls import device_mqtt_url, receiver_url, shell_exports
from otaship.receiver.db.devices import DeviceError, create_device, device_json, list_devices
from otaship.receiver.db.engine import SchemaError
from otaship.receiver.db.groups import KNOWN_CHIPS, GroupError, create_group, group_json, list_groups
from otaship.receiver.db.logins import check_password_rules, set_password
from otaship.receiver.db.models import PLANS, Group, User
from otaship.receiver.db.signing_keys import GroupKey, SigningKeyError, add_key, group_keys, remove_key
from otaship.receiver.db.users import (
    UserError,
    create_user,
    get_user_by_email,
    issue_api_key,
    list_users,
    set_plan,
    user_json,
)
from otaship.receiver.github.bindings import BindingError, BindRequest
from otaship.receiver.github.sealed import SealError
from otaship.receiver.ids import iso_utc, utcnow
from otaship.receiver.logs import redact, redact_unconfigured_logs
from otaship.receiver.settings import DEFAULT_GC_GRACE, SERVERS, Settings, SettingsError
from otaship.receiver.storage import StorageError
from otaship.simulator.cli import simulate_command

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

# The receiver's own errors: what went wrong is the message, for the operator.
OPERATOR_ERRORS = (
    UserError,
    GroupError,
    DeviceError,
    SettingsError,
    SchemaError,
    StorageError,
    InvalidKey,
    SigningKeyError,
    BindingError,
    SealError,
)
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "show_default": True}

P = ParamSpec("P")


class CommandError(click.ClickException):
    """A one-line message for the operator on stderr, secrets redacted; exit 1."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(redact(f"otaship: {self.kind}: {self.message}"), file=file, err=file is None)


class WholeSeconds(click.IntRange):
    """Digits only, as `otaship gc --grace` has always taken them: no sign, blank or `_`."""

    def __init__(self) -> None:
        super().__init__(min=0)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not (value.isascii() and value.isdigit()):
            name = "/".join(param.opts) if param is not None else "value"
            # Worded as before the move to click, for the scripts that match it.
            raise click.UsageError(f"argument {name}: must be a whole number of seconds, not {value!r}", ctx)
        return super().convert(value, param, ctx)


class Otaship(click.Group):
    """The root group: the receiver's errors below it become one line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OPERATOR_ERRORS as exc:
            raise CommandError(str(exc)) from exc
        except SQLAlchemyError as exc:
            raise CommandError(str(exc).splitlines()[0], kind="database error") from exc


def with_settings(command: Callable[Concatenate[Settings, P], None]) -> Callable[P, None]:
    """Call `command` with the settings, read when it runs, after its options parsed."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        command(Settings.from_env(), *args, **kwargs)

    return run


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=None))


# `--format env` on the commands that create a secret or an id the next command needs.
FORMATS = ("json", "env")
format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="json",
    help='json: one JSON object; env: `export NAME=VALUE` lines for a POSIX shell, as in eval "$(...)"',
)


def _emit(output_format: str, obj: dict[str, Any], exports: list[tuple[str, str | None]]) -> None:
    if output_format == "env":
        print(shell_exports(exports))
    else:
        _print(obj)


def _write(settings: Settings, work: Callable[[Session], Any]) -> Any:
    from otaship.receiver.db.engine import create_db_engine, ensure_schema, require_database, write_session

    # Only serve and migrate create a database; the admin commands use one.
    require_database(settings.resolved_database_url)
    engine = create_db_engine(settings.resolved_database_url)
    try:
        ensure_schema(engine)
        with write_session(engine) as session:
            return work(session)
    finally:
        engine.dispose()


def _owner(session: Session, email: str) -> User:
    user = get_user_by_email(session=session, email=email)
    if user is None:
        raise CommandError(f"no user with email {email}")
    return user


def _group(session: Session, group_id: str) -> Group:
    group = session.get(Group, group_id)
    if group is None:
        raise CommandError(f"no group {group_id}")
    return group


@click.group(
    cls=Otaship,
    name="otaship",
    context_settings=CONTEXT_SETTINGS,
    no_args_is_help=False,
    help="otaship receiver: IoTaaP Group OTA API, device endpoints and staged rollouts.",
    epilog="Configuration comes from OTASHIP_* environment variables (see docs/operations.md).",
)
@click.version_option(package_name="otaship", prog_name="otaship", help="Show otaship's version and exit.")
def cli() -> None:
    redact_unconfigured_logs()


@cli.command(help="run the receiver")
@click.option("--host", help="address to bind", show_default="OTASHIP_HOST, else 127.0.0.1")
@click.option("--port", type=int, help="port to bind", show_default="OTASHIP_PORT, else 8080")
@click.option(
    "--server",
    type=click.Choice(SERVERS),
    help="the HTTP server that runs the receiver",
    show_default=f"OTASHIP_SERVER, else {SERVERS[0]}",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="worker processes; more than 1 needs an external MQTT broker",
    show_default="OTASHIP_WORKERS, else 1 with the embedded broker and one a core otherwise",
)
@with_settings
def serve(
    settings: Settings, host: str | None, port: int | None, server: str | None, workers: int | None
) -> None:
    from otaship.receiver.serve import run

    settings = settings.with_overrides(
        host=host or settings.host,
        port=port if port is not None else settings.port,
        server=server or settings.server,
        workers=workers if workers is not None else settings.workers,
    )
    _check_http_port(settings)
    _check_embedded_broker_port(settings)
    _check_schema(settings)
    from otaship.receiver.logs import configure_logging

    configure_logging(settings)
    run(settings)


@cli.command(help="bring the database schema up to date (run before serve on PostgreSQL)")
@with_settings
def migrate(settings: Settings) -> None:
    from otaship.receiver.db.engine import create_db_engine
    from otaship.receiver.db.engine import migrate as migrate_schema

    engine = create_db_engine(settings.resolved_database_url)
    try:
        print(migrate_schema(engine).describe())
    finally:
        engine.dispose()


@cli.command(
    short_help="remove stored firmware objects that no record references",
    help="Remove firmware objects that no OTA, deploy history or rollout references "
    "and that are older than the grace period (OTASHIP_GC_GRACE).",
)
@click.option("--dry-run", is_flag=True, help="list what would be removed; remove nothing")
@click.option(
    "--grace",
    type=WholeSeconds(),
    metavar="SECONDS",
    show_default=f"OTASHIP_GC_GRACE, else {DEFAULT_GC_GRACE}",
    help="override OTASHIP_GC_GRACE; below the servers' setting it is safe only while no upload runs",
)
@with_settings
def gc(settings: Settings, dry_run: bool, grace: int | None) -> None:
    from otaship.receiver.db.engine import create_db_engine, ensure_schema, require_database
    from otaship.receiver.gc.sweep import sweep_orphans
    from otaship.receiver.storage import create_storage

    url = settings.resolved_database_url
    # An empty database references nothing: every object would look orphaned.
    require_database(url)
    grace_seconds = settings.gc_grace if grace is None else grace
    engine = create_db_engine(url)
    storage = create_storage(settings.resolved_storage_url, cache_dir=settings.cache_dir)
    try:
        ensure_schema(engine)
        result = sweep_orphans(storage=storage, engine=engine, grace=grace_seconds, dry_run=dry_run)
    finally:
        storage.close()
        engine.dispose()
    for obj in result.plan.remove if dry_run else result.removed:
        print(f"{'would remove' if dry_run else 'removed'} {obj.key} ({obj.size} bytes)")
    print(result.describe())
    if result.failed:
        raise CommandError("; ".join(f"could not remove {key}: {error}" for key, error in result.failed))


@cli.group(help="manage users", no_args_is_help=False)
def user() -> None:
    pass


@user.command("create", help="create a user; prints its API key and MQTT password once")
@click.argument("email")
@click.option(
    "--plan", type=click.Choice(PLANS), default="free", help="what the user may do: pro runs group OTA"
)
@format_option
@with_settings
def user_create(settings: Settings, email: str, plan: str, output_format: str) -> None:
    def work(session: Session) -> dict[str, Any]:
        created = create_user(session=session, email=email, plan=plan)
        return {
            **user_json(created.user),
            "api_key": created.api_key,
            "mqtt_password": created.mqtt_password,
        }

    created = _write(settings, work)
    user, password = created["mqtt_user"], created["mqtt_password"]
    exports = [
        ("OTASHIP_RECEIVER_URL", receiver_url(settings)),
        ("OTASHIP_API_KEY", created["api_key"]),
        ("OTASHIP_MQTT_USER", user),
        ("OTASHIP_MQTT_PASSWORD", password),
        ("OTASHIP_DEVICE_MQTT_URL", device_mqtt_url(settings, user, password)),
    ]
    _emit(output_format, created, exports)


@user.command("key", help="issue a new API key (revokes the old ones unless --keep)")
@click.argument("email")
@click.option("--keep", is_flag=True, help="keep existing keys valid")
@format_option
@with_settings
def user_key(settings: Settings, email: str, keep: bool, output_format: str) -> None:
    def work(session: Session) -> dict[str, Any]:
        owner = _owner(session, email)
        key = issue_api_key(session=session, user=owner, revoke_existing=not keep)
        return {"id": owner.id, "email": owner.email, "api_key": key}

    issued = _write(settings, work)
    _emit(output_format, issued, [("OTASHIP_API_KEY", issued["api_key"])])


@user.command("plan", help="change a user's plan (pro runs group OTA); takes effect at once")
@click.argument("email")
@click.argument("plan", type=click.Choice(PLANS))
@with_settings
def user_plan(settings: Settings, email: str, plan: str) -> None:
    def work(session: Session) -> dict[str, object]:
        return user_json(set_plan(session=session, user=_owner(session, email), plan=plan))

    _print(_write(settings, work))


@user.command(
    "password",
    help="set a user's password for the console and POST /v1/auth/login: prompted for on a "
    "terminal, else read from the first line of stdin; ends the user's sign-ins",
)
@click.argument("email")
@with_settings
def user_password(settings: Settings, email: str) -> None:
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        check_password_rules(password)
    except UserError as exc:
        raise CommandError(str(exc)) from exc

    def work(session: Session) -> dict[str, object]:
        owner = _owner(session, email)
        set_password(session=session, user=owner, password=password, now=utcnow())
        return {"id": owner.id, "email": owner.email, "password": "set"}

    _print(_write(settings, work))


@user.command("list", help="list users")
@with_settings
def user_list(settings: Settings) -> None:
    _print(_write(settings, lambda session: [user_json(u) for u in list_users(session=session)]))


@cli.group(help="manage groups", no_args_is_help=False)
def group() -> None:
    pass


@group.command("create", help="create a group (or a subgroup with --parent)")
@click.argument("name")
@click.option("--owner", required=True, metavar="EMAIL", help="the email of the user who owns the group")
@click.option("--parent", metavar="GROUP_ID", help="make a subgroup of this group (a canary, say)")
@click.option("--chip", type=click.Choice(KNOWN_CHIPS), help="the chip its images must be built for")
@format_option
@with_settings
def group_create(
    settings: Settings, name: str, owner: str, parent: str | None, chip: str | None, output_format: str
) -> None:
    def work(session: Session) -> dict[str, Any]:
        owner_user = _owner(session, owner)
        created = create_group(session=session, owner=owner_user, name=name, parent_id=parent, chip=chip)
        return group_json(created, owner_user)

    created = _write(settings, work)
    # A subgroup is how a canary is made: its names are the ones otaship-deploy reads for one.
    role = "CANARY" if parent else "GROUP"
    exports = [(f"OTASHIP_{role}", created["id"]), (f"OTASHIP_{role}_TOKEN", created["token"])]
    _emit(output_format, created, exports)


@group.command("list", help="list groups")
@click.option("--owner", metavar="EMAIL", help="only this user's groups")
@with_settings
def group_list(settings: Settings, owner: str | None) -> None:
    def work(session: Session) -> list[dict[str, Any]]:
        owner_user = _owner(session, owner) if owner else None
        owners = {u.id: u for u in list_users(session=session)}
        return [
            group_json(g, owners.get(g.owner_id))
            for g in list_groups(session=session, owner_id=owner_user.id if owner_user else None)
        ]

    _print(_write(settings, work))


@group.group(
    "key", help="a group's Secure Boot V2 signing keys: once it has one, every deploy must be signed"
)
def group_key() -> None:
    pass


def _key_json(found: GroupKey) -> dict[str, Any]:
    key = found.key
    return {
        "id": key.id,
        "group": key.group_id,
        "name": key.name,
        "scheme": key.scheme,
        "digest": key.digest,
        "inherited_from": found.inherited_from,
        "created_at": iso_utc(key.created_at),
    }


@group_key.command("add", help="register a public key for a group and its subgroups")
@click.argument("group_id", metavar="GROUP")
@click.option(
    "--public-key",
    "public_key",
    required=True,
    type=click.File("rb"),
    help="a PEM public key (espsecure extract-public-key --version 2 --keyfile key.pem pub.pem)",
)
@click.option("--name", help="a name to tell keys apart (default: its scheme and digest)")
@with_settings
def group_key_add(settings: Settings, group_id: str, public_key: IO[bytes], name: str | None) -> None:
    parsed = load_public_key(public_key.read(MAX_PEM_BYTES + 1))

    def work(session: Session) -> dict[str, Any]:
        added = add_key(session=session, group=_group(session, group_id), key=parsed, name=name, now=utcnow())
        return _key_json(GroupKey(key=added, inherited_from=None))

    _print(_write(settings, work))


@group_key.command("list", help="a group's keys: its ancestors' first, then its own")
@click.argument("group_id", metavar="GROUP")
@with_settings
def group_key_list(settings: Settings, group_id: str) -> None:
    def work(session: Session) -> list[dict[str, Any]]:
        return [_key_json(k) for k in group_keys(session=session, group=_group(session, group_id))]

    _print(_write(settings, work))


@group_key.command("remove", help="remove one of a group's own keys, by its id or digest")
@click.argument("group_id", metavar="GROUP")
@click.argument("key")
@with_settings
def group_key_remove(settings: Settings, group_id: str, key: str) -> None:
    def work(session: Session) -> dict[str, Any]:
        try:
            removed = remove_key(session=session, group=_group(session, group_id), ref=key)
        except LookupError:
            raise CommandError(f"group {group_id} has no key {key}") from None
        return _key_json(GroupKey(key=removed, inherited_from=None))

    _print(_write(settings, work))


@group.command(
    "anti-rollback",
    help="refuse (on) or allow (off) images whose secure_version is lower than the group runs; "
    "subgroups follow",
)
@click.argument("group_id", metavar="GROUP")
@click.argument("setting", type=click.Choice(["on", "off"]))
@with_settings
def group_anti_rollback(settings: Settings, group_id: str, setting: str) -> None:
    def work(session: Session) -> dict[str, Any]:
        found = _group(session, group_id)
        found.anti_rollback = setting == "on"
        session.add(found)
        session.flush()
        return group_json(found)

    _print(_write(settings, work))


@cli.group(help="manage devices", no_args_is_help=False)
def device() -> None:
    pass


@device.command("create", help="register a device in a group")
@click.argument("name")
@click.option(
    "--group", "group_id", required=True, metavar="GROUP_ID", help="the group the device belongs to"
)
@click.option("--firmware-version", metavar="X", help="the version it runs now")
@click.option(
    "--id", "device_id", metavar="DEVICE_ID", show_default="generated", help="the id the device uses"
)
@format_option
@with_settings
def device_create(
    settings: Settings,
    name: str,
    group_id: str,
    firmware_version: str | None,
    device_id: str | None,
    output_format: str,
) -> None:
    def work(session: Session) -> dict[str, Any]:
        created = create_device(
            session=session,
            group=_group(session, group_id),
            name=name,
            firmware_version=firmware_version,
            device_id=device_id,
        )
        return device_json(created)

    created = _write(settings, work)
    _emit(output_format, created, [("OTASHIP_DEVICE", created["id"])])


@device.command("list", help="list devices")
@click.option("--group", "group_id", metavar="GROUP_ID", help="only this group's devices")
@with_settings
def device_list(settings: Settings, group_id: str | None) -> None:
    def work(session: Session) -> list[dict[str, Any]]:
        if group_id:
            _group(session, group_id)
        return [device_json(d) for d in list_devices(session=session, group_id=group_id)]

    _print(_write(settings, work))


@cli.group(help="bind GitHub repositories: their published releases deploy", no_args_is_help=False)
def github() -> None:
    pass


@github.command(
    "bind",
    help="deploy a repository's published releases to a group; prints the webhook URL and its secret once",
)
@click.option("--owner", required=True, metavar="EMAIL", help="the email of the user who owns the group")
@click.option("--repo", required=True, metavar="OWNER/NAME", help="the repository on GitHub")
@click.option(
    "--group", "group_id", required=True, metavar="GROUP_ID", help="the group its releases deploy to"
)
@click.option("--canary", metavar="GROUP_ID", help="start a rollout with this canary subgroup")
@click.option("--waves", metavar="WAVES", help="start a rollout in waves (the POST's waves field, as given)")
@click.option(
    "--asset", default="*.bin", help="pattern of the release asset to deploy: exactly one must match"
)
@click.option("--prereleases", is_flag=True, help="deploy prereleases too")
@click.option("--report-deployments", is_flag=True, help="report its rollouts back to GitHub as deployments")
@click.option(
    "--token-env",
    metavar="NAME",
    help="the environment variable holding a GitHub token that may read the repository (stored "
    "encrypted; never on the command line, where ps and the shell's history would show it)",
)
@with_settings
def github_bind(
    settings: Settings,
    owner: str,
    repo: str,
    group_id: str,
    canary: str | None,
    waves: str | None,
    asset: str,
    prereleases: bool,
    report_deployments: bool,
    token_env: str | None,
) -> None:
    import os

    from otaship.receiver.github.bindings import create_binding
    from otaship.receiver.http.management.github import binding_view

    token = None
    if token_env is not None:
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise CommandError(f"--token-env {token_env}: that environment variable is not set")
    request = BindRequest(
        repo=repo,
        group_id=group_id,
        canary_id=canary,
        waves=waves,
        asset=asset,
        prereleases=prereleases,
        report_deployments=report_deployments,
        token=token,
    )

    def work(session: Session) -> dict[str, Any]:
        binding, secret = create_binding(
            session=session,
            owner_id=_owner(session, owner).id,
            request=request,
            secret_key=settings.secret_key,
        )
        return {**binding_view(settings, binding).wire(), "secret": secret}

    _print(_write(settings, work))


@github.command("list", help="list GitHub bindings (never their secrets or tokens)")
@click.option("--owner", metavar="EMAIL", help="only this user's bindings")
@with_settings
def github_list(settings: Settings, owner: str | None) -> None:
    from otaship.receiver.github.bindings import list_bindings
    from otaship.receiver.http.management.github import binding_view

    def work(session: Session) -> list[dict[str, Any]]:
        owner_id = _owner(session, owner).id if owner else None
        return [binding_view(settings, b).wire() for b in list_bindings(session=session, owner_id=owner_id)]

    _print(_write(settings, work))


@github.command("unbind", help="remove a binding: later deliveries are refused; its deliveries are kept")
@click.argument("binding_id")
@click.option("--owner", required=True, metavar="EMAIL", help="the email of the user who owns the binding")
@with_settings
def github_unbind(settings: Settings, binding_id: str, owner: str) -> None:
    from otaship.receiver.github.bindings import delete_binding

    def work(session: Session) -> bool:
        return delete_binding(session=session, owner_id=_owner(session, owner).id, binding_id=binding_id)

    if not _write(settings, work):
        raise CommandError(f"no GitHub binding {binding_id} owned by {owner}")
    _print({"id": binding_id, "removed": True})


cli.add_command(simulate_command)
cli.add_command(firmware_group)


def _check_http_port(settings: Settings) -> None:
    """Fail before starting anything when the HTTP address is taken or unusable."""
    from otaship.receiver.ports import PortUnavailable, check_http_port

    try:
        check_http_port(settings.host, settings.port)
    except PortUnavailable as exc:
        raise CommandError(str(exc)) from None


def _check_embedded_broker_port(settings: Settings) -> None:
    """Fail before starting anything when the embedded broker's port is taken."""
    import errno
    import socket

    from otaship.protocol import parse_mqtt_url
    from otaship.receiver.mqtt.broker import BrokerPortInUse

    try:
        address = parse_mqtt_url(settings.mqtt_url)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if address is None or not address.embedded:
        return
    with socket.socket(socket.AF_INET6 if ":" in address.host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address.host, address.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CommandError(str(BrokerPortInUse(address.host, address.port))) from None
            raise CommandError(
                f"cannot start the embedded MQTT broker on {address.host}:{address.port}: {exc}"
            ) from None


def _check_schema(settings: Settings) -> None:
    """Refuse to start on a shared database whose schema is not this version's.

    The app checks again at startup; this one fails before the server logs a
    traceback, with the one-line message that says to run `otaship migrate`.
    """
    from otaship.receiver.db.engine import create_db_engine, ensure_schema

    engine = create_db_engine(settings.resolved_database_url)
    try:
        ensure_schema(engine)
    finally:
        engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code it would end the process with."""
    return quiet_on_closed_pipe(lambda: _run(argv))


def _run(argv: Sequence[str] | None) -> int:
    try:
        cli.main(args=None if argv is None else list(argv), prog_name="otaship")
    except SystemExit as exc:
        # Click ends every run, even a successful one, with SystemExit.
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
