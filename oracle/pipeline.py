"""Receipt through the real pipeline, for the demo: simulated devices publish signed readings over
MQTT, the gateway checks and stores them, the relayer submits them, the chain confirms.

`MqttReceiptPipeline(broker_url, workdir)` is the `confirm_receipt` hook of
chain_client.demo.run_demo; everything runs in this process against the demo's System.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from chain_client.demo import DemoReceipt
from chain_client.receipts import ReadingKind
from chain_client.system import System
from oracle.devices import DeviceSigner, MemorySequence, ReadingContext
from oracle.mqtt import MqttPublisher
from oracle.service import OracleService
from oracle.settings import OracleSettings
from oracle.simulator import Delivery, SimulatedDevice, publish_all, readings_for
from oracle.store import OrderState

PIPELINE_TIMEOUT = 60.0


class PipelineFailed(Exception):
    """The pipeline did not confirm the receipt (disputed, refused, or out of time)."""


@dataclass
class MqttReceiptPipeline:
    """chain_client.demo's ReceiptPath through the oracle."""

    broker_url: str
    workdir: Path
    timeout: float = PIPELINE_TIMEOUT
    description: str = field(init=False)

    def __post_init__(self) -> None:
        self.description = (
            f"an RFID portal, the weighbridge and the second portal published signed readings over MQTT "
            f"({self.broker_url}); the gateway checked them and their agreement, the relayer submitted them"
        )

    def __call__(self, system: System, receipt: DemoReceipt) -> int:
        settings = OracleSettings(
            broker_url=self.broker_url,
            db=self.workdir / "oracle.db",
            # A fresh session per run: a demo must not receive an earlier run's queued readings.
            client_id=f"certledger-demo-{uuid.uuid4().hex[:8]}",
            http_port=0,
            carton_weight_grams=receipt.carton_grams,
            poll_interval=0.02,
        )
        service = OracleService.build(settings, system, receipt.relayer, keeper=False)
        publisher = MqttPublisher(settings, f"{settings.client_id}-devices")
        try:
            service.store.register_order(
                receipt.order_id,
                carton_weight_grams=receipt.carton_grams,
                count_tolerance=0,
                weight_tolerance_pct=1.0,
            )
            service.start_mqtt()
            publisher.start()
            warehouse = system.oracle.warehouse(receipt.warehouse)
            devices = [
                SimulatedDevice(
                    DeviceSigner(
                        account,
                        ReadingKind(kind),
                        MemorySequence(),
                        chain_id=system.chain.chain_id,
                        oracle=system.oracle.address,
                    )
                )
                for account, kind in zip(receipt.devices, receipt.kinds, strict=True)
            ]
            context = ReadingContext(
                receipt.order_id, receipt.warehouse, receipt.goods_hash, warehouse.device_set_version
            )
            publications = readings_for(
                devices,
                context,
                Delivery(receipt.delivered_quantity, receipt.carton_grams),
                observed_at=service.view.now() - 60,
                valid_for=warehouse.freshness,
                topic_prefix=settings.topic_prefix,
                rng=random.Random(receipt.order_id),
            )
            publish_all(publisher, publications)
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                service.step()
                record = service.store.order(receipt.order_id)
                if record is not None and record.state.final:
                    if record.state != OrderState.CONFIRMED or record.root_certificate_id is None:
                        raise PipelineFailed(
                            f"order {receipt.order_id} {record.state.value}: {record.detail}"
                        )
                    return int(record.root_certificate_id)
                time.sleep(settings.poll_interval)
            raise PipelineFailed(f"order {receipt.order_id} not confirmed within {self.timeout}s")
        finally:
            publisher.stop()
            service.close()
