"""The index database: SQLite by default, PostgreSQL by URL. Creation, loading the books back, and
the two writes the indexer makes: synced ranges (one transaction each, or a replay's in one, see
`RangeLoader`), and a rollback (one transaction)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from sqlalchemy import (
    Connection,
    Engine,
    RowMapping,
    Table,
    and_,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlmodel import SQLModel

from chain_client.errors import CertledgerError
from chain_client.index.books import ENTITIES, Books, Key, Record, Touch
from chain_client.index.digest import block_digest, change_json, change_text, document
from chain_client.index.models import (
    ALL_TABLES,
    BLOCK_TABLES,
    ENTITY_TABLES,
    SCHEMA_VERSION,
    BlockRecord,
    ChangeRecord,
    EventRecord,
    IndexState,
    PaymentRecord,
    Uint,
)

if TYPE_CHECKING:
    from chain_client.deploy import Deployment

DEFAULT_URL = "sqlite:///certledger-index.sqlite"

#: What a database in trouble raises (locked, gone, restarted): SQLAlchemy's errors, and the
#: drivers' own from the bulk paths that use the driver's cursor directly (see `_bulk`).
DATABASE_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError, sqlite3.Error, psycopg.Error)
#: Rows per INSERT statement batch; keeps PostgreSQL's bind-parameter count well under its limit.
_CHUNK = 2_000


class IndexDatabaseError(CertledgerError):
    """The index database is missing, from another deployment, or of another schema version."""


class AnotherDeploymentsIndex(IndexDatabaseError):
    """The database holds the index of another deployment than the manifest's (another chain,
    ledger or oracle): a replay would lose that index, a sync would mix the two. Refused before
    anything is written, as the user's to fix (another --db, or `replay --replace`)."""


@dataclass(frozen=True)
class IndexedDeployment:
    """What a stored cursor says it indexes: the contracts the digest chain starts from (its
    deployment block aside, which `sync.check_deployment` compares when the index is opened)."""

    chain_id: int
    ledger: str
    oracle: str

    def same_contracts(self, other: IndexedDeployment) -> bool:
        # A manifest's addresses are checksummed on load, a stored one as it was written: compare
        # the addresses, not their spelling.
        return (self.chain_id, self.ledger.lower(), self.oracle.lower()) == (
            other.chain_id,
            other.ledger.lower(),
            other.oracle.lower(),
        )

    def described(self, beside: IndexedDeployment) -> str:
        """As "chain 1, ledger 0x..", with the oracle only where it is what differs from `beside`."""
        text = f"chain {self.chain_id}, ledger {self.ledger}"
        return text + (f", oracle {self.oracle}" if self.oracle.lower() != beside.oracle.lower() else "")


class CursorMoved(IndexDatabaseError):
    """The index's cursor is not where this indexer left it: another indexer wrote the database
    meanwhile (two indexers writing one database). The write is rolled back; reload and go on."""


def database_url(value: str | Path | None) -> str:
    """A SQLAlchemy URL: a URL as given, a path as a SQLite file, None as the default file."""
    if value is None:
        return DEFAULT_URL
    text = str(value)
    if "://" in text:
        if text.startswith("postgresql://"):
            # psycopg 3 is the driver we install; plain postgresql:// would ask for psycopg2.
            return "postgresql+psycopg://" + text.removeprefix("postgresql://")
        return text
    return f"sqlite:///{text}"


def shown_url(url: str) -> str:
    """`url` with its password masked, for messages: an auditor pastes them into tickets and logs."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        # Not a URL SQLAlchemy can parse: no password can be told apart, so none of it is shown.
        return "(an unreadable database URL)"
    if "password" in parsed.query:  # psycopg also takes it as ?password=...
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


#: The SQLAlchemy drivers the index is written for (and whose modules are installed): any other
#: URL would fail in create_engine with an ImportError naming a module, not the URL.
_DRIVERS = ("sqlite", "sqlite+pysqlite", "postgresql+psycopg")


def _checked_url(url: str) -> str:
    """`url` if it names SQLite or PostgreSQL through psycopg; else IndexDatabaseError."""
    try:
        driver = make_url(url).drivername
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise IndexDatabaseError(
            "the index database is not a URL SQLAlchemy can read: give a SQLite file or postgresql://..."
        ) from None
    if driver not in _DRIVERS:
        raise IndexDatabaseError(
            f"the index supports SQLite (a file) and PostgreSQL (postgresql://...), not {shown_url(url)}"
        )
    return url


def table_of(model: type[SQLModel]) -> Table:
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL with synchronous=NORMAL keeps every committed range across a killed process (only a power
    # cut may lose the last commits, which the next sync re-fetches) and is several times faster.
    # A bigger page cache and fewer WAL checkpoints: a replay writes tens of megabytes, and each
    # checkpoint copies the log into the database file and syncs it. 16 KiB pages (for a new file;
    # an existing one keeps its own) hold several rows of the wide event and change tables each:
    # measured, a replay's inserts, index builds and checkpoints take about a third less CPU than
    # with 4 KiB pages. The checkpoint interval stays at 40 MB of log.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA page_size=16384")  # before journal_mode, which creates the file
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.execute("PRAGMA wal_autocheckpoint=2500")
    cursor.close()


def _scratch_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # A file being rebuilt from nothing (see `rebuilding`): no journal, no syncs. Nothing in it is
    # worth recovering until the rebuild is complete, and then it is synced and renamed into place.
    # Measured on a 20,000-event replay, the WAL's extra copy of every page was 40% of the writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA page_size=16384")
    cursor.execute("PRAGMA journal_mode=OFF")
    cursor.execute("PRAGMA synchronous=OFF")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


# Column order of the rows the indexer builds as tuples (tuples, not dicts: a replay writes a few
# rows per event and a tuple is what the database driver takes anyway).
EVENT_COLUMNS = (
    "chain_id",
    "tx_hash",
    "log_index",
    "block_hash",
    "block_number",
    "tx_index",
    "address",
    "name",
    "args",
)
CHANGE_COLUMNS = (
    "chain_id", "block_number", "tx_index", "log_index", "seq", "tx_hash",
    "event", "entity", "key", "field", "old", "new",
)  # fmt: skip
PAYMENT_COLUMNS = (
    "chain_id", "block_number", "tx_index", "log_index", "tx_hash",
    "kind", "order_id", "certificate_id", "payer", "payee", "amount",
)  # fmt: skip
BLOCK_COLUMNS = ("chain_id", "number", "hash", "parent_hash", "digest", "events")


@dataclass
class RangeWrite:
    """Everything one synced range adds, written in one transaction with the new cursor.

    The indexer fills in each event's row and what it did to the books; `seal` then writes the
    changes as canonical text (the change rows) and carries the digest chain over the range's
    blocks. Sealing runs where the range is written: during a replay that is the writer process,
    and the indexer is meanwhile free to apply the next range."""

    chain_id: int
    #: event rows (EVENT_COLUMNS), in chain order
    events: list[tuple[Any, ...]] = field(default_factory=list)
    #: per event row, the changes it made as plain (entity, key, field, old, new) tuples
    effects: list[list[tuple[Any, ...]]] = field(default_factory=list)
    payments: list[tuple[Any, ...]] = field(default_factory=list)
    #: (number, hash, parent hash or None, event count) of each block with events, in order, and
    #: of the range's last block if it had none
    blocks: list[tuple[int, str, str | None, int]] = field(default_factory=list)
    touched: set[tuple[str, Key]] = field(default_factory=set)
    #: the touched records as rows (taken when the range was applied, as the books then stood)
    records: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    #: keys of touched records that no longer exist (undone creations)
    gone: dict[str, list[Key]] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    #: (synced block, synced hash) the stored cursor must still hold when a range that `closes`
    #: moves it: the cursor this indexer read or last wrote. None moves it unconditionally.
    expect: tuple[int, str] | None = None
    #: a replay into an emptied database: no stored row can conflict, so PostgreSQL may COPY the
    #: new rows straight into their tables (a conflict would still fail loudly, not be skipped)
    bulk: bool = False
    #: the digest chain before the range; after `seal`, after it
    digest: str = ""
    #: whether the range ends its transaction, with the touched records and the new cursor. A
    #: replay leaves it False on every range and sends a last, empty range that closes (see
    #: `RangeLoader`), so the records are written once, as they end up, not once per range.
    closes: bool = True
    #: made by `seal`: change rows (CHANGE_COLUMNS) and block rows (BLOCK_COLUMNS)
    changes: list[tuple[Any, ...]] = field(default_factory=list)
    block_rows: list[tuple[Any, ...]] = field(default_factory=list)
    sealed: bool = False

    def seal(self) -> str:
        """Makes the change and block rows and moves the digest over the range; returns it.

        The texts and documents are made by the same functions as verify's (`digest.change_text`,
        `change_json`, `document`), in one loop over the range."""
        if self.sealed:
            return self.digest
        if not self.digest:
            raise ValueError("a range is sealed onto the digest before it; none was given")
        chain_id, digest, events, effects, rows = (
            self.chain_id,
            self.digest,
            self.events,
            self.effects,
            self.changes,
        )
        at = 0
        for number, block_hash, parent, count in self.blocks:
            if count:
                documents = []
                for i in range(at, at + count):
                    _, tx, log_index, _, block, tx_index, address, name, args = events[i]
                    parts = []
                    for seq, change in enumerate(effects[i]):
                        texts = change_text(*change)
                        parts.append(change_json(texts[0], texts[1], texts[2], texts[4]))
                        rows.append((chain_id, block, tx_index, log_index, seq, tx, name, *texts))
                    documents.append(document(address, args, parts, name, log_index, tx))
                at += count
                digest = block_digest(digest, number, block_hash, documents)
            self.block_rows.append((chain_id, number, block_hash, parent, digest, count))
        if at != len(events):
            raise ValueError(f"the range's blocks hold {at} events, it has {len(events)}")
        self.digest = digest
        self.state["digest"] = digest
        self.sealed = True
        return digest


class IndexDatabase:
    def __init__(
        self,
        url: str | Path | None = None,
        *,
        echo: bool = False,
        scratch: bool = False,
        must_exist: bool = False,
    ) -> None:
        """`scratch`: a SQLite file being rebuilt, written without a journal (see `rebuilding`).
        `must_exist`: refuse a SQLite file that is not there (IndexDatabaseError) rather than create
        it on first use, for readers, which have nothing to put in a new file."""
        self.url = _checked_url(database_url(url))
        self.scratch = scratch
        if must_exist:
            self._require_file()
        # The sync writes from a worker thread (one at a time); sqlite3 would refuse a connection
        # made in another thread without this.
        connect_args = {"check_same_thread": False} if self.url.startswith("sqlite") else {}
        self.engine: Engine = create_engine(self.url, echo=echo, connect_args=connect_args)
        self._pinned = threading.local()  # a thread's snapshot connection (see `snapshot`)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _scratch_pragmas if scratch else _sqlite_pragmas)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    @property
    def shown_url(self) -> str:
        """The URL for messages, its password masked."""
        return shown_url(self.url)

    def _require_file(self) -> None:
        # sqlite3 creates a missing file on connect (and the pragmas then write a first page), so
        # this is checked before any connection, not by reading the cursor.
        file = self.file
        if file is not None and not file.exists():
            raise IndexDatabaseError(f"no index at {file}: no such file; run `certledger audit replay` first")

    @property
    def file(self) -> Path | None:
        """The file of a SQLite database on disk (None for PostgreSQL or an in-memory SQLite)."""
        url = make_url(self.url)
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        if url.database.startswith("file:"):
            return None
        return Path(url.database)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Within it, this thread's reads all see one state of the database, whatever a sync commits
        meanwhile (an audit reading the index a follower keeps): one connection in one read
        transaction (SQLite WAL keeps its snapshot; PostgreSQL with REPEATABLE READ)."""
        if getattr(self._pinned, "conn", None) is not None:
            yield
            return
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            else:
                # pysqlite starts no transaction for reads on its own: without it each SELECT would
                # see the latest commit.
                conn.exec_driver_sql("BEGIN")
            self._pinned.conn = conn
            try:
                yield
            finally:
                self._pinned.conn = None
                conn.rollback()

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """The connection reads go through: this thread's snapshot if it has one, else a new one."""
        pinned: Connection | None = getattr(self._pinned, "conn", None)
        if pinned is not None:
            yield pinned
            return
        with self.engine.connect() as conn:
            yield conn

    # ------------------------------------------------------------------ schema

    def create(self) -> None:
        SQLModel.metadata.create_all(self.engine, tables=[table_of(t) for t in ALL_TABLES])

    def drop(self) -> None:
        SQLModel.metadata.drop_all(self.engine, tables=[table_of(t) for t in ALL_TABLES])

    def reset(self, bulk_load: bool = False) -> None:
        """An empty index (replay starts from nothing), in one transaction. With `bulk_load` the
        secondary indexes are left out until `create_indexes`: building them once at the end is
        cheaper than keeping them up to date row by row."""
        tables = [table_of(t) for t in ALL_TABLES]
        with self.engine.begin() as conn:
            SQLModel.metadata.drop_all(conn, tables=tables)
            if not bulk_load:
                SQLModel.metadata.create_all(conn, tables=tables)
                return
            for table in tables:
                conn.execute(CreateTable(table))

    def create_indexes(self, missing_only: bool = True) -> None:
        """The secondary indexes, where missing (all of them, without asking, for a bulk load)."""
        with self.engine.begin() as conn:
            for model in ALL_TABLES:
                for index in table_of(model).indexes:
                    if missing_only:
                        index.create(conn, checkfirst=True)
                    else:
                        conn.execute(CreateIndex(index))

    # ------------------------------------------------------------------ the cursor

    def state(self, chain_id: int | None = None) -> IndexState | None:
        """The index's cursor (of `chain_id`, or the only one)."""
        with self._reading() as conn:
            if not self.engine.dialect.has_table(conn, IndexState.__tablename__):
                return None
            query = select(table_of(IndexState))
            if chain_id is not None:
                query = query.where(table_of(IndexState).c.chain_id == chain_id)
            rows = conn.execute(query).mappings().all()
        if len(rows) > 1:
            raise IndexDatabaseError(f"{self.shown_url} indexes several chains; name one")
        if not rows:
            return None
        state = IndexState(**dict(rows[0]))
        if state.schema_version != SCHEMA_VERSION:
            raise IndexDatabaseError(
                f"index schema {state.schema_version}, this client writes {SCHEMA_VERSION}: replay it"
            )
        return state

    def indexed_deployments(self) -> list[IndexedDeployment]:
        """The deployments the stored cursors name (none for a new, empty or emptied database), read
        without the schema-version check `state` makes: what a replay is about to replace or a sync
        to extend, whichever client version wrote it. Creates no SQLite file."""
        file = self.file
        if file is not None and (not file.exists() or file.stat().st_size == 0):
            return []
        table = table_of(IndexState)
        with self._reading() as conn:
            if not self.engine.dialect.has_table(conn, table.name):
                return []
            query = select(table.c.chain_id, table.c.ledger, table.c.oracle).order_by(table.c.chain_id)
            rows = conn.execute(query).all()
        return [IndexedDeployment(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def require_state(self) -> IndexState:
        state = self.state()
        if state is None:
            raise IndexDatabaseError(f"no index in {self.shown_url}; run `certledger audit replay` first")
        return state

    def initialise(self, state: IndexState, first_block: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(_insert(self.dialect, IndexState).values(**state.model_dump()))
            conn.execute(_insert(self.dialect, BlockRecord).values(**first_block))

    # ------------------------------------------------------------------ reading back

    def first_block(self, chain_id: int) -> BlockRecord | None:
        """The earliest block the index recorded (where its sync began): a node without it is on
        another chain than the one the index was built from."""
        table = table_of(BlockRecord)
        query = select(table).where(table.c.chain_id == chain_id).order_by(table.c.number).limit(1)
        with self._reading() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else BlockRecord(**dict(row))

    def load_books(self, state: IndexState) -> Books:
        books = Books(state.ledger, state.oracle)
        with self._reading() as conn:
            for entity, model in ENTITY_TABLES.items():
                spec = ENTITIES[entity]
                table = table_of(model)
                rows = conn.execute(select(table).where(table.c.chain_id == state.chain_id)).mappings()
                for row in rows:
                    books.load(entity, row[spec.key], record_from_row(entity, row), touch_from_row(row))
        return books

    def events(
        self, chain_id: int, up_to: int | None = None, name: str | None = None, address: str | None = None
    ) -> Iterator[RowMapping]:
        """Stored event rows (EventRecord's columns) in chain order (up to block `up_to`; only the
        events called `name` of the contract at `address`, when given); mappings rather than
        EventRecord instances, which cost more to make than the rest of a refold."""
        table = table_of(EventRecord)
        query = select(table).where(table.c.chain_id == chain_id)
        if up_to is not None:
            query = query.where(table.c.block_number <= up_to)
        if name is not None:
            query = query.where(table.c.name == name)
        if address is not None:
            query = query.where(func.lower(table.c.address) == address.lower())
        query = query.order_by(table.c.block_number, table.c.tx_index, table.c.log_index)
        with self._reading() as conn:
            yield from conn.execute(query).mappings()

    def blocks(self, chain_id: int, descending: bool = False) -> list[BlockRecord]:
        table = table_of(BlockRecord)
        order = table.c.number.desc() if descending else table.c.number
        with self._reading() as conn:
            rows = conn.execute(select(table).where(table.c.chain_id == chain_id).order_by(order)).mappings()
            return [BlockRecord(**dict(r)) for r in rows]

    def rows(self, model: type[SQLModel], chain_id: int) -> list[dict[str, Any]]:
        table = table_of(model)
        with self._reading() as conn:
            query = select(table).where(table.c.chain_id == chain_id).order_by(*table.primary_key.columns)
            return [dict(r) for r in conn.execute(query).mappings()]

    def count(self, model: type[SQLModel], chain_id: int) -> int:
        table = table_of(model)
        with self._reading() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(table).where(table.c.chain_id == chain_id)
                ).scalar_one()
            )

    def count_events_after(self, chain_id: int, block: int) -> int:
        table = table_of(EventRecord)
        query = select(func.count()).select_from(table)
        query = query.where(and_(table.c.chain_id == chain_id, table.c.block_number > block))
        with self._reading() as conn:
            return int(conn.execute(query).scalar_one())

    def changes_after(self, chain_id: int, block: int) -> list[dict[str, Any]]:
        """State changes of blocks after `block`, newest first (the order to undo them in)."""
        t = table_of(ChangeRecord)
        query = (
            select(t)
            .where(and_(t.c.chain_id == chain_id, t.c.block_number > block))
            .order_by(t.c.block_number.desc(), t.c.tx_index.desc(), t.c.log_index.desc(), t.c.seq.desc())
        )
        with self._reading() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def last_touch(self, chain_id: int, entity: str, key: str, up_to: int) -> Touch | None:
        t = table_of(ChangeRecord)
        query = (
            select(t.c.block_number, t.c.tx_hash, t.c.log_index, t.c.event)
            .where(
                and_(
                    t.c.chain_id == chain_id, t.c.entity == entity, t.c.key == key, t.c.block_number <= up_to
                )
            )
            .order_by(t.c.block_number.desc(), t.c.tx_index.desc(), t.c.log_index.desc(), t.c.seq.desc())
            .limit(1)
        )
        with self._reading() as conn:
            row = conn.execute(query).first()
        return None if row is None else Touch(int(row[0]), str(row[1]), int(row[2]), str(row[3]))

    # ------------------------------------------------------------------ writing

    def add_range(self, conn: Connection, batch: RangeWrite) -> str:
        """Seals a range and adds its rows in `conn`'s transaction; a range that closes also stores
        its records and moves the cursor. Returns the digest after the range. (`RangeLoader`
        manages the transactions.)"""
        digest = batch.seal()
        if batch.closes:
            # The cursor first, as a rollback moves it (`write_rollback`): two writers then take
            # their locks in one order, so on PostgreSQL the second waits for the first and finds
            # the cursor moved (CursorMoved) instead of the two deadlocking over rows each
            # inserted; and a stale writer stops before it writes a row.
            self._move_cursor(conn, batch.chain_id, batch.state, batch.expect)
        # Idempotent: a row already stored (same chain, tx, log index, block hash) stays as it is.
        # In a bulk load (a replay into an emptied database) no stored row can conflict: the rows
        # go straight in (COPY on PostgreSQL), and a conflict would fail loudly.
        bulk = batch.bulk
        self._bulk(conn, EventRecord, EVENT_COLUMNS, batch.events, upsert=False, direct=bulk)
        self._bulk(conn, ChangeRecord, CHANGE_COLUMNS, batch.changes, upsert=False, direct=bulk)
        self._bulk(conn, PaymentRecord, PAYMENT_COLUMNS, batch.payments, upsert=False, direct=bulk)
        self._bulk(conn, BlockRecord, BLOCK_COLUMNS, batch.block_rows, upsert=not bulk, direct=bulk)
        if batch.closes:
            self._save_records(conn, batch.chain_id, batch.records, batch.gone)
        elif batch.records or batch.gone:
            raise ValueError("a range that leaves its transaction open carries no records")
        return digest

    def write_rollback(
        self,
        chain_id: int,
        ancestor: int,
        records: dict[str, list[tuple[Any, ...]]],
        gone: dict[str, list[Key]],
        state: dict[str, Any],
        expect: tuple[int, str] | None = None,
    ) -> None:
        """Removes everything after block `ancestor` and stores the undone records, in one
        transaction (`expect`: see `RangeWrite.expect`)."""
        with self.engine.begin() as conn:
            # The cursor first: a rollback computed from a cursor that moved meanwhile (another
            # indexer) would delete what that one wrote.
            self._move_cursor(conn, chain_id, state, expect)
            for model in BLOCK_TABLES:
                table = table_of(model)
                column = table.c.number if model is BlockRecord else table.c.block_number
                conn.execute(delete(table).where(and_(table.c.chain_id == chain_id, column > ancestor)))
            self._save_records(conn, chain_id, records, gone)

    def _move_cursor(
        self, conn: Connection, chain_id: int, values: dict[str, Any], expect: tuple[int, str] | None
    ) -> None:
        """Moves the cursor, if it still is at `expect`; else raises CursorMoved, and the caller's
        transaction (this range's or rollback's rows and records) is rolled back with it. Two
        indexers on one database (a server's follower and an `audit sync`) can then not undo each
        other's ranges with books that are no longer the database's."""
        table = table_of(IndexState)
        query = update(table).where(table.c.chain_id == chain_id)
        if expect is not None:
            query = query.where(table.c.synced_block == expect[0], table.c.synced_hash == expect[1])
        if conn.execute(query.values(**values)).rowcount != 1:
            raise CursorMoved(
                f"the cursor of {self.shown_url} is no longer at block {expect[0] if expect else '?'}: "
                "another indexer wrote the index meanwhile (one indexer per database)"
            )

    def _save_records(
        self,
        conn: Connection,
        chain_id: int,
        records: dict[str, list[tuple[Any, ...]]],
        gone: dict[str, list[Key]],
    ) -> None:
        for entity, keys in sorted(gone.items()):
            table = table_of(ENTITY_TABLES[entity])
            key_column = table.c[ENTITIES[entity].key]
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start : start + _CHUNK]
                conn.execute(delete(table).where(and_(table.c.chain_id == chain_id, key_column.in_(chunk))))
        for entity, rows in sorted(records.items()):
            model = ENTITY_TABLES[entity]
            self._bulk(conn, model, entity_columns(entity), rows, upsert=True)

    def _bulk(
        self,
        conn: Connection,
        model: type[SQLModel],
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
        *,
        upsert: bool,
        direct: bool = False,
    ) -> None:
        """Inserts rows (tuples in `columns` order); on a primary-key conflict keeps the stored row,
        or with `upsert` replaces it. Goes to the driver directly: SQLAlchemy's per-value
        processing would cost more than the database's own work on a replay."""
        if not rows:
            return
        table = table_of(model)
        rows = _to_driver(table, columns, rows, self.dialect)
        keys = [c.name for c in table.primary_key.columns]
        names = ", ".join(_quote(c) for c in columns)
        conflict = f"ON CONFLICT ({', '.join(_quote(k) for k in keys)}) DO "
        if upsert:
            conflict += "UPDATE SET " + ", ".join(
                f"{_quote(c)} = excluded.{_quote(c)}" for c in columns if c not in keys
            )
        else:
            conflict += "NOTHING"
        if self.dialect == "postgresql":
            if direct and not upsert:
                _copy(conn, table.name, names, rows)
            else:
                _copy_insert(conn, table.name, names, rows, conflict)
            return
        head = f"INSERT INTO {_quote(table.name)} ({names}) VALUES"
        _sqlite_insert(conn, head, conflict, len(columns), rows)


class RangeLoader:
    """Writes ranges into one database, each in the transaction its predecessor left open, if any;
    a range that `closes` commits. The sync writes ranges that all close (one transaction each); a
    replay writes all its ranges in one transaction, closed by one carrying the records and the
    cursor. Used from one thread at a time."""

    def __init__(self, db: IndexDatabase) -> None:
        self._db = db
        self._conn: Connection | None = None

    def write(self, batch: RangeWrite) -> str:
        conn = self._conn
        if conn is None:
            conn = self._conn = self._db.engine.connect()
            conn.begin()
        try:
            digest = self._db.add_range(conn, batch)
            if batch.closes:
                conn.commit()
                self._release()
        except BaseException:
            self.abandon()
            raise
        return digest

    def abandon(self) -> None:
        """Rolls back a transaction left open (what it added is lost, as if never sent)."""
        if self._conn is not None:
            try:
                self._conn.rollback()
            finally:
                self._release()

    def _release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


#: Rows per SQLite INSERT statement: several rows per statement spare SQLite a statement reset and
#: Python a call per row. Measured on a replay's 38,000 change rows: 0.108 s one row at a time,
#: 0.075 s a hundred at a time (twenty: 0.080; three hundred: no better).
_SQLITE_ROWS_PER_INSERT = 100
#: SQLite's limit on the parameters of one statement (SQLITE_MAX_VARIABLE_NUMBER, since 3.32.0)
_SQLITE_MAX_PARAMETERS = 32_766


def _sqlite_insert(
    conn: Connection, head: str, conflict: str, width: int, rows: Sequence[tuple[Any, ...]]
) -> None:
    """`head` (INSERT INTO t (columns) VALUES) for every row, many rows per statement, through the
    driver's own cursor; the rows left over after the last full statement go one at a time."""
    one = "(" + ", ".join("?" * width) + ")"
    per = max(1, min(_SQLITE_ROWS_PER_INSERT, _SQLITE_MAX_PARAMETERS // width))
    full = len(rows) - len(rows) % per
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if full:
            sql = f"{head} {', '.join([one] * per)} {conflict}"
            values = list(chain.from_iterable(rows[:full]))
            step = per * width
            for start in range(0, len(values), step):
                cursor.execute(sql, values[start : start + step])
        if full < len(rows):
            cursor.executemany(f"{head} {one} {conflict}", rows[full:])
    finally:
        cursor.close()


def _quote(name: str) -> str:
    return '"' + name + '"'


def _to_driver(
    table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]], dialect: str
) -> Sequence[tuple[Any, ...]]:
    """Uint values in the form the column stores (see models.Uint) for SQLite; PostgreSQL's COPY
    takes Python ints for NUMERIC as they are."""
    if dialect != "sqlite":
        return rows
    wide = [i for i, c in enumerate(columns) if isinstance(table.c[c].type, Uint)]
    if not wide:
        return rows
    out = []
    for row in rows:
        values = list(row)
        for i in wide:
            if values[i] is not None:
                values[i] = f"{values[i]:078d}"
        out.append(tuple(values))
    return out


def _copy(conn: Connection, table: str, names: str, rows: Sequence[tuple[Any, ...]]) -> None:
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(f"COPY {_quote(table)} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _copy_insert(
    conn: Connection, table: str, names: str, rows: Sequence[tuple[Any, ...]], conflict: str
) -> None:
    """PostgreSQL: COPY into a temporary twin of the table, then one INSERT ... SELECT with the
    conflict rule (COPY alone cannot skip or update existing rows). The twin lives as long as the
    connection and is emptied at each commit: creating it in every transaction (ON COMMIT DROP)
    cost a few milliseconds per table and range, half of a replay's record upserts."""
    temporary = _quote(f"incoming_{table}")
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {temporary} "
            f"(LIKE {_quote(table)} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cursor.copy(f"COPY {temporary} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(f"INSERT INTO {_quote(table)} ({names}) SELECT {names} FROM {temporary} {conflict}")
        cursor.execute(f"DELETE FROM {temporary}")


def _insert(dialect: str, model: type[SQLModel]) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(table_of(model))
    if dialect == "sqlite":
        return sqlite.insert(table_of(model))
    raise IndexDatabaseError(f"the index supports SQLite and PostgreSQL, not {dialect}")


_ENTITY_COLUMNS = {
    entity: tuple(c.name for c in table_of(model).columns) for entity, model in ENTITY_TABLES.items()
}


def entity_columns(entity: str) -> tuple[str, ...]:
    return _ENTITY_COLUMNS[entity]


def materialise(
    books: Books, touched: Iterable[tuple[str, Key]], chain_id: int
) -> tuple[dict[str, list[tuple[Any, ...]]], dict[str, list[Key]]]:
    """Rows for the touched records as the books hold them now, and the keys of those now gone."""
    records: dict[str, list[tuple[Any, ...]]] = {}
    gone: dict[str, list[Key]] = {}
    for entity, key in sorted(touched, key=_touched_order):
        record = books.records[entity].get(key)
        if record is None:
            gone.setdefault(entity, []).append(key)
            continue
        row = _record_row(entity, key, record, books.touched.get((entity, key)), chain_id)
        records.setdefault(entity, []).append(row)
    return records, gone


_TOUCH_COLUMNS = ("last_block", "last_tx", "last_log_index", "last_event")


def _row_layout(entity: str) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...] | None]:
    """How a record becomes its table row: its fields, the places of those stored as JSON text, and
    where each table column is in (last_block, last_tx, last_log_index, last_event, chain_id, key,
    *fields), or None when the table's columns are in that order already."""
    spec = ENTITIES[entity]
    fields = tuple(spec.fields)
    json_at = tuple(i for i, name in enumerate(fields) if spec.fields[name] == "json")
    made = (*_TOUCH_COLUMNS, "chain_id", spec.key, *fields)
    columns = _ENTITY_COLUMNS[entity]
    order = None if columns == made else tuple(made.index(c) for c in columns)
    return fields, json_at, order


_ROW_LAYOUTS = {entity: _row_layout(entity) for entity in ENTITIES}


def _record_row(entity: str, key: Key, record: Record, touch: Touch | None, chain_id: int) -> tuple[Any, ...]:
    """The table row of a record (a replay makes thousands: no dict on the way)."""
    fields, json_at, order = _ROW_LAYOUTS[entity]
    values = [record[name] for name in fields]
    for i in json_at:
        values[i] = json.dumps(list(values[i]))
    where = (touch.block, touch.tx, touch.log_index, touch.event) if touch else (0, "", 0, "")
    row = (*where, chain_id, key, *values)
    return row if order is None else tuple([row[i] for i in order])


def _touched_order(touched: tuple[str, Key]) -> tuple[str, str]:
    return touched[0], str(touched[1])


def record_from_row(entity: str, row: Any) -> Record:
    spec = ENTITIES[entity]
    return {
        name: tuple(json.loads(row[name])) if kind == "json" else _typed(kind, row[name])
        for name, kind in spec.fields.items()
    }


def _typed(kind: str, value: Any) -> Any:
    if kind in ("uint", "int"):
        return int(value)
    if kind == "bool":
        return bool(value)
    return value


def touch_from_row(row: Any) -> Touch | None:
    if not row["last_event"]:
        return None
    return Touch(
        int(row["last_block"]), str(row["last_tx"]), int(row["last_log_index"]), str(row["last_event"])
    )


@contextmanager
def rebuilding(db: IndexDatabase) -> Iterator[IndexDatabase]:
    """A database in which to rebuild `db` from nothing, with secondary indexes left out until
    `create_indexes`.

    For a SQLite file: a new file beside it, written without a journal, that replaces `db`'s file
    (synced, then renamed over it) when the block completes; if the block raises, the new file is
    deleted and `db` is as it was. A replay is thereby all or nothing, and the writes skip the
    journal's second copy of every page. The index needs its file to itself meanwhile: a process
    still using the old file goes on seeing the old index until it reconnects.

    For PostgreSQL (or an in-memory SQLite): `db` itself, emptied first."""
    target = db.file
    if target is None:
        db.reset(bulk_load=True)
        yield db
        return
    _check_replaceable_file(target)
    _remove_abandoned_rebuilds(target)
    building = target.with_name(f"{target.name}{_REBUILDING}{os.getpid()}")
    _remove_sqlite_file(building)
    scratch = IndexDatabase(building, scratch=True)
    try:
        scratch.reset(bulk_load=True)
        yield scratch
        with scratch.engine.begin() as conn:
            # The finished file is an ordinary WAL database from its first use on.
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        scratch.close()
        with open(building, "rb+") as handle:
            os.fsync(handle.fileno())
        db.close()
        # A journal left by the old file's last user must not be applied to the new one.
        _remove_sqlite_file(target, main=False)
        os.replace(building, target)
        _sync_directory(target.parent)
    except BaseException:
        scratch.close()
        _remove_sqlite_file(building)
        raise


_REBUILDING = ".rebuilding-"


def check_replaceable(db: IndexDatabase) -> None:
    """IndexDatabaseError unless a replay may rebuild `db`: for a SQLite file, as `rebuilding`
    checks it (and its directory must exist, to build the new file in); for a server, it must
    answer. For callers that want the refusal before they start (the CLI's progress bar)."""
    target = db.file
    if target is None:
        with db.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return
    if not target.exists() and not target.parent.is_dir():
        raise IndexDatabaseError(f"cannot create the index {target}: no directory {target.parent}")
    _check_replaceable_file(target)


def check_index_of(db: IndexDatabase, deployment: Deployment, doing: Literal["replay", "sync"]) -> None:
    """Refuses (AnotherDeploymentsIndex) a database that holds the index of another deployment than
    `deployment`'s: a replay would replace that index, a sync would add a second deployment's rows
    beside it. A replay over the same deployment's index is how a replay is rerun, and passes; so do
    a new, empty or emptied database. A SQLite file that is no index is refused first, before
    SQLAlchemy opens it (its connection would switch the file to WAL)."""
    target = db.file
    if target is not None:
        _check_index_file(target, _WOULD_TO_A_FILE[doing])
    given = IndexedDeployment(deployment.chain_id, deployment.ledger, deployment.oracle)
    others = [d for d in db.indexed_deployments() if not d.same_contracts(given)]
    if not others:
        return
    stored = " and ".join(d.described(given) for d in others)
    raise AnotherDeploymentsIndex(
        f"{target if target is not None else db.shown_url} indexes another deployment: {stored} "
        f"(the manifest's: {given.described(others[0])}); {_WOULD_TO_AN_INDEX[doing]}, so it was left "
        f"alone; {_ANOTHER_DEPLOYMENT_ADVICE[doing]}"
    )


def _check_replaceable_file(target: Path) -> None:
    """Refuses to replace a file that is not an index: a --db mistyped as another application's
    SQLite database, a manifest or any other file would be lost to the rebuilt index. An empty file
    and an index (of any chain; `check_index_of` asks whose) may be replaced."""
    _check_index_file(target, _WOULD_TO_A_FILE["replay"])


def _check_index_file(target: Path, would: str) -> None:
    """IndexDatabaseError unless `target` is missing, empty or a SQLite database with an index's
    cursor table; `would` says what was about to happen to it."""
    if target.is_dir():
        raise IndexDatabaseError(f"{target} is a directory: give the index's file with --db")
    if not target.exists() or target.stat().st_size == 0:
        return
    try:
        with sqlite3.connect(f"{target.resolve().as_uri()}?mode=ro", uri=True) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        if exc.sqlite_errorname not in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            # It may well be an index: one SQLite cannot open here (no permission, a WAL file on
            # read-only media without its -shm), which no advice to delete it should follow.
            raise IndexDatabaseError(
                f"{target} cannot be read ({exc}): {would}, so it was left alone"
            ) from None
        raise IndexDatabaseError(
            f"{target} is not a SQLite database ({exc}): {would}, so it was left alone; {_REPLACE_ADVICE}"
        ) from None
    if tables and table_of(IndexState).name not in tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise IndexDatabaseError(
            f"{target} is a SQLite database but not an index (tables {shown}): {would}, so it was left "
            f"alone; {_REPLACE_ADVICE}"
        )


#: What a replay or a sync would have done to a file that is no index, and to another
#: deployment's index.
_WOULD_TO_A_FILE = {
    "replay": "a replay would replace it",
    "sync": "a sync would add the index's tables to it",
}
_WOULD_TO_AN_INDEX = {"replay": "a replay would replace it", "sync": "a sync would mix two deployments in it"}
#: What to do about a --db a replay refuses to replace.
_REPLACE_ADVICE = (
    "name another file with --db (serve: --index-db), or move or delete this one if it is not needed"
)
_ANOTHER_DEPLOYMENT_ADVICE = {
    "replay": "name another --db, or give --replace to rebuild it for this manifest",
    "sync": "name another --db (serve: --index-db), or rebuild it for this manifest with "
    "`certledger audit replay --replace`",
}


def _remove_abandoned_rebuilds(target: Path) -> None:
    """Deletes the half-built files of rebuilds of `target` whose process is gone (a killed
    replay cannot clean up after itself); a rebuild still running is left alone."""
    prefix = f"{target.name}{_REBUILDING}"
    for path in target.parent.glob(f"{prefix}*"):
        pid = path.name.removeprefix(prefix)
        if pid.isdigit() and not _process_alive(int(pid)):
            _remove_sqlite_file(path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _remove_sqlite_file(path: Path, main: bool = True) -> None:
    """Deletes a SQLite file's journals, and with `main` the file itself."""
    # Only what exists: on a read-only file system unlinking a missing file is EROFS, not ENOENT.
    for file in [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm", "-journal")] + (
        [path] if main else []
    ):
        if file.exists():
            file.unlink(missing_ok=True)


def _sync_directory(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
