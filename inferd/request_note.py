"""What a front tells the serving core about one request beyond its payload, and what the core
tells the front back, without either knowing the other's protocol.

A front (the HTTP app, the gRPC service) sets a `RequestNote` for the request's task before it
submits; a traffic split reads its sticky key from the note's headers and writes the variant that
answers into it, and the front names that variant in its answer (`X-Inferd-Variant`). A task made
for the request copies the context, and with it the same note object, so what the split writes
reaches the front whichever task wrote it.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass

VARIANT_HEADER = "x-inferd-variant"


@dataclass(eq=False)
class RequestNote:
    headers: Iterable[tuple[bytes, bytes]]  # lower-case names, as ASGI gives them
    variant: str | None = None  # the traffic split's variant that answered

    def header(self, name: bytes) -> bytes | None:
        """The first value of the header `name` (lower case), if the request carries it."""
        return next((value for key, value in self.headers if key == name), None)


NOTE: ContextVar[RequestNote | None] = ContextVar("inferd_request_note", default=None)


def current_note() -> RequestNote | None:
    return NOTE.get()
