"""The oracle as an operator runs it, against anvil and a throwaway mosquitto: `certledger oracle
run` in its own process, `certledger devices create|simulate` and `certledger oracle status`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from index_support import anvil_node, connect_node
from oracle_support import chain_ranges, require_mosquitto, wait_until
from typer.testing import CliRunner

from certledger_main import build_app
from chain_client.models import OrderStatus, Role
from chain_client.receipts import DeviceEnrolment, ReadingKind, label_hash
from chain_client.system import System
from oracle.broker import Mosquitto, free_port
from oracle.devices import DeviceFiles, device_address

pytestmark = pytest.mark.anvil


@pytest.fixture(autouse=True)
def _mosquitto_installed() -> None:
    require_mosquitto()


DAY = 86_400
PASSWORD = "warehouse 7 devices"


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def status(runner: CliRunner, db: Path) -> dict[str, object]:
    result = runner.invoke(build_app(), ["oracle", "status", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.output)
    return data


def order_states(runner: CliRunner, db: Path) -> dict[int, str]:
    if not db.exists():
        return {}
    orders = status(runner, db)["orders"]
    assert isinstance(orders, list)
    return {int(o["order_id"]): str(o["state"]) for o in orders}


def test_oracle_run_confirms_simulated_deliveries_and_disputes_a_bad_one(tmp_path: Path) -> None:
    runner = CliRunner(env={"CERTLEDGER_RPC_URL": None, "CERTLEDGER_MANIFEST": None})
    devices_dir = tmp_path / "devices"
    for name, kind in (("portal-a", "count"), ("portal-b", "count"), ("scale", "weight")):
        made = runner.invoke(
            build_app(),
            ["devices", "create", name, "--kind", kind, "--dir", str(devices_dir), "--weak-kdf-for-tests"],
            env={"CERTLEDGER_DEVICE_PASSWORD": PASSWORD},
        )
        assert made.exit_code == 0, made.output

    with anvil_node() as url, Mosquitto(tmp_path / "broker") as broker:
        chain = connect_node(url)
        admin, issuer, supplier, relayer = (chain.new_account() for _ in range(4))
        system = System.deploy(chain, admin, admin_entity_id=label_hash("USCC:OPERATOR"))
        manifest = tmp_path / "deployment.json"
        system.deployment.save(manifest)
        ledger, oracle = system.ledger, system.oracle
        ledger.register_participant(admin, issuer.address, label_hash("USCC:I"), Role.ISSUER, 10**12)
        ledger.register_participant(admin, supplier.address, label_hash("USCC:S"), Role.SUPPLIER)
        system.token.mint(admin, issuer.address, 10**12)
        system.token.approve(issuer, ledger.address, 2**256 - 1)
        warehouse = label_hash("WH-NODE")
        enrolled = [device_address(DeviceFiles(devices_dir, n)) for n in ("portal-a", "portal-b", "scale")]
        oracle.register_warehouse(
            admin, warehouse, [DeviceEnrolment(a, int(k)) for a, k in enrolled], 2, 3_600, chain_ranges()
        )
        oracle.set_relayer(admin, relayer.address, True)
        now = chain.now()
        orders = [
            ledger.open_order(
                issuer, payee=supplier.address, amount=1_000_000, maturity=now + 90 * DAY,
                invoice_hash=label_hash(f"INV-{i}"), warehouse=warehouse, goods_hash=label_hash("goods"),
                expected_quantity=500, deadline=now + 14 * DAY,
            )[0]
            for i in range(2)
        ]  # fmt: skip

        db = tmp_path / "oracle.db"
        node = ["--rpc-url", url, "--manifest", str(manifest), "--broker-url", broker.url]
        env = {**os.environ, "CERTLEDGER_RELAYER_KEY": "0x" + relayer.key.hex()}
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "certledger_main", "oracle", "run", *node, "--db", str(db), "--http-port",
             str(port), "--keeper-interval", "3600"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            # Up once its HTTP intake answers; the warehouse system registers what each order expects.
            base = f"http://127.0.0.1:{port}"
            try:
                wait_until(lambda: http_ok(f"{base}/orders"), timeout=60)
            except AssertionError:
                process.kill()
                raise AssertionError(process.communicate(timeout=10)[0].decode()) from None
            for order_id in orders:
                put = httpx.put(f"{base}/orders/{order_id}", json={"carton_weight_grams": 12_000}, timeout=10)
                assert put.status_code == 200, put.text
            # Let the chain sit idle: anvil mines on demand, so its latest block is now older than the
            # readings (made at the wall clock): they must still confirm (simulated at the pending block).
            time.sleep(6)
            sim = ["devices", "simulate", "--dir", str(devices_dir), *node, "--carton-weight", "12000"]
            simulate_env = {"CERTLEDGER_DEVICE_PASSWORD": PASSWORD}
            good = runner.invoke(
                build_app(),
                # One portal malleates its signature and the weighbridge sends twice: portal-a and
                # the weighbridge still make the quorum.
                [*sim, "--order", str(orders[0]), "--cartons", "480", "--fault", "portal-b=high-s",
                 "--fault", "scale=replay"],
                env=simulate_env,
            )  # fmt: skip
            assert good.exit_code == 0, good.output
            bad = runner.invoke(
                build_app(), [*sim, "--order", str(orders[1]), "--fault", "scale=disagree"], env=simulate_env
            )
            assert bad.exit_code == 0, bad.output
            try:
                wait_until(
                    lambda: order_states(runner, db) == {orders[0]: "confirmed", orders[1]: "disputed"},
                    timeout=60,
                )
            except AssertionError:
                raise AssertionError(json.dumps(status(runner, db), indent=1)) from None
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output.decode()
        assert ledger.order(orders[0]).status == OrderStatus.CONFIRMED
        assert ledger.order(orders[0]).delivered_quantity == 480
        assert ledger.order(orders[1]).status == OrderStatus.OPEN
        alerts = status(runner, db)["alerts"]
        assert isinstance(alerts, list) and alerts[0]["kind"] == "disputed"
        assert "weight" in alerts[0]["message"]
        refused = status(runner, db)["refused"]
        assert isinstance(refused, list)
        reasons = {r["reason"] for r in refused}
        # The weighbridge's second copy is answered as the first: stored once, no refusal.
        assert "high-s" in reasons and "replayed" not in reasons
        text = runner.invoke(build_app(), ["oracle", "status", "--db", str(db)]).output
        assert "1 confirmed" in text and "1 disputed" in text
        listed = json.loads(
            runner.invoke(build_app(), ["devices", "list", "--dir", str(devices_dir), "--json"]).output
        )
        # Each device signed one reading per order (a replay is the same reading sent twice).
        assert {d["name"]: d["next_sequence"] for d in listed} == {"portal-a": 3, "portal-b": 3, "scale": 3}
        assert ReadingKind.CARTON_COUNT.name in {d["kind"] for d in listed}
