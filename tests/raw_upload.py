"""A POST /v1/ota/group written by hand over a socket, to stop wherever a test
likes: a stalled, trickling or oversized upload against a real `otaship serve`;
and owners with a group each, written straight into its database."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from otaship.receiver.db.engine import create_db_engine, ensure_schema, write_session
from otaship.receiver.db.groups import create_group
from otaship.receiver.db.users import create_user
from tests import multipart


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class RawUpload:
    """A POST written by hand, to stop wherever we like: chunked, or with a
    `content_length` that the bytes sent need not reach."""

    url: str
    api_key: str
    content_length: int | None = None
    sock: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.sendall(
            (
                "POST /v1/ota/group HTTP/1.1\r\n"
                f"Host: {host}\r\n"
                f"Authorization: Bearer {self.api_key}\r\n"
                f"Content-Type: {multipart.CONTENT_TYPE}\r\n"
                + (
                    "Transfer-Encoding: chunked\r\n\r\n"
                    if self.content_length is None
                    else f"Content-Length: {self.content_length}\r\n\r\n"
                )
            ).encode()
        )

    def send(self, data: bytes) -> None:
        if self.content_length is None:
            data = f"{len(data):x}\r\n".encode() + data + b"\r\n"
        self.sock.sendall(data)

    def answer(self, timeout: float) -> Answer:
        self.sock.settimeout(timeout)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"the server closed the connection without an answer: {data!r}")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        while len(body) < int(headers.get("content-length", "0")):
            body += self.sock.recv(65536)
        return Answer(int(status_line.split()[1]), headers, body)

    def closed_by_server(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@dataclass
class Tenant:
    api_key: str
    group_id: str
    token: str

    def fields(self, version: str) -> dict[str, str]:
        return {"group": self.group_id, "token": self.token, "version": version}


def tenants_in(database_url: str, names: tuple[str, ...]) -> dict[str, Tenant]:
    """Owners and their groups, written straight into the server's database (as the CLI would)."""
    engine = create_db_engine(database_url)
    try:
        ensure_schema(engine)
        tenants = {}
        for name in names:
            with write_session(engine) as session:
                created = create_user(session=session, email=f"{name}@example.com", plan="pro")
                group = create_group(session=session, owner=created.user, name=name)
                tenants[name] = Tenant(created.api_key, group.id, group.token)
        return tenants
    finally:
        engine.dispose()
