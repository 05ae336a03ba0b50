"""The keeper: settles matured certificates so holders are paid without having to ask.

Candidates come from chain_client's views. An order's maturity is fixed when it is opened and its
certificates share it, so the keeper keeps a schedule: each order is read once when it appears,
again on each run only while it is open (awaiting receipt), and not at all between its confirmation
and its maturity. At maturity its certificates are listed once (from their CertificateIssued events:
once a block is stamped at or after maturity none can be split off, D35), and from then on only
those not yet settled are read, until none is left. A run therefore reads the new orders, the open
ones and the certificates falling due, not every order ever opened.

A listing searches from the order's confirmation (a block the keeper saw it still open at, or the
block the oracle's relayer confirmed it in; the deployment block when neither is known) up to the
head, in windows of at most `logs_range` blocks (nodes refuse larger ranges: Besu's
--rpc-max-logs-range), at most `logs_budget` windows per run (the rest on the next runs: the keeper
shares the pipeline's thread with the relayer and the inbox). Each order is on its own: a listing or
a read that fails is logged, keeps what it found so far and is tried again on a later run, backing
off (it skips 0, 1, 3, 7... runs, at most 15), with an alert every `retry_attempts` failures; the
other orders go on.

"Now" is the time no later block can be stamped before (the latest block's, or the wall clock less a
margin: SystemView.passed), the relayer's notion for "has already happened". Settling needs maturity
<= block.timestamp: judged by the wall clock alone, a settle simulated at a block stamped by a node
a second behind reverts; judged by the latest block alone, an idle chain that mines on demand never
gets there.

Only live, matured, unfrozen certificates go into a batch, at most 64 (the ledger's
MAX_SETTLE_BATCH), and each batch is re-read from the views right before it is sent. Settlement is
strict on chain (settling twice is `CertificateNotLive`, D8), so a second run, or a second keeper,
pays nothing twice: it finds nothing left, and a certificate settled by someone else between the
read and the send makes the batch revert with a named error, which is logged and retried with fresh
views next run. The chain lock (shared with the relayer and the gateway) is held from the re-read
through the broadcast, so the batch and its nonce go out together, but not while waiting for the
receipt: that is polled one look per turn of the lock.

A batch not mined within the receipt timeout stays in flight: the next run looks for it first,
replaces it at the same nonce if a rising base fee or market tip has priced it out of the
blocks (`Transactor.repriced`), or sends its bytes again, and sends nothing new while it is unmined (D74).
With a store, the batch in flight is kept there before each send and forgotten once its outcome is
read, so a restarted keeper takes it up where the last one left it (D102): forgotten, a priced-out
batch would hold the key's nonce while every new transaction of the key waited behind it."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from eth_account.signers.local import LocalAccount

from chain_client.errors import ContractReverted, NonceTooLow, TransactionRejected
from chain_client.models import CertificateStatus, Order, OrderStatus
from chain_client.system import System
from chain_client.transactions import PreparedTx, TxResult, signed_fields
from oracle.retry import backoff_delay
from oracle.store import Store

log = logging.getLogger(__name__)

MAX_SETTLE_BATCH = 64  # CertificateLedger.MAX_SETTLE_BATCH; a larger batch reverts BatchTooLarge
CLOCK_MARGIN = 5  # seconds a node's clock may be behind ours (OracleSettings.clock_margin)
MAX_SKIP = 15  # most runs a failing order is skipped


@dataclass
class KeeperRun:
    settled: list[int] = field(default_factory=list)
    transactions: list[str] = field(default_factory=list)
    skipped_frozen: list[int] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    #: orders whose listing or reads failed this run (tried again on a later one)
    failed_orders: list[int] = field(default_factory=list)
    #: settle transactions sent but not mined within the receipt timeout
    unconfirmed: list[str] = field(default_factory=list)
    #: replacements signed at a higher fee for a settle priced out of the blocks
    repriced: list[str] = field(default_factory=list)


@dataclass
class _InFlight:
    """A settle batch sent and not yet mined: every transaction signed for it, all at one nonce
    (the first, then its repriced replacements), so at most one of them is ever included."""

    ready: list[tuple[int, int]]
    sent: list[PreparedTx]

    @property
    def hashes(self) -> list[str]:
        return [p.tx_hash for p in self.sent]


@dataclass
class KeeperReads:
    """View calls and log queries made since the keeper was built (what its schedule saves)."""

    orders: int = 0
    certificates: int = 0
    listings: int = 0  # orders whose certificates were listed (each once)
    log_queries: int = 0  # getLogs calls those listings took (one per window)


@dataclass
class _Listing:
    """A matured order whose certificates are being listed: how far the search got."""

    next_block: int
    #: the order's maturity: the search ends at the first head stamped at or after it
    maturity: int = 0
    end_block: int | None = None
    found: set[int] = field(default_factory=set)


@dataclass
class _Trouble:
    attempts: int = 0
    skip: int = 0


class Keeper:
    def __init__(
        self,
        system: System,
        account: LocalAccount,
        store: Store | None = None,
        *,
        batch: int = MAX_SETTLE_BATCH,
        lock: threading.RLock | None = None,
        clock: Callable[[], int] | None = None,
        logs_range: int = 1_000,
        retry_attempts: int = 8,
        logs_budget: int = 100,
    ) -> None:
        if not 1 <= batch <= MAX_SETTLE_BATCH:
            raise ValueError(f"batch must be 1..{MAX_SETTLE_BATCH}")
        if logs_range < 1:
            raise ValueError("logs_range must be at least 1")
        if logs_budget < 1:
            raise ValueError("logs_budget must be at least 1")
        self.system = system
        self.account = account
        self.store = store
        self.batch = batch
        self.lock = lock or threading.RLock()
        self.clock = clock or self._passed
        self.logs_range = logs_range
        #: getLogs windows one run may spend (the keeper runs in the pipeline's thread: a listing
        #: from the deployment block must not keep the relayer and the inbox waiting); a listing
        #: left unfinished goes on from where it got on the next run
        self.logs_budget = logs_budget
        self._budget = logs_budget
        self.retry_attempts = retry_attempts
        self.reads = KeeperReads()
        # The schedule, in memory: a restart reads every order once again to rebuild it.
        self._seen = 0  # orders 1.._seen have been read at least once
        self._open: dict[int, int] = {}  # awaiting receipt (read again each run) -> a block it was open at
        self._maturing: list[tuple[int, int, int]] = []  # (maturity, order id, search from) heap
        self._listing: dict[int, _Listing] = {}  # matured, certificates being listed
        self._due: dict[int, list[int]] = {}  # matured order -> its certificates not seen settled
        self._trouble: dict[int, _Trouble] = {}  # order -> failures in a row
        #: a batch sent by an earlier run, or an earlier keeper on the store, and not seen mined
        #: (kept in the store: D102)
        self._in_flight: _InFlight | None = self._left_in_flight()

    def _passed(self) -> int:
        return max(self.system.chain.now(), int(time.time()) - CLOCK_MARGIN)

    def candidates(self, run: KeeperRun | None = None) -> list[tuple[int, int]]:
        """(certificate id, order id) of every live, matured, unfrozen certificate."""
        run = run if run is not None else KeeperRun()
        with self.lock:
            now = self.clock()
            head = self._head()
            orders, _, _ = self.system.ledger.counts()
            for order_id in [*sorted(self._open), *range(self._seen + 1, orders + 1)]:
                self._schedule(self._read_order(order_id), head)
            self._seen = max(self._seen, orders)
            while self._maturing and self._maturing[0][0] <= now:
                maturity, order_id, since = heapq.heappop(self._maturing)
                self._listing[order_id] = _Listing(since, maturity)
        self._budget = self.logs_budget
        for order_id in sorted(self._listing):
            if self._budget <= 0:
                log.info(
                    "keeper: log budget of this run spent; %d listings go on next run", len(self._listing)
                )
                break
            if self._due_now(order_id):
                self._isolated(order_id, run, self._list_certificates)
        return self._live_due(now, run)

    def _head(self) -> int:
        return self.system.chain.head()

    def _read_order(self, order_id: int) -> Order:
        self.reads.orders += 1
        return self.system.ledger.order(order_id)

    def _schedule(self, order: Order, head: int) -> None:
        """`head`: a block read before `order` was: an order open now is confirmed after it."""
        since = self._open.pop(order.order_id, None)
        if order.status == OrderStatus.OPEN:
            self._open[order.order_id] = head
        elif order.status == OrderStatus.CONFIRMED:
            if since is None:
                since = self._confirmed_block(order.order_id)
            heapq.heappush(self._maturing, (order.maturity, order.order_id, since))
        # CANCELLED: nothing will ever be due

    def _confirmed_block(self, order_id: int) -> int:
        """Where to search an order first seen confirmed: the block this oracle's relayer confirmed
        it in, if it did, else the deployment block."""
        record = self.store.order(order_id) if self.store is not None else None
        if record is not None and record.confirmed_block is not None:
            return int(record.confirmed_block)
        return int(self.system.deployment.deployment_block)

    # ------------------------------------------------------------------ one order at a time

    def _due_now(self, order_id: int) -> bool:
        """False while an order backs off after failures (counting down the runs it skips)."""
        trouble = self._trouble.get(order_id)
        if trouble is None or trouble.skip == 0:
            return True
        trouble.skip -= 1
        return False

    def _isolated(self, order_id: int, run: KeeperRun, job: Callable[[int], None]) -> None:
        try:
            job(order_id)
        except Exception as exc:
            trouble = self._trouble.setdefault(order_id, _Trouble())
            trouble.attempts += 1
            # the relayer's backoff counted in runs: 0, 1, 3, 7 and at most MAX_SKIP runs skipped
            trouble.skip = int(backoff_delay(trouble.attempts, 1.0, MAX_SKIP + 1)) - 1
            run.failed_orders.append(order_id)
            log.warning(
                "keeper: order %d failed (%d in a row, skipping %d runs): %s",
                order_id,
                trouble.attempts,
                trouble.skip,
                exc,
            )
            n = self.retry_attempts
            if self.store is not None and trouble.attempts >= n and (trouble.attempts - n) % n == 0:
                try:
                    self.store.alert(order_id, "keeper", f"{trouble.attempts} failures in a row: {exc}")
                except Exception:
                    log.exception("keeper: could not record an alert")
        else:
            self._trouble.pop(order_id, None)

    def _list_certificates(self, order_id: int) -> None:
        """Lists a matured order's certificates, window by window from where the last try got,
        within this run's budget; what it finds is due at once. The search ends at the first head
        whose block is stamped at or after maturity: the contract lets a certificate be split off
        while block.timestamp < maturity, and `passed()` (the keeper's clock) may be ahead of the
        producer's, so a head read when `passed()` reached maturity may be followed by a split.
        Until such a head is seen the search goes up to the head and resumes from there."""
        listing = self._listing[order_id]
        head = listing.end_block
        if head is None:
            with self.lock:
                head, stamp = self.system.chain.latest_block()
            if stamp >= listing.maturity:
                listing.end_block = head  # no later block can issue a certificate of the order
        while listing.next_block <= head:
            if self._budget <= 0:
                return  # resumed on the next run
            to_block = min(listing.next_block + self.logs_range - 1, head)
            with self.lock:
                self.reads.log_queries += 1
                self._budget -= 1
                found = set(self._certificate_ids(order_id, listing.next_block, to_block))
            listing.found |= found
            if found:
                self._due[order_id] = sorted(set(self._due.get(order_id, ())) | found)
            listing.next_block = to_block + 1
        if listing.end_block is None:
            return  # looked again, from the next block, on the next run
        self.reads.listings += 1
        del self._listing[order_id]

    def _certificate_ids(self, order_id: int, from_block: int, to_block: int) -> list[int]:
        return self.system.ledger.certificate_ids_of_order(order_id, from_block, to_block)

    def _live_due(self, now: int, run: KeeperRun) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        for order_id in sorted(self._due):
            if not self._due_now(order_id):
                continue

            def read(order_id: int) -> None:
                still: list[int] = []
                ready: list[tuple[int, int]] = []
                with self.lock:
                    for certificate_id in self._due[order_id]:
                        self.reads.certificates += 1
                        c = self.system.ledger.certificate(certificate_id)
                        if c.status != CertificateStatus.LIVE:
                            continue
                        still.append(certificate_id)
                        if not c.frozen and c.maturity <= now:
                            ready.append((certificate_id, order_id))
                found.extend(ready)
                if still:
                    self._due[order_id] = still
                else:
                    del self._due[order_id]

            self._isolated(order_id, run, read)
        return found

    # ------------------------------------------------------------------ settling

    def run_once(self) -> KeeperRun:
        """Settles everything due now, in batches; returns what was paid. A batch an earlier run
        left unmined is seen to first (repriced if the fees have priced it out); while it stays
        unmined nothing new is sent, since a later nonce of the key would only wait behind it."""
        run = KeeperRun()
        if self._in_flight is not None and not self._follow_up(self._in_flight, run):
            return run
        due = self.candidates(run)
        for start in range(0, len(due), self.batch):
            chunk = due[start : start + self.batch]
            with self.lock:
                # Fresh views right before sending: anything settled or frozen meanwhile drops out.
                now = self.clock()
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
                    # Simulated (a batch that would revert raises its typed error, nothing sent),
                    # signed and sent under the lock: its nonce goes out in order.
                    prepared = self.system.tx.prepare(
                        self.account, self.system.ledger.contract.functions.settle(ids)
                    )
                except ContractReverted as exc:
                    log.warning("settling %s refused: %s", ids, exc)
                    run.refused.append(str(exc))
                    continue
                # In flight from here until its outcome is read: whatever fails meanwhile (the node
                # during the broadcast or the wait), the next run looks for it first.
                flight = _InFlight(ready, [prepared])
                self._fly(flight)
                try:
                    self.system.tx.broadcast(prepared)
                except ContractReverted as exc:  # the embedded chain executes, and reverts, on send
                    self._fly(None)
                    log.warning("settling %s reverted: %s", ids, exc)
                    run.refused.append(str(exc))
                    continue
                except TransactionRejected:  # refused in the node's own words: it holds nothing
                    self._fly(None)
                    raise
            # The receipt is awaited without the lock: the relayer and the gateway go on meanwhile.
            outcome = self._receipt(flight.hashes)
            if outcome is None:
                # Priced out, or dropped by the node: the next run looks again, reprices or sends
                # the same bytes again (which also fills the nonce if the node lost them).
                log.warning("settle %s not mined in time; next run looks again", prepared.tx_hash)
                run.unconfirmed.append(prepared.tx_hash)
                break
            # Recorded before it is forgotten: a crash between the two finds it mined and records it
            # again (the settlements table ignores a certificate it has), rather than not at all.
            self._mined(flight, outcome, run)
            self._fly(None)
        return run

    def _fly(self, flight: _InFlight | None) -> None:
        """Makes `flight` the batch in flight (None: none), in the store too when there is one."""
        self._in_flight = flight
        if self.store is not None:
            if flight is None:
                self.store.forget_flight()
            else:
                self.store.keep_flight(flight.ready, [p.raw for p in flight.sent])

    def _left_in_flight(self) -> _InFlight | None:
        """The batch a previous keeper on this store sent and did not see mined. One signed with
        another key or for another chain holds no nonce of this keeper's: it is dropped, with an
        alert, rather than followed up for ever (the store may outlive a key rotation)."""
        kept = None if self.store is None else self.store.flight()
        if kept is None:
            return None
        ready, raw_txs = kept
        flight = _InFlight(ready, [PreparedTx.from_raw(raw) for raw in raw_txs])
        latest = flight.sent[-1]
        chain_id = signed_fields(latest.raw).get("chainId")
        if latest.sender != self.account.address:
            self._drop(flight, f"it was signed by {latest.sender}, not this keeper's {self.account.address}")
            return None
        if chain_id is not None and int(chain_id) != self.system.deployment.chain_id:
            self._drop(flight, f"it was signed for chain {chain_id}, not {self.system.deployment.chain_id}")
            return None
        log.info("a settle batch of %d certificates left in flight; looking for it first", len(ready))
        return flight

    def _drop(self, flight: _InFlight, why: str) -> None:
        """Gives up a batch in flight that can never be mined as it is; its certificates are read
        afresh and settled by a new batch."""
        message = f"settle {flight.sent[-1].tx_hash} given up: {why}"
        log.warning(message)
        if self.store is not None:
            self.store.alert(None, "keeper", message)
        self._fly(None)

    def _follow_up(self, flight: _InFlight, run: KeeperRun) -> bool:
        """An earlier run's unmined batch: mined since (recorded), still pending (repriced if priced
        out, else its bytes sent again, and awaited once more), or gone (its nonce used by another
        transaction of the key: its certificates are read afresh). Returns whether the batch is
        done with, so new batches may go."""
        outcome = self._receipt(flight.hashes, timeout=0)
        if outcome is None:
            with self.lock:
                latest = flight.sent[-1]
                next_nonce = self.system.chain.pending_nonce(self.account.address)
                if latest.nonce > next_nonce:
                    # A gap below it (the chain was reset or rolled back past the key's earlier
                    # transactions): nothing of this keeper's will fill it, so it would wait for ever.
                    self._drop(flight, f"its nonce {latest.nonce} is past the key's next, {next_nonce}")
                    return True
                replacement = self.system.tx.repriced(self.account, latest)
                if replacement is not None:
                    # Kept before it is sent: once sent, it may be the one mined.
                    flight.sent.append(replacement)
                    self._fly(flight)
                try:
                    self.system.tx.broadcast(replacement or latest)
                except NonceTooLow:
                    # Another transaction of the key took the nonce, or one of ours was mined
                    # between the look and the send.
                    outcome = self._receipt(flight.hashes, timeout=0)
                    if outcome is None:
                        log.warning(
                            "settle %s was superseded; its certificates are read again", latest.tx_hash
                        )
                        self._fly(None)
                        return True
                except TransactionRejected as exc:
                    # The node holds what it held before, or nothing (then the same bytes fill
                    # the nonce once it takes them): the batch stays in flight, for the next run.
                    if replacement is not None:
                        flight.sent.pop()
                        self._fly(flight)
                    log.warning(
                        "settle %s refused by the node: %s", (replacement or latest).tx_hash, exc.reason
                    )
                    run.refused.append(str(exc))
                    return False
                else:
                    if replacement is not None:
                        run.repriced.append(replacement.tx_hash)
                        log.info("settle %s priced out; replaced by %s", latest.tx_hash, replacement.tx_hash)
            if outcome is None:
                outcome = self._receipt(flight.hashes)
            if outcome is None:
                run.unconfirmed.append(flight.sent[-1].tx_hash)
                return False
        self._mined(flight, outcome, run)
        self._fly(None)
        return True

    def _mined(self, flight: _InFlight, outcome: TxResult | ContractReverted, run: KeeperRun) -> None:
        ids = [c for c, _ in flight.ready]
        if isinstance(outcome, ContractReverted):
            log.warning("settling %s reverted: %s", ids, outcome)
            run.refused.append(str(outcome))
            return
        run.settled.extend(ids)
        run.transactions.append(outcome.tx_hash)
        if self.store is not None:
            self.store.record_settlement(ids, [o for _, o in flight.ready], outcome.tx_hash)
        log.info("settled %d certificates in %s", len(ids), outcome.tx_hash)

    def _receipt(
        self, tx_hashes: list[str], timeout: float | None = None
    ) -> TxResult | ContractReverted | None:
        """The receipt (or the revert) of whichever of `tx_hashes` (one nonce: at most one) was
        mined, polled one look per turn of the lock, for up to `timeout` seconds (the chain
        settings' receipt timeout by default); None if none was mined by then."""
        settings = self.system.chain.settings
        deadline = time.monotonic() + (settings.receipt_timeout if timeout is None else timeout)
        while True:
            for tx_hash in tx_hashes:
                with self.lock:
                    try:
                        result = self.system.tx.receipt(tx_hash)
                    except ContractReverted as exc:
                        return exc
                if result is not None:
                    return result
            if time.monotonic() >= deadline:
                return None
            time.sleep(settings.poll_interval)
