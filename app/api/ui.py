"""The review page, `GET /ui`: static HTML, JS and CSS shipped with the package and served by
the gateway itself (no CDN, no external font: hospitals are air-gapped).

The shell holds no data: everything the page shows comes from the public `/v1` API, called
with the user's key. Its Content-Security-Policy allows scripts, styles and requests from this
origin only and no inline script, so a note that holds markup can at worst be shown as text.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

_ASSETS = Path(__file__).with_name("static")
_FILES = {"index.html": "text/html; charset=utf-8", "ui.js": "text/javascript; charset=utf-8", "ui.css": "text/css"}

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # A new release's page and script must not mix with an old cached copy.
    "Cache-Control": "no-cache",
}


def ui_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    # Read once: the files are part of the installed package and never change under it.
    assets = {name: (_ASSETS / name).read_bytes() for name in _FILES}

    def serve(name: str) -> Response:
        return Response(assets[name], media_type=_FILES[name], headers=_HEADERS)

    @router.get("/ui")
    async def page() -> Response:
        return serve("index.html")

    @router.get("/ui/ui.js")
    async def script() -> Response:
        return serve("ui.js")

    @router.get("/ui/ui.css")
    async def style() -> Response:
        return serve("ui.css")

    return router
