"""Structured access logs: one JSON line per request on the `ortserve.access` logger."""

import json
import logging
import time

log = logging.getLogger("ortserve.access")


def record(protocol: str, method: str, target: str, status: str, started: float, client: str = "") -> None:
    log.info(
        json.dumps(
            {
                "protocol": protocol,
                "method": method,
                "target": target,
                "status": status,
                "ms": round((time.perf_counter() - started) * 1000, 3),
                "client": client,
            },
            separators=(",", ":"),
        )
    )


class HttpAccessLog:
    """ASGI middleware: logs method, path, status and duration of every HTTP request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), ["-"]

        async def capture(message):
            if message["type"] == "http.response.start":
                status[0] = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            client = scope.get("client") or ("", 0)
            record("http", scope["method"], scope["path"], status[0], started, f"{client[0]}:{client[1]}")
