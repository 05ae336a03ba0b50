"""Reorgs made on anvil across a payment: the index rolls back to the common ancestor and ends
equal, row for row and digest for digest, to a fresh replay of the surviving chain. Also: an index
left on a dead fork fails verify, and invoices freed by a cancellation across reorgs (D54)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from index_support import anvil_node, connect_node, forget_nonces, matured_workload, rpc, settle

from chain_client import audit, errors
from chain_client.audit_cli import FollowLines
from chain_client.chain import Chain
from chain_client.index.books import Books
from chain_client.index.db import IndexDatabase
from chain_client.index.models import CertificateRecord, ChangeRecord, EventRecord, OrderRecord, PaymentRecord
from chain_client.index.state import books_at, stored_events
from chain_client.index.sync import Indexer, SyncOptions
from chain_client.index.workload import DAY, FRESHNESS, Workload
from chain_client.models import CertificateStatus, OrderStatus
from chain_client.receipts import label_hash
from chain_client.transactions import TxResult

pytestmark = pytest.mark.anvil


@pytest.fixture
def chain() -> Iterator[Chain]:
    with anvil_node() as url:
        yield connect_node(url)


def _dump(db: IndexDatabase, chain_id: int) -> dict[str, list[dict[str, Any]]]:
    models: tuple[Any, ...] = (EventRecord, ChangeRecord, PaymentRecord, OrderRecord, CertificateRecord)
    return {m.__tablename__: db.rows(m, chain_id) for m in models}


def _settled(db: IndexDatabase) -> set[int]:
    _, books = books_at(db)
    return {int(k) for k, c in books.all("certificate").items() if c["status"] == CertificateStatus.SETTLED}


def _assert_equals_fresh_replay(
    chain: Chain, work: Any, db: IndexDatabase, digest: str, tmp_path: Path, until: int | None = None
) -> None:
    deployment = work.system.deployment
    fresh_db = IndexDatabase(tmp_path / "fresh.sqlite")
    fresh = audit.replay(chain, deployment, fresh_db, until=until)
    assert digest == fresh.digest
    assert _dump(db, deployment.chain_id) == _dump(fresh_db, deployment.chain_id)
    report = audit.verify(chain, deployment, db, block=until)
    assert report.ok, list(report.findings())


def test_anvil_reorg_across_a_payment_converges_to_a_fresh_replay(chain: Chain, tmp_path: Path) -> None:
    work = matured_workload(chain, seed=21)
    db = IndexDatabase(tmp_path / "live.sqlite")
    indexer = Indexer(chain, work.system.deployment, db)
    indexer.sync()
    due = work.due()
    settle(work, due[:2])
    indexer.sync()
    assert _settled(db) >= set(due[:2])

    # The settlement's block is replaced by an empty one; a different payment follows.
    rpc(chain, "anvil_reorg", 1, [])
    forget_nonces(chain)
    settle(work, due[2:4])
    status = indexer.sync()

    assert status.reorgs == 1
    assert _settled(db) & set(due[:2]) == set()
    assert _settled(db) >= set(due[2:4])
    _assert_equals_fresh_replay(chain, work, db, status.digest, tmp_path)


def test_a_follower_says_when_the_node_replaced_the_blocks_it_showed(chain: Chain, tmp_path: Path) -> None:
    """`audit sync --follow` printed a line only when the synced block moved: a reorg that replaced
    the head with another block of the same number passed unseen, digest changed and all."""
    work = matured_workload(chain, seed=23)
    indexer = Indexer(chain, work.system.deployment, IndexDatabase(tmp_path / "follow.sqlite"))
    lines = FollowLines()
    due = work.due()
    settle(work, due[:1])
    before = indexer.sync()
    [shown] = lines.after(before, indexer.rolled_back_to)
    assert shown.startswith(f"block {before.synced_block}: {before.events} events, digest {before.digest}")
    assert lines.after(indexer.sync(), indexer.rolled_back_to) == []  # nothing new: nothing said

    rpc(chain, "anvil_reorg", 1, [])  # the settlement's block replaced by an empty one
    after = indexer.sync()
    assert after.synced_block == before.synced_block and after.digest != before.digest
    ancestor = indexer.rolled_back_to
    assert ancestor is not None and work.system.deployment.deployment_block <= ancestor < before.synced_block
    said = lines.after(after, ancestor)
    assert said == [
        f"[yellow]a reorg: the node replaced blocks the index held; it rolled back to block {ancestor} "
        "(the newest it recorded that the node still has) and synced again[/] (1 since following began)",
        f"block {after.synced_block}: {after.events} events, "
        f"digest {after.digest} (blocks {after.deployment_block}..{after.synced_block})",
    ]


def test_snapshot_revert_to_a_longer_and_a_shorter_chain(chain: Chain, tmp_path: Path) -> None:
    work = matured_workload(chain, seed=22)
    db = IndexDatabase(tmp_path / "live.sqlite")
    indexer = Indexer(chain, work.system.deployment, db)
    indexer.sync()

    # Longer: the payment and two more blocks are reverted, then three other blocks are mined.
    due = work.due()
    snapshot = rpc(chain, "evm_snapshot")
    settle(work, due[:3])
    chain.advance_time(60)
    indexer.sync()
    assert _settled(db) >= set(due[:3])
    rpc(chain, "evm_revert", snapshot)
    forget_nonces(chain)
    chain.advance_time(600)
    settle(work, due[3:5])
    chain.advance_time(600)
    chain.advance_time(600)
    status = indexer.sync()
    assert status.reorgs == 1
    assert not _settled(db) & set(due[:3])
    assert _settled(db) >= set(due[3:5])
    _assert_equals_fresh_replay(chain, work, db, status.digest, tmp_path)

    # Shorter: the index is ahead of the node's new head until the node catches up.
    snapshot = rpc(chain, "evm_snapshot")
    for cert_id in due[:3]:
        settle(work, [cert_id])
    indexer.sync()
    assert _settled(db) >= set(due[:3])
    rpc(chain, "evm_revert", snapshot)
    forget_nonces(chain)
    chain.advance_time(60)
    status = indexer.sync()
    assert status.reorgs == 2
    assert status.synced_block == chain.w3.eth.block_number
    assert not _settled(db) & set(due[:3])
    (tmp_path / "fresh.sqlite").unlink()
    _assert_equals_fresh_replay(chain, work, db, status.digest, tmp_path)


def test_sync_keeps_its_confirmation_depth_while_following(chain: Chain, tmp_path: Path) -> None:
    work = matured_workload(chain, seed=23)
    db = IndexDatabase(tmp_path / "follow.sqlite")
    indexer = Indexer(chain, work.system.deployment, db, SyncOptions(confirmations=3))
    assert indexer.sync().synced_block == chain.w3.eth.block_number - 3
    due = work.due()
    polls: list[int] = []

    def stop() -> bool:
        polls.append(indexer.status().synced_block)
        if len(polls) < 4:
            settle(work, [due[len(polls)]])
            return False
        return True

    status = indexer.follow(poll_seconds=0.01, stop=stop)
    assert status is not None and status.synced_block == chain.w3.eth.block_number - 3
    assert polls == sorted(polls) and polls[-1] > polls[0]
    _assert_equals_fresh_replay(chain, work, db, status.digest, tmp_path, until=status.synced_block)


# ---------------------------------------------------------------------- an index left on a dead fork


def test_verify_finds_an_index_left_on_a_fork_the_same_transaction_was_mined_again_beside(
    chain: Chain, tmp_path: Path
) -> None:
    """A reorg re-mines the index's last transaction in another block: every record still equals
    the chain, but the index's block hashes, and so its digest, are of a block the node no longer
    has. Verify says so; a sync rolls back and the index then verifies."""
    work = Workload.deploy(chain, seed=24)
    work.open_order()
    result = work.system.ledger.open_order(
        work.issuers[0], **_order_terms(chain, work, label_hash("stale fork invoice"))
    )[1]
    raw = rpc(chain, "eth_getRawTransactionByHash", result.tx_hash)
    deployment = work.system.deployment
    db = IndexDatabase(tmp_path / "stale.sqlite")
    indexer = Indexer(chain, deployment, db)
    stale = indexer.sync()
    head = chain.w3.eth.block_number
    assert stale.synced_block == head == result.block_number

    rpc(chain, "anvil_reorg", 1, [[raw, 0]])
    assert chain.w3.eth.block_number == head
    replaced = "0x" + bytes(chain.w3.eth.get_block(head)["hash"]).hex()
    report = audit.verify(chain, deployment, db)
    assert not report.ok
    assert [(m.block, m.problem, m.other) for m in report.block_mismatches] == [
        (head, "block hash is not the node's", replaced)
    ]
    # Same transactions, same records: only the block tells.
    assert not report.differences and not report.violations and not report.digest_mismatches
    assert not report.event_mismatches

    status = indexer.sync()
    assert status.reorgs == 1 and status.digest != stale.digest
    _assert_equals_fresh_replay(chain, work, db, status.digest, tmp_path)


# ---------------------------------------------------------------------- invoices given back (D54)


def _order_terms(chain: Chain, work: Any, invoice: bytes) -> dict[str, Any]:
    now = chain.now()
    return {
        "payee": work.holders[0].address,
        "amount": 1_000_000,
        "maturity": now + 10 * DAY,
        "invoice_hash": invoice,
        "warehouse": work.warehouse,
        "goods_hash": work.goods,
        "expected_quantity": 100,
        "deadline": now + DAY,
    }


def _open(chain: Chain, work: Any, invoice: bytes) -> tuple[int, TxResult]:
    return work.system.ledger.open_order(work.issuers[0], **_order_terms(chain, work, invoice))  # type: ignore[no-any-return]


def _cancel(chain: Chain, work: Any, order_id: int) -> TxResult:
    chain.advance_time(DAY + FRESHNESS + 60)  # past the deadline and the freshness window (D26)
    return work.system.ledger.cancel_order(work.issuers[0], order_id)  # type: ignore[no-any-return]


@pytest.fixture
def flagged(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every breach the books flag from here on, in any Books (a sync clears a range's own)."""
    found: list[str] = []
    real = Books._violate

    def spy(self: Books, invariant: str, message: str, entity: str = "", key: Any = "") -> None:
        found.append(f"{invariant}: {message}")
        real(self, invariant, message, entity, key)

    monkeypatch.setattr(Books, "_violate", spy)
    return found


def test_a_cancelled_orders_invoice_opens_a_new_order_through_a_reloaded_index(
    chain: Chain, tmp_path: Path, flagged: list[str]
) -> None:
    """open -> cancel -> open again with the same invoice: no I5 finding, the index equals the chain
    (invoiceUsed true again), and an indexer that loads its books from the database after the
    cancellation keeps the rule (the cancelled order does not hold the invoice)."""
    work = Workload.deploy(chain, seed=25)
    deployment, ledger = work.system.deployment, work.system.ledger
    invoice = label_hash("an invoice financed, cancelled and financed again")
    db = IndexDatabase(tmp_path / "invoice.sqlite")
    first, _ = _open(chain, work, invoice)
    _cancel(chain, work, first)
    assert not ledger.invoice_used(invoice)
    audit.sync(chain, deployment, db)
    assert audit.verify(chain, deployment, db).ok

    second, _ = _open(chain, work, invoice)
    assert second != first and ledger.invoice_used(invoice)
    status = Indexer(chain, deployment, db).sync()  # books loaded from the database
    assert flagged == []
    report = audit.verify(chain, deployment, db)
    assert report.ok, list(report.findings())
    assert flagged == []
    _assert_equals_fresh_replay(chain, work, db, status.digest, tmp_path)
    # Still one open or confirmed order per invoice: a third is refused.
    with pytest.raises(errors.DuplicateInvoice):
        _open(chain, work, invoice)


def test_a_reorg_that_undoes_a_cancellation_gives_the_invoice_back_to_the_first_order(
    chain: Chain, tmp_path: Path, flagged: list[str]
) -> None:
    """The cancellation and the reopening are orphaned: the rollback undoes the reopening, then the
    cancellation, and the first order holds the invoice again. The chain then refuses a reopening
    and the books flag the orphaned one if it is applied again; cancelling on the new fork frees
    the invoice once more and the index ends equal to a fresh replay."""
    work = Workload.deploy(chain, seed=26)
    deployment, ledger = work.system.deployment, work.system.ledger
    invoice = label_hash("an invoice whose cancellation is reorged away")
    db = IndexDatabase(tmp_path / "live.sqlite")
    indexer = Indexer(chain, deployment, db)
    first, _ = _open(chain, work, invoice)
    indexer.sync()
    _cancel(chain, work, first)
    second, reopened = _open(chain, work, invoice)
    indexer.sync()
    orphan = next(
        e
        for e in stored_events(db, db.require_state())
        if e.name == "OrderOpened" and e.tx_hash == reopened.tx_hash
    )

    rpc(chain, "anvil_reorg", 2, [])  # the cancellation's block and the reopening's
    forget_nonces(chain)
    assert ledger.invoice_used(invoice)
    with pytest.raises(errors.DuplicateInvoice):
        _open(chain, work, invoice)
    status = indexer.sync()
    assert status.reorgs == 1
    state, books = indexer.open()
    order = books.get("order", first)
    assert order is not None and order["status"] == OrderStatus.OPEN
    assert books.get("order", second) is None
    assert audit.verify(chain, deployment, db).ok
    assert flagged == []
    books.copy().apply(orphan)
    assert flagged == [f"I5: invoice 0x{invoice.hex()} financed twice (order {second})"]
    flagged.clear()

    _cancel(chain, work, first)
    again, _ = _open(chain, work, invoice)
    status = indexer.sync()
    assert again == second and flagged == []
    _assert_equals_fresh_replay(chain, work, db, status.digest, tmp_path)


def test_tokens_sent_straight_to_the_ledger_are_a_note_not_an_i3_finding(
    chain: Chain, tmp_path: Path
) -> None:
    work = Workload.deploy(chain, seed=27)
    deployment = work.system.deployment
    _open(chain, work, label_hash("escrowed"))
    work.system.token.transfer(work.factors[0], deployment.ledger, 12_345)
    db = IndexDatabase(tmp_path / "surplus.sqlite")
    audit.replay(chain, deployment, db)
    report = audit.verify(chain, deployment, db)
    assert report.ok, list(report.findings())
    assert len(report.notes) == 1 and "12345 more than open escrow plus credits" in report.notes[0]


# ---------------------------------------------------------------------- review 2, session 6


def test_verify_asks_no_header_of_followed_blocks_without_events_and_none_above_its_block(
    chain: Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower stores a block row for the last block of every round, most without events; verify
    used to fetch a header for each (one per followed block), and a verify at a past block failed
    for a block above it that the node had just replaced (the follower not rolled back yet)."""
    from chain_client.index.source import Header, NodeSource

    work = Workload.deploy(chain, seed=25)
    deployment = work.system.deployment
    db = IndexDatabase(tmp_path / "follow.sqlite")
    indexer = Indexer(chain, deployment, db)
    for round_ in range(60):
        if round_ % 4 == 0:
            work.step()
        else:
            rpc(chain, "evm_mine")
        indexer.sync()
    state = db.require_state()
    blocks = db.blocks(state.chain_id)
    assert sum(1 for b in blocks if not b.events) > 30

    asked: list[int] = []
    real = NodeSource.headers

    def headers(self: NodeSource, numbers: Any) -> dict[int, Header | None]:
        asked.extend(numbers)
        return real(self, numbers)

    monkeypatch.setattr(NodeSource, "headers", headers)
    report = audit.verify(chain, deployment, db)
    assert report.ok, list(report.findings())[:5]
    assert len(asked) <= 1, asked

    past = next(b for b in reversed(blocks) if not b.events and b.number < state.synced_block - 10)
    rpc(chain, "anvil_reorg", 1, [])
    asked.clear()
    report = audit.verify(chain, deployment, db, block=past.number)
    assert report.ok, list(report.findings())[:5]
    assert asked == [past.number]  # the highest stored block up to it: no log vouches for it
    assert not audit.verify(chain, deployment, db).ok  # at its tip, the replaced block is found
