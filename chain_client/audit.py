"""Audit replay and verify: rebuild every order and certificate from the chain's logs alone, prove the
rebuilt books equal the contracts' own state, and say exactly where they do not.

`replay` indexes from the deployment block into a new database that replaces the old one when it is
complete. `verify` then checks, at one block:

0. that the index is on the node's chain up to that block: the hash of every block with events
   (from the node's logs) and of the highest stored block up to it (from its header: a hash
   commits to all blocks before it), and the cursor against the stored blocks and events;
1. the digest chain: the stored events are folded again and each block's digest recomputed (an
   event deleted, added or edited in the database); and the stored events themselves against the
   node's logs from the deployment to that block, event by event, naming the event that is
   missing, extra or different (a consistent rewrite of the events, their rows and the digests
   shows there, whatever field it touched);
2. the index tables against the books rebuilt from the stored events (a record edited in place);
3. every order, certificate, offer, participant, credit, warehouse and used invoice, the counters
   and the system settings against the contracts' view functions at that block (a receipt's
   effect is the order's confirmation; the oracle keeps no per-receipt record, only spent
   sequence numbers, see decisions D11);
4. the invariants of DESIGN.md over the rebuilt books (I1 per-order balance, I2 conservation of
   value, I3 escrow against the ledger's token balance at that block, I4 holders and freezes, I5
   at-most-once), plus I0 for an event that refers to a record no event created or disagrees with
   the record it closes. A token balance above what I3 requires is a note, not a finding: anyone
   may send the ledger tokens.

Each finding names the record, the field, both values and the event that last touched the record.

`checked_books_at` is what `state`, `digest` and `export` read: the books and digest at a block,
refused when the stored digest chain up to it is not what the stored events give (check 1 without
the node, over the events up to that block).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from chain_client.chain import Chain
from chain_client.deploy import Deployment
from chain_client.errors import NodeUnavailable
from chain_client.events import UndecodableLog
from chain_client.index.books import (
    ENTITIES,
    SYSTEM_KEY,
    Books,
    Key,
    Record,
    Touch,
    Violation,
    blank,
    check_invariants,
    escrow_expected,
)
from chain_client.index.db import IndexDatabase, IndexDatabaseError, check_index_of, rebuilding
from chain_client.index.decode import Event, LogDecoder, RawLog
from chain_client.index.digest import args_json, block_digest, change_texts, event_document, genesis
from chain_client.index.export import ExportResult, digest_at
from chain_client.index.export import export as export_index
from chain_client.index.models import BlockRecord, ChangeRecord, IndexState, PaymentRecord
from chain_client.index.source import NodeSource, PendingLogs, RpcRequestError, misplaced_log
from chain_client.index.state import BlockOutOfRange, check_indexed, decoder_for, stored_events
from chain_client.index.sync import (
    Indexer,
    IndexInconsistent,
    SyncOptions,
    SyncStatus,
    adapted_range,
    after_refusal,
    check_deployment,
    smaller_may_do,
)
from chain_client.index.views import ChainView, read_chain_view
from chain_client.models import OrderStatus, Role

# ---------------------------------------------------------------------- replay and sync


def replay(
    chain: Chain,
    deployment: Deployment,
    db: IndexDatabase,
    options: SyncOptions | None = None,
    on_progress: Callable[[SyncStatus], None] | None = None,
    until: int | None = None,
    *,
    replace: bool = False,
) -> SyncStatus:
    """Rebuilds the index from the deployment block, all or nothing (see `db.rebuilding`). A
    database holding another deployment's index is refused (`db.AnotherDeploymentsIndex`) unless
    `replace`: an auditor's index of one system is not lost to a --db pointing at the wrong file."""
    return replay_with(chain, deployment, db, options, on_progress, until, replace=replace)[0]


def replay_with(
    chain: Chain,
    deployment: Deployment,
    db: IndexDatabase,
    options: SyncOptions | None = None,
    on_progress: Callable[[SyncStatus], None] | None = None,
    until: int | None = None,
    *,
    replace: bool = False,
) -> tuple[SyncStatus, Indexer]:
    """`replay`, also returning the indexer (for its stage timings)."""
    deployment.check(chain)
    if not replace:
        check_index_of(db, deployment, "replay")
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
    """Brings an existing index (or a new one) up to date; refuses a database holding another
    deployment's index, or a SQLite file that is no index (`db.check_index_of`, which the indexer
    runs as it opens the database)."""
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
        if self.field == "record":
            where = self.source if self.index_value == "present" else self.against
            missing = self.against if self.index_value == "present" else self.source
            return f"{self.entity} {self.key}: in the {where}, missing from the {missing}{last}"
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
class BlockMismatch:
    """A stored block whose hash is not the node's (the index is on another fork: sync it to roll
    back), or a cursor that disagrees with the stored blocks and events."""

    block: int
    problem: str
    index: str | None
    other: str | None
    against: str = "chain"

    def __str__(self) -> str:
        return f"block {self.block}: {self.problem} (index: {self.index}; {self.against}: {self.other})"


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


@dataclass(frozen=True)
class ManifestMismatch:
    """A manifest's statement that the chain's events contradict (who the operator is)."""

    field: str
    manifest: str
    chain: str
    touch: Touch | None

    def __str__(self) -> str:
        by = f" ({self.touch})" if self.touch else ""
        return f"manifest {self.field}: the manifest says {self.manifest}, the chain says {self.chain}{by}"


@dataclass
class VerifyReport:
    block: int
    digest: str
    recomputed_digest: str
    checked: dict[str, int] = field(default_factory=dict)
    manifest_mismatches: list[ManifestMismatch] = field(default_factory=list)
    block_mismatches: list[BlockMismatch] = field(default_factory=list)
    digest_mismatches: list[DigestMismatch] = field(default_factory=list)
    event_mismatches: list[EventMismatch] = field(default_factory=list)
    row_mismatches: list[RowMismatch] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    #: facts worth knowing that are no finding (a token balance above what I3 requires)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(self._kinds())

    def findings(self) -> Iterator[str]:
        for items in self._kinds():
            for item in items:
                yield str(item)

    def details(self) -> list[dict[str, Any]]:
        """The findings as records another tool can read without parsing sentences: each with its
        `kind`, its fields (`touch` as block, tx, log_index and event; the two values compared as
        decimal text when they are integers, as amounts are everywhere in JSON here) and `message`,
        the sentence `findings` gives."""
        kinds = ("manifest", "block", "digest", "event", "row", "difference", "violation")
        return [
            {"kind": kind, **_fields(item), "message": str(item)}
            for kind, items in zip(kinds, self._kinds(), strict=True)
            for item in items
        ]

    def _kinds(self) -> tuple[list[Any], ...]:
        return (
            self.manifest_mismatches,
            self.block_mismatches,
            self.digest_mismatches,
            self.event_mismatches,
            self.row_mismatches,
            self.differences,
            self.violations,
        )


def _fields(item: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(item):
        value = getattr(item, f.name)
        if isinstance(value, Touch):
            value = value._asdict()
        elif f.name in ("index_value", "other_value"):
            value = _json_value(value)
        out[f.name] = value
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value]
    return value


# ---------------------------------------------------------------------- verify


def verify(
    chain: Chain,
    deployment: Deployment,
    db: IndexDatabase,
    block: int | None = None,
    options: SyncOptions | None = None,
) -> VerifyReport:
    """Checks the index against itself, the chain and the invariants at `block` (default: its last).
    Reads the index in one snapshot: a sync committing meanwhile (a follower) is not seen. The
    node's logs are fetched in windows sized as a sync sizes its ranges (`options`)."""
    deployment.check(chain)
    with db.snapshot():
        return _verify(chain, deployment, db, block, options or SyncOptions())


def _verify(
    chain: Chain, deployment: Deployment, db: IndexDatabase, block: int | None, options: SyncOptions
) -> VerifyReport:
    state = db.require_state()
    check_deployment(db, state, deployment)
    at = state.synced_block if block is None else block
    if not state.deployment_block <= at <= state.synced_block:
        raise BlockOutOfRange(
            f"the index covers blocks {state.deployment_block}..{state.synced_block}, not {at}"
        )
    source = NodeSource(chain)
    decoder = decoder_for(state)
    # The index is read in one snapshot, taken at its first read (the cursor, above) before any
    # request to the node. The node's logs are then fetched window by window while the stored
    # events are folded and compared with them in position order; then the header of the highest
    # stored block up to `at` (and of any block whose stored events the logs did not vouch for);
    # then the contracts' views at `at`. A reorg on the node meanwhile shows as a finding, which a
    # second verify clears.
    blocks = db.blocks(state.chain_id)
    check = _EventCheck(
        _chain_windows(source, decoder, state.deployment_block, at, options),
        decoder,
        {b.number: b for b in blocks if b.number <= at},
    )
    refold = _refold(db, state, at, check)
    check.finish()
    # The digest as of `at` (the index's own, and the one its stored events give), for comparing
    # with another auditor's export or verify at that block.
    stored_digest = next((b.digest for b in reversed(blocks) if b.number <= at), None)
    report = VerifyReport(
        block=at,
        digest=digest_at(db, state, at) if stored_digest is None else stored_digest,
        recomputed_digest=refold.digest_at(at),
    )
    report.manifest_mismatches = _manifest_mismatches(db, state, deployment, at)
    report.block_mismatches, cursor_notes = _block_mismatches(state, blocks, source, refold, check, at)
    report.digest_mismatches = _digest_mismatches(state, blocks, refold)
    report.event_mismatches = check.event_mismatches
    report.row_mismatches = refold.hash_mismatches + _row_mismatches(db, state, refold)
    tables = db.load_books(state)
    report.differences = _compare_books(tables, refold.final, "index table", "replayed events")
    view = read_chain_view(source, deployment, refold.at_block, at)
    report.differences += _compare_chain(refold.at_block, view, "replayed events")
    if at == state.synced_block:
        # A row deleted from a table is still named with the event that last touched its record.
        report.differences += _compare_chain(tables, view, "index table", refold.at_block)
    report.violations, report.notes = _violations(refold.at_block, view)
    report.notes += cursor_notes
    # What was compared at `at`: the records the contracts were asked about (the oracle has no
    # view of attestations), and the stored rows up to `at` (rows above it are checked against
    # the events only, as `row_mismatches` and `digest_mismatches` say).
    report.checked = {entity: len(view.records[entity]) for entity in ENTITIES if entity in view.records}
    report.checked["events"] = sum(count for block, (_, count) in refold.blocks.items() if block <= at)
    report.checked["change rows"] = sum(1 for position in refold.changes if position[0] <= at)
    report.checked["payments"] = sum(1 for position in refold.payments if position[0] <= at)
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


def _refold(
    db: IndexDatabase,
    state: IndexState,
    at: int,
    check: _EventCheck | None = None,
    up_to: int | None = None,
    rows: bool = True,
) -> _Refold:
    """The stored events folded again; each one up to `at` is handed to `check` (in chain order) to
    be compared with the node's logs as they are fetched. `up_to` stops at that block (default:
    every stored event); `rows=False` skips the change-log and payment rows (`changes`, `payments`
    and `hash_mismatches` stay empty), for a caller that wants only the books and the digests."""
    books = Books(state.ledger, state.oracle)
    digest = genesis(state.chain_id, state.ledger, state.oracle, state.deployment_block)
    blocks: dict[int, tuple[str, int]] = {}
    changes: dict[tuple[int, int, int, int], tuple[Any, ...]] = {}
    payments: dict[tuple[int, int, int], tuple[Any, ...]] = {}
    hashes: list[RowMismatch] = []
    at_block: Books | None = None
    events = 0
    for number, block_events in _grouped(stored_events(db, state, up_to)):
        if number > at and at_block is None:
            at_block = books.copy()
        documents = []
        block_hash = block_events[0].block_hash
        checked = check if number <= at else None
        if checked is not None:
            checked.block(number, block_hash)
        for e in block_events:
            applied = books.apply(e)
            texts = change_texts(applied)
            arguments = args_json(e.args)
            documents.append(event_document(e, arguments, texts))
            if checked is not None:
                checked.stored(e.position, (e.tx_hash, e.address, f"{e.name}{arguments}"))
            if not rows:
                continue
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
    return _Refold(
        books,
        at_block or books,
        digest,
        events,
        blocks,
        changes,
        payments,
        hashes,
        start,
    )


def _manifest_mismatches(
    db: IndexDatabase, state: IndexState, deployment: Deployment, at: int
) -> list[ManifestMismatch]:
    """The manifest's admin must be the account the ledger's constructor registered as ADMIN: the
    first participant the ledger ever registered. Read from the stored events, which verify checks
    against the node's logs. Before the ledger exists (`at` below its deployment) nothing is said."""
    first = next(
        iter(db.events(state.chain_id, at, name="ParticipantRegistered", address=deployment.ledger)), None
    )
    if first is None:
        return []
    args = json.loads(first["args"])
    touch = Touch(first["block_number"], first["tx_hash"], first["log_index"], first["name"])
    found: list[ManifestMismatch] = []
    if args["account"].lower() != deployment.admin.lower():
        found.append(
            ManifestMismatch(
                "admin", deployment.admin, f"the ledger's first admin is {args['account']}", touch
            )
        )
    elif not int(args["roles"]) & Role.ADMIN:
        found.append(
            ManifestMismatch(
                "admin", deployment.admin, f"registered without the ADMIN role ({args['roles']})", touch
            )
        )
    return found


def _position(block: int, tx_index: int, log_index: int, seq: int | None = None) -> str:
    where = f"block {block} tx {tx_index} log {log_index}"
    return where if seq is None else f"{where} change {seq}"


def _row_mismatches(
    db: IndexDatabase, state: IndexState, refold: _Refold, through: int | None = None
) -> list[RowMismatch]:
    """The stored change log and payments (up to block `through`, default all) against what the
    stored events make: the digest covers the events and the changes they imply, not the rows kept
    beside them, which the API's read scopes, a reorg's undo and the export's totals rely on."""
    change_columns = ("tx_hash", "event", "entity", "key", "field", "old", "new")
    stored_changes = {
        (r["block_number"], r["tx_index"], r["log_index"], r["seq"]): tuple(r[c] for c in change_columns)
        for r in db.rows(ChangeRecord, state.chain_id)
        if through is None or r["block_number"] <= through
    }
    payment_columns = ("tx_hash", "kind", "order_id", "certificate_id", "payer", "payee", "amount")
    stored_payments = {
        (r["block_number"], r["tx_index"], r["log_index"]): tuple(r[c] for c in payment_columns)
        for r in db.rows(PaymentRecord, state.chain_id)
        if through is None or r["block_number"] <= through
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


class _DigestRow(Protocol):
    """What the digest check reads of a stored block: a BlockRecord, or a `_StoredDigest`."""

    @property
    def number(self) -> int: ...
    @property
    def digest(self) -> str: ...
    @property
    def events(self) -> int: ...


class _StoredDigest(NamedTuple):
    """A stored block's digest and event count, read without making a BlockRecord (SQLModel's
    constructor cost more than the whole refold on a 20,000-event index)."""

    number: int
    digest: str
    events: int


def _digest_mismatches(
    state: IndexState, blocks: Sequence[_DigestRow], refold: _Refold, through: int | None = None
) -> list[DigestMismatch]:
    """The first block where the stored digest chain and the stored events part ways (up to block
    `through` only, for a refold that stopped there; the cursor's digest is checked when `through`
    reaches it)."""
    stored = {b.number: b for b in blocks if through is None or b.number <= through}
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
    if (through is None or through >= state.synced_block) and running != state.digest:
        return [DigestMismatch(state.synced_block, state.digest, running, state.events, refold.events)]
    return []


# ---------------------------------------------------------------------- reading the index, checked


class DigestDiffers(IndexDatabaseError):
    """The index's stored digest chain is not what its stored events give: a row was edited,
    added or deleted in the database after the sync wrote it."""


class RowsDiffer(DigestDiffers):
    """The digests hold, but a stored change-log or payment row (which the digest does not cover,
    D52) is not what the stored events make: edited, added or deleted after the sync wrote it."""


def checked_books_at(
    db: IndexDatabase, block: int | None = None, rows: bool = False
) -> tuple[IndexState, Books, str]:
    """The books as of the end of `block` (default: the index's last) and the digest after it,
    refusing (DigestDiffers) an index whose stored digest chain up to `block` is not what its
    stored events give: `state`, `digest` and `export` show the books the events make, so the digest
    they print must be of those events, or two auditors comparing one hash would agree while their
    books differ. The same fold as verify's "the stored events give" (`_refold`, without the rows),
    over the events up to `block` only; no node is needed. Read in one snapshot of the index.
    `rows`: also refuse (RowsDiffer) stored change-log and payment rows up to `block` that the
    events do not make, for a caller that hands those rows on (`export`: its changes, payments and
    totals)."""
    with db.snapshot():
        state = db.require_state()
        at = state.synced_block if block is None else block
        check_indexed(state, at)
        refold = _refold(db, state, at, up_to=at, rows=rows)
        blocks = [
            _StoredDigest(r["number"], r["digest"], r["events"])
            for r in db.rows(BlockRecord, state.chain_id)
            if r["number"] <= at
        ]
        mismatches = _digest_mismatches(state, blocks, refold, through=at)
        edited = refold.hash_mismatches + _row_mismatches(db, state, refold, through=at) if rows else []
    if mismatches:
        m = mismatches[0]
        raise DigestDiffers(
            f"the index does not hold together at block {m.block}: stored digest {m.stored} with "
            f"{m.stored_events} events, its stored events give {m.recomputed} with {m.found_events}; "
            "run `certledger audit verify` to find what was changed, or `certledger audit replay` "
            "to rebuild the index from the chain"
        )
    if edited:
        raise RowsDiffer(
            f"the index does not hold together: {edited[0]}; run `certledger audit verify` to find "
            "every row that was changed, or `certledger audit replay` to rebuild the index from the chain"
        )
    return state, refold.final, refold.digest_at(at)


def export(db: IndexDatabase, directory: Path, block: int | None = None) -> ExportResult:
    """`index.export.export` with the books and digest from `checked_books_at`, refusing an index
    whose stored digests its stored events do not give, or whose change-log and payment rows (the
    export's changes, payments and totals) they do not make."""
    return export_index(db, directory, block, fold=lambda d, b: checked_books_at(d, b, rows=True))


#: Consecutive misplaced getLogs answers for one window verify takes before it gives up.
_LOG_TRIES = 3

#: A window of the node's logs: its first and last block and its logs, in chain order.
_Window = tuple[int, int, list[RawLog]]


def _chain_windows(
    source: NodeSource, decoder: LogDecoder, first: int, last: int, options: SyncOptions
) -> Iterator[_Window]:
    """The node's logs of the deployment's contracts over first..last, through the replay's own
    fetch path (raw JSON-RPC, typed parse), in windows sized as a sync sizes its ranges
    (`adapted_range`, from `options.initial_range`, never above `options.max_range`). A window the
    node refuses, or does not answer in time, is halved and the refused size becomes a ceiling; a
    misplaced answer is fetched again, up to `_LOG_TRIES` times in a row. The next window is asked
    for before this one is handed on, so the node searches while verify compares."""
    size, ceiling, tries = min(options.initial_range, options.max_range), options.max_range, 0

    def ask(low: int) -> tuple[int, int, PendingLogs]:
        high = min(last, low + size - 1)
        return low, high, source.request_logs(low, high, decoder.addresses)

    pending = ask(first) if first <= last else None
    while pending is not None:
        low, high, answer = pending
        try:
            logs = answer.result()
        except (RpcRequestError, NodeUnavailable) as exc:
            if low == high or not smaller_may_do(exc):
                raise
            size, ceiling = after_refusal(low, high, ceiling, exc)
            pending = ask(low)
            continue
        wrong = misplaced_log(logs, low, high)
        if wrong is not None:
            tries += 1
            if tries >= _LOG_TRIES:
                raise IndexInconsistent(f"getLogs {low}..{high} answered {wrong}, {tries} times in a row")
            pending = (low, high, source.request_logs(low, high, decoder.addresses))
            continue
        tries = 0
        size = adapted_range(options, high - low + 1, ceiling, len(logs))
        pending = ask(high + 1) if high < last else None
        yield low, high, logs


_Shown = tuple[str, str, str]


class _EventCheck:
    """The stored events up to the verified block against the node's logs, as a merge of two
    streams in position order: the stored events as `_refold` reads them, the node's logs window by
    window. Neither side is held whole: only the node's logs of the windows not yet passed.

    Also the hashes: each block with stored events against the hash its logs carry, and each
    stored block row against the hash of the node's logs of that block."""

    def __init__(
        self, windows: Iterator[_Window], decoder: LogDecoder, stored_blocks: dict[int, BlockRecord]
    ):
        self._windows = windows
        self._decoder = decoder
        self._rows = stored_blocks
        #: the last block of the windows fetched so far
        self._through: int | None = None
        self._done = False
        #: the node's events not yet matched, and its blocks' hashes not yet passed, in chain order
        self._chain: deque[tuple[tuple[int, int, int], _Shown]] = deque()
        self._hashes: deque[tuple[int, str]] = deque()
        self.event_mismatches: list[EventMismatch] = []
        self.block_mismatches: list[BlockMismatch] = []
        #: stored blocks whose hash the logs compared (with or without a finding)
        self.vouched: set[int] = set()
        #: (block, the hash its first stored event carries) of blocks with stored events that the
        #: node's logs do not vouch for (it has no log of ours there): their headers are fetched
        self.unvouched: list[tuple[int, str]] = []

    def _fetch_through(self, block: int) -> None:
        while not self._done and (self._through is None or self._through < block):
            window = next(self._windows, None)
            if window is None:
                self._done = True
                return
            _, self._through, logs = window
            self._add(logs)

    def _add(self, logs: list[RawLog]) -> None:
        decoder, rows = self._decoder, self._rows
        last_block = None
        for log in logs:
            number = log.block_number
            if number != last_block:
                last_block = number
                self._hashes.append((number, log.block_hash))
                row = rows.get(number)
                if row is not None and row.hash != log.block_hash:
                    self.block_mismatches.append(
                        BlockMismatch(number, "block hash is not the node's", row.hash, log.block_hash)
                    )
                    self.vouched.add(number)
                elif row is not None:
                    self.vouched.add(number)
            try:
                e = decoder.decode(log)
            except UndecodableLog as exc:
                self._chain.append((log.position, (log.tx_hash, log.address, f"(undecodable: {exc})")))
                continue
            if e is not None:
                self._chain.append((e.position, (e.tx_hash, e.address, f"{e.name}{decoder.args_json(e)}")))

    def block(self, number: int, block_hash: str) -> None:
        """A block with stored events (before them), with the hash its first event carries."""
        self._fetch_through(number)
        hashes = self._hashes
        while hashes and hashes[0][0] < number:
            hashes.popleft()
        if not hashes or hashes[0][0] != number:
            self.unvouched.append((number, block_hash))
            return
        theirs = hashes.popleft()[1]
        row = self._rows.get(number)
        if theirs != block_hash and (row is None or row.hash == theirs):
            problem = "its events carry a block hash not the node's"
            self.block_mismatches.append(BlockMismatch(number, problem, block_hash, theirs))

    def stored(self, position: tuple[int, int, int], ours: _Shown) -> None:
        """A stored event up to the verified block, in chain order."""
        chain = self._chain
        while chain and chain[0][0] < position:
            self._mismatch(chain[0][0], None, chain.popleft()[1])
        if chain and chain[0][0] == position:
            theirs = chain.popleft()[1]
            if theirs != ours:
                self._mismatch(position, ours, theirs)
        else:
            self._mismatch(position, ours, None)

    def finish(self) -> None:
        """The node's events after the last stored one: missing from the index."""
        self._fetch_through(2**63)
        while self._chain:
            position, theirs = self._chain.popleft()
            self._mismatch(position, None, theirs)

    def _mismatch(self, position: tuple[int, int, int], ours: _Shown | None, theirs: _Shown | None) -> None:
        if ours is None:
            problem = "event missing from the index"
        elif theirs is None:
            problem = "event in the index that the chain does not have"
        else:
            problem = "event differs from the chain's"
        tx = (ours or theirs or ("",))[0]
        self.event_mismatches.append(
            EventMismatch(position[0], tx, position[2], problem, _shown(ours), _shown(theirs))
        )


def _shown(event: _Shown | None) -> str | None:
    if event is None:
        return None
    tx, address, text = event
    return f"{text} from {address} in tx {tx}"


def _block_mismatches(
    state: IndexState,
    stored: list[BlockRecord],
    source: NodeSource,
    refold: _Refold,
    check: _EventCheck,
    at: int,
) -> tuple[list[BlockMismatch], list[str]]:
    """Whether the index is on the node's chain up to `at`, and its cursor where it should be:
    the block hashes the logs vouched for (`check`); the header of the highest stored block up to
    `at` unless the logs vouched for it (a hash commits to every block before it, so blocks without
    events need no header of their own), and of blocks with stored events the logs did not vouch
    for. Blocks above `at` are not asked about: the node may have replaced them since (the index
    rolls back on its next sync), which says nothing of the index at `at`. The cursor against the
    stored blocks and events is a finding at the index's last block and a note below it.

    An index left on a fork that a reorg replaced (the same transactions mined again in other
    blocks) can equal the chain in every record while its hashes, and so its digest, are of blocks
    nobody else can see."""
    found = list(check.block_mismatches)
    by_number = {b.number: b for b in stored}
    top = next((b for b in reversed(stored) if b.number <= at), None)
    wanted = {number: block_hash for number, block_hash in check.unvouched}
    if top is not None and top.number >= 0 and top.number not in check.vouched:
        wanted.setdefault(top.number, top.hash)
    headers = source.headers(sorted(wanted)) if wanted else {}
    for number in sorted(wanted):
        row = by_number.get(number)
        ours_hash = row.hash if row is not None else wanted[number]
        header = headers.get(number)
        if header is None:
            found.append(BlockMismatch(number, "the node has no such block", ours_hash, None))
        elif header.hash != ours_hash:
            found.append(BlockMismatch(number, "block hash is not the node's", ours_hash, header.hash))
        elif row is not None and row.parent_hash is not None and header.parent_hash != row.parent_hash:
            found.append(
                BlockMismatch(number, "parent hash is not the node's", row.parent_hash, header.parent_hash)
            )
    cursor: list[BlockMismatch] = []
    tip = by_number.get(state.synced_block)
    if tip is None or tip.hash != state.synced_hash:
        problem = "the cursor's hash is not its stored block's"
        stored_hash = tip.hash if tip else None
        cursor.append(
            BlockMismatch(state.synced_block, problem, state.synced_hash, stored_hash, "stored blocks")
        )
    if state.events != refold.events:
        cursor.append(
            BlockMismatch(state.synced_block, "the cursor counts another number of events",
                          str(state.events), str(refold.events), "stored events")
        )  # fmt: skip
    if at == state.synced_block:
        return found + cursor, []
    return found, [f"above the verified block: {m}" for m in cursor]


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
        if (key in ours) != (key in theirs):
            # One finding for a whole record, not one per field against blanks. A record only in
            # the index table was made by no event: its own touch columns are no evidence.
            shown = None if key in ours and source == "index table" else touch(key)
            found.append(
                Difference(
                    source, against, entity, key, "record",
                    "present" if key in ours else "absent", "present" if key in theirs else "absent",
                    shown,
                )
            )  # fmt: skip
            continue
        mine, other = ours[key], theirs[key]
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


def _compare_chain(
    books: Books, view: ChainView, source: str, events: Books | None = None
) -> list[Difference]:
    """`books` against the chain's view; `events`, books from the events, name the last touch of a
    record `books` lack."""
    also = () if events is None else (events,)
    found: list[Difference] = []
    for entity in ("order", "certificate", "offer", "participant", "credit", "warehouse", "system"):
        ours = books.all(entity)
        theirs = view.records.get(entity, {})
        if entity in ("participant", "credit", "warehouse", "system"):
            theirs = {k: v for k, v in theirs.items() if k in ours or entity == "system"}
        if entity == "system" and not ours:
            ours = {SYSTEM_KEY: blank("system")}  # before the ledger's first event: all at zero
        found += _compare_records(
            entity, ours, theirs, _touches(books, *also, entity=entity), source, "chain"
        )
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


def _violations(books: Books, view: ChainView) -> tuple[list[Violation], list[str]]:
    """The invariants' breaches, and notes. I3 requires the ledger to hold at least the open escrow
    plus the credits: less is a breach; more is a note, since anyone can transfer settlement tokens
    to the ledger's address (no function of the ledger moves them, and no finding anyone could
    cause at will should fail an audit)."""
    found = list(books.violations) + check_invariants(books)
    notes: list[str] = []
    expected = escrow_expected(books)
    if expected > view.escrow_balance:
        found.append(
            Violation(
                "I3",
                f"the ledger holds {view.escrow_balance} of the settlement token at block {view.block}; "
                f"open escrow plus credits is {expected}: {expected - view.escrow_balance} missing",
            )
        )
    elif expected < view.escrow_balance:
        notes.append(
            f"the ledger holds {view.escrow_balance} of the settlement token at block {view.block}, "
            f"{view.escrow_balance - expected} more than open escrow plus credits ({expected}): "
            "tokens sent to it directly, which no ledger function moves"
        )
    return found, notes
