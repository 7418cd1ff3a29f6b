"""The listening sockets every server here binds itself (so port 0 reports the port it got)."""

from __future__ import annotations

import socket

__all__ = ["listening_socket"]


def listening_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A non-blocking TCP socket listening on ``host:port`` ("" for every IPv4 address; a host
    with ":" is IPv6). ``SO_REUSEADDR``: a server restarts on its port while old connections
    linger in TIME_WAIT. The socket is closed if binding fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host or "0.0.0.0", port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
