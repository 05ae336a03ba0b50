"""A node's endpoint behind a failing proxy, for the tests of how node trouble is reported: every
JSON-RPC request gets the same answer, an HTTP error status (nginx's 502 while the node is down)
or a JSON-RPC error object."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

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
        self._reply(status, {"jsonrpc": "2.0", "id": request["id"], "error": error} if error else None)

    def _reply(self, status: int, body: dict[str, Any] | None) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: Any) -> None:
        pass


class _ScriptedHandler(_Handler):
    results: ClassVar[dict[str, Any]] = {}

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        method, body = request["method"], {"jsonrpc": "2.0", "id": request["id"]}
        if method in self.results:
            body["result"] = self.results[method]
        else:
            body["error"] = {"code": -32601, "message": f"the method {method} does not exist"}
        self._reply(200, body)


@contextmanager
def failing_node(answer: Answer) -> Iterator[str]:
    """A local HTTP endpoint giving `answer` to every request; yields its URL."""
    with _serving(type("Handler", (_Handler,), {"answer": answer})) as url:
        yield url


@contextmanager
def scripted_node(results: dict[str, Any]) -> Iterator[str]:
    """A local JSON-RPC endpoint answering the methods in `results` with their result and any
    other with "method not found", as a node without that namespace does; yields its URL."""
    with _serving(type("Handler", (_ScriptedHandler,), {"results": results})) as url:
        yield url


class _CappedLogsHandler(_Handler):
    """Forwards every request to `upstream`, except an eth_getLogs over more than `max_blocks`
    blocks, which it refuses as Besu does past its --rpc-max-logs-range."""

    upstream: ClassVar[str] = ""
    max_blocks: ClassVar[int] = 1
    refused: ClassVar[list[tuple[int, int]]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        request = json.loads(body)
        if isinstance(request, dict) and request["method"] == "eth_getLogs":
            first, last = (
                self._block(request["params"][0].get(end, "latest")) for end in ("fromBlock", "toBlock")
            )
            if last - first + 1 > self.max_blocks:
                self.refused.append((first, last))
                error = {"code": -32005, "message": "Requested range exceeds maximum RPC range limit"}
                self._reply(200, {"jsonrpc": "2.0", "id": request["id"], "error": error})
                return
        self._reply(200, self._forward(body))

    def _block(self, tag: str) -> int:
        if tag.startswith("0x"):
            return int(tag, 16)
        answer = self._forward(
            json.dumps({"jsonrpc": "2.0", "id": 0, "method": "eth_blockNumber", "params": []}).encode()
        )
        return int(answer["result"], 16)

    def _forward(self, body: bytes) -> Any:
        request = urllib.request.Request(
            self.upstream, data=body, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


@contextmanager
def capped_logs_node(upstream: str, max_blocks: int) -> Iterator[tuple[str, list[tuple[int, int]]]]:
    """`upstream` behind a proxy that refuses eth_getLogs over more than `max_blocks` blocks; yields
    its URL and the list of the ranges it refused."""
    refused: list[tuple[int, int]] = []
    handler = type(
        "Handler", (_CappedLogsHandler,), {"upstream": upstream, "max_blocks": max_blocks, "refused": refused}
    )
    with _serving(handler) as url:
        yield url, refused


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def silent_node() -> Iterator[str]:
    """A local endpoint that takes connections and never answers, as a hung node (stopped, or
    stuck in a long compaction) does: the kernel completes the handshake; yields its URL."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
