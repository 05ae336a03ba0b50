"""The relayer's Submitter over chain_client: prepare (simulate and sign) confirmReceipt, broadcast
the signed bytes, and look a transaction up by hash. chain_client's Transactor splits its `send`
into those steps, so the relayer can record each transaction before it is broadcast."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from eth_account.signers.local import LocalAccount

from chain_client import errors
from chain_client.system import System
from chain_client.transactions import PreparedTx as SignedTx
from oracle.relayer import Mined, NonceTooLow, PreparedTx
from oracle.wire import SignedReading

log = logging.getLogger(__name__)


class ChainSubmitter:
    """One relayer key's submissions. `lock` serialises them with the keeper's, which shares the
    key and therefore its nonces."""

    def __init__(self, system: System, relayer: LocalAccount, lock: threading.RLock | None = None) -> None:
        self.system = system
        self.relayer = relayer
        self.lock = lock or threading.RLock()

    def prepare(self, readings: Sequence[SignedReading]) -> PreparedTx:
        with self.lock:
            signed = self.system.oracle.prepare_confirm(
                self.relayer, [r.observation for r in readings], [r.signature for r in readings]
            )
        return PreparedTx(signed.tx_hash, signed.raw)

    def broadcast(self, prepared: PreparedTx) -> None:
        with self.lock:
            try:
                self.system.tx.broadcast(SignedTx.from_raw(prepared.raw))
            except errors.NonceTooLow as exc:
                raise NonceTooLow(str(exc)) from None

    def discard(self, prepared: PreparedTx) -> None:
        with self.lock:
            self.system.chain.nonces.forget(self.relayer.address)

    def reprice(self, prepared: PreparedTx) -> PreparedTx | None:
        signed = SignedTx.from_raw(prepared.raw)
        if signed.sender != self.relayer.address:
            # Signed by the key the relayer ran with before a rotation: only its own bytes can
            # still be sent, and they are, as they were.
            log.warning(
                "%s was signed by %s, not this relayer's key: not repriced", prepared.tx_hash, signed.sender
            )
            return None
        with self.lock:
            replacement = self.system.tx.repriced(self.relayer, signed)
        return None if replacement is None else PreparedTx(replacement.tx_hash, replacement.raw)

    def wait(self, tx_hashes: Sequence[str], timeout: float) -> Mined | None:
        deadline = time.monotonic() + timeout
        while True:
            for tx_hash in tx_hashes:
                mined = self._look(tx_hash)
                if mined is not None:
                    return mined
            if time.monotonic() >= deadline:
                return None
            time.sleep(self.system.chain.settings.poll_interval)

    def _look(self, tx_hash: str) -> Mined | None:
        # One look per turn of the lock, so the keeper is not held up while we poll.
        with self.lock:
            try:
                result = self.system.tx.receipt(tx_hash)
            except errors.ContractReverted as error:
                name = getattr(error, "error_name", "") or type(error).__name__
                return Mined(tx_hash, False, None, None, error_name=name, detail=str(error))
        if result is None:
            return None
        roots = [e for e in result.events if e.name == "OrderConfirmed"]
        root = int(roots[0]["rootCertificateId"]) if roots else None
        return Mined(tx_hash, True, result.block_number, result.gas_used, root_certificate_id=root)
