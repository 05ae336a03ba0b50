"""The gateway's checks on one signed reading, before it is stored.

They mirror the contract's rules (ReceiptOracle.confirmReceipt) so that a reading the chain would
refuse is refused here, at once, with a reason an operator can read, instead of making a whole
receipt revert later. The contract checks everything again at inclusion; these checks are for
early, precise answers, never the last line of defence.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from eth_keys.exceptions import BadSignature
from eth_typing import ChecksumAddress
from eth_utils import ValidationError

from chain_client.models import OrderStatus
from chain_client.receipts import SECP256K1_N, ReadingKind, recover_observation_signer
from oracle.chainview import ChainView
from oracle.wire import SignedReading

# Ethereum (EIP-2) and OpenZeppelin's ECDSA accept only s <= n/2: for each signature (r, s) the pair
# (r, n - s) with the other v is just as valid mathematically, so without this rule anyone could turn
# one signature into a second, different-looking one. chain_client's signature_is_canonical says
# yes or no; here each failure gets its own reason for the operator.
SECP256K1_HALF_N = SECP256K1_N // 2


class Reason(enum.StrEnum):
    """Why a reading was refused (stored with each rejection, shown by `oracle status`)."""

    MALFORMED = "malformed"
    BAD_SIGNATURE_LENGTH = "bad-signature-length"
    BAD_V = "bad-v"
    HIGH_S = "high-s"
    INVALID_SIGNATURE = "invalid-signature"
    SIGNER_MISMATCH = "signer-mismatch"
    UNKNOWN_KIND = "unknown-kind"
    WAREHOUSE_INACTIVE = "warehouse-inactive"
    UNKNOWN_ORDER = "unknown-order"
    ORDER_NOT_OPEN = "order-not-open"
    ORDER_MISMATCH = "order-mismatch"
    #: observed after the order's deadline: the ledger refuses the whole receipt (ReceiptAfterDeadline)
    AFTER_ORDER_DEADLINE = "after-order-deadline"
    #: the oracle is confirming the order with the readings it has (a transaction is in flight)
    ORDER_SUBMITTING = "order-submitting"
    STALE_DEVICE_SET = "stale-device-set"
    UNKNOWN_DEVICE = "unknown-device"
    DEVICE_KIND_MISMATCH = "device-kind-mismatch"
    EXPIRED = "expired"
    FROM_FUTURE = "from-future"
    STALE = "stale"
    OUT_OF_RANGE = "out-of-range"
    REPLAYED = "replayed"
    SEQUENCE_REUSED = "sequence-reused"
    #: checking it failed again and again for a reason nobody classified: set aside (quarantined)
    INTERNAL_ERROR = "internal-error"


@dataclass(frozen=True)
class Refused:
    reason: Reason
    detail: str


def check_signature_form(signature: bytes) -> Refused | None:
    """The signature's shape: 65 bytes r || s || v, v in {27, 28}, 0 < r < n, 0 < s <= n/2."""
    if len(signature) != 65:
        return Refused(Reason.BAD_SIGNATURE_LENGTH, f"{len(signature)} bytes, want 65")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v not in (27, 28):
        return Refused(Reason.BAD_V, f"v = {v}, want 27 or 28")
    if not 0 < r < SECP256K1_N or s == 0:
        return Refused(Reason.INVALID_SIGNATURE, "r or s out of range")
    if s > SECP256K1_HALF_N:
        return Refused(Reason.HIGH_S, "s is in the upper half of the curve order (a malleated signature)")
    return None


def check_signed(reading: SignedReading, chain_id: int, oracle: ChecksumAddress) -> Refused | None:
    """The checks that need no chain state: signature form, signer, kind. Run first, so a forged or
    malleated copy of a stored reading is named for what it is, not as a repeat."""
    o = reading.observation
    refused = check_signature_form(reading.signature)
    if refused is not None:
        return refused
    try:
        signer = recover_observation_signer(reading.signature, o, chain_id, oracle)
    except (ValueError, ValidationError, BadSignature) as exc:
        return Refused(Reason.INVALID_SIGNATURE, str(exc))
    # A signature for another chain id or another oracle deployment recovers to some other
    # address: it lands here too, as does a reading signed with a key other than the device's.
    if signer != o.device:
        return Refused(Reason.SIGNER_MISMATCH, f"signed by {signer}, claims {o.device}")
    if o.kind not in set(ReadingKind):
        return Refused(Reason.UNKNOWN_KIND, f"kind {o.kind}")
    return None


def check_reading(reading: SignedReading, chain: ChainView, clock_skew: int) -> Refused | None:
    """The checks against the chain's state (run after check_signed); None if it may be stored.

    The caller checks (device, sequence) against the store."""
    o = reading.observation
    warehouse = chain.warehouse(o.warehouse)
    if not warehouse.active:
        return Refused(Reason.WAREHOUSE_INACTIVE, "0x" + o.warehouse.hex())
    order = chain.order(o.order_id)
    if order.status == OrderStatus.NONE:
        return Refused(Reason.UNKNOWN_ORDER, f"order {o.order_id}")
    if order.status != OrderStatus.OPEN:
        return Refused(Reason.ORDER_NOT_OPEN, f"order {o.order_id} is {order.status.name.lower()}")
    if order.warehouse != o.warehouse or order.goods_hash != o.goods_hash:
        return Refused(Reason.ORDER_MISMATCH, f"warehouse or goods differ from order {o.order_id}'s")
    # The ledger takes the receipt's time as its latest reading's: one reading observed after the
    # order's deadline would make an on-time quorum revert, and a revert is final.
    if o.observed_at > order.deadline:
        return Refused(
            Reason.AFTER_ORDER_DEADLINE,
            f"observed at {o.observed_at}, after order {o.order_id}'s deadline {order.deadline}",
        )
    if o.device_set_version != warehouse.device_set_version:
        return Refused(
            Reason.STALE_DEVICE_SET,
            f"signed under version {o.device_set_version}, current is {warehouse.device_set_version}",
        )
    kind = chain.device_kind(o.warehouse, o.device)
    if kind == 0:
        return Refused(Reason.UNKNOWN_DEVICE, f"{o.device} is not a current device of the warehouse")
    if kind != o.kind:
        return Refused(Reason.DEVICE_KIND_MISMATCH, f"device enrolled for kind {kind}, reading of {o.kind}")

    now = chain.now()
    refused = check_times(o.observed_at, o.deadline, now, warehouse.freshness, clock_skew)
    if refused is not None:
        return refused

    bounds = chain.reading_range(o.warehouse, o.kind)
    if bounds.max == 0 or o.value not in bounds:  # max 0: no range for the kind, so no such reading
        return Refused(
            Reason.OUT_OF_RANGE,
            f"{ReadingKind(o.kind).name} {o.value} outside [{bounds.min}, {bounds.max}]",
        )
    if chain.sequence_used(o.device, o.sequence):
        return Refused(Reason.REPLAYED, f"sequence {o.sequence} of {o.device} already used on chain")
    return None


def check_times(observed_at: int, deadline: int, now: int, freshness: int, clock_skew: int) -> Refused | None:
    """Deadline, future and staleness, against the chain's clock `now`."""
    if deadline < now:
        return Refused(Reason.EXPIRED, f"deadline {deadline} passed (now {now})")
    if observed_at > now + clock_skew:
        return Refused(Reason.FROM_FUTURE, f"observed at {observed_at}, now {now}")
    if now - observed_at > freshness:
        return Refused(Reason.STALE, f"observed {now - observed_at} s ago, freshness {freshness} s")
    return None
