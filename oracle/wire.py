"""A signed reading as it travels from a device to the gateway (MQTT payload or HTTP body) and as
the gateway stores it: chain_client's JSON form of the Observation (`Observation.to_json`, the one
definition) plus the device's 65-byte signature as 0x-hex under "signature"."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chain_client.receipts import Observation, strict_hex

MAX_PAYLOAD = 4_096  # a reading is ~600 bytes; anything far larger is not one
#: A reading is one flat JSON object. Anything nested deeper is refused before it is parsed: the
#: process runs with a very high recursion limit (py_ecc raises it to 100,000), so a payload of
#: nested brackets would take the C parser deep enough to overflow the thread's C stack.
MAX_NESTING = 8


class MalformedReading(ValueError):
    """A payload that is not a signed reading (bad JSON, missing or mistyped fields)."""


class PayloadTooLarge(ValueError):
    """A payload over MAX_PAYLOAD bytes: not a reading, and never kept."""

    def __init__(self, size: int) -> None:
        super().__init__(f"payload of {size} bytes, at most {MAX_PAYLOAD}")
        self.size = size


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
        raw = strict_hex(signature)
    except ValueError:
        raise MalformedReading("signature is not hex") from None
    # Its length and form are checked by validation, which names them as signature problems.
    return SignedReading(observation, raw)


def too_deep(payload: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether the JSON text `payload` nests arrays or objects more than `limit` deep (brackets
    inside strings do not count). A linear scan with no recursion, for use before any parse, of
    UTF-8 text only: callers refuse other encodings first (json.loads would read UTF-16, whose
    bytes this scan miscounts)."""
    if payload.count(b"[") + payload.count(b"{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for byte in payload:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def decode_reading(payload: bytes) -> SignedReading:
    if len(payload) > MAX_PAYLOAD:
        raise MalformedReading(f"payload of {len(payload)} bytes")
    # json.loads takes UTF-16 and UTF-32 bytes too, where the byte scan below would misread a
    # character's 0x22 byte as a quote: a reading is UTF-8 (ASCII in practice) or not a reading.
    if json.detect_encoding(payload) != "utf-8":
        raise MalformedReading("not UTF-8 JSON")
    if too_deep(payload):
        raise MalformedReading(f"JSON nested more than {MAX_NESTING} deep")
    try:
        body = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MalformedReading("not JSON") from None
    return parse_reading(body)


def order_hint(payload: bytes) -> int | None:
    """The order a raw payload claims to be a reading of, if it decodes (None otherwise, or if the
    id does not fit a SQLite integer). Unchecked: only used to hold that order's submission back
    while the payload waits in the inbox."""
    try:
        order_id = decode_reading(payload).observation.order_id
    except MalformedReading:
        return None
    return order_id if 0 < order_id < 2**63 else None
