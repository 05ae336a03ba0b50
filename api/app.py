"""The FastAPI application: `create_app(service)` for a built service (tests, the embedded chain),
`from_env()` as uvicorn's factory in each worker process against a node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

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
            503: {"model": Problem, "description": "node unavailable; retry after Retry-After seconds"},
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

    # Added last, so it runs first: no body reaches a parser (or waits for the lock) unchecked.
    app.add_middleware(BodyLimits)

    @app.get("/health", tags=["service"])
    def health() -> dict[str, int]:
        """The node's head and the index's last block."""
        return {"head": service.chain.w3.eth.block_number, "indexed": service.reader.synced_block()}

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
    return app


def from_env() -> FastAPI:
    """uvicorn's factory for worker processes: a node URL and a manifest from CERTLEDGER_*."""
    settings = ApiSettings()
    system = System.from_manifest(settings)
    return create_app(Service.build(system, settings))
