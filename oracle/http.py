"""HTTP intake and status (FastAPI), for devices that cannot speak MQTT and for the warehouse system
that registers each order's expectations.

    POST /readings            a signed reading (oracle.wire JSON) -> 202 accepted | 422 refused
                              (reason, detail) | 503 kept, to be checked when the node answers |
                              413 over 4,096 bytes (nothing kept) | 503 unavailable (nothing kept)
    PUT  /orders/{order_id}   expectations: carton weight, count and weight tolerances (with an
                              operator token configured, only with `Authorization: Bearer TOKEN`,
                              as every route but /readings, and /docs and /openapi.json are off);
                              a field given changes, one left out keeps its value, null means the
                              configured default (as `oracle expect` and its --reset); the order
                              need not be open on chain yet; numbers as JSON gives them (422 for
                              a bool, a string, a float where an integer goes, or NaN/Infinity)
    GET  /orders[/{order_id}] the oracle's view of orders
    GET  /alerts              disputes, failures, node trouble
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from oracle.gateway import Gateway
from oracle.store import OrderRecord, Store
from oracle.wire import MAX_PAYLOAD

log = logging.getLogger(__name__)

#: An order id as the store keeps it (a SQLite integer): a larger one is no order of ours.
OrderId = Annotated[int, Path(ge=1, lt=2**63)]


class OrderExpectations(BaseModel):
    """Only the fields sent change (see `Store.register_order`); a misspelt one is refused rather
    than ignored, which would leave the value it meant to set unchanged without a word.

    Strict, as the API's bodies (D84): lax coercion stored `true` as a 1 g carton and took "12000"
    and 1.0 for integers. An integer field takes a JSON integer only; the percentage any finite
    JSON number (2 is 2%), never a bool or a string."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # Bounded by what the store keeps (a SQLite integer), so an absurd value is a 422, not a 500.
    carton_weight_grams: int | None = Field(default=None, gt=0, lt=2**63)
    count_tolerance: int | None = Field(default=None, ge=0, lt=2**63)
    # Python's JSON parser reads NaN, Infinity and 1e400 as floats: refused by name, not as
    # "greater than 0" (NaN compares false with everything).
    weight_tolerance_pct: float | None = Field(default=None, gt=0, le=50, allow_inf_nan=False)


class OrderPublic(BaseModel):
    order_id: int
    state: str
    detail: str
    carton_weight_grams: int | None
    count_tolerance: int | None
    weight_tolerance_pct: float | None
    tx_hash: str | None
    #: earlier transactions at tx_hash's nonce it replaced at a higher fee (any may be the one mined)
    replaced_tx_hashes: list[str]
    root_certificate_id: int | None
    error_name: str | None

    @classmethod
    def of(cls, r: OrderRecord) -> OrderPublic:
        return cls(
            order_id=r.order_id,
            state=r.state.value,
            detail=r.detail,
            carton_weight_grams=r.carton_weight_grams,
            count_tolerance=r.count_tolerance,
            weight_tolerance_pct=r.weight_tolerance_pct,
            tx_hash=r.tx_hash,
            replaced_tx_hashes=list(r.replaced),
            root_certificate_id=r.root_certificate_id,
            error_name=r.error_name,
        )


class AlertPublic(BaseModel):
    at: float
    order_id: int | None
    kind: str
    message: str


def create_app(gateway: Gateway, store: Store, operator_token: str | None = None) -> FastAPI:
    """`operator_token`: if set, changing an order's expectations needs it (they decide what the
    readings must agree with: loosened, they would let a short delivery through; tightened, they
    would force a dispute), and so does reading orders and alerts (expectations, disputes and
    transactions of every order: the operator's, where the API shows each party only its own).
    Readings need none: each is signed by an enrolled device."""
    # With a token, the intake is exposed beyond this machine: its API description is the
    # operator's too (FastAPI's /docs and /openapi.json would answer anyone).
    hidden: dict[str, Any] = {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="certledger oracle gateway", **(hidden if operator_token is not None else {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_errors(exc)}, 422)

    def operator(authorization: str | None) -> None:
        if operator_token is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not given.isascii() or not hmac.compare_digest(given, operator_token):
            raise HTTPException(401, "this needs the operator token", headers={"WWW-Authenticate": "Bearer"})

    def too_large(size: int | str) -> JSONResponse:
        return JSONResponse(
            {"status": "refused", "reason": "too-large", "detail": f"{size} bytes, at most {MAX_PAYLOAD}"},
            413,
        )

    @app.post("/readings", status_code=202)
    async def post_reading(request: Request) -> JSONResponse:
        # The raw bytes, capped while they are read: nothing parses an untrusted body before the
        # cap applies (a framework's JSON body would, and nested deep enough it crashes the
        # process), and the gateway keeps exactly the bytes the device sent.
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_PAYLOAD:
            return too_large(declared)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_PAYLOAD:
                return too_large(f"more than {len(body)}")
        try:
            verdict = await run_in_threadpool(gateway.ingest, bytes(body), "http")
        except Exception as exc:  # not kept (the database refused it): the device sends it again
            # (ingest raises only before the reading is kept; a failure to check a kept one is a
            # pending verdict, answered "kept" below)
            log.exception("could not keep a reading posted over HTTP")
            return JSONResponse({"status": "unavailable", "detail": str(exc)}, 503)
        if verdict.accepted:
            return JSONResponse({"status": "accepted", "observation_id": verdict.observation_id}, 202)
        if verdict.pending:
            return JSONResponse({"status": "kept", "detail": verdict.detail}, 503)
        assert verdict.reason is not None
        return JSONResponse(
            {"status": "refused", "reason": verdict.reason.value, "detail": verdict.detail}, 422
        )

    @app.put("/orders/{order_id}")
    def put_order(
        order_id: OrderId, body: OrderExpectations, authorization: Annotated[str | None, Header()] = None
    ) -> OrderPublic:
        operator(authorization)
        given = {name: getattr(body, name) for name in body.model_fields_set}
        record = store.register_order(order_id, **given)
        return OrderPublic.of(record)

    @app.get("/orders")
    def get_orders(authorization: Annotated[str | None, Header()] = None) -> list[OrderPublic]:
        operator(authorization)
        return [OrderPublic.of(r) for r in store.orders()]

    @app.get("/orders/{order_id}")
    def get_order(order_id: OrderId, authorization: Annotated[str | None, Header()] = None) -> OrderPublic:
        operator(authorization)
        record = store.order(order_id)
        if record is None:
            raise HTTPException(404, f"order {order_id} unknown to the oracle")
        return OrderPublic.of(record)

    @app.get("/alerts")
    def get_alerts(authorization: Annotated[str | None, Header()] = None) -> list[AlertPublic]:
        operator(authorization)
        return [
            AlertPublic(at=a.at, order_id=a.order_id, kind=a.kind, message=a.message) for a in store.alerts()
        ]

    return app


def _validation_errors(exc: RequestValidationError) -> list[dict[str, object]]:
    """FastAPI's 422 detail without the `input` it echoes (and `ctx`, which may hold it too): a NaN,
    Infinity or 1e400 sent made the answer itself unencodable (strict JSON has no such numbers),
    a 500 for a client's mistake. Where and what remain: `loc`, `msg`, `type`."""
    return [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]
