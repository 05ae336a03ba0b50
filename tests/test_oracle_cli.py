"""`certledger oracle ...` and `certledger devices ...` as a user runs them."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest
from oracle_support import require_mosquitto
from typer.testing import CliRunner, Result
from world import DEFAULT_QUANTITY, World

from certledger_main import build_app
from oracle.broker import free_port
from oracle.store import DeploymentMark, OrderState, Store

NO_NODE: dict[str, str | None] = {"CERTLEDGER_RPC_URL": None, "CERTLEDGER_MANIFEST": None}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env=NO_NODE)


def test_help_lists_the_oracle_groups(runner: CliRunner) -> None:
    result = runner.invoke(build_app(), ["--help"])
    assert result.exit_code == 0, result.output
    for name in ("oracle", "devices", "demo", "order"):
        assert name in result.output
    for group in (["oracle", "--help"], ["devices", "--help"]):
        assert runner.invoke(build_app(), group).exit_code == 0


def test_status_shows_orders_and_alerts(runner: CliRunner, tmp_path: Path) -> None:
    db = tmp_path / "oracle.db"
    store = Store(db)
    store.register_order(1, carton_weight_grams=12_000, count_tolerance=None, weight_tolerance_pct=None)
    store.register_order(2, carton_weight_grams=None, count_tolerance=None, weight_tolerance_pct=None)
    store.set_state(2, OrderState.DISPUTED, "weight 840000 g does not match 100 cartons")
    store.alert(2, "disputed", "weight 840000 g does not match 100 cartons")
    store.reject(None, "mqtt:x", "high-s", "s is in the upper half")
    store.close()
    result = runner.invoke(build_app(), ["oracle", "status", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "1 pending" in result.output and "1 collecting" in result.output and "1 disputed" in result.output
    assert "Alerts" in result.output and "does not match" in result.output and "high-s" in result.output
    as_json = runner.invoke(build_app(), ["oracle", "status", "--db", str(db), "--json"])
    data = json.loads(as_json.output)
    assert data["counts"]["disputed"] == 1 and data["alerts"][0]["order_id"] == 2


def test_resolve_reopens_a_disputed_order_and_refuses_any_other(runner: CliRunner, tmp_path: Path) -> None:
    db = tmp_path / "oracle.db"
    store = Store(db)
    for order_id in (1, 2):
        store.register_order(
            order_id, carton_weight_grams=None, count_tolerance=None, weight_tolerance_pct=None
        )
    store.set_state(2, OrderState.DISPUTED, "weight 840000 g does not match 100 cartons")
    store.close()
    resolve = ["oracle", "resolve", "--db", str(db)]

    no_reason = runner.invoke(build_app(), [*resolve, "2"])
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    not_disputed = runner.invoke(build_app(), [*resolve, "1", "--reason", "recount"])
    assert not_disputed.exit_code == 2 and "neither disputed" in not_disputed.output
    done = runner.invoke(build_app(), [*resolve, "2", "--reason", "pallet 7 recounted by hand"])
    assert done.exit_code == 0, done.output
    assert "order 2: collecting; 0 readings set aside" in done.output
    again = runner.invoke(build_app(), [*resolve, "2", "--reason", "twice"])
    assert again.exit_code == 2 and "neither disputed" in again.output

    status = json.loads(runner.invoke(build_app(), ["oracle", "status", "--db", str(db), "--json"]).output)
    assert status["counts"]["disputed"] == 0 and status["counts"]["collecting"] == 2
    [alert] = status["alerts"]
    assert alert["kind"] == "resolved" and "pallet 7 recounted by hand" in alert["message"]


def test_status_without_a_database(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(build_app(), ["oracle", "status", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 2


def test_oracle_run_needs_a_relayer_key(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(build_app(), ["oracle", "run", "--db", str(tmp_path / "o.db")])
    assert result.exit_code == 2 and "CERTLEDGER_RELAYER_KEY" in result.output


def test_devices_create_and_list(runner: CliRunner, tmp_path: Path) -> None:
    env = {"CERTLEDGER_DEVICE_PASSWORD": "correct horse"}
    args = [
        "devices",
        "create",
        "dock-rfid",
        "--kind",
        "count",
        "--dir",
        str(tmp_path),
        "--weak-kdf-for-tests",
    ]
    made = runner.invoke(build_app(), args, env=env)
    assert made.exit_code == 0, made.output
    address = made.output.strip()
    listed = runner.invoke(build_app(), ["devices", "list", "--dir", str(tmp_path), "--json"])
    [row] = json.loads(listed.output)
    assert row == {"name": "dock-rfid", "address": address, "kind": "CARTON_COUNT", "next_sequence": 1}
    # One line per device when piped (it wrapped "next sequence 1" onto a second line at 80 columns);
    # an editor's hidden copy of a device file is no device (pathlib's glob matches it).
    (tmp_path / ".dock-rfid.device.json").write_text("{")
    plain = runner.invoke(build_app(), ["devices", "list", "--dir", str(tmp_path)])
    assert plain.output.splitlines() == [f"{'dock-rfid':<16} {address} {'CARTON_COUNT':<17} next sequence 1"]
    again = runner.invoke(build_app(), args, env=env)
    assert again.exit_code == 1 and "exists" in again.output
    no_password = runner.invoke(
        build_app(), ["devices", "create", "x", "--kind", "count", "--dir", str(tmp_path)]
    )
    assert no_password.exit_code == 2


def test_demo_sends_the_receipt_through_the_oracle(runner: CliRunner) -> None:
    require_mosquitto()
    result = runner.invoke(build_app(), ["demo"])
    assert result.exit_code == 0, result.output
    assert "through the oracle" in result.output
    assert "Every fen is accounted for" in result.output and "FAILED" not in result.output


def test_demo_direct_says_it_falls_back(runner: CliRunner) -> None:
    result = runner.invoke(build_app(), ["demo", "--direct"])
    assert result.exit_code == 0, result.output
    assert "falls back to direct signing" in result.output
    assert "Every fen is accounted for" in result.output


def test_requeue_releases_quarantined_items_shown_by_status(runner: CliRunner, tmp_path: Path) -> None:
    db = tmp_path / "oracle.db"
    store = Store(db)
    item = store.receive("mqtt:x", b"{}", order_hint=7)
    store.quarantine(item, "mqtt:x", "internal-error", "checking failed 8 times")
    store.close()
    status = runner.invoke(build_app(), ["oracle", "status", "--db", str(db)])
    assert status.exit_code == 0 and "claims order 7" in status.output and "requeue" in status.output
    assert runner.invoke(build_app(), ["oracle", "requeue", "--db", str(db)]).exit_code != 0
    done = runner.invoke(build_app(), ["oracle", "requeue", str(item), "--db", str(db)])
    assert done.exit_code == 0, done.output
    store = Store(db)
    assert store.inbox_count(processed=True) == 0 and store.unchecked_for_order(7) == (1, 0)
    assert [a.kind for a in store.alerts()] == ["requeued", "quarantined"]
    store.close()


def test_expect_needs_an_existing_database(runner: CliRunner, tmp_path: Path) -> None:
    for db in (tmp_path / "typo.db", tmp_path / "no-such-dir" / "oracle.db"):
        result = runner.invoke(
            build_app(), ["oracle", "expect", "7", "--carton-weight", "12000", "--db", str(db)]
        )
        assert result.exit_code == 2 and "no oracle database" in result.output, result.output
        assert not db.exists()


def test_expect_changes_only_the_options_given(runner: CliRunner, tmp_path: Path) -> None:
    db = tmp_path / "oracle.db"
    Store(db).close()
    expect = ["oracle", "expect", "7", "--db", str(db)]
    assert runner.invoke(build_app(), [*expect, "--carton-weight", "12000"]).exit_code == 0
    done = runner.invoke(build_app(), [*expect, "--count-tolerance", "1"])
    assert done.exit_code == 0, done.output
    assert "carton weight 12000 g, count tolerance 1, weight tolerance default" in done.output
    reset = runner.invoke(build_app(), [*expect, "--reset", "carton-weight"])
    assert reset.exit_code == 0 and "carton weight default, count tolerance 1" in reset.output
    assert runner.invoke(build_app(), expect).exit_code == 2  # nothing to change
    assert runner.invoke(build_app(), [*expect, "--reset", "carton"]).exit_code == 2
    assert runner.invoke(build_app(), [*expect, "--carton-weight", str(2**63)]).exit_code == 2
    store = Store(db)
    record = store.order(7)
    assert record is not None and (record.carton_weight_grams, record.count_tolerance) == (None, 1)
    store.close()


def test_oracle_run_with_a_key_that_is_not_one_says_so_without_showing_it(
    runner: CliRunner, tmp_path: Path
) -> None:
    key = "0xnot-a-key-but-a-secret-all-the-same"
    result = runner.invoke(
        build_app(), ["oracle", "run", "--db", str(tmp_path / "o.db")], env={"CERTLEDGER_RELAYER_KEY": key}
    )
    assert result.exit_code == 2 and "CERTLEDGER_RELAYER_KEY" in result.output, result.output
    assert "does not hold a private key" in result.output
    assert "secret-all-the-same" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.db").exists()


def _devices(runner: CliRunner, directory: Path) -> None:
    for name, kind in (("portal-a", "count"), ("scale", "weight")):
        made = runner.invoke(
            build_app(),
            ["devices", "create", name, "--kind", kind, "--dir", str(directory), "--weak-kdf-for-tests"],
            env={"CERTLEDGER_DEVICE_PASSWORD": "pw"},
        )
        assert made.exit_code == 0, made.output


def _next_sequences(runner: CliRunner, directory: Path) -> dict[str, int]:
    listed = runner.invoke(build_app(), ["devices", "list", "--dir", str(directory), "--json"])
    return {d["name"]: d["next_sequence"] for d in json.loads(listed.output)}


def test_simulate_refuses_a_fault_for_no_device(runner: CliRunner, tmp_path: Path) -> None:
    _devices(runner, tmp_path)
    result = runner.invoke(
        build_app(),
        ["devices", "simulate", "--order", "1", "--dir", str(tmp_path), "--fault", "portal-A=high-s"],
        env={"CERTLEDGER_DEVICE_PASSWORD": "pw"},
    )
    assert result.exit_code == 2 and "no device named portal-A" in result.output, result.output
    assert _next_sequences(runner, tmp_path) == {"portal-a": 1, "scale": 1}


def test_simulate_refuses_an_order_that_is_not_open(
    runner: CliRunner, tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is signed (each signature spends a sequence number) nor published for an order
    the chain does not have, or one already confirmed."""
    _devices(runner, tmp_path)
    monkeypatch.setattr("oracle.cli._system", lambda rpc_url, manifest: world.system)
    confirmed = world.open_order()
    world.confirm(confirmed, DEFAULT_QUANTITY)
    for order, words in ((10**6, "does not exist"), (confirmed, "is confirmed")):
        result = runner.invoke(
            build_app(),
            # an unreachable broker: reaching it would be an exit 1 in other words
            ["devices", "simulate", "--order", str(order), "--dir", str(tmp_path), "--broker-url",
             "mqtt://127.0.0.1:9"],
            env={"CERTLEDGER_DEVICE_PASSWORD": "pw"},
        )  # fmt: skip
        assert result.exit_code == 2 and f"order {order} {words}" in result.output, result.output
    assert _next_sequences(runner, tmp_path) == {"portal-a": 1, "scale": 1}


def _one_error_line(result: Result) -> str:
    """The command's whole output, which must be one `error:` line (no traceback, no usage box)."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # typer.Exit, nothing raised
    [line] = result.output.splitlines()
    assert line.startswith("error: "), line
    return line


def _commands_on(db: Path) -> list[list[str]]:
    """Every oracle command that opens an existing database."""
    return [
        ["oracle", "status", "--db", str(db)],
        ["oracle", "expect", "1", "--carton-weight", "1000", "--db", str(db)],
        ["oracle", "resolve", "1", "--reason", "x", "--db", str(db)],
        ["oracle", "requeue", "--all", "--db", str(db)],
    ]


def test_oracle_commands_refuse_a_file_that_is_not_sqlite(runner: CliRunner, tmp_path: Path) -> None:
    manifest = tmp_path / "deployment.json"
    manifest.write_text('{"chainId": 31337, "contracts": {}}\n')
    for command in _commands_on(manifest):
        line = _one_error_line(runner.invoke(build_app(), command))
        assert f"{manifest} is not an oracle database: the file is not a SQLite database" in line
    assert manifest.read_text() == '{"chainId": 31337, "contracts": {}}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deployment.json"]  # no -wal, no -shm


def _tables(db: Path) -> list[str]:
    with closing(sqlite3.connect(db)) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master ORDER BY name")]


def test_oracle_commands_leave_another_tools_database_alone(runner: CliRunner, tmp_path: Path) -> None:
    """A copy of an audit index (or any SQLite file with tables of its own) given as --db: the
    oracle's tables were put into it and an empty status shown."""
    other = tmp_path / "audit-copy.db"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE certificate (id INTEGER PRIMARY KEY, holder TEXT)")
        conn.execute("CREATE TABLE event (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO event (name) VALUES ('CertificateIssued')")
        conn.commit()
    before = other.read_bytes()
    for command in _commands_on(other):
        line = _one_error_line(runner.invoke(build_app(), command))
        assert f"{other} is not an oracle database" in line and "tables certificate, event" in line
    assert _tables(other) == ["certificate", "event"] and other.read_bytes() == before


def test_oracle_commands_open_a_store_from_before_the_marker(runner: CliRunner, tmp_path: Path) -> None:
    """An oracle store made before stores were marked (application_id 0), with only some of
    today's tables, is still the oracle's: it opens, and gains the rest."""
    db = tmp_path / "oracle.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE alerts (id INTEGER PRIMARY KEY, at REAL NOT NULL, order_id INTEGER, "
                     "kind TEXT NOT NULL, message TEXT NOT NULL)")  # fmt: skip
        conn.execute("INSERT INTO alerts (at, order_id, kind, message) VALUES (0, 3, 'disputed', 'recount')")
        conn.commit()
    result = runner.invoke(build_app(), ["oracle", "status", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["alerts"][0]["message"] == "recount"
    assert {"orders", "inbox", "keeper_flight"} <= set(_tables(db))


def test_devices_list_names_a_malformed_device_file(runner: CliRunner, tmp_path: Path) -> None:
    _devices(runner, tmp_path)
    bad = tmp_path / "dock.device.json"
    address = json.loads((tmp_path / "scale.device.json").read_text())["address"]
    for text, wrong in (
        ('{"address": "x"}', "has no kind"),
        ("not json", "is not JSON"),
        ("[1, 2]", "holds a JSON list, not an object"),
        (json.dumps({"address": "x", "kind": 1}), "address 'x' is not a checksummed address"),
        (json.dumps({"address": address, "kind": 7}), "kind 7 is none of 1 (CARTON_COUNT)"),
        (json.dumps({"address": address, "kind": True}), "kind True is none of"),
    ):
        bad.write_text(text)
        listed = _one_error_line(runner.invoke(build_app(), ["devices", "list", "--dir", str(tmp_path)]))
        assert f"device file {bad}" in listed and wrong in listed, listed
        # simulate reads the same files, and says so before it needs a node or unlocks a key
        simulated = runner.invoke(
            build_app(),
            ["devices", "simulate", "--order", "1", "--dir", str(tmp_path)],
            env={"CERTLEDGER_DEVICE_PASSWORD": "pw"},
        )
        assert _one_error_line(simulated) == listed
    bad.unlink()
    assert _next_sequences(runner, tmp_path) == {"portal-a": 1, "scale": 1}


@pytest.mark.parametrize("name", ["../evil", "sub/evil", "..\\evil", ".", "..", ".hidden", ""])
def test_devices_create_refuses_a_name_that_is_not_a_plain_file_name(
    runner: CliRunner, tmp_path: Path, name: str
) -> None:
    devices = tmp_path / "devs"
    result = runner.invoke(
        build_app(),
        ["devices", "create", name, "--kind", "count", "--dir", str(devices), "--weak-kdf-for-tests"],
        env={"CERTLEDGER_DEVICE_PASSWORD": "pw"},
    )
    line = _one_error_line(result)
    assert f"device name {name!r} is not a plain file name" in line
    assert list(tmp_path.rglob("*")) == []  # not even --dir


@pytest.mark.parametrize(
    "command",
    [
        ["oracle", "resolve", "99999999999999999999999", "--reason", "x"],
        ["oracle", "resolve", str(2**63), "--reason", "x"],
        ["oracle", "resolve", "0", "--reason", "x"],
        ["oracle", "requeue", "99999999999999999999999"],
        ["oracle", "requeue", "99999999999999999999999", "--drop", "--reason", "x"],
        ["oracle", "requeue", "0"],
        ["oracle", "status", "--limit", "99999999999999999999999"],
        ["oracle", "status", "--limit", "-1"],
        ["oracle", "status", "--limit", "0"],
    ],
)
def test_numbers_the_store_cannot_take_are_usage_errors(
    runner: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    """Ids beyond a SQLite integer crashed with OverflowError; a --limit of -1 silently left the
    first order out of the table (`orders[-limit:]`)."""
    db = tmp_path / "oracle.db"
    Store(db).close()
    result = runner.invoke(build_app(), [*command, "--db", str(db)])
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.output and "Traceback" not in result.output


def test_status_limit_shows_the_latest_orders(runner: CliRunner, tmp_path: Path) -> None:
    db = tmp_path / "oracle.db"
    store = Store(db)
    for order_id in (1, 2, 3):
        store.register_order(
            order_id, carton_weight_grams=None, count_tolerance=None, weight_tolerance_pct=None
        )
    store.close()

    def rows(limit: int) -> list[str]:
        result = runner.invoke(build_app(), ["oracle", "status", "--db", str(db), "--limit", str(limit)])
        assert result.exit_code == 0, result.output
        return re.findall(r"│ (\d+) +│ collecting", result.output)

    assert rows(2) == ["2", "3"] and rows(2**31) == ["1", "2", "3"]


def _run_oracle(
    runner: CliRunner, tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch, *args: str
) -> Result:
    """`oracle run` on the embedded chain, its broker unreachable and given up on after 0.5 s."""
    monkeypatch.setattr("oracle.cli._system", lambda rpc_url, manifest: world.system)
    env = {"CERTLEDGER_RELAYER_KEY": world.cast.relayer.key.hex(), "CERTLEDGER_ORACLE_MQTT_TIMEOUT": "0.5"}
    command = ["oracle", "run", "--db", str(tmp_path / "o.db"), "--broker-url", "mqtt://127.0.0.1:9", *args]
    return runner.invoke(build_app(), command, env=env)


def test_oracle_run_with_its_http_port_in_use_fails_in_one_line(
    runner: CliRunner, tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It printed "oracle running" and went on without an HTTP intake (uvicorn only logged it)."""
    before = set(threading.enumerate())
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = _run_oracle(runner, tmp_path, world, monkeypatch, "--http-port", str(port))
    line = _one_error_line(result)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "in use" in line, line
    assert set(threading.enumerate()) <= before  # no HTTP or MQTT thread left behind


def test_oracle_run_stops_its_http_intake_when_the_broker_fails(
    runner: CliRunner, tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = set(threading.enumerate())
    port = free_port()
    line = _one_error_line(_run_oracle(runner, tmp_path, world, monkeypatch, "--http-port", str(port)))
    assert "no connection to mqtt://127.0.0.1:9" in line, line
    assert set(threading.enumerate()) <= before
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens there any more


def test_oracle_run_with_a_setting_it_cannot_use_fails_in_one_line(
    runner: CliRunner, tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad CERTLEDGER_ORACLE_* value ended in pydantic's ValidationError traceback."""
    monkeypatch.setattr("oracle.cli._system", lambda rpc_url, manifest: world.system)
    env = {"CERTLEDGER_RELAYER_KEY": world.cast.relayer.key.hex(), "CERTLEDGER_ORACLE_MQTT_TIMEOUT": "abc"}
    command = ["oracle", "run", "--db", str(tmp_path / "o.db"), "--broker-url", "mqtt://127.0.0.1:9"]
    line = _one_error_line(runner.invoke(build_app(), command, env=env))
    assert line.startswith("error: CERTLEDGER_ORACLE_MQTT_TIMEOUT: "), line
    assert not (tmp_path / "o.db").exists()


def test_oracle_run_warns_of_a_relayer_off_the_allow_list(
    runner: CliRunner, tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started with a key the oracle contract does not allow, it ran, and the first receipt
    failed RelayerNotAllowed: it says so at start."""
    monkeypatch.setattr("oracle.cli._system", lambda rpc_url, manifest: world.system)
    env = {"CERTLEDGER_RELAYER_KEY": world.cast.outsider.key.hex(), "CERTLEDGER_ORACLE_MQTT_TIMEOUT": "0.5"}
    command = ["oracle", "run", "--db", str(tmp_path / "o.db"), "--broker-url", "mqtt://127.0.0.1:9"]
    result = runner.invoke(build_app(), command, env=env)
    said = " ".join(result.output.split())
    assert f"warning: relayer {world.cast.outsider.address} is not on the oracle's allow-list" in said, said


def test_oracle_run_on_a_store_of_another_chain_fails_in_one_line(
    runner: CliRunner, tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "o.db"
    Store(db).bind(DeploymentMark(1, world.ledger.address, world.oracle.address, 7, "0x" + "ab" * 32))
    line = _one_error_line(_run_oracle(runner, tmp_path, world, monkeypatch))
    assert "belongs to another chain or deployment" in line and "move it aside" in line, line
