"""The keeper: settles matured certificates so holders are paid without having to ask.

Candidates come from chain_client's views. An order's maturity is fixed when it is opened and its
certificates share it, so the keeper keeps a schedule: each order is read once when it appears,
again on each run only while it is open (awaiting receipt), and not at all between its
confirmation and its maturity. At maturity its certificates are listed once (from their
CertificateIssued events: after maturity none can be split off, D35), and from then on only those
not yet settled are read, until none is left. A run therefore reads the new orders, the open ones
and the certificates falling due, not every order ever opened.

Only live, matured, unfrozen certificates go into a batch, at most 64 (the ledger's
MAX_SETTLE_BATCH), and each batch is re-read from the views right before it is sent. Settlement is
strict on chain (settling twice is `CertificateNotLive`, D8), so a second run, or a second keeper,
pays nothing twice: it finds nothing left, and a certificate settled by someone else between the
read and the send makes the batch revert with a named error, which is logged and retried with
fresh views next run.
"""

from __future__ import annotations

import heapq
import logging
import threading
from dataclasses import dataclass, field

from eth_account.signers.local import LocalAccount

from chain_client.errors import ContractReverted
from chain_client.models import CertificateStatus, Order, OrderStatus
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


@dataclass
class KeeperReads:
    """View calls and log queries made since the keeper was built (what its schedule saves)."""

    orders: int = 0
    certificates: int = 0
    listings: int = 0


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
        self.reads = KeeperReads()
        # The schedule, in memory: a restart reads every order once again to rebuild it.
        self._seen = 0  # orders 1.._seen have been read at least once
        self._open: set[int] = set()  # awaiting receipt: read again each run
        self._maturing: list[tuple[int, int]] = []  # (maturity, order id) heap of confirmed orders
        self._due: dict[int, list[int]] = {}  # matured order -> its certificates not seen settled

    def candidates(self) -> list[tuple[int, int]]:
        """(certificate id, order id) of every live, matured, unfrozen certificate."""
        with self.lock:
            now = self.system.chain.now()
            orders, _, _ = self.system.ledger.counts()
            for order_id in [*sorted(self._open), *range(self._seen + 1, orders + 1)]:
                self._schedule(self._read_order(order_id))
            self._seen = max(self._seen, orders)
            while self._maturing and self._maturing[0][0] <= now:
                # Listed before it leaves the schedule: a failed listing leaves it there for the
                # next run instead of dropping a due order until the keeper restarts.
                order_id = self._maturing[0][1]
                self._due[order_id] = self._list_certificates(order_id)
                heapq.heappop(self._maturing)
            return self._live_due(now)

    def _read_order(self, order_id: int) -> Order:
        self.reads.orders += 1
        return self.system.ledger.order(order_id)

    def _schedule(self, order: Order) -> None:
        self._open.discard(order.order_id)
        if order.status == OrderStatus.OPEN:
            self._open.add(order.order_id)
        elif order.status == OrderStatus.CONFIRMED:
            heapq.heappush(self._maturing, (order.maturity, order.order_id))
        # CANCELLED: nothing will ever be due

    def _list_certificates(self, order_id: int) -> list[int]:
        self.reads.listings += 1
        found = self.system.ledger.certificate_ids_of_order(
            order_id, from_block=self.system.deployment.deployment_block
        )
        return sorted(found)

    def _live_due(self, now: int) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        for order_id in sorted(self._due):
            still: list[int] = []
            for certificate_id in self._due[order_id]:
                self.reads.certificates += 1
                c = self.system.ledger.certificate(certificate_id)
                if c.status != CertificateStatus.LIVE:
                    continue
                still.append(certificate_id)
                if not c.frozen and c.maturity <= now:
                    found.append((certificate_id, order_id))
            if still:
                self._due[order_id] = still
            else:
                del self._due[order_id]
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
