"""The gateway: takes raw readings from any intake (MQTT, HTTP), keeps them durably, checks them and
stores the good ones once.

Receiving and checking are separate steps on purpose. `receive` only writes the raw bytes to the
inbox (no chain call), so an intake can acknowledge a reading as soon as it is on disk even while
the node is down; `process_pending` checks what is in the inbox against the chain, and leaves a
reading there if the node does not answer, to try again on the next step.

Each inbox item is handled on its own: one whose check fails for a reason nobody classified (a
node's answer in words of its own, a bug) is tried again with backoff and, after `max_attempts`
failures, quarantined (kept, refused as `internal-error`); it never holds back the items after it.
Only node trouble (or a busy database), which would fail every item alike, ends a batch early.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from oracle.chainview import ChainView
from oracle.retry import backoff_delay, is_transient
from oracle.store import InboxItem, Store
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
    ) -> None:
        self.store = store
        self.chain = chain
        self.clock_skew = clock_skew
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.retry_max = retry_max
        # One reading checked at a time: the HTTP thread and the pipeline both process the inbox.
        self._lock = threading.Lock()

    def receive(self, payload: bytes, source: str) -> int:
        """Keeps a raw reading on disk; returns its inbox id. Safe to acknowledge after this.
        Raises PayloadTooLarge (nothing kept) for a payload over MAX_PAYLOAD bytes."""
        if len(payload) > MAX_PAYLOAD:
            raise PayloadTooLarge(len(payload))
        return self.store.receive(source, payload, order_hint(payload))

    def ingest(self, payload: bytes, source: str) -> Verdict:
        """Receive and check at once (the HTTP intake answers with the verdict)."""
        item_id = self.receive(payload, source)
        with self._lock:
            item = self.store.inbox_item(item_id)
            if item is None:  # the pipeline thread checked it first: answer with what it decided
                return self._decided(payload)
            return self.process(item)

    def _decided(self, payload: bytes) -> Verdict:
        """The verdict already given on a reading: accepted (it is stored) or refused (and why). A
        device told "kept" instead would send it again and be refused as a replay."""
        try:
            reading = decode_reading(payload)
        except MalformedReading as exc:
            return Verdict(False, Reason.MALFORMED, str(exc))
        o = reading.observation
        found = self.store.observation_id(o.device, o.sequence, reading.signature)
        if found is not None:
            return Verdict(True, observation_id=found)
        refused = self.store.last_rejection(o.device, o.sequence)
        if refused is not None:
            return Verdict(False, Reason(refused.reason), refused.detail)
        return Verdict(False, None, "checked by the pipeline")

    def process_pending(self, limit: int = 500) -> list[Verdict]:
        """Checks readings waiting in the inbox, oldest first (but for those backing off after a
        failure); stops early only when the node or the database is unavailable."""
        verdicts: list[Verdict] = []
        with self._lock:
            for item in self.store.unprocessed(limit):
                verdict = self.process(item)
                verdicts.append(verdict)
                if verdict.unavailable:
                    break
        return verdicts

    def process(self, item: InboxItem) -> Verdict:
        """One item's verdict. Never raises for the item's sake: node trouble leaves it waiting
        (`unavailable`), any other failure is counted on the item and, after `max_attempts`,
        quarantines it."""
        try:
            return self._process(item)
        except Exception as exc:
            if is_transient(exc):
                log.warning("node or database unavailable while checking inbox item %d: %s", item.id, exc)
                return Verdict(False, None, str(exc), unavailable=True)
            log.exception("inbox item %d: unexpected error while checking it", item.id)
            try:
                return self._failed(item, exc)
            except Exception as again:
                log.exception("inbox item %d: could not record its failure", item.id)
                return Verdict(False, None, str(again), unavailable=is_transient(again))

    def _failed(self, item: InboxItem, exc: Exception) -> Verdict:
        error = f"{type(exc).__name__}: {exc}"
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
        stored = self.store.stored_signature(o.device, o.sequence)
        if stored is not None:
            if stored == reading.signature:
                return self._refuse(item, reading, Reason.REPLAYED, "already received")
            return self._refuse(
                item,
                reading,
                Reason.SEQUENCE_REUSED,
                f"sequence {o.sequence} already used for another reading",
            )
        refused = check_reading(reading, self.chain, self.clock_skew)
        if refused is not None:
            return self._refuse(item, reading, refused.reason, refused.detail)
        observation_id = self.store.accept(item.id, reading, item.source)
        if observation_id is None:  # the same (device, sequence) won a race with this one
            return self._refuse(item, reading, Reason.REPLAYED, "already received")
        log.info(
            "accepted order %d %s=%d from %s (seq %d)", o.order_id, o.kind, o.value, o.device, o.sequence
        )
        return Verdict(True, None, "", observation_id)

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
