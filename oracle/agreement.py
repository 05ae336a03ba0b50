"""Whether an order's readings may be submitted: the agreement rules the contract leaves to us.

The contract counts signatures and checks each reading against its range, but it cannot tell a
short-counting RFID portal from a truthful one. Here the readings must agree with each other:

- at least `threshold` distinct current devices (one reading per device: its latest);
- at least one reading of every kind the warehouse has a range for;
- RFID counts within `count_tolerance` cartons of each other;
- each net weight within `weight_tolerance_pct` percent of (lowest count x carton weight), the
  quantity the contract will pay for.

A conflict is final: the order is disputed and nothing is submitted, whatever arrives later. A
person resolves it (a recount, a new order); the oracle never picks a side. Conflicts are looked
for first, so two readings that already disagree are reported even before a quorum is there, and
(`conflict`) among every current device's latest reading, whether or not it could be submitted
right now (early, about to lapse, stale): a count the relayer may not send is still a count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chain_client.receipts import ReadingKind
from oracle.wire import SignedReading


@dataclass(frozen=True)
class Expectations:
    carton_weight_grams: int | None
    count_tolerance: int
    weight_tolerance_pct: float


@dataclass(frozen=True)
class Ready:
    """Submit these readings (one per device, devices ascending)."""

    readings: tuple[SignedReading, ...]
    delivered: int


@dataclass(frozen=True)
class Waiting:
    reason: str


@dataclass(frozen=True)
class Disputed:
    reason: str


Decision = Ready | Waiting | Disputed


def latest_per_device(readings: Sequence[SignedReading]) -> list[SignedReading]:
    """One reading per device, the one with the highest sequence; ordered by device address
    ascending (numerically, as the contract orders them)."""
    best: dict[str, SignedReading] = {}
    for r in readings:
        seen = best.get(r.observation.device)
        if seen is None or r.observation.sequence > seen.observation.sequence:
            best[r.observation.device] = r
    return sorted(best.values(), key=lambda r: int(r.observation.device, 16))


def conflict(readings: Sequence[SignedReading], expectations: Expectations) -> Disputed | None:
    """The disagreement among the devices' latest readings, if any (a weight is not judged without
    an expected carton weight)."""
    chosen = latest_per_device(readings)
    counts = [r.observation.value for r in chosen if r.observation.kind == ReadingKind.CARTON_COUNT]
    weights = [r.observation.value for r in chosen if r.observation.kind == ReadingKind.NET_WEIGHT_GRAMS]
    if counts and max(counts) - min(counts) > expectations.count_tolerance:
        return Disputed(
            f"RFID counts disagree: {sorted(counts)} differ by {max(counts) - min(counts)} cartons, "
            f"tolerance {expectations.count_tolerance}"
        )
    if counts and weights and expectations.carton_weight_grams is not None:
        delivered = min(counts)
        expected = delivered * expectations.carton_weight_grams
        allowed = expected * expectations.weight_tolerance_pct / 100
        for weight in weights:
            if abs(weight - expected) > allowed:
                return Disputed(
                    f"weight {weight} g does not match {delivered} cartons x "
                    f"{expectations.carton_weight_grams} g = {expected} g "
                    f"(tolerance {expectations.weight_tolerance_pct}%)"
                )
    return None


def decide(
    readings: Sequence[SignedReading],
    *,
    threshold: int,
    required_kinds: frozenset[int],
    expectations: Expectations,
) -> Decision:
    """The decision for one order's current, valid readings."""
    chosen = latest_per_device(readings)
    counts = [r.observation.value for r in chosen if r.observation.kind == ReadingKind.CARTON_COUNT]
    weights = [r.observation.value for r in chosen if r.observation.kind == ReadingKind.NET_WEIGHT_GRAMS]

    disputed = conflict(chosen, expectations)
    if disputed is not None:
        return disputed
    if counts and weights and expectations.carton_weight_grams is None:
        return Waiting("no expected carton weight for this order: register one")

    if len(chosen) < threshold:
        return Waiting(f"{len(chosen)} of {threshold} devices")
    missing = sorted(required_kinds - {r.observation.kind for r in chosen})
    if missing:
        names = ", ".join(ReadingKind(k).name if k in set(ReadingKind) else str(k) for k in missing)
        return Waiting(f"no {names} reading yet")
    if not counts:
        # The contract pays for the lowest count; without one there is nothing to pay for.
        return Waiting("no CARTON_COUNT reading yet")
    return Ready(tuple(chosen), min(counts))
