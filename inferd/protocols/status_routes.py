"""The status page: `GET /` answers one static HTML file (inline CSS and script, nothing fetched
from elsewhere), whose script polls `GET /status.json` (inferd.status) and redraws itself.

The page is served with a Content-Security-Policy that allows exactly its own inline script and
style (by their SHA-256) and requests to this server only, so nothing injected into it (a model's
failure reason, say) could run; the script also writes every value as text, never as markup.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from starlette.responses import Response

from inferd.auth import STATUS_PAGE_PATH
from inferd.daemon import Daemon
from inferd.protocols.http import Call, json_response
from inferd.protocols.routing import Route
from inferd.status import StatusBoard

STATUS_JSON_PATH = "/status.json"
PAGE_TYPE = "text/html; charset=utf-8"
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


@dataclass(frozen=True)
class StatusPage:
    html: bytes
    headers: dict[str, str]

    @classmethod
    def load(cls) -> StatusPage:
        text = (resources.files("inferd") / "status_page" / "index.html").read_text(encoding="utf-8")
        return cls(text.encode(), _page_headers(text))

    def response(self) -> Response:
        return Response(self.html, media_type=PAGE_TYPE, headers=self.headers)


def _page_headers(html: str) -> dict[str, str]:
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for tag, body in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[tag].append(f"'sha256-{digest}'")
    policy = (
        f"default-src 'none'; script-src {' '.join(hashes['script'])}; style-src {' '.join(hashes['style'])}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def routes(daemon: Daemon) -> list[Route]:
    page = StatusPage.load()
    board = StatusBoard(daemon)

    async def show_page(call: Call) -> Response:
        return page.response()

    async def status(call: Call) -> Response:
        return json_response(board.snapshot(), headers={"Cache-Control": "no-store"})

    return [Route(STATUS_PAGE_PATH, {"GET": show_page}), Route(STATUS_JSON_PATH, {"GET": status})]
