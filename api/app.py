"""The FastAPI application: `create_app(service)` for a built service (tests, the embedded chain),
`from_env()` as uvicorn's factory in each worker process against a node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from api import errors
from api.limits import MAX_BODY_BYTES, MAX_DEPTH, BodyLimits
from api.routes import audit, auth, reads, tx
from api.schemas import DeploymentOut, Problem
from api.service import Service
from api.settings import ApiSettings
from chain_client.system import System

DESCRIPTION = """
Digital debt certificates over HTTP. **Non-custodial**: the service never holds a participant's key.

* Sign in: `POST /v1/auth/nonce` gives an EIP-4361 message; sign it (EIP-191) and
  `POST /v1/auth/login` for a bearer token. Roles come from the on-chain registry.
* Reads come from the event index, scoped to the caller's role.
* Writes: `POST /v1/tx/prepare/<job>` returns the unsigned transaction; sign it with your own key
  and `POST /v1/tx` the raw bytes. A transaction that would revert is answered with the
  contract's error (`code` = the error's name, `fields` = its arguments) and is never sent.
"""

#: Where the documentation pages' scripts, styles and icon are served from: the service itself, not
#: FastAPI's default CDN, so /docs and /redoc work on a machine without internet access.
DOCS_ASSETS = "/docs/static"


def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.reader.start()
        try:
            yield
        finally:
            service.reader.stop()

    app = FastAPI(
        lifespan=lifespan,
        title="certledger",
        version="1",
        description=DESCRIPTION,
        docs_url=None,  # both pages are served by _serve_docs, with local assets
        redoc_url=None,
        responses={
            400: {
                "model": Problem,
                "description": f"BodyTooDeep: JSON nested deeper than {MAX_DEPTH} levels; "
                "BodyNotUtf8: a body that is not UTF-8",
            },
            401: {"model": Problem, "description": "not signed in, or a bad or expired token"},
            403: {"model": Problem, "description": "the caller's role does not allow it"},
            422: {"model": Problem, "description": "invalid request"},
            413: {"model": Problem, "description": f"BodyTooLarge: a body over {MAX_BODY_BYTES} bytes"},
            503: {
                "model": Problem,
                "description": "the node or the index unavailable: retry after Retry-After seconds "
                "(IndexOffChain and ContractMissing carry none: the chain was reset or replaced, and an "
                "operator must rebuild the index)",
            },
        },
    )
    app.state.service = service
    errors.install(app, service.settings.node_retry_after)
    if service.chain.embedded:
        # py-evm is not thread-safe and FastAPI runs handlers in a thread pool: one request at a time.
        lock = asyncio.Lock()

        @app.middleware("http")
        async def _one_at_a_time(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            async with lock:
                return await call_next(request)

    # Added after the handlers' middleware, so it runs before them: no body reaches a parser (or
    # waits for the lock) unchecked.
    app.add_middleware(BodyLimits)
    if service.settings.cors_origins:
        # Outermost: a preflight is answered without waiting for the lock, and refusals (413, 503)
        # carry the headers a page needs to read them. Bearer tokens, not cookies: no credentials.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=service.settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After"],
        )

    @app.get("/health", tags=["service"])
    def health() -> dict[str, int]:
        """The node's head and the index's last block."""
        return {"head": service.chain.head(), "indexed": service.reader.synced_block()}

    @app.get("/v1/deployment", tags=["service"])
    def deployment() -> DeploymentOut:
        """The deployment this service serves: chain id, contract addresses, deployment block."""
        d = service.system.deployment
        return DeploymentOut(
            chainId=d.chain_id,
            ledger=d.ledger,
            oracle=d.oracle,
            token=d.token,
            deploymentBlock=d.deployment_block,
        )

    for router in (auth.router, reads.router, tx.router, audit.router):
        app.include_router(router)
    _serve_docs(app)
    return app


def _root_path(request: Request) -> str:
    """The prefix a proxy serves the app under, so the pages' URLs reach the assets behind it."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _serve_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc on assets the fastapi-offline package ships (Swagger UI 5, which
    reads the OpenAPI 3.1 FastAPI writes, and ReDoc 2), without Google's fonts."""
    app.mount(DOCS_ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")
    openapi_url = app.openapi_url
    assert openapi_url is not None

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = _root_path(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = _root_path(request)
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def from_env() -> FastAPI:
    """uvicorn's factory for worker processes: a node URL and a manifest from CERTLEDGER_*."""
    settings = ApiSettings()
    system = System.from_manifest(settings)
    return create_app(Service.build(system, settings))
