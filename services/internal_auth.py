"""The shared internal token: every /internal/* call and every KV lease must present it.

It comes from the environment (``PDSERVE_INTERNAL_TOKEN``), never from the command line,
where any user of the machine could read it.
"""

from __future__ import annotations

import hmac
import os

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from services.http_errors import ApiError

TOKEN_ENV = "PDSERVE_INTERNAL_TOKEN"


class MissingTokenError(RuntimeError):
    """The process was started without the internal token it needs."""


def internal_token_from_env() -> str:
    """The shared token, or MissingTokenError telling the operator how to set it."""
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise MissingTokenError(
            f"{TOKEN_ENV} is not set: workers and the router share it to authenticate internal "
            f"calls; set the same random value for all of them (pdserve up makes one itself)"
        )
    return token


class InternalAuthMiddleware:
    """ASGI middleware: every ``/internal/`` path needs ``Authorization: Bearer <token>``.

    It runs before routing and body parsing, so an unauthenticated caller learns nothing
    about the API (not even whether its JSON was valid): it gets a 401 and nothing else.
    """

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/internal/"):
            error = self._refusal(Headers(scope=scope).get("authorization", ""))
            if error is not None:
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, header: str) -> ApiError | None:
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return ApiError(
                401, "missing internal token: send 'Authorization: Bearer <token>'", code="auth"
            )
        if not hmac.compare_digest(presented.strip().encode(), self._token):
            return ApiError(401, "wrong internal token", code="auth")
        return None
