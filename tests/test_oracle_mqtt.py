"""The MQTT intake against a real mosquitto started by the test on a free loopback port."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from oracle_support import (
    CHAIN_ID,
    GOODS,
    ORACLE,
    WAREHOUSE,
    FakeChain,
    account,
    confirmations,
    enrol_warehouse,
    require_mosquitto,
    wait_until,
)
from world import World

from chain_client.models import OrderStatus
from chain_client.receipts import ReadingKind
from oracle.broker import Mosquitto
from oracle.devices import DeviceSigner, MemorySequence, ReadingContext
from oracle.gateway import Gateway
from oracle.mqtt import MqttIntake, MqttPublisher
from oracle.service import OracleService
from oracle.settings import OracleSettings
from oracle.simulator import Delivery, Fault, Publication, SimulatedDevice, publish_all, readings_for
from oracle.store import OrderState, Store
from oracle.validation import Reason
from oracle.wire import MAX_PAYLOAD, SignedReading


@pytest.fixture(autouse=True)
def _mosquitto_installed() -> None:
    require_mosquitto()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


def payloads(store: Store) -> list[bytes]:
    rows = store._query("SELECT payload FROM inbox ORDER BY id")
    return [bytes(r[0]) for r in rows]


def test_broker_restart_loses_nothing(broker: Mosquitto, tmp_path: Path) -> None:
    """Readings are signed by a device and checked by the gateway against a fake chain: the raw
    inbox may hold a reading twice (the broker redelivers one whose PUBACK a restart cut off), the
    accepted observations hold each exactly once."""
    settings = OracleSettings(broker_url=broker.url, client_id="gateway-under-test", mqtt_timeout=10)
    store = Store(tmp_path / "oracle.db")
    chain = FakeChain()
    device = account("rfid-mqtt")
    chain.devices[device.address] = int(ReadingKind.CARTON_COUNT)
    chain.orders[1] = OrderStatus.OPEN
    signer = DeviceSigner(
        device, ReadingKind.CARTON_COUNT, MemorySequence(1), chain_id=CHAIN_ID, oracle=ORACLE
    )
    context = ReadingContext(1, WAREHOUSE, GOODS, 1)

    def keep(payload: bytes, source: str) -> int:
        return store.receive(source, payload)

    publisher = MqttPublisher(settings, "device-under-test")
    publisher.start()
    sent: list[bytes] = []

    def publish(batch: str, n: int = 10) -> None:
        wait_until(publisher.connected.is_set, timeout=20)
        for _ in range(n):
            obs, sig = signer.observe(context, 1000, observed_at=chain.now_value - 10, valid_for=3_600)
            payload = SignedReading(obs, sig).encode()
            publisher.publish(f"{settings.topic_prefix}/wh/dev", payload, timeout=20)
            sent.append(payload)

    gateway = MqttIntake(settings, keep)
    gateway.start()
    publish("connected")
    wait_until(lambda: set(payloads(store)) >= set(sent))

    # The gateway goes away: the broker queues readings for its persistent session...
    gateway.stop()
    publish("while-away")
    # ...and keeps that queue across its own restart (persistence saved at SIGTERM).
    broker.restart()
    publish("after-broker-restart")
    gateway = MqttIntake(settings, keep)
    gateway.start()
    wait_until(lambda: set(payloads(store)) >= set(sent), timeout=20)

    # A broker restart while the gateway is connected: it reconnects by itself.
    broker.restart()
    publish("reconnected")
    wait_until(lambda: set(payloads(store)) >= set(sent), timeout=30)
    gateway.stop()
    publisher.stop()

    assert len(sent) == len(set(sent)) == 40
    verdicts = Gateway(store, chain, clock_skew=30).process_pending()
    assert sum(v.accepted and not v.duplicate for v in verdicts) == 40
    assert len(store.observations(1)) == 40
    # A redelivered copy is answered as the first time: no refusal is recorded for it.
    assert all(v.accepted for v in verdicts) and store.rejections() == []


def test_a_reading_not_stored_is_not_acknowledged_and_comes_again(broker: Mosquitto, tmp_path: Path) -> None:
    settings = OracleSettings(broker_url=broker.url, client_id="flaky-gateway", mqtt_timeout=10)
    store = Store(tmp_path / "oracle.db")
    failures = {"left": 1}

    def flaky(payload: bytes, source: str) -> int:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("disk full")
        return store.receive(source, payload)

    gateway = MqttIntake(settings, flaky)
    gateway.start()
    publisher = MqttPublisher(settings, "device")
    publisher.start()
    publisher.publish(f"{settings.topic_prefix}/wh/dev", b"only-once", timeout=10)
    wait_until(lambda: failures["left"] == 0)
    # Unacknowledged, the broker resends it when the gateway reconnects.
    gateway.stop()
    gateway = MqttIntake(settings, flaky)
    gateway.start()
    wait_until(lambda: store.inbox_count() == 1, timeout=20)
    gateway.stop()
    publisher.stop()
    assert payloads(store) == [b"only-once"]


def test_a_reading_not_stored_is_stored_on_the_next_step_without_a_reconnect(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """On a healthy link the broker resends an unacknowledged reading only at the next connection,
    which may come after its deadline: the intake keeps it and stores it again itself, then
    acknowledges it, so a later reconnect brings nothing twice."""
    settings = OracleSettings(broker_url=broker.url, client_id="retrying-gateway", mqtt_timeout=10)
    store = Store(tmp_path / "oracle.db")
    failures = {"left": 1}

    def flaky(payload: bytes, source: str) -> int:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("database is locked")
        return store.receive(source, payload)

    gateway = MqttIntake(settings, flaky)
    gateway.start()
    publisher = MqttPublisher(settings, "device")
    publisher.start()
    publisher.publish(f"{settings.topic_prefix}/wh/dev", b"first", timeout=10)
    publisher.publish(f"{settings.topic_prefix}/wh/dev", b"second", timeout=10)
    wait_until(lambda: store.inbox_count() == 1)
    assert payloads(store) == [b"second"]
    assert gateway.retry_unstored() == 0  # what the service does on each step
    assert sorted(payloads(store)) == [b"first", b"second"]
    gateway.stop()
    gateway = MqttIntake(settings, flaky)  # acknowledged: nothing comes again
    gateway.start()
    time.sleep(1)
    gateway.stop()
    publisher.stop()
    assert sorted(payloads(store)) == [b"first", b"second"]


def test_an_oversized_payload_is_acknowledged_and_dropped_not_stored(
    broker: Mosquitto, tmp_path: Path
) -> None:
    settings = OracleSettings(broker_url=broker.url, client_id="capped-gateway", mqtt_timeout=10)
    store = Store(tmp_path / "oracle.db")
    gateway = Gateway(store, FakeChain(), clock_skew=30)
    intake = MqttIntake(settings, gateway.receive)
    intake.start()
    publisher = MqttPublisher(settings, "device")
    publisher.start()
    publisher.publish(f"{settings.topic_prefix}/wh/dev", b"x" * (MAX_PAYLOAD + 1), timeout=10)
    publisher.publish(f"{settings.topic_prefix}/wh/dev", b"small", timeout=10)
    wait_until(lambda: intake.received == 1)
    assert intake.oversized == 1 and payloads(store) == [b"small"]
    assert intake.retry_unstored() == 0  # not kept for another try either
    intake.stop()
    intake = MqttIntake(settings, gateway.receive)  # acknowledged: it does not come again
    intake.start()
    time.sleep(1)
    intake.stop()
    publisher.stop()
    assert intake.oversized == 0 and payloads(store) == [b"small"]


def test_the_default_client_id_is_one_per_store_and_stable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stable across restarts (the persistent session must be resumed), different per store; an
    id configured is kept as given."""
    monkeypatch.delenv("CERTLEDGER_ORACLE_CLIENT_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    a = OracleSettings(db=Path("a.db")).client_id
    assert (
        a == OracleSettings(db=tmp_path / "a.db").client_id == OracleSettings(db=Path("x/../a.db")).client_id
    )
    assert a != OracleSettings(db=Path("b.db")).client_id
    assert a != OracleSettings(db=tmp_path / "elsewhere" / "a.db").client_id
    assert a.startswith("certledger-gateway-")
    assert OracleSettings(db=Path("a.db"), client_id="gateway-7").client_id == "gateway-7"
    monkeypatch.setenv("CERTLEDGER_ORACLE_CLIENT_ID", "from-env")
    assert OracleSettings(db=Path("a.db")).client_id == "from-env"


def test_two_oracles_with_their_own_stores_keep_their_connections(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under one default client id each connection took the other's session, every second or two."""
    monkeypatch.delenv("CERTLEDGER_ORACLE_CLIENT_ID", raising=False)
    intakes = [
        MqttIntake(OracleSettings(broker_url=broker.url, db=tmp_path / name, mqtt_timeout=10), lambda p, s: 0)
        for name in ("one.db", "two.db")
    ]
    for intake in intakes:
        intake.start()
    time.sleep(2.5)  # a takeover's reconnect comes within the 1 s retry delay
    assert all(intake.connected.is_set() for intake in intakes)
    for intake in intakes:
        intake.stop()
    assert not [
        r.getMessage() for r in caplog.records if r.name == "oracle.mqtt" and r.levelno >= logging.WARNING
    ]


def test_a_session_taken_over_again_and_again_is_named_in_a_warning(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two gateways under one id: MQTT 3.1.1 gives no reason for the broker's close, so the
    warning comes from connections lost seconds after they were made, one after another."""
    settings = OracleSettings(broker_url=broker.url, client_id="twice-configured", mqtt_timeout=10)
    first, second = MqttIntake(settings, lambda p, s: 0), MqttIntake(settings, lambda p, s: 0)
    first.start()
    second.start()

    def warned() -> list[str]:
        return [r.getMessage() for r in caplog.records if "may be connected" in r.getMessage()]

    try:
        [message, *_] = wait_until(warned, timeout=20)
    finally:
        first.stop()
        second.stop()
    assert "another client with client id 'twice-configured' may be connected" in message


# ---------------------------------------------------------------------- devices -> MQTT -> chain


def run_until(service: OracleService, done: Callable[[], bool], timeout: float = 30.0) -> None:
    """Steps the pipeline in this thread (the embedded chain is single-threaded) until `done`."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"pipeline did not get there in {timeout}s")
        service.step()
        time.sleep(0.02)


def test_simulated_devices_over_mqtt_confirm_once_across_a_gateway_restart(
    world: World, broker: Mosquitto, tmp_path: Path
) -> None:
    count, weight = ReadingKind.CARTON_COUNT, ReadingKind.NET_WEIGHT_GRAMS
    warehouse, devices = enrol_warehouse(world, [count, count, weight])
    good_order = world.open_order(warehouse=warehouse, expected_quantity=1_000)
    bad_order = world.open_order(warehouse=warehouse, expected_quantity=1_000)
    settings = OracleSettings(
        broker_url=broker.url,
        db=tmp_path / "oracle.db",
        client_id="gateway-e2e",
        http_port=0,
        carton_weight_grams=12_000,
        keeper_interval=10**9,
    )
    version = world.oracle.warehouse(warehouse).device_set_version
    now = max(world.chain.now(), int(time.time()))

    def delivery(order_id: int, faults: list[Fault]) -> list[Publication]:
        context = ReadingContext(order_id, warehouse, world.goods, version)
        return readings_for(
            [SimulatedDevice(d, f) for d, f in zip(devices, faults, strict=True)],
            context,
            Delivery(990, 12_000),
            observed_at=now - 30,
            valid_for=3_600,
            topic_prefix=settings.topic_prefix,
            rng=random.Random(1),
        )

    # Order 1: one RFID portal malleates its signature, the weighbridge sends its reading twice.
    good = delivery(good_order, [Fault.NONE, Fault.HIGH_S, Fault.REPLAY])
    # Order 2: the weighbridge reads 20% heavy.
    bad = delivery(bad_order, [Fault.NONE, Fault.NONE, Fault.DISAGREE])

    service = OracleService.build(settings, world.system, world.cast.relayer, keeper=False)
    service.start_mqtt()
    publisher = MqttPublisher(settings, "devices-e2e")
    publisher.start()
    publish_all(publisher, good + bad)

    def final(order_id: int) -> Callable[[], bool]:
        def check() -> bool:
            record = service.store.order(order_id)
            return record is not None and record.state.final

        return check

    run_until(service, lambda: final(good_order)() and final(bad_order)())
    assert service.store.order(good_order).state == OrderState.CONFIRMED  # type: ignore[union-attr]
    assert service.store.order(bad_order).state == OrderState.DISPUTED  # type: ignore[union-attr]
    reasons = service.store.rejection_reasons()
    # The weighbridge's second copy is stored once and is no refusal: nothing is wrong with it.
    assert Reason.HIGH_S in reasons and Reason.REPLAYED not in reasons
    assert world.ledger.order(good_order).delivered_quantity == 990
    assert world.ledger.order(bad_order).status == OrderStatus.OPEN
    service.close()

    # The gateway restarts (same database, same session) and the devices send everything again.
    service = OracleService.build(settings, world.system, world.cast.relayer, keeper=False)
    service.start_mqtt()
    publish_all(publisher, good + bad)
    run_until(
        service,
        lambda: (
            service.mqtt is not None
            and service.mqtt.received >= len(good) + len(bad)
            and service.store.inbox_count(processed=False) == 0
        ),
    )
    service.step()
    publisher.stop()
    service.close()
    assert confirmations(world, good_order) == 1 and confirmations(world, bad_order) == 0
