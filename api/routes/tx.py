"""Writes. The service holds no keys: per job a `prepare` endpoint returns the unsigned transaction
(simulated first, so one that would fail answers with the contract's error and costs nothing), the
participant signs it, and `POST /v1/tx` checks and relays the signed bytes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from eth_typing import ChecksumAddress
from eth_utils import keccak, to_checksum_address
from fastapi import APIRouter
from requests.exceptions import RequestException
from web3.contract.contract import ContractFunction

from api.deps import Caller, CallerDep, ServiceDep
from api.errors import ApiError, forbidden, not_found
from api.schemas import (
    AccountIn,
    ApproveTokenIn,
    ConfirmReceiptIn,
    EventOut,
    FreezeIn,
    MergeIn,
    OfferIdIn,
    OfferIn,
    OpenOrderIn,
    OrderIdIn,
    RegisterIn,
    SettleIn,
    SignedTx,
    SplitIn,
    SplitToIn,
    TransferIn,
    TxOut,
    UnsignedTx,
)
from api.service import Service
from api.views import (
    ZERO_ADDRESS,
    certificate_for,
    certificates_for,
    offer_for,
    order_for,
    participant_for,
)
from chain_client.errors import ContractError
from chain_client.index.models import OfferRecord
from chain_client.index.sync import ROUND_FAILURES
from chain_client.models import Role
from chain_client.receipts import Observation
from chain_client.relay import event_json

log = logging.getLogger(__name__)
T = TypeVar("T")
#: What keeps the index from reaching a write's block: a sync round's failures, or the HTTP layer's.
_INDEX_TROUBLE: tuple[type[Exception], ...] = (*ROUND_FAILURES, RequestException)

router = APIRouter(prefix="/v1/tx", tags=["transactions"])

_ZERO = to_checksum_address("0x" + "00" * 20)
_PROBLEMS: dict[int | str, dict[str, Any]] = {
    403: {"description": "the sender lacks the job's role or a contract access error; an id out of scope"},
    404: {"description": "an unknown certificate, order, offer, participant or warehouse"},
    409: {
        "description": "a contract error from the current state; a nonce already used; the sender's "
        "pending transactions (PendingTransaction); mined and reverted, nonce and gas spent "
        "(RevertedOnChain, the contract's error nested)"
    },
    422: {"description": "invalid input or a contract's input error"},
    503: {"description": "the node is down (Retry-After)"},
    504: {"description": "sent, outcome unknown: send the same signed bytes again to learn it"},
}


def _prepared(service: Service, sender: ChecksumAddress, fn: ContractFunction) -> UnsignedTx:
    tx = service.relay.prepare(sender, fn)
    return UnsignedTx(
        chainId=int(tx["chainId"]),
        to=str(tx["to"]),
        data=str(tx["data"]),
        nonce=int(tx["nonce"]),
        gas=int(tx["gas"]),
        value=int(tx.get("value", 0)),
        maxFeePerGas=tx.get("maxFeePerGas"),
        maxPriorityFeePerGas=tx.get("maxPriorityFeePerGas"),
        gasPrice=tx.get("gasPrice"),
    )


def _ledger(service: Service) -> Any:
    return service.system.ledger.contract


# ---------------------------------------------------------------------- scope, before simulating
#
# A simulation's error carries the contract's view of the records it names (a certificate's
# holder, value or maturity, an order's status, an offer's buyer). So a prepare endpoint first
# checks every id it is given against the caller's read scope, with the rules and the answers of the
# read endpoints (D40): 404 NotFound for an id the index does not know, 403 Forbidden for a record
# the caller may not read; only then does it simulate.


def _in_scope(service: Service, check: Callable[[], T]) -> T:
    """`check` against the index; a refusal (403, 404) from an index behind the chain's head (the
    record, or the caller's part in it, written moments ago) is checked again once the index has
    reached the head, so a prepare right after a write does not fail for the index's lag."""
    try:
        return check()
    except ApiError as exc:
        if exc.status not in (403, 404):
            raise
        head = int(service.chain.w3.eth.block_number)
        if service.reader.synced_block() >= head:
            raise
    service.reader.reach(head)
    return check()


def _certificates(service: Service, caller: Caller, *ids: int) -> None:
    if len(ids) == 1:
        _in_scope(service, lambda: certificate_for(service.reader, caller, ids[0]))
    else:
        _in_scope(service, lambda: certificates_for(service.reader, caller, list(ids)))


def _offer_to_buy(service: Service, caller: Caller, offer_id: int) -> OfferRecord:
    """The offer a factor may try to buy: one reserved for it or open to anyone, the latter even
    once closed (it was public to every factor while open, and the contract's OfferNotOpen names
    only its id). Any other offer is refused as GET /v1/offers/{id} refuses it."""
    record = service.reader.get(OfferRecord, offer_id=offer_id)
    if record is None:
        raise not_found("offer", offer_id)
    to_it = caller.has(Role.FACTOR) and record.buyer in (caller.address, ZERO_ADDRESS)
    if not (caller.sees_all or record.seller == caller.address or to_it):
        raise forbidden("not an offer to or from you", offerId=offer_id)
    return record


@router.post("", response_model=TxOut, responses=_PROBLEMS)
def submit(body: SignedTx, service: ServiceDep) -> TxOut:
    """Relays a transaction the sender signed. Refused without sending (nothing changes) when it is
    not for a certledger job, its nonce is used, the sender lacks the role, or the simulation
    reverts; otherwise sent and answered once mined, with its decoded events. The signature is the
    authentication: a warehouse gateway with no participant role submits confirmReceipt this way."""
    relayed = service.relay.submit(bytes.fromhex(body.raw[2:]))
    result = relayed.result
    return TxOut(
        txHash=result.tx_hash,
        status="success",
        blockNumber=result.block_number,
        gasUsed=result.gas_used,
        contract=relayed.job.contract,
        function=relayed.job.function,
        sender=relayed.sender,
        events=[EventOut(**event_json(e)) for e in result.events],
        indexed=_indexed(service, result.block_number),
    )


def _indexed(service: Service, block: int) -> bool:
    """Lets the index reach a mined write's block, so the client reads its own write. The write is
    done whatever happens here: an index that cannot catch up (a lagging follower, the node or the
    database gone meanwhile) must not turn it into an error a client would retry."""
    try:
        service.reader.reach(block)
    except _INDEX_TROUBLE as exc:
        log.warning("mined in block %d, not yet indexed: %s", block, exc)
        return False
    return True


# ---------------------------------------------------------------------- prepare, per job


@router.post("/prepare/register-participant", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_register(body: RegisterIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """ADMIN: registers an account with its roles and its entity (the hash of its legal id)."""
    roles = 0
    for name in body.roles:
        roles |= Role[name]
    fn = _ledger(service).functions.registerParticipant(
        body.account, keccak(text=body.entity), int(roles), body.issuerLimit
    )
    return _prepared(service, caller.address, fn)


@router.post("/prepare/suspend-participant", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_suspend(body: AccountIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    _in_scope(service, lambda: participant_for(service.reader, body.account))
    return _prepared(service, caller.address, _ledger(service).functions.suspendParticipant(body.account))


@router.post("/prepare/reinstate-participant", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_reinstate(body: AccountIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    _in_scope(service, lambda: participant_for(service.reader, body.account))
    return _prepared(service, caller.address, _ledger(service).functions.reinstateParticipant(body.account))


@router.post("/prepare/open-order", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_open_order(body: OpenOrderIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """ISSUER: escrow `amount` for goods; the ledger must be approved for it (prepare/approve-token)."""
    fn = _ledger(service).functions.openOrder(
        body.payee,
        body.amount,
        body.maturity,
        keccak(text=body.invoice),
        keccak(text=body.warehouse),
        keccak(text=body.goods),
        body.expectedQuantity,
        body.deadline,
    )
    return _prepared(service, caller.address, fn)


@router.post("/prepare/cancel-order", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_cancel_order(body: OrderIdIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    _in_scope(service, lambda: order_for(service.reader, caller, body.orderId))
    return _prepared(service, caller.address, _ledger(service).functions.cancelOrder(body.orderId))


@router.post("/prepare/approve-token", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_approve_token(body: ApproveTokenIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """Lets the ledger take escrow (issuer) or a discount price (factor) from the caller's tokens."""
    fn = service.system.token.contract.functions.approve(service.system.ledger.address, body.amount)
    return _prepared(service, caller.address, fn)


@router.post("/prepare/transfer", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_transfer(body: TransferIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """Moves a whole certificate from the caller to `to`."""
    _certificates(service, caller, body.certificateId)
    fn = _ledger(service).get_function_by_signature("transferFrom(address,address,uint256)")(
        caller.address, body.to, body.certificateId
    )
    return _prepared(service, caller.address, fn)


@router.post("/prepare/split", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_split(body: SplitIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """Splits in place: the certificate keeps values[0], new ones hold the rest (same holder)."""
    _certificates(service, caller, body.certificateId)
    return _prepared(
        service, caller.address, _ledger(service).functions.split(body.certificateId, body.values)
    )


@router.post("/prepare/split-to", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_split_to(body: SplitToIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """Moves `value` out of the certificate into a new one held by `to` (passing part down the chain)."""
    _certificates(service, caller, body.certificateId)
    fn = _ledger(service).get_function_by_signature("transferFrom(uint256,address,uint256)")(
        body.certificateId, body.to, body.value
    )
    return _prepared(service, caller.address, fn)


@router.post("/prepare/merge", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_merge(body: MergeIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """Moves `value` from one certificate into another of the same order."""
    _certificates(service, caller, body.fromId, body.toId)
    fn = _ledger(service).get_function_by_signature("transferFrom(uint256,uint256,uint256)")(
        body.fromId, body.toId, body.value
    )
    return _prepared(service, caller.address, fn)


@router.post("/prepare/offer-discount", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_offer(body: OfferIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    _certificates(service, caller, body.certificateId)
    fn = _ledger(service).functions.offerDiscount(
        body.certificateId, body.value, body.price, body.buyer or _ZERO, body.expiry
    )
    return _prepared(service, caller.address, fn)


@router.post("/prepare/cancel-offer", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_cancel_offer(body: OfferIdIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    _in_scope(service, lambda: offer_for(service.reader, caller, body.offerId))
    return _prepared(service, caller.address, _ledger(service).functions.cancelDiscountOffer(body.offerId))


@router.post("/prepare/buy", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_buy(body: OfferIdIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """FACTOR: buys an offer, price against value in one transaction."""
    offer = _in_scope(service, lambda: _offer_to_buy(service, caller, body.offerId))
    try:
        return _prepared(service, caller.address, _ledger(service).functions.buyDiscounted(body.offerId))
    except ContractError as exc:
        # The certificate behind the offer is not the buyer's to read: that it moved or shrank since
        # the offer was made is told without its holder or value now.
        if exc.error_name in ("IncorrectHolder", "InsufficientValue") and not (
            caller.sees_all or offer.seller == caller.address
        ):
            raise ApiError(
                409,
                "OfferStale",
                "the offered certificate changed since the offer was made",
                offerId=body.offerId,
            ) from None
        raise


@router.post("/prepare/settle", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_settle(body: SettleIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """Pays each matured certificate's holder. The contract takes it from any sender; prepared here
    for the certificates the caller may read (each unknown id 404, each it may not read 403)."""
    _certificates(service, caller, *body.certificateIds)
    return _prepared(service, caller.address, _ledger(service).functions.settle(body.certificateIds))


@router.post("/prepare/withdraw", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_withdraw(service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """Pulls the caller's credit (payments its token account refused)."""
    return _prepared(service, caller.address, _ledger(service).functions.withdraw())


@router.post("/prepare/freeze", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_freeze(body: FreezeIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    _certificates(service, caller, body.certificateId)
    fn = _ledger(service).functions.freeze(body.certificateId, keccak(text=body.reason))
    return _prepared(service, caller.address, fn)


@router.post("/prepare/unfreeze", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_unfreeze(body: FreezeIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    _certificates(service, caller, body.certificateId)
    return _prepared(service, caller.address, _ledger(service).functions.unfreeze(body.certificateId))


@router.post("/prepare/confirm-receipt", response_model=UnsignedTx, responses=_PROBLEMS, tags=["oracle"])
def prepare_confirm_receipt(body: ConfirmReceiptIn, service: ServiceDep) -> UnsignedTx:
    """For a warehouse gateway (no sign-in): the confirmReceipt transaction for its devices' signed
    observations, in the order the oracle requires. The gateway signs it and posts it to /v1/tx."""
    try:
        observations = [Observation.from_json(o) for o in body.observations]
    except (ValueError, KeyError, TypeError) as exc:
        raise ApiError(422, "InvalidObservation", f"an observation is malformed: {exc}") from None
    if len(observations) != len(body.signatures):
        raise ApiError(
            422, "SignatureCountMismatch", "one signature per observation",
            observations=len(observations), signatures=len(body.signatures),
        )  # fmt: skip
    signatures = [bytes.fromhex(s[2:]) for s in body.signatures]
    fn = service.system.oracle.confirm_call(observations, signatures)
    return _prepared(service, to_checksum_address(body.sender), fn)
