"""The server's listening sockets, claimed before anything starts so that a port in use stops it cleanly."""

import socket


class PortUnavailable(Exception):
    """A listener cannot bind its port; the message names the front end, the address and why."""


def claim(host: str, port: int, what: str) -> socket.socket:
    """A listening TCP socket on host:port, exclusively ours: SO_REUSEADDR (restarts while old connections
    linger) but never SO_REUSEPORT, with which a second server would silently share the port."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise PortUnavailable(f"cannot listen for {what} on {host}:{port}: {error.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise PortUnavailable(f"cannot listen for {what} on {host}:{port}: {error.strerror}") from None
    sock.setblocking(False)
    return sock
