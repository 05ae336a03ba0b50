"""The gateway's durable memory (SQLite): raw readings as they arrive, accepted observations,
rejections, each order's state machine and alerts.

Durability is the point of this module: a reading is in the inbox (committed, fsynced) before the
MQTT PUBACK or the HTTP answer goes back, so a crash after that loses nothing; an accepted reading
is unique by (device, sequence), so a redelivered or replayed one is stored once; and an order's
transaction hash and signed bytes are committed *before* they are broadcast, so a restarted relayer
always knows what it may already have sent.

Large integers (sequence, value, deadlines: uint64 on chain) are kept as decimal text or inside
the reading's JSON: SQLite integers are signed 64-bit.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oracle.wire import MAX_PAYLOAD, PayloadTooLarge, SignedReading, parse_reading

_SCHEMA = """
-- Raw readings waiting to be checked (processed 0) or set aside after failing to be checked again
-- and again (processed 2, quarantined, kept for a person to look at). A reading that got its
-- verdict leaves the inbox in the transaction that records the verdict (the observation keeps an
-- accepted reading, the rejection says why one was refused).
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    source TEXT NOT NULL,
    payload BLOB NOT NULL,
    processed INTEGER NOT NULL DEFAULT 0,
    -- the order the payload claims, recorded only when its signature is the claimed device's, so
    -- that order's submission waits for it (quarantined too, until a person requeues or drops it)
    order_hint INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS inbox_unprocessed ON inbox(processed, id);
CREATE TABLE IF NOT EXISTS observations (
    id INTEGER PRIMARY KEY,
    order_id INTEGER NOT NULL,
    device TEXT NOT NULL,
    sequence TEXT NOT NULL,
    kind INTEGER NOT NULL,
    reading TEXT NOT NULL,
    source TEXT NOT NULL,
    received_at REAL NOT NULL,
    -- set aside when a person resolved the order's dispute by a recount: kept, no longer counted
    set_aside INTEGER NOT NULL DEFAULT 0,
    UNIQUE (device, sequence)
);
CREATE INDEX IF NOT EXISTS observations_order ON observations(order_id);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    source TEXT NOT NULL,
    order_id TEXT,
    device TEXT,
    sequence TEXT,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    order_id INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    carton_weight_grams INTEGER,
    count_tolerance INTEGER,
    weight_tolerance_pct REAL,
    detail TEXT NOT NULL DEFAULT '',
    observation_ids TEXT,
    tx_hash TEXT,
    raw_tx BLOB,
    -- JSON list: earlier transactions at tx_hash's nonce it replaced at a higher fee (any one of
    -- them may still be the one mined)
    replaced_tx_hashes TEXT,
    root_certificate_id INTEGER,
    error_name TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    -- the node's refusals of the recorded transaction's bytes in a row (not its other retries)
    refusals INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    dirty INTEGER NOT NULL DEFAULT 1,
    -- bumped by whatever dirties the order (a reading, expectations, a resolution): an evaluation
    -- clears `dirty` only if nothing came in while it ran
    revision INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_reading_at REAL,
    -- when a person last resolved the order by a recount: a reading received or observed before
    -- it (waiting in the inbox, the broker or a device) is kept set aside like those it set aside
    recounted_at REAL,
    confirmed_at REAL,
    -- the block of the confirming transaction, when this relayer sent it (the keeper lists the
    -- order's certificates from there)
    confirmed_block INTEGER
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    order_id INTEGER,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settlements (
    certificate_id INTEGER PRIMARY KEY,
    order_id INTEGER NOT NULL,
    tx_hash TEXT NOT NULL,
    at REAL NOT NULL
);
-- The deployment this store's orders belong to, recorded when an oracle first runs on it: order
-- ids are per deployment, so a store carried to another chain (a reset development node, a new
-- deployment) would answer for orders of the one it was made for.
CREATE TABLE IF NOT EXISTS deployment (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    chain_id INTEGER NOT NULL,
    ledger TEXT NOT NULL,
    oracle TEXT NOT NULL,
    deployment_block INTEGER NOT NULL,
    block_hash TEXT NOT NULL
);
-- The keeper's settle batch sent and not yet mined (at most one: nothing new goes while it waits),
-- so a restarted keeper looks for it first instead of signing the next nonce behind it.
CREATE TABLE IF NOT EXISTS keeper_flight (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    -- JSON [[certificate_id, order_id], ...]: what the batch settles
    ready TEXT NOT NULL,
    -- JSON ["0x<signed bytes>", ...]: the batch and its repriced replacements, all at one nonce
    raw_txs TEXT NOT NULL
);
"""

#: The tables `_SCHEMA` makes. A database holding any other table or view is another tool's: an
#: older oracle store has a subset of these (the rest are added when it opens), never others.
_TABLES = frozenset(
    {"inbox", "observations", "rejections", "orders", "alerts", "settlements", "keeper_flight", "deployment"}
)

#: SQLite's `PRAGMA application_id` of an oracle store ("CLor"): set on every store opened, so the
#: file says whose it is (`file(1)` shows it too), whatever tables a later release gives it.
APPLICATION_ID = 0x434C6F72


class OrderState(enum.StrEnum):
    """An order's receipt, as the oracle sees it.

    collecting -> submitting -> confirmed | failed;  collecting -> disputed (-> collecting);
    collecting -> cancelled (its issuer cancelled it on chain) | failed (its deadline passed).
    `confirmed`, `failed`, `disputed` and `cancelled` are final: nothing is submitted for the order
    again, unless a person resolves a dispute or a failure (`Store.resolve`): it then collects
    anew. A cancelled order has nothing left to confirm."""

    COLLECTING = "collecting"
    SUBMITTING = "submitting"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    DISPUTED = "disputed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (OrderState.CONFIRMED, OrderState.FAILED, OrderState.DISPUTED, OrderState.CANCELLED)


class _Unchanged(enum.Enum):
    UNCHANGED = "unchanged"


#: An expectation left as it is by `register_order` (None instead means the configured default).
UNCHANGED = _Unchanged.UNCHANGED


@dataclass(frozen=True)
class Held:
    """Why `Store.accept` stored nothing: the order is being confirmed (or is confirmed) with the
    readings it has, so a reading stored now would never be judged."""

    state: OrderState


@dataclass(frozen=True)
class SetAside:
    """`Store.accept` kept the reading set aside: it was received or observed before the order's
    recount (`recounted_at`), so it does not count, as if it had been checked before the recount."""

    observation_id: int
    recounted_at: float


@dataclass(frozen=True)
class StoredReading:
    """The observation stored under a (device, sequence)."""

    id: int
    reading: SignedReading
    set_aside: bool


class StoreUnusable(Exception):
    """The oracle's database cannot be used: it cannot be opened, or it is not the oracle's."""

    def __init__(self, path: Path, message: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(message)


class StoreOfAnotherChain(StoreUnusable):
    """The store was made for another deployment or chain than the one the oracle runs on."""

    def __init__(self, path: Path, recorded: DeploymentMark, found: DeploymentMark) -> None:
        reason = (
            f"it was made for chain {recorded.chain_id}, ledger {recorded.ledger}, deployed in block "
            f"{recorded.deployment_block} ({recorded.block_hash[:18]}...), and the node's chain has "
            f"{found.chain_id}, {found.ledger}, block {found.deployment_block} "
            f"({found.block_hash[:18] + '...' if found.block_hash else 'no such block'})"
        )
        super().__init__(
            path,
            f"the oracle database {path} belongs to another chain or deployment: {reason}; its orders "
            "are not this chain's: move it aside to start afresh, or run the oracle against its chain",
            reason,
        )


@dataclass(frozen=True)
class DeploymentMark:
    """What identifies a deployment on its chain: its contracts and its deployment block's hash
    (a reset development chain redeploys to the same addresses, not in the same block)."""

    chain_id: int
    ledger: str
    oracle: str
    deployment_block: int
    block_hash: str


class StoreCannotOpen(StoreUnusable):
    """SQLite cannot open the file (its directory is missing, or it may not be written)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(path, f"the oracle database {path} cannot be opened: {reason}", reason)


class NotAnOracleStore(StoreUnusable):
    """The file is not SQLite, or is another tool's SQLite database: the store neither reads it
    nor writes its own tables into it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(path, f"{path} is not an oracle database: {reason}", reason)


class NotResolvable(ValueError):
    """Only a disputed or failed order can be resolved."""

    def __init__(self, order_id: int, state: OrderState | None) -> None:
        self.order_id, self.state = order_id, state
        seen = "unknown to this oracle" if state is None else state.value
        super().__init__(f"order {order_id} is neither disputed nor failed ({seen})")


#: Rejections kept: refused readings come from anyone (D36), so the oldest go first.
MAX_REJECTIONS = 100_000

_INBOX = "id, received_at, source, payload, attempts, last_error, order_hint"


@dataclass(frozen=True)
class InboxItem:
    id: int
    received_at: float
    source: str
    payload: bytes
    attempts: int = 0
    last_error: str | None = None
    order_hint: int | None = None


@dataclass(frozen=True)
class StoredObservation:
    id: int
    reading: SignedReading
    source: str
    received_at: float


@dataclass(frozen=True)
class OrderRecord:
    order_id: int
    state: OrderState
    carton_weight_grams: int | None
    count_tolerance: int | None
    weight_tolerance_pct: float | None
    detail: str
    observation_ids: tuple[int, ...]
    tx_hash: str | None
    raw_tx: bytes | None
    root_certificate_id: int | None
    error_name: str | None
    attempts: int
    next_attempt_at: float
    revision: int
    created_at: float
    updated_at: float
    last_reading_at: float | None
    confirmed_at: float | None
    confirmed_block: int | None = None
    refusals: int = 0
    #: transactions at the same nonce that `tx_hash` replaced at a higher fee, oldest first
    replaced: tuple[str, ...] = ()

    @property
    def sent(self) -> list[str]:
        """Every transaction sent for the order's current submission (one nonce: at most one of
        them is ever mined)."""
        return [*self.replaced, *((self.tx_hash,) if self.tx_hash else ())]


@dataclass(frozen=True)
class Alert:
    id: int
    at: float
    order_id: int | None
    kind: str
    message: str


@dataclass(frozen=True)
class Rejection:
    id: int
    at: float
    source: str
    order_id: str | None
    device: str | None
    sequence: str | None
    reason: str
    detail: str


class Store:
    """One SQLite database, shared by the gateway's threads (MQTT, HTTP, pipeline) behind a lock."""

    def __init__(self, path: Path | str, *, max_rejections: int = MAX_REJECTIONS) -> None:
        self.path = Path(path)
        self.max_rejections = max_rejections
        # isolation_level=None: we issue BEGIN ourselves, so every write is an explicit transaction.
        try:
            self._db = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError as exc:  # no such directory, no permission
            raise StoreCannotOpen(self.path, str(exc)) from None
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            try:
                # Before anything is written: even the WAL pragma rewrites another tool's file header.
                self._check_ours()
            except BaseException:
                self._db.close()
                raise
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is fsynced before it returns, so an acknowledged reading survives a crash
            # of the machine, not only of the process.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._migrate()
            self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    def _check_ours(self) -> None:
        """Raises NotAnOracleStore unless the file is an oracle store (marked, or unmarked from a
        release before the mark and holding only oracle tables) or a new, empty database."""
        try:
            application_id = self._db.execute("PRAGMA application_id").fetchone()[0]
            names = self._db.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT GLOB 'sqlite_*'"
            )
            others = sorted({row[0] for row in names} - _TABLES)
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorname == "SQLITE_NOTADB":
                raise NotAnOracleStore(self.path, "the file is not a SQLite database") from None
            raise
        if application_id == APPLICATION_ID:
            return
        if application_id != 0:
            raise NotAnOracleStore(
                self.path, f"its SQLite application_id {application_id:#x} is another tool's"
            )
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise NotAnOracleStore(self.path, f"it is another tool's SQLite database (tables {shown})")

    def _migrate(self) -> None:
        """Brings a database made by an older release up to `_SCHEMA` (columns added since)."""
        added = [
            ("observations", "set_aside", "INTEGER NOT NULL DEFAULT 0"),
            ("orders", "revision", "INTEGER NOT NULL DEFAULT 0"),
            ("orders", "confirmed_block", "INTEGER"),
            ("orders", "refusals", "INTEGER NOT NULL DEFAULT 0"),
            ("orders", "replaced_tx_hashes", "TEXT"),
            ("orders", "recounted_at", "REAL"),
            ("inbox", "order_hint", "INTEGER"),
            ("inbox", "attempts", "INTEGER NOT NULL DEFAULT 0"),
            ("inbox", "last_error", "TEXT"),
            ("inbox", "next_attempt_at", "REAL NOT NULL DEFAULT 0"),
        ]
        for table, column, kind in added:
            if column not in {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                if (table, column) == ("inbox", "order_hint"):
                    self._fill_hints()
        # Made by a release that kept checked readings in the inbox: they are in observations
        # and rejections already.
        self._db.execute("DELETE FROM inbox WHERE processed = 1")
        self._db.execute("CREATE INDEX IF NOT EXISTS inbox_order ON inbox(order_hint) WHERE processed = 0")

    def _fill_hints(self) -> None:
        """Rows kept by a release that recorded no order hint: the order each payload claims, so an
        order does not go ahead while a reading of it waits. Decoded only (the signature is not
        checked here): a bounded set of rows from before the upgrade, not an open door."""
        from oracle.wire import order_hint

        rows = list(
            self._db.execute("SELECT id, payload FROM inbox WHERE processed = 0 AND order_hint IS NULL")
        )
        for row in rows:
            hint = order_hint(bytes(row[1]))
            if hint is not None:
                self._db.execute("UPDATE inbox SET order_hint = ? WHERE id = ?", (hint, row[0]))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # Also when COMMIT itself failed (busy, I/O error): SQLite may leave the transaction
                # open, and this connection is shared, so every later write would fail with it.
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the original error is the one to report
                raise

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    # ------------------------------------------------------------------ deployment

    def bind(self, found: DeploymentMark) -> None:
        """Records the deployment the oracle runs on, the first time; after that raises
        StoreOfAnotherChain if it is not the one recorded."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT chain_id, ledger, oracle, deployment_block, block_hash FROM deployment WHERE id = 1"
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO deployment (id, chain_id, ledger, oracle, deployment_block, block_hash) "
                    "VALUES (1, ?, ?, ?, ?, ?)",
                    (found.chain_id, found.ledger, found.oracle, found.deployment_block, found.block_hash),
                )
                return
        recorded = DeploymentMark(int(row[0]), str(row[1]), str(row[2]), int(row[3]), str(row[4]))
        if recorded != found:
            raise StoreOfAnotherChain(self.path, recorded, found)

    # ------------------------------------------------------------------ inbox

    def receive(self, source: str, payload: bytes, order_hint: int | None = None) -> int:
        """Keeps a raw reading durably; returns its inbox id. Called before acknowledging it.
        Raises PayloadTooLarge for anything over MAX_PAYLOAD: the intakes refuse it first, this is
        the last guard against unbounded rows from unauthenticated input."""
        if len(payload) > MAX_PAYLOAD:
            raise PayloadTooLarge(len(payload))
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO inbox (received_at, source, payload, order_hint) VALUES (?, ?, ?, ?)",
                (time.time(), source, payload, order_hint),
            )
            return int(cur.lastrowid or 0)

    def unprocessed(self, limit: int = 500, now: float | None = None) -> list[InboxItem]:
        """Readings waiting to be checked, oldest first, but for those backing off after a failure."""
        rows = self._query(
            f"SELECT {_INBOX} FROM inbox WHERE processed = 0 AND next_attempt_at <= ? ORDER BY id LIMIT ?",
            (time.time() if now is None else now, limit),
        )
        return [_inbox(r) for r in rows]

    def inbox_item(self, item_id: int) -> InboxItem | None:
        """An inbox row not yet processed."""
        rows = self._query(f"SELECT {_INBOX} FROM inbox WHERE id = ? AND processed = 0", (item_id,))
        return _inbox(rows[0]) if rows else None

    def inbox_count(self, processed: bool | None = None) -> int:
        """Rows in the inbox: all; waiting to be checked (processed=False); or quarantined
        (processed=True: readings that got a verdict are no longer in the inbox)."""
        if processed is None:
            return int(self._query("SELECT count(*) FROM inbox")[0][0])
        where = "processed != 0" if processed else "processed = 0"
        return int(self._query(f"SELECT count(*) FROM inbox WHERE {where}")[0][0])

    def unchecked_for_order(self, order_id: int, received_before: float | None = None) -> tuple[int, int]:
        """Readings claiming `order_id` without a verdict: (waiting to be checked, received no later
        than `received_before` if given; quarantined, whenever received). A quarantined reading
        holds its order until a person requeues or drops it: it may be a correction or a conflict."""
        rows = self._query(
            "SELECT count(CASE WHEN processed = 0 AND received_at <= ? THEN 1 END), "
            "count(CASE WHEN processed = 2 THEN 1 END) FROM inbox WHERE order_hint = ?",
            (float("inf") if received_before is None else received_before, order_id),
        )
        return int(rows[0][0]), int(rows[0][1])

    def inbox_failed(self, item_id: int, error: str, retry_at: float) -> int:
        """Records a failed check of an inbox item (not a verdict): it is tried again from
        `retry_at`. Returns how many times it has failed."""
        with self.transaction() as db:
            db.execute(
                "UPDATE inbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                "WHERE id = ? AND processed = 0",
                (error[:1_000], retry_at, item_id),
            )
            row = db.execute("SELECT attempts FROM inbox WHERE id = ?", (item_id,)).fetchone()
        return int(row[0]) if row is not None else 0

    def quarantine(
        self, item_id: int, source: str, reason: str, detail: str, reading: SignedReading | None = None
    ) -> None:
        """Sets aside an inbox item that could not be checked, however often it was tried: kept (with
        its payload) for a person, recorded as refused with `reason`, and alerted (for the order it
        claims, if known) in the same transaction. It no longer holds up other items, but it still
        holds the order it claims until a person requeues it (`requeue`) or drops it (`drop`)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE inbox SET processed = 2, last_error = coalesce(last_error, ?) WHERE id = ?",
                (detail[:1_000], item_id),
            )
            row = db.execute("SELECT order_hint FROM inbox WHERE id = ?", (item_id,)).fetchone()
            hint = row[0] if row is not None else None
            self._rejection(db, source, reason, detail, reading)
            held = f"; order {hint} waits for it" if hint is not None else ""
            db.execute(
                "INSERT INTO alerts (at, order_id, kind, message) VALUES (?, ?, ?, ?)",
                (
                    time.time(),
                    hint,
                    "quarantined",
                    f"inbox item {item_id} from {source} quarantined ({detail[:500]}){held}; "
                    "`certledger oracle requeue` checks it again",
                ),
            )

    def requeue(self, item_id: int | None = None) -> list[int]:
        """A person's release of quarantined items (one, or all with None): checked again from
        scratch (attempts reset). Returns the ids requeued. The orders they claim are looked at
        again once they have their verdicts."""
        with self.transaction() as db:
            where, args = (
                ("processed = 2", ()) if item_id is None else ("processed = 2 AND id = ?", (item_id,))
            )
            ids = [int(r[0]) for r in db.execute(f"SELECT id FROM inbox WHERE {where}", args)]
            for i in ids:
                db.execute(
                    "UPDATE inbox SET processed = 0, attempts = 0, next_attempt_at = 0 WHERE id = ?", (i,)
                )
                db.execute(
                    "INSERT INTO alerts (at, order_id, kind, message) VALUES (?, "
                    "(SELECT order_hint FROM inbox WHERE id = ?), ?, ?)",
                    (time.time(), i, "requeued", f"inbox item {i} requeued by a person"),
                )
                db.execute(
                    "UPDATE orders SET dirty = 1, revision = revision + 1 "
                    "WHERE order_id = (SELECT order_hint FROM inbox WHERE id = ?)",
                    (i,),
                )
        return ids

    def drop(self, item_id: int, reason: str) -> bool:
        """A person's decision that a quarantined item is no reading to wait for: removed (its
        refusal stays in the rejections), so the order it claims no longer waits. Returns whether
        there was such an item."""
        if not reason.strip():
            raise ValueError("say why the item is dropped: the reason is kept in the alerts")
        with self.transaction() as db:
            row = db.execute(
                "SELECT order_hint FROM inbox WHERE id = ? AND processed = 2", (item_id,)
            ).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM inbox WHERE id = ?", (item_id,))
            db.execute(
                "INSERT INTO alerts (at, order_id, kind, message) VALUES (?, ?, ?, ?)",
                (time.time(), row[0], "dropped", f"inbox item {item_id} dropped by a person: {reason}"),
            )
            if row[0] is not None:
                db.execute(
                    "UPDATE orders SET dirty = 1, revision = revision + 1 WHERE order_id = ?", (row[0],)
                )
        return True

    def quarantined(self, limit: int = 100) -> list[InboxItem]:
        rows = self._query(
            f"SELECT {_INBOX} FROM inbox WHERE processed = 2 ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [_inbox(r) for r in rows]

    # ------------------------------------------------------------------ verdicts

    def accept(
        self, item_id: int | None, reading: SignedReading, source: str, clock_skew: int = 0
    ) -> int | Held | SetAside | None:
        """Stores an accepted reading and marks its inbox row done, atomically. Returns the new
        observation id; None if (device, sequence) is already stored (a redelivery or replay);
        Held, storing nothing, if the order is submitting or confirmed: the relayer records its
        transaction in a transaction of this database too, so no reading slips in between; or
        SetAside if it is from before the order's last recount: received before it (it waited in
        the inbox while a person resolved the dispute) or observed more than `clock_skew` seconds
        before it (it waited in the broker's session or a device's buffer; the device's clock may
        be that far off this one): kept, not counted, whenever it is checked."""
        o = reading.observation
        with self.transaction() as db:
            now = time.time()  # in the write transaction: after any recount committed before it
            row = db.execute(
                "SELECT state, recounted_at FROM orders WHERE order_id = ?", (o.order_id,)
            ).fetchone()
            if row is not None and row["state"] in (OrderState.SUBMITTING.value, OrderState.CONFIRMED.value):
                return Held(OrderState(row["state"]))
            received_at = now
            if item_id is not None:
                got = db.execute("SELECT received_at FROM inbox WHERE id = ?", (item_id,)).fetchone()
                received_at = got[0] if got is not None else now
                # The observation keeps the reading: the raw copy is no longer needed.
                db.execute("DELETE FROM inbox WHERE id = ?", (item_id,))
            recounted_at: float | None = row["recounted_at"] if row is not None else None
            aside = recounted_at is not None and min(received_at, o.observed_at + clock_skew) <= recounted_at
            try:
                cur = db.execute(
                    "INSERT INTO observations (order_id, device, sequence, kind, reading, source, "
                    "received_at, set_aside) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        o.order_id,
                        o.device,
                        str(o.sequence),
                        o.kind,
                        json.dumps(reading.to_json()),
                        source,
                        now,
                        int(aside),
                    ),
                )
            except sqlite3.IntegrityError:
                return None  # the caller compares it with the one stored
            if recounted_at is not None and aside:
                return SetAside(int(cur.lastrowid or 0), recounted_at)
            self._touch_order(db, o.order_id, now)
            return int(cur.lastrowid or 0)

    def reject(
        self,
        item_id: int | None,
        source: str,
        reason: str,
        detail: str,
        reading: SignedReading | None = None,
    ) -> None:
        with self.transaction() as db:
            if item_id is not None:
                db.execute("DELETE FROM inbox WHERE id = ?", (item_id,))
            self._rejection(db, source, reason, detail, reading)

    def _rejection(
        self, db: sqlite3.Connection, source: str, reason: str, detail: str, reading: SignedReading | None
    ) -> None:
        o = reading.observation if reading is not None else None
        cur = db.execute(
            "INSERT INTO rejections (at, source, order_id, device, sequence, reason, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                source,
                str(o.order_id) if o else None,
                o.device if o else None,
                str(o.sequence) if o else None,
                reason,
                detail[:1_000],
            ),
        )
        # A ring: refused readings come from anyone (D36), the table must not grow for ever.
        db.execute("DELETE FROM rejections WHERE id <= ?", (int(cur.lastrowid or 0) - self.max_rejections,))

    def stored_reading(self, device: str, sequence: int) -> StoredReading | None:
        """The observation stored for (device, sequence), if any."""
        rows = self._query(
            "SELECT id, reading, set_aside FROM observations WHERE device = ? AND sequence = ?",
            (device, str(sequence)),
        )
        if not rows:
            return None
        reading = parse_reading(json.loads(rows[0]["reading"]))
        return StoredReading(int(rows[0]["id"]), reading, bool(rows[0]["set_aside"]))

    def forget(self, item_id: int) -> None:
        """Removes an inbox item that needs no verdict of its own: a copy of a stored reading."""
        with self.transaction() as db:
            db.execute("DELETE FROM inbox WHERE id = ?", (item_id,))

    def last_rejection(self, device: str, sequence: int) -> Rejection | None:
        """The latest refusal of a reading of `device` with `sequence`."""
        rows = self._query(
            "SELECT * FROM rejections WHERE device = ? AND sequence = ? ORDER BY id DESC LIMIT 1",
            (device, str(sequence)),
        )
        if not rows:
            return None
        r = rows[0]
        return Rejection(r["id"], r["at"], r["source"], r["order_id"], r["device"], r["sequence"],
                         r["reason"], r["detail"])  # fmt: skip

    def observations(self, order_id: int) -> list[StoredObservation]:
        """The order's readings that count (not set aside by a recount), in arrival order."""
        rows = self._query(
            "SELECT id, reading, source, received_at FROM observations "
            "WHERE order_id = ? AND set_aside = 0 ORDER BY id",
            (order_id,),
        )
        return [
            StoredObservation(r["id"], parse_reading(json.loads(r["reading"])), r["source"], r["received_at"])
            for r in rows
        ]

    def observations_by_id(self, ids: tuple[int, ...] | list[int]) -> list[StoredObservation]:
        """Stored observations by id (set aside or not), in id order."""
        if not ids:
            return []
        marks = ",".join("?" for _ in ids)
        rows = self._query(
            f"SELECT id, reading, source, received_at FROM observations WHERE id IN ({marks}) ORDER BY id",
            tuple(ids),
        )
        return [
            StoredObservation(r["id"], parse_reading(json.loads(r["reading"])), r["source"], r["received_at"])
            for r in rows
        ]

    def rejections(self, limit: int = 100) -> list[Rejection]:
        rows = self._query("SELECT * FROM rejections ORDER BY id DESC LIMIT ?", (limit,))
        return [
            Rejection(
                r["id"],
                r["at"],
                r["source"],
                r["order_id"],
                r["device"],
                r["sequence"],
                r["reason"],
                r["detail"],
            )
            for r in rows
        ]

    def rejection_reasons(self) -> list[str]:
        return [r["reason"] for r in self._query("SELECT reason FROM rejections ORDER BY id")]

    # ------------------------------------------------------------------ orders

    def _touch_order(self, db: sqlite3.Connection, order_id: int, now: float) -> None:
        db.execute(
            "INSERT INTO orders (order_id, state, created_at, updated_at, last_reading_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(order_id) DO UPDATE SET dirty = 1, "
            "revision = revision + 1, last_reading_at = excluded.last_reading_at",
            (order_id, OrderState.COLLECTING.value, now, now, now),
        )

    def register_order(
        self,
        order_id: int,
        *,
        carton_weight_grams: int | None | _Unchanged = UNCHANGED,
        count_tolerance: int | None | _Unchanged = UNCHANGED,
        weight_tolerance_pct: float | None | _Unchanged = UNCHANGED,
    ) -> OrderRecord:
        """Records an order's expectations (before or after its first reading, before or after the
        order is opened on chain). Only the values given change (UNCHANGED, the default, keeps the
        stored one): a correction of one tolerance must not erase the carton weight. None means
        the gateway's configured default."""
        given = {
            name: value
            for name, value in (
                ("carton_weight_grams", carton_weight_grams),
                ("count_tolerance", count_tolerance),
                ("weight_tolerance_pct", weight_tolerance_pct),
            )
            if value is not UNCHANGED
        }
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO orders (order_id, state, created_at, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(order_id) DO NOTHING",
                (order_id, OrderState.COLLECTING.value, now, now),
            )
            sets = "".join(f"{name} = ?, " for name in given)
            db.execute(
                f"UPDATE orders SET {sets}dirty = 1, revision = revision + 1, updated_at = ? "
                "WHERE order_id = ?",
                (*given.values(), now, order_id),
            )
        record = self.order(order_id)
        assert record is not None
        return record

    def order(self, order_id: int) -> OrderRecord | None:
        rows = self._query("SELECT * FROM orders WHERE order_id = ?", (order_id,))
        return _order(rows[0]) if rows else None

    def orders(self, states: tuple[OrderState, ...] | None = None) -> list[OrderRecord]:
        if states is None:
            rows = self._query("SELECT * FROM orders ORDER BY order_id")
        else:
            marks = ",".join("?" for _ in states)
            rows = self._query(
                f"SELECT * FROM orders WHERE state IN ({marks}) ORDER BY order_id",
                tuple(s.value for s in states),
            )
        return [_order(r) for r in rows]

    def dirty_collecting(self) -> list[int]:
        """Orders still collecting that got a reading (or new expectations) since last evaluated."""
        rows = self._query(
            "SELECT order_id FROM orders WHERE state = ? AND dirty = 1 ORDER BY order_id",
            (OrderState.COLLECTING.value,),
        )
        return [int(r[0]) for r in rows]

    def mark_evaluated(self, order_id: int, detail: str, revision: int, *, again: bool = False) -> None:
        """Records an evaluation of the order as it was at `revision`: it stays dirty if a reading
        (or new expectations) came in while the evaluation ran, so that one is looked at too, or if
        it must be looked at `again` anyway (a reading about to become usable)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE orders SET dirty = CASE WHEN ? OR revision != ? THEN 1 ELSE 0 END, detail = ?, "
                "updated_at = ? WHERE order_id = ?",
                (int(again), revision, detail, time.time(), order_id),
            )

    def mark_collecting_dirty(self) -> int:
        """Marks every collecting order to be evaluated again (a restarted relayer may judge by new
        defaults: a carton weight, a tolerance); returns how many."""
        with self.transaction() as db:
            return int(
                db.execute(
                    "UPDATE orders SET dirty = 1 WHERE state = ? AND dirty = 0",
                    (OrderState.COLLECTING.value,),
                ).rowcount
            )

    def mark_dirty(self, order_id: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE orders SET dirty = 1, revision = revision + 1 WHERE order_id = ?", (order_id,))

    def set_state(
        self,
        order_id: int,
        state: OrderState,
        detail: str,
        *,
        dirty: bool = False,
        alert: tuple[str, str] | None = None,
        if_revision: int | None = None,
        **fields: Any,
    ) -> bool:
        """Moves an order to `state`, with any of its other columns (tx_hash, raw_tx, ...); `dirty`
        (back to collecting, to be evaluated again) in the same update, so no crash can leave a
        collecting order that nothing looks at; and `alert` (kind, message) in the same
        transaction, so no crash leaves a dispute or a failure nobody was told of. With
        `if_revision`, only if the order is still at that revision (nothing came in since it was
        judged). Returns whether the order was updated."""
        allowed = {
            "observation_ids",
            "tx_hash",
            "raw_tx",
            "replaced_tx_hashes",
            "root_certificate_id",
            "error_name",
            "attempts",
            "refusals",
            "next_attempt_at",
            "confirmed_at",
            "confirmed_block",
        }
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown order fields {unknown}")
        for listed in ("observation_ids", "replaced_tx_hashes"):
            if listed in fields:
                fields[listed] = json.dumps(list(fields[listed]))
        sets = ", ".join(f"{k} = ?" for k in fields)
        guard, guarded = ("", ()) if if_revision is None else (" AND revision = ?", (if_revision,))
        with self.transaction() as db:
            updated = db.execute(
                f"UPDATE orders SET state = ?, detail = ?, dirty = ?, revision = revision + ?, updated_at = ?"
                f"{', ' + sets if sets else ''} WHERE order_id = ?{guard}",
                (state.value, detail, int(dirty), int(dirty), time.time(), *fields.values(), order_id,
                 *guarded),
            ).rowcount  # fmt: skip
            if alert is not None and (updated or if_revision is None):
                db.execute(
                    "INSERT INTO alerts (at, order_id, kind, message) VALUES (?, ?, ?, ?)",
                    (time.time(), order_id, alert[0], alert[1]),
                )
        return bool(updated)

    def resolve(self, order_id: int, reason: str, *, recount: bool = True) -> int:
        """A person's answer to a dispute or a failure: the order collects again. With `recount` its
        readings so far are set aside (kept for the record, no longer counted) and the devices must
        read the goods again; without, the same readings are judged again, as after correcting the
        order's expectations (`register_order`) or the cause of a failure (a pause, a relayer left
        off the allow-list). Recorded as an alert. Returns how many readings were set aside. Raises
        NotResolvable for an order in any other state."""
        if not reason.strip():
            raise ValueError("say why the dispute is resolved: the reason is kept with the order")
        with self.transaction() as db:
            # Taken with the write lock: a reading received while this waited for it is before it.
            now = time.time()
            row = db.execute("SELECT state FROM orders WHERE order_id = ?", (order_id,)).fetchone()
            state = OrderState(row["state"]) if row is not None else None
            if state not in (OrderState.DISPUTED, OrderState.FAILED):
                raise NotResolvable(order_id, state)
            aside = 0
            if recount:
                aside = db.execute(
                    "UPDATE observations SET set_aside = 1 WHERE order_id = ? AND set_aside = 0", (order_id,)
                ).rowcount
            how = f"recount, {aside} readings set aside" if recount else "readings judged again"
            detail = f"{state.value} order resolved ({how}): {reason}"
            db.execute(
                "UPDATE orders SET state = ?, detail = ?, dirty = 1, revision = revision + 1, "
                "attempts = 0, refusals = 0, next_attempt_at = 0, observation_ids = NULL, tx_hash = NULL, "
                "raw_tx = NULL, replaced_tx_hashes = NULL, error_name = NULL, updated_at = ?, "
                "recounted_at = CASE WHEN ? THEN ? ELSE recounted_at END WHERE order_id = ?",
                (OrderState.COLLECTING.value, detail, now, int(recount), now, order_id),
            )
            db.execute(
                "INSERT INTO alerts (at, order_id, kind, message) VALUES (?, ?, ?, ?)",
                (now, order_id, "resolved", detail),
            )
        return aside

    def alert(self, order_id: int | None, kind: str, message: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO alerts (at, order_id, kind, message) VALUES (?, ?, ?, ?)",
                (time.time(), order_id, kind, message),
            )

    def alerts(self, limit: int = 100) -> list[Alert]:
        rows = self._query("SELECT * FROM alerts ORDER BY id DESC LIMIT ?", (limit,))
        return [Alert(r["id"], r["at"], r["order_id"], r["kind"], r["message"]) for r in rows]

    # ------------------------------------------------------------------ keeper

    def record_settlement(self, certificate_ids: list[int], order_ids: list[int], tx_hash: str) -> None:
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO settlements (certificate_id, order_id, tx_hash, at) "
                "VALUES (?, ?, ?, ?)",
                [(c, o, tx_hash, now) for c, o in zip(certificate_ids, order_ids, strict=True)],
            )

    def settled_count(self) -> int:
        return int(self._query("SELECT count(*) FROM settlements")[0][0])

    def keep_flight(self, ready: list[tuple[int, int]], raw_txs: list[bytes]) -> None:
        """Records the keeper's unmined batch (replacing the one recorded), before it is sent."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO keeper_flight (id, ready, raw_txs) VALUES (1, ?, ?)",
                (json.dumps(ready), json.dumps(["0x" + raw.hex() for raw in raw_txs])),
            )

    def flight(self) -> tuple[list[tuple[int, int]], list[bytes]] | None:
        """The keeper's unmined batch a previous process left, if any."""
        rows = self._query("SELECT ready, raw_txs FROM keeper_flight WHERE id = 1")
        if not rows:
            return None
        ready = [(int(c), int(o)) for c, o in json.loads(rows[0]["ready"])]
        return ready, [bytes.fromhex(raw[2:]) for raw in json.loads(rows[0]["raw_txs"])]

    def forget_flight(self) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM keeper_flight")


def _order(row: sqlite3.Row) -> OrderRecord:
    ids = json.loads(row["observation_ids"]) if row["observation_ids"] else []
    return OrderRecord(
        order_id=int(row["order_id"]),
        state=OrderState(row["state"]),
        carton_weight_grams=row["carton_weight_grams"],
        count_tolerance=row["count_tolerance"],
        weight_tolerance_pct=row["weight_tolerance_pct"],
        detail=row["detail"],
        observation_ids=tuple(int(i) for i in ids),
        tx_hash=row["tx_hash"],
        raw_tx=bytes(row["raw_tx"]) if row["raw_tx"] is not None else None,
        root_certificate_id=row["root_certificate_id"],
        error_name=row["error_name"],
        attempts=int(row["attempts"]),
        next_attempt_at=float(row["next_attempt_at"]),
        revision=int(row["revision"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        last_reading_at=row["last_reading_at"],
        confirmed_at=row["confirmed_at"],
        confirmed_block=row["confirmed_block"],
        refusals=int(row["refusals"]),
        replaced=tuple(json.loads(row["replaced_tx_hashes"])) if row["replaced_tx_hashes"] else (),
    )


def _inbox(row: sqlite3.Row) -> InboxItem:
    return InboxItem(
        int(row["id"]),
        float(row["received_at"]),
        row["source"],
        bytes(row["payload"]),
        int(row["attempts"]),
        row["last_error"],
        row["order_hint"],
    )
