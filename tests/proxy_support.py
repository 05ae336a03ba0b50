"""A node's endpoint behind a failing proxy, for the tests of how node trouble is reported: every
JSON-RPC request gets the same answer, an HTTP error status (nginx's 502 while the node is down)
or a JSON-RPC error object."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

#: (HTTP status, JSON-RPC error or None for an empty body)
Answer = tuple[int, dict[str, Any] | None]

#: Answers that say the node did not serve the request, whatever it was.
NODE_TROUBLE: list[Answer] = [
    (502, None),  # nginx while the node is down
    (503, None),
    (200, {"code": -32005, "message": "rate limit exceeded"}),
    (200, {"code": -32603, "message": "internal error"}),
]
NODE_TROUBLE_IDS = ["502", "503", "rate-limited", "internal-error"]


class _Handler(BaseHTTPRequestHandler):
    answer: Answer = (502, None)

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        status, error = self.answer
        payload = b""
        if error is not None:
            payload = json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": error}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: Any) -> None:
        pass


@contextmanager
def failing_node(answer: Answer) -> Iterator[str]:
    """A local HTTP endpoint giving `answer` to every request; yields its URL."""
    handler = type("Handler", (_Handler,), {"answer": answer})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
