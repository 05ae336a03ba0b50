"""Sync: the ledger's and the oracle's logs into the index, range by range, safe across reorgs.

Each range is fetched (logs of the two deployed addresses only, then the headers that tie the
range to the indexed tip: its first and last block, and every block with a log near the head),
checked, decoded strictly (an undecodable log of ours stops the sync), applied to the books and
written in one database transaction together with the new cursor. A killed process therefore
leaves the index at the end of its last whole range, and the next run goes on from there: no gap,
no duplicate (and events are upserted on their idempotency key besides). Fetching, applying and
writing overlap (see `Indexer._pipeline`).

Reorgs are found by parent hash: the first block of a new range must name the last indexed block
as its parent, and a sync that finds nothing new checks that its last block is still the node's.
On a mismatch the indexer walks back over the blocks it recorded until the node agrees on a hash
(the common ancestor), undoes every state change after it from the change log (newest first),
deletes the rows of the orphaned blocks, and syncs forward again.

A getLogs answer with a log outside its range, or a position (block, transaction, log) given
twice or out of order, is refused and fetched again (a repeated log would be applied twice).

One indexer per database is the rule (D41), and the database enforces it: every write moves the
cursor only from where this indexer read it (`RangeWrite.expect`). An indexer whose cursor moved
under it (another wrote meanwhile) has its transaction rolled back, reloads cursor and books, and
goes on from the other's cursor; it can no longer write stale ranges and records over the other's.

The range adapts: it halves when the node refuses a getLogs (most providers cap the range or the
result count; the refused size becomes a ceiling) or does not answer it in time (a node searching a
long range can take longer than the RPC timeout), or returns more than `target_logs`, and doubles
while results stay small. A node that does not answer at all (connection refused) stops the sync.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import msgspec
from requests.exceptions import ConnectTimeout
from requests.exceptions import Timeout as RequestsTimeout

from chain_client.chain import Chain
from chain_client.deploy import Deployment
from chain_client.errors import CertledgerError, ManifestError, NodeUnavailable
from chain_client.index.books import (
    CREATED,
    ENTITIES,
    Books,
    Change,
    Key,
    decode_key,
    decode_value,
    encode_key,
)
from chain_client.index.db import (
    DATABASE_ERRORS,
    AnotherDeploymentsIndex,
    CursorMoved,
    IndexDatabase,
    IndexDatabaseError,
    RangeLoader,
    RangeWrite,
    check_index_of,
    materialise,
)
from chain_client.index.decode import Event, LogDecoder, RawLog
from chain_client.index.digest import genesis
from chain_client.index.models import IndexState
from chain_client.index.source import Header, NodeSource, PendingLogs, RpcRequestError, misplaced_log
from chain_client.index.writer import (
    InlineWriter,
    Pending,
    ProcessWriter,
    ThreadWriter,
    Writer,
    can_fork,
)

log = logging.getLogger(__name__)

#: What a follower's round may fail with and live: the node's trouble (down, an error answer, a
#: misshapen one) or the database's (locked, gone, restarted).
ROUND_FAILURES: tuple[type[Exception], ...] = (
    CertledgerError,
    *DATABASE_ERRORS,
    OSError,
    msgspec.ValidationError,
)


class AnotherDeployment(IndexDatabaseError):
    """The index was built from another deployment than the manifest's: no wait will change that."""


class LateManifest(ManifestError):
    """The manifest's deployment block is after the contracts were deployed: no wait will change that."""


#: What ends a follower instead of being tried again on the next poll: the manifest and the index
#: do not belong together, which only a person can put right.
FINAL_FAILURES: tuple[type[Exception], ...] = (AnotherDeployment, AnotherDeploymentsIndex, LateManifest)


def check_deployment(db: IndexDatabase, state: IndexState, deployment: Deployment) -> None:
    """AnotherDeployment unless the index is of the manifest's deployment: its chain, ledger,
    oracle and deployment block. The digest chain starts from all four, so an index begun at
    another block than the manifest's would be synced on, or certified by verify, with a digest
    that whoever holds the manifest cannot reproduce by replaying."""
    pairs = (
        ("chain", state.chain_id, deployment.chain_id),
        ("ledger", state.ledger, deployment.ledger),
        ("oracle", state.oracle, deployment.oracle),
        ("deployment block", state.deployment_block, deployment.deployment_block),
    )
    differ = [f"{name} {ours} (the manifest's: {theirs})" for name, ours, theirs in pairs if ours != theirs]
    if differ:
        raise AnotherDeployment(f"{db.shown_url} indexes another deployment: " + ", ".join(differ))


class ReorgTooDeep(CertledgerError):
    """The node no longer has any block the index recorded: the deployment itself was reorged away."""


class IndexInconsistent(CertledgerError):
    """The node kept answering with data that does not fit together (its chain kept moving)."""


@dataclass(frozen=True)
class SyncOptions:
    #: Blocks to stay behind the head; 0 follows the head itself (reorgs are then rolled back).
    confirmations: int = 0
    #: Blocks in the first range; it doubles while ranges stay small. Small at first, so that the
    #: writer has work soon after a replay starts.
    initial_range: int = 100
    max_range: int = 100_000
    #: A range returning more logs than this is halved next time. About a thousand keeps the
    #: fetch, apply and write stages busy at once, the pipeline's start and end (when one stage
    #: works alone) short, and a range's transaction small; measured on a 20,000-event replay,
    #: 3,000 was a fifth slower and 250 slower still (each range costs a header request and a
    #: commit).
    target_logs: int = 1_000
    #: Consecutive inconsistent fetches before giving up.
    max_retries: int = 20
    #: Blocks this close to the head get their full header recorded (hash and parent hash). Older
    #: blocks with events are recorded with the hash their logs carry, without a header request:
    #: a replay of old history would otherwise fetch a header per block, as many bytes as the logs.
    #: Reorg safety does not depend on it (see `_fetch`). None records every header.
    header_window: int | None = 128


@dataclass(frozen=True)
class SyncStatus:
    chain_id: int
    deployment_block: int
    synced_block: int
    target_block: int
    events: int
    digest: str
    reorgs: int


@dataclass
class _Fetched:
    first: int
    last: int
    logs: list[RawLog]
    headers: dict[int, Header]
    #: the header of the next range's last block, read with this range's headers (see `_begin`)
    following: Header | None = None


@dataclass
class _Begun:
    """A range whose getLogs is on its way."""

    first: int
    last: int
    before: Header
    logs: PendingLogs


@dataclass
class _Retry:
    reason: str


@dataclass
class _Reorg:
    reason: str


@dataclass
class Indexer:
    """Keeps one deployment's index in one database up to date with one node."""

    chain: Chain
    deployment: Deployment
    db: IndexDatabase
    options: SyncOptions = field(default_factory=SyncOptions)
    on_progress: Callable[[SyncStatus], None] | None = None
    #: Set by a replay into an emptied database, which builds the secondary indexes at the end.
    bulk_load: bool = False

    def __post_init__(self) -> None:
        self.source = NodeSource(self.chain)
        self.decoder = LogDecoder.for_contracts(
            ((self.deployment.ledger, "CertificateLedger"), (self.deployment.oracle, "ReceiptOracle"))
        )
        self.addresses = self.decoder.addresses
        self._chain_id = self.deployment.chain_id
        self.reorgs = 0
        #: the block the last reorg rolled the index back to (its common ancestor with the node)
        self.rolled_back_to: int | None = None
        #: seconds per pipeline stage since this indexer was made: fetch, apply and write, and in
        #: this thread the handoff of a range to a writer and the wait for one to finish
        self.timings: defaultdict[str, float] = defaultdict(float)
        self._range = self.options.initial_range
        self._ceiling = self.options.max_range
        self._state: IndexState | None = None
        self._books: Books | None = None
        #: records a replay touched in the ranges of its open transaction, None if none is open
        #: (see `_close`)
        self._unsaved: set[tuple[str, Key]] | None = None
        #: the cursor (block, hash) the database held when the running pipeline began: a replay's
        #: closing write moves it only from there (`RangeWrite.expect`)
        self._began: tuple[int, str] | None = None

    # ------------------------------------------------------------------ opening

    @property
    def chain_id(self) -> int:
        return self.deployment.chain_id

    def open(self) -> tuple[IndexState, Books]:
        """The cursor and books, loaded from the database (created there on first use)."""
        if self._state is None or self._books is None:
            # Before create(): the cursor of this chain alone would miss an index of another chain
            # in the same database, and a second one would be begun beside it (D93).
            check_index_of(self.db, self.deployment, "sync")
            self.db.create()
            if not self.bulk_load:
                self.db.create_indexes()
            state = self.db.state(self.chain_id) or self._initialise()
            check_deployment(self.db, state, self.deployment)
            self._state = state
            self._books = self.db.load_books(state)
        return self._state, self._books

    def _forget(self) -> None:
        """Drops the cached cursor and books: the next `open` reloads both from the database."""
        self._books = None
        self._state = None
        self._unsaved = None

    def _initialise(self) -> IndexState:
        start = self.deployment.deployment_block - 1
        header = self.source.headers([start])[start] if start >= 0 else Header(-1, "0x" + "00" * 32, "")
        if header is None:
            head = self.source.head()
            if head < start:
                raise ManifestError(
                    f"the manifest's deployment block {start + 1} is past the node's head {head}: "
                    "a manifest of another chain, or a node not synced that far"
                )
            raise ReorgTooDeep(f"the node has no block {start}, before the deployment")
        if start >= 0:
            self._check_nothing_before(start)
        digest = genesis(self.chain_id, self.deployment.ledger, self.deployment.oracle, start + 1)
        state = IndexState(
            chain_id=self.chain_id,
            ledger=self.deployment.ledger,
            oracle=self.deployment.oracle,
            deployment_block=start + 1,
            synced_block=start,
            synced_hash=header.hash,
            digest=digest,
            events=0,
        )
        block = {
            "chain_id": self.chain_id,
            "number": start,
            "hash": header.hash,
            "parent_hash": header.parent_hash,
            "digest": digest,
            "events": 0,
        }
        self.db.initialise(state, block)
        return state

    def _check_nothing_before(self, block: int) -> None:
        """Refuses a manifest whose deployment block comes after the contracts' deployment: an index
        from it would lack their first events (the ledger's constructor registrations, orders...)
        and books built on them. A node that keeps no state of that block cannot tell; the events
        then speak (verify reports I0 for a record no event created). The token is not checked: a
        deployment may settle in a token that existed long before it."""
        contracts = {"CertificateLedger": self.deployment.ledger, "ReceiptOracle": self.deployment.oracle}
        try:
            found = self.source.has_code(list(contracts.values()), block)
        except RpcRequestError as exc:
            log.warning("cannot check that no contract existed before the deployment block: %s", exc)
            return
        early = [f"{name} {address}" for name, address in contracts.items() if found[address]]
        if early:
            raise LateManifest(
                f"the manifest's deployment block {block + 1} is after the deployment: "
                f"{', '.join(early)} already had code at block {block}; an index from it would miss "
                "their first events (use the manifest the deployment wrote)"
            )

    def status(self, target: int | None = None) -> SyncStatus:
        state, _ = self.open()
        return SyncStatus(
            chain_id=state.chain_id,
            deployment_block=state.deployment_block,
            synced_block=state.synced_block,
            target_block=state.synced_block if target is None else target,
            events=state.events,
            digest=state.digest,
            reorgs=self.reorgs,
        )

    # ------------------------------------------------------------------ syncing

    def sync(self, until: int | None = None) -> SyncStatus:
        """Indexes up to `until` (default: the head less the confirmation depth) and returns.

        Another indexer writing the same database meanwhile makes a write of this one find the
        cursor moved (`CursorMoved`): the write is rolled back, this indexer reloads its cursor and
        books from the database and goes on from there (a retry)."""
        self.open()
        try:
            if self._tip_replaced():
                self._rollback()
        except CursorMoved:
            self._forget()
        retries = 0
        while True:
            state, _ = self.open()
            target = self.source.head() - self.options.confirmations
            if until is not None:
                target = min(target, until)
            if state.synced_block >= target:
                return self.status(target)
            outcome: _Retry | _Reorg | None
            try:
                outcome = self._pipeline(state, target)
            except CursorMoved as exc:
                outcome = _Retry(str(exc))  # the caches are dropped: open() reloads them
            if outcome is None or self.open()[0].synced_block > state.synced_block:
                retries = 0
            if outcome is None:
                continue
            retries += 1
            if retries > self.options.max_retries:
                raise IndexInconsistent(f"gave up after {retries} tries: {outcome.reason}")
            if isinstance(outcome, _Reorg):
                try:
                    self._rollback()
                except CursorMoved:
                    self._forget()

    def follow(
        self,
        poll_seconds: float = 1.0,
        stop: Callable[[], bool] = lambda: False,
        on_status: Callable[[SyncStatus], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> SyncStatus | None:
        """Keeps syncing as the head moves until `stop()` says so; returns the last good status.
        `on_status` hears each round's status, `on_error` each failed round (default: a log line).

        A follower outlives the node's and the database's troubles: a failed round is reported and
        the next poll tries again (a sync resumes from its committed cursor, so nothing is lost or
        doubled). Stopping on the first error would leave whoever reads the index on a frozen copy
        with nobody told but a log line. A manifest and an index that do not belong together
        (FINAL_FAILURES) are raised instead: trying again would only repeat the same refusal."""
        status: SyncStatus | None = None
        failures = 0
        while True:
            try:
                status = self.sync()
                failures = 0
            except FINAL_FAILURES:
                raise
            except ROUND_FAILURES as exc:
                failures += 1
                if on_error is None:
                    wait = follow_backoff(poll_seconds, failures)
                    log.warning("index sync failed, trying again in %.1f s: %s", wait, exc)
                else:
                    on_error(exc)
            else:
                if on_status is not None:
                    on_status(status)
            if stop():
                return status
            time.sleep(follow_backoff(poll_seconds, failures))

    def _pipeline(self, state: IndexState, target: int) -> _Retry | _Reorg | None:
        """Syncs up to `target` with the stages overlapped. The getLogs of the next range is sent
        before this range is applied, so the node searches its logs while this thread decodes and
        applies (see `source`); a range is written while the next one is applied, except by the
        inline SQLite writer (see `writer`). Returns None when `target` is reached, or why
        fetching stopped early."""
        tip, tip_hash = state.synced_block, state.synced_hash
        self._began = (tip, tip_hash)
        try:
            with self._timed("fetch"):
                begun: _Begun | _Reorg | None = self._begin(tip + 1, min(target, tip + self._range))
            with self._writer() as writer, _gc_paused():
                pending: Pending | None = None
                while begun is not None:
                    with self._timed("fetch"):
                        fetched = self._finish(begun, target, tip, tip_hash)
                        if not isinstance(fetched, _Fetched):
                            self._close(writer, pending, target)
                            return fetched
                        tip, tip_hash = fetched.last, fetched.headers[fetched.last].hash
                        begun = None
                        if tip < target:
                            begun = self._begin(tip + 1, min(target, tip + self._range), fetched.following)
                    with self._timed("apply"):
                        batch = self._apply_range(fetched)
                    with self._timed("wait"):
                        self._settle(pending, target)
                    with self._timed("handoff"):
                        # the digest after the range before, which is now sealed and written
                        batch.digest = self._state.digest if self._state is not None else ""
                        pending = writer.submit(batch)
                self._close(writer, pending, target)
        except BaseException:
            # The books may be ahead of what the database got: reload both from it.
            self._forget()
            raise
        return None

    def _close(self, writer: Writer, pending: Pending | None, target: int) -> None:
        """Waits for the last range handed over. A replay's ranges leave their transaction open
        (see `_apply_range`): this then closes it with the records they touched, as the books hold
        them now (made while the last range is written), and the cursor after the last range."""
        if self._unsaved is None or self._state is None or self._books is None:
            with self._timed("wait"):
                self._settle(pending, target)
            return
        with self._timed("apply"):
            records, gone = materialise(self._books, self._unsaved, self.chain_id)
        with self._timed("wait"):
            self._settle(pending, target)
        state = self._state
        batch = RangeWrite(self._chain_id, records=records, gone=gone, bulk=True, digest=state.digest)
        batch.state = {
            "synced_block": state.synced_block,
            "synced_hash": state.synced_hash,
            "events": state.events,
        }
        batch.expect = self._began
        with self._timed("handoff"):
            pending = writer.submit(batch)
        with self._timed("wait"):
            pending.result()
        self._unsaved = None

    def _settle(self, pending: Pending | None, target: int) -> None:
        """Waits for a handed-over range's commit, takes the digest it was sealed with, reports."""
        if pending is not None:
            digest = pending.result()
            if self._state is not None:
                self._state.digest = digest
            self._report(target)

    @contextmanager
    def _writer(self) -> Iterator[Writer]:
        """Where range writes run (see `writer`): a child process for a replay, a thread for a
        PostgreSQL sync, else inline. A transaction left open when the pipeline stops is rolled
        back."""
        writer: Writer
        loader = RangeLoader(self.db)

        def write(batch: RangeWrite) -> str:
            with self._timed("write"):
                return loader.write(batch)

        if self.bulk_load and can_fork():
            writer = ProcessWriter(self.db, self._written)
        elif self.db.dialect != "sqlite":
            writer = ThreadWriter(write)
        else:
            writer = InlineWriter(write)
        try:
            yield writer
        finally:
            writer.close()
            loader.abandon()

    def _written(self, seconds: float) -> None:
        self.timings["write"] += seconds

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] += time.perf_counter() - started

    def _report(self, target: int) -> None:
        if self.on_progress is not None:
            self.on_progress(self.status(target))

    def _tip_replaced(self) -> bool:
        state, _ = self.open()
        if state.synced_block < 0:
            return False
        header = self.source.headers([state.synced_block])[state.synced_block]
        return header is None or header.hash != state.synced_hash

    def _begin(self, first: int, last: int, before: Header | None = None) -> _Begun | _Reorg:
        """Starts fetching first..last: reads the header of `last` (unless `before` is it, read
        with the previous range's headers, which saves a request per range), then sends the
        getLogs. Either way the header is read before the logs are asked for."""
        if before is None or before.number != last:
            before = self.source.headers([last])[last]
        if before is None:
            return _Reorg(f"block {last} disappeared")
        return _Begun(first, last, before, self.source.request_logs(first, last, self.addresses))

    def _finish(
        self, begun: _Begun | _Reorg, head: int, tip: int, tip_hash: str
    ) -> _Fetched | _Retry | _Reorg:
        """Logs of first..last with the headers that prove them one chain continuing block `tip`.

        The header of `last` is read before the logs were asked for and after they came: if its hash
        did not change, no block up to it changed in between (each hash commits to all before it),
        so the logs are of that chain; the header of `first` must name `tip_hash` as parent. Every
        log must carry its block's hash (from the header where one was fetched, the same across the
        block otherwise)."""
        if isinstance(begun, _Reorg):
            return begun
        first, last = begun.first, begun.last
        try:
            logs = begun.logs.result()
        except (RpcRequestError, NodeUnavailable) as exc:
            if first == last or not smaller_may_do(exc):
                raise
            self._range, self._ceiling = after_refusal(first, last, self._ceiling, exc)
            return _Retry(f"getLogs {first}..{last} failed: {exc}")
        wrong = misplaced_log(logs, first, last)
        if wrong is not None:
            return _Retry(f"getLogs {first}..{last} answered {wrong}")
        window = self.options.header_window
        recent = {log.block_number for log in logs if window is None or log.block_number > head - window}
        following = min(head, last + self._adapted(len(logs))) if last < head else None
        wanted = {first, last, *recent}
        found = self.source.headers(sorted(wanted if following is None else wanted | {following}))
        after = found.pop(following) if following is not None else None
        headers = {n: h for n, h in found.items() if h is not None}
        if len(headers) != len(found):
            return _Reorg(f"blocks of {first}..{last} disappeared")
        if headers[first].parent_hash != tip_hash:
            return _Reorg(f"block {first} does not follow indexed block {tip}")
        if headers[last].hash != begun.before.hash:
            return _Retry(f"block {last} changed while its range was fetched")
        hashes: dict[int, str] = {n: h.hash for n, h in headers.items()}
        for log in logs:
            if hashes.setdefault(log.block_number, log.block_hash) != log.block_hash:
                return _Retry(f"logs of block {log.block_number} came from a replaced block")
        self._range = self._adapted(len(logs))
        return _Fetched(first, last, logs, headers, after)

    def _adapted(self, count: int) -> int:
        """The next range's size after one that returned `count` logs."""
        return adapted_range(self.options, self._range, self._ceiling, count)

    # ------------------------------------------------------------------ applying a range

    def _apply_range(self, fetched: _Fetched) -> RangeWrite:
        """Applies a range to the books and returns what to write. Moves the in-memory cursor (its
        digest follows when the range is sealed); the database's moves when the writer commits.

        A replay leaves the range's transaction open and its records unwritten (`_close` writes
        them once, when the pipeline stops): a record is touched in many ranges, and an emptied
        database has no reader to keep current meanwhile. A replay is thereby one transaction per
        pipeline run: all or nothing, as for its SQLite file (see `db.rebuilding`)."""
        state, books = self.open()
        batch = self._apply(fetched, state, books)
        # Ranges are written in order, each from where the one before left the cursor.
        batch.expect = (state.synced_block, state.synced_hash)
        if self.bulk_load:
            batch.closes = False
            if self._unsaved is None:
                self._unsaved = set()
            self._unsaved |= batch.touched
        else:
            batch.records, batch.gone = materialise(books, batch.touched, self.chain_id)
        self._state = IndexState(**{**state.model_dump(), **batch.state})
        return batch

    def _apply(self, fetched: _Fetched, state: IndexState, books: Books) -> RangeWrite:
        """The range applied to the books: event rows, their effects, payments and blocks (the
        writer seals them, see `RangeWrite.seal`)."""
        batch = RangeWrite(self._chain_id, bulk=self.bulk_load)
        events = [e for e in (self.decoder.decode(log) for log in fetched.logs) if e is not None]
        hashes = {log.block_number: log.block_hash for log in fetched.logs}
        for number, block_events in _by_block(events):
            for e in block_events:
                self._apply_event(books, batch, e)
            header = fetched.headers.get(number)
            parent = header.parent_hash if header is not None else None
            batch.blocks.append((number, hashes[number], parent, len(block_events)))
        if not events or events[-1].block_number != fetched.last:
            tip = fetched.headers[fetched.last]
            batch.blocks.append((tip.number, tip.hash, tip.parent_hash, 0))
        books.violations.clear()
        batch.state = {
            "synced_block": fetched.last,
            "synced_hash": fetched.headers[fetched.last].hash,
            "events": state.events + len(events),
        }
        return batch

    def _apply_event(self, books: Books, batch: RangeWrite, event: Event) -> None:
        """Applies one event; adds its row, effects and payment to the batch (once per event in a
        replay: locals rather than repeated attribute lookups, plain tuples for the effects, which
        cross to the writer process)."""
        applied = books.apply(event)
        args = event.args_json or self.decoder.args_json(event)
        block, tx_index, log_index, tx = event.block_number, event.tx_index, event.log_index, event.tx_hash
        batch.events.append(
            (
                self._chain_id,
                tx,
                log_index,
                event.block_hash,
                block,
                tx_index,
                event.address,
                event.name,
                args,
            )
        )
        changes = applied.changes
        batch.effects.append([tuple(c) for c in changes])
        touched = batch.touched
        for c in changes:
            touched.add((c[0], c[1]))
        payments = applied.payments
        if payments:
            if len(payments) > 1:
                raise AssertionError(f"{event.name} booked {len(payments)} payments; the table keys one")
            batch.payments.append((self._chain_id, block, tx_index, log_index, tx, *payments[0]))

    # ------------------------------------------------------------------ reorgs

    def _rollback(self) -> None:
        state, books = self.open()
        ancestor = self._common_ancestor()
        try:
            touched = self._undo_after(ancestor, books)
            anchor = next(b for b in self.db.blocks(self.chain_id, descending=True) if b.number == ancestor)
            dropped = self.db.count_events_after(self.chain_id, ancestor)
            values = {
                "synced_block": ancestor,
                "synced_hash": anchor.hash,
                "digest": anchor.digest,
                "events": state.events - dropped,
            }
            records, gone = materialise(books, touched, self.chain_id)
            expect = (state.synced_block, state.synced_hash)
            self.db.write_rollback(self.chain_id, ancestor, records, gone, values, expect)
        except BaseException:
            self._forget()
            raise
        self._state = IndexState(**{**state.model_dump(), **values})
        self.reorgs += 1
        self.rolled_back_to = ancestor

    def _undo_after(self, ancestor: int, books: Books) -> set[tuple[str, Key]]:
        touched: set[tuple[str, Key]] = set()
        for row in self.db.changes_after(self.chain_id, ancestor):
            entity, name = row["entity"], row["field"]
            key = decode_key(entity, row["key"])
            old = None
            if name != CREATED and row["old"] is not None:
                old = decode_value(ENTITIES[entity].fields[name], row["old"])
            books.undo(Change(entity, key, name, old, None))
            touched.add((entity, key))
        for entity, key in touched:
            if books.get(entity, key) is not None:
                touch = self.db.last_touch(self.chain_id, entity, encode_key(entity, key), ancestor)
                books.set_touch(entity, key, touch)
        return touched

    def _common_ancestor(self) -> int:
        """The newest recorded block the node still has with the same hash."""
        recorded = self.db.blocks(self.chain_id, descending=True)
        for start in range(0, len(recorded), 64):
            chunk = recorded[start : start + 64]
            headers = self.source.headers([b.number for b in chunk])
            for block in chunk:
                header = headers[block.number]
                if header is not None and header.hash == block.hash:
                    return block.number
        raise ReorgTooDeep(f"the node has none of the {len(recorded)} blocks the index recorded")


#: The longest a failing follower waits between rounds, in seconds (also how long a stop may wait
#: for a follower asleep in its backoff).
FOLLOW_BACKOFF_MAX = 10.0


def follow_backoff(poll_seconds: float, failures: int) -> float:
    """A follower's wait before its next round: the poll interval, doubled by each failed round in
    a row (a node or database away for long is not asked twice a second), at most
    FOLLOW_BACKOFF_MAX (or the poll interval, if longer). A poll of 0 backs off from 0.05 s."""
    base = poll_seconds if failures == 0 else max(poll_seconds, 0.05)
    return float(min(base * 2 ** min(failures, 16), max(poll_seconds, FOLLOW_BACKOFF_MAX)))


def smaller_may_do(exc: RpcRequestError | NodeUnavailable) -> bool:
    """Whether a getLogs the node refused (its error answer) or did not answer in time may succeed
    over a smaller range; a node that does not answer at all (refused connection, no connection
    made in time) will not."""
    if isinstance(exc, RpcRequestError):
        return True
    cause = exc.__cause__
    return isinstance(cause, (TimeoutError, RequestsTimeout)) and not isinstance(cause, ConnectTimeout)


def after_refusal(
    first: int, last: int, ceiling: int, exc: RpcRequestError | NodeUnavailable
) -> tuple[int, int]:
    """The size to ask for next after first..last failed with `exc`, and the ceiling from then on.
    A refusal is the provider's cap: the refused size becomes the ceiling for good. A timeout is the
    node busy now: only the next range is halved, and ranges grow back as answers come (a ceiling
    lowered by each timeout of an outage left a follower asking one block at a time for ever)."""
    size, capped = refused_range(first, last)
    return (size, capped) if isinstance(exc, RpcRequestError) else (size, ceiling)


def refused_range(first: int, last: int) -> tuple[int, int]:
    """After the node refused first..last (most providers cap the range or the result count): the
    size to ask for next, half of it, and the ceiling never to ask above again."""
    return max(1, (last - first + 1) // 2), max(1, last - first)


def adapted_range(options: SyncOptions, size: int, ceiling: int, count: int) -> int:
    """The next getLogs range's size after one of `size` blocks that returned `count` logs: halved
    above `options.target_logs`, doubled below a quarter of it, never above `options.max_range` or
    `ceiling` (the largest size the node has not refused). Verify sizes its windows the same way."""
    if count > options.target_logs:
        return max(1, size // 2)
    if count < options.target_logs // 4:
        return min(options.max_range, ceiling, size * 2)
    return size


def _by_block(events: list[Event]) -> list[tuple[int, list[Event]]]:
    grouped: list[tuple[int, list[Event]]] = []
    for e in events:
        if grouped and grouped[-1][0] == e.block_number:
            grouped[-1][1].append(e)
        else:
            grouped.append((e.block_number, [e]))
    return grouped


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Parsing and applying a range allocates many small objects that all live until it is written;
    the cyclic collector would scan them (and the books) again and again for nothing: there are no
    cycles among them. Paused for the whole pipeline, not per range: re-enabled between ranges,
    it ran full collections over the books, measured at a tenth of a replay."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
