"""The embedded MQTT broker: amqtt (MQTT 3.1.1) inside the receiver's event loop.

Device owners log in with their ``mqtt_user`` / ``mqtt_password`` and may publish,
subscribe and receive only under ``/<mqtt_user>/``. The receiver's own client logs in
with credentials made for this process and may use every topic.

The TCP listener is ours, handed to amqtt as an "external" listener. Each connection's
CONNECT is read and its credentials checked *before* amqtt sees it, because amqtt
acts on a CONNECT before authenticating it: it drops the existing session of that
client id, copies the new user name onto a persistent session, and keeps every
refused session in memory for good. A refused login therefore never reaches amqtt.
``_GuardedReader`` adds the packet size limit, CONNECT deadline and keep-alive that
amqtt lacks, and owning the socket turns a taken port into ``BrokerPortInUse``.

Topic rules go through amqtt's plugin mechanism: a topic plugin for publish, subscribe
and receive, next to an auth plugin that replaces amqtt's anonymous-friendly default.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqtt.adapters import BufferReader, ReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action, BaseContext, BrokerConfig, ListenerConfig, ListenerType
from amqtt.mqtt.connect import ConnectPacket
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from otaship.protocol import TOPIC_UNSAFE, owner_prefix, usable_in_topic
from otaship.receiver.ids import secret_matches_plain
from otaship.receiver.log_summary import Throttle, seconds_text
from otaship.receiver.mqtt.remembered_logins import RememberedLogins
from otaship.receiver.threads import in_thread

logger = logging.getLogger(__name__)

# Device messages are small JSON documents and firmware travels over HTTP, so 256 KiB
# is generous. Without a limit amqtt buffers whatever a header announces (up to 256 MB).
DEFAULT_MAX_PACKET_BYTES = 256 * 1024

_LISTENER = "default"
# Seconds stop() gives connection handlers to notice their session was closed.
_STOP_GRACE_SECONDS = 5.0
# Seconds a new connection has to send its CONNECT packet.
DEFAULT_CONNECT_TIMEOUT = 10.0
_CONNECT = 1
_PUBLISH = 3
# MQTT 3.1.1 CONNACK "not authorized", what amqtt and Mosquitto send on a bad login.
_CONNACK_NOT_AUTHORIZED = bytes([0x20, 0x02, 0x00, 0x05])
# Refused logins with a line of their own per minute; the others are counted in
# one line a minute, so that a flood of bad logins cannot fill the disk.
REFUSALS_LOGGED_PER_MINUTE = 20
# Characters of a refused user name or client id shown: they are whatever the client sent.
_USERNAME_SHOWN = 64

# Why a login was refused, as its log line says.
NO_CREDENTIALS = "no user name or password"
BAD_CREDENTIALS = "unknown user name or wrong password"
STORE_FAILED = "the credentials could not be checked"
BAD_WILL = "its will topic is outside the user's topics"
CLIENT_ID_TAKEN = "its client id belongs to another owner"


def refusal_line(username: str | None, client_id: str | None, peer: str, reason: str) -> str:
    """The line of a refused login (pure). Never the password: only the name the
    client gave, cut short, and the reason."""
    user = repr(username[:_USERNAME_SHOWN]) if username else "-"
    client = repr(client_id[:_USERNAME_SHOWN]) if client_id else "-"
    return f"refused MQTT login: user={user} client_id={client} peer={peer}; reason: {reason}"


class BrokerPortInUse(RuntimeError):
    """The embedded broker's address is taken by another process."""

    def __init__(self, host: str, port: int) -> None:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        next_address = f"[{host}]:{port + 1}" if ":" in host else f"{host}:{port + 1}"
        super().__init__(
            f"Cannot start the embedded MQTT broker: {address} is already in use. "
            "Stop whatever listens there, pick another port with "
            f"OTASHIP_MQTT_URL=embedded://{next_address}, or use an external broker with "
            "OTASHIP_MQTT_URL=mqtt://user:pass@host:1883."
        )
        self.host = host
        self.port = port


def owner_may_use(username: str, topic: str) -> bool:
    """Whether device owner ``username`` may use ``topic``, a topic name or a filter.

    Everything must stay under ``/<username>/``. Wildcards are fine after that
    prefix (``/alice/#``) but not in it, so ``#``, ``/+/...`` and ``/bob/#`` are
    refused to alice.
    """
    # A user name holding a separator or wildcard could widen "/<user>/" into someone else's topics.
    if not usable_in_topic(username):
        return False
    return topic.startswith(owner_prefix(username))


class _Gatekeeper:
    """Decides who logs in and which topics they may use.

    ``login`` runs on the raw CONNECT, before amqtt sees it. Since only CONNECTs it
    accepted reach amqtt, the user name amqtt puts on a session is a proven one, and
    the plugins can rely on it.

    A client id belongs to one owner at a time: the owner of its open connections,
    or of the persistent session amqtt keeps for it (amqtt never expires those).
    Otherwise one owner reusing another's client id would kick that device off, or
    inherit its subscriptions and queued messages.
    """

    def __init__(
        self,
        authenticate: Callable[[str, str], bool],
        internal_username: str,
        internal_password: str,
    ) -> None:
        self._authenticate = authenticate
        self._internal_username = internal_username
        self._internal_password = internal_password
        self._connected: dict[str, tuple[str, int]] = {}  # client id: owner, open connections
        self._remembered = RememberedLogins()
        self._persistent: dict[str, str] = {}  # client id: owner
        self.refusals = Throttle(REFUSALS_LOGGED_PER_MINUTE)

    async def login(self, connect: ConnectPacket, peer: str = "unknown peer") -> str | None:
        """The user name a CONNECT proves, or None to refuse it (and say why in the log).

        An accepted login holds its client id until ``logout``.
        """
        username: str | None = connect.username if connect.username_flag else None
        password: str | None = connect.password if connect.password_flag else None
        client_id: str | None = connect.client_id
        refusal = await self._refusal(connect, username, password, client_id)
        if refusal is not None:
            if self.refusals.allow():
                logger.info(
                    refusal_line(username, client_id, peer, refusal),
                    extra={
                        "event": "mqtt_login_refused",
                        "user": username[:_USERNAME_SHOWN] if username else None,
                        "peer": peer,
                        "reason": refusal,
                    },
                )
            return None
        assert username is not None
        if not client_id:
            return username  # amqtt makes up a fresh one
        _owner, connections = self._connected.get(client_id, (username, 0))
        self._connected[client_id] = (username, connections + 1)
        if not connect.clean_session_flag:
            self._persistent[client_id] = username
        return username

    async def _refusal(
        self, connect: ConnectPacket, username: str | None, password: str | None, client_id: str | None
    ) -> str | None:
        """Why the login must be refused; None to accept it."""
        if not username or password is None:
            return NO_CREDENTIALS
        valid = await self._credentials_valid(username, password)
        if valid is None:
            return STORE_FAILED
        if not valid:
            return BAD_CREDENTIALS
        # amqtt publishes a will without checking its topic: check it here.
        if connect.will_flag and not self._may_use(username, connect.will_topic or ""):
            return BAD_WILL
        if client_id:
            owner, _connections = self._connected.get(client_id, (username, 0))
            if owner != username or self._persistent.get(client_id, username) != username:
                return CLIENT_ID_TAKEN
        return None

    def write_summary(self, seconds: float) -> None:
        """The refused logins that got no line of their own, counted in one."""
        held = self.refusals.take_held()
        if held:
            logger.info(
                "refused %d more MQTT login(s) in the last %s without a line each (at most %d lines a minute)",
                held,
                seconds_text(seconds),
                REFUSALS_LOGGED_PER_MINUTE,
                extra={"event": "mqtt_logins_refused", "count": held},
            )

    def logout(self, connect: ConnectPacket) -> None:
        client_id = connect.client_id
        if not client_id or client_id not in self._connected:
            return
        owner, connections = self._connected[client_id]
        if connections > 1:
            self._connected[client_id] = (owner, connections - 1)
        else:
            del self._connected[client_id]

    async def _credentials_valid(self, username: str, password: str) -> bool | None:
        """Whether the credentials are valid; None when they could not be checked
        and were refused for that (the error is logged here)."""
        if secret_matches_plain(username, self._internal_username):
            return secret_matches_plain(password, self._internal_password)
        if not TOPIC_UNSAFE.isdisjoint(username):
            return False
        try:
            # The callable reads a database: keep it off the event loop.
            valid = bool(await in_thread(functools.partial(self._authenticate, username, password)))
        except Exception as exc:
            # A broken credential store must not kill the broker. A login that
            # worked before still does (see remembered_logins); others are refused.
            remembered = self._remembered.recall(username, password)
            # No traceback: a database error can quote the query's parameters.
            detail = str(exc).replace(password, "<password>") if password else str(exc)
            detail = next(iter(detail.strip().splitlines()), "")
            logger.log(
                logging.WARNING if remembered else logging.ERROR,
                "Could not check the MQTT credentials of %r: %s: %s; %s",
                username,
                type(exc).__name__,
                detail,
                "accepted the login that worked before" if remembered else "refused",
            )
            return True if remembered else None
        if valid:
            self._remembered.learn(username, password)
        return valid

    def permits(self, session: Session, topic: str) -> bool:
        return bool(session.username) and self._may_use(session.username, topic)

    def _may_use(self, username: str, topic: str) -> bool:
        if username == self._internal_username:
            return True
        allowed = owner_may_use(username, topic)
        if not allowed:
            logger.info("MQTT user %r may not use topic %r", username, topic)
        return allowed


class _OwnerLoginPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no types
    """amqtt auth plugin: every CONNECT reaching amqtt passed the gatekeeper.

    amqtt refuses all logins unless some auth plugin says yes, and its default one
    lets anonymous clients in, so this one stands in for both.
    """

    async def authenticate(self, *, session: Session) -> bool | None:
        return bool(session.username)


class _OwnerTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt ships no types
    """amqtt topic plugin: the same namespace rule for publish, subscribe and receive."""

    @dataclass
    class Config:
        gatekeeper: Any = None

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._gatekeeper: _Gatekeeper = self.config.gatekeeper

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool | None:
        # RECEIVE too, though subscriptions were checked when made: it costs little
        # and holds even if a session ever changed hands.
        if session is None or topic is None:
            return False
        return self._gatekeeper.permits(session, topic)


class _ClientDropped(Exception):
    """A connection broke one of _GuardedReader's rules and is closed."""


class _GuardedReader(ReaderAdapter):  # type: ignore[misc]  # amqtt ships no types
    """Passes a connection's bytes to amqtt while following the MQTT framing.

    It enforces what amqtt does not, or does badly:
    - a maximum packet size, checked as soon as a fixed header is read, before the
      body is buffered (amqtt would buffer whatever a header announces, up to 256 MB);
    - a deadline for the CONNECT packet, so a socket that never logs in doesn't hold
      a connection forever;
    - the keep-alive: amqtt's broker ignores it, so a device that lost power would
      stay "connected" until TCP gives up. MQTT 3.1.1 says to drop a client silent
      for 1.5 times its keep-alive;
    - a PUBLISH to an empty or ``$`` topic ends the connection here: amqtt would
      stop serving it but keep its session as "connected" forever.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        *,
        max_packet_bytes: int,
        connect_timeout: float,
    ) -> None:
        self._reader = reader
        self._max_packet_bytes = max_packet_bytes
        self._loop = asyncio.get_running_loop()
        self._deadline: float | None = self._loop.time() + connect_timeout
        self._silence_limit: float | None = None
        self._replay = b""  # the CONNECT, read once by us and once more by amqtt
        self._body_left = 0
        self._packet_type = 0
        self._in_length = False
        self._length = 0
        self._shift = 0
        self._topic_head: bytearray | None = None  # a PUBLISH's first body bytes

    async def read_connect(self) -> ConnectPacket:
        """Read the first packet, which must be a CONNECT, keeping it for amqtt."""
        raw = bytearray(await self._receive(1))
        if raw[0] >> 4 != _CONNECT:
            raise _ClientDropped("the first packet is not a CONNECT")
        while self._in_length:
            raw += await self._receive(1)
        raw += await self._receive(self._body_left)
        connect = await ConnectPacket.from_stream(BufferReader(bytes(raw)))
        self._replay = bytes(raw)
        if connect.keep_alive:
            self._silence_limit = connect.keep_alive * 1.5
            self._deadline = self._loop.time() + self._silence_limit
        else:
            self._deadline = None
        return connect

    async def read(self, n: int = -1) -> bytes:
        if n < 0:
            # amqtt always asks for an exact count; reading to EOF would skip the limit.
            raise _ClientDropped("refusing an unbounded read")
        if not self._replay:
            return await self._receive(n)
        head, self._replay = self._replay[:n], self._replay[n:]
        return head + await self._receive(n - len(head))

    def feed_eof(self) -> None:
        self._reader.feed_eof()

    async def _receive(self, n: int) -> bytes:
        # An absolute deadline, because amqtt wraps each header read in its own
        # keep-alive timeout and calls read() again after it expires.
        try:
            async with asyncio.timeout_at(self._deadline):
                data = await self._reader.readexactly(n)
        except TimeoutError:
            raise _ClientDropped(
                "no CONNECT in time" if self._silence_limit is None else "silent past its keep-alive"
            ) from None
        if self._silence_limit is not None:
            self._deadline = self._loop.time() + self._silence_limit
        self._follow(data)
        return data

    def _follow(self, data: bytes) -> None:
        i = 0
        while i < len(data):
            if self._body_left:
                step = min(self._body_left, len(data) - i)
                if self._topic_head is not None:
                    self._topic_head += data[i : i + min(step, 3 - len(self._topic_head))]
                    if len(self._topic_head) == 3 or step == self._body_left:
                        _check_publish_topic(bytes(self._topic_head))
                        self._topic_head = None
                self._body_left -= step
                i += step
                continue
            byte = data[i]
            i += 1
            if not self._in_length:
                # The packet type byte; the remaining length follows.
                self._packet_type = byte >> 4
                self._in_length, self._length, self._shift = True, 0, 0
                continue
            self._length |= (byte & 0x7F) << self._shift
            self._shift += 7
            if byte & 0x80:
                if self._shift >= 28:
                    raise _ClientDropped("malformed remaining length")
                continue
            self._in_length = False
            if self._length > self._max_packet_bytes:
                raise _ClientDropped(
                    f"MQTT packet of {self._length} bytes is over the {self._max_packet_bytes}-byte limit"
                )
            self._body_left = self._length
            if self._packet_type == _PUBLISH:
                self._topic_head = bytearray()


def _check_publish_topic(head: bytes) -> None:
    # ``head`` is the start of a PUBLISH body: the topic's 2-byte length, then its
    # first character.
    if head[:2] == b"\x00\x00" or head[2:3] == b"$":
        raise _ClientDropped("PUBLISH to an empty or $ topic")


def _quiet_amqtt_logging() -> None:
    # amqtt (and the state machine library it uses) log every connection at INFO.
    # A level set explicitly, for debugging, is left alone.
    for name in ("amqtt", "transitions"):
        library_logger = logging.getLogger(name)
        if library_logger.level == logging.NOTSET:
            library_logger.setLevel(logging.WARNING)


class EmbeddedBroker:
    """An amqtt broker serving ``host:port`` from the running event loop.

    ``authenticate(username, password)`` is blocking (it reads the database) and is
    called in a worker thread. Port 0 picks a free port; ``port`` holds the bound one
    once ``start()`` returns.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        authenticate: Callable[[str, str], bool],
        max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.max_packet_bytes = max_packet_bytes
        self.connect_timeout = connect_timeout
        self._authenticate = authenticate
        self._gatekeeper: _Gatekeeper | None = None
        # Made fresh for each process, so there is nothing to configure or to leak.
        self.internal_username = f"otaship-{secrets.token_hex(8)}"
        self.internal_password = secrets.token_urlsafe(32)
        self._broker: Broker | None = None
        self._server: asyncio.Server | None = None
        # Each connection's task and socket, so stop() can close what amqtt doesn't know
        # about yet (a socket that has not sent its CONNECT).
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def start(self) -> None:
        if self._broker is not None:
            raise RuntimeError("The embedded MQTT broker is already running")
        _quiet_amqtt_logging()
        gatekeeper = _Gatekeeper(self._authenticate, self.internal_username, self.internal_password)
        self._gatekeeper = gatekeeper
        broker = Broker(self._broker_config(gatekeeper))
        try:
            server = await asyncio.start_server(
                functools.partial(self._serve_connection, broker, gatekeeper),
                self.host,
                self.port,
                start_serving=False,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BrokerPortInUse(self.host, self.port) from exc
            raise
        try:
            await broker.start()
        except BaseException:
            server.close()
            await server.wait_closed()
            raise
        self.port = server.sockets[0].getsockname()[1]
        self._broker, self._server = broker, server
        await server.start_serving()
        logger.info("Embedded MQTT broker listening on %s:%d", self.host, self.port)

    def write_summary(self, seconds: float) -> None:
        """Count the refused logins that got no line of their own (see log_summary)."""
        if self._gatekeeper is not None:
            self._gatekeeper.write_summary(seconds)

    async def stop(self) -> None:
        broker, server = self._broker, self._server
        if broker is None or server is None:
            return
        self._broker = self._server = None
        # Stop accepting first, so no client slips in while the sessions are closed.
        server.close()
        try:
            await broker.shutdown()
        finally:
            await server.wait_closed()
            await self._finish_connections()
        logger.info("Embedded MQTT broker stopped")

    def _broker_config(self, gatekeeper: _Gatekeeper) -> BrokerConfig:
        # Naming the plugins replaces amqtt's defaults, which allow anonymous logins,
        # publish $SYS topics and (PacketLoggerPlugin, at DEBUG) log CONNECT packets
        # with their passwords.
        return BrokerConfig(
            listeners={
                _LISTENER: ListenerConfig(type=ListenerType.EXTERNAL, bind=f"{self.host}:{self.port}")
            },
            plugins={
                f"{__name__}.{_OwnerLoginPlugin.__name__}": {},
                f"{__name__}.{_OwnerTopicPlugin.__name__}": {"gatekeeper": gatekeeper},
            },
        )

    async def _serve_connection(
        self,
        broker: Broker,
        gatekeeper: _Gatekeeper,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections[task] = writer
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "unknown peer"
        guarded = _GuardedReader(
            reader, max_packet_bytes=self.max_packet_bytes, connect_timeout=self.connect_timeout
        )
        try:
            try:
                connect = await guarded.read_connect()
            except (_ClientDropped, asyncio.IncompleteReadError):
                raise
            except Exception as exc:
                raise _ClientDropped(f"unreadable CONNECT ({exc})") from exc
            if await gatekeeper.login(connect, peer) is None:
                writer.write(_CONNACK_NOT_AUTHORIZED)
                await writer.drain()
                return
            try:
                await broker.external_connected(guarded, StreamWriterAdapter(writer), _LISTENER)
            finally:
                gatekeeper.logout(connect)
        except _ClientDropped as exc:
            logger.warning("Dropped MQTT client %s: %s", peer, exc)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away; nothing to tell anyone
        except Exception:
            logger.exception("MQTT connection from %s failed", peer)
        finally:
            # amqtt leaves the socket open after a CONNECT it refuses and after a
            # PUBLISH to an invalid topic; closing it ends its reader too.
            writer.close()
            if task is not None:
                self._connections.pop(task, None)

    async def _finish_connections(self) -> None:
        for writer in self._connections.values():
            writer.close()
        pending = set(self._connections)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=_STOP_GRACE_SECONDS)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
