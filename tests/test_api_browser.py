"""What a browser needs from the service: documentation pages whose scripts and styles the service
serves itself (a machine without internet shows them too), and CORS for the origins configured."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from api_support import Api, build_api
from pydantic import ValidationError
from world import World

from api.settings import ApiSettings

WALLET = "https://wallet.example"


@pytest.fixture
def api(world: World, tmp_path: Path) -> Iterator[Api]:
    built = build_api(world, tmp_path, cors_origins=[WALLET])
    yield built
    built.service.reader.db.close()


def _referenced(html: str) -> list[str]:
    """Every URL the page loads: src and href attributes, Swagger UI's `url:`, ReDoc's spec-url."""
    found = re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""", html)
    found += re.findall(r"""\burl:\s*["']([^"']+)["']""", html)
    return found


_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_documentation_pages_load_only_from_the_service(api: Api, page: str) -> None:
    r = api.client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = _referenced(r.text)
    assert len(urls) >= 3, urls  # a script, the favicon and the schema, at least
    assert not re.search(r"https?://|//[a-z]", r.text, re.IGNORECASE), "the page names another host"
    for url in urls:
        assert url.startswith("/"), url
        asset = api.client.get(url)
        assert asset.status_code == 200, url
        suffix = Path(url).suffix
        assert _TYPES[suffix] in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert len(asset.content) > 100, url


def test_swagger_ui_reads_the_openapi_version_the_service_writes(api: Api) -> None:
    """Swagger UI before 5 answers an OpenAPI 3.1 schema, which FastAPI writes, with "Unable to
    render this definition" (why the assets do not come from swagger-ui-bundle, which ships 4)."""
    schema: dict[str, Any] = api.client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.1.")
    [script] = [u for u in _referenced(api.client.get("/docs").text) if u.endswith(".js")]
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.', api.client.get(script).text)
    assert version is not None and int(version.group(1)) >= 5


def _preflight(api: Api, origin: str) -> Any:
    return api.client.options(
        "/v1/auth/nonce",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_a_configured_origin_may_call_the_api_from_its_pages(api: Api, world: World) -> None:
    r = _preflight(api, WALLET)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == WALLET
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    # Tokens travel in a header, never a cookie: the browser is not told to send credentials.
    assert "access-control-allow-credentials" not in r.headers
    nonce = api.client.post(
        "/v1/auth/nonce", json={"address": world.cast.supplier1.address}, headers={"Origin": WALLET}
    )
    assert nonce.status_code == 200 and nonce.headers["access-control-allow-origin"] == WALLET


def test_another_origin_gets_no_cors_headers(api: Api, world: World) -> None:
    for origin in ("https://evil.example", "http://wallet.example", "https://wallet.example:8443"):
        r = _preflight(api, origin)
        assert r.status_code != 200 and "access-control-allow-origin" not in r.headers, origin
        read = api.client.get("/v1/deployment", headers={"Origin": origin})
        assert read.status_code == 200 and "access-control-allow-origin" not in read.headers, origin


def test_without_configured_origins_there_is_no_cors(world: World, tmp_path: Path) -> None:
    api = build_api(world, tmp_path)
    try:
        assert api.service.settings.cors_origins == []
        r = _preflight(api, WALLET)
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
        read = api.client.get("/v1/deployment", headers={"Origin": WALLET})
        assert "access-control-allow-origin" not in read.headers
    finally:
        api.service.reader.db.close()


def test_cors_origins_come_from_the_environment_and_bad_ones_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CERTLEDGER_CORS_ORIGINS", f'["{WALLET}", "http://127.0.0.1:5173"]')
    assert ApiSettings().cors_origins == [WALLET, "http://127.0.0.1:5173"]
    for bad in (
        "*",
        "wallet.example",
        "https://wallet.example/",
        "https://wallet.example/app",
        "https://Wallet.example",
        "ftp://wallet.example",
        "https://user@wallet.example",
        "https://wallet.example:443",  # a browser leaves the default port out: never matches
        "http://wallet.example:80",
        "http://wallet.example:",
        "http://wallet.example:abc",
        "http://wallet.example:70000",
        "http://wallet.example:0",
    ):
        with pytest.raises(ValidationError, match="cors_origins"):
            ApiSettings(cors_origins=[bad])


# ------------------------------------------------------------------ in a real browser


def _chromium() -> str:
    """Debian's Chromium, which `make test` installs (apt-get) when the machine lacks it."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "no chromium: `make test` installs it (apt-get install chromium), or set CHROMIUM"
    return found


@contextmanager
def _listening(app: Any) -> Iterator[str]:
    """The app on a loopback port of its own (uvicorn in a thread), as a browser reaches it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _rendered(url: str) -> str:
    """The page's DOM once its scripts ran, in headless Chromium that can resolve no host but
    loopback: an asset fetched from anywhere else would fail to load, as on an offline machine."""
    run = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",  # tests run as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=20000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def test_swagger_ui_renders_every_operation_in_a_browser_offline(api: Api) -> None:
    schema: dict[str, Any] = api.client.get("/openapi.json").json()
    with _listening(api.client.app) as base:
        dom = _rendered(base + "/docs")
    assert "Unable to render" not in dom and "Failed to load API definition" not in dom
    # Swagger UI draws one block per operation, its path in a `data-path` attribute.
    drawn = set(re.findall(r'data-path="([^"]+)"', dom))
    assert drawn == set(schema["paths"]), set(schema["paths"]) ^ drawn


def test_redoc_renders_the_operations_in_a_browser_offline(api: Api) -> None:
    with _listening(api.client.app) as base:
        dom = _rendered(base + "/redoc")
    assert "Something went wrong" not in dom
    # ReDoc links each operation from its menu as #tag/<tag>/operation/<operationId>.
    operations = set(re.findall(r'href="#tag/[^"/]+/operation/([^"]+)"', dom))
    schema: dict[str, Any] = api.client.get("/openapi.json").json()
    expected = {op["operationId"] for item in schema["paths"].values() for op in item.values()}
    assert operations == expected, operations ^ expected
