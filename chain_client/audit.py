"""Audit replay and verify: rebuild every order and certificate from the chain's logs alone, prove the
rebuilt books equal the contracts' own state, and say exactly where they do not.

`replay` indexes from the deployment block into a new database that replaces the old one when it is
complete. `verify` then checks, at one block:

1. the digest chain: the stored events are folded again and each block's digest recomputed; a
   block whose digest differs (an event deleted, added or edited in the database) is compared with
   the node's logs of that block, naming the event that is missing, extra or different;
2. the index tables against the books rebuilt from the stored events (a record edited in place);
3. every order, certificate, offer, participant, credit, warehouse and used invoice, the counters
   and the system settings against the contracts' view functions at that block (a receipt's
   effect is the order's confirmation; the oracle keeps no per-receipt record, only spent
   sequence numbers, see decisions D11);
4. the invariants of DESIGN.md over the rebuilt books (I1 per-order balance, I2 conservation of
   value, I3 escrow against the ledger's token balance at that block, I4 holders and freezes, I5
   at-most-once), plus I0 for an event that refers to a record no event created.

Each finding names the record, the field, both values and the event that last touched the record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from chain_client.chain import Chain
from chain_client.deploy import Deployment
from chain_client.index.books import (
    ENTITIES,
    Books,
    Key,
    Record,
    Touch,
    Violation,
    blank,
    check_invariants,
    escrow_expected,
)
from chain_client.index.db import IndexDatabase, IndexDatabaseError, rebuilding
from chain_client.index.decode import Event
from chain_client.index.digest import args_json, block_digest, change_texts, event_document, genesis
from chain_client.index.export import digest_at
from chain_client.index.models import ChangeRecord, IndexState, PaymentRecord
from chain_client.index.source import NodeSource
from chain_client.index.state import decoder_for, stored_events
from chain_client.index.sync import Indexer, SyncOptions, SyncStatus
from chain_client.index.views import ChainView, read_chain_view
from chain_client.models import OrderStatus

# ---------------------------------------------------------------------- replay and sync


def replay(
    chain: Chain,
    deployment: Deployment,
    db: IndexDatabase,
    options: SyncOptions | None = None,
    on_progress: Callable[[SyncStatus], None] | None = None,
    until: int | None = None,
) -> SyncStatus:
    """Rebuilds the index from the deployment block, all or nothing (see `db.rebuilding`)."""
    return replay_with(chain, deployment, db, options, on_progress, until)[0]


def replay_with(
    chain: Chain,
    deployment: Deployment,
    db: IndexDatabase,
    options: SyncOptions | None = None,
    on_progress: Callable[[SyncStatus], None] | None = None,
    until: int | None = None,
) -> tuple[SyncStatus, Indexer]:
    """`replay`, also returning the indexer (for its stage timings)."""
    deployment.check(chain)
    with rebuilding(db) as fresh:
        indexer = Indexer(chain, deployment, fresh, options or SyncOptions(), on_progress, bulk_load=True)
        status = indexer.sync(until)
        with indexer._timed("indexes"):
            fresh.create_indexes(missing_only=False)
    return status, indexer


def sync(
    chain: Chain,
    deployment: Deployment,
    db: IndexDatabase,
    options: SyncOptions | None = None,
    on_progress: Callable[[SyncStatus], None] | None = None,
    until: int | None = None,
) -> SyncStatus:
    """Brings an existing index (or a new one) up to date."""
    deployment.check(chain)
    return Indexer(chain, deployment, db, options or SyncOptions(), on_progress).sync(until)


# ---------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Difference:
    """A field whose value in the index differs from the chain's (or from the index's own events)."""

    source: str  # "index table" or "replayed events": which rebuilt books hold `index_value`
    against: str  # "chain" or "replayed events"
    entity: str
    key: Key
    field: str
    index_value: Any
    other_value: Any
    touch: Touch | None

    def __str__(self) -> str:
        last = f"; last touched by {self.touch}" if self.touch else "; touched by no event"
        return (
            f"{self.entity} {self.key} {self.field}: {self.source} has {self.index_value!r}, "
            f"{self.against} has {self.other_value!r}{last}"
        )


@dataclass(frozen=True)
class DigestMismatch:
    block: int
    stored: str
    recomputed: str
    stored_events: int
    found_events: int

    def __str__(self) -> str:
        return (
            f"block {self.block}: stored digest {self.stored} with {self.stored_events} events, the stored "
            f"events give {self.recomputed} with {self.found_events}"
        )


@dataclass(frozen=True)
class EventMismatch:
    block: int
    tx: str
    log_index: int
    problem: str
    index: str | None
    chain: str | None

    def __str__(self) -> str:
        return (
            f"block {self.block} tx {self.tx} log {self.log_index}: {self.problem} "
            f"(index: {self.index}; chain: {self.chain})"
        )


@dataclass(frozen=True)
class RowMismatch:
    """A change-log or payment row that differs from what the stored events make, or an event whose
    block hash differs from its block's."""

    table: str
    position: str
    problem: str
    index: str | None
    expected: str | None

    def __str__(self) -> str:
        return (
            f"{self.table} row at {self.position}: {self.problem} "
            f"(index: {self.index}; the events give: {self.expected})"
        )


@dataclass
class VerifyReport:
    block: int
    digest: str
    recomputed_digest: str
    checked: dict[str, int] = field(default_factory=dict)
    digest_mismatches: list[DigestMismatch] = field(default_factory=list)
    event_mismatches: list[EventMismatch] = field(default_factory=list)
    row_mismatches: list[RowMismatch] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(self._kinds())

    def findings(self) -> Iterator[str]:
        for items in self._kinds():
            for item in items:
                yield str(item)

    def _kinds(self) -> tuple[list[Any], ...]:
        return (
            self.digest_mismatches,
            self.event_mismatches,
            self.row_mismatches,
            self.differences,
            self.violations,
        )


# ---------------------------------------------------------------------- verify


def verify(chain: Chain, deployment: Deployment, db: IndexDatabase, block: int | None = None) -> VerifyReport:
    """Checks the index against itself, the chain and the invariants at `block` (default: its last).
    Reads the index in one snapshot: a sync committing meanwhile (a follower) is not seen."""
    deployment.check(chain)
    with db.snapshot():
        return _verify(chain, deployment, db, block)


def _verify(chain: Chain, deployment: Deployment, db: IndexDatabase, block: int | None) -> VerifyReport:
    state = db.require_state()
    if (state.chain_id, state.ledger) != (deployment.chain_id, deployment.ledger):
        raise IndexDatabaseError(f"{db.url} indexes ledger {state.ledger} of chain {state.chain_id}")
    at = state.synced_block if block is None else block
    if not state.deployment_block <= at <= state.synced_block:
        raise IndexDatabaseError(
            f"the index covers blocks {state.deployment_block}..{state.synced_block}, not {at}"
        )
    source = NodeSource(chain)
    refold = _refold(db, state, at)
    # The digest as of `at` (the index's own, and the one its stored events give), for comparing
    # with another auditor's export or verify at that block.
    report = VerifyReport(block=at, digest=digest_at(db, state, at), recomputed_digest=refold.digest_at(at))
    report.digest_mismatches = _digest_mismatches(db, state, refold)
    report.event_mismatches = _event_mismatches(db, state, source, report.digest_mismatches)
    report.row_mismatches = refold.hash_mismatches + _row_mismatches(db, state, refold)
    tables = db.load_books(state)
    report.differences = _compare_books(tables, refold.final, "index table", "replayed events")
    view = read_chain_view(source, deployment, refold.at_block, at)
    report.differences += _compare_chain(refold.at_block, view, "replayed events")
    if at == state.synced_block:
        report.differences += _compare_chain(tables, view, "index table")
    report.violations = _violations(refold.at_block, view)
    report.checked = {entity: len(view.records.get(entity, {})) for entity in ENTITIES}
    report.checked["events"] = refold.events
    report.checked["change rows"] = len(refold.changes)
    report.checked["payments"] = len(refold.payments)
    return report


@dataclass
class _Refold:
    final: Books
    at_block: Books
    digest: str
    events: int
    #: block -> (digest after it, events in it), for blocks with stored events
    blocks: dict[int, tuple[str, int]]
    #: the change-log and payment rows the stored events make, by position
    changes: dict[tuple[int, int, int, int], tuple[Any, ...]]
    payments: dict[tuple[int, int, int], tuple[Any, ...]]
    #: events whose block hash differs from their block's first event's (the one the digest takes)
    hash_mismatches: list[RowMismatch]
    genesis: str

    def digest_at(self, block: int) -> str:
        """The recomputed digest after `block` (unchanged through blocks without events)."""
        found = self.genesis
        for number, (digest, _) in self.blocks.items():  # in chain order
            if number > block:
                break
            found = digest
        return found


def _refold(db: IndexDatabase, state: IndexState, at: int) -> _Refold:
    books = Books(state.ledger, state.oracle)
    digest = genesis(state.chain_id, state.ledger, state.oracle, state.deployment_block)
    blocks: dict[int, tuple[str, int]] = {}
    changes: dict[tuple[int, int, int, int], tuple[Any, ...]] = {}
    payments: dict[tuple[int, int, int], tuple[Any, ...]] = {}
    hashes: list[RowMismatch] = []
    at_block: Books | None = None
    events = 0
    for number, block_events in _grouped(stored_events(db, state)):
        if number > at and at_block is None:
            at_block = books.copy()
        documents = []
        block_hash = block_events[0].block_hash
        for e in block_events:
            applied = books.apply(e)
            texts = change_texts(applied)
            documents.append(event_document(e, args_json(e.args), texts))
            for seq, text in enumerate(texts):
                changes[(number, e.tx_index, e.log_index, seq)] = (e.tx_hash, e.name, *text)
            for payment in applied.payments:
                payments[(number, e.tx_index, e.log_index)] = (e.tx_hash, *payment)
            if e.block_hash != block_hash:
                hashes.append(
                    RowMismatch("event", _position(e.block_number, e.tx_index, e.log_index),
                                "block hash differs from its block's", e.block_hash, block_hash)
                )  # fmt: skip
        digest = block_digest(digest, number, block_hash, documents)
        blocks[number] = (digest, len(block_events))
        events += len(block_events)
    start = genesis(state.chain_id, state.ledger, state.oracle, state.deployment_block)
    return _Refold(books, at_block or books, digest, events, blocks, changes, payments, hashes, start)


def _position(block: int, tx_index: int, log_index: int, seq: int | None = None) -> str:
    where = f"block {block} tx {tx_index} log {log_index}"
    return where if seq is None else f"{where} change {seq}"


def _row_mismatches(db: IndexDatabase, state: IndexState, refold: _Refold) -> list[RowMismatch]:
    """The stored change log and payments against what the stored events make: the digest covers
    the events and the changes they imply, not the rows kept beside them, which the API's read
    scopes, a reorg's undo and the export's totals rely on."""
    change_columns = ("tx_hash", "event", "entity", "key", "field", "old", "new")
    stored_changes = {
        (r["block_number"], r["tx_index"], r["log_index"], r["seq"]): tuple(r[c] for c in change_columns)
        for r in db.rows(ChangeRecord, state.chain_id)
    }
    payment_columns = ("tx_hash", "kind", "order_id", "certificate_id", "payer", "payee", "amount")
    stored_payments = {
        (r["block_number"], r["tx_index"], r["log_index"]): tuple(r[c] for c in payment_columns)
        for r in db.rows(PaymentRecord, state.chain_id)
    }
    return _compare_rows("state_change", stored_changes, refold.changes) + _compare_rows(
        "payment", stored_payments, refold.payments
    )


def _compare_rows(
    table: str, stored: dict[Any, tuple[Any, ...]], expected: dict[Any, tuple[Any, ...]]
) -> list[RowMismatch]:
    found: list[RowMismatch] = []
    for key in sorted(set(stored) | set(expected)):
        ours, theirs = stored.get(key), expected.get(key)
        if ours == theirs:
            continue
        if ours is None:
            problem = "missing from the index"
        elif theirs is None:
            problem = "in the index, but no stored event makes it"
        else:
            problem = "differs"
        found.append(
            RowMismatch(table, _position(*key), problem, None if ours is None else str(ours),
                        None if theirs is None else str(theirs))
        )  # fmt: skip
    return found


def _grouped(events: Iterable[Event]) -> Iterator[tuple[int, list[Event]]]:
    current: list[Event] = []
    for e in events:
        if current and e.block_number != current[0].block_number:
            yield current[0].block_number, current
            current = []
        current.append(e)
    if current:
        yield current[0].block_number, current


def _digest_mismatches(db: IndexDatabase, state: IndexState, refold: _Refold) -> list[DigestMismatch]:
    """The first block where the stored digest chain and the stored events part ways."""
    stored = {b.number: b for b in db.blocks(state.chain_id)}
    running = genesis(state.chain_id, state.ledger, state.oracle, state.deployment_block)
    for number in sorted(set(stored) | set(refold.blocks)):
        found, count = refold.blocks.get(number, (running, 0))
        running = found
        record = stored.get(number)
        if record is None or record.digest != found or record.events != count:
            return [
                DigestMismatch(
                    number,
                    record.digest if record else "(no block record)",
                    found,
                    record.events if record else 0,
                    count,
                )
            ]
    if running != state.digest:
        return [DigestMismatch(state.synced_block, state.digest, running, state.events, refold.events)]
    return []


def _event_mismatches(
    db: IndexDatabase, state: IndexState, source: NodeSource, mismatches: list[DigestMismatch]
) -> list[EventMismatch]:
    """For a block whose digest broke: its stored events against the node's logs, event by event."""
    found: list[EventMismatch] = []
    decoder = decoder_for(state)
    for mismatch in mismatches:
        b = mismatch.block
        chain_events = {
            (e.tx_hash, e.log_index): e
            for e in (decoder.decode(log) for log in source.logs(b, b, decoder.addresses))
            if e is not None
        }
        stored = {(e.tx_hash, e.log_index): e for e in stored_events(db, state, b) if e.block_number == b}
        for key in sorted(set(chain_events) | set(stored), key=lambda k: (k[0], k[1])):
            ours, theirs = stored.get(key), chain_events.get(key)
            shown_ours = f"{ours.name}{args_json(ours.args)}" if ours else None
            shown_theirs = f"{theirs.name}{args_json(theirs.args)}" if theirs else None
            if ours is None:
                problem = "event missing from the index"
            elif theirs is None:
                problem = "event in the index that the chain does not have"
            elif shown_ours != shown_theirs or ours.block_hash != theirs.block_hash:
                problem = "event differs from the chain's"
            else:
                continue
            found.append(EventMismatch(b, key[0], key[1], problem, shown_ours, shown_theirs))
    return found


def _compare_records(
    entity: str,
    ours: dict[Key, Record],
    theirs: dict[Key, Record],
    touch: Callable[[Key], Touch | None],
    source: str,
    against: str,
) -> list[Difference]:
    found = []
    for key in sorted(set(ours) | set(theirs), key=lambda k: (str(type(k)), k)):
        mine = ours.get(key) or blank(entity)
        other = theirs.get(key) or blank(entity)
        for name in sorted(set(mine) & set(other)):
            if mine[name] != other[name]:
                found.append(
                    Difference(source, against, entity, key, name, mine[name], other[name], touch(key))
                )
    return found


def _compare_books(ours: Books, theirs: Books, source: str, against: str) -> list[Difference]:
    found: list[Difference] = []
    for entity in ENTITIES:
        touch = _touches(ours, theirs, entity=entity)
        found += _compare_records(entity, ours.all(entity), theirs.all(entity), touch, source, against)
    return found


def _compare_chain(books: Books, view: ChainView, source: str) -> list[Difference]:
    found: list[Difference] = []
    for entity in ("order", "certificate", "offer", "participant", "credit", "warehouse", "system"):
        ours = books.all(entity)
        theirs = view.records.get(entity, {})
        if entity in ("participant", "credit", "warehouse", "system"):
            theirs = {k: v for k, v in theirs.items() if k in ours or entity == "system"}
        found += _compare_records(entity, ours, theirs, _touches(books, entity=entity), source, "chain")
    # An invoice is held by its open or confirmed order; a cancelled one gave it back (D54).
    held = {o["invoice_hash"] for o in books.all("order").values() if o["status"] != OrderStatus.CANCELLED}
    for invoice, invoice_used in view.invoices_used.items():
        if invoice_used != (invoice in held):
            found.append(
                Difference(source, "chain", "invoice", invoice, "used", invoice in held, invoice_used, None)
            )
    counts = (len(books.all("order")), len(books.all("certificate")), len(books.all("offer")))
    for name, mine, theirs_count in zip(
        ("orders", "certificates", "offers"), counts, view.counts, strict=True
    ):
        if mine != theirs_count:
            found.append(Difference(source, "chain", "counts", name, "issued", mine, theirs_count, None))
    credits = sum(c["amount"] for c in books.all("credit").values())
    if credits != view.total_credits:
        found.append(
            Difference(source, "chain", "credits", "total", "amount", credits, view.total_credits, None)
        )
    return found


def _touches(*books: Books, entity: str = "") -> Callable[[Key], Touch | None]:
    """The last event that touched a record of `entity`, from the first of `books` that knows one."""

    def touch(key: Key) -> Touch | None:
        return next((t for b in books if (t := b.touch_of(entity, key)) is not None), None)

    return touch


def _violations(books: Books, view: ChainView) -> list[Violation]:
    found = list(books.violations) + check_invariants(books)
    expected = escrow_expected(books)
    if expected != view.escrow_balance:
        found.append(
            Violation(
                "I3",
                f"the ledger holds {view.escrow_balance} of the settlement token at block {view.block}; "
                f"open escrow plus credits is {expected}",
            )
        )
    return found
