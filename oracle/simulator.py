"""Simulated warehouse devices: realistic readings of one delivery, honest, faulty or malicious.

Honest devices read what arrived: the RFID portal counts every tagged carton, the weighbridge
weighs cartons x carton weight with a little scale noise. A faulty device reads wrongly but signs
honestly (a reading out of the warehouse's range, or a count/weight that disagrees); a malicious
one attacks the gateway (a key that is not the device's, a reading sent twice, a malleated high-s
signature). The gateway must refuse every malicious reading (a copy of a stored one is harmless:
it is answered as the first time and stored once) and dispute every disagreement.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass

from eth_account import Account
from eth_account.signers.local import LocalAccount

from chain_client.receipts import SECP256K1_N, Observation, ReadingKind, sign_observation
from oracle.devices import DeviceSigner, ReadingContext
from oracle.mqtt import MqttPublisher, reading_topic
from oracle.wire import SignedReading


class Fault(enum.StrEnum):
    NONE = "none"
    #: faulty: a value outside the warehouse's on-chain range for the kind
    OUT_OF_RANGE = "out-of-range"
    #: faulty: RFID short by 5% of the cartons, or the weighbridge 20% heavy
    DISAGREE = "disagree"
    #: malicious: signed by a key that is not the device's
    WRONG_KEY = "wrong-key"
    #: malicious: the same signed reading published twice (stored once; the copy is no refusal)
    REPLAY = "replay"
    #: malicious: the honest signature malleated to its high-s twin (s' = n - s, v flipped)
    HIGH_S = "high-s"


def malleate(signature: bytes) -> bytes:
    """The other valid-looking signature of the same message: (r, n - s, v ^ 1)."""
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    return r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])


@dataclass(frozen=True)
class SimulatedDevice:
    signer: DeviceSigner
    fault: Fault = Fault.NONE


@dataclass(frozen=True)
class Delivery:
    cartons: int
    carton_weight_grams: int
    #: the scale's noise, as a fraction (0.002 = +-0.2%)
    scale_noise: float = 0.002
    #: a value outside the warehouse's range (for Fault.OUT_OF_RANGE)
    out_of_range_value: int = 2**63 - 1


@dataclass(frozen=True)
class Publication:
    topic: str
    payload: bytes
    device: str
    note: str


def honest_value(kind: ReadingKind, delivery: Delivery, rng: random.Random) -> int:
    if kind == ReadingKind.CARTON_COUNT:
        return delivery.cartons
    noise = 1 + rng.uniform(-delivery.scale_noise, delivery.scale_noise)
    return round(delivery.cartons * delivery.carton_weight_grams * noise)


def readings_for(
    devices: Sequence[SimulatedDevice],
    context: ReadingContext,
    delivery: Delivery,
    *,
    observed_at: int,
    valid_for: int,
    topic_prefix: str,
    rng: random.Random | None = None,
) -> list[Publication]:
    """What each device publishes for one delivery."""
    rng = rng or random.Random()
    out: list[Publication] = []
    for device in devices:
        signer, fault = device.signer, device.fault
        value = honest_value(signer.kind, delivery, rng)
        if fault == Fault.OUT_OF_RANGE:
            value = delivery.out_of_range_value
        elif fault == Fault.DISAGREE:
            value = (
                delivery.cartons - max(1, delivery.cartons // 20)
                if signer.kind == ReadingKind.CARTON_COUNT
                else round(value * 1.2)
            )
        observation, signature = signer.observe(context, value, observed_at=observed_at, valid_for=valid_for)
        if fault == Fault.WRONG_KEY:
            impostor: LocalAccount = Account.create()
            signature = sign_observation(impostor, observation, signer.chain_id, signer.oracle)
        elif fault == Fault.HIGH_S:
            signature = malleate(signature)
        payload = SignedReading(observation, signature).encode()
        topic = reading_topic(topic_prefix, context.warehouse, signer.address)
        out.append(Publication(topic, payload, signer.address, f"{signer.kind.name} {value} ({fault})"))
        if fault == Fault.REPLAY:
            out.append(Publication(topic, payload, signer.address, "the same reading again (replay)"))
    return out


def publish_all(publisher: MqttPublisher, publications: Sequence[Publication]) -> None:
    for p in publications:
        publisher.publish(p.topic, p.payload)


def observation_of(publication: Publication) -> Observation:
    from oracle.wire import decode_reading

    return decode_reading(publication.payload).observation
