"""The simulated devices' HTTP client: GET over a few kept-alive HTTP/1.1 connections.

A big simulation is bound by the simulator's own CPU, and over half of it went
to HTTP when the devices used httpx: httpcore's pool does bookkeeping in
proportion to its size on every request (encode/httpcore#1035), and anyio's
socket wrappers cost more per read than the bytes they carry. A device asks
two things, `latest` and the image, with GET, and follows no redirect; this
speaks just that, on asyncio's streams: HTTP/1.1 over http or https,
Content-Length, chunked or close-delimited bodies, and keep-alive.

Concurrency is capped by the number of connections: a request waits for one
(no timeout on that wait, as httpx's `pool=None` had it). Every step of a
request (connect, write, each read) gets `timeout` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

# Big reads: a 1.5 MiB image in a few chunks, not in 64 KiB ones.
_BUFFER = 1 << 20
_MAX_HEAD = 64 * 1024
_NO_BODY = (204, 304)


class HttpError(Exception):
    """The request failed: no connection, a timeout, or an answer that is not HTTP/1.1 as it should be."""


@dataclass(frozen=True)
class Response:
    status: int
    # Lower-case names; a repeated header keeps its last value.
    headers: Mapping[str, str]


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = False  # it answered a request before

    @property
    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


class HttpClient:
    """GET requests to one server (scheme, host and port of `base_url`), at most `connections` at once."""

    def __init__(self, base_url: str, *, connections: int, timeout: float) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if url.scheme == "https" else None
        default_port = self.port == (443 if url.scheme == "https" else 80)
        self.host_header = url.netloc.rpartition("@")[2] if not default_port else self.host
        self.timeout = timeout
        self.slots = asyncio.Semaphore(connections)
        self.idle: list[_Connection] = []
        self.open: set[_Connection] = set()

    async def get(self, target: str, headers: Mapping[str, str] | None = None) -> tuple[Response, bytes]:
        """The whole answer to GET `target` (a path): its status and headers, and its body."""
        async with self.stream(target, headers) as (response, body):
            return response, b"".join([chunk async for chunk in body])

    @contextlib.asynccontextmanager
    async def stream(
        self, target: str, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[tuple[Response, AsyncIterator[bytes]]]:
        """GET `target`; the body arrives in chunks as it is read. A body left unread closes the connection."""
        async with self.slots:
            connection, response = await self._send(target, headers or {})
            try:
                body = _Body(self, connection, response)
            except HttpError:
                self._discard(connection)
                raise
            try:
                yield response, body.chunks()
            finally:
                if body.finished and body.reusable and connection.usable:
                    self.idle.append(connection)
                else:
                    self._discard(connection)

    async def aclose(self) -> None:
        for connection in list(self.open):
            self._discard(connection)
        self.idle.clear()

    # -- internals -------------------------------------------------------------------

    def _discard(self, connection: _Connection) -> None:
        self.open.discard(connection)
        connection.close()

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.ssl, limit=_BUFFER
                )
        except (OSError, TimeoutError) as exc:
            raise HttpError(f"cannot connect to {self.host}:{self.port}: {exc!r}") from exc
        connection = _Connection(reader, writer)
        self.open.add(connection)
        return connection

    def _reused(self) -> _Connection | None:
        while self.idle:
            connection = self.idle.pop()
            if connection.usable:
                return connection
            self._discard(connection)
        return None

    async def _send(self, target: str, headers: Mapping[str, str]) -> tuple[_Connection, Response]:
        lines = [f"GET {target} HTTP/1.1", f"Host: {self.host_header}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        connection = self._reused()
        if connection is not None:
            try:
                return connection, await self._exchange(connection, request)
            except _ClosedBeforeAnswer:
                # A kept-alive connection the server closed meanwhile: once more, on a new one.
                self._discard(connection)
        connection = await self._connect()
        try:
            return connection, await self._exchange(connection, request)
        except _ClosedBeforeAnswer as exc:
            self._discard(connection)
            raise HttpError("the server closed the connection without an answer") from exc
        except BaseException:
            self._discard(connection)
            raise

    async def _exchange(self, connection: _Connection, request: bytes) -> Response:
        try:
            async with asyncio.timeout(self.timeout):
                connection.writer.write(request)
                await connection.writer.drain()
                head = await connection.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _ClosedBeforeAnswer from exc
            raise HttpError("the answer ended inside its head") from exc
        except asyncio.LimitOverrunError as exc:
            raise HttpError("the answer's head is too long") from exc
        except ConnectionError as exc:
            raise _ClosedBeforeAnswer from exc
        except (OSError, TimeoutError) as exc:
            raise HttpError(f"no answer: {exc!r}") from exc
        connection.used = True
        return parse_head(head)


class _ClosedBeforeAnswer(Exception):
    pass


def parse_head(head: bytes) -> Response:
    """The status line and headers of an HTTP/1.x answer (`head` ends with the blank line)."""
    if len(head) > _MAX_HEAD:
        raise HttpError("the answer's head is too long")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest.partition(" ")[0]
    if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise HttpError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers: dict[str, str] = {"": version}
    for line in header_lines:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HttpError(f"bad header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return Response(int(code), headers)


class _Body:
    """One answer's body, framed by Content-Length, chunked encoding, or the end of the connection."""

    def __init__(self, client: HttpClient, connection: _Connection, response: Response) -> None:
        self.client = client
        self.reader = connection.reader
        self.response = response
        headers = response.headers
        version = headers.get("", "HTTP/1.1")
        connection_header = headers.get("connection", "").lower()
        self.reusable = (version == "HTTP/1.1" and "close" not in connection_header) or (
            version == "HTTP/1.0" and "keep-alive" in connection_header
        )
        self.finished = False
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.length: int | None = None
        if response.status in _NO_BODY or 100 <= response.status < 200:
            self.length = 0
        elif not self.chunked and "content-length" in headers:
            try:
                self.length = int(headers["content-length"])
            except ValueError as exc:
                raise HttpError(f"bad Content-Length {headers['content-length']!r}") from exc
            if self.length < 0:
                raise HttpError(f"bad Content-Length {headers['content-length']!r}")
        elif not self.chunked:
            self.reusable = False  # the end of the connection ends the body
        self.finished = self.length == 0

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.finished:
            return
        try:
            if self.chunked:
                async for chunk in self._chunked():
                    yield chunk
            elif self.length is not None:
                left = self.length
                while left:
                    chunk = await self._read(min(left, _BUFFER))
                    if not chunk:
                        raise HttpError(f"the body ended after {self.length - left} of {self.length} bytes")
                    left -= len(chunk)
                    yield chunk
            else:
                while chunk := await self._read(_BUFFER):
                    yield chunk
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise HttpError(f"the body ended early: {exc!r}") from exc
        except (OSError, TimeoutError) as exc:
            raise HttpError(f"reading the body: {exc!r}") from exc
        self.finished = True

    async def _read(self, size: int) -> bytes:
        async with asyncio.timeout(self.client.timeout):
            return await self.reader.read(size)

    async def _chunked(self) -> AsyncIterator[bytes]:
        timeout = self.client.timeout
        while True:
            async with asyncio.timeout(timeout):
                size_line = await self.reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise HttpError(f"bad chunk size {size_line[:40]!r}") from exc
            if size == 0:
                # Trailers, up to the blank line.
                while True:
                    async with asyncio.timeout(timeout):
                        if await self.reader.readuntil(b"\r\n") == b"\r\n":
                            return
            async with asyncio.timeout(timeout):
                data = await self.reader.readexactly(size + 2)
            if data[-2:] != b"\r\n":
                raise HttpError("a chunk does not end with CRLF")
            yield data[:-2]
