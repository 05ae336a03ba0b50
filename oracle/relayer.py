"""The relayer: turns an order's agreeing readings into one confirmReceipt transaction, exactly once.

Each order moves through a durable state machine in the store:

    collecting --(readings agree)--> submitting --(mined)--> confirmed | failed
    collecting --(readings conflict)--> disputed
    collecting --(cancelled on chain)--> cancelled;  --(deadline passed, no receipt)--> failed

Orders still collecting are also looked at on chain every `recheck_interval` seconds, whether or
not a reading came: one its issuer cancelled, or whose deadline passed with no receipt, would
otherwise wait in `collecting` for a reading that can no longer come, with no alert.

Exactly once rests on two rules:
1. The signed transaction (hash and raw bytes) is committed to the store *before* it is broadcast.
   After a crash, a restarted relayer finds the order `submitting`, looks the hash up on the chain,
   and if it is not there broadcasts the *same bytes* again. The same signed transaction has one
   nonce, so it can be included at most once however often it is sent.
2. A contract revert is an answer, not a failure to retry: the order is `failed` with the error's
   name (already confirmed, cancelled, expired, a stale reading...) and never submitted again.
   Only node trouble (no answer, timeouts) is retried, with bounded exponential backoff, and the
   reverts that depend on nothing but timing (`TIMING_ERRORS`: a reading a block stamped a second
   early calls "from the future", a pause), which send the order back to collecting; so do the
   reverts of a reading that lapsed before its block (`LAPSE_ERRORS`), with an alert if mined.

A recorded transaction priced out of the blocks (the base fee rose past its maxFeePerGas, or the
market's tip past its own, D80) is replaced: the same call at the same nonce, signed at fees the
blocks take (chain_client's `Transactor.repriced`, at most the settings' max_fee_per_gas), recorded
before it is broadcast like the first. The order keeps every hash sent at that nonce and looks for
all of them, since any one may be the one mined; one nonce, so at most one is.

A recorded transaction that cannot be mined is not sent for ever: once the node has refused its
bytes `retry_attempts` times (TransactionRejected: a fee below the base fee, ...) the order fails
with an alert, and once every later block is past a reading's deadline or freshness (so it could
only revert) the order collects again, with an alert, after checking the chain has not confirmed it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from chain_client.errors import ContractReverted, TransactionRejected
from chain_client.models import Order, OrderStatus, Warehouse
from oracle.agreement import Expectations, Ready, conflict, decide, latest_per_device
from oracle.chainview import ChainView
from oracle.retry import backoff_delay, is_transient
from oracle.settings import OracleSettings
from oracle.store import OrderRecord, OrderState, Store, StoredObservation
from oracle.validation import check_times
from oracle.wire import SignedReading

log = logging.getLogger(__name__)
#: How often a receipt signed while its order changed is judged again before it is dropped.
RECHECKS = 3
#: Seconds between looks on chain at the orders still collecting (`Relayer._recheck`).
RECHECK_INTERVAL = 30.0
#: The error name of an order failed because no reading can confirm it any more (`_expired`).
DEADLINE_PASSED = "DeadlinePassed"

#: Reverts that say "not now" rather than "no": the order backs off and collects again.
TIMING_ERRORS = frozenset({"ObservationFromFuture", "SystemPaused"})
#: Reverts that say a reading lapsed (past its deadline or freshness) before the block: the
#: receipt can only revert from then on, and the order needs fresh readings, not a person.
LAPSE_ERRORS = frozenset({"ObservationExpired", "ObservationStale"})


@dataclass(frozen=True)
class PreparedTx:
    """A signed confirmReceipt transaction, not yet broadcast."""

    tx_hash: str
    raw: bytes


@dataclass(frozen=True)
class Mined:
    """A transaction's receipt: succeeded or reverted (with the contract error's name)."""

    tx_hash: str
    succeeded: bool
    block_number: int | None  # None for a reverted transaction: its error is what matters
    gas_used: int | None
    root_certificate_id: int | None = None
    error_name: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class Judged:
    """The devices' latest readings that could be submitted now, and how many were left out."""

    readings: list[StoredObservation]
    #: ahead of the chain's clock (usable in a moment)
    early: int = 0
    #: stale, or expiring, within the submit margin
    lapsing: int = 0
    #: observed after the order's deadline (the ledger refuses the whole receipt)
    late: int = 0
    #: sequence already used on chain
    spent: int = 0

    def left_out(self) -> str:
        """For an order's detail: what was not counted, so a wait has a visible cause."""
        parts = [
            f"{n} {why}"
            for n, why in (
                (self.lapsing, "stale or about to lapse"),
                (self.late, "observed after the order's deadline"),
                (self.spent, "already used on chain"),
            )
            if n
        ]
        return f" ({', '.join(parts)} left out)" if parts else ""


class NonceTooLow(Exception):
    """The node refused a rebroadcast: the sender's nonce has moved past this transaction's."""


class Submitter(Protocol):
    """The relayer's only way to the chain (implemented over chain_client in oracle.submitter)."""

    def prepare(self, readings: Sequence[SignedReading]) -> PreparedTx:
        """Simulates confirmReceipt (raising the contract's typed error if it would revert), then
        signs it. Nothing is sent."""
        ...

    def broadcast(self, prepared: PreparedTx) -> None:
        """Sends the signed bytes; a transaction the node already has is not an error."""
        ...

    def wait(self, tx_hashes: Sequence[str], timeout: float) -> Mined | None:
        """The receipt of whichever of `tx_hashes` (all at one nonce) was mined, waiting up to
        `timeout` seconds; None if none was mined by then."""
        ...

    def reprice(self, prepared: PreparedTx) -> PreparedTx | None:
        """The same transaction signed at fees the blocks take, if it is priced out at its own;
        None if its price stands (or no higher one is allowed). Nothing is sent."""
        ...

    def discard(self, prepared: PreparedTx) -> None:
        """Forgets a prepared transaction that will never be sent, so its nonce is used again."""
        ...


#: Called at the two moments a crash matters most (tests kill the relayer there):
#: ("recorded", order_id) after the transaction is committed, before it is broadcast;
#: ("broadcast", order_id) after it is broadcast, before its receipt is recorded.
CrashHook = Callable[[str, int], None]


def observation_expectations(record: OrderRecord, settings: OracleSettings) -> Expectations:
    return Expectations(
        carton_weight_grams=(
            record.carton_weight_grams
            if record.carton_weight_grams is not None
            else settings.carton_weight_grams
        ),
        count_tolerance=(
            record.count_tolerance if record.count_tolerance is not None else settings.count_tolerance
        ),
        weight_tolerance_pct=(
            record.weight_tolerance_pct
            if record.weight_tolerance_pct is not None
            else settings.weight_tolerance_pct
        ),
    )


class Relayer:
    def __init__(
        self,
        store: Store,
        chain: ChainView,
        submitter: Submitter,
        settings: OracleSettings,
        *,
        receipt_timeout: float = 60.0,
        crash_hook: CrashHook | None = None,
        recheck_interval: float = RECHECK_INTERVAL,
    ) -> None:
        self.store = store
        self.recheck_interval = recheck_interval
        self._rechecked = time.monotonic()
        self.chain = chain
        self.submitter = submitter
        self.settings = settings
        self.receipt_timeout = receipt_timeout
        self.crash_hook = crash_hook
        # In memory (a restart starts them afresh, which only delays, never skips, a wait):
        # when an order began waiting for its inbox items, and for early readings.
        self._held_since: dict[int, float] = {}
        self._early_since: dict[int, float] = {}
        self._started = False

    def step(self) -> None:
        """One pass: finish what was in flight (first, so a restart resolves before sending anything
        new), then look at every order that got new readings or is due for a retry."""
        if not self._started:
            # A restart may bring new defaults (`oracle run --carton-weight`, a tolerance): every
            # order still collecting is judged again by them, not only those a reading dirties.
            self.store.mark_collecting_dirty()
            self._started = True
        now = time.time()
        for record in self.store.orders((OrderState.SUBMITTING,)):
            if record.next_attempt_at <= now:
                self._isolated(record, OrderState.SUBMITTING, self._resolve)
        for order_id in self.store.dirty_collecting():
            collecting = self.store.order(order_id)
            if collecting is not None and collecting.next_attempt_at <= now:
                self._isolated(collecting, OrderState.COLLECTING, self._evaluate)
        if time.monotonic() - self._rechecked >= self.recheck_interval:
            self._rechecked = time.monotonic()
            for record in self.store.orders((OrderState.COLLECTING,)):
                if record.next_attempt_at <= now:
                    self._isolated(record, OrderState.COLLECTING, self._recheck)
            # Failed for its deadline: its issuer may cancel it from that very moment (D26), and
            # then it is cancelled, not a failure left for a person.
            for record in self.store.orders((OrderState.FAILED,)):
                if record.error_name == DEADLINE_PASSED:
                    self._isolated(record, OrderState.FAILED, self._recheck)

    def _recheck(self, record: OrderRecord) -> None:
        """An order looked at on chain though no reading came: closed there (cancelled by its
        issuer, confirmed by another relayer) or, still collecting, past its last chance. Node
        trouble waits for the next look: the inbox and the relayer's own steps alert on it."""
        try:
            order = self.chain.order(record.order_id)
            collecting = order.status == OrderStatus.OPEN and record.state == OrderState.COLLECTING
            warehouse = self.chain.warehouse(order.warehouse) if collecting else None
        except Exception as exc:
            if is_transient(exc):
                log.debug("order %d: not looked at on chain now: %s", record.order_id, exc)
                return
            raise
        if order.status == OrderStatus.NONE:
            return  # not opened yet: the reading that ends the wait marks it (`_not_opened`)
        if order.status != OrderStatus.OPEN:
            self._closed_elsewhere(record.order_id, order.status, order.root_certificate_id)
            return
        if warehouse is not None:  # still collecting: has its last chance passed?
            self._expired(record, order, warehouse)

    def _isolated(self, record: OrderRecord, state: OrderState, job: Callable[[OrderRecord], None]) -> None:
        """One order's step. An error nobody classified (a node's answer in words of its own) backs
        this order off and alerts like node trouble, instead of ending the step for every order
        after it, each time, for as long as it lasts."""
        try:
            job(record)
        except Exception as exc:
            log.exception("order %d: unexpected error", record.order_id)
            current = self.store.order(record.order_id) or record
            if current.state == state:
                self._backoff(current, state, f"unexpected error: {exc}")

    # ------------------------------------------------------------------ collecting

    def _evaluate(self, record: OrderRecord) -> None:
        order_id = record.order_id
        # A reading of this order without a verdict may be a device's correction or a conflicting
        # count: nothing is submitted before it has one. Only those signed by the device they name
        # claim an order (Gateway.order_hint), and only those received before the order began to
        # wait hold it, so a flood of fresh ones cannot hold it for ever; the inbox is checked
        # oldest first, so the wait ends. A quarantined one holds the order until a person
        # requeues or drops it (it was alerted).
        since = self._held_since.setdefault(order_id, time.time())
        unchecked, quarantined = self.store.unchecked_for_order(order_id, received_before=since)
        if unchecked or quarantined:
            what = f"{unchecked} readings of the order not checked yet" if unchecked else ""
            if quarantined:
                what += ("; " if what else "") + f"{quarantined} quarantined (see `oracle status`)"
            # Looked at again next step while any waits to be checked (a refused reading does not
            # touch the order); a quarantined one dirties the order when it is released.
            self.store.mark_evaluated(order_id, what, record.revision, again=bool(unchecked))
            return
        self._held_since.pop(order_id, None)
        stored = self.store.observations(order_id)
        devices = {o.reading.observation.device for o in stored}
        if len(devices) == 1:
            # One device's readings can neither conflict (it has one kind, and only its latest counts)
            # nor make a quorum of two or more: no need to ask the chain anything yet. The hint is
            # the threshold the gateway saw while checking this very reading.
            hint = self.chain.threshold_hint(stored[0].reading.observation.warehouse)
            if hint is not None and hint >= 2:
                self.store.mark_evaluated(order_id, f"1 of {hint} devices", record.revision)
                return
        try:
            order = self.chain.order(order_id)
            if order.status == OrderStatus.NONE:
                self._not_opened(record, bool(stored))
                return
            if order.status != OrderStatus.OPEN:
                self._closed_elsewhere(order_id, order.status, order.root_certificate_id)
                return
            warehouse = self.chain.warehouse(order.warehouse)
            if self._expired(record, order, warehouse):
                return
            latest = self._latest(stored, warehouse)
            judged = self._usable(latest, warehouse, order, self.chain.now(), self.chain.passed())
            usable, early = judged.readings, judged.early
            required = frozenset(self.chain.required_kinds(order.warehouse))
        except Exception as exc:
            if is_transient(exc):
                self._backoff(record, OrderState.COLLECTING, str(exc))
                return
            raise
        expectations = observation_expectations(record, self.settings)
        # Every current device's latest reading is judged, whatever its timing (D32).
        disputed = conflict([o.reading for o in latest], expectations)
        if disputed is not None:
            self.store.set_state(
                order_id, OrderState.DISPUTED, disputed.reason, alert=("disputed", disputed.reason)
            )
            log.error("order %d disputed: %s", order_id, disputed.reason)
            return
        decision = decide([o.reading for o in usable], threshold=warehouse.threshold,
                          required_kinds=required, expectations=expectations)  # fmt: skip
        if early and not (isinstance(decision, Ready) and self._waited_enough(order_id)):
            # A device's latest reading is ahead of the chain's clock: usable in a moment, and the
            # receipt waits for it rather than go without it. Not for ever: a device that reads
            # more often than its clock leads always has an early latest reading, so once the
            # others make a quorum the wait lasts at most clock_skew + clock_margin.
            self.store.mark_evaluated(
                order_id,
                f"waiting for {early} readings ahead of the chain's clock",
                record.revision,
                again=True,
            )
            return
        self._early_since.pop(order_id, None)
        if not isinstance(decision, Ready):
            # Disputed here means only the usable subset disagrees (a weight against a count that
            # is not the lowest of all): nothing to submit, nothing to dispute.
            self.store.mark_evaluated(order_id, decision.reason + judged.left_out(), record.revision)
            return
        by_key = {(o.reading.observation.device, o.reading.observation.sequence): o.id for o in usable}
        ids = [by_key[(r.observation.device, r.observation.sequence)] for r in decision.readings]
        self._submit(record, decision.readings, ids, warehouse, expectations)

    def _waited_enough(self, order_id: int) -> bool:
        """Whether a ready order has waited its longest for early readings (the wait starts now if
        it had not)."""
        since = self._early_since.setdefault(order_id, time.monotonic())
        return time.monotonic() - since >= self.settings.clock_skew + self.settings.clock_margin

    def _latest(self, stored: list[StoredObservation], warehouse: Warehouse) -> list[StoredObservation]:
        """Each current device's latest reading (highest sequence), chosen before any time check: a
        device is never judged by an older reading it has since replaced (a corrected count must
        not be bypassed, nor an old one raise a dispute)."""
        current = [
            o for o in stored if o.reading.observation.device_set_version == warehouse.device_set_version
        ]
        chosen = {id(r): r for r in latest_per_device([o.reading for o in current])}
        return [o for o in current if id(o.reading) in chosen]

    def _usable(
        self, latest: list[StoredObservation], warehouse: Warehouse, order: Order, now: int, passed: int
    ) -> Judged:
        """The latest readings that would pass on chain now: observed no later than `passed` (no
        later block is stamped before it: ObservationFromFuture otherwise) and no later than the
        order's deadline (ReceiptAfterDeadline), fresh and not expired as at `now + margin`,
        sequence unused; and how many were left out, and why."""
        usable: list[StoredObservation] = []
        early = lapsing = late = spent = 0
        # Judged as at `now + margin` for deadline and staleness: a reading that lapses between
        # this look and its block would make the whole receipt revert, and a revert is final. At
        # most half the warehouse's freshness, or with a window of 30 s or less no reading would
        # ever be fresh enough, while the contract would take one submitted at once.
        margin = self._margin(warehouse)
        for item in latest:
            o = item.reading.observation
            if o.observed_at > order.deadline:  # taken before the gateway refused such readings
                late += 1
                continue
            if o.observed_at > passed:
                early += o.deadline >= now + margin
                continue
            if check_times(o.observed_at, o.deadline, now + margin, warehouse.freshness, margin) is not None:
                lapsing += 1
                continue
            if self.chain.sequence_used(o.device, o.sequence):
                spent += 1
                continue
            usable.append(item)
        return Judged(usable, early, lapsing, late, spent)

    def _margin(self, warehouse: Warehouse) -> int:
        return min(self.settings.submit_margin, warehouse.freshness // 2)

    def _not_opened(self, record: OrderRecord, has_readings: bool) -> None:
        """The chain has no such order (yet). Expectations are often registered before the issuer's
        openOrder is mined: the order waits, unalerted, and the reading that ends the wait (the
        gateway takes one only for an open order) marks it to be judged again. Readings already
        stored for an order the chain does not know (a reorganisation, a database kept from
        another chain) are node trouble: looked at again with backoff, alerted if it lasts."""
        order_id = record.order_id
        if has_readings:
            self._backoff(
                record,
                OrderState.COLLECTING,
                f"order {order_id} is not on chain, yet readings of it were taken",
            )
            return
        self.store.mark_evaluated(
            order_id, f"waiting for order {order_id} to be opened on chain", record.revision
        )

    def _expired(self, record: OrderRecord, order: Order, warehouse: Warehouse) -> bool:
        """Fails the order, with an alert, once no reading can confirm it: the contract takes only
        readings observed by the order's deadline, and only while fresh, so after the deadline and
        the warehouse's freshness window nothing can (its issuer may then cancel it, D26)."""
        now = self.chain.now()
        if now <= order.deadline + warehouse.freshness:
            return False
        detail = (
            f"its deadline ({order.deadline}) and the freshness window ({warehouse.freshness}s) passed "
            "with no receipt: no reading can confirm it now; its issuer may cancel it (escrow refunded)"
        )
        self.store.set_state(
            record.order_id, OrderState.FAILED, detail, error_name=DEADLINE_PASSED, alert=("failed", detail)
        )
        log.error("order %d: %s", record.order_id, detail)
        return True

    def _closed_elsewhere(self, order_id: int, status: OrderStatus, root_id: int) -> None:
        if status == OrderStatus.CONFIRMED:
            detail = "confirmed on chain by another submission"
            self.store.set_state(
                order_id, OrderState.CONFIRMED, detail, root_certificate_id=root_id, confirmed_at=time.time()
            )
        elif status == OrderStatus.CANCELLED:
            # Nothing to confirm, nothing for a person to put right: not a failure.
            detail = "cancelled on chain by its issuer: nothing to confirm"
            self.store.set_state(order_id, OrderState.CANCELLED, detail, alert=("cancelled", detail))
        else:
            detail = f"order is {status.name.lower()} on chain"
            self.store.set_state(
                order_id,
                OrderState.FAILED,
                detail,
                error_name=f"Order{status.name.title()}",
                alert=("failed", detail),
            )
        log.warning("order %d: %s", order_id, detail)

    def _submit(
        self,
        record: OrderRecord,
        readings: Sequence[SignedReading],
        ids: list[int],
        warehouse: Warehouse,
        expectations: Expectations,
    ) -> None:
        order_id = record.order_id
        try:
            prepared = self.submitter.prepare(readings)
        except ContractReverted as exc:
            self._reverted(record, exc, OrderState.COLLECTING)
            return
        except Exception as exc:
            if is_transient(exc):
                self._backoff(record, OrderState.COLLECTING, str(exc))
                return
            raise
        # Committed before the broadcast: see the module's rule 1. Only if nothing came in since
        # the order was judged (a reading the HTTP intake stored meanwhile, new expectations): the
        # transaction was signed without it, and once the order is submitting the gateway takes
        # no reading of it, so that one would never be judged.
        try:
            recorded = self._record(order_id, prepared, len(readings), ids, record.revision)
            if not recorded:
                recorded = self._record_if_still_agreed(order_id, prepared, len(readings), ids, warehouse,
                                                        expectations)  # fmt: skip
        except Exception:
            # Not recorded, so never to be sent: its nonce must be handed out again, or every
            # later transaction of the key would wait behind the gap.
            self.submitter.discard(prepared)
            raise
        if not recorded:
            # Never sent, so its nonce goes back too. Whatever moved the revision marked the order
            # dirty: it is judged again, with what came in.
            self.submitter.discard(prepared)
            log.info("order %d: changed while it was judged; judging it again", order_id)
            return
        log.info("order %d: submitting %d readings in %s", order_id, len(readings), prepared.tx_hash)
        if self.crash_hook is not None:
            self.crash_hook("recorded", order_id)
        record = self.store.order(order_id) or record
        self._send(record, prepared)

    def _record(self, order_id: int, prepared: PreparedTx, count: int, ids: list[int], revision: int) -> bool:
        return self.store.set_state(
            order_id,
            OrderState.SUBMITTING,
            f"{count} readings in {prepared.tx_hash}",
            observation_ids=ids,
            tx_hash=prepared.tx_hash,
            raw_tx=prepared.raw,
            replaced_tx_hashes=[],
            attempts=0,
            refusals=0,
            next_attempt_at=0.0,
            if_revision=revision,
        )

    def _record_if_still_agreed(
        self,
        order_id: int,
        prepared: PreparedTx,
        count: int,
        ids: list[int],
        warehouse: Warehouse,
        expectations: Expectations,
    ) -> bool:
        """The order changed while its receipt was signed, most often because a device read on (a
        reading with a higher sequence). The receipt still stands if its readings all still count
        (no recount set them aside), the expectations are the same, nothing of the order waits in
        the inbox, and the order's latest readings, the new ones with them, still agree: then it is
        recorded at the order's new revision. Judged from the store alone, so the window for
        another change is short; a few tries, or a device reading faster than the relayer signs
        would keep the order from ever being submitted."""
        for _ in range(RECHECKS):
            current = self.store.order(order_id)
            if current is None or current.state != OrderState.COLLECTING:
                return False
            if observation_expectations(current, self.settings) != expectations:
                return False
            unchecked, quarantined = self.store.unchecked_for_order(order_id, received_before=time.time())
            if unchecked or quarantined:
                return False
            stored = self.store.observations(order_id)
            if not set(ids) <= {o.id for o in stored}:
                return False
            if conflict([o.reading for o in self._latest(stored, warehouse)], expectations) is not None:
                return False
            if self._record(order_id, prepared, count, ids, current.revision):
                log.info("order %d: changed while it was signed, still agrees; recorded", order_id)
                return True
        return False

    # ------------------------------------------------------------------ submitting

    def _resolve(self, record: OrderRecord) -> None:
        """An order left `submitting` (by a crash or a slow node): look first, send again only if
        the chain has not got it."""
        assert record.tx_hash is not None and record.raw_tx is not None
        prepared = PreparedTx(record.tx_hash, record.raw_tx)
        lapsed: str | None = None
        replacement: PreparedTx | None = None
        try:
            mined = self.submitter.wait(record.sent, 0)
            if mined is None:
                lapsed = self._lapsed(record)
            if mined is None and lapsed is None:
                replacement = self.submitter.reprice(prepared)
        except Exception as exc:
            if is_transient(exc):
                self._backoff(record, OrderState.SUBMITTING, str(exc))
                return
            raise
        if mined is not None:
            self._finish(record, mined)
            return
        if lapsed is not None:
            self._abandon(record, lapsed)
            return
        if replacement is not None:
            record = self._record_replacement(record, replacement)
            prepared = replacement
        else:
            what = "%s not on chain; broadcasting the same bytes again"
            log.info("order %d: " + what, record.order_id, record.tx_hash)
        self._send(record, prepared)

    def _record_replacement(self, record: OrderRecord, replacement: PreparedTx) -> OrderRecord:
        """Commits a repriced transaction before it is broadcast (the module's rule 1), keeping the
        hashes it replaces: any of them may still be the one mined."""
        detail = f"{record.tx_hash} priced out of the blocks; replaced by {replacement.tx_hash}"
        self.store.set_state(
            record.order_id,
            OrderState.SUBMITTING,
            detail,
            tx_hash=replacement.tx_hash,
            raw_tx=replacement.raw,
            replaced_tx_hashes=record.sent,
            refusals=0,
        )
        log.warning("order %d: %s", record.order_id, detail)
        if self.crash_hook is not None:
            self.crash_hook("repriced", record.order_id)
        return self.store.order(record.order_id) or record

    def _send(self, record: OrderRecord, prepared: PreparedTx) -> None:
        order_id = record.order_id
        lapsed: str | None = None
        try:
            self.submitter.broadcast(prepared)
            if self.crash_hook is not None:
                self.crash_hook("broadcast", order_id)
            mined = self.submitter.wait(record.sent, self.receipt_timeout)
            if mined is None:
                lapsed = self._lapsed(record)
        except ContractReverted as exc:  # the embedded chain executes, and reverts, on send
            self._reverted(record, exc, OrderState.SUBMITTING)
            return
        except NonceTooLow:
            self._nonce_moved_on(record, prepared)
            return
        except TransactionRejected as exc:
            self._rejected(record, exc)
            return
        except Exception as exc:
            if is_transient(exc):
                self._backoff(record, OrderState.SUBMITTING, str(exc))
                return
            raise
        if mined is not None:
            self._finish(record, mined)
        elif lapsed is not None:
            self._abandon(record, lapsed)
        else:
            # The node took the bytes (sent again on each retry, so a node that dropped them has
            # them back and no gap is left before the key's later nonces): its refusals in a row
            # start again.
            replacing = f", replacing {len(record.replaced)} priced out" if record.replaced else ""
            self._backoff(
                record, OrderState.SUBMITTING, f"{prepared.tx_hash} not mined yet{replacing}", refusals=0
            )

    def _nonce_moved_on(self, record: OrderRecord, prepared: PreparedTx) -> None:
        """Our nonce was used by another transaction of the relayer's (its key also settles), so
        the recorded one can never be mined, unless it (or one it replaced) is the one that used it."""
        mined = self.submitter.wait(record.sent, 0)
        if mined is not None:
            self._finish(record, mined)
            return
        order = self.chain.order(record.order_id)
        if order.status != OrderStatus.OPEN:
            self._closed_elsewhere(record.order_id, order.status, order.root_certificate_id)
            return
        log.warning(
            "order %d: %s was superseded; preparing a new transaction", record.order_id, prepared.tx_hash
        )
        self.store.set_state(
            record.order_id, OrderState.COLLECTING, "transaction superseded; resubmitting", dirty=True
        )

    def _lapsed(self, record: OrderRecord) -> str | None:
        """Why the recorded transaction can no longer confirm the order, if it cannot: every later
        block is past the deadline of one of its readings, or past its freshness, so mined it would
        only revert (ObservationExpired, ObservationStale)."""
        readings = [o.reading.observation for o in self.store.observations_by_id(record.observation_ids)]
        if not readings:
            return None
        freshness = self.chain.warehouse(readings[0].warehouse).freshness
        passed = self.chain.passed()
        deadline = min(o.deadline for o in readings)
        if deadline < passed:
            return f"a reading's deadline {deadline} passed (chain time {passed}) before it was mined"
        stale = min(o.observed_at for o in readings) + freshness
        if stale < passed:
            return (
                f"a reading went stale at {stale} (freshness {freshness} s, chain time {passed}) "
                "before it was mined"
            )
        return None

    def _abandon(self, record: OrderRecord, why: str) -> None:
        """Gives up a recorded transaction that can only revert if it is ever mined: unless the
        chain has confirmed the order meanwhile, it collects again (fresh readings, a new
        transaction). The old one cannot confirm anything, so this sends nothing twice."""
        order = self.chain.order(record.order_id)
        if order.status != OrderStatus.OPEN:
            self._closed_elsewhere(record.order_id, order.status, order.root_certificate_id)
            return
        message = f"{record.tx_hash} abandoned: {why}; collecting again"
        log.warning("order %d: %s", record.order_id, message)
        # Most often unmined because the node dropped it: its nonce is free again, and the next
        # transaction must take it, not wait for ever behind the gap. The next nonce is asked of
        # the node (a pending count: if the node still holds the old one, the next comes after
        # it). Mined after all it could only revert (every later block is past its deadline).
        self._discard(record)
        self.store.set_state(
            record.order_id,
            OrderState.COLLECTING,
            message,
            dirty=True,
            attempts=0,
            next_attempt_at=0.0,
            alert=("abandoned", message),
        )

    def _rejected(self, record: OrderRecord, exc: TransactionRejected) -> None:
        """The node refused the recorded bytes in its own words (a fee below the base fee, ...): it
        does not hold them. Tried again with backoff (a base fee may fall); after
        `retry_attempts` refusals the order fails with an alert, for a person to resolve (the
        relayer's funds, the node's fee settings) with `oracle resolve --keep-readings`."""
        refusals = record.refusals + 1
        if refusals >= self.settings.retry_attempts:
            detail = f"the node refused {record.tx_hash} {refusals} times in a row: {exc.reason}"
            # The node does not hold it: its nonce must go to the key's next transaction.
            self._discard(record)
            self.store.set_state(
                record.order_id,
                OrderState.FAILED,
                detail,
                error_name="TransactionRejected",
                alert=("failed", detail),
            )
            log.error("order %d: %s", record.order_id, detail)
            return
        self._backoff(
            record, OrderState.SUBMITTING, f"node refused the transaction: {exc.reason}", refusals=refusals
        )

    def _discard(self, record: OrderRecord) -> None:
        if record.tx_hash is not None and record.raw_tx is not None:
            self.submitter.discard(PreparedTx(record.tx_hash, record.raw_tx))

    def _finish(self, record: OrderRecord, mined: Mined) -> None:
        order_id = record.order_id
        if mined.succeeded:
            # The mined one may be a transaction the recorded one replaced: the order names it.
            which: dict[str, Any] = {}
            if mined.tx_hash != record.tx_hash:
                others = [h for h in record.sent if h != mined.tx_hash]
                which = {"tx_hash": mined.tx_hash, "raw_tx": None, "replaced_tx_hashes": others}
            self.store.set_state(
                order_id,
                OrderState.CONFIRMED,
                f"root certificate {mined.root_certificate_id} in block {mined.block_number}",
                **which,
                root_certificate_id=mined.root_certificate_id,
                confirmed_at=time.time(),
                confirmed_block=mined.block_number,
            )
            log.info("order %d confirmed: root certificate %s", order_id, mined.root_certificate_id)
        elif mined.error_name in TIMING_ERRORS:
            # Mined and reverted only for its timing: its nonce is spent, nothing was confirmed.
            self._waiting(record, mined.error_name or "", f"{mined.tx_hash} reverted {mined.error_name}")
        elif mined.error_name in LAPSE_ERRORS:
            self._abandon(record, f"mined too late, it reverted {mined.detail or mined.error_name}")
        else:
            self._fail(
                record,
                OrderState.SUBMITTING,
                mined.detail or "reverted",
                mined.error_name or "reverted",
                f"{mined.error_name}: {mined.detail}",
            )

    def _reverted(self, record: OrderRecord, exc: ContractReverted, state: OrderState) -> None:
        name = getattr(exc, "error_name", "") or type(exc).__name__
        if name in TIMING_ERRORS:
            self._waiting(record, name, f"refused for now: {exc}")
            return
        if name in LAPSE_ERRORS:
            if state == OrderState.SUBMITTING:  # mined (the embedded chain executes on send)
                self._abandon(record, f"mined too late, it reverted {exc}")
            else:  # simulated only: nothing spent; the readings are judged again as they stand
                self._backoff(record, OrderState.COLLECTING, f"a reading lapsed: {exc}")
            return
        self._fail(record, state, str(exc), name, str(exc))

    def _fail(self, record: OrderRecord, state: OrderState, detail: str, name: str, alert: str) -> None:
        """Records a revert as the order's failure, unless the chain has confirmed the order (by
        another submission, or by a transaction of ours abandoned too soon and mined after all:
        then this one reverted OrderNotOpen, and the order is confirmed, not failed)."""
        try:
            order = self.chain.order(record.order_id)
        except Exception as exc:
            if is_transient(exc):
                self._backoff(record, state, f"reading the order after a revert: {exc}")
                return
            raise
        if order.status in (OrderStatus.CONFIRMED, OrderStatus.CANCELLED):
            self._closed_elsewhere(record.order_id, order.status, order.root_certificate_id)
            return
        self.store.set_state(
            record.order_id, OrderState.FAILED, detail, error_name=name, alert=("failed", alert)
        )
        log.error("order %d: refused by the contract: %s: %s", record.order_id, name, detail)

    def _waiting(self, record: OrderRecord, error_name: str, reason: str) -> None:
        """A receipt refused for its timing: the order collects again and retries, and is told as
        what it is, not as node trouble: the ledger paused (the operator's emergency stop; readings
        that lapse meanwhile are left out, and the devices must read again), or a reading ahead of
        the chain's clock."""
        if error_name == "SystemPaused":
            kind = "paused"
            trouble = "the ledger is paused: the receipt goes out once it is unpaused, less readings lapsed"
        else:
            kind, trouble = "early", "a reading is ahead of the chain's clock"
        self._backoff(record, OrderState.COLLECTING, reason, kind=kind, trouble=trouble)

    def _backoff(
        self,
        record: OrderRecord,
        state: OrderState,
        reason: str,
        *,
        kind: str = "node",
        trouble: str = "node trouble",
        **fields: Any,
    ) -> None:
        attempts = record.attempts + 1
        delay = backoff_delay(attempts, self.settings.retry_base, self.settings.retry_max)
        n = self.settings.retry_attempts
        # Alerted at n in a row and again every n after that while it lasts (an order retried for
        # ever must stay visible), in the same transaction as the state.
        alert = None
        if attempts >= n and (attempts - n) % n == 0:
            alert = (kind, f"{attempts} tries in a row: {trouble} ({reason})")
        self.store.set_state(
            record.order_id,
            state,
            f"{trouble} ({reason}); retry {attempts} in {delay:.1f}s",
            attempts=attempts,
            next_attempt_at=time.time() + delay,
            dirty=state == OrderState.COLLECTING,
            alert=alert,
            **fields,
        )
        log.warning("order %d: %s; retrying in %.1fs", record.order_id, reason, delay)
