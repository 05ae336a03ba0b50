"""Bodies are bounded before FastAPI parses them: with py_ecc's recursion limit of 100,000, a body
of nested brackets would overflow the C stack in `json.loads` and kill the worker (D42)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import Api, serve_world
from world import World

from api.limits import MAX_BODY_BYTES, MAX_DEPTH
from oracle.wire import too_deep


@pytest.fixture
def api(world: World, tmp_path: Path) -> Iterator[Api]:
    yield from serve_world(world, tmp_path)


def test_nesting_is_counted_outside_strings() -> None:
    deep = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)
    assert too_deep(deep, MAX_DEPTH)
    assert not too_deep(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, MAX_DEPTH)
    # Brackets inside strings are text, an escaped quote does not end the string, and many
    # sibling containers are not depth.
    quoted = b'{"a": "' + b"[" * 100 + b'\\"' + b"{" * 100 + b'"}'
    assert not too_deep(quoted, MAX_DEPTH)
    assert not too_deep(b"[" + b"[1]," * 1_000 + b"[1]]", MAX_DEPTH)
    assert too_deep(b'{"x": ' + b"{" * 40, MAX_DEPTH)  # unbalanced counts too


def test_a_deeply_nested_body_is_refused_before_parsing(api: Api) -> None:
    for path in ("/v1/tx", "/v1/auth/login", "/v1/tx/prepare/transfer"):
        r = api.client.post(path, content=b"[" * 60_000, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "BodyTooDeep"
    # The service is still there and answers the next request.
    assert api.client.get("/health").status_code == 200


def test_a_body_over_the_limit_is_refused(api: Api) -> None:
    big = b'{"raw": "0x' + b"00" * MAX_BODY_BYTES + b'"}'
    r = api.client.post("/v1/tx", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["code"] == "BodyTooLarge"

    def chunks() -> Iterator[bytes]:  # sent without a Content-Length: counted as it arrives
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b" " * 1024

    r = api.client.post("/v1/tx", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["code"] == "BodyTooLarge"


def test_ordinary_bodies_pass_through(api: Api) -> None:
    r = api.client.post("/v1/tx", json={"raw": "0x1234"})
    assert r.status_code == 422  # the relay's own answer about the bytes, not the guard's
    assert r.json()["code"] not in ("BodyTooDeep", "BodyTooLarge")
    headers = api.login(api.world.cast.supplier1)  # nonce and login bodies go through
    assert api.client.get("/v1/auth/me", headers=headers).status_code == 200


def test_a_body_not_in_utf8_is_refused_before_the_depth_scan(api: Api) -> None:
    """`json.loads` of bytes also reads UTF-16 and UTF-32, whose brackets the byte scan does not
    count: 32,000 of them in UTF-16 crashed the worker. Such a body is refused before the scan."""
    nested = '["\u2200",' + "[" * 100 + "]" * 101
    for encoding in ("utf-16-le", "utf-16-be", "utf-16", "utf-32-le", "utf-32"):
        payload = nested.encode(encoding)
        assert not too_deep(payload, MAX_DEPTH)  # the scan alone would let it through
        for path in ("/v1/tx", "/v1/auth/nonce"):
            r = api.client.post(path, content=payload, headers={"content-type": "application/json"})
            assert (r.status_code, r.json()["code"]) == (400, "BodyNotUtf8"), (encoding, r.text)
    # UTF-8, with a byte-order mark or without, is what the scan reads: checked, then parsed.
    for payload in (nested.encode(), b"\xef\xbb\xbf" + nested.encode()):
        r = api.client.post("/v1/auth/nonce", content=payload, headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["code"]) == (400, "BodyTooDeep"), r.text
    r = api.client.post(
        "/v1/auth/nonce",
        content=b"\xef\xbb\xbf" + b'{"address": "0x' + b"11" * 20 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert r.json().get("code") not in ("BodyNotUtf8", "BodyTooDeep"), r.text
