"""onegate.server.bind: the listening socket's options reach every accepted connection."""

from __future__ import annotations

import socket

from onegate.server import bind


def test_accepted_connections_have_nodelay() -> None:
    # Without TCP_NODELAY, responses written in two parts wait for the peer's delayed ACK
    # (~40 ms per request on keep-alive connections).
    listener = bind("127.0.0.1", 0)
    try:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        try:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            accepted.close()
            client.close()
    finally:
        listener.close()
