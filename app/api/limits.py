"""Request body limits: the Content-Length header checked up front, streamed bodies counted."""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.problems import PAYLOAD_TOO_LARGE, PROBLEM_MEDIA_TYPE, Problem
from app.settings import Settings


def body_limit_for(settings: Settings) -> Callable[[str], int]:
    """The largest body each path accepts."""
    # Whole-body bound: the largest valid request, with JSON escaping at its worst.
    max_body = settings.max_documents * (settings.max_document_chars * 6 + 4096) + 65536

    def limit(path: str) -> int:
        # Batch uploads have their own (larger) limit.
        return settings.batch_max_upload_bytes + 65536 if path == "/v1/files" else max_body

    return limit


class BodyLimit:
    """Answer 413 as soon as a streamed request body passes its limit, then stop reading it."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, received, cut = self.limit_for(scope["path"]), 0, False

        async def limited_receive() -> Message:
            nonlocal received, cut
            message = await receive()
            if message["type"] == "http.request" and not cut:
                received += len(message.get("body", b""))
                if received > limit:
                    cut = True
                    problem = Problem(PAYLOAD_TOO_LARGE, f"request body exceeds {limit} bytes")
                    body = json.dumps(problem.body(instance=scope["path"])).encode()
                    headers = [
                        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                        (b"content-length", str(len(body)).encode()),
                    ]
                    await send({"type": "http.response.start", "status": 413, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not cut:  # the 413 is the answer; whatever the app says after it is dropped
                await send(message)

        await self.app(scope, limited_receive, guarded_send)
