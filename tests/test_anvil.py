"""Against a real JSON-RPC node: a local anvil from the pinned npm package (node_modules/.bin/anvil).

These run in `make test`: a missing anvil is a failure, not a skip.
"""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from index_support import anvil_node
from rich.console import Console
from typer.testing import CliRunner
from world import check_demo_end_state

from certledger_main import build_app
from chain_client import errors
from chain_client.chain import connect
from chain_client.demo import run_demo
from chain_client.deploy import Deployment
from chain_client.models import OrderStatus, Role
from chain_client.receipts import label_hash
from chain_client.settings import Settings
from chain_client.system import System
from chain_client.transactions import Transactor

pytestmark = pytest.mark.anvil

ANVIL_CHAIN_ID = 31337
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Anvil:
    url: str
    keys: tuple[str, ...]  # the dev accounts' private keys, as anvil reports them

    def account(self, index: int) -> LocalAccount:
        account: LocalAccount = Account.from_key(self.keys[index])
        return account


def _chain_id(url: str) -> int | None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(json.loads(response.read())["result"], 16)
    except (urllib.error.URLError, ConnectionError, OSError, ValueError, KeyError):
        return None


def _dev_keys(config: Path, deadline: float) -> tuple[str, ...]:
    """The dev accounts' keys from anvil's --config-out file (written once it is up)."""
    while True:
        try:
            return tuple(json.loads(config.read_text())["private_keys"])
        except (FileNotFoundError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    config = tmp_path_factory.mktemp("anvil") / "anvil.json"
    with anvil_node("--config-out", str(config)) as url:
        deadline = time.monotonic() + START_TIMEOUT
        while _chain_id(url) != ANVIL_CHAIN_ID:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"anvil did not answer eth_chainId {ANVIL_CHAIN_ID} on {url} within {START_TIMEOUT}s"
                )
            time.sleep(0.1)
        yield Anvil(url=url, keys=_dev_keys(config, deadline))


def test_anvil_dev_key_is_the_well_known_one(anvil: Anvil) -> None:
    assert anvil.account(0).address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def test_demo_on_anvil_reconciles(anvil: Anvil) -> None:
    chain = connect(Settings(rpc_url=anvil.url))
    assert not chain.embedded
    assert chain.chain_id == ANVIL_CHAIN_ID
    out = io.StringIO()
    system = run_demo(chain, Console(file=out, width=120))
    check_demo_end_state(system, out.getvalue())
    assert f"node chain {ANVIL_CHAIN_ID}" in out.getvalue()


def test_advance_time_on_a_node(anvil: Anvil) -> None:
    chain = connect(Settings(rpc_url=anvil.url))
    for seconds in (3_600, 1, 0):
        before, block = chain.now(), chain.w3.eth.block_number
        after = chain.advance_time(seconds)
        assert after == chain.now()
        assert chain.w3.eth.block_number == block + 1
        assert after >= before + seconds


def test_a_revert_mined_on_a_node_is_typed(anvil: Anvil) -> None:
    """Unsimulated (explicit gas), the transaction is mined and fails; the client replays it to
    name the contract error."""
    chain = connect(Settings(rpc_url=anvil.url))
    admin = chain.new_account()
    system = System.deploy(
        chain, admin, admin_entity_id=label_hash("OP"), min_split_unit=100, max_split_depth=3
    )
    stranger = chain.new_account()
    fn = system.ledger.contract.functions.pause()
    before = chain.w3.eth.get_transaction_count(stranger.address)
    with pytest.raises(errors.ParticipantNotRegistered) as info:
        Transactor(chain, system.decoder).send(stranger, fn, gas=100_000)
    assert str(info.value.fields["account"]).lower() == stranger.address.lower()
    assert chain.w3.eth.get_transaction_count(stranger.address) == before + 1  # it was mined
    assert not system.ledger.paused()


def test_cli_round_trip_on_anvil(anvil: Anvil, tmp_path: Path) -> None:
    app = build_app()
    manifest = tmp_path / "deployment.json"
    admin = anvil.account(0)
    env: dict[str, str | None] = {
        "CERTLEDGER_RPC_URL": anvil.url,
        "CERTLEDGER_MANIFEST": str(manifest),
        "CERTLEDGER_ADMIN_KEY": anvil.keys[0],
        "CERTLEDGER_KEY": anvil.keys[1],
    }
    runner = CliRunner(env=env)

    deployed = runner.invoke(app, ["deploy", "--entity-id", "USCC:OPERATOR", "--max-split-depth", "4"])
    assert deployed.exit_code == 0, deployed.output
    deployment = Deployment.load(manifest)
    assert deployment.chain_id == ANVIL_CHAIN_ID
    assert deployment.admin == admin.address
    system = System.from_manifest(Settings(rpc_url=anvil.url, manifest=manifest))
    assert system.ledger.split_rules() == (100, 4)
    assert system.ledger.participant(admin.address).roles == Role.ADMIN

    supplier = Account.create().address
    registered = runner.invoke(
        app, ["participant", "register", supplier, "--entity", "USCC:913200002222", "--role", "SUPPLIER"]
    )
    assert registered.exit_code == 0, registered.output
    record = system.ledger.participant(supplier)
    assert (record.roles, record.active, record.entity_id) == (
        Role.SUPPLIER,
        True,
        label_hash("USCC:913200002222"),
    )

    shown = runner.invoke(app, ["participant", "show", supplier, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["roles"] == int(Role.SUPPLIER)

    order = runner.invoke(app, ["order", "show", "999", "--json"])
    assert order.exit_code == 0, order.output
    zero = json.loads(order.output)
    assert zero["order_id"] == 999
    assert (zero["status"], zero["escrowed"], zero["root_certificate_id"]) == (int(OrderStatus.NONE), 0, 0)
    assert zero["issuer"] == "0x" + "00" * 20
    plain = runner.invoke(app, ["order", "show", "999"])
    assert plain.exit_code == 0 and "NONE" in plain.output

    again = runner.invoke(
        app, ["participant", "register", supplier, "--entity", "USCC:913200002222", "--role", "SUPPLIER"]
    )
    assert again.exit_code == 1
    assert "ParticipantAlreadyRegistered" in again.output

    not_admin = runner.invoke(
        app,
        [
            "participant",
            "register",
            Account.create().address,
            "--entity",
            "X",
            "--role",
            "FACTOR",
            "--key-env",
            "CERTLEDGER_KEY",
        ],
    )
    assert not_admin.exit_code == 1
    assert "ParticipantNotRegistered" in not_admin.output  # the second dev key is no participant

    cancel = runner.invoke(app, ["order", "cancel", "999"])
    assert cancel.exit_code == 1
    assert "UnknownOrder" in cancel.output
