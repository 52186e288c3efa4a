"""ASGI middleware for tests: each shows what it saw, so a test can tell which requests passed it."""

from __future__ import annotations

from typing import Any


class Tag:
    """Adds `x-seen-by: <name>` to every response that passes it."""

    def __init__(self, app: Any, name: str) -> None:
        self.app = app
        self.name = name.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def tagged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-seen-by", self.name)]}
            await send(message)

        await self.app(scope, receive, tagged)


NOT_A_CLASS = "a string"


def refuses(app: Any, **args: Any) -> Any:
    raise RuntimeError("needs a signing key")
