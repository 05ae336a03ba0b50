"""What the oracle needs to know from the chain, behind one narrow interface.

Everything here goes through chain_client's clients (the only code that talks to a node). The
protocol lets the agreement and validation rules be tested without a chain, and one lock
serialises every call: the gateway's MQTT and HTTP threads and the pipeline share one connection,
and the embedded chain (eth-tester) is not safe to call from several threads at once.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from eth_typing import ChecksumAddress

from chain_client.models import Order, Warehouse
from chain_client.receipts import ReadingRange
from chain_client.system import System


class ChainView(Protocol):
    """Read-only facts the gateway and relayer check readings against."""

    @property
    def chain_id(self) -> int: ...

    @property
    def oracle_address(self) -> ChecksumAddress: ...

    def now(self) -> int:
        """The time a transaction sent now would run at (seconds)."""
        ...

    def passed(self) -> int:
        """A time no block from now on can be stamped before: what may be submitted as already
        happened (a reading's observed_at, a maturity), whatever the node's clock says."""
        ...

    def warehouse(self, warehouse: bytes) -> Warehouse: ...

    def device_kind(self, warehouse: bytes, device: ChecksumAddress) -> int: ...

    def reading_range(self, warehouse: bytes, kind: int) -> ReadingRange: ...

    def required_kinds(self, warehouse: bytes) -> list[int]:
        """Kinds a receipt must include (those with a range in the current device set)."""
        ...

    def sequence_used(self, device: ChecksumAddress, sequence: int) -> bool: ...

    def threshold_hint(self, warehouse: bytes) -> int | None:
        """The threshold the last warehouse() call saw, without asking the chain (None: unknown)."""
        ...

    def order(self, order_id: int) -> Order: ...


class SystemView:
    """ChainView over a deployed System, every call under `lock`.

    A warehouse's device kinds, reading ranges and required kinds belong to its device-set version
    (the contract stores them per version and a rotation starts a new one), so they are cached by
    (warehouse, version) and never go stale. The version itself, the active flag, orders, sequence
    bits and time are read fresh every time. The version a cached answer is filed under is the one
    the last `warehouse()` call saw, which every caller makes just before.

    Readings come from anyone (D36), naming any warehouse and device: only answers about registered
    warehouses and enrolled devices are cached (bounded by what the chain's admin registered), never
    "unknown", or a flood of made-up addresses would grow the cache for ever.

    `clock_margin`: how far behind the wall clock a node's clock may be (seconds), see `passed`."""

    def __init__(self, system: System, lock: threading.RLock | None = None, *, clock_margin: int = 5) -> None:
        self.system = system
        self.lock = lock or threading.RLock()
        self.clock_margin = clock_margin
        self._chain_id = system.chain.chain_id
        self._version: dict[bytes, int] = {}
        self._threshold: dict[bytes, int] = {}
        self._kinds: dict[tuple[bytes, int, str], int] = {}
        self._ranges: dict[tuple[bytes, int, int], ReadingRange] = {}
        self._required: dict[tuple[bytes, int], list[int]] = {}

    @property
    def chain_id(self) -> int:
        return self._chain_id

    @property
    def oracle_address(self) -> ChecksumAddress:
        return self.system.oracle.address

    def now(self) -> int:
        # The latest block's time can trail the wall clock by minutes on an idle node that mines
        # on demand (anvil, the embedded chain), and the next block is stamped with the wall
        # clock; a development chain moved forward (advance_time) is ahead of it. The next
        # transaction runs at the later of the two.
        with self.lock:
            return max(self.system.chain.now(), int(time.time()))

    def passed(self) -> int:
        # The latest block's time has passed for every later block; so has the wall clock less
        # the margin, unless the proposer's clock is further behind than that. On an idle chain
        # that mines on demand the latest block can be minutes old, so that alone would hold a
        # reading back until someone else's transaction is mined.
        with self.lock:
            return max(self.system.chain.now(), int(time.time()) - self.clock_margin)

    def warehouse(self, warehouse: bytes) -> Warehouse:
        with self.lock:
            found = self.system.oracle.warehouse(warehouse)
            if found.device_set_version != 0:  # registered: an unknown one is not remembered
                self._version[warehouse] = found.device_set_version
                self._threshold[warehouse] = found.threshold
            return found

    def threshold_hint(self, warehouse: bytes) -> int | None:
        return self._threshold.get(warehouse)

    def _current_version(self, warehouse: bytes) -> int:
        version = self._version.get(warehouse)
        return self.warehouse(warehouse).device_set_version if version is None else version

    def device_kind(self, warehouse: bytes, device: ChecksumAddress) -> int:
        with self.lock:
            key = (warehouse, self._current_version(warehouse), device)
            kind = self._kinds.get(key)
            if kind is None:
                kind = self.system.oracle.device_kind(warehouse, device)
                if kind != 0:  # enrolled; "unknown" is asked again (anyone can name a new device)
                    self._kinds[key] = kind
            return kind

    def reading_range(self, warehouse: bytes, kind: int) -> ReadingRange:
        with self.lock:
            key = (warehouse, self._current_version(warehouse), kind)
            if key not in self._ranges:
                self._ranges[key] = self.system.oracle.reading_range(warehouse, kind)
            return self._ranges[key]

    def required_kinds(self, warehouse: bytes) -> list[int]:
        with self.lock:
            key = (warehouse, self._current_version(warehouse))
            if key not in self._required:
                self._required[key] = self.system.oracle.required_kinds(warehouse)
            return list(self._required[key])

    def sequence_used(self, device: ChecksumAddress, sequence: int) -> bool:
        with self.lock:
            return self.system.oracle.sequence_used(device, sequence)

    def order(self, order_id: int) -> Order:
        with self.lock:
            return self.system.ledger.order(order_id)
