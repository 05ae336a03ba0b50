"""A signed reading as it travels from a device to the gateway (MQTT payload or HTTP body) and as
the gateway stores it: chain_client's JSON form of the Observation (`Observation.to_json`, the one
definition) plus the device's 65-byte signature as 0x-hex under "signature"."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chain_client.receipts import Observation

MAX_PAYLOAD = 4_096  # a reading is ~600 bytes; anything far larger is not one


class MalformedReading(ValueError):
    """A payload that is not a signed reading (bad JSON, missing or mistyped fields)."""


@dataclass(frozen=True)
class SignedReading:
    observation: Observation
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {**self.observation.to_json(), "signature": "0x" + self.signature.hex()}

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()


def parse_reading(body: Any) -> SignedReading:
    """The reading in a decoded JSON object; raises MalformedReading saying what is wrong."""
    if not isinstance(body, dict):
        raise MalformedReading("a reading is a JSON object")
    try:
        observation = Observation.from_json(body)
    except KeyError as exc:
        raise MalformedReading(f"missing field {exc}") from None
    except (ValueError, TypeError) as exc:
        raise MalformedReading(str(exc)) from None
    signature = body.get("signature")
    if not isinstance(signature, str) or not signature.startswith("0x"):
        raise MalformedReading("signature must be 0x-hex")
    try:
        raw = bytes.fromhex(signature[2:])
    except ValueError:
        raise MalformedReading("signature is not hex") from None
    # Its length and form are checked by validation, which names them as signature problems.
    return SignedReading(observation, raw)


def decode_reading(payload: bytes) -> SignedReading:
    if len(payload) > MAX_PAYLOAD:
        raise MalformedReading(f"payload of {len(payload)} bytes")
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise MalformedReading("not JSON") from None
    return parse_reading(body)
