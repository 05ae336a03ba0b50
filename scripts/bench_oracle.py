"""The receipt oracle end to end: latency from the last device's publish to the receipt confirmed on
chain, and the gas of confirmReceipt by number of readings.

    python scripts/bench_oracle.py [--orders 200] [--out bench/oracle.json]

Starts anvil (automine) and a throwaway mosquitto, deploys the system, and runs the oracle service
(gateway + relayer, keeper off) in its own thread as `certledger oracle run` does. For each order,
one after another: the order is opened, then an RFID portal and a weighbridge publish signed
readings over MQTT (QoS 1); the clock starts when the broker has acknowledged the last one and
stops when the oracle's store records the order confirmed (after the receipt of the transaction).

Gas: receipt gasUsed of confirmReceipt with m = 2, 3 and 5 readings (a warehouse of five devices,
both kinds among the readings), sent through the relayer's own submitter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the anvil launcher the tests use

from index_support import anvil_node, connect_node  # noqa: E402

from chain_client.models import Role  # noqa: E402
from chain_client.receipts import DeviceEnrolment, ReadingKind, ReadingRange, label_hash  # noqa: E402
from chain_client.system import System  # noqa: E402
from oracle.broker import Mosquitto  # noqa: E402
from oracle.devices import DeviceSigner, MemorySequence, ReadingContext  # noqa: E402
from oracle.mqtt import MqttPublisher  # noqa: E402
from oracle.service import OracleService  # noqa: E402
from oracle.settings import OracleSettings  # noqa: E402
from oracle.simulator import Delivery, SimulatedDevice, publish_all, readings_for  # noqa: E402
from oracle.store import OrderState  # noqa: E402
from oracle.submitter import ChainSubmitter  # noqa: E402
from oracle.wire import SignedReading  # noqa: E402

CARTON_G = 12_000
QUANTITY = 1_000
AMOUNT = 1_000_000
DAY = 86_400
RANGES = [
    ReadingRange(int(ReadingKind.CARTON_COUNT), 1, 100_000),
    ReadingRange(int(ReadingKind.NET_WEIGHT_GRAMS), 1_000, 2_000_000_000),
]


class Setup:
    def __init__(self, system: System, admin: LocalAccount) -> None:
        chain = system.chain
        self.system = system
        self.admin = admin
        self.issuer = chain.new_account()
        self.supplier = chain.new_account()
        self.relayer = chain.new_account()
        ledger, token, oracle = system.ledger, system.token, system.oracle
        ledger.register_participant(
            admin, self.issuer.address, label_hash("USCC:ISSUER"), Role.ISSUER, 10**15
        )
        ledger.register_participant(admin, self.supplier.address, label_hash("USCC:SUPPLIER"), Role.SUPPLIER)
        token.mint(admin, self.issuer.address, 10**15)
        token.approve(self.issuer, ledger.address, 2**256 - 1)
        oracle.set_relayer(admin, self.relayer.address, True)
        self._labels = 0

    def warehouse(self, kinds: list[ReadingKind], threshold: int) -> tuple[bytes, list[DeviceSigner]]:
        chain = self.system.chain
        self._labels += 1
        warehouse = label_hash(f"WH-BENCH-{self._labels}")
        devices = [
            DeviceSigner(
                chain.new_account(0, seed=f"bench-device-{self._labels}-{i}"),
                kind,
                MemorySequence(1),
                chain_id=chain.chain_id,
                oracle=self.system.oracle.address,
            )
            for i, kind in enumerate(kinds)
        ]
        self.system.oracle.register_warehouse(
            self.admin,
            warehouse,
            [DeviceEnrolment(d.address, int(d.kind)) for d in devices],
            threshold,
            3_600,
            RANGES,
        )
        return warehouse, devices

    def open_order(self, warehouse: bytes, n: int) -> int:
        now = self.system.chain.now()
        order_id, _ = self.system.ledger.open_order(
            self.issuer,
            payee=self.supplier.address,
            amount=AMOUNT,
            maturity=now + 90 * DAY,
            invoice_hash=label_hash(f"INV-BENCH-{warehouse.hex()}-{n}"),
            warehouse=warehouse,
            goods_hash=label_hash("goods"),
            expected_quantity=QUANTITY,
            deadline=now + 14 * DAY,
        )
        return order_id


def latency(setup: Setup, broker_url: str, orders: int, workdir: Path, console: Console) -> dict[str, Any]:
    system = setup.system
    warehouse, devices = setup.warehouse([ReadingKind.CARTON_COUNT, ReadingKind.NET_WEIGHT_GRAMS], 2)
    settings = OracleSettings(
        broker_url=broker_url,
        db=workdir / "oracle.db",
        client_id="bench-gateway",
        http_port=0,
        carton_weight_grams=CARTON_G,
        poll_interval=0.05,
        keeper_interval=10**9,
    )
    service = OracleService.build(settings, system, setup.relayer, keeper=False)
    service.start_mqtt()
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), name="oracle-pipeline", daemon=True)
    thread.start()
    publisher = MqttPublisher(settings, "bench-devices")
    publisher.start()
    rng = random.Random(2026)
    samples: list[float] = []
    try:
        for n in range(orders):
            with service.view.lock:
                order_id = setup.open_order(warehouse, n)
                version = system.oracle.warehouse(warehouse).device_set_version
                now = service.view.now()
            context = ReadingContext(order_id, warehouse, label_hash("goods"), version)
            publications = readings_for(
                [SimulatedDevice(d) for d in devices],
                context,
                Delivery(QUANTITY, CARTON_G),
                observed_at=now - 5,
                valid_for=3_600,
                topic_prefix=settings.topic_prefix,
                rng=rng,
            )
            publish_all(publisher, publications)
            published = time.time()
            deadline = time.monotonic() + 60
            while True:
                record = service.store.order(order_id)
                if record is not None and record.state.final:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"order {order_id} not confirmed within 60 s")
                time.sleep(0.002)
            if record.state != OrderState.CONFIRMED or record.confirmed_at is None:
                raise RuntimeError(f"order {order_id}: {record.state} {record.detail}")
            samples.append(record.confirmed_at - published)
            if (n + 1) % 50 == 0:
                console.print(f"  {n + 1} orders, median so far {statistics.median(samples) * 1000:.0f} ms")
    finally:
        publisher.stop()
        service.stop_and_wake(stop)
        thread.join(timeout=30)
        service.close()
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]

    return {
        "orders": len(samples),
        "p50_ms": round(pct(50) * 1000, 1),
        "p99_ms": round(pct(99) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "mean_ms": round(statistics.fmean(samples) * 1000, 1),
    }


def gas(setup: Setup) -> dict[str, dict[str, int]]:
    """confirmReceipt's gas for m readings, on a fresh warehouse of five devices (three portals, two
    weighbridges) per m: the first receipt pays for each device's sequence bitmap word (cold), the
    second receipt, by the same devices, finds it written (warm)."""
    kinds = [ReadingKind.CARTON_COUNT] * 3 + [ReadingKind.NET_WEIGHT_GRAMS] * 2
    submitter = ChainSubmitter(setup.system, setup.relayer)
    out: dict[str, dict[str, int]] = {}
    for m, chosen in ((2, [0, 3]), (3, [0, 1, 3]), (5, [0, 1, 2, 3, 4])):
        warehouse, devices = setup.warehouse(kinds, 2)
        for label in ("first_receipt", "later_receipt"):
            order_id = setup.open_order(warehouse, 10_000 + 10 * m + len(out.get(f"m{m}", {})))
            version = setup.system.oracle.warehouse(warehouse).device_set_version
            context = ReadingContext(order_id, warehouse, label_hash("goods"), version)
            now = max(setup.system.chain.now(), int(time.time()))
            readings = []
            for i in chosen:
                d = devices[i]
                value = QUANTITY if d.kind == ReadingKind.CARTON_COUNT else QUANTITY * CARTON_G
                observation, signature = d.observe(context, value, observed_at=now - 5, valid_for=3_600)
                readings.append(SignedReading(observation, signature))
            prepared = submitter.prepare(readings)
            submitter.broadcast(prepared)
            mined = submitter.wait([prepared.tx_hash], 60)
            assert mined is not None and mined.succeeded, mined
            out.setdefault(f"m{m}", {})[label] = mined.gas_used
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "oracle.json")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="bench-oracle-") as tmp, anvil_node() as url:
        workdir = Path(tmp)
        chain = connect_node(url)
        admin = chain.new_account(seed="bench-oracle-admin")
        system = System.deploy(chain, admin, admin_entity_id=label_hash("USCC:OPERATOR"))
        setup = Setup(system, admin)
        console.print("gas of confirmReceipt ...")
        gas_used = gas(setup)
        console.print(f"latency over {args.orders} orders ...")
        with Mosquitto(workdir / "broker") as broker:
            lat = latency(setup, broker.url, args.orders, workdir, console)
    result = {
        "node": "anvil (automine), local",
        "broker": "mosquitto, local, persistence on",
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            # Latency is mostly JSON-RPC round trips through web3 (~25 per order): a busy machine shows.
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        },
        "latency_last_publish_to_confirmed": lat,
        "confirm_receipt_gas": gas_used,
        "note": "latency: broker PUBACK of the last reading to the order recorded confirmed "
        "(gateway checks, agreement, simulate, sign, send, receipt); orders one at a time",
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = Table(title="Receipt oracle")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row(f"latency p50 ({lat['orders']} orders)", f"{lat['p50_ms']} ms")
    table.add_row("latency p99", f"{lat['p99_ms']} ms")
    for key, value in gas_used.items():
        table.add_row(
            f"confirmReceipt gas, {key[1:]} readings",
            f"{value['first_receipt']:,} first / {value['later_receipt']:,} later",
        )
    console.print(table)
    console.print(f"written to {args.out}")


if __name__ == "__main__":
    main()
