"""Relaying transactions that participants signed themselves (the HTTP service is non-custodial).

    prepare      the unsigned transaction for a job (to, data, nonce, gas, fees, chain id), simulated
                 first, so a client without the ABI can sign it; `sign_prepared` signs it locally
    decode_raw   a raw signed transaction: its sender, target, selector and fields
    check        everything the service refuses before spending gas: another chain, a contract or a
                 function that is not a certledger job, ether attached, a nonce already used, a
                 sender with transactions pending that the simulation cannot see, a sender without
                 the job's role, and the simulation's contract error (run at the pending block)
    broadcast    sends the raw bytes and waits for the receipt (bounded by the receipt timeout); a
                 transaction mined and reverted is `RevertedOnChain`, never the refusal's answer
    submit       check then broadcast; the same bytes sent again while they are pending, or once
                 mined, get their outcome (the receipt awaited, or read) instead

Jobs are allow-listed by function name from the compiled ABIs, not by hard-coded selectors, so a
contract whose ABI changes (a new confirmReceipt shape) keeps working once its artifact is rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils import function_abi_to_4byte_selector, keccak, to_checksum_address
from hexbytes import HexBytes
from web3.contract.contract import ContractFunction
from web3.types import TxParams, Wei

from chain_client.artifacts import load_artifact
from chain_client.errors import (
    CertledgerError,
    ContractReverted,
    NodeUnavailable,
    NonceTooLow,
    OutcomeUnknown,
    RevertedOnChain,
    TransactionRejected,
    TransactionTimeout,
)
from chain_client.events import DecodedEvent
from chain_client.models import Role
from chain_client.system import System
from chain_client.transactions import (
    PreparedTx,
    TxResult,
    call_checked,
    node_failure,
    signed_fields,
    unavailable,
)

#: Roles that may start each job, by contract and function name. None: anyone (settlement after
#: maturity, withdrawing one's own credit, a gateway relaying device signatures); each of those the
#: contract refuses unless there is something to do, so the simulation keeps an outsider's off the
#: chain. A token approval always succeeds: only those who pay the ledger (escrow, a discount
#: price) may relay one, or anyone with a key could fill blocks through the service on a network
#: without gas fees. The contracts enforce their rules anyway; this check answers early with a 403.
_HOLDERS = Role.SUPPLIER | Role.FACTOR
JOB_ROLES: dict[str, dict[str, Role | None]] = {
    "CertificateLedger": {
        "openOrder": Role.ISSUER,
        "cancelOrder": Role.ISSUER,
        "transferFrom": _HOLDERS,
        "safeTransferFrom": _HOLDERS,
        "split": _HOLDERS,
        "approve": _HOLDERS,
        "setApprovalForAll": _HOLDERS,
        "offerDiscount": _HOLDERS,
        "cancelDiscountOffer": _HOLDERS,
        "buyDiscounted": Role.FACTOR,
        "settle": None,
        "withdraw": None,
        "freeze": Role.REGULATOR,
        "unfreeze": Role.REGULATOR,
        "registerParticipant": Role.ADMIN,
        "setRoles": Role.ADMIN,
        "setIssuerLimit": Role.ADMIN,
        "suspendParticipant": Role.ADMIN,
        "reinstateParticipant": Role.ADMIN,
        "setSplitRules": Role.ADMIN,
        "pause": Role.ADMIN,
        "unpause": Role.ADMIN,
    },
    "ReceiptOracle": {
        "confirmReceipt": None,
        "registerWarehouse": Role.ADMIN,
        "rotateDevices": Role.ADMIN,
        "deactivateWarehouse": Role.ADMIN,
        "setRelayer": Role.ADMIN,
    },
    "SettlementToken": {"approve": Role.ISSUER | Role.FACTOR},
}


#: Transaction types relayed (see `decode_raw`).
RELAYED_TYPES = (0, 1, 2)


class RelayRefused(CertledgerError):
    """The service refuses a signed transaction before sending it; `code` is stable for clients."""

    def __init__(self, code: str, message: str, status: int, **fields: Any) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.fields: dict[str, Any] = fields


class _AlreadySent(Exception):
    """`check` found this very transaction already with the node (pending, or mined meanwhile):
    nothing to check or send, only its receipt to wait for."""


@dataclass(frozen=True)
class Job:
    contract: str
    function: str
    address: ChecksumAddress
    roles: Role | None


@dataclass(frozen=True)
class DecodedTx:
    """A raw signed transaction, decoded and attributed to its signer."""

    raw: bytes
    tx_hash: str
    sender: ChecksumAddress
    to: ChecksumAddress | None
    nonce: int
    gas: int
    value: int
    data: bytes
    chain_id: int | None
    max_fee_per_gas: int | None
    gas_price: int | None
    #: EIP-2718 type: 0 legacy, 1 EIP-2930, 2 EIP-1559
    tx_type: int = 0
    #: EIP-2930 access list (types 1 and 2), as JSON-RPC takes it: its intrinsic gas is charged
    access_list: tuple[dict[str, Any], ...] = ()

    @property
    def selector(self) -> bytes:
        return self.data[:4]


@dataclass(frozen=True)
class Relayed:
    """A relayed transaction that was mined successfully."""

    job: Job
    sender: ChecksumAddress
    result: TxResult


class Relay:
    """Builds, checks and sends participant-signed transactions for one deployed system."""

    def __init__(self, system: System) -> None:
        self.system = system
        deployment = system.deployment
        addresses = {
            "CertificateLedger": deployment.ledger,
            "ReceiptOracle": deployment.oracle,
            "SettlementToken": deployment.token,
        }
        self._jobs: dict[tuple[ChecksumAddress, bytes], Job] = {}
        for contract, allowed in JOB_ROLES.items():
            address = addresses[contract]
            for entry in load_artifact(contract).abi:
                if entry.get("type") == "function" and entry["name"] in allowed:
                    selector = function_abi_to_4byte_selector(entry)  # type: ignore[arg-type]
                    job = Job(contract, entry["name"], address, allowed[entry["name"]])
                    self._jobs[(address, selector)] = job

    @property
    def contracts(self) -> set[ChecksumAddress]:
        return {address for address, _ in self._jobs}

    # ------------------------------------------------------------------ building

    def prepare(self, sender: ChecksumAddress, fn: ContractFunction) -> dict[str, Any]:
        """The unsigned EIP-1559 (or, on a zero-fee network, legacy) transaction for `fn` sent by
        `sender`, after a simulation: a call that would fail raises its typed error instead."""
        chain = self.system.chain
        job = self.job_for(
            to_checksum_address(fn.address), bytes(HexBytes(fn._encode_transaction_data()))[:4]
        )
        params: TxParams = {"from": sender, "chainId": chain.chain_id, "value": Wei(0)}
        try:
            params["gas"] = self.system.tx.estimate(sender, fn)
        except TransactionRejected as exc:
            # Nodes refuse to estimate for a sender that cannot pay for the gas, each in its own words
            # (py-evm: "cannot afford txn gas", geth and anvil: "insufficient funds").
            text = exc.reason.lower()
            if "afford" in text or "insufficient funds" in text:
                raise RelayRefused(
                    "InsufficientGasFunds", "the sender has no ether for the gas", 422, sender=sender
                ) from None
            raise RelayRefused(
                "TransactionRejected", f"the node will not run it: {exc.reason}", 422, reason=exc.reason
            ) from None
        # After the simulation, whose contract error says more where the contract checks the role
        # itself; a job it does not gate (a token approval) would pass it and be refused at submit.
        self._check_role(job, sender)
        params.update(self.system.tx.fees())
        params["nonce"] = call_checked(lambda: chain.w3.eth.get_transaction_count(sender, "pending"))
        tx: dict[str, Any] = dict(fn.build_transaction(params))
        tx.pop("from", None)
        return tx

    # ------------------------------------------------------------------ checking

    def job_for(self, to: ChecksumAddress | None, selector: bytes) -> Job:
        if to is None or to not in self.contracts:
            raise RelayRefused(
                "UnknownContract", "the transaction is not addressed to a certledger contract", 422, to=to
            )
        job = self._jobs.get((to, selector))
        if job is None:
            raise RelayRefused(
                "JobNotAllowed",
                "the transaction calls no function this service relays",
                422,
                to=to,
                selector="0x" + selector.hex(),
            )
        return job

    def check(self, tx: DecodedTx) -> Job:
        """Everything short of sending; raises RelayRefused or the simulation's ContractReverted
        (and `_AlreadySent`, for `submit`, when the node already has this very transaction)."""
        chain = self.system.chain
        if tx.chain_id is None:
            # A pre-EIP-155 signature is valid on every chain: one made for a test network would
            # replay here (same deployer, same contract addresses).
            raise RelayRefused(
                "UnprotectedTransaction",
                "signed without a chain id (pre-EIP-155), which any chain would accept",
                422,
                expected=chain.chain_id,
            )
        if tx.chain_id != chain.chain_id:
            raise RelayRefused(
                "WrongChain", "signed for another chain", 422, chainId=tx.chain_id, expected=chain.chain_id
            )
        job = self.job_for(tx.to, tx.selector)
        if tx.value:
            raise RelayRefused("EtherNotAccepted", "certledger takes no ether", 422, value=tx.value)
        self._check_nonce(tx)
        self._check_role(job, tx.sender)
        fee = tx.max_fee_per_gas if tx.max_fee_per_gas is not None else (tx.gas_price or 0)
        self._check_gas(tx, fee)
        balance = call_checked(lambda: chain.w3.eth.get_balance(tx.sender))
        if balance < tx.gas * fee:
            raise RelayRefused(
                "InsufficientGasFunds",
                "the sender cannot pay for the gas it offers",
                422,
                balance=balance,
                needed=tx.gas * fee,
            )
        self.simulate(tx)
        return job

    def _check_role(self, job: Job, sender: ChecksumAddress) -> None:
        if job.roles is None:
            return
        participant = self.system.ledger.participant(sender)
        if not participant.active or not participant.roles & job.roles:
            raise RelayRefused(
                "RoleRequired",
                f"{job.function} needs an active participant with one of {_role_names(job.roles)}",
                403,
                account=sender,
                required=_role_names(job.roles),
                roles=_role_names(participant.roles),
                active=participant.active,
            )

    def _check_nonce(self, tx: DecodedTx) -> None:
        """The nonce must be the sender's next, and every transaction the sender has pending before
        it must be in what the simulation runs on. Raises `_AlreadySent` when this very transaction
        is already with the node (a client sending the same bytes again, as it is told to)."""
        w3 = self.system.chain.w3
        mined = call_checked(lambda: w3.eth.get_transaction_count(tx.sender, "latest"))
        if tx.nonce < mined:
            # This very transaction mined (a client that lost the first answer, or got a 504, sends
            # the same bytes again as it is told to): its outcome, success or revert, is the answer,
            # as for the same bytes sent again while pending. Another transaction on a used nonce
            # (one it was meant to replace) is refused.
            if self._included(tx.tx_hash):
                raise _AlreadySent
            raise _nonce_used(tx, "this transaction's nonce was already used by its sender", mined)
        pending = int(call_checked(lambda: w3.eth.get_transaction_count(tx.sender, "pending")))
        pool = self._embedded_pool(tx.sender)
        if pool:
            pending = max(pending, max(pool) + 1)
        if tx.nonce < pending:
            if self._known(tx.tx_hash):
                raise _AlreadySent
            raise _nonce_used(tx, "a pending transaction of this sender already has this nonce", pending)
        if tx.nonce > pending:
            # It would wait in the pool for the gap to fill, and this service waits for receipts.
            raise RelayRefused(
                "NonceGap", "an earlier nonce of this sender is missing", 409, nonce=tx.nonce, next=pending
            )
        if pending > mined and (pool or not self._pending_block_holds(tx.sender, mined, pending)):
            # The sender's earlier transactions may change the outcome (the same job sent twice),
            # and the node's pending block, which the simulation runs on, lacks them: the embedded
            # chain keeps its pool outside it, and some nodes (Besu) answer "pending" with the
            # latest block. The same bytes may be sent again once those are mined.
            raise RelayRefused(
                "PendingTransaction",
                "the sender has transactions pending that this one cannot be checked against; "
                "send it again once they are mined",
                409,
                sender=tx.sender,
                nonce=tx.nonce,
                mined=mined,
                pending=pending - mined,
                txHash=tx.tx_hash,
            )

    def _embedded_pool(self, sender: ChecksumAddress) -> dict[int, str]:
        """The sender's transactions waiting in the embedded chain's pool (auto-mining off), by
        nonce. eth-tester keeps them apart from its pending block until it mines: its pending
        nonce count, its pending block and a call on it all leave them out."""
        tester = self.system.chain._tester
        if tester is None or getattr(tester, "auto_mine_transactions", True):
            return {}
        pool: dict[int, str] = {}
        for pending in getattr(tester, "_pending_transactions", ()):
            if to_checksum_address(pending["from"]) == sender:
                pool[int(pending["nonce"])] = "0x" + bytes(HexBytes(pending["hash"])).hex()
        return pool

    def _pending_block_holds(self, sender: ChecksumAddress, mined: int, pending: int) -> bool:
        """Whether the node's pending block holds every transaction `sender` has pending (nonces
        `mined` up to `pending`), so a simulation on it sees their effects (anvil and geth build it
        from the pool; Besu answers with the latest block)."""
        w3 = self.system.chain.w3
        try:
            block = call_checked(lambda: w3.eth.get_block("pending", full_transactions=True))
        except Exception as exc:  # BlockNotFound, web3's or eth-tester's own
            if type(exc).__name__ != "BlockNotFound":
                raise
            block = None  # the node answered null: it shows no pending block
        if block is None:
            return False
        nonces = {
            int(t["nonce"])
            for t in block.get("transactions", ())
            if isinstance(t, Mapping) and to_checksum_address(t["from"]) == sender
        }
        if all(n in nonces for n in range(mined, pending)):
            return True
        # A block mined since `mined` was counted takes its transactions out of the pending block:
        # those are in the state the simulation runs on all the same. Counted after the pending
        # block was read, so none mined in between is taken for missing.
        now_mined = int(call_checked(lambda: w3.eth.get_transaction_count(sender, "latest")))
        return all(n in nonces or n < now_mined for n in range(mined, pending))

    def _check_gas(self, tx: DecodedTx, fee: int) -> None:
        """Refuses what no block would include: more gas than a block holds, or a fee below the
        latest base fee (the node would keep it waiting, or refuse it, in its own words)."""
        block = call_checked(lambda: self.system.chain.w3.eth.get_block("latest"))
        limit = int(block["gasLimit"])
        if tx.gas > limit:
            raise RelayRefused(
                "GasAboveBlockLimit", "the transaction asks for more gas than a block holds", 422,
                gas=tx.gas, blockGasLimit=limit,
            )  # fmt: skip
        base = block.get("baseFeePerGas")
        if base is not None and fee < int(base):
            raise RelayRefused(
                "FeeBelowBaseFee", "the fee offered is below the chain's base fee", 422,
                maxFeePerGas=fee, baseFeePerGas=int(base),
            )  # fmt: skip

    def simulate(self, tx: DecodedTx) -> None:
        """Runs the transaction as a call from its sender on the pending block, with the gas and
        the access list it carries; a revert raises the contract's typed error and nothing is sent.

        The pending block, not the latest: it holds the sender's own pending transactions (`check`
        refuses a sender whose pending ones it lacks), and its time is the next block's, which the
        transaction will see: on a node that mines on demand the latest block can be minutes old,
        and an offer or a deadline that lapsed meanwhile would pass here and revert on chain
        (D33). Another sender's transaction can still change the outcome; then the receipt's
        revert is decoded and reported as `RevertedOnChain`. A failure that is not a revert (out of
        gas, below the intrinsic gas, an access list the gas does not cover) is the signed
        transaction's own fault: `SimulationFailed`. A node that does not answer: NodeUnavailable."""
        w3 = self.system.chain.w3
        call: dict[str, Any] = {"from": tx.sender, "to": tx.to, "data": HexBytes(tx.data), "gas": tx.gas}
        if tx.access_list:
            call["accessList"] = list(tx.access_list)
        try:
            call_checked(lambda: w3.eth.call(cast(TxParams, call), "pending"))
        except CertledgerError:
            raise
        except Exception as exc:
            if node_failure(exc):
                raise unavailable(self.system.chain.settings.rpc_url, exc) from exc
            raise RelayRefused(
                "SimulationFailed",
                f"the transaction fails as signed: {exc}",
                422,
                gas=tx.gas,
                reason=str(exc),
            ) from None

    def _included(self, tx_hash: str) -> bool:
        """Whether the node has mined this very transaction."""
        return self._answers(self.system.chain.w3.eth.get_transaction_receipt, tx_hash)

    def _known(self, tx_hash: str) -> bool:
        """Whether the node has this very transaction, pending or mined."""
        return self._answers(self.system.chain.w3.eth.get_transaction, tx_hash)

    def _answers(self, lookup: Callable[[HexBytes], Any], tx_hash: str) -> bool:
        """Whether the node finds `tx_hash` with `lookup`; NodeUnavailable if it failed to say."""
        try:
            found = lookup(HexBytes(tx_hash))
        except Exception as exc:  # TransactionNotFound, in each provider's own type
            if node_failure(exc):
                raise unavailable(self.system.chain.settings.rpc_url, exc) from exc
            return False
        return found is not None

    # ------------------------------------------------------------------ sending

    def submit(self, tx: DecodedTx) -> Relayed:
        """check, then broadcast: the whole path of a signed request (`decode_raw` of its bytes).
        The same bytes sent again while the node still has them pending, or once they are mined (a
        client that lost the answer, or got a 504), are not refused: their receipt is awaited or
        read as for a fresh send (200 with the events, or RevertedOnChain), so the client learns
        the outcome and never signs a second transaction for the job."""
        try:
            job = self.check(tx)
        except _AlreadySent:
            return Relayed(self.job_for(tx.to, tx.selector), tx.sender, self._outcome(tx))
        return Relayed(job, tx.sender, self.broadcast(tx))

    def broadcast(self, tx: DecodedTx) -> TxResult:
        """Sends the signed bytes through chain_client and waits for the receipt. A transaction
        that passed simulation but was mined and reverted (the state moved in between) raises
        `RevertedOnChain` with its block, its gas and the contract's typed error (recovered by
        replaying it at its block): its nonce and gas are spent, unlike a refusal's."""
        transactor = self.system.tx
        try:
            transactor.broadcast(PreparedTx(tx.tx_hash, tx.raw, tx.sender, tx.nonce))
        except NonceTooLow:
            # Mined since `check` (the same bytes sent concurrently): their outcome is the answer.
            if self._included(tx.tx_hash):
                return self._outcome(tx)
            raise _nonce_used(tx, "the node refused a nonce already used") from None
        except NodeUnavailable as exc:
            # The bytes may have reached the node before the connection failed.
            raise OutcomeUnknown(tx.tx_hash, f"the node failed while it was sent: {exc}") from exc
        except TransactionRejected as exc:
            # Refused in the node's own words (fee too low for a replacement, gas, funds): nothing
            # is pending, and the signed transaction itself must change.
            raise RelayRefused(
                "TransactionRejected", f"the node refused the transaction: {exc.reason}", 422,
                txHash=tx.tx_hash, reason=exc.reason,
            ) from None  # fmt: skip
        except ContractReverted as exc:
            # The embedded chain executes on send: mined and reverted there, or refused unmined.
            if exc.mined is not None:
                raise RevertedOnChain.of(exc) from None
            raise
        return self._outcome(tx)

    def _outcome(self, tx: DecodedTx) -> TxResult:
        """Waits for a sent transaction's receipt (bounded by the receipt timeout)."""
        transactor, timeout = self.system.tx, self.system.chain.settings.receipt_timeout
        try:
            result = transactor.receipt(tx.tx_hash, timeout)
        except NodeUnavailable as exc:
            raise OutcomeUnknown(tx.tx_hash, f"the node failed while its receipt was awaited: {exc}") from exc
        except ContractReverted as exc:
            if exc.mined is not None:
                raise RevertedOnChain.of(exc) from None
            raise
        if result is None:
            raise TransactionTimeout(tx.tx_hash, timeout)
        return result


def _nonce_used(tx: DecodedTx, message: str, next_nonce: int | None = None) -> RelayRefused:
    """NonceAlreadyUsed: another transaction took `tx`'s nonce (`included` false; the same bytes sent
    again get their outcome instead). `next_nonce`, the sender's next, where it was read."""
    context: dict[str, Any] = {"sender": tx.sender, "next": next_nonce} if next_nonce is not None else {}
    return RelayRefused(
        "NonceAlreadyUsed", message, 409, **context, nonce=tx.nonce, txHash=tx.tx_hash, included=False
    )


def _role_names(roles: Role) -> list[str]:
    return [r.name for r in Role if r & roles and r.name is not None]


def decode_raw(raw: bytes | str) -> DecodedTx:
    """Decodes a signed transaction (EIP-1559, EIP-2930 or legacy) and recovers its signer."""
    data = bytes(HexBytes(raw))
    tx_type = data[0] if data and data[0] <= 0x7F else 0
    try:
        sender = to_checksum_address(Account.recover_transaction(data))
        fields = signed_fields(data)
        chain_id = int(fields["chainId"]) if "chainId" in fields else None
    except Exception as exc:  # rlp, signature and field errors come in many types
        raise RelayRefused("MalformedTransaction", f"not a signed transaction: {exc}", 422) from None
    if tx_type not in RELAYED_TYPES:
        # Blob (3) and set-code (4) transactions carry parts a certledger job never needs and this
        # service would not check (blobs, authorisations): refused rather than relayed unread.
        raise RelayRefused(
            "UnsupportedTransactionType",
            "only legacy, EIP-2930 and EIP-1559 transactions are relayed",
            422,
            type=tx_type,
        )
    to = fields.get("to")
    to_bytes = bytes(HexBytes(to)) if to else b""
    access_list = tuple(
        {
            "address": to_checksum_address(bytes(HexBytes(entry["address"]))),
            "storageKeys": ["0x" + int(key).to_bytes(32, "big").hex() for key in entry["storageKeys"]],
        }
        for entry in fields.get("accessList", ())
    )
    return DecodedTx(
        raw=data,
        tx_hash="0x" + keccak(data).hex(),
        sender=sender,
        to=to_checksum_address(to_bytes) if len(to_bytes) == 20 else None,
        nonce=int(fields["nonce"]),
        gas=int(fields["gas"]),
        value=int(fields["value"]),
        data=bytes(HexBytes(fields.get("data", b""))),
        chain_id=chain_id,
        max_fee_per_gas=int(fields["maxFeePerGas"]) if "maxFeePerGas" in fields else None,
        gas_price=int(fields["gasPrice"]) if "gasPrice" in fields else None,
        tx_type=tx_type,
        access_list=access_list,
    )


def sign_prepared(account: LocalAccount, unsigned: Mapping[str, Any]) -> bytes:
    """Signs a transaction as `prepare` (or POST /v1/tx/prepare/...) returned it. JSON gives
    numbers as they were sent and data as hex; both sign as they are."""
    tx = {k: v for k, v in unsigned.items() if v is not None}
    for key in ("nonce", "gas", "maxFeePerGas", "maxPriorityFeePerGas", "gasPrice", "value", "chainId"):
        if key in tx:
            tx[key] = int(tx[key])
    if "type" in tx and isinstance(tx["type"], str):
        tx["type"] = int(tx["type"], 16)
    return bytes(account.sign_transaction(tx).raw_transaction)


def event_json(event: DecodedEvent) -> dict[str, Any]:
    """An event as JSON-safe data: integers above 2**53 as decimal strings, bytes as hex."""
    return {
        "name": event.name,
        "address": event.address,
        "logIndex": event.log_index,
        "args": jsonable(event.args),
    }


def jsonable(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) <= 2**53 else str(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
