"""The devices' HTTP client against a real socket server that answers in each framing HTTP allows."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from otaship.simulator.http import HttpClient, HttpError, parse_head

Answer = Callable[[bytes], bytes | None]  # request head -> raw answer (None: close without one)


class Server:
    """Answers each request on a connection with `answer(head)`; counts connections and requests."""

    def __init__(self, answer: Answer, *, close_after: int | None = None) -> None:
        self.answer = answer
        self.close_after = close_after  # requests per connection before the server closes it
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/prefix"

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        served = 0
        try:
            while self.close_after is None or served < self.close_after:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                raw = self.answer(head)
                if raw is None:
                    break
                writer.write(raw)
                await writer.drain()
                served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def run(answer: Answer, scenario: Callable[[HttpClient, Server], Awaitable[None]], **server: int) -> Server:
    async def main() -> Server:
        async with Server(answer, **server) as running:
            client = HttpClient(running.url, connections=2, timeout=2.0)
            try:
                await scenario(client, running)
            finally:
                await client.aclose()
            return running

    return asyncio.run(main())


def ok(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_requests_go_out_as_a_device_sends_them_on_one_kept_alive_connection() -> None:
    async def scenario(client: HttpClient, server: Server) -> None:
        for n in range(3):
            response, body = await client.get("/prefix/latest", {"User-Agent": "ESP32HTTPClient"})
            assert (response.status, body) == (200, b'{"ver":"1.0.0"}'), n
            assert response.headers["content-type"] == "application/json"

    server = run(lambda _: ok(b'{"ver":"1.0.0"}', "Content-Type: application/json"), scenario)
    assert server.connections == 1
    assert server.requests[0] == (
        f"GET /prefix/latest HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUser-Agent: ESP32HTTPClient\r\n\r\n".encode()
    )


def test_chunked_and_close_delimited_bodies() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nA: b\r\n\r\n"
    closed = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"

    async def both(client: HttpClient, _server: Server) -> None:
        assert (await client.get("/c"))[1] == b"hello world"
        assert (await client.get("/c"))[1] == b"hello world"  # the same connection, after the trailer

    assert run(lambda _: chunked, both).connections == 1

    async def until_close(client: HttpClient, _server: Server) -> None:
        response, body = await client.get("/e")
        assert (response.status, body) == (200, b"until the end")

    run(lambda _: closed, until_close, close_after=1)


def test_a_body_read_in_chunks_and_one_left_unread() -> None:
    image = bytes(range(256)) * 4096  # 1 MiB

    async def scenario(client: HttpClient, server: Server) -> None:
        async with client.stream("/image") as (response, chunks):
            assert response.headers["content-length"] == str(len(image))
            received = b"".join([chunk async for chunk in chunks])
        assert received == image
        # Left unread: that connection cannot carry another answer, so it is closed.
        async with client.stream("/image") as (response, _chunks):
            assert response.status == 200
        assert (await client.get("/image"))[1] == image
        assert server.connections == 2

    run(lambda _: ok(image), scenario)


def test_a_kept_alive_connection_the_server_closed_is_replaced() -> None:
    async def scenario(client: HttpClient, server: Server) -> None:
        for _ in range(3):
            assert (await client.get("/x"))[1] == b"x"
        assert server.connections == 3

    run(lambda _: ok(b"x"), scenario, close_after=1)


def test_broken_answers_are_http_errors() -> None:
    cases: dict[bytes, str] = {
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort": "the body ended after 5 of 10 bytes",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n": "bad Content-Length 'ten'",
        b"SSH-2.0-OpenSSH\r\n\r\n": "not an HTTP/1.x status line",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n": "bad header line 'no colon'",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n": "bad chunk size",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd": "a chunk does not end with CRLF",
        b"HTTP/1.1 200": "the answer ended inside its head",
    }
    for raw, message in cases.items():
        errors: list[HttpError] = []

        async def scenario(client: HttpClient, _server: Server, errors: list[HttpError] = errors) -> None:
            with pytest.raises(HttpError) as raised:
                await client.get("/broken")
            errors.append(raised.value)

        run(lambda _, raw=raw: raw, scenario, close_after=1)  # type: ignore[misc]
        assert message in str(errors[0]), (raw, errors)

    async def nothing(client: HttpClient, _server: Server) -> None:
        with pytest.raises(HttpError, match="closed the connection without an answer"):
            await client.get("/silent")

    run(lambda _: None, nothing)


def test_a_silent_server_times_out_and_a_closed_port_does_not_connect() -> None:
    async def scenario() -> None:
        silent: list[asyncio.StreamWriter] = []
        server = await asyncio.start_server(lambda _r, writer: silent.append(writer), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            client = HttpClient(f"http://127.0.0.1:{port}", connections=1, timeout=0.3)
            with pytest.raises(HttpError, match="no answer: TimeoutError"):
                await client.get("/slow")
            await client.aclose()
        finally:
            server.close()
            for writer in silent:
                writer.close()
            await server.wait_closed()
        closed = HttpClient(f"http://127.0.0.1:{port}", connections=1, timeout=1)
        with pytest.raises(HttpError, match=f"cannot connect to 127.0.0.1:{port}"):
            await closed.get("/")

    asyncio.run(scenario())


def test_heads_parse_strictly() -> None:
    response = parse_head(b"HTTP/1.0 404 Not Found\r\nX-MD5:  abc \r\nx-md5: def\r\n\r\n")
    assert response.status == 404
    assert response.headers["x-md5"] == "def"
    assert response.headers[""] == "HTTP/1.0"
    for bad in (b"HTTP/2 200\r\n\r\n", b"HTTP/1.1 20x OK\r\n\r\n", b"HTTP/1.1 200\r\n Folded: x\r\n\r\n"):
        with pytest.raises(HttpError):
            parse_head(bad)
    with pytest.raises(ValueError, match="not an http"):
        HttpClient("ftp://x", connections=1, timeout=1)
