"""The service's reads: the event index, kept fresh, queried through its public tables.

Who syncs the index, by how the service runs:

- embedded chain (tests, the demo): a read first syncs when the last sync is older than
  `index_sync_interval` (py-evm is not thread-safe, so nothing may sync behind the requests' back);
- a node, one worker: a background thread syncs every `index_sync_interval`; reads never wait for it;
- a node, several workers: one follower process syncs (`certledger serve` runs it) and the workers
  only read. Two indexers writing one database would each hold books the other moved.

A write makes the index reach its own block before answering (syncing itself, or waiting, bounded,
for the follower), so a client reads its own writes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from eth_typing import HexStr
from sqlalchemy import ColumnElement, Integer, Row, Text, and_, exists, func, literal, or_
from sqlalchemy import cast as cast_to
from sqlalchemy import select as core_select
from sqlmodel import Session, SQLModel, col, select
from web3.exceptions import BlockNotFound

from chain_client.chain import Chain
from chain_client.deploy import Deployment
from chain_client.errors import CertledgerError
from chain_client.index.books import CREATED, HOLDER_ROLES, SYSTEM_KEY
from chain_client.index.db import IndexDatabase, table_of
from chain_client.index.models import (
    CertificateRecord,
    ChangeRecord,
    CreditRecord,
    EventRecord,
    IndexState,
    OfferRecord,
    OrderRecord,
    ParticipantRecord,
    PaymentRecord,
    SystemRecord,
)
from chain_client.index.state import Merge
from chain_client.index.sync import FINAL_FAILURES, ROUND_FAILURES, Indexer, follow_backoff
from chain_client.models import CertificateStatus

M = TypeVar("M", bound=SQLModel)
log = logging.getLogger(__name__)


def _as(model: type[M], row: Row[Any]) -> M:
    """A Core row read as the table's model: the same attribute names and converted values, without
    building an ORM instance (the reads only read attributes)."""
    return cast(M, row)


#: The index's payment kinds (books.py) the ledger pushes to their payee, and credits for a later
#: withdrawal when the token refuses the push.
PUSHED = ("settlement", "refund")
CREDIT = "credit"


def _position(r: PaymentRecord) -> tuple[int, int, int]:
    return int(r.block_number), int(r.tx_index), int(r.log_index)


class IndexLagging(CertledgerError):
    """The index did not reach a block in time."""


class IndexOffChain(CertledgerError):
    """The node no longer has the block the index began at: the chain was reset or replaced
    under the running service, and the books the index holds are of a chain that is gone."""


#: How often reads check that the node still has the index's first block, in seconds.
CHAIN_CHECK_INTERVAL = 5.0


@dataclass(frozen=True)
class OfferTerms:
    """An offer's certificate as a buyer sees it before buying (`IndexReader.offer_terms`)."""

    order_id: int
    issuer: str
    maturity: int


class IndexReader:
    def __init__(
        self,
        chain: Chain,
        deployment: Deployment,
        db: IndexDatabase,
        *,
        interval: float,
        follower: bool,
        wait: float,
        background: bool = False,
    ) -> None:
        self.chain = chain
        self.chain_id = deployment.chain_id
        self.db = db
        self.interval = interval
        self.follower = follower
        self.wait = wait
        self._lock = threading.Lock()
        self._last = 0.0
        self._synced = -1
        self._indexer: Indexer | None = None if follower else Indexer(chain, deployment, db)
        self.background = background and self._indexer is not None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._participants: dict[str, tuple[float, ParticipantRecord]] = {}
        self._head_time: tuple[str, int] | None = None
        self._chain_checked = -CHAIN_CHECK_INTERVAL
        self._checking = threading.Event()
        self._off_chain: IndexOffChain | None = None

    # ------------------------------------------------------------------ background sync

    def start(self) -> None:
        if self.background and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._follow, name="index-sync", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _follow(self) -> None:
        failures = 0
        while not self._stop.wait(follow_backoff(self.interval, failures)):
            try:
                self._sync()
                failures = 0
            except FINAL_FAILURES as exc:  # the manifest and the index do not belong together
                log.error("index sync stopped: %s", exc)
                return
            except ROUND_FAILURES as exc:
                # The node or the database is down, or the chain moved under us: reads serve what
                # is indexed (or refuse, once the chain is gone: `on_chain`), and the next round
                # tries again, later each time (the thread must outlive the trouble).
                failures += 1
                wait = follow_backoff(self.interval, failures)
                log.warning("index sync failed, trying again in %.1f s: %s", wait, exc)

    def on_chain(self) -> None:
        """Raises IndexOffChain when the node no longer has the index's first block (a chain
        reset, or a new one on the same node URL). Every reading process checks, since a follower
        process's failures are not seen by the others, at most every CHAIN_CHECK_INTERVAL and in a
        thread of its own: a request never waits on the node for it (a node that hangs would hold
        it for the RPC timeout), it answers with the last check's verdict. A node that does not
        answer is no reason to refuse: reads keep serving the index (D43)."""
        now = time.monotonic()
        if now - self._chain_checked >= CHAIN_CHECK_INTERVAL and not self._checking.is_set():
            self._chain_checked = now
            self._checking.set()
            threading.Thread(target=self._check_chain, name="index-chain-check", daemon=True).start()
        if self._off_chain is not None:
            raise self._off_chain

    def _check_chain(self) -> None:
        try:
            first = self.db.first_block(self.chain_id)
            if first is None or int(first.number) < 0:
                self._off_chain = None
                return
            found = self.chain.block_hash(int(first.number))
            if found is not None and found.lower() == first.hash.lower():
                self._off_chain = None
                return
            if self._off_chain is None:
                log.error(
                    "the node has no block %s at height %s, where the index began", first.hash, first.number
                )
            self._off_chain = IndexOffChain(
                f"the node has no block {first.hash} at height {first.number}, where the index began: "
                "the chain was reset or replaced, and the index's books are of a chain that is gone; "
                "rebuild it with `certledger audit replay` (against the manifest of what is deployed "
                "now) and restart the service"
            )
        except Exception as exc:  # the node or the database away: no verdict either way
            log.debug("could not check the index's first block against the node: %s", exc)
        finally:
            self._checking.clear()

    def _sync(self, block: int | None = None) -> None:
        """Syncs, unless (for a write's `block`) a sync that finished meanwhile already covers it:
        concurrent writes then share one sync instead of queueing one each."""
        assert self._indexer is not None
        with self._lock:
            if block is not None and self._synced >= block:
                return
            self._synced = self._indexer.sync().synced_block
            self._last = time.monotonic()

    # ------------------------------------------------------------------ freshness

    def prime(self) -> None:
        """The first sync, before serving, where this process syncs at all."""
        if self._indexer is not None:
            self._sync()

    def fresh(self) -> None:
        """Syncs first if reads sync here and the last sync is older than the interval; refuses
        an index of a chain the node no longer has (`on_chain`)."""
        self.on_chain()
        if self._indexer is None or self.background or time.monotonic() - self._last < self.interval:
            return
        with self._lock:
            if time.monotonic() - self._last < self.interval:
                return
            self._synced = self._indexer.sync().synced_block
            self._last = time.monotonic()

    def reach(self, block: int, wait: float | None = None) -> None:
        """Returns once the index includes `block` (after a write): syncing it here, or waiting for
        the follower at most `wait` seconds (default `self.wait`)."""
        if self._indexer is not None:
            self._sync(block)
            return
        limit = self.wait if wait is None else wait
        deadline = time.monotonic() + limit
        while self.synced_block() < block:
            if time.monotonic() > deadline:
                raise IndexLagging(f"the index did not reach block {block} within {limit}s")
            time.sleep(0.02)

    def head_time(self) -> int:
        """The timestamp of the index's last synced block: the chain's clock as of what the reads
        show (an offer whose expiry is at or before it can no longer be bought: the contract
        refuses `expiry <= block.timestamp`). One node call per new head block, then cached."""
        state = self.db.require_state()
        cached = self._head_time
        if cached is not None and cached[0] == state.synced_hash:
            return cached[1]
        try:
            try:
                stamp = self.chain.block_time(HexStr(state.synced_hash))
            except BlockNotFound:  # reorged away since the sync: the block at its height is as good
                stamp = self.chain.block_time(int(state.synced_block))
        except Exception:  # the node is down: reads from the index keep answering (D43)
            # The last head's time, or the wall clock's: a chain's blocks follow it closely.
            return cached[1] if cached is not None else int(time.time())
        self._head_time = (state.synced_hash, stamp)
        return stamp

    def synced_block(self) -> int:
        state = self.db.state(self.chain_id)
        return -1 if state is None else int(state.synced_block)

    def state(self) -> IndexState:
        return self.db.require_state()

    # ------------------------------------------------------------------ queries

    def session(self) -> Session:
        return Session(self.db.engine)

    def get(self, model: type[M], **key: Any) -> M | None:
        # Core, not the ORM: a read-only row needs no identity map, and this is the hot path.
        table = table_of(model)
        query = core_select(table).where(table.c.chain_id == self.chain_id)
        for name, value in key.items():
            query = query.where(table.c[name] == value)
        with self.db.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _as(model, row)

    def page(
        self, model: type[M], where: Sequence[Any], order: Sequence[Any], limit: int, offset: int
    ) -> tuple[list[M], int]:
        table = table_of(model)
        base = core_select(table).where(table.c.chain_id == self.chain_id, *where)
        with self.db.connect() as conn:
            rows = conn.execute(base.order_by(*order).limit(limit).offset(offset)).all()
            if len(rows) < limit and (rows or offset == 0):
                total = offset + len(rows)  # the last page: no count query needed
            else:
                total = int(conn.execute(core_select(func.count()).select_from(base.subquery())).scalar_one())
        return [_as(model, r) for r in rows], total

    def participant(self, address: str, max_age: float = 0.0) -> ParticipantRecord | None:
        """The participant's record; with `max_age`, one read at most that many seconds ago (every
        authenticated request checks its caller, and roles change rarely)."""
        now = time.monotonic()
        cached = self._participants.get(address)
        if cached is not None and now - cached[0] <= max_age:
            return cached[1]
        record = self.get(ParticipantRecord, address=address)
        if record is not None:
            # Only registered accounts, which the chain's admin bounds: anyone can sign with a
            # fresh key, and caching every stranger's "none" grew the cache without end.
            self._participants[address] = (now, record)
        return record

    def held_ids(self, address: str) -> set[int]:
        """Certificates `address` holds now or held before (a holder change away from it)."""
        with self.session() as s:
            now = s.exec(
                select(CertificateRecord.certificate_id).where(
                    CertificateRecord.chain_id == self.chain_id, CertificateRecord.holder == address
                )
            ).all()
            before = s.exec(
                select(ChangeRecord.key).where(
                    ChangeRecord.chain_id == self.chain_id,
                    ChangeRecord.entity == "certificate",
                    ChangeRecord.field == "holder",
                    ChangeRecord.old == address,
                )
            ).all()
        return {int(i) for i in now} | {int(k) for k in before}

    def holdings_and_births(
        self, ids: set[int]
    ) -> list[tuple[int, str, tuple[int, int, int, int], object, object]]:
        """For each certificate in `ids`, its creation and each change of holder, in chain order, as
        (certificate id, field, position, old, new); field is books.CREATED or "holder"."""
        if not ids:
            return []
        table = table_of(ChangeRecord)
        query = (
            core_select(
                table.c.key, table.c.field, table.c.block_number, table.c.tx_index, table.c.log_index,
                table.c.seq, table.c.old, table.c.new,
            )
            .where(
                table.c.chain_id == self.chain_id,
                table.c.entity == "certificate",
                table.c.key.in_([str(i) for i in ids]),
                table.c.field.in_([CREATED, "holder"]),
            )
            .order_by(table.c.block_number, table.c.tx_index, table.c.log_index, table.c.seq)
        )  # fmt: skip
        with self.db.connect() as conn:
            rows = conn.execute(query).all()
        return [
            (int(key), str(field), (int(block), int(tx), int(log), int(seq)), old, new)
            for key, field, block, tx, log, seq, old, new in rows
        ]

    def order_ids_of_issuer(self, address: str) -> set[int]:
        with self.session() as s:
            rows = s.exec(
                select(OrderRecord.order_id).where(
                    OrderRecord.chain_id == self.chain_id, OrderRecord.issuer == address
                )
            ).all()
        return {int(i) for i in rows}

    def certificates_of_orders(self, order_ids: set[int]) -> list[CertificateRecord]:
        if not order_ids:
            return []
        with self.session() as s:
            rows = s.exec(
                select(CertificateRecord).where(
                    CertificateRecord.chain_id == self.chain_id,
                    col(CertificateRecord.order_id).in_(order_ids),
                )
            ).all()
        return list(rows)

    def certificates(self, ids: set[int]) -> dict[int, CertificateRecord]:
        return self._by_id(CertificateRecord, "certificate_id", ids)

    def orders(self, ids: set[int]) -> dict[int, OrderRecord]:
        return self._by_id(OrderRecord, "order_id", ids)

    def _by_id(self, model: type[M], key: str, ids: set[int]) -> dict[int, M]:
        """This chain's records of `model` whose `key` column is one of `ids`, by that id."""
        if not ids:
            return {}
        table = table_of(model)
        with self.session() as s:
            rows = s.exec(select(model).where(table.c.chain_id == self.chain_id, table.c[key].in_(ids))).all()
        return {int(getattr(r, key)): r for r in rows}

    def offer_terms(self, offers: Sequence[OfferRecord]) -> dict[int, OfferTerms]:
        """What a buyer weighs beside the price, per offer id: the order the certificate is a claim
        on, its debtor (the order's issuer, who pays at maturity) and the maturity."""
        certificates = self.certificates({int(o.certificate_id) for o in offers})
        orders = self.orders({int(c.order_id) for c in certificates.values()})
        terms: dict[int, OfferTerms] = {}
        for o in offers:
            cert = certificates.get(int(o.certificate_id))
            order = orders.get(int(cert.order_id)) if cert is not None else None
            if cert is not None and order is not None:
                terms[int(o.offer_id)] = OfferTerms(int(cert.order_id), order.issuer, int(cert.maturity))
        return terms

    def merges(self, certificate_ids: set[int]) -> list[Merge]:
        """The merges among `certificate_ids` (one order's, as merges stay within an order), in
        chain order, from the change log's value changes by TransferValue: the giver's change
        comes first and the taker's second in one event, a mint's alone. Each certificate's first
        TransferValue in funds it as it is minted (from 0 for a root, from its parent for a split):
        any later one into it from another certificate is a merge (`state.merges_in`'s rule)."""
        if not certificate_ids:
            return []
        c = table_of(ChangeRecord).c
        query = (
            core_select(c.block_number, c.tx_index, c.log_index, c.tx_hash, c.key, c.old, c.new)
            .where(
                c.chain_id == self.chain_id,
                c.entity == "certificate",
                c.key.in_([str(i) for i in certificate_ids]),
                c.field == "value",
                c.event == "TransferValue",
            )
            .order_by(c.block_number, c.tx_index, c.log_index, c.seq)
        )
        with self.db.connect() as conn:
            rows = list(conn.execute(query))
        events: dict[tuple[int, int, int], list[Any]] = {}
        for row in rows:
            events.setdefault((row[0], row[1], row[2]), []).append(row)
        funded: set[int] = set()
        found: list[Merge] = []
        for changes in events.values():
            taker = changes[-1]
            target = int(taker[4])
            if len(changes) == 2 and target in funded:
                value = int(taker[6]) - int(taker[5])
                found.append(Merge(int(changes[0][4]), target, value, int(taker[0]), taker[3]))
            funded.add(target)
        return found

    def history(self, certificate_id: int) -> list[ChangeRecord]:
        with self.session() as s:
            rows = s.exec(
                select(ChangeRecord)
                .where(
                    ChangeRecord.chain_id == self.chain_id,
                    ChangeRecord.entity == "certificate",
                    ChangeRecord.key == str(certificate_id),
                )
                .order_by(
                    col(ChangeRecord.block_number),
                    col(ChangeRecord.tx_index),
                    col(ChangeRecord.log_index),
                    col(ChangeRecord.seq),
                )
            ).all()
        return list(rows)

    def credit(self, address: str) -> int:
        record = self.get(CreditRecord, account=address)
        return 0 if record is None else int(record.amount)

    def payments_of(
        self, address: str, limit: int, offset: int
    ) -> tuple[list[tuple[PaymentRecord, bool]], int]:
        """The payments `address` made or received, in chain order, each once with whether it was
        credited instead of pushed; and their total.

        A refused push is booked twice in the index: as its settlement or refund, then as the
        `PaymentCredited` of the same money. The credit bookings are left out of the page (so
        `total` and the pages count each payment once) and mark the booking they belong to."""
        rows, total = self.page(
            PaymentRecord,
            [
                or_(col(PaymentRecord.payee) == address, col(PaymentRecord.payer) == address),
                col(PaymentRecord.kind) != CREDIT,
            ],
            [col(PaymentRecord.block_number), col(PaymentRecord.log_index)],
            limit,
            offset,
        )
        credited = self._credited(address, [r for r in rows if r.kind in PUSHED and r.payee == address])
        return [(r, _position(r) in credited) for r in rows], total

    def _credited(self, address: str, pushed: Sequence[PaymentRecord]) -> set[tuple[int, int, int]]:
        """Which of `pushed` (payments to `address`) the token refused, so the ledger credited them."""
        if not pushed:
            return set()
        table = table_of(PaymentRecord)
        query = (
            core_select(table)
            .where(
                table.c.chain_id == self.chain_id,
                table.c.payee == address,
                table.c.tx_hash.in_(sorted({r.tx_hash for r in pushed})),
                table.c.kind.in_((*PUSHED, CREDIT)),
            )
            .order_by(table.c.block_number, table.c.tx_index, table.c.log_index)
        )
        with self.db.connect() as conn:
            rows = [_as(PaymentRecord, r) for r in conn.execute(query).all()]
        # `PaymentCredited` names the account, order and amount but not the payment: pair each with
        # the first unpaired booking before it in its transaction with those three. The ledger pays in
        # the order it books (refund before face on confirmation, a settle batch in its own order), so
        # this is the booking it credited.
        credited: set[tuple[int, int, int]] = set()
        for credit in (r for r in rows if r.kind == CREDIT):
            for booking in rows:
                if (
                    booking.kind in PUSHED
                    and _position(booking) not in credited
                    and (booking.block_number, booking.tx_index) == (credit.block_number, credit.tx_index)
                    and booking.log_index < credit.log_index
                    and (booking.order_id, booking.amount) == (credit.order_id, credit.amount)
                ):
                    credited.add(_position(booking))
                    break
        return credited

    def buyable(self, now: int) -> ColumnElement[bool]:
        """The part of `buyable_offers`' rule SQL can judge: open and unexpired, the ledger not
        paused, the certificate live, unfrozen, not matured, still the seller's with at least the
        offered value, the seller an active holder, and no Transfer of the certificate since the
        offer (the ledger's OfferStale: every whole move bumps its epoch, a move back to the seller
        and a transfer to itself included, which the change log does not show as a holder change).
        What is left (the split rules, integer arithmetic on uint256 that SQLite's text cannot do)
        is `_splits`'."""
        o, c, p, s, e = (
            table_of(m)
            for m in (OfferRecord, CertificateRecord, ParticipantRecord, SystemRecord, EventRecord)
        )
        held = exists().where(
            c.c.chain_id == o.c.chain_id,
            c.c.certificate_id == o.c.certificate_id,
            c.c.holder == o.c.seller,
            c.c.status == int(CertificateStatus.LIVE),
            c.c.frozen.is_(False),
            c.c.maturity > now,
            c.c.value >= o.c.value,
        )
        seller = exists().where(
            p.c.chain_id == o.c.chain_id,
            p.c.address == o.c.seller,
            p.c.active.is_(True),
            p.c.roles.op("&")(HOLDER_ROLES) != 0,
        )
        paused = exists().where(s.c.chain_id == o.c.chain_id, s.c.paused.is_(True))
        # An open offer's last touch is its DiscountOffered; log indexes order a block's events.
        # Stored arguments are canonical JSON (`digest.args_json`: sorted keys, no spaces), so an
        # ERC-721 Transfer's end with its tokenId (an ERC-20 Transfer has none).
        moved = exists().where(
            e.c.chain_id == o.c.chain_id,
            e.c.name == "Transfer",
            or_(
                e.c.block_number > o.c.last_block,
                and_(e.c.block_number == o.c.last_block, e.c.log_index > o.c.last_log_index),
            ),
            e.c.args.like(literal('%"tokenId":"') + self._key_text(o.c.certificate_id) + literal('"}')),
        )
        return and_(o.c.open.is_(True), o.c.expiry > now, held, seller, ~paused, ~moved)

    def buyable_offers(
        self, where: Sequence[Any], now: int, limit: int, offset: int
    ) -> tuple[list[OfferRecord], int]:
        """The offers matching `where` that the ledger would sell now, a page of them and how many:
        `buyable` in SQL, then the split rules on exact integers."""
        o = table_of(OfferRecord)
        query = core_select(o).where(o.c.chain_id == self.chain_id, self.buyable(now), *where)
        with self.db.connect() as conn:
            rows = [_as(OfferRecord, r) for r in conn.execute(query.order_by(o.c.offer_id))]
        sellable = self._splits(rows)
        return sellable[offset : offset + limit], len(sellable)

    def buyable_ids(self, now: int, offer_ids: Sequence[int]) -> set[int]:
        """Which of `offer_ids` are buyable now (`buyable_offers`)."""
        if not offer_ids:
            return set()
        rows, _ = self.buyable_offers([col(OfferRecord.offer_id).in_(offer_ids)], now, len(offer_ids), 0)
        return {int(r.offer_id) for r in rows}

    def _splits(self, offers: list[OfferRecord]) -> list[OfferRecord]:
        """Those of `offers` (SQL found the rest of `buyable` true) whose sale obeys the split rules
        as they are now: a part sold is split off, so it and the remainder (if any) must be at least
        the minimum unit and the certificate above the maximum depth (the ledger's
        SplitBelowMinimumUnit, SplitDepthExceeded); the certificate's value may have changed since
        the offer (a split-off, a merge into it), and the rules with it (SplitRulesChanged)."""
        system = self.get(SystemRecord, key=SYSTEM_KEY)
        certificates = self.certificates({int(o.certificate_id) for o in offers})
        if system is None:
            return []
        unit, depth = int(system.min_split_unit), int(system.max_split_depth)

        def sellable(offer: OfferRecord) -> bool:
            cert = certificates[int(offer.certificate_id)]
            value, whole = int(offer.value), int(cert.value)
            if value == whole:
                return True  # sold whole: no split
            return value >= unit and whole - value >= unit and int(cert.depth) < depth

        return [o for o in offers if sellable(o)]

    def _key_text(self, column: Any) -> ColumnElement[str]:
        """A uint column as the change log's key text (decimal, no padding): PostgreSQL stores it as
        NUMERIC, SQLite as zero-padded text (models.Uint)."""
        if self.db.engine.dialect.name == "postgresql":
            return cast_to(column, Text)
        return cast_to(cast_to(column, Integer), Text)

    def offers(self, where: Sequence[Any], limit: int, offset: int) -> tuple[list[OfferRecord], int]:
        return self.page(OfferRecord, where, [col(OfferRecord.offer_id)], limit, offset)
