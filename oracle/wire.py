"""A signed reading as it travels from a device to the gateway (MQTT payload or HTTP body): the
Observation's fields and the device's 65-byte signature, as JSON. Integers are JSON numbers (all fit
uint64); bytes32 and the signature are 0x-hex."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from eth_typing import ChecksumAddress
from eth_utils import is_address, to_checksum_address

from chain_client.receipts import Observation

MAX_PAYLOAD = 4_096  # a reading is ~600 bytes; anything far larger is not one


class MalformedReading(ValueError):
    """A payload that is not a signed reading (bad JSON, missing or mistyped fields)."""


@dataclass(frozen=True)
class SignedReading:
    observation: Observation
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        o = self.observation
        return {
            "orderId": o.order_id,
            "warehouse": "0x" + o.warehouse.hex(),
            "goodsHash": "0x" + o.goods_hash.hex(),
            "device": o.device,
            "kind": o.kind,
            "value": o.value,
            "observedAt": o.observed_at,
            "sequence": o.sequence,
            "deviceSetVersion": o.device_set_version,
            "deadline": o.deadline,
            "signature": "0x" + self.signature.hex(),
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()


def _uint(body: dict[str, Any], name: str, bits: int) -> int:
    value = body.get(name)
    # bool is an int in Python; a JSON true is not a number here.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**bits:
        raise MalformedReading(f"{name} must be an unsigned {bits}-bit integer")
    return value


def _hex(body: dict[str, Any], name: str, length: int | None) -> bytes:
    value = body.get(name)
    if not isinstance(value, str) or not value.startswith("0x"):
        raise MalformedReading(f"{name} must be 0x-hex")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError:
        raise MalformedReading(f"{name} is not hex") from None
    if length is not None and len(raw) != length:
        raise MalformedReading(f"{name} must be {length} bytes")
    return raw


def _address(body: dict[str, Any], name: str) -> ChecksumAddress:
    value = body.get(name)
    if not isinstance(value, str) or not is_address(value):
        raise MalformedReading(f"{name} must be an address")
    return to_checksum_address(value)


def parse_reading(body: dict[str, Any]) -> SignedReading:
    """The reading in a decoded JSON object; raises MalformedReading naming the first bad field."""
    if not isinstance(body, dict):
        raise MalformedReading("a reading is a JSON object")
    observation = Observation(
        order_id=_uint(body, "orderId", 256),
        warehouse=_hex(body, "warehouse", 32),
        goods_hash=_hex(body, "goodsHash", 32),
        device=_address(body, "device"),
        kind=_uint(body, "kind", 8),
        value=_uint(body, "value", 64),
        observed_at=_uint(body, "observedAt", 64),
        sequence=_uint(body, "sequence", 64),
        device_set_version=_uint(body, "deviceSetVersion", 32),
        deadline=_uint(body, "deadline", 64),
    )
    # The signature's length is checked by validation, which names it as a signature problem.
    return SignedReading(observation, _hex(body, "signature", None))


def decode_reading(payload: bytes) -> SignedReading:
    if len(payload) > MAX_PAYLOAD:
        raise MalformedReading(f"payload of {len(payload)} bytes")
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise MalformedReading("not JSON") from None
    return parse_reading(body)
