"""The relayer's Submitter over chain_client: simulate and sign confirmReceipt, broadcast the signed
bytes, and look a transaction up by hash.

chain_client.Transactor.send does all of that in one call, which leaves no moment to record the
transaction before it is broadcast (the relayer's exactly-once rule). Until chain_client offers
the split (see the diff proposed in the oracle's report: `Transactor.prepare`, `broadcast`,
`receipt`), this module does it with chain_client's own pieces (its nonce manager, fee rule,
`call_checked` and revert decoding) and is the only place in `oracle/` that touches web3.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3.types import Nonce, TxParams

from chain_client.errors import ContractReverted, NodeUnavailable, UnknownRevert, decode_revert
from chain_client.system import System
from chain_client.transactions import _embedded_revert_data, call_checked
from oracle.relayer import Mined, NonceTooLow, PreparedTx
from oracle.wire import SignedReading

_NONCE_TOO_LOW = ("nonce too low", "invalid transaction nonce", "nonce is too low", "oldnonce")
_ALREADY_KNOWN = ("already known", "known transaction", "already imported", "already exists")


class ChainSubmitter:
    def __init__(self, system: System, relayer: LocalAccount, lock: threading.RLock | None = None) -> None:
        self.system = system
        self.relayer = relayer
        self.lock = lock or threading.RLock()

    def _function(self, readings: Sequence[SignedReading]) -> Any:
        # chain_client puts the observations in ascending device order, as the contract requires.
        return self.system.oracle.confirm_call(
            [r.observation for r in readings], [r.signature for r in readings]
        )

    def prepare(self, readings: Sequence[SignedReading]) -> PreparedTx:
        chain = self.system.chain
        w3 = chain.w3
        fn = self._function(readings)
        with self.lock:
            params: TxParams = {"from": self.relayer.address, "chainId": chain.chain_id}
            # Simulated first: a receipt the contract would refuse raises its typed error here. At the
            # pending block, whose time is the one the transaction will see: anvil simulates at the
            # latest block by default, which on a chain that mines on demand can be minutes old and
            # would call a fresh reading "from the future" (a final refusal). eth-tester takes no block
            # argument here and simulates at its pending block anyway.
            block = None if chain.embedded else "pending"
            estimate = call_checked(lambda: fn.estimate_gas(params, block_identifier=block))
            params["gas"] = int(estimate * chain.settings.gas_limit_margin)
            params.update(self.system.ledger._tx._fees())
            nonce = chain.nonces.take(
                self.relayer.address, lambda: w3.eth.get_transaction_count(self.relayer.address, "pending")
            )
            params["nonce"] = Nonce(nonce)
            tx = fn.build_transaction(params)
            signed = self.relayer.sign_transaction(tx)
        return PreparedTx("0x" + bytes(signed.hash).hex(), bytes(signed.raw_transaction))

    def broadcast(self, prepared: PreparedTx) -> None:
        w3 = self.system.chain.w3
        with self.lock:
            try:
                w3.eth.send_raw_transaction(prepared.raw)
            except Exception as exc:
                data = _embedded_revert_data(exc)
                if data is not None:  # the embedded chain executes on send
                    raise decode_revert(data) from None
                text = str(exc).lower()
                if any(marker in text for marker in _ALREADY_KNOWN):
                    return
                if any(marker in text for marker in _NONCE_TOO_LOW):
                    # Whatever used the nonce, the local counter is wrong now: ask the node again.
                    self.system.chain.nonces.forget(self.relayer.address)
                    raise NonceTooLow(str(exc)) from None
                if type(exc).__name__ in ("ConnectionError", "Timeout", "ReadTimeout", "ConnectTimeout"):
                    raise NodeUnavailable(str(self.system.chain.settings.rpc_url), str(exc)) from exc
                raise

    def wait(self, tx_hash: str, timeout: float) -> Mined | None:
        w3 = self.system.chain.w3
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                try:
                    receipt = w3.eth.get_transaction_receipt(HexBytes(tx_hash))
                except Exception as exc:
                    if type(exc).__name__ != "TransactionNotFound":
                        if type(exc).__name__ in ("ConnectionError", "Timeout", "ReadTimeout"):
                            raise NodeUnavailable(str(self.system.chain.settings.rpc_url), str(exc)) from exc
                        raise
                    receipt = None
            if receipt is not None:
                return self._mined(tx_hash, receipt)
            if time.monotonic() >= deadline:
                return None
            time.sleep(self.system.chain.settings.poll_interval)

    def _mined(self, tx_hash: str, receipt: Any) -> Mined:
        block, gas = int(receipt["blockNumber"]), int(receipt["gasUsed"])
        if receipt["status"] == 1:
            events = self.system.decoder.decode_receipt(receipt)
            roots = [e for e in events if e.name == "OrderConfirmed"]
            root = int(roots[0]["rootCertificateId"]) if roots else None
            return Mined(tx_hash, True, block, gas, root_certificate_id=root)
        error = self._revert_reason(tx_hash, block)
        return Mined(
            tx_hash, False, block, gas, error_name=getattr(error, "error_name", "") or type(error).__name__,
            detail=str(error),
        )  # fmt: skip

    def _revert_reason(self, tx_hash: str, block: int) -> ContractReverted:
        # Replayed as a call at its block, as chain_client's Transactor does for a reverted send.
        w3 = self.system.chain.w3
        with self.lock:
            tx = w3.eth.get_transaction(HexBytes(tx_hash))
            call: TxParams = {"from": tx["from"], "to": tx["to"], "data": tx["input"], "gas": tx["gas"]}
            try:
                call_checked(lambda: w3.eth.call(call, block))
            except ContractReverted as exc:
                return exc
        return UnknownRevert(f"transaction {tx_hash} reverted")
