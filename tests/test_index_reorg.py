"""Reorgs made on anvil across a payment: the index rolls back to the common ancestor and ends
equal, row for row and digest for digest, to a fresh replay of the surviving chain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from index_support import anvil_node, connect_node, forget_nonces, matured_workload, rpc, settle

from chain_client import audit
from chain_client.chain import Chain
from chain_client.index.db import IndexDatabase
from chain_client.index.models import CertificateRecord, ChangeRecord, EventRecord, OrderRecord, PaymentRecord
from chain_client.index.state import books_at
from chain_client.index.sync import Indexer, SyncOptions
from chain_client.models import CertificateStatus

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
