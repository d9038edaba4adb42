"""A group's signing keys: its own and its ancestors', which its firmware must be signed by.

A subgroup takes every key of its ancestors and may add its own; it can never
remove an ancestor's. An image's signers (the registered keys whose signature
blocks verified over it at an upload) are recorded once per image, so that a
deploy of an already stored image (a promotion) is checked against the keys
the group has at that moment without reading the image again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from otaship.firmware.signing_keys import InvalidKey, PublicKey, Scheme, check_fits_chip
from otaship.receiver.db.groups import ancestors, descendants
from otaship.receiver.db.models import Group, ImageSigner, SigningKey

MAX_NAME_LENGTH = 200


class SigningKeyError(ValueError):
    """A key operation was refused; the message is for the user."""


class NotSignedForGroup(Exception):
    """A deploy of an image that no key of the group signed; the message says so."""


@dataclass(frozen=True)
class GroupKey:
    key: SigningKey
    # The ancestor the key belongs to; None for the group's own.
    inherited_from: str | None


def group_keys(*, session: Session, group: Group) -> list[GroupKey]:
    """The keys a deploy to `group` must be signed by: the farthest ancestor's first."""
    chain = [*reversed(ancestors(session=session, group=group)), group]
    rows = session.exec(select(SigningKey).where(col(SigningKey.group_id).in_([g.id for g in chain]))).all()
    order = {g.id: index for index, g in enumerate(chain)}
    ordered = sorted(rows, key=lambda key: (order[key.group_id], key.created_at, key.id))
    return [
        GroupKey(key=key, inherited_from=None if key.group_id == group.id else key.group_id)
        for key in ordered
    ]


def public_keys(keys: list[GroupKey]) -> list[PublicKey]:
    return [PublicKey(pem=k.key.public_key, scheme=Scheme(k.key.scheme), digest=k.key.digest) for k in keys]


def add_key(*, session: Session, group: Group, key: PublicKey, name: str | None, now: datetime) -> SigningKey:
    """Register `key` for `group` (and so its subgroups). Raises SigningKeyError."""
    name = (name or "").strip() or f"{key.scheme} {key.digest[:12]}"
    if len(name) > MAX_NAME_LENGTH:
        raise SigningKeyError(f"a key's name is at most {MAX_NAME_LENGTH} characters")
    # Every group that will check images against it: the group and its subgroups.
    for checked in (group, *descendants(session=session, group=group)):
        try:
            check_fits_chip(key.scheme, checked.chip)
        except InvalidKey as exc:
            where = "" if checked.id == group.id else f" (subgroup {checked.id})"
            raise SigningKeyError(f"{exc}{where}") from None
    for existing in group_keys(session=session, group=group):
        if existing.key.digest == key.digest:
            owner = existing.inherited_from or group.id
            raise SigningKeyError(
                f"this key (digest {key.digest}) is already registered for group {owner} "
                f"as {existing.key.name!r}"
            )
    row = SigningKey(
        group_id=group.id,
        owner_id=group.owner_id,
        name=name,
        scheme=key.scheme,
        digest=key.digest,
        public_key=key.pem,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row


def remove_key(*, session: Session, group: Group, ref: str) -> SigningKey:
    """Remove the group's own key named by `ref` (its id or digest). Raises
    LookupError when the group has no such key, SigningKeyError when it is an ancestor's."""
    ref = ref.strip().lower()
    for found in group_keys(session=session, group=group):
        if ref not in (found.key.id, found.key.digest):
            continue
        if found.inherited_from is not None:
            raise SigningKeyError(
                f"key {found.key.id} belongs to group {found.inherited_from}, an ancestor of this one: "
                "a subgroup cannot remove its ancestors' keys; remove it from that group"
            )
        session.delete(found.key)
        session.flush()
        return found.key
    raise LookupError(ref)


def _insert_signer(session: Session, sha256: str, digest: str) -> Insert:
    values = {"sha256": sha256, "key_digest": digest}
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(ImageSigner).values(values).on_conflict_do_nothing()
    return sqlite.insert(ImageSigner).values(values).on_conflict_do_nothing()


def record_signers(*, session: Session, sha256: str, digests: Sequence[str]) -> None:
    """Remember that blocks by these keys verified over the image (its row exists)."""
    for digest in digests:
        session.execute(_insert_signer(session, sha256, digest))


def signed_by(*, session: Session, group: Group, sha256: str) -> str | None:
    """The digest of the group's first key that signed the image (None if the
    group has no key). Raises NotSignedForGroup when it has keys and none signed it."""
    keys = group_keys(session=session, group=group)
    if not keys:
        return None
    signers = set(session.exec(select(ImageSigner.key_digest).where(col(ImageSigner.sha256) == sha256)).all())
    for found in keys:
        if found.key.digest in signers:
            return found.key.digest
    raise NotSignedForGroup(
        f"the image {sha256[:12]} is not signed by any key group {group.id} has now "
        f"({', '.join(k.key.digest for k in keys)}); upload it again signed by one of them"
    )
