"""Reading the index: the books at any block (by folding the stored events up to it), holdings,
the history of a record, and certificate lineage. None of this needs a node."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, select

from chain_client.index.books import Books, Record, Touch
from chain_client.index.db import IndexDatabase, IndexDatabaseError, table_of
from chain_client.index.decode import Event, LogDecoder
from chain_client.index.models import ChangeRecord, IndexState
from chain_client.models import CertificateStatus


def decoder_for(state: IndexState) -> LogDecoder:
    return LogDecoder.for_contracts(((state.ledger, "CertificateLedger"), (state.oracle, "ReceiptOracle")))


def event_from_record(decoder: LogDecoder, row: Mapping[Any, Any]) -> Event:
    """The event of a stored row (EventRecord's columns)."""
    address, name = row["address"], row["name"]
    return Event(
        name=name,
        args=decoder.restore(address, name, json.loads(row["args"])),
        address=address,
        block_number=row["block_number"],
        block_hash=row["block_hash"],
        tx_hash=row["tx_hash"],
        tx_index=row["tx_index"],
        log_index=row["log_index"],
    )


def stored_events(db: IndexDatabase, state: IndexState, up_to: int | None = None) -> Iterator[Event]:
    decoder = decoder_for(state)
    for row in db.events(state.chain_id, up_to):
        yield event_from_record(decoder, row)


class BlockOutOfRange(IndexDatabaseError):
    """A block the index cannot answer for (before the deployment, past its last block): the
    caller's argument to change (the CLI's exit 2, D90), not a damaged index."""


def check_indexed(state: IndexState, block: int) -> None:
    """BlockOutOfRange unless the index answers for `block`: up to its last block, from the
    block before the deployment (the empty books)."""
    if block > state.synced_block:
        raise BlockOutOfRange(f"the index reaches block {state.synced_block}, not {block}: sync it first")
    if block < state.deployment_block - 1:
        raise BlockOutOfRange(f"block {block} is before the deployment (block {state.deployment_block})")


def books_at(db: IndexDatabase, block: int | None = None) -> tuple[IndexState, Books]:
    """The books as of the end of `block` (default: the last indexed block)."""
    state = db.require_state()
    if block is None:
        block = state.synced_block
    check_indexed(state, block)
    books = Books(state.ledger, state.oracle)
    for e in stored_events(db, state, block):
        books.apply(e)
    return state, books


def holdings(books: Books, holder: str, live_only: bool = True) -> list[tuple[int, Record]]:
    """Certificates `holder` holds, by id."""
    found = [
        (int(k), c)
        for k, c in books.all("certificate").items()
        if c["holder"] == holder and (not live_only or c["status"] == CertificateStatus.LIVE)
    ]
    return sorted(found, key=lambda item: item[0])


def history(db: IndexDatabase, chain_id: int, entity: str, key: str) -> list[dict[str, Any]]:
    """Every stored change of one record, oldest first."""
    t = table_of(ChangeRecord)
    query = (
        select(t)
        .where(and_(t.c.chain_id == chain_id, t.c.entity == entity, t.c.key == key))
        .order_by(t.c.block_number, t.c.tx_index, t.c.log_index, t.c.seq)
    )
    with db.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


@dataclass(frozen=True)
class Merge:
    """Value one certificate gave another of its order (ERC-3525 `transferFrom(fromId, toId,
    value)`): where a merged-away certificate's value went, which its parent links do not show."""

    source: int
    target: int
    value: int
    block: int
    tx: str


def merges_in(events: Iterable[Event]) -> list[Merge]:
    """The merges among `events` (in chain order; all but TransferValue are passed over).

    A TransferValue between two certificates is also how a split funds the certificate it mints,
    so the event alone does not tell a merge: the contract emits one TransferValue as each
    certificate is minted (from 0 for a root, from its parent for a split), and any later one into
    it from another certificate is a merge."""
    funded: set[int] = set()
    found: list[Merge] = []
    for e in events:
        if e.name != "TransferValue":
            continue
        source, target = int(e.args["_fromTokenId"]), int(e.args["_toTokenId"])
        if source and target in funded:
            found.append(Merge(source, target, int(e.args["_value"]), e.block_number, e.tx_hash))
        funded.add(target)
    return found


def merges(db: IndexDatabase, state: IndexState, up_to: int | None = None) -> list[Merge]:
    """The merges the stored ledger events record, up to block `up_to` (decoding only the
    TransferValue rows)."""
    decoder = decoder_for(state)
    rows = db.events(state.chain_id, up_to, name="TransferValue", address=state.ledger)
    return merges_in(event_from_record(decoder, r) for r in rows)


@dataclass
class LineageNode:
    """A certificate, the certificates split from it, and the merges of its value into others."""

    certificate_id: int
    record: Record
    touch: Touch | None
    children: list[LineageNode] = field(default_factory=list)
    merged_into: list[Merge] = field(default_factory=list)

    def walk(self, depth: int = 0) -> Iterator[tuple[int, LineageNode]]:
        yield depth, self
        for child in self.children:
            yield from child.walk(depth + 1)


def lineage(
    books: Books, certificate_id: int, block: int | None = None, merged: Sequence[Merge] = ()
) -> LineageNode:
    """The tree from the root of `certificate_id` (following parent links) to every descendant, in
    `books` as of `block` (None: the index's last), which the message of an unknown id names: a
    certificate missing at one block may well exist later. Each node carries the `merged` (see
    `merges`, up to the same block) whose source it is; a merge stays within an order, so its
    target is in the tree too."""
    certs = books.all("certificate")
    if certificate_id not in certs:
        where = "in the index" if block is None else f"at block {block}"
        raise LookupError(f"no certificate {certificate_id} {where}")
    root = certificate_id
    seen = {root}
    while certs[root]["parent_id"]:
        root = int(certs[root]["parent_id"])
        if root in seen or root not in certs:
            raise LookupError(f"certificate {certificate_id} has a broken parent chain at {root}")
        seen.add(root)
    children: dict[int, list[int]] = {}
    for cid, cert in certs.items():
        children.setdefault(int(cert["parent_id"]), []).append(int(cid))

    given: dict[int, list[Merge]] = {}
    for m in merged:
        given.setdefault(m.source, []).append(m)

    def build(cid: int) -> LineageNode:
        kids = [build(k) for k in sorted(children.get(cid, []))]
        return LineageNode(cid, certs[cid], books.touch_of("certificate", cid), kids, given.get(cid, []))

    return build(root)
