"""Signing and sending: local eth-account keys, one nonce sequence per sender, typed reverts."""

from __future__ import annotations

import ast
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import rlp
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from eth_typing import ChecksumAddress
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import Timeout as RequestsTimeout
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError
from web3.types import BlockIdentifier, Nonce, TxParams, TxReceipt, Wei

from chain_client.errors import (
    CertledgerError,
    ContractReverted,
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


def call_checked(fn: Callable[[], T]) -> T:
    """Runs a web3 call or estimate, turning revert data into our typed exceptions."""
    try:
        return fn()
    except (ContractCustomError, ContractPanicError, ContractLogicError) as exc:
        raise _typed(exc) from None
    except (RequestsConnectionError, RequestsTimeout) as exc:
        raise NodeUnavailable("node", str(exc)) from exc
    except Exception as exc:
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
        if raw[0] <= 0x7F:  # EIP-2718 typed (EIP-1559 here)
            nonce = int(TypedTransaction.from_bytes(HexBytes(raw)).as_dict()["nonce"])
        else:  # legacy, as sent to zero-gas-price networks: an RLP list led by the nonce
            nonce = int.from_bytes(rlp.decode(raw)[0], "big")
        return cls("0x" + keccak(raw).hex(), raw, sender, nonce)


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
        try:
            self.broadcast(prepared)
            result = self.receipt(prepared.tx_hash, timeout)
        except NodeUnavailable as exc:
            # The bytes may have gone out: the caller gets the hash to look up, not a failure it
            # would retry with a new transaction (doing the job twice).
            self.chain.nonces.forget(account.address)
            raise OutcomeUnknown(prepared.tx_hash, str(exc)) from exc
        if result is None:
            # Ask the node for the next nonce from now on: had this transaction been dropped (a node
            # restarting loses its pool), every later one would wait behind the gap for ever.
            self.chain.nonces.forget(account.address)
            raise TransactionTimeout(prepared.tx_hash, timeout)
        return result

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
        params: TxParams = {"from": sender, "chainId": self.chain.chain_id}
        block: BlockIdentifier | None = None if self.chain.embedded else "pending"
        try:
            estimate = call_checked(lambda: fn.estimate_gas(params, block_identifier=block))
        except CertledgerError:
            raise
        except Exception as exc:
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
            # The embedded chain executes on send and raises a revert there, not in the receipt.
            data = embedded_revert_data(exc)
            if data is not None:
                self.chain.nonces.forget(prepared.sender)
                raise decode_revert(data) from None
            text = str(exc).lower()
            if any(m in text for m in ("already known", "known transaction", "already imported")):
                return
            # The nonce may not have been consumed: ask the node again next time.
            self.chain.nonces.forget(prepared.sender)
            if any(m in text for m in ("nonce too low", "invalid transaction nonce")):
                raise NonceTooLow(prepared.tx_hash, prepared.nonce) from None
            if isinstance(exc, (RequestsConnectionError, RequestsTimeout)):
                raise NodeUnavailable(self.chain.settings.rpc_url or "embedded", str(exc)) from exc
            # Refused in the node's own words (no funds for the gas, fee or gas limit): not pending.
            raise TransactionRejected(prepared.tx_hash, str(exc)) from exc

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
                    if isinstance(exc, (RequestsConnectionError, RequestsTimeout)):
                        raise NodeUnavailable(self.chain.settings.rpc_url or "embedded", str(exc)) from exc
                    raise
            if time.monotonic() >= deadline:
                return None
            time.sleep(self.chain.settings.poll_interval)
        if receipt["status"] != 1:
            tx = self.chain.w3.eth.get_transaction(HexBytes(tx_hash))
            raise self._revert_reason(
                {"from": tx["from"], "to": tx["to"], "data": tx["input"], "gas": tx["gas"]}, receipt
            )
        return TxResult(
            tx_hash="0x" + bytes(receipt["transactionHash"]).hex(),
            block_number=int(receipt["blockNumber"]),
            gas_used=int(receipt["gasUsed"]),
            events=tuple(self.decoder.decode_receipt(receipt)),
            contract_address=receipt.get("contractAddress"),
        )

    def fees(self) -> TxParams:
        """Fee fields for a transaction now: EIP-1559 from the latest base fee, or legacy gasPrice."""
        block = call_checked(lambda: self.chain.w3.eth.get_block("latest"))
        base = block.get("baseFeePerGas")
        if base is None:  # pre-London or a zero-fee permissioned network (Besu QBFT)
            return {"gasPrice": self.chain.w3.eth.gas_price}
        priority = 1_000_000_000 if base > 0 else 0
        return {"maxFeePerGas": Wei(2 * int(base) + priority), "maxPriorityFeePerGas": Wei(priority)}

    def _revert_reason(self, tx: TxParams, receipt: TxReceipt) -> ContractReverted:
        # A transaction that passed simulation but reverted on chain (state moved in between):
        # replay it as a call at its block to recover the error.
        call: TxParams = {k: v for k, v in tx.items() if k in ("from", "to", "data", "value", "gas")}  # type: ignore[assignment]
        tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
        try:
            call_checked(lambda: self.chain.w3.eth.call(call, receipt["blockNumber"]))
        except ContractReverted as exc:
            return exc
        except CertledgerError:
            raise
        except Exception as exc:  # out of gas, in the node's own words: no contract error to name
            return UnknownRevert(f"transaction {tx_hash} was mined and reverted: {exc}")
        return UnknownRevert(f"transaction {tx_hash} reverted")
