"""Fixtures for the embedded-chain tests: a deployed system with its cast, reset for every test.

`world` is the whole environment (see tests/world.py); `ledger`, `oracle`, `token`, `cast` and
`chain` are shortcuts into it. `world.open_order(...)`, `world.confirm(order_id, quantity,
signers=2)` and `world.balances()` are the helpers the tests share.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from world import Cast, World, shared_world

from chain_client.chain import Chain
from chain_client.ledger import LedgerClient
from chain_client.receipts import ReceiptOracleClient
from chain_client.token import SettlementTokenClient


@pytest.fixture
def world() -> Iterator[World]:
    """The session's deployed system, reverted to its freshly set-up state."""
    yield shared_world()


@pytest.fixture
def chain(world: World) -> Chain:
    return world.chain


@pytest.fixture
def cast(world: World) -> Cast:
    return world.cast


@pytest.fixture
def ledger(world: World) -> LedgerClient:
    return world.ledger


@pytest.fixture
def oracle(world: World) -> ReceiptOracleClient:
    return world.oracle


@pytest.fixture
def token(world: World) -> SettlementTokenClient:
    return world.token
