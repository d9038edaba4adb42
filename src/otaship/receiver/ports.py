"""Whether `serve` can listen where it is told, asked before anything starts.

The server would find out too, but only after the lifespan has started (the
embedded broker, the database), and it says so in its own words: uvicorn's
`[Errno 98] error while attempting to bind`. One line that says what to do is
better. A port taken between this check and the server's own bind still ends
the server, with its message: the check is for the common case, a second
`otaship serve` or another program already there.
"""

from __future__ import annotations

import errno
import socket


class PortUnavailable(Exception):
    """`serve` cannot listen on an address; the message says what to change."""


def display(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_error(host: str, port: int) -> OSError | None:
    """Why a listening socket on host:port cannot be had now, or None if it can."""
    if not 0 <= port <= 65535:
        return OSError(errno.EINVAL, f"port {port} is not between 0 and 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return OSError(errno.EADDRNOTAVAIL, f"cannot resolve the host {host!r}: {exc.strerror}")
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As the server sets it: a port whose last connections linger in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc
    return None


def check_http_port(host: str, port: int) -> None:
    """Raise PortUnavailable, in one line that says what to do, unless host:port can be served."""
    error = bind_error(host, port)
    if error is None:
        return
    if error.errno == errno.EADDRINUSE:
        raise PortUnavailable(
            f"Cannot serve HTTP on {display(host, port)}: it is already in use. "
            "Stop whatever listens there (another otaship serve?), or pick another port with "
            f"OTASHIP_PORT={port + 1 if port < 65535 else 8080} or otaship serve --port."
        )
    raise PortUnavailable(
        f"Cannot serve HTTP on {display(host, port)}: {error.strerror or error}. "
        "Check OTASHIP_HOST and OTASHIP_PORT (or serve --host and --port)."
    )
