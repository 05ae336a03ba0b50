"""Writes. The service holds no keys: per job a `prepare` endpoint returns the unsigned transaction
(simulated first, so one that would fail answers with the contract's error and costs nothing), the
participant signs it, and `POST /v1/tx` checks and relays the signed bytes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from eth_utils import to_checksum_address
from fastapi import APIRouter
from requests.exceptions import RequestException
from web3.contract.contract import ContractFunction

from api.deps import Caller, CallerDep, ServiceDep, caller_at
from api.errors import ApiError, contract_status, forbidden, not_found
from api.errors import body as error_body
from api.schemas import (
    AccountIn,
    ApprovalForAllIn,
    ApproveIn,
    ApproveTokenIn,
    ApproveValueIn,
    ConfirmReceiptIn,
    EventOut,
    FreezeIn,
    IssuerLimitIn,
    MergeIn,
    OfferIdIn,
    OfferIn,
    OpenOrderIn,
    OrderIdIn,
    RegisterIn,
    RelayerIn,
    SetRolesIn,
    SettleIn,
    SignedTx,
    SplitIn,
    SplitRulesIn,
    SplitToIn,
    TransferIn,
    TxOut,
    UnsignedTx,
    WarehouseIdIn,
    WarehouseIn,
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
from chain_client.artifacts import load_artifact
from chain_client.errors import ContractError, ContractReverted, RevertedOnChain
from chain_client.index.models import CertificateRecord, OfferRecord, OrderRecord
from chain_client.index.sync import ROUND_FAILURES
from chain_client.models import Role
from chain_client.receipts import Observation, bytes32_of
from chain_client.relay import DecodedTx, Job, decode_raw, event_json
from chain_client.transactions import call_checked

log = logging.getLogger(__name__)
T = TypeVar("T")
#: What keeps the index from reaching a write's block: a sync round's failures, or the HTTP layer's.
_INDEX_TROUBLE: tuple[type[Exception], ...] = (*ROUND_FAILURES, RequestException)

router = APIRouter(prefix="/v1/tx", tags=["transactions"])

_ZERO = to_checksum_address("0x" + "00" * 20)
_PROBLEMS: dict[int | str, dict[str, Any]] = {
    403: {
        "description": "the sender lacks the job's role or a contract access error; an id outside the "
        "sender's read scope (Forbidden), or a sender that reads nothing (NotParticipant, "
        "ParticipantNotActive)"
    },
    404: {"description": "an unknown certificate, order, offer, participant or warehouse"},
    409: {
        "description": "a contract error from the current state; a nonce already used; the sender's "
        "pending transactions (PendingTransaction); mined and reverted, nonce and gas spent "
        "(RevertedOnChain, the contract's error nested)"
    },
    422: {
        "description": "invalid input or a contract's input error; call data that does not decode "
        "(MalformedCall)"
    },
    503: {"description": "the node is down (Retry-After)"},
    504: {"description": "sent, outcome unknown: send the same signed bytes again to learn it"},
}


def _unsigned(tx: dict[str, Any]) -> UnsignedTx:
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


def _prepared(service: Service, caller: Caller, fn: ContractFunction) -> UnsignedTx:
    """The caller's unsigned transaction for `fn`, simulated once the records it names are found in
    the caller's read scope (the same check POST /v1/tx makes of a signed one)."""
    names = [str(p["name"]) for p in fn.abi.get("inputs", ())]
    refs = _references(service, fn.address, str(fn.abi["name"]), dict(zip(names, fn.args, strict=True)))

    def who(retry: bool) -> Caller:
        # Checked again after the index caught up: with the caller's roles as the index has them
        # then (a role granted moments ago), not as they were read for this request.
        return caller_at(service, caller.address, signed_in=True, max_age=0.0) if retry else caller

    scope = _scope(service, refs, who)
    with _answered_in_scope(service, scope):
        return _unsigned(service.relay.prepare(caller.address, fn))


def _ledger(service: Service) -> Any:
    return service.system.ledger.contract


# ---------------------------------------------------------------------- scope, before simulating
#
# A simulation's error carries the contract's view of the records it names (a certificate's
# holder, value or maturity, an order's status, an offer's buyer). So before simulating, a prepare
# endpoint and POST /v1/tx alike find the records the job's arguments name and check each against
# the read scope of whoever would send it (the signed-in caller; a signed transaction's sender),
# with the rules and the answers of the read endpoints (D40): 404 NotFound for an id the index does
# not know, 403 Forbidden for a record the sender may not read. One piece of code reads the job's
# arguments for both: the prepare endpoints from the call they build, POST /v1/tx from the signed
# call data decoded with the job's ABI.

#: The records a ledger job's arguments name, by the ABI parameter's name. Every id parameter of a
#: relayed ledger function must be here (tests/test_api_scope.py checks it against the ABI).
RECORD_PARAMETERS: dict[str, str] = {
    "certificateId": "certificate",
    "certificateIds": "certificate",
    "fromId": "certificate",
    "toId": "certificate",
    "orderId": "order",
    "offerId": "offer",
    "account": "participant",
}
#: Arguments that name no record yet: the account a registration creates.
_NOT_YET = {("registerParticipant", "account")}


@dataclass(frozen=True)
class References:
    """The records a job names, in its arguments' order: what its simulation's error may describe."""

    function: str
    certificates: tuple[int, ...] = ()
    orders: tuple[int, ...] = ()
    offers: tuple[int, ...] = ()
    participants: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.certificates or self.orders or self.offers or self.participants)


def _references(service: Service, address: str, function: str, args: dict[str, Any]) -> References:
    """What `function`'s `args` name, for a job of the ledger (the oracle's and the token's jobs
    name no books: confirmReceipt's order is behind the oracle's own checks, see
    prepare_confirm_receipt)."""
    named: dict[str, list[Any]] = {"certificate": [], "order": [], "offer": [], "participant": []}
    if to_checksum_address(address) == service.system.ledger.address:
        for name, value in args.items():
            kind = RECORD_PARAMETERS.get(name)
            if kind is None or (function, name) in _NOT_YET:
                continue
            named[kind].extend(value if isinstance(value, list | tuple) else [value])
    return References(
        function,
        certificates=tuple(int(i) for i in named["certificate"]),
        orders=tuple(int(i) for i in named["order"]),
        offers=tuple(int(i) for i in named["offer"]),
        participants=tuple(to_checksum_address(a) for a in named["participant"]),
    )


def _signed_references(service: Service, job: Job, tx: DecodedTx) -> References:
    """What a signed transaction's call names, its data decoded with the job's ABI. Call data that
    does not decode is refused without sending: the contract would not take it either, and what
    this service cannot read it does not simulate."""
    if job.address != service.system.ledger.address:
        return References(job.function)
    try:
        fn, args = _ledger(service).decode_function_input(tx.data)
    except Exception as exc:  # eth-abi's decoding errors come in several types
        raise ApiError(
            422, "MalformedCall", f"the call data does not decode as {job.function}: {exc}",
            function=job.function,
        ) from None  # fmt: skip
    return _references(service, job.address, str(fn.abi["name"]), dict(args))


@dataclass(frozen=True)
class Scope:
    """Who the records were checked for, and the offers a buy names (their sellers decide how a
    buy's failure is told)."""

    caller: Caller | None
    to_buy: tuple[OfferRecord, ...] = ()


#: How far behind the head the index may be for a refusal to be checked again once it caught up:
#: a record written moments ago. Further behind, the refusal stands (the index is catching up, and
#: nobody, signed in or not, can make a request wait for all of it by naming an unknown id).
RETRY_LAG_BLOCKS = 32
#: The longest a refused request waits for a follower (another process) to catch up, in seconds:
#: a few of its rounds, not the `index_wait` a mined write may wait for its own block.
RETRY_WAIT = 2.0


def _in_scope(service: Service, check: Callable[[bool], T]) -> T:
    """`check(False)` against the index; a refusal (403, 404) from an index a few blocks behind the
    chain's head (the record, or the caller's part in it, written moments ago) is checked again,
    `check(True)`, once the index has reached the head, so a job right after a write does not fail
    for the index's lag. The retry is best effort: an index further behind, one that cannot catch
    up in RETRY_WAIT (a lagging follower) or that fails meanwhile (the node, the database) leaves
    the first refusal standing, never a 500."""
    try:
        return check(False)
    except ApiError as exc:
        if exc.status not in (403, 404):
            raise
        refusal = exc
    try:
        if not _catch_up(service):
            raise refusal
    except _INDEX_TROUBLE as trouble:
        log.info("scope refusal not checked again, the index cannot catch up: %s", trouble)
        raise refusal from None
    return check(True)


def _catch_up(service: Service) -> bool:
    """Lets the index reach the head when it is a few blocks behind (at most RETRY_LAG_BLOCKS), for
    at most RETRY_WAIT: what a refusal names may have been mined moments ago. Returns whether it was
    behind by so little; raises what the node or the index raise (_INDEX_TROUBLE)."""
    reader = service.reader
    head = call_checked(service.chain.head)
    behind = head - reader.synced_block()
    if behind <= 0 or behind > RETRY_LAG_BLOCKS:
        return False
    reader.reach(head, wait=min(reader.wait, RETRY_WAIT))
    return True


def _scope(service: Service, refs: References, caller: Callable[[bool], Caller]) -> Scope:
    """Checks every record `refs` names against `caller(retry)`'s read scope (404, 403 as the reads
    answer); a job naming no record needs no caller (nor an account the index knows)."""
    if not refs:
        return Scope(None)

    def check(retry: bool) -> Scope:
        who = caller(retry)
        reader = service.reader
        if refs.certificates:
            _certificates_in_reach(service, who, refs)
        for order_id in refs.orders:
            order_for(reader, who, order_id)
        to_buy: list[OfferRecord] = []
        for offer_id in refs.offers:
            if refs.function == "buyDiscounted":
                to_buy.append(_offer_to_buy(service, who, offer_id))
            else:
                offer_for(reader, who, offer_id)
        for account in refs.participants:
            participant_for(reader, account)
        return Scope(who, tuple(to_buy))

    return _in_scope(service, check)


#: Jobs an operator does with a certificate it may not read but was approved for by its holder
#: (moves only: granting approvals is the holder's alone, D81).
_OPERATOR_JOBS = frozenset({"transferFrom", "safeTransferFrom", "split"})


def _certificates_in_reach(service: Service, caller: Caller, refs: References) -> None:
    """The read scope's check of the certificates a job names, widened for a move: a certificate
    the caller may not read but whose holder approved it (for that certificate, for all of the
    holder's, or for part of its value) is in reach, as the contract's approval checks see it. The
    holder chose to let the caller act on it, so what a simulation's error tells of it (value,
    maturity, state) is the caller's to know; the contract then decides whether the move is
    allowed."""
    try:
        certificates_for(service.reader, caller, list(refs.certificates))
        return
    except ApiError as exc:
        if exc.status != 403 or refs.function not in _OPERATOR_JOBS:
            raise
    # A merge's destination (the only job naming two certificates) may be another certificate of
    # the source's holder when the caller may move the source (its holder, or approved by it): the
    # value stays the holder's, as the contract lets it go, and nothing of anyone else's is told.
    # Reading the source is not enough: a past holder or a later tier may read it, and answers to
    # its merges would tell which certificates its holder has.
    merge = len(refs.certificates) == 2
    movers_holder: str | None = None  # the source's holder, once the caller may move the source
    for position, certificate_id in enumerate(refs.certificates):
        try:
            record = certificate_for(service.reader, caller, certificate_id)
            may_move = (
                merge
                and position == 0
                and (record.holder == caller.address or _approved(service, caller.address, certificate_id))
            )
        except ApiError as exc:
            if exc.status != 403:
                raise
            unseen = service.reader.get(CertificateRecord, certificate_id=certificate_id)
            if unseen is None:
                raise
            record = unseen
            within = position == 1 and movers_holder is not None and record.holder == movers_holder
            if not (within or _approved(service, caller.address, certificate_id)):
                raise
            may_move = position == 0
        if may_move:
            movers_holder = record.holder


def _approved(service: Service, operator: str, certificate_id: int) -> bool:
    """Whether the certificate's holder approved `operator` for it, on chain now."""
    # Read on the pending block, the state the job is simulated on (a revocation or a transfer
    # waiting there counts).
    ledger = _ledger(service)
    functions = ledger.functions

    def read(call: Any) -> Any:
        return call_checked(lambda: call.call(block_identifier="pending"))

    try:
        holder = read(functions.ownerOf(certificate_id))
    except ContractReverted:  # not a certificate the chain knows now: nobody is approved for it
        return False
    if (
        read(functions.isApprovedForAll(holder, operator))
        or read(functions.getApproved(certificate_id)) == operator
    ):
        return True
    allowance = ledger.get_function_by_signature("allowance(uint256,address)")
    return int(read(allowance(certificate_id, operator))) > 0


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


#: A buy's errors that describe no more than the buyer may read: the offer itself, the buyer's and
#: the seller's standing in the directory (D40: every participant reads it), the system's pause, and
#: the token's errors (the buyer's balance and allowance, the seller as the payee). Every other error
#: of buyDiscounted describes the certificate behind the offer: its holder, value, maturity, state,
#: depth or remainder (IncorrectHolder, InsufficientValue, CertificateMatured, CertificateFrozen,
#: CertificateAlreadySettled, SplitBelowMinimumUnit, SplitDepthExceeded, ...).
_BUY_OWN_ERRORS = frozenset(
    {
        "OfferNotOpen",
        "OfferExpired",
        "OfferReservedForAnother",
        "OfferStale",
        "SystemPaused",
        "ParticipantNotActive",
        "AccountMissingRole",
        "ParticipantNotRegistered",
        "ReceiverNotEligible",
        "InvalidReceiver",
        "ReentrancyGuardReentrantCall",
        "SafeERC20FailedOperation",
    }
)
STALE_OFFER = "the offer's certificate can no longer be sold as offered"


@cache
def _token_errors() -> frozenset[str]:
    abi = load_artifact("SettlementToken").abi
    return frozenset(str(e["name"]) for e in abi if e.get("type") == "error")


#: What answers "may not read" when asked whether a buyer reads a certificate: a refusal, or an
#: index that cannot tell.
_UNREADABLE: tuple[type[Exception], ...] = (ApiError, *_INDEX_TROUBLE)


def _reads_certificate(service: Service, caller: Caller, offer: OfferRecord) -> bool:
    """Whether `caller` may read the certificate behind `offer` (its seller, the all-seeing, and
    whoever else GET /v1/certificates/{id} answers); an index that cannot tell says no."""
    if caller.sees_all or offer.seller == caller.address:
        return True
    try:
        certificate_for(service.reader, caller, int(offer.certificate_id))
    except _UNREADABLE:
        return False
    return True


@contextmanager
def _answered_in_scope(service: Service, scope: Scope) -> Iterator[None]:
    """Lets the contract's errors through: they describe records the sender may read. Except a
    buy's, for a buyer who may not read the certificate behind the offer: every error about that
    certificate (it moved, shrank, matured, was frozen or settled since the offer was made; the
    contract checks it before the buyer's own standing) is told as 409 OfferStale with the offer's
    id alone, whether the simulation found it or the transaction was mined and reverted (the state
    moved between)."""
    try:
        yield
    except (ContractError, RevertedOnChain) as exc:
        mined = exc if isinstance(exc, RevertedOnChain) else None
        if isinstance(exc, ContractError) and exc.mined is not None:
            mined = RevertedOnChain.of(exc)
        error = mined.error if mined is not None else exc
        if (
            scope.caller is not None
            and isinstance(error, ContractError)
            and error.error_name == "OfferNotOpen"
        ):
            _tell_why_not_open(service, scope.caller, error, mined)
        if (
            scope.caller is None
            or not scope.to_buy
            or not isinstance(error, ContractError)
            or error.error_name in _BUY_OWN_ERRORS
            or error.error_name in _token_errors()
        ):
            raise
        caller = scope.caller
        hidden = [offer for offer in scope.to_buy if not _reads_certificate(service, caller, offer)]
        if not hidden:
            if mined is None and error.error_name == "IncorrectHolder":
                # The holder it names is the offer's seller, not the buyer: the certificate moved
                # away since the offer, a conflict with the state (409) as every other stale
                # offer is, not a refusal of the caller (403) as it is for a move.
                raise ApiError(409, error.error_name, str(error), **error.fields) from None
            raise
        offer_id = int(hidden[0].offer_id)
        if mined is None:
            raise ApiError(409, "OfferStale", STALE_OFFER, offerId=offer_id) from None
        raise _mined_refusal(mined, "OfferStale", STALE_OFFER, {"offerId": offer_id}) from None


def _mined_refusal(mined: RevertedOnChain, code: str, message: str, fields: dict[str, Any]) -> ApiError:
    """A transaction mined and reverted, the contract's error told as `code`, `message` and `fields`
    (nested, in the shape of every error answer) instead of as the contract gave it."""
    return ApiError(
        409,
        "RevertedOnChain",
        f"{mined.tx_hash} was mined in block {mined.block_number} and reverted: {message}; its nonce "
        f"and {mined.gas_used} gas are spent",
        txHash=mined.tx_hash,
        blockNumber=mined.block_number,
        gasUsed=mined.gas_used,
        error=error_body(code, message, fields),
    )


#: What closed an offer, by the last event the index applied to it.
_CLOSED_BY = {"DiscountSold": "sold", "DiscountOfferCancelled": "cancelled"}


def _tell_why_not_open(
    service: Service, caller: Caller, error: ContractError, mined: RevertedOnChain | None
) -> None:
    """The contract's OfferNotOpen names only the offer: a seller whose cancel lost the race with a
    buy would read "not open" and not know it was sold. For a caller who may read the offer (as GET
    /v1/offers/{id} answers; a closed offer to anyone stays the seller's business), raises the same
    error with `state` and, once mined, the closing transaction: `sold` or `cancelled` (`closedTx`,
    `closedBlock`), or `closing` when the index and the last block still have it open, so a
    transaction not mined yet (the pending block the simulation ran on holds it) closes it. Returns
    when nothing can tell (the caller may not read it, or the index is behind and cannot catch up):
    the contract's error then stands as it is."""
    offer_id = int(error.fields["offerId"])
    told = _why_not_open(service, caller, offer_id)
    if told is None:
        return
    message, fields = told
    fields = {"offerId": offer_id, **fields}
    if mined is None:
        raise ApiError(contract_status("OfferNotOpen"), "OfferNotOpen", message, **fields) from None
    raise _mined_refusal(mined, "OfferNotOpen", message, fields) from None


def _why_not_open(service: Service, caller: Caller, offer_id: int) -> tuple[str, dict[str, Any]] | None:
    reader = service.reader
    try:
        _catch_up(service)  # what closed it may have been mined moments ago
        record = offer_for(reader, caller, offer_id)
        if record.open:
            if not service.system.ledger.offer(offer_id).open:  # closed in a block not indexed yet
                return None
            return (
                f"offer {offer_id} is still open in the last block, but a transaction waiting to be "
                "mined closes it (a buy, or its seller's cancel)",
                {"state": "closing"},
            )
    except _UNREADABLE as exc:
        log.info("why offer %d is not open is not told: %s", offer_id, exc)
        return None
    state = _CLOSED_BY.get(record.last_event)
    if state is None:
        return None
    how = "it was sold" if state == "sold" else "its seller cancelled it"
    message = (
        f"offer {offer_id} is not open: {how} in block {record.last_block} (transaction {record.last_tx})"
    )
    return message, {"state": state, "closedTx": record.last_tx, "closedBlock": int(record.last_block)}


@router.post("", response_model=TxOut, responses=_PROBLEMS)
def submit(body: SignedTx, service: ServiceDep) -> TxOut:
    """Relays a transaction the sender signed. Refused without sending (nothing changes) when it is
    not for a certledger job, names a certificate, order or offer its sender may not read (403, as
    the reads refuse it; 404 for an unknown id), its nonce is used, the sender lacks the role, or
    the simulation reverts; otherwise sent and answered once mined, with its decoded events. The
    signature is the authentication: a warehouse gateway with no participant role submits
    confirmReceipt this way (its order is behind the oracle's relayer allow-list and the devices'
    signatures, which the contract checks first)."""
    tx = decode_raw(bytes.fromhex(body.raw[2:]))
    job = service.relay.job_for(tx.to, tx.selector)
    # The sender as the index knows it, read afresh: a retry after the index caught up must see a
    # registration or a role that the lag hid.
    refs = _signed_references(service, job, tx)
    scope = _scope(service, refs, lambda _: caller_at(service, tx.sender, signed_in=False, max_age=0.0))
    with _answered_in_scope(service, scope):
        relayed = service.relay.submit(tx)
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
    fn = _ledger(service).functions.registerParticipant(
        body.account, bytes32_of(body.entity), int(_roles(body.roles)), body.issuerLimit
    )
    return _prepared(service, caller, fn)


def _roles(names: Sequence[str]) -> Role:
    roles = Role(0)
    for name in names:
        roles |= Role[name]
    return roles


@router.post("/prepare/set-roles", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_set_roles(body: SetRolesIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """ADMIN: replaces a registered account's roles (its certificates stay where they are)."""
    fn = _ledger(service).functions.setRoles(body.account, int(_roles(body.roles)))
    return _prepared(service, caller, fn)


@router.post("/prepare/set-issuer-limit", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_set_issuer_limit(body: IssuerLimitIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """ADMIN: the most escrow an issuer may have open at once."""
    return _prepared(service, caller, _ledger(service).functions.setIssuerLimit(body.account, body.limit))


@router.post("/prepare/set-split-rules", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_set_split_rules(body: SplitRulesIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """ADMIN: the smallest part a split may create and the deepest a split may go."""
    fn = _ledger(service).functions.setSplitRules(body.minSplitUnit, body.maxSplitDepth)
    return _prepared(service, caller, fn)


@router.post("/prepare/pause", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_pause(service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """ADMIN: stops every order, certificate and payment operation (an emergency)."""
    return _prepared(service, caller, _ledger(service).functions.pause())


@router.post("/prepare/unpause", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_unpause(service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """ADMIN: resumes operation."""
    return _prepared(service, caller, _ledger(service).functions.unpause())


@router.post("/prepare/suspend-participant", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_suspend(body: AccountIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    return _prepared(service, caller, _ledger(service).functions.suspendParticipant(body.account))


@router.post("/prepare/reinstate-participant", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_reinstate(body: AccountIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    return _prepared(service, caller, _ledger(service).functions.reinstateParticipant(body.account))


@router.post("/prepare/open-order", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_open_order(body: OpenOrderIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """ISSUER: escrow `amount` for goods; the ledger must be approved for it (prepare/approve-token)."""
    fn = _ledger(service).functions.openOrder(
        body.payee,
        body.amount,
        body.maturity,
        bytes32_of(body.invoice),
        bytes32_of(body.warehouse),
        bytes32_of(body.goods),
        body.expectedQuantity,
        body.deadline,
    )
    return _prepared(service, caller, fn)


@router.post("/prepare/cancel-order", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_cancel_order(body: OrderIdIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    return _prepared(service, caller, _ledger(service).functions.cancelOrder(body.orderId))


@router.post("/prepare/approve-token", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_approve_token(body: ApproveTokenIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """ISSUER or FACTOR: lets the ledger take escrow (issuer) or a discount price (factor) from the
    caller's tokens."""
    fn = service.system.token.contract.functions.approve(service.system.ledger.address, body.amount)
    return _prepared(service, caller, fn)


@router.post("/prepare/transfer", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_transfer(body: TransferIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """Moves a whole certificate to `to`: the caller's, or as an operator its holder approved
    (`holder`)."""
    fn = _ledger(service).get_function_by_signature("transferFrom(address,address,uint256)")(
        body.holder or caller.address, body.to, body.certificateId
    )
    return _prepared(service, caller, fn)


@router.post("/prepare/approve", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_approve(body: ApproveIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """Lets `operator` move the whole certificate (ERC-721 approval; void once it changes hands)."""
    approve = _ledger(service).get_function_by_signature("approve(address,uint256)")
    fn = approve(body.operator, body.certificateId)
    return _prepared(service, caller, fn)


@router.post("/prepare/approve-value", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_approve_value(body: ApproveValueIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """Lets `operator` move up to `value` out of the certificate (ERC-3525 value allowance), for a
    factor to take part of it, say."""
    fn = _ledger(service).get_function_by_signature("approve(uint256,address,uint256)")(
        body.certificateId, body.operator, body.value
    )
    return _prepared(service, caller, fn)


@router.post("/prepare/set-approval-for-all", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_set_approval_for_all(
    body: ApprovalForAllIn, service: ServiceDep, caller: CallerDep
) -> UnsignedTx:
    """Lets `operator` move every certificate of the caller's (or stops it)."""
    fn = _ledger(service).functions.setApprovalForAll(body.operator, body.approved)
    return _prepared(service, caller, fn)


@router.post("/prepare/split", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_split(body: SplitIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """Splits in place: the certificate keeps values[0], new ones hold the rest (same holder)."""
    return _prepared(service, caller, _ledger(service).functions.split(body.certificateId, body.values))


@router.post("/prepare/split-to", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_split_to(body: SplitToIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """Moves `value` out of the certificate into a new one held by `to` (passing part down the chain)."""
    fn = _ledger(service).get_function_by_signature("transferFrom(uint256,address,uint256)")(
        body.certificateId, body.to, body.value
    )
    return _prepared(service, caller, fn)


@router.post("/prepare/merge", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_merge(body: MergeIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """Moves `value` from one certificate into another of the same order."""
    fn = _ledger(service).get_function_by_signature("transferFrom(uint256,uint256,uint256)")(
        body.fromId, body.toId, body.value
    )
    return _prepared(service, caller, fn)


@router.post("/prepare/offer-discount", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_offer(body: OfferIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    fn = _ledger(service).functions.offerDiscount(
        body.certificateId, body.value, body.price, body.buyer or _ZERO, body.expiry
    )
    return _prepared(service, caller, fn)


@router.post("/prepare/cancel-offer", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_cancel_offer(body: OfferIdIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    return _prepared(service, caller, _ledger(service).functions.cancelDiscountOffer(body.offerId))


@router.post("/prepare/buy", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_buy(body: OfferIdIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """FACTOR: buys an offer, price against value in one transaction. An offer whose certificate
    can no longer be sold as offered (moved, shrank, matured, frozen or settled since it was made)
    is 409 OfferStale (the certificate is not the buyer's to read)."""
    return _prepared(service, caller, _ledger(service).functions.buyDiscounted(body.offerId))


@router.post("/prepare/settle", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_settle(body: SettleIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """Pays each matured certificate's holder. The contract takes it from any sender; prepared here
    (and relayed by POST /v1/tx) for the certificates the caller may read (each unknown id 404,
    each it may not read 403)."""
    return _prepared(service, caller, _ledger(service).functions.settle(body.certificateIds))


@router.post("/prepare/withdraw", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_withdraw(service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """Pulls the caller's credit (payments its token account refused)."""
    return _prepared(service, caller, _ledger(service).functions.withdraw())


@router.post("/prepare/freeze", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_freeze(body: FreezeIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    fn = _ledger(service).functions.freeze(body.certificateId, bytes32_of(body.reason))
    return _prepared(service, caller, fn)


@router.post("/prepare/unfreeze", response_model=UnsignedTx, responses=_PROBLEMS)
def prepare_unfreeze(body: FreezeIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    return _prepared(service, caller, _ledger(service).functions.unfreeze(body.certificateId))


@cache
def _oracle_errors() -> frozenset[str]:
    """The errors of the oracle's own checks: about the observations, the devices, the warehouse's
    enrolment and the relayer, never about an order's terms or parties."""
    abi = load_artifact("ReceiptOracle").abi
    return frozenset(str(e["name"]) for e in abi if e.get("type") == "error")


@router.post("/prepare/confirm-receipt", response_model=UnsignedTx, responses=_PROBLEMS, tags=["oracle"])
def prepare_confirm_receipt(body: ConfirmReceiptIn, service: ServiceDep) -> UnsignedTx:
    """For a warehouse gateway (no sign-in): the confirmReceipt transaction for its devices' signed
    observations, in the order the oracle requires. The gateway signs it and posts it to /v1/tx.

    Nothing authenticates this request (`sender` is a claim), so it answers no more about the order
    than the observations already say: the order they name must exist (404 NotFound, as the reads
    answer), the oracle's own errors (relayer allow-list, signatures, devices, freshness, ranges:
    checked before the order is read) come as they are, and an error from the ledger or the token
    (the order not open, past its deadline, its payee not eligible, ...) is answered by its code with
    the order id alone, not the order's status, deadline or payee."""
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
    _in_scope(service, lambda _: _orders_exist(service, sorted({o.order_id for o in observations})))
    # The order the ledger is asked about: the first observation's in the oracle's (device) order.
    order_id = min(observations, key=lambda o: int(o.device, 16)).order_id if observations else 0
    try:
        return _unsigned(service.relay.prepare(to_checksum_address(body.sender), fn))
    except ContractReverted as exc:
        if isinstance(exc, ContractError) and exc.error_name in _oracle_errors():
            raise
        name = exc.error_name if isinstance(exc, ContractError) else "Reverted"
        status = contract_status(name) if isinstance(exc, ContractError) else 422
        raise ApiError(
            status, name, f"the ledger does not take this receipt for order {order_id} ({name})",
            orderId=order_id,
        ) from None  # fmt: skip


def _oracle(service: Service) -> Any:
    return service.system.oracle.contract


Enrolment = tuple[bytes, list[tuple[str, int]], int, int, list[tuple[int, int, int]]]


def _enrolment(body: WarehouseIn) -> Enrolment:
    return (
        bytes32_of(body.warehouse),
        [(d.address, d.kind) for d in body.devices],
        body.threshold,
        body.freshness,
        [(r.kind, r.min, r.max) for r in body.ranges],
    )


@router.post("/prepare/register-warehouse", response_model=UnsignedTx, responses=_PROBLEMS, tags=["oracle"])
def prepare_register_warehouse(body: WarehouseIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """ADMIN: enrols a warehouse: its device keys and kinds, the quorum, the freshness window and
    the plausible range of each reading kind (every kind with a range is required in a receipt)."""
    return _prepared(service, caller, _oracle(service).functions.registerWarehouse(*_enrolment(body)))


@router.post("/prepare/rotate-devices", response_model=UnsignedTx, responses=_PROBLEMS, tags=["oracle"])
def prepare_rotate_devices(body: WarehouseIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """ADMIN: replaces a warehouse's devices and rules; observations signed under the old set stop
    verifying."""
    return _prepared(service, caller, _oracle(service).functions.rotateDevices(*_enrolment(body)))


@router.post("/prepare/deactivate-warehouse", response_model=UnsignedTx, responses=_PROBLEMS, tags=["oracle"])
def prepare_deactivate_warehouse(body: WarehouseIdIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """ADMIN: retires a warehouse for good; open orders naming it can only be cancelled."""
    fn = _oracle(service).functions.deactivateWarehouse(bytes32_of(body.warehouse))
    return _prepared(service, caller, fn)


@router.post("/prepare/set-relayer", response_model=UnsignedTx, responses=_PROBLEMS, tags=["oracle"])
def prepare_set_relayer(body: RelayerIn, service: ServiceDep, caller: CallerDep) -> UnsignedTx:
    """ADMIN: puts an account on (or takes it off) the list that may submit receipts."""
    return _prepared(service, caller, _oracle(service).functions.setRelayer(body.relayer, body.allowed))


def _orders_exist(service: Service, order_ids: list[int]) -> None:
    for order_id in order_ids:
        if service.reader.get(OrderRecord, order_id=order_id) is None:
            raise not_found("order", order_id)
