"""The index on a real PostgreSQL server (a throwaway cluster started here): lossless uint256,
the same digest and rows as SQLite, verify, tamper detection and reorg rollback."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from index_support import anvil_node, connect_node, forget_nonces, matured_workload, rpc, settle
from pg import PgCluster, pg_cluster

from chain_client import audit
from chain_client.chain import Chain
from chain_client.index.db import IndexDatabase
from chain_client.index.models import (
    UINT256_MAX,
    CertificateRecord,
    ChangeRecord,
    EventRecord,
    OrderRecord,
    ParticipantRecord,
    PaymentRecord,
)
from chain_client.index.sync import Indexer, SyncOptions
from chain_client.index.workload import DAY
from chain_client.receipts import label_hash

pytestmark = pytest.mark.anvil

HUGE = 2**100 + 12_345  # well above 2**63, within the ledger's uint128 amounts
_names = count()


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with pg_cluster() as running:
        yield running


@pytest.fixture
def pg(cluster: PgCluster) -> Iterator[IndexDatabase]:
    db = IndexDatabase(cluster.create_database(f"index_{next(_names)}"))
    yield db
    db.close()


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    with anvil_node() as url:
        yield connect_node(url)


@pytest.fixture(scope="module")
def work(chain: Chain) -> Any:
    """A lifecycle with an order, certificates and payments of more than 2**63 token units."""
    work = matured_workload(chain, seed=31)
    ledger, token = work.system.ledger, work.system.token
    issuer, payee = work.issuers[0], work.holders[0]
    work.send(token.mint(work.admin, issuer.address, HUGE))
    now = chain.now()
    order_id, result = ledger.open_order(
        issuer,
        payee=payee.address,
        amount=HUGE,
        maturity=now + 30 * DAY,
        invoice_hash=label_hash("huge invoice"),
        warehouse=work.warehouse,
        goods_hash=work.goods,
        expected_quantity=1_000,
        deadline=now + DAY,
    )
    work.send(result)
    root = work.confirm_order(order_id, 1_000)
    work.send(ledger.split_to(payee, root, work.holders[1].address, 2**80)[1])
    work.run(40)
    work.huge_order = order_id
    return work


def _dump(db: IndexDatabase, chain_id: int) -> dict[str, list[dict[str, Any]]]:
    models: tuple[Any, ...] = (
        EventRecord,
        ChangeRecord,
        PaymentRecord,
        OrderRecord,
        CertificateRecord,
        ParticipantRecord,
    )
    return {m.__tablename__: db.rows(m, chain_id) for m in models}


def test_uint_columns_are_numeric_78_and_lossless(pg: IndexDatabase) -> None:
    pg.create()
    columns: tuple[str, ...] = (
        "chain_id",
        "certificate_id",
        "order_id",
        "holder",
        "value",
        "parent_id",
        "depth",
        "maturity",
    )
    columns += ("status", "frozen", "last_block", "last_tx", "last_log_index", "last_event")
    values = [0, 2**63 - 1, 2**63, 2**64, HUGE, UINT256_MAX]
    rows = [(1, i + 1, 1, "0x" + "11" * 20, v, 0, 0, 0, 1, False, 0, "", 0, "") for i, v in enumerate(values)]
    with pg.engine.begin() as conn:
        pg._bulk(conn, CertificateRecord, columns, rows, upsert=True)
        kind = conn.exec_driver_sql(
            "SELECT data_type, numeric_precision, numeric_scale FROM information_schema.columns "
            "WHERE table_name = 'certificate' AND column_name = 'value'"
        ).one()
        ordered = [int(v) for (v,) in conn.exec_driver_sql("SELECT value FROM certificate ORDER BY value")]
    assert tuple(kind) == ("numeric", 78, 0)
    assert ordered == values
    assert sorted(r["value"] for r in pg.rows(CertificateRecord, 1)) == values


def test_sqlite_and_postgres_give_the_same_digest_and_rows(
    chain: Chain, work: Any, pg: IndexDatabase, tmp_path: Path
) -> None:
    deployment = work.system.deployment
    lite = IndexDatabase(tmp_path / "index.sqlite")
    on_sqlite = audit.replay(chain, deployment, lite)
    on_postgres = audit.replay(chain, deployment, pg)
    assert on_postgres.digest == on_sqlite.digest
    assert on_postgres.events == on_sqlite.events
    assert _dump(pg, deployment.chain_id) == _dump(lite, deployment.chain_id)
    for db in (lite, pg):
        certificates = db.rows(CertificateRecord, deployment.chain_id)
        of_huge = [r["value"] for r in certificates if r["order_id"] == work.huge_order]
        assert sum(of_huge) == HUGE and max(of_huge) > 2**63
        escrowed = {r["escrowed"] for r in db.rows(OrderRecord, deployment.chain_id)}
        assert HUGE in escrowed
        assert any(r["amount"] == HUGE for r in db.rows(PaymentRecord, deployment.chain_id))
    report = audit.verify(chain, deployment, pg)
    assert report.ok, list(report.findings())
    # The checked fold of state, digest and export reads PostgreSQL's rows as SQLite's.
    assert audit.checked_books_at(pg)[2] == audit.checked_books_at(lite)[2] == on_sqlite.digest


def test_a_failed_replay_into_postgres_leaves_an_empty_index_that_sync_fills(
    chain: Chain, work: Any, pg: IndexDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay's ranges share one transaction: a write failing on the third range (in the forked
    writer, which inherits the patch) takes back the two before it as well. The index is left at
    the deployment block with no rows, and a sync from there gives the replay's digest."""
    deployment = work.system.deployment
    reference = audit.replay(chain, deployment, pg)
    calls = {"n": 0}
    real = IndexDatabase.add_range

    def crash_on_third(self: IndexDatabase, *args: Any) -> str:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk gone")
        return real(self, *args)

    monkeypatch.setattr(IndexDatabase, "add_range", crash_on_third)
    with pytest.raises(OSError, match="disk gone"):
        audit.replay(chain, deployment, pg, SyncOptions(initial_range=8, max_range=8))
    monkeypatch.undo()
    state = pg.require_state()
    assert (state.synced_block, state.events) == (deployment.deployment_block - 1, 0)
    for model in (EventRecord, ChangeRecord, PaymentRecord, CertificateRecord, OrderRecord):
        assert pg.count(model, deployment.chain_id) == 0
    assert audit.sync(chain, deployment, pg, until=reference.synced_block).digest == reference.digest


def test_a_tampered_row_in_postgres_fails_verify_at_that_row(
    chain: Chain, work: Any, pg: IndexDatabase
) -> None:
    deployment = work.system.deployment
    audit.replay(chain, deployment, pg)
    victim = max(pg.rows(CertificateRecord, deployment.chain_id), key=lambda r: r["value"])
    with pg.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE certificate SET value = value + 1 WHERE certificate_id = %s", (victim["certificate_id"],)
        )
    report = audit.verify(chain, deployment, pg)
    assert [
        (d.key, d.field, d.index_value, d.other_value) for d in report.differences if d.against == "chain"
    ] == [(victim["certificate_id"], "value", victim["value"] + 1, victim["value"])]


def test_a_reorg_rolls_back_in_postgres_too(
    chain: Chain, work: Any, pg: IndexDatabase, tmp_path: Path
) -> None:
    deployment = work.system.deployment
    chain.advance_time(31 * DAY)
    audit.sync(chain, deployment, pg)
    due = work.due()
    settle(work, due[:1])
    audit.sync(chain, deployment, pg)
    rpc(chain, "anvil_reorg", 1, [])
    forget_nonces(chain)
    settle(work, due[1:3])
    status = audit.sync(chain, deployment, pg)
    assert status.reorgs == 1
    fresh = audit.replay(chain, deployment, IndexDatabase(tmp_path / "fresh.sqlite"))
    assert status.digest == fresh.digest
    assert _dump(pg, deployment.chain_id) == _dump(
        IndexDatabase(tmp_path / "fresh.sqlite"), deployment.chain_id
    )
    assert audit.verify(chain, deployment, pg).ok


def test_two_indexers_on_one_postgres_database_do_not_undo_each_others_ranges(
    chain: Chain, work: Any, pg: IndexDatabase, tmp_path: Path
) -> None:
    """The cursor moves only from where the writer read it (a conditional UPDATE): a stale indexer's
    range is rolled back, and it reloads and goes on from the other's cursor."""
    deployment = work.system.deployment
    options = SyncOptions(initial_range=5, max_range=5)
    stale = Indexer(chain, deployment, pg, options)
    stale.open()
    head = audit.sync(chain, deployment, pg)
    assert stale.sync(deployment.deployment_block + 20).synced_block == head.synced_block
    assert pg.require_state().synced_block == head.synced_block
    fresh = audit.replay(chain, deployment, IndexDatabase(tmp_path / "fresh.sqlite"), until=head.synced_block)
    assert pg.require_state().digest == fresh.digest
    assert _dump(pg, deployment.chain_id) == _dump(
        IndexDatabase(tmp_path / "fresh.sqlite"), deployment.chain_id
    )
    assert audit.verify(chain, deployment, pg).ok


def test_a_range_and_a_rollback_written_at_once_do_not_deadlock(
    chain: Chain, work: Any, pg: IndexDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync's range and a rollback take the cursor first, both: the second waits for the first.
    Before, a range wrote its rows and records first and the cursor last, a rollback the other way
    round, and PostgreSQL broke the deadlock by failing one of them (not with CursorMoved)."""
    import threading
    import time

    from chain_client.index.db import materialise

    deployment = work.system.deployment
    middle = (deployment.deployment_block + chain.w3.eth.block_number) // 2
    Indexer(chain, deployment, pg).sync(middle)
    state = pg.require_state()
    books = pg.load_books(state)
    touched = {(entity, key) for entity in ("order", "certificate") for key in books.all(entity)}
    records, gone = materialise(books, touched, state.chain_id)
    cursor = {"synced_block": state.synced_block, "synced_hash": state.synced_hash}
    expect = (state.synced_block, state.synced_hash)

    ready = threading.Event()
    real = IndexDatabase._move_cursor

    def held(self: IndexDatabase, conn: Any, chain_id: int, values: Any, where: Any) -> None:
        if threading.current_thread() is not threading.main_thread() and not ready.is_set():
            ready.set()  # the range's transaction is under way: the rollback starts now
            time.sleep(2.5)
        real(self, conn, chain_id, values, where)

    monkeypatch.setattr(IndexDatabase, "_move_cursor", held)
    outcome: dict[str, Any] = {}

    def follow() -> None:
        try:
            outcome["status"] = Indexer(chain, deployment, pg, SyncOptions(initial_range=100_000)).sync()
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    follower = threading.Thread(target=follow)
    follower.start()
    assert ready.wait(60)
    pg.write_rollback(state.chain_id, state.synced_block, records, gone, cursor, expect)
    follower.join(60)
    assert "error" not in outcome, outcome["error"]
    assert outcome["status"].synced_block == pg.require_state().synced_block > middle
    assert audit.verify(chain, deployment, pg).ok
