"""Gas is deterministic, so it is tested, not timed: the targets hold and the committed snapshot
(bench/gas.json) is what the contracts cost now. A change in gas shows up as a diff in review."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from chain_client.chain import connect
from chain_client.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gas", ROOT / "scripts" / "bench_gas.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def measured() -> dict[str, int]:
    gas: dict[str, int] = _bench_module().measure(connect(Settings()))
    return gas


@pytest.mark.parametrize(
    ("operation", "limit"),
    [("transfer_whole", 65_000), ("split_to_new_holder", 125_000), ("merge", 50_000)],
)
def test_gas_target_holds(measured: dict[str, int], operation: str, limit: int) -> None:
    assert measured[operation] <= limit


def test_committed_gas_snapshot_is_current(measured: dict[str, int]) -> None:
    committed = json.loads((ROOT / "bench" / "gas.json").read_text(encoding="utf-8"))["gas"]
    assert committed == measured, "gas changed: run `make bench` and commit bench/gas.json"
