"""Firmware images by SHA-256: recorded once, by whichever deploy stores them first."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, update

from otaship.receiver.db.models import FirmwareImage
from otaship.receiver.db.signing_keys import record_signers


def _insert_if_absent(session: Session, values: dict[str, object]) -> Insert:
    # Two deploys of new bytes to groups of different trees do not share a
    # lock: the second one's insert must find the row, not fail on its key.
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return (
            postgresql.insert(FirmwareImage).values(values).on_conflict_do_nothing(index_elements=["sha256"])
        )
    if dialect == "sqlite":
        return sqlite.insert(FirmwareImage).values(values).on_conflict_do_nothing(index_elements=["sha256"])
    # Unreachable today: Settings accepts only SQLite and PostgreSQL URLs
    # (settings.DATABASE_SCHEMES). A new database must add its form above, or a
    # deploy of new bytes could fail on the key instead of sharing the row.
    raise NotImplementedError(f"no insert-if-absent for {dialect}")


def record_image(
    *,
    session: Session,
    now: datetime,
    sha256: str,
    size: int,
    md5: str,
    object_key: str,
    chip: str | None = None,
    project_name: str | None = None,
    app_version: str | None = None,
    idf_ver: str | None = None,
    secure_version: int | None = None,
    signers: Sequence[str] = (),
) -> FirmwareImage:
    """The image row of these bytes, recorded at `now` if it is new.

    An image known only from deploy history before images had a table has no
    chip or descriptor: the first deploy that knows them fills them in.
    `signers`: the keys whose signature blocks an upload verified over it."""
    described = {
        "chip": chip,
        "project_name": project_name,
        "app_version": app_version,
        "idf_ver": idf_ver,
        "secure_version": secure_version,
    }
    session.execute(
        _insert_if_absent(
            session,
            {
                "sha256": sha256,
                "size": size,
                "md5": md5,
                "object_key": object_key,
                "created_at": now,
                **described,
            },
        )
    )
    if chip is not None:
        session.execute(
            update(FirmwareImage)
            .where(col(FirmwareImage.sha256) == sha256, col(FirmwareImage.chip).is_(None))
            .values(described)
        )
    record_signers(session=session, sha256=sha256, digests=signers)
    image = session.get(FirmwareImage, sha256, populate_existing=True)
    assert image is not None
    return image
