"""The MQTT intake against a real mosquitto started by the test on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from oracle_support import wait_until

from oracle.broker import Mosquitto, mosquitto_binary
from oracle.mqtt import MqttIntake, MqttPublisher
from oracle.settings import OracleSettings
from oracle.store import Store

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed (make mosquitto)")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


def payloads(store: Store) -> list[bytes]:
    rows = store._query("SELECT payload FROM inbox ORDER BY id")
    return [bytes(r[0]) for r in rows]


def test_broker_restart_loses_nothing(broker: Mosquitto, tmp_path: Path) -> None:
    settings = OracleSettings(broker_url=broker.url, client_id="gateway-under-test", mqtt_timeout=10)
    store = Store(tmp_path / "oracle.db")

    def keep(payload: bytes, source: str) -> int:
        return store.receive(source, payload)

    publisher = MqttPublisher(settings, "device-under-test")
    publisher.start()
    sent: list[bytes] = []

    def publish(batch: str, n: int = 10) -> None:
        wait_until(publisher.connected.is_set, timeout=20)
        for i in range(n):
            payload = f"{batch}-{i}".encode()
            publisher.publish(f"{settings.topic_prefix}/wh/dev", payload, timeout=20)
            sent.append(payload)

    gateway = MqttIntake(settings, keep)
    gateway.start()
    publish("connected")
    wait_until(lambda: store.inbox_count() == 10)

    # The gateway goes away: the broker queues readings for its persistent session...
    gateway.stop()
    publish("while-away")
    # ...and keeps that queue across its own restart (persistence saved at SIGTERM).
    broker.restart()
    publish("after-broker-restart")
    gateway = MqttIntake(settings, keep)
    gateway.start()
    wait_until(lambda: store.inbox_count() == 30, timeout=20)

    # A broker restart while the gateway is connected: it reconnects by itself.
    broker.restart()
    publish("reconnected")
    wait_until(lambda: store.inbox_count() == 40, timeout=30)
    gateway.stop()
    publisher.stop()

    got = payloads(store)
    assert sorted(got) == sorted(sent) and len(got) == len(set(got)) == 40


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
