"""otaship: the receiver's command line (serve, migrate, and the admin verbs).

Each `create` prints exactly one JSON object on stdout, for scripts. Errors are
one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from otaship.receiver.db.devices import DeviceError, create_device, device_json, list_devices
from otaship.receiver.db.engine import SchemaError
from otaship.receiver.db.groups import KNOWN_CHIPS, GroupError, create_group, group_json, list_groups
from otaship.receiver.db.models import PLANS, Group, User
from otaship.receiver.db.users import (
    UserError,
    create_user,
    get_user_by_email,
    issue_api_key,
    list_users,
    user_json,
)
from otaship.receiver.logs import redact, redact_unconfigured_logs
from otaship.receiver.settings import Settings, SettingsError
from otaship.receiver.storage import StorageError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """A one-line message for the operator."""


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=None))


def _write(settings: Settings, work: Callable[[Session], Any]) -> Any:
    from otaship.receiver.db.engine import create_db_engine, ensure_schema, write_session

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


def cmd_user_create(settings: Settings, args: argparse.Namespace) -> None:
    def work(session: Session) -> dict[str, Any]:
        created = create_user(session=session, email=args.email, plan=args.plan)
        return {
            **user_json(created.user),
            "api_key": created.api_key,
            "mqtt_password": created.mqtt_password,
        }

    _print(_write(settings, work))


def cmd_user_key(settings: Settings, args: argparse.Namespace) -> None:
    def work(session: Session) -> dict[str, Any]:
        user = _owner(session, args.email)
        key = issue_api_key(session=session, user=user, revoke_existing=not args.keep)
        return {"id": user.id, "email": user.email, "api_key": key}

    _print(_write(settings, work))


def cmd_user_list(settings: Settings, args: argparse.Namespace) -> None:
    _print(_write(settings, lambda session: [user_json(u) for u in list_users(session=session)]))


def cmd_group_create(settings: Settings, args: argparse.Namespace) -> None:
    def work(session: Session) -> dict[str, Any]:
        owner = _owner(session, args.owner)
        group = create_group(
            session=session, owner=owner, name=args.name, parent_id=args.parent, chip=args.chip
        )
        return group_json(group, owner)

    _print(_write(settings, work))


def cmd_group_list(settings: Settings, args: argparse.Namespace) -> None:
    def work(session: Session) -> list[dict[str, Any]]:
        owner = _owner(session, args.owner) if args.owner else None
        owners = {u.id: u for u in list_users(session=session)}
        return [
            group_json(g, owners.get(g.owner_id))
            for g in list_groups(session=session, owner_id=owner.id if owner else None)
        ]

    _print(_write(settings, work))


def _group(session: Session, group_id: str) -> Group:
    group = session.get(Group, group_id)
    if group is None:
        raise CommandError(f"no group {group_id}")
    return group


def cmd_device_create(settings: Settings, args: argparse.Namespace) -> None:
    def work(session: Session) -> dict[str, Any]:
        group = _group(session, args.group)
        device = create_device(
            session=session, group=group, name=args.name,
            firmware_version=args.firmware_version, device_id=args.id,
        )
        return device_json(device)

    _print(_write(settings, work))


def cmd_device_list(settings: Settings, args: argparse.Namespace) -> None:
    def work(session: Session) -> list[dict[str, Any]]:
        if args.group:
            _group(session, args.group)
        return [device_json(d) for d in list_devices(session=session, group_id=args.group)]

    _print(_write(settings, work))


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    from otaship.receiver.db.engine import create_db_engine, migrate

    engine = create_db_engine(settings.resolved_database_url)
    try:
        print(migrate(engine).describe())
    finally:
        engine.dispose()


def cmd_gc(settings: Settings, args: argparse.Namespace) -> None:
    from sqlalchemy.engine import make_url

    from otaship.receiver.db.engine import create_db_engine, ensure_schema
    from otaship.receiver.gc.sweep import sweep_orphans
    from otaship.receiver.storage import create_storage

    url = settings.resolved_database_url
    parsed = make_url(url)
    # An empty database references nothing: every object would look orphaned.
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        raise CommandError(
            f"no database at {parsed.database}: set OTASHIP_DATA_DIR or OTASHIP_DATABASE_URL as for serve"
        )
    grace = settings.gc_grace if args.grace is None else args.grace
    engine = create_db_engine(url)
    storage = create_storage(settings.resolved_storage_url, cache_dir=settings.cache_dir)
    try:
        ensure_schema(engine)
        result = sweep_orphans(storage=storage, engine=engine, grace=grace, dry_run=args.dry_run)
    finally:
        storage.close()
        engine.dispose()
    for obj in result.plan.remove if args.dry_run else result.removed:
        print(f"{'would remove' if args.dry_run else 'removed'} {obj.key} ({obj.size} bytes)")
    print(result.describe())
    if result.failed:
        raise CommandError(
            "; ".join(f"could not remove {key}: {error}" for key, error in result.failed)
        )


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from otaship.receiver.app import create_app

    settings = settings.with_overrides(
        host=args.host or settings.host, port=args.port if args.port is not None else settings.port
    )
    _check_embedded_broker_port(settings)
    _check_schema(settings)
    from otaship.receiver.logs import configure_logging

    configure_logging(settings)
    # log_config=None: uvicorn's own loggers keep the handler configure_logging
    # installed. No access_log: the receiver writes its own, with the group
    # token redacted from download URLs.
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port,
        log_level=settings.log_level, log_config=None, access_log=False, proxy_headers=True,
    )


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
            raise CommandError(f"cannot start the embedded MQTT broker on {address.host}:{address.port}: {exc}") from None


def _check_schema(settings: Settings) -> None:
    """Refuse to start on a shared database whose schema is not this version's.

    The app checks again at startup; this one fails before uvicorn logs a
    traceback, with the one-line message that says to run `otaship migrate`.
    """
    from otaship.receiver.db.engine import create_db_engine, ensure_schema

    engine = create_db_engine(settings.resolved_database_url)
    try:
        ensure_schema(engine)
    finally:
        engine.dispose()


def _seconds(raw: str) -> float:
    if not raw.isascii() or not raw.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds, not {raw!r}")
    return float(raw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otaship",
        description="otaship receiver: IoTaaP Group OTA API, device endpoints and staged rollouts.",
        epilog="Configuration comes from OTASHIP_* environment variables (see the README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the receiver")
    serve.add_argument("--host", help="address to bind (default: OTASHIP_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: OTASHIP_PORT or 8080)")
    serve.set_defaults(run=cmd_serve)

    migrate = commands.add_parser(
        "migrate", help="bring the database schema up to date (run before serve on PostgreSQL)"
    )
    migrate.set_defaults(run=cmd_migrate)

    gc = commands.add_parser(
        "gc", help="remove stored firmware objects that no record references",
        description="Remove firmware objects that no OTA, deploy history or rollout references "
        "and that are older than the grace period (OTASHIP_GC_GRACE).",
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    gc.add_argument(
        "--grace", type=_seconds, metavar="SECONDS",
        help="override OTASHIP_GC_GRACE; below the servers' setting it is safe only while no upload runs",
    )
    gc.set_defaults(run=cmd_gc)

    user = commands.add_parser("user", help="manage users").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    p = user.add_parser("create", help="create a user; prints its API key and MQTT password once")
    p.add_argument("email")
    p.add_argument("--plan", choices=PLANS, default="free")
    p.set_defaults(run=cmd_user_create)
    p = user.add_parser("key", help="issue a new API key (revokes the old ones unless --keep)")
    p.add_argument("email")
    p.add_argument("--keep", action="store_true", help="keep existing keys valid")
    p.set_defaults(run=cmd_user_key)
    p = user.add_parser("list", help="list users")
    p.set_defaults(run=cmd_user_list)

    group = commands.add_parser("group", help="manage groups").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    p = group.add_parser("create", help="create a group (or a subgroup with --parent)")
    p.add_argument("name")
    p.add_argument("--owner", required=True, metavar="EMAIL")
    p.add_argument("--parent", metavar="GROUP_ID")
    p.add_argument("--chip", choices=KNOWN_CHIPS)
    p.set_defaults(run=cmd_group_create)
    p = group.add_parser("list", help="list groups")
    p.add_argument("--owner", metavar="EMAIL")
    p.set_defaults(run=cmd_group_list)

    device = commands.add_parser("device", help="manage devices").add_subparsers(
        dest="verb", required=True, metavar="VERB"
    )
    p = device.add_parser("create", help="register a device in a group")
    p.add_argument("name")
    p.add_argument("--group", required=True, metavar="GROUP_ID")
    p.add_argument("--firmware-version", metavar="X")
    p.add_argument("--id", metavar="DEVICE_ID", help="the id the device uses (default: generated)")
    p.set_defaults(run=cmd_device_create)
    p = device.add_parser("list", help="list devices")
    p.add_argument("--group", metavar="GROUP_ID")
    p.set_defaults(run=cmd_device_list)

    from otaship.simulator import cli as simulate

    simulate.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    redact_unconfigured_logs()
    try:
        settings = Settings.from_env()
        args.run(settings, args)
    except (CommandError, UserError, GroupError, DeviceError, SettingsError, SchemaError, StorageError) as exc:
        print(redact(f"otaship: error: {exc}"), file=sys.stderr)
        return EXIT_ERROR
    except SQLAlchemyError as exc:
        print(redact(f"otaship: database error: {str(exc).splitlines()[0]}"), file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
