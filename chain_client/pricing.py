"""Discount pricing, in the same integer arithmetic as the contract (simple interest, 365-day year)."""

from __future__ import annotations

BPS = 10_000
DAYS_PER_YEAR = 365
SECONDS_PER_YEAR = DAYS_PER_YEAR * 86_400


def discount_price(face: int, days_to_maturity: int, annual_rate_bps: int) -> int:
    """What a factor pays for `face` due in `days_to_maturity` at `annual_rate_bps`, rounded down:
    face / (1 + rate * days / 365). Matches CertificateLedger.discountPrice."""
    if face < 0 or days_to_maturity < 0 or annual_rate_bps < 0:
        raise ValueError("face, days and rate must be non-negative")
    if face >= 2**128:
        # The ledger's amounts are 128-bit; far above that the contract's arithmetic overflows.
        raise ValueError("face above the ledger's 128-bit amounts")
    return face * DAYS_PER_YEAR * BPS // (DAYS_PER_YEAR * BPS + annual_rate_bps * days_to_maturity)


def implied_annual_rate_bps(face: int, price: int, seconds_to_maturity: int) -> int:
    """The simple annual rate a sale at `price` implies, as the DiscountSold event reports it."""
    if price <= 0 or seconds_to_maturity <= 0 or price > face:
        raise ValueError("need 0 < price <= face and time left")
    rate = (face - price) * BPS * SECONDS_PER_YEAR // (price * seconds_to_maturity)
    return min(rate, 2**32 - 1)
