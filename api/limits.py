"""Request bodies are bounded before anything parses them.

FastAPI hands a JSON body to `json.loads` whole, and the process's recursion limit is 100,000 once
py_ecc is imported (eth-tester and py-evm import it): a body of nested brackets then overflows the
C stack inside the parser and kills the worker (SIGSEGV), whatever the endpoint. So the body is
read here first, at most `max_bytes` of it (413 `BodyTooLarge` beyond), and refused with 400
`BodyTooDeep` if its JSON nests deeper than `max_depth` (the oracle's scan, `wire.too_deep`). No
request of this API nests more than a few levels or needs more than a few kilobytes (a signed
settle of 64 certificates is about 4 KB).

The scan reads bytes as UTF-8, but `json.loads` of bytes also takes UTF-16 and UTF-32 (it guesses
the encoding from the first bytes, `json.detect_encoding`): a UTF-16 body's brackets are not the
bytes the scan counts, and 32,000 of them crashed the worker as before. So a body that
`json.detect_encoding` does not take for UTF-8 (with or without a byte-order mark) is refused
first, 400 `BodyNotUtf8`: JSON exchanged between systems is UTF-8 (RFC 8259, section 8.1).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import body as problem
from oracle.wire import too_deep

MAX_BODY_BYTES = 65_536
MAX_DEPTH = 32
#: What `json.detect_encoding` answers for a body the depth scan reads as `json.loads` will.
_UTF8 = ("utf-8", "utf-8-sig")


class BodyLimits:
    """ASGI middleware: reads each HTTP request's body, refuses it if too large or too deep, and
    passes the same bytes on to the application."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, max_depth: int = MAX_DEPTH) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _refuse(send, 413, "BodyTooLarge", f"a request body is at most {self.max_bytes} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _refuse(send, 413, "BodyTooLarge", f"a request body is at most {self.max_bytes} bytes")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        if raw and json.detect_encoding(raw) not in _UTF8:
            await _refuse(send, 400, "BodyNotUtf8", "a request body is JSON in UTF-8")
            return
        if too_deep(raw, self.max_depth):
            await _refuse(send, 400, "BodyTooDeep", f"JSON nested deeper than {self.max_depth} levels")
            return
        await self.app(
            scope, _replay([{"type": "http.request", "body": raw, "more_body": False}], receive), send
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A `receive` that gives `messages` first, then defers to `then` (a disconnect, for
    streaming responses that listen for one)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    content: dict[str, Any] = problem(code, message, {})
    payload = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
