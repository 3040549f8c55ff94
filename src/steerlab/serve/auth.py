"""Bearer-token authentication, as vLLM's OpenAI server does it: with an API key set, every HTTP
request except ``GET /health`` must carry ``Authorization: Bearer <key>``; others get 401 in OpenAI's
error shape (code ``invalid_api_key``) with ``WWW-Authenticate: Bearer`` (RFC 6750), before any
request body is read. Keys are compared in constant time."""

from __future__ import annotations

import hmac
from typing import Any

from .protocol import APIError

OPEN_ROUTES = frozenset({("GET", "/health")})


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of the first ``Authorization: Bearer <token>`` header of an ASGI scope's ``headers``
    (scheme case-insensitive), or None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class APIKeyMiddleware:
    """ASGI middleware refusing HTTP requests without the bearer ``api_key`` (``OPEN_ROUTES`` excepted)."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode("utf-8")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Pass authorized requests (and non-HTTP scopes) to the app; answer the others with 401."""
        if scope["type"] != "http" or (scope["method"], scope["path"]) in OPEN_ROUTES:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope.get("headers", []))
        if token is not None and hmac.compare_digest(token.encode("utf-8"), self._key):
            await self.app(scope, receive, send)
            return
        if token is None:
            message = (
                "no API key given: this server needs one, sent as the header 'Authorization: Bearer KEY' "
                "(the openai client's api_key)"
            )
        else:
            message = "incorrect API key"
        error = APIError(401, message, param=None, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await error.response()(scope, receive, send)
