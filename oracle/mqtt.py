"""MQTT intake: devices publish signed readings at QoS 1 to PREFIX/<warehouse>/<device>.

Nothing is lost between broker and gateway:
- the gateway's session is persistent (a client id stable across restarts, one per oracle store:
  see `OracleSettings.client_id`; clean_session=False), so the broker queues QoS 1 readings for
  it while it is away, and a broker run with persistence keeps that queue across its own restart;
- acknowledgements are manual: the PUBACK goes back only after the reading is committed to the
  inbox, so a reading the gateway crashed on is redelivered; one it failed to store (a locked or
  full disk) is kept and stored again on the service's next step (`retry_unstored`), not left
  for a reconnect that may never come;
- a redelivered reading is stored once (the store is unique by device and sequence);
- a payload over MAX_PAYLOAD bytes is no reading: it is acknowledged (or the broker would send it
  again for ever) and dropped, not stored, and counted (`oversized`, logged).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from oracle.settings import OracleSettings
from oracle.wire import MAX_PAYLOAD

log = logging.getLogger(__name__)

KEEPALIVE = 15  # seconds; a dead broker is noticed within ~1.5 keepalives
#: Two connections in a row lost within this many seconds of being made look like a session
#: takeover: another client under the same id, each connection closing the other's (the broker
#: gives an id's session to its newest connection). MQTT 3.1.1 says nothing of why it closed one
#: (paho: "Unspecified error", as for a broker gone away), so it is told by its rhythm: a rival
#: reconnects within its retry delay, while a broker restart cuts one connection, not a series.
TAKEOVER_WINDOW = 10.0


class BrokerUnavailable(Exception):
    """The MQTT broker did not accept a connection in time."""


def reading_topic(prefix: str, warehouse: bytes, device: str) -> str:
    return f"{prefix}/{warehouse.hex()}/{device}"


@dataclass(frozen=True)
class _Unstored:
    """A delivered reading not yet stored, so not yet acknowledged."""

    payload: bytes
    topic: str
    mid: int
    qos: int


class _Connection:
    """What the gateway's intake and a device's publisher share: a paho client started with a
    bounded wait for the broker, and stopped cleanly. `connected` is set by the subclass's
    callbacks once the connection is usable."""

    settings: OracleSettings
    client: mqtt.Client
    connected: threading.Event

    def start(self) -> None:
        """Connects (waiting at most settings.mqtt_timeout) and starts the network thread."""
        self.client.connect_async(self.settings.broker_host, self.settings.broker_port, keepalive=KEEPALIVE)
        self.client.loop_start()
        if not self.connected.wait(self.settings.mqtt_timeout):
            self.stop()
            raise BrokerUnavailable(
                f"no connection to {self.settings.broker_url} in {self.settings.mqtt_timeout}s"
            )

    def stop(self) -> None:
        """Disconnects cleanly. The intake's session is persistent: the broker keeps queueing its
        readings until it returns."""
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()


class MqttIntake(_Connection):
    """Subscribes to readings and hands each payload to `on_reading` (which must store it durably
    before returning; an exception there leaves the reading unacknowledged for redelivery)."""

    def __init__(self, settings: OracleSettings, on_reading: Callable[[bytes, str], object]) -> None:
        self.settings = settings
        self.on_reading = on_reading
        self.connected = threading.Event()
        self.received = 0
        self.oversized = 0  # payloads over MAX_PAYLOAD dropped
        self._lock = threading.Lock()
        self._unstored: list[_Unstored] = []
        self._connected_at: float | None = None
        self._short_lived = 0  # connections lost in a row within TAKEOVER_WINDOW of being made
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        # A restarted broker is retried quickly at first, then every few seconds at most.
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        self._connected_at = time.monotonic()
        # Subscribing again is harmless when the session already has the subscription, and needed
        # when the broker lost it (a broker run without persistence).
        client.subscribe(f"{self.settings.topic_prefix}/#", qos=1)
        log.info("connected to %s (session present: %s)", self.settings.broker_url, flags.session_present)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        # Ready only once the broker has the subscription: readings published before it would
        # find no subscriber on a first connection.
        if any(rc.is_failure for rc in reason_codes):
            log.error("broker refused the subscription: %s", reason_codes)
            return
        self.connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self.connected.clear()
        lasted = None if self._connected_at is None else time.monotonic() - self._connected_at
        self._connected_at = None
        # Our own disconnect() is routine; anything else (the broker went away) is worth a warning.
        if reason_code == 0:
            log.info("disconnected from %s: %s", self.settings.broker_url, reason_code)
            return
        self._short_lived = self._short_lived + 1 if lasted is not None and lasted < TAKEOVER_WINDOW else 0
        if self._short_lived >= 2:
            log.warning(
                "disconnected from %s %.1fs after connecting, again (%s): another client with client id "
                "%r may be connected, each taking the session over from the other; give every oracle "
                "its own id (CERTLEDGER_ORACLE_CLIENT_ID)",
                self.settings.broker_url,
                lasted,
                reason_code,
                self.settings.client_id,
            )
        else:
            log.warning("disconnected from %s: %s", self.settings.broker_url, reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._take(_Unstored(bytes(message.payload), message.topic, message.mid, message.qos))

    def _take(self, item: _Unstored) -> bool:
        """Stores a reading, then acknowledges it; on failure keeps it for `retry_unstored`."""
        if len(item.payload) > MAX_PAYLOAD:
            self.oversized += 1
            log.warning(
                "dropped a payload of %d bytes on %s (over %d; %d dropped so far)",
                len(item.payload),
                item.topic,
                MAX_PAYLOAD,
                self.oversized,
            )
            self._ack(item)
            return True
        try:
            self.on_reading(item.payload, f"mqtt:{item.topic}")
        except Exception:
            # Not acknowledged, and kept here: the broker would redeliver it only on the next
            # connection, which on a healthy link may be days away, past the reading's deadline.
            log.exception("could not store a reading from %s; will try again", item.topic)
            with self._lock:
                if item not in self._unstored:
                    self._unstored.append(item)
            return False
        self.received += 1
        self._ack(item)
        return True

    def _ack(self, item: _Unstored) -> None:
        if item.qos > 0:
            rc = self.client.ack(item.mid, item.qos)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.warning("PUBACK for %d not sent (%s); the broker will redeliver it", item.mid, rc)

    def retry_unstored(self) -> int:
        """Tries again to store the readings a failure left unacknowledged (the service calls it on
        every step); returns how many are still waiting."""
        with self._lock:
            waiting, self._unstored = self._unstored, []
        for item in waiting:
            if self._take(item):
                with self._lock:
                    if item in self._unstored:
                        self._unstored.remove(item)
        with self._lock:
            return len(self._unstored)


class MqttPublisher(_Connection):
    """A device-side publisher (the simulator's): QoS 1, waits for each PUBACK with a timeout."""

    def __init__(self, settings: OracleSettings, client_id: str) -> None:
        self.settings = settings
        self.connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda c, u, f, rc, p: self.connected.clear()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if not reason_code.is_failure:
            self.connected.set()

    def publish(self, topic: str, payload: bytes, timeout: float | None = None) -> None:
        """Publishes at QoS 1 and waits until the broker has it (PUBACK)."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout if timeout is not None else self.settings.mqtt_timeout)
        if not info.is_published():
            raise BrokerUnavailable(f"broker did not acknowledge a reading on {topic}")
