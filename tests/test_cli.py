"""The `certledger` command as a user runs it (typer's CliRunner on the assembled app)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from proxy_support import scripted_node
from typer.testing import CliRunner

from certledger_main import build_app
from chain_client import errors
from chain_client.chain import connect
from chain_client.models import OrderStatus
from chain_client.pricing import discount_price
from chain_client.settings import Settings

# Commands must not pick up a node or manifest from the developer's environment.
NO_NODE: dict[str, str | None] = {"CERTLEDGER_RPC_URL": None, "CERTLEDGER_MANIFEST": None}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env=NO_NODE)


def test_help_lists_the_commands(runner: CliRunner) -> None:
    result = runner.invoke(build_app(), ["--help"])
    assert result.exit_code == 0, result.output
    for command in (
        "deploy",
        "demo",
        "order",
        "cert",
        "discount",
        "participant",
        "admin",
        "token",
        "settle",
        "withdraw",
    ):
        assert command in result.output
    for group in ("order", "cert", "discount", "participant", "admin", "warehouse"):
        sub = runner.invoke(build_app(), [group, "--help"])
        assert sub.exit_code == 0, sub.output


def test_no_arguments_shows_help(runner: CliRunner) -> None:
    result = runner.invoke(build_app(), [])
    assert "Usage" in result.output
    assert "deploy" in result.output


@pytest.mark.parametrize(
    ("face", "days", "rate"), [(100_000, 90, 600), (100_000_000, 365, 1_000), (5, 0, 600), (1, 30, 0)]
)
def test_discount_quote_prints_the_python_price(runner: CliRunner, face: int, days: int, rate: int) -> None:
    result = runner.invoke(build_app(), ["discount", "quote", str(face), str(days), str(rate)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(discount_price(face, days, rate))


def test_discount_quote_refuses_a_negative_rate(runner: CliRunner) -> None:
    result = runner.invoke(build_app(), ["discount", "quote", "100000", "90", "-1"])
    assert result.exit_code == 2


def test_a_node_command_without_a_node_says_so(runner: CliRunner) -> None:
    result = runner.invoke(build_app(), ["order", "show", "1"])
    assert result.exit_code == 2
    assert "--rpc-url" in result.output


def test_deploy_needs_a_node(runner: CliRunner) -> None:
    result = runner.invoke(build_app(), ["deploy"], env={"CERTLEDGER_ADMIN_KEY": "0x" + "11" * 32})
    assert result.exit_code == 2
    assert "--rpc-url" in result.output


def test_demo_runs_the_whole_lifecycle(runner: CliRunner) -> None:
    result = runner.invoke(build_app(), ["demo"])
    assert result.exit_code == 0, result.output
    assert "Every fen is accounted for" in result.output
    assert "FAILED" not in result.output


def test_demo_refuses_a_manifest_for_the_embedded_chain(runner: CliRunner, tmp_path: Path) -> None:
    """The embedded chain ends with the demo: a manifest of it could be replayed from nowhere."""
    result = runner.invoke(build_app(), ["demo", "--direct", "--manifest", str(tmp_path / "m.json")])
    assert result.exit_code == 2, result.output
    assert "needs a node" in result.output and not (tmp_path / "m.json").exists()


def test_demo_with_a_broker_that_does_not_answer_ends_in_one_line(runner: CliRunner) -> None:
    """It ended in a traceback of some seventy lines."""
    result = runner.invoke(build_app(), ["demo", "--broker-url", "mqtt://127.0.0.1:1"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    last = result.output.strip().splitlines()[-1]
    assert last == "error: no connection to mqtt://127.0.0.1:1 in 10.0s", result.output


@pytest.fixture
def production_node() -> Iterator[str]:
    """A node that answers the standard methods and has no development controls, as Besu or geth."""
    with scripted_node({"eth_chainId": "0x7a69", "eth_blockNumber": "0x10", "eth_getBalance": "0x0"}) as url:
        yield url


def test_development_controls_on_a_node_without_them_are_named(
    production_node: str, runner: CliRunner
) -> None:
    """Funding went unnoticed (web3 hands back the error answer): the demo then failed later, on
    gas it never had. Now the refusal is the error, and the demo says it in one line."""
    chain = connect(Settings(rpc_url=production_node))
    with pytest.raises(errors.DevelopmentNodeRequired, match="anvil_setBalance.*development nodes only"):
        chain.fund(chain.new_account(0).address, 1)
    with pytest.raises(errors.DevelopmentNodeRequired, match="evm_increaseTime"):
        chain.advance_time(60)
    result = runner.invoke(build_app(), ["demo", "--rpc-url", production_node, "--direct"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.strip().splitlines()[-1].startswith("error: the node refused anvil_setBalance")


def test_an_order_status_in_a_contract_error_is_named() -> None:
    from chain_client.cli import _field

    assert _field("status", int(OrderStatus.CANCELLED), "OrderNotOpen") == "cancelled"
    assert _field("status", 3, "SomeOtherError") == "3"
    assert _field("expiry", 1_800_000_000) == "1800000000 (2027-01-15 08:00:00 UTC)"
