"""`certledger audit ...` facing what an auditor may mistype or a machine may lack: a database
that is not there, not a database, not reachable or of an unsupported kind, a node URL without its
scheme, a file that cannot be written. Each is one `error: ...` line naming it (a password
masked) and exit 1, and a read-only command creates nothing. Then what the commands print on a
narrow terminal: every digit and every address whole.

The first tests need no node; those after the `indexed` fixture run against a small seeded
workload on anvil.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from index_support import anvil_node, connect_node
from pg import pg_cluster
from typer.testing import CliRunner, Result

from certledger_main import build_app
from chain_client import audit, audit_cli
from chain_client.index.db import IndexDatabase, IndexDatabaseError, shown_url
from chain_client.index.state import books_at
from chain_client.index.sync import SyncStatus
from chain_client.index.workload import Workload
from oracle.broker import free_port

PASSWORD = "S3cretPassw0rd"


def _audit(*args: str) -> Result:
    return CliRunner().invoke(build_app(), ["audit", *args])


def _one_line_error(result: Result, *words: str, code: int = 1) -> str:
    """The error line, after checking it is the whole output, a handled exit `code`, and says `words`."""
    assert isinstance(result.exception, SystemExit), result.exception  # not an unhandled exception
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------- no node needed


def test_a_database_url_in_a_message_has_its_password_masked() -> None:
    url = f"postgresql://certledger:{PASSWORD}@127.0.0.1:5432/index"
    assert PASSWORD not in shown_url(url) and "certledger:***@" in shown_url(url)
    assert PASSWORD not in shown_url(f"postgresql://certledger@h/index?password={PASSWORD}")
    assert PASSWORD not in IndexDatabase(url).shown_url
    # Messages made outside the CLI (sync, verify) are masked on the way out as well.
    assert audit_cli._redacted(f"{url} indexes ledger 0x1") == (
        "postgresql://certledger:***@127.0.0.1:5432/index indexes ledger 0x1"
    )
    # A password with a raw slash (SQLAlchemy takes one) is masked whole; ?password= reads as ***.
    assert audit_cli._redacted("in postgresql://u:pa/ss@h/db now") == "in postgresql://u:***@h/db now"
    assert shown_url("postgresql://certledger@h/index?password=x").endswith("password=***")


def test_a_database_url_with_a_port_that_is_no_number_is_one_line() -> None:
    url = f"postgresql://certledger:{PASSWORD}@h:notaport/index"
    line = _one_line_error(_audit("state", "--db", url), "not a URL")
    assert PASSWORD not in line


def test_an_unreachable_postgresql_is_one_line_with_the_password_masked() -> None:
    url = f"postgresql://certledger:{PASSWORD}@127.0.0.1:{free_port()}/index"
    line = _one_line_error(_audit("state", "--db", url), "cannot use the index database", "certledger:***@")
    assert PASSWORD not in line and "Connection refused" in line


def test_postgresql_messages_mask_the_password() -> None:
    with pg_cluster() as cluster:
        empty = cluster.create_database("empty").replace("certledger@", f"certledger:{PASSWORD}@")
        line = _one_line_error(_audit("state", "--db", empty), "no index in", "certledger:***@")
        assert PASSWORD not in line
        missing = cluster.url("nosuchdb").replace("certledger@", f"certledger:{PASSWORD}@")
        line = _one_line_error(_audit("digest", "--db", missing), 'database "nosuchdb" does not exist')
        assert PASSWORD not in line


@pytest.mark.parametrize(
    "command",
    [["state"], ["lineage", "1"], ["export", "--out", "{tmp}/out"], ["digest"]],
    ids=lambda c: c[0],
)
def test_a_read_only_command_on_a_missing_sqlite_file_creates_nothing(
    command: list[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.sqlite"
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    _one_line_error(_audit(*args, "--db", str(missing)), f"no index at {missing}: no such file")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(IndexDatabaseError, match="no such file"):
        IndexDatabase(missing, must_exist=True)
    assert not missing.exists()


def test_a_missing_directory_a_directory_and_a_file_that_is_no_database_are_one_line(
    tmp_path: Path,
) -> None:
    _one_line_error(_audit("state", "--db", str(tmp_path / "nodir" / "x.db")), "no such file")
    _one_line_error(
        _audit("digest", "--db", str(tmp_path)), f"the index database {tmp_path}", "unable to open"
    )
    manifest = tmp_path / "deployment.json"
    manifest.write_text('{"version": 1}', "utf-8")
    _one_line_error(_audit("state", "--db", str(manifest)), str(manifest), "file is not a database")
    assert manifest.read_text("utf-8") == '{"version": 1}'


def test_a_database_of_another_kind_is_refused_by_name() -> None:
    _one_line_error(_audit("state", "--db", "mysql://x@y/z"), "SQLite", "PostgreSQL", "mysql://x@y/z")
    with pytest.raises(IndexDatabaseError, match="SQLite"):
        IndexDatabase(f"mysql://u:{PASSWORD}@y/z")


def test_a_node_url_without_its_scheme_is_one_line(tmp_path: Path) -> None:
    result = _audit("replay", "--rpc-url", "127.0.0.1:18545", "--db", str(tmp_path / "x.sqlite"))
    _one_line_error(result, "--rpc-url 127.0.0.1:18545", "http(s)")
    keyed = _audit("replay", "--rpc-url", f"user:{PASSWORD}@node:8545", "--db", str(tmp_path / "x.sqlite"))
    assert PASSWORD not in _one_line_error(keyed, "--rpc-url ***@node:8545")


def test_progress_names_blocks_not_a_count() -> None:
    def status(synced: int) -> SyncStatus:
        return SyncStatus(
            1, deployment_block=162, synced_block=synced, target_block=257, events=0, digest="", reorgs=0
        )

    assert audit_cli._blocks(status(230)) == "block 230 of 162..257"
    assert audit_cli._blocks(status(161)) == "blocks 162..257"


# ---------------------------------------------------------------------- against a chain


@dataclass
class Indexed:
    url: str
    manifest: Path
    db: str
    status: SyncStatus
    work: Workload


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Indexed]:
    with anvil_node() as url:
        chain = connect_node(url)
        work = Workload.deploy(chain, seed=5)
        work.run(60)
        directory = tmp_path_factory.mktemp("audit_cli")
        manifest = directory / "deployment.json"
        work.system.deployment.save(manifest)
        db = directory / "index.sqlite"
        status = audit.replay(chain, work.system.deployment, IndexDatabase(db))
        yield Indexed(url, manifest, str(db), status, work)


def _node(indexed: Indexed) -> list[str]:
    return ["--rpc-url", indexed.url, "--manifest", str(indexed.manifest)]


@pytest.mark.anvil
def test_an_index_in_a_missing_directory_is_one_line(indexed: Indexed, tmp_path: Path) -> None:
    db = tmp_path / "nodir" / "x.sqlite"
    replay = _audit("replay", *_node(indexed), "--db", str(db))
    _one_line_error(replay, f"cannot create the index {db}: no directory {db.parent}")
    sync = _audit("sync", *_node(indexed), "--db", str(db))
    _one_line_error(sync, str(db), "unable to open database file")


@pytest.mark.anvil
def test_a_replay_onto_a_file_that_is_no_database_leaves_it_alone(indexed: Indexed, tmp_path: Path) -> None:
    manifest = tmp_path / "deployment.json"
    manifest.write_text(indexed.manifest.read_text("utf-8"), "utf-8")
    result = _audit("replay", *_node(indexed), "--db", str(manifest))
    line = _one_line_error(result, str(manifest), "file is not a database")
    # The line says what to do about it, not only what a replay would have done.
    assert "left alone" in line and "name another file with --db" in line and "move or delete" in line
    assert manifest.read_text("utf-8") == indexed.manifest.read_text("utf-8")


@pytest.mark.anvil
def test_verify_on_a_missing_sqlite_file_creates_nothing(indexed: Indexed, tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite"
    _one_line_error(_audit("verify", *_node(indexed), "--db", str(missing)), "no such file")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.anvil
def test_an_svg_or_export_that_cannot_be_written_is_one_line(indexed: Indexed, tmp_path: Path) -> None:
    lineage = ["lineage", "1", "--db", indexed.db, "--svg"]
    _one_line_error(_audit(*lineage, str(tmp_path / "nodir" / "x.svg")), "No such file or directory")
    _one_line_error(_audit(*lineage, str(tmp_path)), f"cannot write the SVG to {tmp_path}")
    taken = tmp_path / "deployment.json"
    taken.write_text("{}", "utf-8")
    _one_line_error(_audit("export", "--db", indexed.db, "--out", str(taken)), f"--out {taken} is a file")
    assert taken.read_text("utf-8") == "{}"
    inside = taken / "export"
    _one_line_error(_audit("export", "--db", indexed.db, "--out", str(inside)), "Not a directory")


@pytest.mark.anvil
def test_the_replay_progress_shows_block_numbers(indexed: Indexed, tmp_path: Path) -> None:
    result = _audit("replay", *_node(indexed), "--db", str(tmp_path / "again.sqlite"))
    assert result.exit_code == 0, result.output
    first, last = indexed.status.deployment_block, indexed.status.synced_block
    assert f"block {last} of {first}..{last}" in result.output


@pytest.mark.anvil
def test_lineage_and_digest_name_the_block_asked_for(indexed: Indexed) -> None:
    _, books = books_at(IndexDatabase(indexed.db))
    latest = max(books.all("certificate"))
    first = indexed.status.deployment_block
    lineage = _audit("lineage", str(latest), "--db", indexed.db, "--block", str(first))
    _one_line_error(lineage, f"no certificate {latest} at block {first}", code=2)
    if first >= 2:  # the block before the deployment is the empty books; one before that is refused
        before = f"block {first - 2} is before the deployment (block {first})"
        # A block the index cannot answer for is the user's argument to change: exit 2 (D90).
        _one_line_error(_audit("digest", "--db", indexed.db, "--block", str(first - 2)), before, code=2)
        _one_line_error(_audit("state", "--db", indexed.db, "--block", str(first - 2)), before, code=2)
    last = indexed.status.synced_block
    for command in ("digest", "state", "export"):
        beyond = _audit(command, "--db", indexed.db, "--block", str(last + 5))
        _one_line_error(beyond, f"the index reaches block {last}, not {last + 5}: sync it first", code=2)
    # A negative block is no block number at all: refused as a bad option (exit 2), as click does.
    for command in ("digest", "state", "export"):
        result = _audit(command, "--db", indexed.db, "--block", "-1")
        assert result.exit_code == 2 and "-1 is not a block number" in result.output, result.output


@pytest.mark.anvil
def test_lineage_of_a_certificate_nobody_issued_is_a_bad_argument(indexed: Indexed) -> None:
    """As `order show 999` and `cert lineage 999`: an id nothing has is the user's to fix, exit 2."""
    _one_line_error(_audit("lineage", "999", "--db", indexed.db), "no certificate 999 in the index", code=2)


@pytest.mark.anvil
def test_replay_until_a_block_the_node_lacks_or_before_the_deployment(
    indexed: Indexed, tmp_path: Path
) -> None:
    first, last = indexed.status.deployment_block, indexed.status.synced_block
    db = tmp_path / "until.sqlite"
    beyond = _audit("replay", *_node(indexed), "--db", str(db), "--until", str(last + 1000))
    assert beyond.exit_code == 0, beyond.output
    said = " ".join(beyond.output.split())
    assert f"block {last + 1000} not reached: the index stops at block " in said, beyond.output
    early = tmp_path / "early.sqlite"
    before = _audit("replay", *_node(indexed), "--db", str(early), "--until", str(first - 1))
    assert before.exit_code == 2, before.output
    assert f"block {first - 1} is before the deployment (block {first})" in " ".join(before.output.split())
    assert not early.exists()
    negative = _audit("replay", *_node(indexed), "--db", str(early), "--until", "-5")
    assert negative.exit_code == 2 and "-5 is not a block number" in negative.output, negative.output


@pytest.mark.anvil
def test_verify_prints_the_recomputed_digest_and_counts_one_finding_in_the_singular(
    indexed: Indexed, tmp_path: Path
) -> None:
    copy = tmp_path / "copy.sqlite"
    with sqlite3.connect(indexed.db) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    forged = "0x" + "ab" * 32
    with sqlite3.connect(copy) as conn:
        (top,) = conn.execute("SELECT max(number) FROM indexed_block").fetchone()
        conn.execute("UPDATE indexed_block SET digest = ? WHERE number = ?", (forged, top))
    result = _audit("verify", *_node(indexed), "--db", str(copy))
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    first = indexed.status.deployment_block
    assert f"digest {forged} (blocks {first}..{indexed.status.synced_block})" in said, result.output
    assert f"the stored events give digest {indexed.status.digest}" in said, result.output
    assert "1 finding" in said and "1 findings" not in said, result.output


def _cells(output: str, title: str, column: str) -> list[str]:
    """The values of a rich table's column as printed, each cell's lines joined back together."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if title in line)
    header = lines[start + 2].split("┃")
    at = [c.strip() for c in header].index(column)
    values: list[str] = []
    for line in lines[start + 4 :]:
        if not line.startswith("│"):
            break
        cells = line.split("│")
        if cells[1].strip():  # the id column: a new row begins
            values.append("")
        values[-1] += cells[at].strip()
    return values


@pytest.mark.anvil
def test_state_on_a_narrow_terminal_shows_every_amount_and_address_whole(
    indexed: Indexed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_cli.console, "width", 80)
    result = _audit("state", "--db", indexed.db)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    assert max(len(line) for line in result.output.splitlines() if line[:1] in "┏┃┡│└") <= 80
    _, books = books_at(IndexDatabase(indexed.db))
    orders = [o for _, o in sorted(books.all("order").items())]
    certificates = [c for _, c in sorted(books.all("certificate").items())]
    assert _cells(result.output, "Orders", "escrowed") == [f"{o['escrowed']:,}" for o in orders]
    assert _cells(result.output, "Orders", "payee") == [o["payee"] for o in orders]
    assert _cells(result.output, "Certificates", "holder") == [c["holder"] for c in certificates]
    assert _cells(result.output, "Certificates", "value") == [f"{c['value']:,}" for c in certificates]


@pytest.mark.anvil
def test_a_lineage_prints_one_whole_line_per_certificate(
    indexed: Indexed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_cli.console, "width", 40)
    _, books = books_at(IndexDatabase(indexed.db))
    deepest = max(books.all("certificate").items(), key=lambda item: item[1]["depth"])[0]
    result = _audit("lineage", str(deepest), "--db", indexed.db)
    assert result.exit_code == 0, result.output
    nodes = [line for line in result.output.splitlines() if re.match(r"\s*#\d+ ", line)]
    for line in nodes:
        cid = int(line.split()[0].removeprefix("#"))
        record = books.all("certificate")[cid]
        assert f"#{cid} {record['holder']} {record['value']:,} " in line
    assert any(line.endswith(" <") and line.split()[0] == f"#{deepest}" for line in nodes)


@pytest.mark.anvil
def test_a_manifest_that_is_a_directory_is_one_line(indexed: Indexed, tmp_path: Path) -> None:
    result = _audit("verify", "--rpc-url", indexed.url, "--manifest", str(tmp_path), "--db", indexed.db)
    _one_line_error(result, f"cannot read the deployment manifest {tmp_path}")


@pytest.mark.parametrize("text", ["[]", '"deployment"', "null", "7"])
def test_a_manifest_that_is_json_but_no_object_is_one_line(
    indexed: Indexed, tmp_path: Path, text: str
) -> None:
    """It ended in AttributeError's traceback ('list' object has no attribute 'get')."""
    manifest = tmp_path / "manifest.json"
    manifest.write_text(text)
    result = _audit("verify", "--rpc-url", indexed.url, "--manifest", str(manifest), "--db", indexed.db)
    _one_line_error(result, f"{manifest}: malformed manifest (a JSON ")


@pytest.mark.anvil
def test_verify_of_another_ledgers_index_names_both_ledgers(indexed: Indexed, tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    other.write_bytes(Path(indexed.db).read_bytes())
    stranger = "0x" + "5A" * 20
    with sqlite3.connect(other) as conn:
        conn.execute("UPDATE index_state SET ledger = ?", (stranger,))
    result = _audit("verify", *_node(indexed), "--db", str(other))
    ledger = indexed.work.system.deployment.ledger
    # As replay and sync refuse it (D93): a --db and a manifest that do not belong together, exit 2.
    _one_line_error(
        result, "indexes another deployment", f"ledger {stranger} (the manifest's: {ledger})", code=2
    )


@pytest.mark.anvil
def test_an_index_begun_at_another_deployment_block_is_refused(indexed: Indexed, tmp_path: Path) -> None:
    """The digest chain starts from the deployment block: an index begun at another block than the
    manifest's would be certified (verify) or continued (sync) with a digest whoever holds the
    manifest cannot reproduce by replaying."""
    data = json.loads(indexed.manifest.read_text())
    began = int(data["deployment_block"])
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps({**data, "deployment_block": began - 1}))
    for command in ("verify", "sync"):
        result = _audit(command, "--rpc-url", indexed.url, "--manifest", str(moved), "--db", indexed.db)
        _one_line_error(result, f"deployment block {began} (the manifest's: {began - 1})", code=2)
    # A manifest whose block is no JSON integer is malformed, not rounded.
    moved.write_text(json.dumps({**data, "deployment_block": began + 0.5}))
    result = _audit("verify", "--rpc-url", indexed.url, "--manifest", str(moved), "--db", indexed.db)
    _one_line_error(result, "deployment_block must be a whole number")


@pytest.mark.anvil
@pytest.mark.timeout(120)  # a follower that retries for ever fails here, not at the suite's limit
def test_sync_follow_on_an_index_begun_at_another_block_stops_with_one_line(
    indexed: Indexed, tmp_path: Path
) -> None:
    """Instead of printing the same refusal on every poll until interrupted. (An index of other
    contracts is refused before the follower starts, see the next test; one begun at another block
    is the follower's own refusal.)"""
    data = json.loads(indexed.manifest.read_text())
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps({**data, "deployment_block": int(data["deployment_block"]) - 1}))
    node = ["--rpc-url", indexed.url, "--manifest", str(moved)]
    result = _audit("sync", *node, "--db", indexed.db, "--follow", "--poll", "0.05")
    assert isinstance(result.exception, SystemExit) and result.exit_code == 2, result.output
    started, refused = result.output.strip().splitlines()
    assert started.startswith("following chain") and refused.startswith("error: ")
    assert "indexes another deployment" in refused


def _copy_index(indexed: Indexed, path: Path) -> Path:
    with sqlite3.connect(indexed.db) as source, sqlite3.connect(path) as target:
        source.backup(target)
    source.close()
    target.close()
    return path


def _stored_deployments(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT chain_id, ledger FROM index_state ORDER BY chain_id").fetchall()
    conn.close()
    return [(int(chain_id), str(ledger)) for chain_id, ledger in rows]


@pytest.mark.anvil
def test_replay_and_sync_leave_another_deployments_index_alone_unless_replace(
    indexed: Indexed, tmp_path: Path
) -> None:
    """A replay replaced whatever index --db held, so an auditor's index of one system was lost to a
    --db pointing at the wrong file, and a sync added a second chain's index beside the first. Both
    now refuse, exit 2, naming both deployments; `replay --replace` replaces it, and a replay over
    the same deployment's index (a rerun) needs no flag."""
    deployment = indexed.work.system.deployment
    theirs = _copy_index(indexed, tmp_path / "theirs.sqlite")
    stranger = "0x" + "5A" * 20
    with sqlite3.connect(theirs) as conn:
        conn.execute("UPDATE index_state SET chain_id = 1, ledger = ?", (stranger,))
    conn.close()
    before = theirs.read_bytes()
    ours = f"chain {deployment.chain_id}, ledger {deployment.ledger}"
    until = ["--until", str(indexed.status.deployment_block + 3)]
    for command in (["replay", *until], ["sync"], ["sync", "--follow"]):
        line = _one_line_error(
            _audit(*command, *_node(indexed), "--db", str(theirs)),
            f"{theirs} indexes another deployment: chain 1, ledger {stranger} (the manifest's: {ours})",
            "left alone",
            "--replace",
            code=2,
        )
        assert ("would replace it" in line) == (command[0] == "replay"), line
        assert theirs.read_bytes() == before
    assert _stored_deployments(theirs) == [(1, stranger)]

    replaced = _audit("replay", *_node(indexed), "--db", str(theirs), *until, "--replace")
    assert replaced.exit_code == 0, replaced.output
    assert _stored_deployments(theirs) == [(deployment.chain_id, deployment.ledger)]
    rerun = _audit("replay", *_node(indexed), "--db", str(theirs), *until)
    assert rerun.exit_code == 0, rerun.output
    assert _stored_deployments(theirs) == [(deployment.chain_id, deployment.ledger)]


@pytest.mark.anvil
def test_a_replay_into_postgresql_holding_another_deployments_index_is_refused(indexed: Indexed) -> None:
    """There a replay empties the index tables, whichever deployments they hold."""
    deployment = indexed.work.system.deployment
    stranger = "0x" + "5A" * 20
    with pg_cluster() as cluster:
        url = cluster.create_database("theirs")
        db = IndexDatabase(url)
        until = indexed.status.deployment_block + 3
        audit.replay(connect_node(indexed.url), deployment, db, until=until)
        with db.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE index_state SET ledger = %s", (stranger,))
        result = _audit("replay", *_node(indexed), "--db", url, "--until", str(until))
        _one_line_error(
            result,
            f"indexes another deployment: chain {deployment.chain_id}, ledger {stranger} (the manifest's: "
            f"chain {deployment.chain_id}, ledger {deployment.ledger})",
            code=2,
        )
        assert [(d.chain_id, d.ledger) for d in db.indexed_deployments()] == [(deployment.chain_id, stranger)]
        db.close()


@pytest.mark.anvil
def test_sync_leaves_a_sqlite_file_that_is_no_index_alone(indexed: Indexed, tmp_path: Path) -> None:
    """It created the index's tables among another application's (as a replay would have replaced
    the file, D68)."""
    crm = tmp_path / "crm.sqlite"
    with sqlite3.connect(crm) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
    conn.close()
    before = crm.read_bytes()
    _one_line_error(
        _audit("sync", *_node(indexed), "--db", str(crm)),
        f"{crm} is a SQLite database but not an index (tables customers)",
        "a sync would add the index's tables to it, so it was left alone",
    )
    assert crm.read_bytes() == before
