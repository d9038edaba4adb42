"""Devices: what each one last reported."""

from __future__ import annotations

import re

from sqlmodel import Session, select

from otaship.receiver.db.models import Device, Group

# Device ids travel inside MQTT topics: no wildcards, separators or spaces.
DEVICE_ID_PATTERN = r"[A-Za-z0-9_.:-]{1,64}"
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)


class DeviceError(ValueError):
    """A device operation was refused; the message is for the operator."""


def create_device(
    *,
    session: Session,
    group: Group,
    name: str,
    firmware_version: str | None = None,
    device_id: str | None = None,
) -> Device:
    name = name.strip()
    if not name:
        raise DeviceError("a device needs a name")
    device = Device(owner_id=group.owner_id, group_id=group.id, name=name, firmware_version=firmware_version)
    if device_id is not None:
        if not _DEVICE_ID.fullmatch(device_id):
            raise DeviceError(
                f"device id {device_id!r} is not valid: use 1-64 letters, digits, '_', '.', ':' or '-'"
            )
        if session.get(Device, device_id) is not None:
            raise DeviceError(f"a device with id {device_id} already exists")
        device.id = device_id
    session.add(device)
    session.flush()
    return device


def list_devices(*, session: Session, group_id: str | None = None) -> list[Device]:
    query = select(Device).order_by(Device.created_at, Device.id)  # type: ignore[arg-type]
    if group_id is not None:
        query = query.where(Device.group_id == group_id)
    return list(session.exec(query))


def device_json(device: Device) -> dict[str, object]:
    return {
        "id": device.id,
        "name": device.name,
        "group": device.group_id,
        "firmware_version": device.firmware_version,
    }
