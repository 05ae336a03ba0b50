"""The keeper: settles matured certificates so holders are paid without having to ask.

Candidates come from chain_client's views: confirmed orders whose maturity has passed, and each
order's certificates (found from its CertificateIssued events). Only live, matured, unfrozen
certificates go into a batch, at most 64 (the ledger's MAX_SETTLE_BATCH), and each batch is
re-read from the views right before it is sent. Settlement is strict on chain (settling twice is
`CertificateNotLive`, D8), so a second run, or a second keeper, pays nothing twice: it finds nothing
left, and a certificate settled by someone else between the read and the send makes the batch
revert with a named error, which is logged and retried with fresh views next run.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from eth_account.signers.local import LocalAccount

from chain_client.errors import ContractReverted
from chain_client.models import CertificateStatus, OrderStatus
from chain_client.system import System
from oracle.store import Store

log = logging.getLogger(__name__)

MAX_SETTLE_BATCH = 64  # CertificateLedger.MAX_SETTLE_BATCH; a larger batch reverts BatchTooLarge


@dataclass
class KeeperRun:
    settled: list[int] = field(default_factory=list)
    transactions: list[str] = field(default_factory=list)
    skipped_frozen: list[int] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


class Keeper:
    def __init__(
        self,
        system: System,
        account: LocalAccount,
        store: Store | None = None,
        *,
        batch: int = MAX_SETTLE_BATCH,
        lock: threading.RLock | None = None,
    ) -> None:
        if not 1 <= batch <= MAX_SETTLE_BATCH:
            raise ValueError(f"batch must be 1..{MAX_SETTLE_BATCH}")
        self.system = system
        self.account = account
        self.store = store
        self.batch = batch
        self.lock = lock or threading.RLock()
        # Orders with nothing left to settle (all settled): not read again by this process.
        self._done: set[int] = set()

    def candidates(self) -> list[tuple[int, int]]:
        """(certificate id, order id) of every live, matured, unfrozen certificate."""
        ledger = self.system.ledger
        with self.lock:
            now = self.system.chain.now()
            orders, _, _ = ledger.counts()
            found: list[tuple[int, int]] = []
            for order_id in range(1, orders + 1):
                if order_id in self._done:
                    continue
                order = ledger.order(order_id)
                if order.status == OrderStatus.CANCELLED:
                    self._done.add(order_id)
                    continue
                if order.status != OrderStatus.CONFIRMED or order.maturity > now:
                    continue
                certificates = ledger.certificates_of_order(
                    order_id, from_block=self.system.deployment.deployment_block
                )
                live = [c for c in certificates if c.status == CertificateStatus.LIVE]
                if not live:
                    self._done.add(order_id)
                found.extend((c.certificate_id, order_id) for c in live if not c.frozen and c.maturity <= now)
            return found

    def run_once(self) -> KeeperRun:
        """Settles everything due now, in batches; returns what was paid."""
        run = KeeperRun()
        due = self.candidates()
        for start in range(0, len(due), self.batch):
            chunk = due[start : start + self.batch]
            with self.lock:
                # Fresh views right before sending: anything settled or frozen meanwhile drops out.
                now = self.system.chain.now()
                ready: list[tuple[int, int]] = []
                for certificate_id, order_id in chunk:
                    c = self.system.ledger.certificate(certificate_id)
                    if c.status != CertificateStatus.LIVE or c.maturity > now:
                        continue
                    if c.frozen:
                        run.skipped_frozen.append(certificate_id)
                        continue
                    ready.append((certificate_id, order_id))
                if not ready:
                    continue
                ids = [c for c, _ in ready]
                try:
                    result = self.system.ledger.settle(self.account, ids)
                except ContractReverted as exc:
                    log.warning("settling %s refused: %s", ids, exc)
                    run.refused.append(str(exc))
                    continue
            run.settled.extend(ids)
            run.transactions.append(result.tx_hash)
            if self.store is not None:
                self.store.record_settlement(ids, [o for _, o in ready], result.tx_hash)
            log.info("settled %d certificates in %s", len(ids), result.tx_hash)
        return run
