"""Signing and sending: local eth-account keys, one nonce sequence per sender, typed reverts."""

from __future__ import annotations

import ast
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from eth_account import Account
from eth_account._utils.legacy_transactions import Transaction as LegacyTransaction
from eth_account.signers.local import LocalAccount
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from eth_typing import ChecksumAddress
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes
from requests.exceptions import RequestException
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import (
    BadFunctionCallOutput,
    BadResponseFormat,
    CannotHandleRequest,
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    MultipleFailedRequests,
    ProviderConnectionError,
    RequestTimedOut,
    TooManyRequests,
    Web3RPCError,
)
from web3.types import BlockIdentifier, Nonce, TxParams, TxReceipt, Wei

from chain_client.errors import (
    CertledgerError,
    ContractMissing,
    ContractReverted,
    MinedRevert,
    NodeUnavailable,
    NonceTooLow,
    OutcomeUnknown,
    TransactionRejected,
    TransactionTimeout,
    UnknownRevert,
    decode_revert,
)
from chain_client.events import DecodedEvent, EventDecoder

if TYPE_CHECKING:
    from chain_client.chain import Chain

T = TypeVar("T")
log = logging.getLogger(__name__)

#: The least tip offered per gas, in wei (1 gwei): what a block builder on a quiet network asks.
#: Where the market asks more (the node's eth_maxPriorityFeePerGas), the market's tip is offered.
PRIORITY_FEE = 1_000_000_000
#: A node takes a transaction in place of one it holds at the same nonce only if both fee fields
#: rise by at least 10% (geth's and anvil's price bump); an eighth clears it with rounding to spare.
REPLACEMENT_BUMP = (9, 8)


def _bumped(fee: int) -> int:
    """`fee` raised by REPLACEMENT_BUMP, rounded up."""
    num, den = REPLACEMENT_BUMP
    return -(-fee * num // den)


class NonceManager:
    """Hands out nonces per sender from a local counter, so a sender can have several transactions
    in flight; falls back to the node's pending count on first use and after a failed send."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[ChecksumAddress, int] = {}

    def take(self, address: ChecksumAddress, fetch: Callable[[], int]) -> int:
        with self._lock:
            nonce = self._next.get(address)
            if nonce is None:
                nonce = fetch()
            self._next[address] = nonce + 1
            return nonce

    def forget(self, address: ChecksumAddress) -> None:
        with self._lock:
            self._next.pop(address, None)


@dataclass(frozen=True)
class TxResult:
    """A mined, successful transaction with its decoded events."""

    tx_hash: str
    block_number: int
    gas_used: int
    events: tuple[DecodedEvent, ...] = field(default_factory=tuple)
    #: the created contract's address, for a deployment
    contract_address: ChecksumAddress | None = None

    def event(self, name: str) -> DecodedEvent:
        """The only event called `name` (raises if none or several)."""
        found = [e for e in self.events if e.name == name]
        if len(found) != 1:
            raise LookupError(f"{len(found)} {name} events in {self.tx_hash}")
        return found[0]

    def all(self, name: str) -> list[DecodedEvent]:
        return [e for e in self.events if e.name == name]


#: The node, or a proxy before it, did not serve the request: no connection, a timeout, an HTTP
#: error status (a 502 from nginx while the node is down), an answer that is not JSON-RPC, a rate
#: limit. Never an answer about the request itself; asking again later may succeed.
TRANSPORT_FAILURES: tuple[type[Exception], ...] = (
    RequestException,  # ConnectionError, Timeout, HTTPError, ...
    ConnectionError,
    TimeoutError,
    ProviderConnectionError,
    BadResponseFormat,
    CannotHandleRequest,
    MultipleFailedRequests,
    TooManyRequests,
    RequestTimedOut,
)
#: JSON-RPC error codes that report the node's own trouble, not the request's (EIP-1474: resource
#: unavailable, limit exceeded).
_TRANSIENT_RPC_CODES = frozenset({-32002, -32005})


def rpc_code(exc: BaseException) -> int | None:
    """The JSON-RPC error code of a node's error answer, if it has one."""
    if not isinstance(exc, Web3RPCError):
        return None
    response = exc.rpc_response or {}
    error = response.get("error") if isinstance(response, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) else None


def node_failure(exc: BaseException, internal: bool = False) -> bool:
    """Whether `exc` says the node failed to serve a request rather than answered about it.
    `internal`: count a JSON-RPC internal error (-32603) as the node's trouble too; not for a call,
    where anvil reports an EVM failure (out of gas) with that code."""
    if isinstance(exc, TRANSPORT_FAILURES):
        return True
    code = rpc_code(exc)
    return code in _TRANSIENT_RPC_CODES or (internal and code == -32603)


def unavailable(url: str | None, exc: BaseException) -> NodeUnavailable:
    reason = str(exc) or type(exc).__name__
    return NodeUnavailable(url or "embedded", reason)


def call_checked(fn: Callable[[], T]) -> T:
    """Runs a web3 call or estimate, turning revert data into our typed exceptions and a node that
    did not serve the request (connection, HTTP status, rate limit) into NodeUnavailable."""
    try:
        return fn()
    except (ContractCustomError, ContractPanicError, ContractLogicError) as exc:
        raise _typed(exc) from None
    except BadFunctionCallOutput as exc:
        # web3 tells the two apart only in its message: no data from an address without code (it
        # asks the node for the code), or data it could not decode (a third-party token's odd
        # answer), which is no reason to say the chain was reset and stays as it is.
        if "is contract deployed correctly" not in str(exc):
            raise
        raise ContractMissing(
            "a contract of the manifest answered no data: there is no code at its address on the "
            "node's chain (was the chain reset or replaced?)"
        ) from exc
    except Exception as exc:
        if node_failure(exc):
            raise unavailable("node", exc) from exc
        # The embedded chain's provider raises eth-tester's TransactionFailed, whose cause holds
        # the raw revert data as bytes, instead of web3's ContractCustomError.
        data = embedded_revert_data(exc)
        if data is None:
            raise
        raise decode_revert(data) from None


def embedded_revert_data(exc: BaseException) -> bytes | None:
    """Revert data from eth-tester's exceptions: raw bytes on estimates, but only the bytes' repr
    (b'...') in the message of a call's TransactionFailed."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ in ("TransactionFailed", "Revert") and seen.args:
            data = _revert_bytes(seen.args[0])
            if data is not None:
                return data
        seen = seen.__cause__ or seen.__context__
    return None


def _revert_bytes(arg: object) -> bytes | None:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        text = arg.removeprefix("execution reverted: ")
        if text.startswith(("b'", 'b"')):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return None
            return value if isinstance(value, bytes) else None
    return None


def _typed(exc: ContractLogicError) -> ContractReverted:
    data = exc.data
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
        return decode_revert(data, str(exc.message))
    return UnknownRevert(str(exc.message or exc))


@dataclass(frozen=True)
class PreparedTx:
    """A simulated and signed transaction, not yet broadcast: record `tx_hash` and `raw` first,
    and a crash can never make you send a second, different transaction for the same job."""

    tx_hash: str
    raw: bytes
    sender: ChecksumAddress
    nonce: int

    @classmethod
    def from_raw(cls, raw: bytes) -> PreparedTx:
        """The record of signed bytes kept elsewhere (a relayer's store keeps only the bytes)."""
        sender = to_checksum_address(Account.recover_transaction(raw))
        return cls("0x" + keccak(raw).hex(), raw, sender, int(signed_fields(raw)["nonce"]))

    def unsigned(self) -> dict[str, Any]:
        """The transaction's fields without its signature, ready to be signed again."""
        return {k: v for k, v in signed_fields(self.raw).items() if k not in ("v", "r", "s")}


def signed_fields(raw: bytes) -> dict[str, Any]:
    """A signed transaction's fields, its signature (v, r, s) included: EIP-2718 typed (EIP-1559,
    EIP-2930) or legacy, as sent to zero-gas-price networks. `chainId` is there whenever the
    signature binds one (a legacy EIP-155 signature carries it in v)."""
    if raw and raw[0] <= 0x7F:
        return dict(TypedTransaction.from_bytes(HexBytes(raw)).as_dict())
    fields = dict(LegacyTransaction.from_bytes(raw).as_dict())
    if int(fields["v"]) >= 35:
        fields["chainId"] = (int(fields["v"]) - 35) // 2
    return fields


class Transactor:
    """Sends contract transactions signed locally by `account`."""

    def __init__(self, chain: Chain, decoder: EventDecoder) -> None:
        self.chain = chain
        self.decoder = decoder

    def send(
        self, account: LocalAccount, fn: ContractFunction | ContractConstructor, gas: int | None = None
    ) -> TxResult:
        """Simulates, signs, sends and waits for `fn` from `account`.

        Raises the contract's typed error before anything is sent if the simulation reverts, so a
        failing request spends no gas.
        """
        prepared = self.prepare(account, fn, gas)
        timeout = self.chain.settings.receipt_timeout
        sent = [prepared]
        try:
            self.broadcast(prepared)
            result = self._await(account, sent, timeout)
        except NodeUnavailable as exc:
            # The bytes may have gone out: the caller gets the hash to look up, not a failure it
            # would retry with a new transaction (doing the job twice).
            self.chain.nonces.forget(account.address)
            raise OutcomeUnknown(sent[-1].tx_hash, str(exc), tuple(p.tx_hash for p in sent[:-1])) from exc
        if result is None:
            # Ask the node for the next nonce from now on: had this transaction been dropped (a node
            # restarting loses its pool), every later one would wait behind the gap for ever.
            self.chain.nonces.forget(account.address)
            raise TransactionTimeout(sent[-1].tx_hash, timeout, tuple(p.tx_hash for p in sent[:-1]))
        return result

    def _await(self, account: LocalAccount, sent: list[PreparedTx], timeout: float) -> TxResult | None:
        """The receipt of whichever of `sent` (one nonce) is mined, waiting up to `timeout`
        seconds; every `reprice_interval` the latest is checked and, if a rising base fee has
        priced it out, replaced (appended to `sent` before it is broadcast: once sent, it may be
        the one mined). None if none was mined in time."""
        settings = self.chain.settings
        started = time.monotonic()
        looked = started
        while True:
            for candidate in sent:
                result = self.receipt(candidate.tx_hash)
                if result is not None:
                    return result
            now = time.monotonic()
            if now - started >= timeout:
                return None
            if now - looked >= settings.reprice_interval:
                looked = now
                try:
                    self._replace_if_priced_out(account, sent)
                except Exception as exc:  # an optional look: the wait for the receipt goes on
                    log.warning("could not check whether %s is priced out: %s", sent[-1].tx_hash, exc)
            time.sleep(settings.poll_interval)

    def _replace_if_priced_out(self, account: LocalAccount, sent: list[PreparedTx]) -> None:
        replacement = self.repriced(account, sent[-1])
        if replacement is None:
            return
        sent.append(replacement)
        try:
            self.broadcast(replacement)
        except NonceTooLow:
            pass  # the nonce is used: by one of `sent` (the next look finds it) or by another
        except TransactionRejected:
            sent.pop()  # refused: the node holds the one before, which is still awaited

    def prepare(
        self, account: LocalAccount, fn: ContractFunction | ContractConstructor, gas: int | None = None
    ) -> PreparedTx:
        """Simulates `fn` (raising the contract's typed error) and signs it; sends nothing."""
        w3 = self.chain.w3
        params: TxParams = {"from": account.address, "chainId": self.chain.chain_id}
        params["gas"] = self.estimate(account.address, fn) if gas is None else gas
        params.update(self.fees())
        nonce = self.chain.nonces.take(
            account.address, lambda: w3.eth.get_transaction_count(account.address, "pending")
        )
        params["nonce"] = Nonce(nonce)
        signed = account.sign_transaction(fn.build_transaction(params))  # type: ignore[arg-type]
        return PreparedTx(
            "0x" + bytes(signed.hash).hex(), bytes(signed.raw_transaction), account.address, nonce
        )

    def estimate(self, sender: ChecksumAddress, fn: ContractFunction | ContractConstructor) -> int:
        """Gas for `fn` sent by `sender`, with the settings' margin; a call that would fail raises
        the contract's typed error. Simulated at the pending block, whose time the transaction will
        see: a node that mines on demand (anvil) simulates at the latest block by default, which can
        be minutes old. eth-tester takes no block argument here and uses its pending block anyway."""
        block: BlockIdentifier | None = None if self.chain.embedded else "pending"

        def run() -> int:
            params: TxParams = {"from": sender, "chainId": self.chain.chain_id}
            return int(fn.estimate_gas(params, block_identifier=block))

        try:
            estimate = call_checked(run)
        except CertledgerError:
            raise
        except Exception as exc:
            if node_failure(exc, internal=True):
                # The node did not serve the estimate (a proxy's 502, an internal error, a rate
                # limit): nothing is wrong with the transaction, so not a refusal.
                raise unavailable(self.chain.settings.rpc_url, exc) from exc
            # Not a revert: the node will not run it for this sender (py-evm "cannot afford txn
            # gas", geth and anvil "insufficient funds"), in its own words.
            raise TransactionRejected("", str(exc)) from exc
        return int(estimate * self.chain.settings.gas_limit_margin)

    def broadcast(self, prepared: PreparedTx) -> None:
        """Sends the signed bytes. Sending the same bytes again is harmless (one nonce, one
        inclusion): a node that already has them is not an error. Raises NonceTooLow when the
        sender's nonce has moved past this transaction, which can then never be included."""
        try:
            self.chain.w3.eth.send_raw_transaction(prepared.raw)
        except Exception as exc:
            # The embedded chain executes on send and raises a revert there, not in the receipt;
            # auto-mining, it has mined the transaction all the same (nonce used, gas spent).
            data = embedded_revert_data(exc)
            if data is not None:
                self.chain.nonces.forget(prepared.sender)
                error = decode_revert(data)
                error.mined = self._mined_revert(prepared.tx_hash)
                raise error from None
            text = str(exc).lower()
            if any(m in text for m in ("already known", "known transaction", "already imported")):
                return
            # The nonce may not have been consumed: ask the node again next time.
            self.chain.nonces.forget(prepared.sender)
            if any(m in text for m in ("nonce too low", "invalid transaction nonce")):
                raise NonceTooLow(prepared.tx_hash, prepared.nonce) from None
            if node_failure(exc, internal=True):
                # The bytes may have reached the node (a proxy can fail after passing them on).
                raise unavailable(self.chain.settings.rpc_url, exc) from exc
            # Refused in the node's own words (no funds for the gas, fee or gas limit): not pending.
            raise TransactionRejected(prepared.tx_hash, str(exc)) from exc

    def _mined_revert(self, tx_hash: str) -> MinedRevert | None:
        """Where the embedded chain mined a transaction that reverted on send (None if it did not)."""
        try:
            receipt = self.chain.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
        except Exception:  # TransactionNotFound: refused before execution, nothing spent
            return None
        return MinedRevert(tx_hash, int(receipt["blockNumber"]), int(receipt["gasUsed"]))

    def receipt(self, tx_hash: str, timeout: float = 0.0) -> TxResult | None:
        """The mined transaction, waiting up to `timeout` seconds; None if not mined by then.
        Raises the contract's typed error for a transaction that was mined and reverted."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                receipt = self.chain.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
                break
            except Exception as exc:  # TransactionNotFound until mined
                if type(exc).__name__ != "TransactionNotFound":
                    if node_failure(exc, internal=True):
                        raise unavailable(self.chain.settings.rpc_url, exc) from exc
                    raise
            if time.monotonic() >= deadline:
                return None
            time.sleep(self.chain.settings.poll_interval)
        if receipt["status"] != 1:
            # Mined and reverted: the error says so (`mined`), with where and at what cost, so that
            # no one takes it for a refusal before sending (nonce and gas are spent).
            try:
                tx = self.chain.w3.eth.get_transaction(HexBytes(tx_hash))
            except Exception as exc:
                if node_failure(exc, internal=True):
                    raise unavailable(self.chain.settings.rpc_url, exc) from exc
                raise
            call: TxParams = {"from": tx["from"], "to": tx["to"], "data": tx["input"], "gas": tx["gas"]}
            if tx.get("accessList"):
                call["accessList"] = tx["accessList"]
            error = self._revert_reason(call, receipt)
            error.mined = MinedRevert(
                "0x" + bytes(receipt["transactionHash"]).hex(),
                int(receipt["blockNumber"]),
                int(receipt["gasUsed"]),
            )
            raise error
        return TxResult(
            tx_hash="0x" + bytes(receipt["transactionHash"]).hex(),
            block_number=int(receipt["blockNumber"]),
            gas_used=int(receipt["gasUsed"]),
            events=tuple(self.decoder.decode_receipt(receipt)),
            contract_address=receipt.get("contractAddress"),
        )

    def fees(self) -> TxParams:
        """Fee fields for a transaction now: EIP-1559 from the latest base fee (room for it to double
        before the transaction is mined), or legacy gasPrice; never above the settings'
        max_fee_per_gas."""
        cap = self.chain.settings.max_fee_per_gas
        base = self._base_fee()
        if base is None:  # pre-London or a zero-fee permissioned network (Besu QBFT)
            return {"gasPrice": Wei(min(self._gas_price(), cap))}
        priority = min(self._market_tip() if base > 0 else 0, cap)
        return {"maxFeePerGas": Wei(min(2 * base + priority, cap)), "maxPriorityFeePerGas": Wei(priority)}

    def repriced(self, account: LocalAccount, prepared: PreparedTx) -> PreparedTx | None:
        """The same transaction (nonce, gas, destination, value, data) signed again at fees the next
        blocks take, if it is priced out at its own: its maxFeePerGas is below the latest block's
        base fee (or its gasPrice below the node's), so a node may hold it but no block will
        include it until the fee falls; or its tip is below the one the market now asks (the
        node's eth_maxPriorityFeePerGas), so builders fill their blocks with others first. None if
        its price still stands, or if the settings' max_fee_per_gas leaves no room for the rise a
        node asks of a replacement (REPLACEMENT_BUMP).

        Not simulated: it does what the original would (same calldata, same nonce). Sending it
        replaces the original in the node's pool; both have one nonce, so at most one of them is
        ever included, and either may be: look for every hash sent at that nonce."""
        if account.address != prepared.sender:
            raise ValueError(f"{prepared.tx_hash} was signed by {prepared.sender}, not {account.address}")
        fields = prepared.unsigned()
        cap = self.chain.settings.max_fee_per_gas
        if "maxFeePerGas" in fields:
            base = self._base_fee() or 0
            market = self._market_tip() if base > 0 else 0
            old_max, old_tip = int(fields["maxFeePerGas"]), int(fields["maxPriorityFeePerGas"])
            if old_max >= base and old_tip >= market:
                return None
            tip = max(_bumped(old_tip), market)
            max_fee = min(max(_bumped(old_max), 2 * base + tip), cap)
            tip = min(tip, max_fee)
            if max_fee < max(_bumped(old_max), base) or tip < _bumped(old_tip):
                return None
            fields.update(maxFeePerGas=max_fee, maxPriorityFeePerGas=tip)
        else:
            old_price, price = int(fields["gasPrice"]), self._gas_price()
            if old_price >= price:
                return None
            new_price = min(max(_bumped(old_price), price), cap)
            if new_price < _bumped(old_price):
                return None
            fields["gasPrice"] = new_price
        signed = account.sign_transaction(fields)
        return PreparedTx(
            "0x" + bytes(signed.hash).hex(), bytes(signed.raw_transaction), account.address, prepared.nonce
        )

    def _base_fee(self) -> int | None:
        block = call_checked(lambda: self.chain.w3.eth.get_block("latest"))
        base = block.get("baseFeePerGas")
        return None if base is None else int(base)

    def _market_tip(self) -> int:
        """The tip per gas to offer now: the node's suggestion (from the tips recent blocks paid),
        never below PRIORITY_FEE."""
        return max(int(call_checked(lambda: self.chain.w3.eth.max_priority_fee)), PRIORITY_FEE)

    def _gas_price(self) -> int:
        return int(call_checked(lambda: self.chain.w3.eth.gas_price))

    def _revert_reason(self, tx: TxParams, receipt: TxReceipt) -> ContractReverted:
        # A transaction that passed simulation but reverted on chain (state moved in between):
        # the node's trace of it names the error exactly; without one, replay it as a call at
        # its block (after the whole block, so a later transaction of the block may have changed
        # what it ran on).
        tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
        traced = self._traced_revert(tx_hash)
        if traced is not None:
            return traced
        keep = ("from", "to", "data", "value", "gas", "accessList")
        call: TxParams = {k: v for k, v in tx.items() if k in keep}  # type: ignore[assignment]
        try:
            call_checked(lambda: self.chain.w3.eth.call(call, receipt["blockNumber"]))
        except ContractReverted as exc:
            return exc
        except CertledgerError:
            raise
        except Exception as exc:  # out of gas, in the node's own words: no contract error to name
            return UnknownRevert(f"transaction {tx_hash} was mined and reverted: {exc}")
        if "gas" in tx and int(receipt["gasUsed"]) >= int(tx["gas"]):
            # Replayed, it runs: it had too little gas where it ran (say an access list it carries
            # the replay cannot charge for, or state that cost more in its block).
            return UnknownRevert(f"transaction {tx_hash} was mined and ran out of gas ({tx['gas']})")
        return UnknownRevert(f"transaction {tx_hash} reverted")

    def _traced_revert(self, tx_hash: str) -> ContractReverted | None:
        """The revert data of a mined transaction as the node traced it in its own block
        (debug_traceTransaction with the call tracer, top call only: geth, anvil, Besu with debug
        enabled). None when the node traces nothing (eth-tester, debug methods off) or the trace
        carries no revert data (out of gas): the replay then answers."""
        if self.chain.embedded:
            return None
        options = {"tracer": "callTracer", "tracerConfig": {"onlyTopCall": True}}
        try:
            answer = self.chain.w3.provider.make_request(
                cast(Any, "debug_traceTransaction"), [tx_hash, options]
            )
            result = answer.get("result")
            if not isinstance(result, dict) or not result.get("error"):
                return None
            output = result.get("output")
            if not isinstance(output, str) or len(output) < 10:  # "0x" and a selector at least
                return None
            return decode_revert(bytes.fromhex(output.removeprefix("0x")))
        except Exception as exc:
            # Best effort: a proxy that filters debug methods (403), a slow or rate-limited trace,
            # output that is not hex. The replay answers instead, and says if the node is down.
            log.info("no trace of %s (%s); replaying it", tx_hash, exc)
            return None
