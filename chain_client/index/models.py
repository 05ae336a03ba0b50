"""The event index's tables (SQLModel): the sync cursor, indexed blocks, decoded events, the state
changes they made, the books they built (orders, certificates, participants, ...) and payments.

Every uint of the contracts is a `Uint` column: NUMERIC(78, 0) on PostgreSQL, zero-padded decimal
text on SQLite. 78 digits hold any uint256, and the padding keeps SQLite's text order equal to
numeric order, so `ORDER BY value` and range filters work on both databases.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Index, Numeric, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlmodel import Field, SQLModel

UINT256_MAX = 2**256 - 1
SCHEMA_VERSION = 1


class Uint(TypeDecorator[int]):
    """An unsigned integer up to 2**256 - 1, stored without loss."""

    impl = String(78)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(78, 0))
        return dialect.type_descriptor(String(78))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        number = int(value)
        if not 0 <= number <= UINT256_MAX:
            raise ValueError(f"{number} is not a uint256")
        if dialect.name == "postgresql":
            return Decimal(number)
        return f"{number:078d}"

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return int(value)


def _uint(**kwargs: Any) -> Any:
    return Field(sa_type=Uint, **kwargs)


def _big(**kwargs: Any) -> Any:
    return Field(sa_type=BigInteger, **kwargs)


class IndexState(SQLModel, table=True):
    """Where the index stands: one row per indexed deployment (a database indexes one)."""

    __tablename__ = "index_state"

    chain_id: int = _big(primary_key=True)
    ledger: str
    oracle: str
    deployment_block: int = _big()
    #: last block whose events are all applied (deployment_block - 1 before the first)
    synced_block: int = _big()
    synced_hash: str
    #: digest chain value after `synced_block`
    digest: str
    events: int = _big(default=0)
    schema_version: int = SCHEMA_VERSION


class BlockRecord(SQLModel, table=True):
    """A block the index relied on: each block with events, and the tip of each synced range."""

    __tablename__ = "indexed_block"

    chain_id: int = _big(primary_key=True)
    number: int = _big(primary_key=True)
    hash: str
    #: None for a block older than the reorg window when it was synced (see sync.SyncOptions)
    parent_hash: str | None = None
    #: digest chain value after this block (unchanged from the previous one if it had no events)
    digest: str
    events: int = 0


class EventRecord(SQLModel, table=True):
    """One decoded log of the ledger or the oracle. The primary key is the idempotency key."""

    __tablename__ = "event"

    chain_id: int = _big(primary_key=True)
    tx_hash: str = Field(primary_key=True)
    log_index: int = _big(primary_key=True)
    block_hash: str = Field(primary_key=True)
    block_number: int = _big(index=True)
    tx_index: int = _big()
    address: str
    name: str
    #: canonical JSON of the arguments, uints as decimal strings (see digest.canonical_json)
    args: str


class ChangeRecord(SQLModel, table=True):
    """One field of one record changed by one event; `old` lets a reorg undo it."""

    __tablename__ = "state_change"
    #: the history of one record (and the last change before a block, for a rollback)
    __table_args__ = (Index("ix_state_change_record", "chain_id", "entity", "key", "block_number"),)

    chain_id: int = _big(primary_key=True)
    block_number: int = _big(primary_key=True)
    tx_index: int = _big(primary_key=True)
    log_index: int = _big(primary_key=True)
    seq: int = Field(primary_key=True)
    tx_hash: str
    event: str
    entity: str
    key: str
    field: str
    old: str | None = None
    new: str | None = None


class PaymentRecord(SQLModel, table=True):
    """Money the ledger booked: escrow in, refunds and settlements out, discount prices between
    holders, credits for refused pushes, withdrawals."""

    __tablename__ = "payment"

    chain_id: int = _big(primary_key=True)
    block_number: int = _big(primary_key=True)
    tx_index: int = _big(primary_key=True)
    log_index: int = _big(primary_key=True)
    tx_hash: str
    kind: str
    order_id: int | None = _uint(default=None, index=True)
    certificate_id: int | None = _uint(default=None)
    payer: str
    payee: str = Field(index=True)
    amount: int = _uint()


class _Touched(SQLModel):
    """The event that last changed a record: what verify names when the record differs."""

    last_block: int = _big(default=0)
    last_tx: str = ""
    last_log_index: int = _big(default=0)
    last_event: str = ""


class OrderRecord(_Touched, table=True):
    __tablename__ = "ledger_order"

    chain_id: int = _big(primary_key=True)
    order_id: int = _uint(primary_key=True)
    issuer: str = Field(index=True)
    payee: str
    maturity: int = _big()
    deadline: int = _big()
    status: int
    expected_quantity: int = _uint()
    escrowed: int = _uint()
    paid: int = _uint()
    refunded: int = _uint()
    delivered_quantity: int = _uint()
    root_certificate_id: int = _uint()
    invoice_hash: str
    warehouse: str
    goods_hash: str


class CertificateRecord(_Touched, table=True):
    __tablename__ = "certificate"

    chain_id: int = _big(primary_key=True)
    certificate_id: int = _uint(primary_key=True)
    order_id: int = _uint(index=True)
    holder: str = Field(index=True)
    value: int = _uint()
    parent_id: int = _uint(index=True)
    depth: int
    maturity: int = _big()
    status: int
    frozen: bool


class ParticipantRecord(_Touched, table=True):
    __tablename__ = "participant"

    chain_id: int = _big(primary_key=True)
    address: str = Field(primary_key=True)
    entity_id: str
    roles: int
    active: bool
    issuer_limit: int = _uint()
    certificate_count: int = _uint()
    outstanding: int = _uint()


class OfferRecord(_Touched, table=True):
    __tablename__ = "discount_offer"

    chain_id: int = _big(primary_key=True)
    offer_id: int = _uint(primary_key=True)
    certificate_id: int = _uint(index=True)
    seller: str
    buyer: str
    value: int = _uint()
    price: int = _uint()
    expiry: int = _big()
    open: bool


class CreditRecord(_Touched, table=True):
    __tablename__ = "credit"

    chain_id: int = _big(primary_key=True)
    account: str = Field(primary_key=True)
    amount: int = _uint()


class WarehouseRecord(_Touched, table=True):
    __tablename__ = "warehouse"

    chain_id: int = _big(primary_key=True)
    warehouse_id: str = Field(primary_key=True)
    active: bool
    threshold: int
    device_count: int
    device_set_version: int = _big()
    freshness: int = _big()
    devices: str


class AttestationRecord(_Touched, table=True):
    __tablename__ = "attestation"

    chain_id: int = _big(primary_key=True)
    digest: str = Field(primary_key=True)
    order_id: int = _uint(index=True)
    warehouse: str
    quantity: int = _uint()
    received_at: int = _big()
    signers: str


class SystemRecord(_Touched, table=True):
    """The ledger's system settings (one row, key "system")."""

    __tablename__ = "system_config"

    chain_id: int = _big(primary_key=True)
    key: str = Field(primary_key=True)
    paused: bool
    min_split_unit: int = _uint()
    max_split_depth: int
    ledger_bound: str


#: Entity name (as in books.ENTITIES) -> its table.
ENTITY_TABLES: dict[str, type[SQLModel]] = {
    "order": OrderRecord,
    "certificate": CertificateRecord,
    "participant": ParticipantRecord,
    "offer": OfferRecord,
    "credit": CreditRecord,
    "warehouse": WarehouseRecord,
    "attestation": AttestationRecord,
    "system": SystemRecord,
}

#: Tables whose rows belong to one block and go when that block is rolled back.
BLOCK_TABLES: tuple[type[SQLModel], ...] = (EventRecord, ChangeRecord, PaymentRecord, BlockRecord)

ALL_TABLES: tuple[type[SQLModel], ...] = (IndexState, *BLOCK_TABLES, *ENTITY_TABLES.values())
