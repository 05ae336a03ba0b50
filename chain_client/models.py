"""Typed views of on-chain records, returned by the clients. Amounts are integers in token units
(2 decimals for the demo's tokenized deposit: 12345 means 123.45)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from eth_typing import ChecksumAddress


class Role(enum.IntFlag):
    """Participant role bits, as in IParticipantRegistry.sol."""

    ADMIN = 1 << 0
    ISSUER = 1 << 1
    SUPPLIER = 1 << 2
    FACTOR = 1 << 3
    REGULATOR = 1 << 4
    AUDITOR = 1 << 5


class OrderStatus(enum.IntEnum):
    NONE = 0
    OPEN = 1
    CONFIRMED = 2
    CANCELLED = 3


class CertificateStatus(enum.IntEnum):
    NONE = 0
    LIVE = 1
    SETTLED = 2


@dataclass(frozen=True)
class Participant:
    address: ChecksumAddress
    entity_id: bytes
    roles: Role
    active: bool
    certificate_count: int
    issuer_limit: int
    outstanding: int

    @property
    def registered(self) -> bool:
        return self.roles != 0


@dataclass(frozen=True)
class Order:
    order_id: int
    issuer: ChecksumAddress
    maturity: int
    deadline: int
    status: OrderStatus
    payee: ChecksumAddress
    expected_quantity: int
    escrowed: int
    paid: int
    refunded: int
    delivered_quantity: int
    root_certificate_id: int
    invoice_hash: bytes
    warehouse: bytes
    goods_hash: bytes

    @property
    def in_escrow(self) -> int:
        """What the ledger still holds for this order."""
        return self.escrowed - self.paid - self.refunded


@dataclass(frozen=True)
class Certificate:
    certificate_id: int
    holder: ChecksumAddress
    maturity: int
    depth: int
    status: CertificateStatus
    frozen: bool
    value: int
    order_id: int
    parent_id: int


@dataclass(frozen=True)
class DiscountOffer:
    offer_id: int
    certificate_id: int
    seller: ChecksumAddress
    holder_epoch: int
    buyer: ChecksumAddress
    expiry: int
    open: bool
    value: int
    price: int


@dataclass(frozen=True)
class Warehouse:
    warehouse_id: bytes
    active: bool
    threshold: int
    device_count: int
    device_set_version: int
    freshness: int
