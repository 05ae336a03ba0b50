"""The MQTT intake against a real mosquitto started by the test on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from oracle_support import CHAIN_ID, GOODS, ORACLE, WAREHOUSE, FakeChain, account, wait_until

from chain_client.models import OrderStatus
from chain_client.receipts import ReadingKind
from oracle.broker import Mosquitto, mosquitto_binary
from oracle.devices import DeviceSigner, MemorySequence, ReadingContext
from oracle.gateway import Gateway
from oracle.mqtt import MqttIntake, MqttPublisher
from oracle.settings import OracleSettings
from oracle.store import Store
from oracle.validation import Reason
from oracle.wire import SignedReading

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed (make mosquitto)")


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
    assert sum(v.accepted for v in verdicts) == 40
    assert len(store.observations(1)) == 40
    assert all(v.accepted or v.reason == Reason.REPLAYED for v in verdicts)


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
