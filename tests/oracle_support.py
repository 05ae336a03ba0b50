"""Helpers for the oracle's tests: a throwaway mosquitto, a chain view without a chain, and fast
device keys."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils import keccak, to_checksum_address

from chain_client.models import Order, OrderStatus, Warehouse
from chain_client.receipts import ReadingKind, ReadingRange
from oracle.broker import mosquitto_binary

ORACLE = to_checksum_address("0x" + "0c" * 20)
CHAIN_ID = 31337
WAREHOUSE = keccak(text="WH-UNIT")
GOODS = keccak(text="goods-unit")
CARTON_G = 12_000


def account(seed: str) -> LocalAccount:
    acct: LocalAccount = Account.from_key(keccak(text=seed))
    return acct


@dataclass
class FakeChain:
    """A ChainView with the warehouse, devices and orders set by the test."""

    now_value: int = 1_800_000_000
    threshold: int = 2
    freshness: int = 3_600
    version: int = 1
    active: bool = True
    devices: dict[str, int] = field(default_factory=dict)
    ranges: dict[int, tuple[int, int]] = field(
        default_factory=lambda: {
            int(ReadingKind.CARTON_COUNT): (1, 100_000),
            int(ReadingKind.NET_WEIGHT_GRAMS): (1, 10**10),
        }
    )
    used: set[tuple[str, int]] = field(default_factory=set)
    orders: dict[int, OrderStatus] = field(default_factory=dict)
    fail: Callable[[], None] | None = None
    #: the latest block's time when it trails `now_value` (an idle chain, a node clock behind)
    block_time: int | None = None
    #: every order's deadline (None: two weeks after `now_value`)
    order_deadline: int | None = None

    @property
    def chain_id(self) -> int:
        return CHAIN_ID

    @property
    def oracle_address(self) -> ChecksumAddress:
        return ORACLE

    def _maybe_fail(self) -> None:
        if self.fail is not None:
            self.fail()

    def now(self) -> int:
        self._maybe_fail()
        return self.now_value

    def passed(self) -> int:
        self._maybe_fail()
        return self.now_value if self.block_time is None else self.block_time

    def warehouse(self, warehouse: bytes) -> Warehouse:
        self._maybe_fail()
        return Warehouse(
            warehouse, self.active, self.threshold, len(self.devices), self.version, self.freshness
        )

    def device_kind(self, warehouse: bytes, device: ChecksumAddress) -> int:
        return self.devices.get(device, 0)

    def reading_range(self, warehouse: bytes, kind: int) -> ReadingRange:
        lo, hi = self.ranges.get(kind, (0, 0))
        return ReadingRange(kind=kind, min=lo, max=hi)

    def threshold_hint(self, warehouse: bytes) -> int | None:
        return None

    def required_kinds(self, warehouse: bytes) -> list[int]:
        return sorted(self.ranges)

    def sequence_used(self, device: ChecksumAddress, sequence: int) -> bool:
        self._maybe_fail()
        return (device, sequence) in self.used

    def order(self, order_id: int) -> Order:
        self._maybe_fail()
        status = self.orders.get(order_id, OrderStatus.NONE)
        zero = to_checksum_address("0x" + "00" * 20)
        deadline = self.now_value + 14 * 86_400 if self.order_deadline is None else self.order_deadline
        return Order(
            order_id, zero, self.now_value + 90 * 86_400, deadline, status, zero,
            1_000, 10**9, 0, 0, 0, 0, b"\x00" * 32, WAREHOUSE, GOODS,
        )  # fmt: skip


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Polls `predicate` until it returns something truthy; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


# ---------------------------------------------------------------------- on the embedded chain

CARTON_RANGE = (1, 100_000)
WEIGHT_RANGE = (1_000, 2_000_000_000)


def chain_ranges() -> list[ReadingRange]:
    return [
        ReadingRange(int(ReadingKind.CARTON_COUNT), *CARTON_RANGE),
        ReadingRange(int(ReadingKind.NET_WEIGHT_GRAMS), *WEIGHT_RANGE),
    ]


def enrol_warehouse(world: Any, kinds: list[ReadingKind], threshold: int = 2) -> tuple[bytes, list[Any]]:
    """A new warehouse in the shared world with one fresh device per kind (the world's relayer is
    already allow-listed); returns the warehouse id and the devices' signers."""
    from chain_client.receipts import DeviceEnrolment
    from oracle.devices import DeviceSigner, MemorySequence

    warehouse = world.fresh_label("WH-ORACLE")
    devices = [
        DeviceSigner(
            Account.create(),
            kind,
            MemorySequence(1),
            chain_id=world.chain.chain_id,
            oracle=world.oracle.address,
        )
        for kind in kinds
    ]
    admin = world.cast.admin
    world.oracle.register_warehouse(
        admin,
        warehouse,
        [DeviceEnrolment(d.address, int(d.kind)) for d in devices],
        threshold,
        3_600,
        chain_ranges(),
    )
    return warehouse, devices


def confirmations(world: Any, order_id: int) -> int:
    """OrderConfirmed events of an order on chain."""
    logs = world.ledger.contract.events.OrderConfirmed.get_logs(from_block=0)
    return sum(1 for log in logs if int(log["args"]["orderId"]) == order_id)


def require_mosquitto() -> str:
    """The mosquitto binary. `make test` installs it, so a missing one fails the tests that need a
    broker rather than skipping them (a skip would read as passing)."""
    binary = mosquitto_binary()
    if binary is None:
        pytest.fail("mosquitto is not installed: run `make mosquitto` (make test does)", pytrace=False)
    return binary
