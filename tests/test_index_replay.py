"""Replay and verify against a random lifecycle of hundreds of operations on anvil.

One chain for the module: a seeded workload on the system under audit, and a look-alike deployment
of the same contracts doing the same kinds of things beside it (which the index must ignore).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_utils import keccak, to_checksum_address
from index_support import ROOT, anvil_node, connect_node
from typer.testing import CliRunner

from certledger_main import build_app
from chain_client import audit, audit_cli
from chain_client.chain import Chain
from chain_client.errors import ManifestError, NodeUnavailable
from chain_client.events import EventDecoder
from chain_client.index import sync as sync_module
from chain_client.index.db import AnotherDeploymentsIndex, IndexDatabase, IndexDatabaseError, rebuilding
from chain_client.index.decode import LogDecoder, RawLog
from chain_client.index.export import digest_at
from chain_client.index.models import (
    BlockRecord,
    CertificateRecord,
    ChangeRecord,
    EventRecord,
    OrderRecord,
    PaymentRecord,
)
from chain_client.index.source import NodeSource, PendingLogs, RpcRequestError
from chain_client.index.state import books_at, history, holdings, lineage
from chain_client.index.sync import Indexer, IndexInconsistent, SyncOptions, SyncStatus
from chain_client.index.workload import DAY, Workload
from chain_client.index.writer import ProcessWriter, can_fork
from chain_client.models import CertificateStatus, OrderStatus

pytestmark = pytest.mark.anvil

OPERATIONS = 300


@dataclass
class Lifecycle:
    url: str
    chain: Chain
    work: Workload
    lookalike: Workload
    manifest: Path


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lifecycle]:
    with anvil_node() as url:
        chain = connect_node(url)
        work = Workload.deploy(chain, seed=11)
        lookalike = Workload.deploy(chain, seed=12)
        for i in range(OPERATIONS):
            work.step()
            if i % 8 == 0:
                lookalike.step()
        # However the dice fell, end with payments: everything matures and is paid.
        chain.advance_time(13 * DAY)
        while due := work.due()[:64]:
            work.send(work.system.ledger.settle(work.relayer, due))
        manifest = tmp_path_factory.mktemp("lifecycle") / "deployment.json"
        work.system.deployment.save(manifest)
        yield Lifecycle(url, chain, work, lookalike, manifest)


@pytest.fixture(scope="module")
def replayed(
    lifecycle: Lifecycle, tmp_path_factory: pytest.TempPathFactory
) -> tuple[IndexDatabase, SyncStatus]:
    db = IndexDatabase(tmp_path_factory.mktemp("replay") / "index.sqlite")
    return db, audit.replay(lifecycle.chain, lifecycle.work.system.deployment, db)


def _fresh_replay(lifecycle: Lifecycle, path: Path) -> IndexDatabase:
    db = IndexDatabase(path)
    audit.replay(lifecycle.chain, lifecycle.work.system.deployment, db)
    return db


def _dump(db: IndexDatabase, chain_id: int) -> dict[str, list[dict[str, Any]]]:
    models: Sequence[Any] = (EventRecord, ChangeRecord, PaymentRecord, OrderRecord, CertificateRecord)
    return {m.__tablename__: db.rows(m, chain_id) for m in models}


# ---------------------------------------------------------------------- replay equals the chain


def test_replay_equals_the_live_state(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus]
) -> None:
    db, status = replayed
    done = sum(n for op, n in lifecycle.work.stats.items() if ":skipped" not in op)
    assert done >= OPERATIONS, lifecycle.work.stats
    assert status.events >= lifecycle.work.events
    report = audit.verify(lifecycle.chain, lifecycle.work.system.deployment, db)
    assert report.ok, list(report.findings())
    # No note either: the ledger holds exactly the open escrow plus the unwithdrawn credits.
    assert report.notes == [], report.notes
    # And independently of verify's own view reader: the ledger client's reads at the head.
    ledger = lifecycle.work.system.ledger
    _, books = books_at(db)
    orders, certificates, offers = ledger.counts()
    assert (len(books.all("order")), len(books.all("certificate")), len(books.all("offer"))) == (
        orders,
        certificates,
        offers,
    )
    for cert_id in range(1, certificates + 1):
        chain_cert, ours = ledger.certificate(cert_id), books.get("certificate", cert_id)
        assert ours is not None
        assert (ours["holder"], ours["value"], ours["parent_id"], ours["status"], ours["frozen"]) == (
            chain_cert.holder,
            chain_cert.value,
            chain_cert.parent_id,
            chain_cert.status,
            chain_cert.frozen,
        ), cert_id
    for order_id in range(1, orders + 1):
        chain_order, mine = ledger.order(order_id), books.get("order", order_id)
        assert mine is not None
        assert (mine["status"], mine["escrowed"], mine["paid"], mine["refunded"]) == (
            chain_order.status,
            chain_order.escrowed,
            chain_order.paid,
            chain_order.refunded,
        ), order_id
    kinds = {r["kind"] for r in db.rows(PaymentRecord, status.chain_id)}
    assert {"escrow", "settlement"} <= kinds
    assert ("discount" in kinds) == (lifecycle.work.stats["buy"] > 0)


def test_state_at_past_blocks_equals_the_contracts_then(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], tmp_path: Path
) -> None:
    db, status = replayed
    first, last = status.deployment_block, status.synced_block
    for block in (first + 5, (first + last) // 3, 2 * (first + last) // 3):
        report = audit.verify(lifecycle.chain, lifecycle.work.system.deployment, db, block=block)
        assert report.ok, (block, list(report.findings()))
        _, books = books_at(db, block)
        assert report.checked["certificate"] == len(books.all("certificate"))
        # The digest as of that block, stored and recomputed, as an export at that block names it.
        expected = audit.export(db, tmp_path / str(block), block).digest
        assert report.digest == report.recomputed_digest == expected != status.digest


def test_index_decoder_agrees_with_the_clients_event_decoder(lifecycle: Lifecycle) -> None:
    deployment = lifecycle.work.system.deployment
    w3 = lifecycle.chain.w3
    ours = LogDecoder.for_contracts(
        ((deployment.ledger, "CertificateLedger"), (deployment.oracle, "ReceiptOracle"))
    )
    theirs: EventDecoder = lifecycle.work.system.decoder
    logs = w3.eth.get_logs(
        {"fromBlock": deployment.deployment_block, "address": [deployment.ledger, deployment.oracle]}
    )
    assert len(logs) > 500
    for log in logs:
        expected = theirs.decode_log(log)
        found = ours.decode(RawLog.from_web3(log))
        assert expected is not None and found is not None
        assert found.name == expected.name
        assert found.args == {k: _as_index_value(v) for k, v in expected.args.items()}


def _as_index_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, list | tuple):
        return tuple(_as_index_value(v) for v in value)
    return value


# ---------------------------------------------------------------------- idempotence, resumption


def test_replaying_twice_changes_nothing(lifecycle: Lifecycle, tmp_path: Path) -> None:
    db = _fresh_replay(lifecycle, tmp_path / "twice.sqlite")
    deployment = lifecycle.work.system.deployment
    first = _dump(db, deployment.chain_id)
    again = audit.replay(lifecycle.chain, deployment, db)
    assert _dump(db, deployment.chain_id) == first
    # A sync of an index that is already at the head adds nothing either.
    synced = audit.sync(lifecycle.chain, deployment, db)
    assert synced.digest == again.digest
    assert _dump(db, deployment.chain_id) == first


def test_the_indexer_begins_no_second_index_beside_another_chains(
    lifecycle: Lifecycle, tmp_path: Path
) -> None:
    """The API's follower and `serve` sync through Indexer.open: an index of another chain in the
    same database is refused there, not joined by a second deployment's rows."""
    path = tmp_path / "other-chain.sqlite"
    _fresh_replay(lifecycle, path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE index_state SET chain_id = 1")
    before = path.read_bytes()
    with pytest.raises(AnotherDeploymentsIndex, match="indexes another deployment: chain 1"):
        Indexer(lifecycle.chain, lifecycle.work.system.deployment, IndexDatabase(path)).open()
    assert path.read_bytes() == before


def test_small_adaptive_ranges_give_the_same_index(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], tmp_path: Path
) -> None:
    """A node that refuses getLogs over more than 5 blocks, synced in several calls."""
    deployment = lifecycle.work.system.deployment
    db = IndexDatabase(tmp_path / "ranges.sqlite")
    indexer = Indexer(lifecycle.chain, deployment, db, SyncOptions(initial_range=64))
    indexer.source = _RangeLimited(lifecycle.chain, limit=5)
    reference = replayed[1]
    for until in (
        deployment.deployment_block + 10,
        (deployment.deployment_block + reference.synced_block) // 2,
    ):
        assert indexer.sync(until).synced_block == until
    status = indexer.sync(reference.synced_block)
    assert status.digest == reference.digest
    assert indexer._range <= 5
    assert _dump(db, deployment.chain_id) == _dump(replayed[0], deployment.chain_id)


def test_a_replay_that_must_retry_commits_what_it_has_and_goes_on(
    lifecycle: Lifecycle,
    replayed: tuple[IndexDatabase, SyncStatus],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replay writes its ranges in one transaction per pipeline run. A getLogs refused after
    ranges were handed over ends the run: those ranges are committed with their records and the
    cursor, and the next run goes on from there. Several runs give the same index as one."""
    deployment = lifecycle.work.system.deployment
    reference = replayed[1]
    closed: list[bool] = []
    real_close = Indexer._close

    def close(self: Indexer, *args: Any) -> None:
        closed.append(self._unsaved is not None)
        real_close(self, *args)

    monkeypatch.setattr(Indexer, "_close", close)
    db = IndexDatabase(tmp_path / "retried.sqlite")
    with rebuilding(db) as fresh:
        indexer = Indexer(lifecycle.chain, deployment, fresh, SyncOptions(initial_range=4), bulk_load=True)
        indexer.source = _RangeLimited(lifecycle.chain, limit=6)
        status = indexer.sync(reference.synced_block)
        fresh.create_indexes(missing_only=False)
    assert closed.count(True) >= 3  # runs that committed ranges
    assert status.digest == reference.digest
    assert db.require_state().digest == reference.digest
    assert _dump(db, deployment.chain_id) == _dump(replayed[0], deployment.chain_id)


def _crash_on_third_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """The third range's write fails after its rows went in (a forked writer inherits the patch)."""
    calls = {"n": 0}
    real = IndexDatabase.add_range

    def crash_on_third(self: IndexDatabase, *args: Any) -> str:
        digest = real(self, *args)
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk gone")
        return digest

    monkeypatch.setattr(IndexDatabase, "add_range", crash_on_third)


def test_a_failed_replay_leaves_the_previous_index_as_it_was(
    lifecycle: Lifecycle,
    replayed: tuple[IndexDatabase, SyncStatus],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replay builds a new file and swaps it in only when complete. Its writer is a forked child
    (which inherits this patch): a failure on the third range reaches the replay as the same
    exception, the index it was replacing is untouched, and no half-built file is left behind.
    A replay after that succeeds and equals the reference."""
    # Earlier tests leave idle daemon threads in this process (a TestClient's portal, AnyIO's
    # workers), which would make the replay write without forking; this test is about the forked
    # writer, so it forks regardless (those threads hold no lock the child needs).
    monkeypatch.setattr(sync_module, "can_fork", lambda: True)
    forked: list[ProcessWriter] = []

    def fork(*args: Any) -> ProcessWriter:
        forked.append(ProcessWriter(*args))
        return forked[-1]

    monkeypatch.setattr(sync_module, "ProcessWriter", fork)
    reference_db, reference = replayed
    deployment = lifecycle.work.system.deployment
    path = tmp_path / "previous.sqlite"
    db = IndexDatabase(path)
    audit.replay(lifecycle.chain, deployment, db, until=deployment.deployment_block + 40)
    before = _dump(db, deployment.chain_id)
    _crash_on_third_range(monkeypatch)
    with pytest.raises(OSError, match="disk gone"):
        audit.replay(lifecycle.chain, deployment, db, SyncOptions(initial_range=16, max_range=16))
    assert forked, "the replay wrote in a forked child"
    monkeypatch.undo()
    assert db.require_state().synced_block == deployment.deployment_block + 40
    assert _dump(db, deployment.chain_id) == before
    assert sorted(f.name for f in tmp_path.iterdir() if "rebuilding" in f.name) == []
    status = audit.replay(lifecycle.chain, deployment, db, until=reference.synced_block)
    assert status.digest == reference.digest
    assert _dump(db, status.chain_id) == _dump(reference_db, status.chain_id)
    # The swapped-in file is an ordinary WAL database that a sync goes on with.
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (
        audit.sync(lifecycle.chain, deployment, db, until=reference.synced_block).digest == reference.digest
    )


def test_a_replay_with_another_thread_running_writes_without_forking_and_agrees(
    lifecycle: Lifecycle,
    replayed: tuple[IndexDatabase, SyncStatus],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child forked while another thread holds a lock (stdout's, a progress bar's) can hang on
    it; with a thread running, the replay writes in its own process and gets the same books."""
    reference_db, reference = replayed
    deployment = lifecycle.work.system.deployment
    forked: list[object] = []
    monkeypatch.setattr(sync_module, "ProcessWriter", lambda *args: forked.append(args))
    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=True)
    other.start()
    try:
        assert not can_fork()
        db = IndexDatabase(tmp_path / "threaded.sqlite")
        status = audit.replay(lifecycle.chain, deployment, db, until=reference.synced_block)
    finally:
        release.set()
        other.join()
    assert status.digest == reference.digest
    assert _dump(db, status.chain_id) == _dump(reference_db, status.chain_id)
    assert forked == []


def test_the_replay_progress_bar_starts_no_thread() -> None:
    """The CLI's progress bar refreshes on each status rather than from rich's refresh thread, so
    the replay under it may still fork its writer."""
    before = threading.active_count()
    with audit_cli._progress("replay") as update:
        assert threading.active_count() == before
        update(
            SyncStatus(1, deployment_block=1, synced_block=5, target_block=9, events=3, digest="", reorgs=0)
        )
        assert threading.active_count() == before


def test_a_replay_does_not_replace_a_file_that_is_not_an_index(lifecycle: Lifecycle, tmp_path: Path) -> None:
    """A --db mistyped as another application's SQLite database, or as any other file, was replaced
    by the rebuilt index; an empty file and an index may still be replaced."""
    deployment = lifecycle.work.system.deployment
    other = tmp_path / "crm.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
        conn.execute("INSERT INTO customers VALUES ('kept')")
    conn.close()
    before = other.read_bytes()
    with pytest.raises(IndexDatabaseError, match="not an index \\(tables customers\\)"):
        audit.replay(lifecycle.chain, deployment, IndexDatabase(other), until=deployment.deployment_block + 5)
    assert other.read_bytes() == before
    text = tmp_path / "notes.txt"
    text.write_text("not a database, and long enough to be read as one" * 4, "utf-8")
    with pytest.raises(IndexDatabaseError, match="not a SQLite database"):
        audit.replay(lifecycle.chain, deployment, IndexDatabase(text), until=deployment.deployment_block + 5)
    assert text.read_text("utf-8").startswith("not a database")
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    audit.replay(lifecycle.chain, deployment, IndexDatabase(empty), until=deployment.deployment_block + 5)
    again = audit.replay(
        lifecycle.chain, deployment, IndexDatabase(empty), until=deployment.deployment_block + 5
    )
    assert again.synced_block == deployment.deployment_block + 5


def test_a_killed_replays_half_built_file_is_removed_by_the_next(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], tmp_path: Path
) -> None:
    """A replay killed outright cannot delete its half-built file; the next replay of the same index
    does, when the process that made it is gone, and leaves one of a live process alone."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(done.stdout)
    path = tmp_path / "index.sqlite"
    abandoned = tmp_path / f"index.sqlite.rebuilding-{dead}"
    abandoned.write_bytes(b"half a database")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        running = tmp_path / f"index.sqlite.rebuilding-{alive.pid}"
        running.write_bytes(b"being built")
        try:
            status = audit.replay(lifecycle.chain, lifecycle.work.system.deployment, IndexDatabase(path))
        finally:
            alive.kill()
    assert status.digest == replayed[1].digest
    assert not abandoned.exists()
    assert running.exists()


class _RangeLimited(NodeSource):
    def __init__(self, chain: Chain, limit: int) -> None:
        super().__init__(chain)
        self.limit = limit

    def request_logs(self, first: int, last: int, addresses: Sequence[str]) -> PendingLogs:
        if last - first + 1 > self.limit:
            error = RpcRequestError(f"eth_getLogs: range {last - first + 1} over the limit of {self.limit}")
            return PendingLogs(lambda: _raise(error))
        return super().request_logs(first, last, addresses)


def _raise(error: Exception) -> list[RawLog]:
    raise error


def test_a_killed_sync_resumes_with_no_gap_and_no_duplicate(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], tmp_path: Path
) -> None:
    path = tmp_path / "killed.sqlite"
    reference = replayed[1]
    command = [
        str(Path(sys.executable).parent / "certledger"),
        "audit",
        "sync",
        "--rpc-url",
        lifecycle.url,
        "--manifest",
        str(lifecycle.manifest),
        "--db",
        str(path),
        "--max-range",
        "4",
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    halfway = (reference.deployment_block + reference.synced_block) // 2
    reached = _wait_for_block(path, halfway, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read() if process.stderr else ""
    assert reference.deployment_block <= reached < reference.synced_block

    db = IndexDatabase(path)
    status = audit.sync(lifecycle.chain, lifecycle.work.system.deployment, db)
    assert status.digest == reference.digest
    assert status.events == reference.events
    events = db.rows(EventRecord, status.chain_id)
    assert len(events) == len({(e["tx_hash"], e["log_index"]) for e in events}) == reference.events
    assert _dump(db, status.chain_id) == _dump(replayed[0], status.chain_id)
    assert audit.verify(lifecycle.chain, lifecycle.work.system.deployment, db).ok


def test_a_follower_outlives_a_locked_database_and_catches_up(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], tmp_path: Path
) -> None:
    """Another process holds the index's write lock: the follower's round fails (SQLite's busy
    timeout), is reported, and the next round, once the lock is gone, indexes everything."""
    path = tmp_path / "follow.sqlite"
    reference = replayed[1]
    indexer = Indexer(lifecycle.chain, lifecycle.work.system.deployment, IndexDatabase(path))
    indexer.sync(until=(reference.deployment_block + reference.synced_block) // 2)
    locker = sqlite3.connect(path)
    locker.execute("BEGIN EXCLUSIVE")
    errors: list[Exception] = []
    statuses: list[SyncStatus] = []

    def stop() -> bool:
        if errors and locker.in_transaction:
            locker.rollback()
        return bool(errors and statuses)

    last = indexer.follow(poll_seconds=0.01, stop=stop, on_status=statuses.append, on_error=errors.append)
    locker.close()
    assert len(errors) == 1 and "locked" in str(errors[0]), errors
    assert last is not None and last == statuses[-1]
    assert (last.synced_block, last.digest) == (reference.synced_block, reference.digest)


def test_a_range_that_fails_half_written_leaves_nothing_behind(
    lifecycle: Lifecycle,
    replayed: tuple[IndexDatabase, SyncStatus],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The crash lands after all of a range's rows, records and cursor went in, before the commit:
    the transaction takes all of it back, and the next sync redoes the whole range."""
    reference = replayed[1]
    deployment = lifecycle.work.system.deployment
    db = IndexDatabase(tmp_path / "crash.sqlite")
    indexer = Indexer(lifecycle.chain, deployment, db, SyncOptions(initial_range=16, max_range=16))
    indexer.sync((reference.deployment_block + reference.synced_block) // 3)
    before = db.require_state()
    _crash_on_third_range(monkeypatch)
    with pytest.raises(OSError, match="disk gone"):
        indexer.sync()
    monkeypatch.undo()
    crashed = db.require_state()
    assert crashed.synced_block == before.synced_block + 2 * 16
    assert db.count(EventRecord, crashed.chain_id) == crashed.events
    assert max(e["block_number"] for e in db.rows(EventRecord, crashed.chain_id)) <= crashed.synced_block
    status = indexer.sync(reference.synced_block)
    assert status.digest == reference.digest
    assert _dump(db, status.chain_id) == _dump(replayed[0], status.chain_id)


def _wait_for_block(path: Path, block: int, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
                row = conn.execute("SELECT synced_block FROM index_state").fetchone()
        except sqlite3.OperationalError:
            row = None
        if row is not None and row[0] >= block:
            return int(row[0])
        time.sleep(0.01)
    raise AssertionError("the sync never got halfway")


# ---------------------------------------------------------------------- the look-alike


def test_a_look_alike_contract_emitting_the_same_events_is_ignored(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], tmp_path: Path
) -> None:
    db, status = replayed
    other = lifecycle.lookalike.system.deployment
    their_logs = lifecycle.chain.w3.eth.get_logs(
        {"fromBlock": other.deployment_block, "address": other.ledger}
    )
    assert their_logs, "the look-alike emitted nothing"
    addresses = {e["address"] for e in db.rows(EventRecord, status.chain_id)}
    ours = lifecycle.work.system.deployment
    assert addresses == {ours.ledger, ours.oracle}
    # Indexed on its own, the look-alike gets books and a digest of its own.
    theirs = audit.replay(lifecycle.chain, other, IndexDatabase(tmp_path / "lookalike.sqlite"))
    assert theirs.digest != status.digest


# ---------------------------------------------------------------------- tampering


def _sql(db: IndexDatabase, statement: str, *params: Any) -> None:
    with db.engine.begin() as conn:
        conn.exec_driver_sql(statement, params)


def _a_moved_certificate(db: IndexDatabase) -> dict[str, Any]:
    _, books = books_at(db)
    for cert_id, cert in sorted(books.all("certificate").items()):
        touch = books.touch_of("certificate", cert_id)
        if cert["parent_id"] and cert["value"] and touch is not None:
            return {"certificate_id": cert_id, **cert, "touch": touch}
    raise AssertionError("no split certificate in the lifecycle")


def test_a_tampered_holder_fails_verify_at_that_certificate(lifecycle: Lifecycle, tmp_path: Path) -> None:
    db = _fresh_replay(lifecycle, tmp_path / "holder.sqlite")
    cert = _a_moved_certificate(db)
    stranger = "0x" + "5A" * 20
    _sql(
        db,
        "UPDATE certificate SET holder = ? WHERE certificate_id = ?",
        stranger,
        f"{cert['certificate_id']:078d}",
    )
    report = audit.verify(lifecycle.chain, lifecycle.work.system.deployment, db)
    assert not report.ok
    against_chain = [d for d in report.differences if d.against == "chain"]
    assert [(d.entity, d.key, d.field, d.index_value, d.other_value) for d in against_chain] == [
        ("certificate", cert["certificate_id"], "holder", stranger, cert["holder"])
    ]
    assert against_chain[0].touch == cert["touch"]
    assert not report.digest_mismatches and not report.event_mismatches
    # The same findings as records a tool can load (`verify --json`, GET /v1/audit/verify).
    details = json.loads(json.dumps(report.details()))
    assert len(details) == len(list(report.findings()))
    chain_detail = next(d for d in details if d["kind"] == "difference" and d["against"] == "chain")
    touch = cert["touch"]
    assert chain_detail == {
        "kind": "difference",
        "source": against_chain[0].source,
        "against": "chain",
        "entity": "certificate",
        "key": cert["certificate_id"],
        "field": "holder",
        "index_value": stranger,
        "other_value": cert["holder"],
        "touch": {"block": touch.block, "tx": touch.tx, "log_index": touch.log_index, "event": touch.event},
        "message": str(against_chain[0]),
    }


def test_verify_reports_a_record_under_a_key_no_contract_knows_instead_of_failing(
    lifecycle: Lifecycle,
    replayed: tuple[IndexDatabase, SyncStatus],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Books built from a manifest that starts too late (on a node that cannot tell, see the next
    test) lack the first events: an order's issuer no event set made a participant under the empty
    key, and verify asked the ledger about it and died in the ABI encoder. Now such a record is a
    difference against the chain's none, besides the I0 findings of the missing events."""
    monkeypatch.setattr(Indexer, "_check_nothing_before", lambda self, block: None)
    deployment = lifecycle.work.system.deployment
    events = replayed[0].rows(EventRecord, deployment.chain_id)
    first_order = min(e["block_number"] for e in events if e["name"] == "OrderOpened")
    late = dataclasses.replace(deployment, deployment_block=first_order + 1)
    db = IndexDatabase(tmp_path / "late.sqlite")
    audit.replay(lifecycle.chain, late, db)
    report = audit.verify(lifecycle.chain, late, db)
    assert not report.ok
    assert any(v.invariant == "I0" for v in report.violations)
    stray = [(d.field, d.index_value, d.other_value) for d in report.differences if d.key == ""]
    assert set(stray) == {("record", "present", "absent")}  # from the replayed events and the table


def test_verify_at_the_blocks_before_the_ledger_exists_and_is_bound_agrees(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus]
) -> None:
    """The deployment block is the token's; the oracle, the ledger and the binding follow. Verify
    at those blocks called views of contracts not yet there (InsufficientDataBytes) and read an
    unbound oracle's zero address as a difference."""
    db, status = replayed
    deployment = lifecycle.work.system.deployment
    first = status.deployment_block
    events = db.rows(EventRecord, status.chain_id)
    for block in (*range(first, first + 5), (first + status.synced_block) // 2):
        report = audit.verify(lifecycle.chain, deployment, db, block)
        assert report.ok, (block, list(report.findings())[:3])
        # The counts are of what was checked at that block, not of the whole index.
        assert report.checked["events"] == sum(1 for e in events if e["block_number"] <= block)
        assert "attestation" not in report.checked  # the oracle has no view to compare them with


def test_a_manifest_whose_deployment_block_comes_after_the_deployment_is_refused(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], tmp_path: Path
) -> None:
    """It built an index without the first events, with a digest and no complaint."""
    deployment = lifecycle.work.system.deployment
    late = dataclasses.replace(deployment, deployment_block=replayed[1].deployment_block + 10)
    db = IndexDatabase(tmp_path / "late.sqlite")
    with pytest.raises(ManifestError, match="after the deployment: CertificateLedger"):
        audit.replay(lifecycle.chain, late, db)
    with pytest.raises(ManifestError, match="after the deployment"):
        audit.sync(lifecycle.chain, late, db)
    head = lifecycle.chain.w3.eth.block_number
    future = dataclasses.replace(deployment, deployment_block=head + 100)
    with pytest.raises(ManifestError, match=f"deployment block {head + 100} is past the node's head"):
        audit.sync(lifecycle.chain, future, IndexDatabase(tmp_path / "future.sqlite"))


def test_verify_refuses_a_manifest_that_names_another_admin(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus]
) -> None:
    """The manifest's admin is the operator an auditor reads it for; verify took it on trust."""
    db, status = replayed
    deployment = lifecycle.work.system.deployment
    assert audit.verify(lifecycle.chain, deployment, db).manifest_mismatches == []
    stranger = to_checksum_address(keccak(b"not the operator")[:20])
    report = audit.verify(lifecycle.chain, dataclasses.replace(deployment, admin=stranger), db)
    assert not report.ok
    [mismatch] = report.manifest_mismatches
    assert (mismatch.field, mismatch.manifest) == ("admin", stranger)
    assert deployment.admin in mismatch.chain
    assert mismatch.touch is not None and mismatch.touch.event == "ParticipantRegistered"
    [detail] = [d for d in report.details() if d["kind"] == "manifest"]
    assert detail["manifest"] == stranger and detail["message"] == str(mismatch)
    # Before the ledger exists there is no admin to compare with.
    assert audit.verify(
        lifecycle.chain, dataclasses.replace(deployment, admin=stranger), db, status.deployment_block
    ).ok


def test_a_follower_stops_on_a_manifest_that_does_not_belong_instead_of_retrying_it(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], tmp_path: Path
) -> None:
    """`sync --follow` with a late manifest, or on an index of another deployment, printed the
    same refusal on every poll for ever; waiting cannot change either."""
    deployment = lifecycle.work.system.deployment
    failed: list[Exception] = []
    late = dataclasses.replace(deployment, deployment_block=replayed[1].deployment_block + 10)
    follower = sync_module.Indexer(lifecycle.chain, late, IndexDatabase(tmp_path / "late.sqlite"))
    with pytest.raises(sync_module.LateManifest, match="after the deployment"):
        follower.follow(0.01, stop=lambda: len(failed) > 2, on_error=failed.append)
    other = dataclasses.replace(deployment, oracle=deployment.token)
    follower = sync_module.Indexer(lifecycle.chain, other, replayed[0])
    with pytest.raises(AnotherDeploymentsIndex, match="indexes another deployment: chain"):
        follower.follow(0.01, stop=lambda: len(failed) > 2, on_error=failed.append)
    assert failed == []


def test_a_deleted_or_made_up_certificate_row_is_one_finding_for_the_whole_record(
    lifecycle: Lifecycle, tmp_path: Path
) -> None:
    """Before, a deleted row showed as eight field differences against blanks, and a made-up row
    as zero fields on chain, "last touched by" whatever event its own columns named."""
    db = _fresh_replay(lifecycle, tmp_path / "rows.sqlite")
    cert = _a_moved_certificate(db)
    made_up = 10**6
    with db.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TEMPORARY TABLE copied AS SELECT * FROM certificate WHERE certificate_id = ?",
            (f"{cert['certificate_id']:078d}",),
        )
        conn.exec_driver_sql("UPDATE copied SET certificate_id = ?", (f"{made_up:078d}",))
        conn.exec_driver_sql("INSERT INTO certificate SELECT * FROM copied")
        conn.exec_driver_sql(
            "DELETE FROM certificate WHERE certificate_id = ?", (f"{cert['certificate_id']:078d}",)
        )
    report = audit.verify(lifecycle.chain, lifecycle.work.system.deployment, db)
    found = sorted(
        ((d.key, d.field, d.index_value, d.other_value, d.against, d.touch)
         for d in report.differences if d.source == "index table"),
        key=str,
    )  # fmt: skip
    assert found == sorted(
        [
            (cert["certificate_id"], "record", "absent", "present", "replayed events", cert["touch"]),
            (cert["certificate_id"], "record", "absent", "present", "chain", cert["touch"]),
            (made_up, "record", "present", "absent", "replayed events", None),
            (made_up, "record", "present", "absent", "chain", None),
        ],
        key=str,
    )
    shown = [str(d) for d in report.differences if d.key == made_up]
    assert f"certificate {made_up}: in the index table, missing from the chain; touched by no event" in shown


def test_a_tampered_payment_fails_verify_at_that_row(lifecycle: Lifecycle, tmp_path: Path) -> None:
    db = _fresh_replay(lifecycle, tmp_path / "payment.sqlite")
    state = db.require_state()
    paid = next(p for p in db.rows(PaymentRecord, state.chain_id) if p["kind"] == "settlement")
    where = (paid["block_number"], paid["tx_index"], paid["log_index"])
    _sql(
        db,
        "UPDATE payment SET amount = ?, payee = ? WHERE block_number = ? AND tx_index = ? AND log_index = ?",
        f"{paid['amount'] + 10**24:078d}", "0x" + "5A" * 20, *where,
    )  # fmt: skip
    report = audit.verify(lifecycle.chain, lifecycle.work.system.deployment, db)
    assert [(m.table, m.position, m.problem) for m in report.row_mismatches] == [
        ("payment", "block {} tx {} log {}".format(*where), "differs")
    ]
    assert str(paid["amount"] + 10**24) in (report.row_mismatches[0].index or "")
    assert not report.digest_mismatches and not report.differences


def test_a_tampered_or_deleted_change_row_fails_verify_at_that_row(
    lifecycle: Lifecycle, tmp_path: Path
) -> None:
    """The change log decides who may read a certificate (the API's scopes) and what a reorg undoes:
    a rewritten `old` holder, or a deleted row, is found at its position."""
    db = _fresh_replay(lifecycle, tmp_path / "changes.sqlite")
    state = db.require_state()
    changes = db.rows(ChangeRecord, state.chain_id)
    moved = next(c for c in changes if c["field"] == "holder")
    key = (moved["block_number"], moved["tx_index"], moved["log_index"], moved["seq"])
    _sql(
        db,
        "UPDATE state_change SET old = ? "
        "WHERE block_number = ? AND tx_index = ? AND log_index = ? AND seq = ?",
        "0x" + "5A" * 20, *key,
    )  # fmt: skip
    gone = changes[-1]
    gone_key = (gone["block_number"], gone["tx_index"], gone["log_index"], gone["seq"])
    _sql(
        db,
        "DELETE FROM state_change WHERE block_number = ? AND tx_index = ? AND log_index = ? AND seq = ?",
        *gone_key,
    )
    report = audit.verify(lifecycle.chain, lifecycle.work.system.deployment, db)
    assert [(m.table, m.position, m.problem) for m in report.row_mismatches] == [
        ("state_change", "block {} tx {} log {} change {}".format(*key), "differs"),
        ("state_change", "block {} tx {} log {} change {}".format(*gone_key), "missing from the index"),
    ]


def test_an_event_with_another_blocks_hash_fails_verify(lifecycle: Lifecycle, tmp_path: Path) -> None:
    db = _fresh_replay(lifecycle, tmp_path / "hash.sqlite")
    state = db.require_state()
    events = db.rows(EventRecord, state.chain_id)
    by_block: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        by_block.setdefault(e["block_number"], []).append(e)
    later = next(sorted(es, key=lambda e: e["log_index"])[-1] for es in by_block.values() if len(es) > 1)
    _sql(db, "UPDATE event SET block_hash = ? WHERE tx_hash = ? AND log_index = ?",
         "0x" + "ab" * 32, later["tx_hash"], later["log_index"])  # fmt: skip
    report = audit.verify(lifecycle.chain, lifecycle.work.system.deployment, db)
    found = [(m.table, m.problem) for m in report.row_mismatches]
    assert found == [("event", "block hash differs from its block's")]


def test_verify_reads_one_snapshot_while_a_follower_commits(
    lifecycle: Lifecycle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync commits more blocks after verify has read the cursor: verify still sees the index as it
    was when it began, and finds it correct."""
    reference = lifecycle.work.system.deployment
    path = tmp_path / "snapshot.sqlite"
    head = lifecycle.chain.w3.eth.block_number
    middle = (reference.deployment_block + head) // 2
    audit.replay(lifecycle.chain, reference, IndexDatabase(path), until=middle)
    original = audit._refold

    def a_follower_commits_first(db: IndexDatabase, state: Any, at: int, *rest: Any) -> Any:
        audit.sync(lifecycle.chain, reference, IndexDatabase(path))  # another process, in effect
        return original(db, state, at, *rest)

    monkeypatch.setattr(audit, "_refold", a_follower_commits_first)
    db = IndexDatabase(path)
    report = audit.verify(lifecycle.chain, reference, db)
    assert report.ok, list(report.findings())[:5]
    assert report.block == middle
    assert db.require_state().synced_block == head  # the follower's commit is there all the same


def test_books_that_list_a_wrong_device_fail_verify_against_the_chain(
    lifecycle: Lifecycle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the books (one device of a set recorded as another) is consistent with the digest
    and the tables it made, so only the chain can tell: each listed device must be current there."""
    from chain_client.index import books

    stranger = to_checksum_address("0x" + "5a" * 20)
    real = books.Books._device_set

    def misread(self: books.Books, a: dict[str, Any]) -> None:
        real(self, {**a, "devices": (*a["devices"][:-1], stranger)})

    monkeypatch.setitem(books._HANDLERS, "DeviceSetChanged", misread)
    db = _fresh_replay(lifecycle, tmp_path / "devices.sqlite")
    report = audit.verify(lifecycle.chain, lifecycle.work.system.deployment, db)
    wrong = [d for d in report.differences if d.field == "devices"]
    assert wrong and all(d.entity == "warehouse" and d.against == "chain" for d in wrong)
    assert all(stranger in d.index_value and stranger not in d.other_value for d in wrong)
    assert not report.digest_mismatches and not report.row_mismatches


def test_a_tampered_value_fails_verify_at_that_certificate(lifecycle: Lifecycle, tmp_path: Path) -> None:
    db = _fresh_replay(lifecycle, tmp_path / "value.sqlite")
    cert = _a_moved_certificate(db)
    forged = cert["value"] + 2**70
    _sql(
        db,
        "UPDATE certificate SET value = ? WHERE certificate_id = ?",
        f"{forged:078d}",
        f"{cert['certificate_id']:078d}",
    )
    report = audit.verify(lifecycle.chain, lifecycle.work.system.deployment, db)
    found = [(d.source, d.against, d.key, d.field, d.index_value, d.other_value) for d in report.differences]
    assert found == [
        ("index table", "replayed events", cert["certificate_id"], "value", forged, cert["value"]),
        ("index table", "chain", cert["certificate_id"], "value", forged, cert["value"]),
    ]


def test_a_tampered_credit_fails_verify_against_the_chains_total_credits(
    lifecycle: Lifecycle, tmp_path: Path
) -> None:
    """The ledger keeps a running total of the credits it owes: a credit rewritten in the index
    table must also disagree with that total, not only with its own account's view."""
    db = _fresh_replay(lifecycle, tmp_path / "credit.sqlite")
    _, books = books_at(db)
    credits = books.all("credit")
    assert credits, "no refused payment was credited in this lifecycle"
    account, credit = max(credits.items(), key=lambda item: (item[1]["amount"], str(item[0])))
    total = sum(c["amount"] for c in credits.values())
    assert total == lifecycle.work.system.ledger.total_credits()
    forged = credit["amount"] + 10**6
    _sql(db, "UPDATE credit SET amount = ? WHERE account = ?", f"{forged:078d}", account)
    report = audit.verify(lifecycle.chain, lifecycle.work.system.deployment, db)
    found = [(d.source, d.against, d.entity, d.key, d.field, d.index_value, d.other_value)
             for d in report.differences]  # fmt: skip
    assert found == [
        ("index table", "replayed events", "credit", account, "amount", forged, credit["amount"]),
        ("index table", "chain", "credit", account, "amount", forged, credit["amount"]),
        ("index table", "chain", "credits", "total", "amount", total + 10**6, total),
    ]


def test_an_order_cancelled_in_the_index_table_fails_verify_on_its_invoice(
    lifecycle: Lifecycle, tmp_path: Path
) -> None:
    """A cancelled order gives its invoice back (D54): an order shown cancelled in the table while
    the chain has it confirmed must disagree with the ledger's record of the invoice as used."""
    db = _fresh_replay(lifecycle, tmp_path / "invoice.sqlite")
    _, books = books_at(db)
    orders = books.all("order")
    holders: dict[str, list[int]] = {}
    for order_id, order in orders.items():
        if order["status"] != OrderStatus.CANCELLED:
            holders.setdefault(order["invoice_hash"], []).append(int(order_id))
    order_id = next(
        i
        for i, o in sorted(orders.items())
        if o["status"] == OrderStatus.CONFIRMED and holders[o["invoice_hash"]] == [i]
    )
    invoice = orders[order_id]["invoice_hash"]
    _sql(db, "UPDATE ledger_order SET status = ? WHERE order_id = ?", int(OrderStatus.CANCELLED),
         f"{order_id:078d}")  # fmt: skip
    report = audit.verify(lifecycle.chain, lifecycle.work.system.deployment, db)
    found = [(d.source, d.against, d.entity, d.key, d.field, d.index_value, d.other_value)
             for d in report.differences]  # fmt: skip
    confirmed, cancelled = int(OrderStatus.CONFIRMED), int(OrderStatus.CANCELLED)
    assert found == [
        ("index table", "replayed events", "order", order_id, "status", cancelled, confirmed),
        ("index table", "chain", "order", order_id, "status", cancelled, confirmed),
        ("index table", "chain", "invoice", invoice, "used", False, True),
    ]


def test_a_deleted_event_fails_verify_at_that_event(lifecycle: Lifecycle, tmp_path: Path) -> None:
    db = _fresh_replay(lifecycle, tmp_path / "deleted.sqlite")
    state = db.require_state()
    # The last move of some certificate, so that no later event hides its loss.
    last_move: dict[str, dict[str, Any]] = {}
    for e in sorted(db.rows(EventRecord, state.chain_id), key=lambda e: (e["block_number"], e["log_index"])):
        args = json.loads(e["args"])
        if e["name"] == "Transfer" and not args["from"].startswith("0x00000000"):
            last_move[args["tokenId"]] = e
    victim = min(last_move.values(), key=lambda e: (e["block_number"], e["log_index"]))
    _sql(db, "DELETE FROM event WHERE tx_hash = ? AND log_index = ?", victim["tx_hash"], victim["log_index"])
    report = audit.verify(lifecycle.chain, lifecycle.work.system.deployment, db)
    assert [m.block for m in report.digest_mismatches] == [victim["block_number"]]
    assert [(m.tx, m.log_index, m.problem) for m in report.event_mismatches] == [
        (victim["tx_hash"], victim["log_index"], "event missing from the index")
    ]
    cert_id = int(json.loads(victim["args"])["tokenId"])
    holders = {
        (d.source, d.against)
        for d in report.differences
        if (d.entity, d.key, d.field) == ("certificate", cert_id, "holder")
    }
    # The books replayed without that event disagree with both the tables and the chain.
    assert ("replayed events", "chain") in holders
    result = CliRunner().invoke(
        build_app(),
        [
            "audit",
            "verify",
            "--rpc-url",
            lifecycle.url,
            "--manifest",
            str(lifecycle.manifest),
            "--db",
            str(tmp_path / "deleted.sqlite"),
        ],
    )
    assert result.exit_code == 1, result.output
    assert "event missing from the index" in result.output


# ---------------------------------------------------------------------- lineage, export, CLI


def test_lineage_equals_the_clients_and_draws_as_svg(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], tmp_path: Path
) -> None:
    db, _ = replayed
    _, books = books_at(db)
    parent_ids = {int(c["parent_id"]) for c in books.all("certificate").values() if c["parent_id"]}
    leaf = next(
        int(k)
        for k, c in sorted(books.all("certificate").items())
        if int(k) not in parent_ids and c["parent_id"]
    )
    tree = lineage(books, leaf)
    reference = lifecycle.work.system.ledger.lineage(leaf)
    ours = [(d, n.certificate_id, n.record["holder"], n.record["value"]) for d, n in tree.walk()]
    theirs = [
        (n.certificate.depth, n.certificate.certificate_id, n.certificate.holder, n.certificate.value)
        for n in reference.walk()
    ]
    assert ours == theirs
    svg = tmp_path / "lineage.svg"
    result = CliRunner().invoke(
        build_app(),
        ["audit", "lineage", str(leaf), "--db", str(db.url.removeprefix("sqlite:///")), "--svg", str(svg)],
    )
    assert result.exit_code == 0, result.output
    assert f"#{leaf}" in result.output
    root = ElementTree.parse(svg).getroot()
    boxes = root.findall(".//{http://www.w3.org/2000/svg}g")
    assert len(boxes) == len(ours)


def test_export_writes_loadable_csv_and_a_report(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], tmp_path: Path
) -> None:
    db, status = replayed
    result = audit.export(db, tmp_path / "out")
    assert result.digest == status.digest
    report = json.loads((tmp_path / "out" / "report.json").read_text("utf-8"))
    assert report["blocks"] == {"from": status.deployment_block, "to": status.synced_block}
    assert report["digest"] == status.digest
    ledger = lifecycle.work.system.ledger
    for order_id, totals in report["orders"].items():
        order = ledger.order(int(order_id))
        assert (int(totals["escrowed"]), int(totals["paid"]), int(totals["refunded"])) == (
            order.escrowed,
            order.paid,
            order.refunded,
        )
    import csv

    with (tmp_path / "out" / "certificates.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == ledger.counts()[1]
    live = sum(int(r["value"]) for r in rows if int(r["status"]) == CertificateStatus.LIVE)
    assert str(live) == report["totals"]["live"]
    with (tmp_path / "out" / "payments.csv").open(encoding="utf-8") as f:
        kinds = {r["kind"] for r in csv.DictReader(f)}
    assert set(report["payments"]) == kinds
    _assert_holder_totals_reconcile_with_the_token(lifecycle, report)
    # Events in the order the chain made them: folding the file from the top rebuilds the books.
    with (tmp_path / "out" / "events.csv").open(encoding="utf-8") as f:
        events = list(csv.DictReader(f))
    positions = [(int(r["block_number"]), int(r["tx_index"]), int(r["log_index"])) for r in events]
    assert positions == sorted(positions) and len(positions) == status.events


def _assert_holder_totals_reconcile_with_the_token(lifecycle: Lifecycle, report: dict[str, Any]) -> None:
    """Per holder, what the report says the ledger moved is what the token's Transfer events from
    the ledger show, and the credit left is the ledger's own. Before, a settlement the token refused
    (credited, not moved) counted as received."""
    deployment, w3 = lifecycle.work.system.deployment, lifecycle.chain.w3
    transfer = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
    sent = w3.eth.get_logs(
        {
            "address": deployment.token,
            "fromBlock": deployment.deployment_block,
            "toBlock": report["blocks"]["to"],
            "topics": [transfer, "0x" + bytes(12).hex() + deployment.ledger[2:].lower()],
        }
    )
    moved: dict[str, int] = {}
    for entry in sent:
        to = to_checksum_address("0x" + bytes(entry["topics"][2])[-20:].hex())
        moved[to] = moved.get(to, 0) + int.from_bytes(bytes(entry["data"]), "big")
    holders = report["holders"]
    assert set(moved) <= set(holders)
    assert any(int(h["credited"]) for h in holders.values()), "the lifecycle credits a refused payment"
    for address, totals in holders.items():
        assert int(totals["received_from_ledger"]) == moved.get(address, 0), address
        assert int(totals["credit_outstanding"]) == lifecycle.work.system.ledger.credit(address), address


def test_cli_replay_state_digest_and_verify(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], tmp_path: Path
) -> None:
    runner, app = CliRunner(), build_app()
    db = str(tmp_path / "cli.sqlite")
    node = ["--rpc-url", lifecycle.url, "--manifest", str(lifecycle.manifest), "--db", db]
    replay = runner.invoke(app, ["audit", "replay", *node, "--all-headers"])
    assert replay.exit_code == 0, replay.output
    assert f"digest {replayed[1].digest}" in replay.output
    recorded = IndexDatabase(db).rows(BlockRecord, replayed[1].chain_id)
    assert all(r["parent_hash"] for r in recorded)
    assert len(recorded) > len(
        {r["number"] for r in replayed[0].rows(BlockRecord, replayed[1].chain_id) if r["parent_hash"]}
    )
    block = (replayed[1].deployment_block + replayed[1].synced_block) // 2
    state = runner.invoke(app, ["audit", "state", "--db", db, "--block", str(block), "--json"])
    assert state.exit_code == 0, state.output
    shown = json.loads(state.output)
    _, books = books_at(replayed[0], block)
    assert len(shown["certificates"]) == len(books.all("certificate"))
    assert len(shown["orders"]) == len(books.all("order"))
    digest = runner.invoke(app, ["audit", "digest", "--db", db, "--block", str(block)])
    assert digest.output.split()[0] == shown["digest"]
    # Each digest printed names the blocks it covers: it starts from the manifest's deployment block.
    first = replayed[1].deployment_block
    assert f"(blocks {first}..{block})" in digest.output
    assert shown["blocks"] == {"from": first, "to": block}
    assert f"digest {replayed[1].digest} (blocks {first}..{replayed[1].synced_block})" in replay.output
    verify = runner.invoke(app, ["audit", "verify", *node])
    assert verify.exit_code == 0, verify.output
    assert "every invariant holds" in verify.output
    assert f"{replayed[1].events} events" in verify.output and "1 system" in verify.output
    assert "1 systems" not in verify.output
    as_json = json.loads(runner.invoke(app, ["audit", "verify", *node, "--json"]).output)
    assert as_json["ok"] is True and as_json["details"] == [] and as_json["findings"] == []
    os.environ.pop("CERTLEDGER_INDEX_DB", None)


def test_state_digest_and_export_refuse_an_index_whose_events_do_not_give_its_digest(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], tmp_path: Path
) -> None:
    """A split's value edited in one stored event row: state and export fold the stored events, so
    they would show the edited value beside the honest stored digest. They, and digest, refold the
    digest chain up to their block and refuse, naming the first block where it parts ways."""
    db = _fresh_replay(lifecycle, tmp_path / "edited.sqlite")
    state = db.require_state()
    split = next(
        e
        for e in db.rows(EventRecord, state.chain_id)
        if e["name"] == "TransferValue" and json.loads(e["args"])["_fromTokenId"] != "0"
    )
    args = json.loads(split["args"])
    args["_value"] = str(int(args["_value"]) - 1)
    edited = json.dumps(args, sort_keys=True, separators=(",", ":"))
    _sql(db, "UPDATE event SET args = ? WHERE tx_hash = ? AND log_index = ?", edited, split["tx_hash"],
         split["log_index"])  # fmt: skip
    runner, app, path = CliRunner(), build_app(), str(tmp_path / "edited.sqlite")
    out = tmp_path / "out"
    for command in (
        ["state"],
        ["state", "--json"],
        ["digest"],
        ["export", "--out", str(out)],
        ["state", "--block", str(split["block_number"])],
    ):
        result = runner.invoke(app, ["audit", *command, "--db", path])
        assert result.exit_code == 1, (command, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (command, result.output)
        line = " ".join(lines[0].split())
        assert f"at block {split['block_number']}: stored digest" in line, line
        assert "audit verify" in line and "audit replay" in line, line
    assert not out.exists()
    # Before the edited block the index still holds together, and answers.
    before = runner.invoke(app, ["audit", "digest", "--db", path, "--block", str(split["block_number"] - 1)])
    assert before.exit_code == 0, before.output


def test_export_refuses_an_index_whose_payment_or_change_rows_its_events_do_not_make(
    lifecycle: Lifecycle, tmp_path: Path
) -> None:
    """The digest covers the events, not the payment and change-log rows beside them (D52), and the
    export's payments, changes and totals are those rows: an edited amount exported wrong totals
    under the honest digest. Verify found it; the export did not look."""
    db = _fresh_replay(lifecycle, tmp_path / "rows.sqlite")
    state = db.require_state()
    payment = next(r for r in db.rows(PaymentRecord, state.chain_id) if r["kind"] == "settlement")
    change = db.rows(ChangeRecord, state.chain_id)[-1]
    runner, app = CliRunner(), build_app()
    edits = [
        (
            "UPDATE payment SET amount = ? WHERE block_number = ? AND log_index = ?",
            (f"{int(payment['amount']) + 1:078d}", payment["block_number"], payment["log_index"]),
            f"payment row at block {payment['block_number']}",
        ),
        (
            "DELETE FROM state_change WHERE block_number = ? AND log_index = ? AND seq = ?",
            (change["block_number"], change["log_index"], change["seq"]),
            f"state_change row at block {change['block_number']}",
        ),
    ]
    for number, (statement, params, named) in enumerate(edits):
        fresh = tmp_path / f"copy-{number}.sqlite"
        shutil.copy(tmp_path / "rows.sqlite", fresh)
        copy = IndexDatabase(fresh)
        _sql(copy, statement, *params)
        copy.close()
        out = tmp_path / f"out-{number}"
        result = runner.invoke(app, ["audit", "export", "--out", str(out), "--db", str(fresh)])
        assert result.exit_code == 1, result.output
        line = " ".join(result.output.split())
        assert line.startswith("error: the index does not hold together: ") and named in line, line
        assert "audit verify" in line and "audit replay" in line, line
        assert not out.exists()
        # state and digest show the books and the digest, which the events alone make: they answer.
        assert runner.invoke(app, ["audit", "digest", "--db", str(fresh)]).exit_code == 0
    # Below the edited payment's block, the export covers only rows the events make.
    below = runner.invoke(
        app,
        [
            "audit",
            "export",
            "--out",
            str(tmp_path / "below"),
            "--db",
            str(tmp_path / "copy-0.sqlite"),
            "--block",
            str(payment["block_number"] - 1),
        ],
    )
    assert below.exit_code == 0, below.output


def test_the_checked_fold_equals_the_stored_books_and_digest_and_its_cost(
    replayed: tuple[IndexDatabase, SyncStatus],
) -> None:
    """On the biggest index the tests make: the checked fold gives the books and the stored digest,
    at the last block and below it; its time beside the unchecked fold is printed (-s)."""
    db, status = replayed
    state = db.require_state()
    for block in (status.synced_block, (status.deployment_block + status.synced_block) // 2):
        _, books = books_at(db, block)
        _, checked, digest = audit.checked_books_at(db, block)
        assert digest == digest_at(db, state, block)
        assert all(checked.all(e) == books.all(e) for e in ("order", "certificate", "credit", "offer"))
    started = time.perf_counter()
    books_at(db)
    plain = time.perf_counter() - started
    started = time.perf_counter()
    audit.checked_books_at(db)
    checked_time = time.perf_counter() - started
    print(f"\n{status.events} events: books_at {plain:.3f} s, checked_books_at {checked_time:.3f} s")


def test_holdings_and_history_queries(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus]
) -> None:
    db, status = replayed
    _, books = books_at(db)
    ledger = lifecycle.work.system.ledger
    for account in (*lifecycle.work.holders, *lifecycle.work.factors):
        ours = [cert_id for cert_id, _ in holdings(books, account.address)]
        theirs = [c.certificate_id for c in ledger.holdings(account.address)]
        assert ours == sorted(theirs)
    cert = _a_moved_certificate(db)
    changes = history(db, status.chain_id, "certificate", str(cert["certificate_id"]))
    assert changes[0]["field"] == "@created"
    last = changes[-1]
    assert (last["block_number"], last["tx_hash"], last["log_index"], last["event"]) == tuple(cert["touch"])


# ---------------------------------------------------------------------- review, session 6


def test_a_consistent_rewrite_of_a_sales_price_fails_verify_against_the_chains_logs(
    lifecycle: Lifecycle, tmp_path: Path
) -> None:
    """A DiscountSold's price is in no record and no view: halved in the stored event, its payment
    row and every digest after it (the index's own fold), the index agrees with itself. The node's
    logs and the offer the sale closes do not."""
    assert lifecycle.work.stats["buy"], lifecycle.work.stats  # the seed is fixed: it has sales
    path = tmp_path / "price.sqlite"
    db = _fresh_replay(lifecycle, path)
    state = db.require_state()
    sale = next(e for e in db.rows(EventRecord, state.chain_id) if e["name"] == "DiscountSold")
    args = json.loads(sale["args"])
    real = int(args["price"])
    args["price"] = str(real // 2)
    where = (sale["tx_hash"], sale["log_index"])
    _sql(db, "UPDATE event SET args = ? WHERE tx_hash = ? AND log_index = ?",
         json.dumps(args, sort_keys=True, separators=(",", ":")), *where)  # fmt: skip
    _sql(db, "UPDATE payment SET amount = ? WHERE tx_hash = ? AND log_index = ?", f"{real // 2:078d}", *where)
    refold = audit._refold(db, state, state.synced_block)
    for block in db.blocks(state.chain_id):
        if block.number >= sale["block_number"]:
            _sql(db, "UPDATE indexed_block SET digest = ? WHERE number = ?", refold.digest_at(block.number),
                 block.number)  # fmt: skip
    _sql(db, "UPDATE index_state SET digest = ?", refold.digest)

    report = audit.verify(lifecycle.chain, lifecycle.work.system.deployment, db)
    assert not report.digest_mismatches and not report.row_mismatches and not report.differences
    assert [(m.tx, m.log_index, m.problem) for m in report.event_mismatches] == [
        (sale["tx_hash"], sale["log_index"], "event differs from the chain's")
    ]
    assert f'"price":"{real // 2}"' in (report.event_mismatches[0].index or "")
    assert f'"price":"{real}"' in (report.event_mismatches[0].chain or "")
    assert [(v.invariant, v.entity, v.key) for v in report.violations] == [
        ("I0", "offer", int(args["offerId"]))
    ]


def test_two_indexers_on_one_database_do_not_undo_each_others_ranges(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], tmp_path: Path
) -> None:
    """An indexer that read the cursor long ago (a second follower, a cron `audit sync`) finds it
    moved when it writes: its range is rolled back, it reloads the cursor and books and goes on
    from where the other left the index. Before, it wrote its stale ranges and records over the
    other's and moved the cursor back."""
    deployment = lifecycle.work.system.deployment
    reference = replayed[1]
    db = IndexDatabase(tmp_path / "two.sqlite")
    options = SyncOptions(initial_range=5, max_range=5)
    stale = Indexer(lifecycle.chain, deployment, db, options)
    stale.open()
    middle = (reference.deployment_block + reference.synced_block) // 2
    assert Indexer(lifecycle.chain, deployment, db, options).sync(middle).synced_block == middle
    status = stale.sync(reference.deployment_block + 20)
    assert status.synced_block == middle  # reloaded: nothing of its own to add
    assert db.require_state().synced_block == middle
    assert stale.sync().digest == reference.digest
    assert _dump(db, deployment.chain_id) == _dump(replayed[0], deployment.chain_id)
    report = audit.verify(lifecycle.chain, deployment, db)
    assert report.ok, list(report.findings())[:5]


def test_a_stale_indexers_rollback_is_refused_when_the_cursor_moved(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], tmp_path: Path
) -> None:
    from chain_client.index.db import CursorMoved

    deployment = lifecycle.work.system.deployment
    db = IndexDatabase(tmp_path / "rollback.sqlite")
    stale = Indexer(lifecycle.chain, deployment, db)
    stale.sync(deployment.deployment_block + 10)
    Indexer(lifecycle.chain, deployment, db).sync()
    state = db.require_state()
    with pytest.raises(CursorMoved):
        db.write_rollback(state.chain_id, deployment.deployment_block, {}, {}, {"synced_block": 0},
                          (deployment.deployment_block + 10, "0x" + "00" * 32))  # fmt: skip
    assert db.require_state() == state
    assert _dump(db, deployment.chain_id) == _dump(replayed[0], deployment.chain_id)


class _Repeating(NodeSource):
    """A node whose getLogs answers give one log twice, `times` times."""

    def __init__(self, chain: Chain, times: int) -> None:
        super().__init__(chain)
        self.times = times

    def request_logs(self, first: int, last: int, addresses: Sequence[str]) -> PendingLogs:
        pending = super().request_logs(first, last, addresses)
        if not self.times:
            return pending
        self.times -= 1

        def doubled() -> list[RawLog]:
            logs = pending.result()
            return sorted([*logs, *logs[:1]], key=lambda log: log.position)

        return PendingLogs(doubled)


def test_a_getlogs_answer_with_a_log_twice_is_refused_and_fetched_again(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], tmp_path: Path
) -> None:
    """Before, the repeated log was applied to the books twice (its event row deduplicated by the
    upsert, its changes not)."""
    deployment = lifecycle.work.system.deployment
    reference = replayed[1]
    db = IndexDatabase(tmp_path / "twice.sqlite")
    indexer = Indexer(lifecycle.chain, deployment, db)
    indexer.source = _Repeating(lifecycle.chain, times=1)
    status = indexer.sync(reference.synced_block)
    assert status.digest == reference.digest
    assert _dump(db, deployment.chain_id) == _dump(replayed[0], deployment.chain_id)

    always = Indexer(
        lifecycle.chain, deployment, IndexDatabase(tmp_path / "always.sqlite"), SyncOptions(max_retries=2)
    )
    always.source = _Repeating(lifecycle.chain, times=1_000)
    with pytest.raises(IndexInconsistent, match="twice"):
        always.sync(reference.synced_block)


# ---------------------------------------------------------------------- review 2, session 6


class _Unreliable(NodeSource):
    """A node that fails every getLogs over more than `limit` blocks (it times out or refuses), and
    whose first answer for each range it does give repeats a log (`repeat_first`)."""

    def __init__(
        self, chain: Chain, limit: int, failure: str, repeat_first: bool = False, outage: int | None = None
    ) -> None:
        """`outage`: the node fails only its first `outage` such getLogs, then answers every one."""
        super().__init__(chain)
        self.limit, self.failure, self.repeat_first = limit, failure, repeat_first
        self.outage = outage
        self.answered: list[tuple[int, int]] = []
        self.failed = 0
        self._seen: set[tuple[int, int]] = set()

    def request_logs(self, first: int, last: int, addresses: Sequence[str]) -> PendingLogs:
        pending = super().request_logs(first, last, addresses)

        def answer() -> list[RawLog]:
            logs = pending.result()
            if last - first + 1 > self.limit and (self.outage is None or self.failed < self.outage):
                self.failed += 1
                if self.failure == "timeout":
                    raise NodeUnavailable("test", "timed out") from TimeoutError("timed out")
                raise RpcRequestError("eth_getLogs: query exceeds the block range limit")
            if self.repeat_first and (first, last) not in self._seen and logs:
                self._seen.add((first, last))
                return sorted([*logs, *logs[:1]], key=lambda log: log.position)
            self.answered.append((first, last))
            return logs

        return PendingLogs(answer)


def test_verify_fetches_the_logs_in_windows_and_halves_one_the_node_does_not_answer_in_time(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, verify asked for the whole history in one getLogs, and a node's socket timeout on it
    ended verify (NodeUnavailable) without a smaller range tried."""
    made: list[_Unreliable] = []

    def slow(chain: Chain) -> _Unreliable:
        made.append(_Unreliable(chain, limit=40, failure="timeout"))
        return made[-1]

    monkeypatch.setattr(audit, "NodeSource", slow)
    db, status = replayed
    report = audit.verify(lifecycle.chain, lifecycle.work.system.deployment, db)
    assert report.ok, list(report.findings())[:5]
    node = made[0]
    assert node.failed >= 1
    assert len(node.answered) > 1 and all(last - first < 40 for first, last in node.answered)
    covered = sorted(node.answered)
    assert covered[0][0] == status.deployment_block and covered[-1][1] == status.synced_block
    assert all(b[0] == a[1] + 1 for a, b in zip(covered, covered[1:], strict=False))

    def dead(chain: Chain) -> NodeSource:
        class Dead(NodeSource):
            def request_logs(self, first: int, last: int, addresses: Sequence[str]) -> PendingLogs:
                def refuse() -> list[RawLog]:
                    raise NodeUnavailable("test", "connection refused") from ConnectionRefusedError()

                return PendingLogs(refuse)

        return Dead(chain)

    monkeypatch.setattr(audit, "NodeSource", dead)
    with pytest.raises(NodeUnavailable, match="refused"):  # a node that is down is not halved for
        audit.verify(lifecycle.chain, lifecycle.work.system.deployment, db)


def test_sync_halves_a_range_the_node_does_not_answer_in_time_and_stops_for_a_dead_node(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], tmp_path: Path
) -> None:
    """Before, only verify halved a window on a socket timeout: a sync or replay stopped with
    NodeUnavailable on the first range the node took too long to search."""
    deployment = lifecycle.work.system.deployment
    reference = replayed[1]
    db = IndexDatabase(tmp_path / "slow.sqlite")
    indexer = Indexer(lifecycle.chain, deployment, db, SyncOptions(initial_range=500))
    node = _Unreliable(lifecycle.chain, limit=40, failure="timeout")
    indexer.source = node
    status = indexer.sync(reference.synced_block)
    assert node.failed >= 1
    assert all(last - first < 40 for first, last in node.answered)
    assert status.digest == reference.digest
    assert _dump(db, deployment.chain_id) == _dump(replayed[0], deployment.chain_id)

    class Dead(NodeSource):
        asked = 0

        def request_logs(self, first: int, last: int, addresses: Sequence[str]) -> PendingLogs:
            self.asked += 1

            def refuse() -> list[RawLog]:
                raise NodeUnavailable("test", "connection refused") from ConnectionRefusedError()

            return PendingLogs(refuse)

    stopped = Indexer(lifecycle.chain, deployment, IndexDatabase(tmp_path / "dead.sqlite"))
    dead = stopped.source = Dead(lifecycle.chain)
    with pytest.raises(NodeUnavailable, match="refused"):
        stopped.sync(reference.synced_block)
    assert dead.asked == 1  # not halved down to one block first: a smaller range would not help
    assert stopped.status().synced_block < reference.synced_block


def test_after_an_outage_of_timeouts_a_sync_grows_its_ranges_back(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], tmp_path: Path
) -> None:
    """A timeout halves the next range only; a refusal (a provider's cap) is what sets the ceiling.
    Before, each timeout of an outage lowered the ceiling for good, and a follower went on asking
    for a block or two at a time after the node had recovered."""
    deployment = lifecycle.work.system.deployment
    reference = replayed[1]
    db = IndexDatabase(tmp_path / "outage.sqlite")
    indexer = Indexer(lifecycle.chain, deployment, db, SyncOptions(initial_range=64, target_logs=10_000))
    node = _Unreliable(lifecycle.chain, limit=2, failure="timeout", outage=5)
    indexer.source = node
    status = indexer.sync(reference.synced_block)
    assert node.failed == 5
    assert status.digest == reference.digest
    assert max(last - first + 1 for first, last in node.answered) > 64


def test_verify_counts_bad_getlogs_answers_in_a_row_not_in_all(
    lifecycle: Lifecycle, replayed: tuple[IndexDatabase, SyncStatus], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that repeats a log in its first answer for each range, and gets it right the second
    time, is no reason to give up: before, the third such answer over the whole verify did."""
    monkeypatch.setattr(
        audit, "NodeSource", lambda chain: _Unreliable(chain, limit=30, failure="refuse", repeat_first=True)
    )
    report = audit.verify(lifecycle.chain, lifecycle.work.system.deployment, replayed[0])
    assert report.ok, list(report.findings())[:5]
