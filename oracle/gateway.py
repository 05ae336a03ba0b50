"""The gateway: takes raw readings from any intake (MQTT, HTTP), keeps them durably, checks them and
stores the good ones once.

Receiving and checking are separate steps on purpose. `receive` only writes the raw bytes to the
inbox (no chain call), so an intake can acknowledge a reading as soon as it is on disk even while
the node is down; `process_pending` checks what is in the inbox against the chain, and leaves a
reading there if the node does not answer, to try again on the next step.

Each inbox item is handled on its own: one whose check fails for a reason nobody classified (a
bug, a payload that trips one) is tried again with backoff and, after `max_attempts` failures,
quarantined (kept, alerted, still holding the order it claims until a person requeues or drops
it); it never holds back the items after it. Node trouble (or a busy database), which would fail
every item alike, ends a batch early without counting against any item: a known transient error,
or the same unclassified error on two items in a row (a node's answer in words of its own).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from chain_client.ledger import ZERO_ADDRESS
from oracle.agreement import Expectations, conflict
from oracle.chainview import ChainView
from oracle.retry import backoff_delay, is_transient
from oracle.store import Held, InboxItem, OrderRecord, OrderState, SetAside, Store, StoredReading
from oracle.validation import Reason, check_reading, check_signed
from oracle.wire import (
    MAX_PAYLOAD,
    MalformedReading,
    PayloadTooLarge,
    SignedReading,
    decode_reading,
    order_hint,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """What became of one reading. `accepted` False with reason None: not checked yet (node down)."""

    accepted: bool
    reason: Reason | None = None
    detail: str = ""
    observation_id: int | None = None
    #: not checked because the node (or the database) is unavailable: later items would fare alike
    unavailable: bool = False
    #: accepted before: this is a copy of a stored reading (a resend, a redelivery), not stored again
    duplicate: bool = False

    @property
    def pending(self) -> bool:
        return not self.accepted and self.reason is None


class Gateway:
    def __init__(
        self,
        store: Store,
        chain: ChainView,
        *,
        clock_skew: int,
        max_attempts: int = 8,
        retry_base: float = 0.5,
        retry_max: float = 30.0,
        expectations: Callable[[OrderRecord], Expectations] | None = None,
    ) -> None:
        self.store = store
        #: The order's expectations as the relayer judges by them: a reading held back while the
        #: order's receipt is in flight is compared with the receipt's readings (None: not compared).
        self.expectations = expectations
        self.chain = chain
        self.clock_skew = clock_skew
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.retry_max = retry_max
        # One reading checked at a time: the HTTP thread and the pipeline both process the inbox.
        self._lock = threading.Lock()
        # Node trouble met while checking the inbox, in a row: the pipeline's next look waits
        # (backing off as the relayer's retries do) instead of asking a node that is away again at
        # every poll, and it is alerted while it lasts (readings wait unseen meanwhile).
        self._node_failures = 0
        self._node_retry_at = 0.0

    def receive(self, payload: bytes, source: str) -> int:
        """Keeps a raw reading on disk; returns its inbox id. Safe to acknowledge after this.
        Raises PayloadTooLarge (nothing kept) for a payload over MAX_PAYLOAD bytes."""
        if len(payload) > MAX_PAYLOAD:
            raise PayloadTooLarge(len(payload))
        return self.store.receive(source, payload, self.order_hint(payload))

    def order_hint(self, payload: bytes) -> int | None:
        """The order a payload is a reading of, for holding that order's submission while it waits:
        only if it is signed by the device it names (the offline checks, no chain call), so a
        payload anyone can make up (a bad signature, another's device) holds nothing back."""
        try:
            hint = order_hint(payload)
            if hint is None:
                return None
            refused = check_signed(decode_reading(payload), self.chain.chain_id, self.chain.oracle_address)
        except Exception:  # the hint is a courtesy: never a reason not to keep the reading
            log.exception("could not work out the order an inbox payload claims")
            return None
        return hint if refused is None else None

    def ingest(self, payload: bytes, source: str) -> Verdict:
        """Receive and check at once (the HTTP intake answers with the verdict). Raises only if the
        reading could not be kept; once it is, a failure to check it leaves it in the inbox for the
        pipeline (a pending verdict, not counted against the item)."""
        item_id = self.receive(payload, source)
        try:
            with self._lock:
                item = self.store.inbox_item(item_id)
                if item is None:  # the pipeline thread checked it first: answer with what it decided
                    return self._decided(payload)
                verdict, _ = self._check(item)
                return verdict
        except Exception as exc:
            log.exception("inbox item %d: kept, but could not be checked now", item_id)
            return Verdict(False, None, f"kept, not checked yet: {exc}", unavailable=True)

    def _decided(self, payload: bytes) -> Verdict:
        """The verdict already given on a reading: accepted (it is stored) or refused (and why). A
        device told "kept" instead would send it again, and hear it only then."""
        try:
            reading = decode_reading(payload)
        except MalformedReading as exc:
            return Verdict(False, Reason.MALFORMED, str(exc))
        o = reading.observation
        found = self.store.stored_reading(o.device, o.sequence)
        if found is not None and found.reading == reading and not found.set_aside:
            return Verdict(True, observation_id=found.id)
        refused = self.store.last_rejection(o.device, o.sequence)
        if refused is not None:
            return Verdict(False, Reason(refused.reason), refused.detail)
        return Verdict(False, None, "checked by the pipeline")

    def process_pending(self, limit: int = 500) -> list[Verdict]:
        """Checks readings waiting in the inbox, oldest first (but for those backing off after a
        failure); stops early when the node or the database is unavailable.

        A failure nobody classified counts against an item only if it is the item's own: it is
        held until the next item is checked, and if that one fails with the same error too, the
        node is asked a question whose answer is known to decode (`_node_answers`). If it cannot
        answer, it is the node's trouble (a restarted node answering 0x, an internal error on every
        call): the batch ends and neither is counted. If it answers, the failures are the items'
        own (two copies of one bad reading): both are counted, so they back off and are
        quarantined rather than stop every later reading from being checked."""
        verdicts: list[Verdict] = []
        if time.monotonic() < self._node_retry_at:
            return verdicts
        with self._lock:
            suspect: tuple[InboxItem, Exception] | None = None
            for item in self.store.unprocessed(limit):
                verdict, failure = self._check(item)
                if failure is not None and suspect is not None and _same(failure, suspect[1]):
                    # The store failing alike (a damaged file) is no item's fault either.
                    if not isinstance(failure, sqlite3.Error) and self._node_answers():
                        verdicts += [self._count(*suspect), self._count(item, failure)]
                        suspect = None
                        continue
                    log.warning(
                        "inbox items %d and %d failed alike (%s): node or store trouble; not counted",
                        suspect[0].id,
                        item.id,
                        _describe(failure),
                    )
                    verdicts += [_unavailable(suspect[1]), _unavailable(failure)]
                    suspect = None
                    break
                if suspect is not None:
                    if verdict.unavailable:  # node trouble after it: most likely its trouble too
                        verdicts.append(_unavailable(suspect[1]))
                        suspect = None
                    else:
                        verdicts.append(self._count(*suspect))
                        suspect = None
                if failure is not None:
                    suspect = (item, failure)
                    continue
                verdicts.append(verdict)
                if verdict.unavailable:
                    break
            if suspect is not None:  # nothing after it to compare with: counted
                verdicts.append(self._count(*suspect))
        trouble = next((v for v in verdicts if v.unavailable), None)
        if trouble is not None:
            self._node_trouble(trouble.detail)
        elif self._node_failures:
            # Answered again, or nothing waits to be checked: a later hiccup starts afresh rather
            # than at the long backoff of an outage that is over.
            log.warning("inbox: checking again after %d failed looks", self._node_failures)
            self._node_failures = 0
        return verdicts

    def _node_answers(self) -> bool:
        """Whether the node answers a contract call through the same path the checks take (a
        device's sequence bit: an eth_call decoded as the checks decode theirs)."""
        try:
            self.chain.sequence_used(ZERO_ADDRESS, 0)
        except Exception as exc:
            log.debug("the node does not answer a plain call either: %s", exc)
            return False
        return True

    def _node_trouble(self, reason: str) -> None:
        """The inbox could not be checked for node (or database) trouble: the next look backs off,
        and the trouble is alerted at `max_attempts` looks in a row and every `max_attempts` after."""
        self._node_failures += 1
        failures, n = self._node_failures, self.max_attempts
        delay = backoff_delay(failures, self.retry_base, self.retry_max)
        self._node_retry_at = time.monotonic() + delay
        log.warning("inbox: node or database unavailable (%s); looking again in %.1fs", reason, delay)
        if failures >= n and (failures - n) % n == 0:
            waiting = self.store.inbox_count(processed=False)
            self.store.alert(
                None,
                "node",
                f"{failures} inbox checks in a row failed, {waiting} readings wait unchecked: {reason}",
            )

    def process(self, item: InboxItem) -> Verdict:
        """One item's verdict, a failure counted against it (as when it is the last of a batch).
        Never raises for the item's sake."""
        verdict, failure = self._check(item)
        return verdict if failure is None else self._count(item, failure)

    def _check(self, item: InboxItem) -> tuple[Verdict, Exception | None]:
        """The item's verdict, or a pending one and the failure nobody classified (not recorded
        yet: the caller decides whether it is the item's). Node trouble is `unavailable`."""
        try:
            return self._process(item), None
        except Exception as exc:
            if is_transient(exc):
                # Said once per look by the caller (`_node_trouble`), with when it looks again.
                log.debug("node or database unavailable while checking inbox item %d: %s", item.id, exc)
                return Verdict(False, None, str(exc), unavailable=True), None
            log.warning("inbox item %d: unexpected error while checking it", item.id, exc_info=True)
            return Verdict(False, None, f"not checked: {_describe(exc)}"), exc

    def _count(self, item: InboxItem, exc: Exception) -> Verdict:
        """Records a failure as the item's own: backoff, or quarantine after `max_attempts`."""
        try:
            return self._failed(item, exc)
        except Exception as again:
            log.exception("inbox item %d: could not record its failure", item.id)
            return Verdict(False, None, str(again), unavailable=is_transient(again))

    def _failed(self, item: InboxItem, exc: Exception) -> Verdict:
        error = _describe(exc)
        attempts = item.attempts + 1
        if attempts >= self.max_attempts:
            try:
                reading: SignedReading | None = decode_reading(item.payload)
            except MalformedReading:
                reading = None
            detail = f"checking failed {attempts} times; last: {error}"
            self.store.quarantine(item.id, item.source, Reason.INTERNAL_ERROR, detail, reading)
            log.error("inbox item %d quarantined: %s", item.id, detail)
            return Verdict(False, Reason.INTERNAL_ERROR, detail)
        delay = backoff_delay(attempts, self.retry_base, self.retry_max)
        self.store.inbox_failed(item.id, error, time.time() + delay)
        return Verdict(False, None, f"not checked ({error}); trying again in {delay:.1f}s")

    def _process(self, item: InboxItem) -> Verdict:
        try:
            reading = decode_reading(item.payload)
        except MalformedReading as exc:
            self.store.reject(item.id, item.source, Reason.MALFORMED, str(exc))
            return Verdict(False, Reason.MALFORMED, str(exc))
        o = reading.observation
        refused = check_signed(reading, self.chain.chain_id, self.chain.oracle_address)
        if refused is not None:
            return self._refuse(item, reading, refused.reason, refused.detail)
        # (device, sequence) next: a redelivered or replayed reading costs no chain call.
        stored = self.store.stored_reading(o.device, o.sequence)
        if stored is not None:
            return self._seen(item, reading, stored)
        refused = check_reading(reading, self.chain, self.clock_skew)
        if refused is not None:
            return self._refuse(item, reading, refused.reason, refused.detail)
        stored_id = self.store.accept(item.id, reading, item.source, self.clock_skew)
        if isinstance(stored_id, Held):
            self._compare_with_receipt(reading, stored_id.state)
            return self._refuse(item, reading, *_held(o.order_id, stored_id.state))
        if isinstance(stored_id, SetAside):
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stored_id.recounted_at))
            detail = (
                f"received or observed before the recount of {when}: kept set aside; the devices "
                "must read the goods again"
            )
            return self._refuse(item, reading, Reason.REPLAYED, detail)
        if stored_id is None:  # the same (device, sequence) won a race with this one
            stored = self.store.stored_reading(o.device, o.sequence)
            if stored is not None:
                return self._seen(item, reading, stored)
            return self._refuse(item, reading, Reason.REPLAYED, "already received")
        log.info(
            "accepted order %d %s=%d from %s (seq %d)", o.order_id, o.kind, o.value, o.device, o.sequence
        )
        return Verdict(True, None, "", stored_id)

    def _compare_with_receipt(self, reading: SignedReading, state: OrderState) -> None:
        """A reading held back while its order's receipt is in flight (or after it was confirmed) is
        not judged with it. If it disagrees with the receipt's readings (a portal counting fewer
        cartons: a short delivery found late), an operator must hear of it: an alert."""
        o = reading.observation
        record = self.store.order(o.order_id)
        if self.expectations is None or record is None or not record.observation_ids:
            return
        sent = [s.reading for s in self.store.observations_by_id(record.observation_ids)]
        disputed = conflict([*sent, reading], self.expectations(record))
        if disputed is None:
            return
        message = (
            f"a reading of {o.device} (sequence {o.sequence}) came while the receipt was "
            f"{state.value} and was not judged with it: {disputed.reason}"
        )
        self.store.alert(o.order_id, "late-disagreement", message)
        log.error("order %d: %s", o.order_id, message)

    def _seen(self, item: InboxItem, reading: SignedReading, stored: StoredReading) -> Verdict:
        """A reading whose (device, sequence) is stored already. The very same reading (a device
        sending again after losing the answer, an MQTT redelivery after a lost PUBACK) gets the
        answer it got the first time, and no refusal is recorded for it: nothing is wrong. A
        different reading under that sequence is refused, and so is one a recount set aside (it
        no longer counts: the devices must read the goods again)."""
        o = reading.observation
        if stored.reading != reading:
            return self._refuse(
                item,
                reading,
                Reason.SEQUENCE_REUSED,
                f"sequence {o.sequence} already used for another reading",
            )
        if stored.set_aside:
            return self._refuse(
                item,
                reading,
                Reason.REPLAYED,
                "set aside by a recount: the devices must read the goods again",
            )
        self.store.forget(item.id)
        log.info("order %d: reading %d of %s received again", o.order_id, o.sequence, o.device)
        return Verdict(True, None, "already received", stored.id, duplicate=True)

    def _refuse(self, item: InboxItem, reading: SignedReading, reason: Reason, detail: str) -> Verdict:
        log.warning(
            "refused reading of order %d from %s: %s %s",
            reading.observation.order_id,
            reading.observation.device,
            reason,
            detail,
        )
        self.store.reject(item.id, item.source, reason, detail, reading)
        return Verdict(False, reason, detail)


def _held(order_id: int, state: OrderState) -> tuple[Reason, str]:
    """Why a reading of an order past collecting in this oracle is not stored."""
    if state == OrderState.SUBMITTING:
        return Reason.ORDER_SUBMITTING, (
            f"order {order_id} is being confirmed with the readings it has; a reading now would not be "
            "judged (if the order collects again, read the goods again)"
        )
    return Reason.ORDER_NOT_OPEN, f"order {order_id} is {state.value}"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _same(a: BaseException, b: BaseException) -> bool:
    """The same error, as far as its words go (a node's answer names no item)."""
    return _describe(a)[:1_000] == _describe(b)[:1_000]


def _unavailable(exc: BaseException) -> Verdict:
    return Verdict(False, None, f"not checked (node trouble: {_describe(exc)})", unavailable=True)
