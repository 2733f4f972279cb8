"""Restricted API groups on HTTP: a request without the group's header gets 403 before any route runs."""

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.restrictions import Restrictions, http_group


class RestrictedApi:
    def __init__(self, app: ASGIApp, restrictions: Restrictions):
        self.app, self.restrictions = app, restrictions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        group = http_group(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if group in self.restrictions.rules:  # only restricted groups pay for reading the headers
            headers = {key.decode("latin-1").lower(): value.decode("latin-1")
                       for key, value in scope["headers"]}
            refusal = self.restrictions.refusal(group, headers)
            if refusal is not None:
                return await JSONResponse({"error": refusal}, status_code=403)(scope, receive, send)
        await self.app(scope, receive, send)
