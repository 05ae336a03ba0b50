"""Every failure as one JSON shape, `{"code", "message", "fields"}`, with a stable code.

ApiError (ours)                     its own status and code
ContractError (a contract's)        403 / 404 / 409 / 422 by the error's meaning, code = its name
RelayRefused (checks before send)   its own status and code
ContractPanic, UnknownRevert        422 Reverted
a revert mined on chain             409 RevertedOnChain: txHash, blockNumber, gasUsed and the contract's
                                    error nested as {code, message, fields} (nonce and gas are spent)
NodeUnavailable, the node's HTTP    503 NodeUnavailable with Retry-After: connection errors, timeouts,
  or JSON-RPC trouble                 an HTTP error status (a proxy's 502), an answer that is not
                                      JSON-RPC, a JSON-RPC error answer nothing else handled
TransactionTimeout                  504 ReceiptTimeout (the transaction may still be mined)
OutcomeUnknown                      504 OutcomeUnknown (sent, then the node failed: may be mined)
TransactionRejected                 422 TransactionRejected (the node refused it: nothing pending)
RequestValidationError              422 ValidationError
HTTPException (routing: no such     its status; code = the status's phrase without spaces (NotFound,
  path, method not allowed)           MethodNotAllowed), the path in fields
"""

from __future__ import annotations

import sqlite3
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from requests.exceptions import RequestException
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from web3.exceptions import Web3RPCError

from api.index import IndexLagging, IndexOffChain
from chain_client.errors import (
    ContractError,
    ContractMissing,
    ContractReverted,
    NodeUnavailable,
    OutcomeUnknown,
    RevertedOnChain,
    TransactionRejected,
    TransactionTimeout,
)
from chain_client.index.db import IndexDatabaseError
from chain_client.relay import RelayRefused, jsonable
from chain_client.transactions import TRANSPORT_FAILURES


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields


def not_found(what: str, key: object) -> ApiError:
    return ApiError(404, "NotFound", f"no {what} {key}", kind=what, id=key)


def forbidden(message: str, **fields: Any) -> ApiError:
    return ApiError(403, "Forbidden", message, **fields)


# The caller may not do this (whoever asks again, it stays refused).
_FORBIDDEN = {
    "AccountMissingRole", "NotApprovedOrHolder", "NotOfferSeller", "NotOrderIssuer", "NotReceiptOracle",
    "NotAdmin", "NotIssuingBank", "ParticipantNotActive", "ParticipantNotRegistered", "InvalidOperator",
    "IncorrectHolder", "OfferReservedForAnother", "AdminSelfLockout", "AccountBlocked", "RelayerNotAllowed",
}  # fmt: skip
# The request names something that does not exist.
_NOT_FOUND = {"UnknownCertificate", "UnknownOrder", "UnknownWarehouse"}
# The request itself is wrong, whatever the state.
_INVALID = {
    "AmountTooLarge", "BatchTooLarge", "DeadlineInPast", "InvalidParticipant", "InvalidReceiver",
    "InvalidSplitRules", "OfferExpiryInPast", "PriceAboveFace", "SelfTransfer", "SlotMismatch",
    "SplitBelowMinimumUnit", "SplitPartCount", "SplitPartsMismatch", "ZeroAmount", "InvalidSignature",
    "InvalidDeviceSet", "SignatureCount", "ReceiptDoesNotMatchOrder",
    "InvalidDevice", "UnknownDevice", "StringTooLong", "InvalidShortString", "SplitDepthExceeded",
    "ReceiverNotEligible", "PayeeNotEligible", "BuyerNotEligible", "UnsafeReceiver", "DeviceKindMismatch",
    "DevicesNotAscending", "InvalidDeviceKind", "InvalidReadingRange", "LengthMismatch", "MissingReadingKind",
    "ObservationFromFuture", "ObservationMismatch", "ReadingOutOfRange", "SignerMismatch",
    "ERC20InvalidApprover", "ERC20InvalidReceiver", "ERC20InvalidSender", "ERC20InvalidSpender",
}  # fmt: skip


def contract_status(name: str) -> int:
    """The HTTP status of a contract error; anything not listed is a conflict with current state
    (already settled, frozen, expired, paused, insufficient balance, ...)."""
    if name in _FORBIDDEN:
        return 403
    if name in _NOT_FOUND:
        return 404
    if name in _INVALID:
        return 422
    return 409


def body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "fields": jsonable(fields or {})}


def revert_body(exc: ContractReverted) -> tuple[int, dict[str, Any]]:
    """A contract's error as an answer: its status and body (code = its name, fields = its
    arguments); a panic or a revert no ABI here explains is 422 `Reverted` with the raw data."""
    if isinstance(exc, ContractError):
        return contract_status(exc.error_name), body(exc.error_name, str(exc), exc.fields)
    return 422, body("Reverted", str(exc), {"data": "0x" + exc.data.hex()})


def reverted_on_chain(exc: RevertedOnChain) -> dict[str, Any]:
    """The 409 body of a transaction mined and reverted: where, at what cost, and why (the
    contract's error in the shape of any error answer, so a client reads it the same way)."""
    _, error = revert_body(exc.error)
    fields = {"txHash": exc.tx_hash, "blockNumber": exc.block_number, "gasUsed": exc.gas_used, "error": error}
    return body("RevertedOnChain", str(exc), fields)


def install(app: FastAPI, retry_after: int) -> None:
    def respond(status: int, code: str, message: str, fields: dict[str, Any] | None = None) -> JSONResponse:
        return JSONResponse(body(code, message, fields), status_code=status)

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return respond(exc.status, exc.code, exc.message, exc.fields)

    @app.exception_handler(RelayRefused)
    async def _relay(_: Request, exc: RelayRefused) -> JSONResponse:
        return respond(exc.status, exc.code, str(exc), exc.fields)

    @app.exception_handler(ContractReverted)
    async def _reverted(_: Request, exc: ContractReverted) -> JSONResponse:
        if exc.mined is not None:  # mined and reverted: never answered like a refusal
            return JSONResponse(reverted_on_chain(RevertedOnChain.of(exc)), status_code=409)
        status, content = revert_body(exc)
        return JSONResponse(content, status_code=status)

    @app.exception_handler(RevertedOnChain)
    async def _reverted_on_chain(_: Request, exc: RevertedOnChain) -> JSONResponse:
        return JSONResponse(reverted_on_chain(exc), status_code=409)

    async def _node(_: Request, exc: Exception) -> JSONResponse:
        response = respond(503, "NodeUnavailable", "the chain node did not answer; try again", {})
        response.headers["Retry-After"] = str(retry_after)
        return response

    # The node, or a proxy before it, did not serve a request: requests' errors (an HTTP error
    # status such as a 502 while the node is down included), web3's provider errors, and a JSON-RPC
    # error answer that no code path took as an answer about its request.
    for kind in (NodeUnavailable, RequestException, *TRANSPORT_FAILURES, Web3RPCError):
        app.add_exception_handler(kind, _node)

    @app.exception_handler(TransactionTimeout)
    async def _timeout(_: Request, exc: TransactionTimeout) -> JSONResponse:
        return respond(504, "ReceiptTimeout", str(exc), {"txHash": exc.tx_hash, "seconds": exc.seconds})

    @app.exception_handler(TransactionRejected)
    async def _rejected(_: Request, exc: TransactionRejected) -> JSONResponse:
        return respond(422, "TransactionRejected", str(exc), {"txHash": exc.tx_hash, "reason": exc.reason})

    @app.exception_handler(OutcomeUnknown)
    async def _unknown(_: Request, exc: OutcomeUnknown) -> JSONResponse:
        return respond(504, "OutcomeUnknown", str(exc), {"txHash": exc.tx_hash, "reason": exc.reason})

    @app.exception_handler(IndexDatabaseError)
    @app.exception_handler(IndexLagging)
    @app.exception_handler(OperationalError)
    @app.exception_handler(sqlite3.OperationalError)  # the index's bulk writes use the drivers
    @app.exception_handler(psycopg.OperationalError)
    async def _index(_: Request, exc: Exception) -> JSONResponse:
        # The index is not there yet (a follower's first sync), locked, or behind: try again.
        response = respond(503, "IndexUnavailable", "the event index is not available; try again", {})
        response.headers["Retry-After"] = str(retry_after)
        return response

    @app.exception_handler(ContractMissing)
    async def _contract_missing(_: Request, exc: ContractMissing) -> JSONResponse:
        return respond(503, "ContractMissing", str(exc), {})

    @app.exception_handler(IndexOffChain)
    async def _off_chain(_: Request, exc: IndexOffChain) -> JSONResponse:
        # Not Retry-After: waiting does not help, an operator must rebuild the index.
        return respond(503, "IndexOffChain", str(exc), {})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Routing's own answers (no such path, a method the path does not take) in the same shape.
        try:
            code = HTTPStatus(exc.status_code).phrase.replace(" ", "").replace("-", "")
        except ValueError:
            code = f"Http{exc.status_code}"
        response = respond(exc.status_code, code, str(exc.detail), {"path": request.url.path})
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        # The message names the fields too (`body.Buyer: Extra inputs are not permitted`).
        where = "; ".join(
            ".".join(str(p) for p in e.get("loc", ())) + f": {e.get('msg', '')}" for e in exc.errors()[:5]
        )
        message = f"the request is not valid: {where}" if where else "the request is not valid"
        return respond(422, "ValidationError", message, {"errors": errors})
