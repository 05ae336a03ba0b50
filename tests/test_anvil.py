"""Against a real JSON-RPC node: a local anvil from the pinned npm package (node_modules/.bin/anvil).

These run in `make test`: a missing anvil is a failure, not a skip.
"""

from __future__ import annotations

import io
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import typer
from api_support import delivery, enrol_warehouse
from eth_account import Account
from eth_account.signers.local import LocalAccount
from index_support import anvil_node
from proxy_support import capped_logs_node
from rich.console import Console
from typer.testing import CliRunner
from world import check_demo_end_state

from api import cli as api_cli
from certledger_main import build_app
from chain_client import errors
from chain_client.chain import connect
from chain_client.demo import run_demo
from chain_client.deploy import Deployment
from chain_client.models import Role
from chain_client.pricing import discount_price
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


@dataclass(frozen=True)
class Demo:
    system: System
    story: str
    manifest: Path


@pytest.fixture(scope="module")
def demo(anvil: Anvil, tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """The demo run once on the module's anvil; its tests only read what it left."""
    chain = connect(Settings(rpc_url=anvil.url))
    out = io.StringIO()
    manifest = tmp_path_factory.mktemp("demo") / "demo.json"
    system = run_demo(chain, Console(file=out, width=120), manifest=manifest)
    return Demo(system, out.getvalue(), manifest)


def test_demo_on_anvil_reconciles_and_an_auditor_verifies_it_from_its_manifest(
    anvil: Anvil, demo: Demo, tmp_path: Path
) -> None:
    system, manifest = demo.system, demo.manifest
    chain = system.chain
    assert not chain.embedded
    assert chain.chain_id == ANVIL_CHAIN_ID
    check_demo_end_state(system, demo.story)
    assert f"node chain {ANVIL_CHAIN_ID}" in demo.story
    assert Deployment.load(manifest) == system.deployment

    runner = CliRunner(env={"CERTLEDGER_RPC_URL": anvil.url, "CERTLEDGER_MANIFEST": str(manifest)})
    db = str(tmp_path / "audit.db")
    for command in (["audit", "replay", "--db", db], ["audit", "verify", "--db", db]):
        result = runner.invoke(build_app(), command)
        assert result.exit_code == 0, result.output


def test_holdings_and_lineage_ask_a_node_that_caps_log_ranges_in_smaller_ranges(
    anvil: Anvil, demo: Demo
) -> None:
    """Besu refuses eth_getLogs over more than --rpc-max-logs-range blocks: `cert holdings` and
    `cert lineage` asked for the whole chain at once and ended in a traceback there."""
    app = build_app()
    ledger = demo.system.ledger
    holders = sorted({c.holder for c in ledger.certificates_of_order(1)})
    direct = CliRunner(env={"CERTLEDGER_RPC_URL": anvil.url, "CERTLEDGER_MANIFEST": str(demo.manifest)})
    wanted = {
        (command, *args): direct.invoke(app, [command, *args, "--json"]).output
        for command, *args in [("cert", "holdings", holder) for holder in holders]
        + [("cert", "lineage", "1")]
    }
    with capped_logs_node(anvil.url, max_blocks=3) as (url, refused):
        capped = CliRunner(env={"CERTLEDGER_RPC_URL": url, "CERTLEDGER_MANIFEST": str(demo.manifest)})
        for command, answer in wanted.items():
            result = capped.invoke(app, [*command, "--json"])
            assert result.exit_code == 0, (command, result.output)
            assert result.output == answer
    assert refused, "the chain is longer than the cap: some range must have been refused"
    # A node that refuses even a single block's logs is said to be unavailable, in one line.
    with capped_logs_node(anvil.url, max_blocks=0) as (url, _):
        capped = CliRunner(env={"CERTLEDGER_RPC_URL": url, "CERTLEDGER_MANIFEST": str(demo.manifest)})
        result = capped.invoke(app, ["cert", "lineage", "1"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "unavailable" in result.output and "range limit" in " ".join(result.output.split())
    assert any(json.loads(answer) for answer in wanted.values())  # not all empty


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_names_an_index_it_cannot_open_in_one_line_with_any_number_of_workers(
    anvil: Anvil,
    demo: Demo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    workers: int,
) -> None:
    """With several workers the first sync ran outside the handling one worker had: a traceback.
    With one, a plain path was shown as "(an unreadable database URL)"."""
    monkeypatch.setattr(os, "environ", os.environ.copy())  # serve sets CERTLEDGER_* for its workers
    missing = tmp_path / "no-such-directory" / "index.sqlite"
    with pytest.raises(typer.Exit) as exit_info:
        api_cli.serve(rpc_url=anvil.url, manifest=demo.manifest, index_db=str(missing), host="127.0.0.1",
                      port=0, workers=workers, access_log=False)  # fmt: skip
    assert exit_info.value.exit_code == 1
    err = capsys.readouterr().err
    assert err == f"error: the event index sqlite:///{missing} cannot be used: unable to open database file\n"
    assert not missing.parent.exists()


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


def test_a_revert_is_named_as_it_happened_in_its_block_not_as_a_replay_after_it(anvil: Anvil) -> None:
    """One block: the admin pauses, a holder's withdraw reverts SystemPaused, the admin unpauses.
    A replay after the block would run unpaused and name NothingToWithdraw; the node's trace of
    the transaction names what stopped it."""
    chain = connect(Settings(rpc_url=anvil.url, poll_interval=0.01))
    admin, holder = chain.new_account(), chain.new_account()
    system = System.deploy(
        chain, admin, admin_entity_id=label_hash("OP"), min_split_unit=100, max_split_depth=3
    )
    ledger, tx, w3 = system.ledger.contract.functions, system.tx, chain.w3
    base = int(w3.eth.get_block("latest")["baseFeePerGas"])
    nonce = w3.eth.get_transaction_count(admin.address)

    def signed(account: LocalAccount, fn: Any, nonce: int, tip_gwei: int) -> str:
        tip = tip_gwei * 10**9  # block order: the highest tip first, each sender's nonces in order
        params: Any = {"from": account.address, "gas": 200_000, "nonce": nonce, "chainId": chain.chain_id,
                       "maxFeePerGas": 4 * base + tip, "maxPriorityFeePerGas": tip}  # fmt: skip
        raw = account.sign_transaction(fn.build_transaction(params)).raw_transaction
        return "0x" + bytes(w3.eth.send_raw_transaction(raw)).hex()

    rpc = w3.provider.make_request
    rpc("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        signed(admin, ledger.pause(), nonce, 3)
        refused = signed(holder, ledger.withdraw(), w3.eth.get_transaction_count(holder.address), 2)
        signed(admin, ledger.unpause(), nonce + 1, 1)
        rpc("evm_mine", [])  # type: ignore[arg-type]
    finally:
        rpc("evm_setAutomine", [True])  # type: ignore[arg-type]
    block = w3.eth.get_block("latest")
    assert ["0x" + bytes(h).hex() for h in block["transactions"]][1] == refused  # type: ignore[arg-type]
    assert not system.ledger.paused()
    with pytest.raises(errors.SystemPaused) as info:
        tx.receipt(refused)
    assert info.value.mined is not None and info.value.mined.block_number == block["number"]

    # A proxy that filters debug methods: the trace is best effort, the replay answers (after the
    # block, so with the unpaused ledger's error), not a "node unavailable" for a node that is up.
    real = w3.provider.make_request

    def filtered(method: Any, params: Any) -> Any:
        if str(method).startswith("debug_"):
            raise requests.HTTPError("403 Client Error: Forbidden")
        return real(method, params)

    w3.provider.make_request = filtered  # type: ignore[method-assign]
    try:
        with pytest.raises(errors.NothingToWithdraw):
            tx.receipt(refused)
    finally:
        w3.provider.make_request = real  # type: ignore[method-assign]


def test_a_transaction_the_node_dropped_leaves_no_gap_behind(anvil: Anvil) -> None:
    """A node that loses a pending transaction (a restart empties its pool) must not wedge the
    key: after the timeout the next nonce comes from the node again."""
    chain = connect(Settings(rpc_url=anvil.url, receipt_timeout=2))
    admin = chain.new_account()
    system = System.deploy(
        chain, admin, admin_entity_id=label_hash("OP"), min_split_unit=100, max_split_depth=3
    )
    rpc = chain.w3.provider.make_request
    rpc("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        with pytest.raises(errors.TransactionTimeout) as info:
            system.token.mint(admin, admin.address, 5)
        rpc("anvil_dropTransaction", [info.value.tx_hash])  # type: ignore[arg-type]
    finally:
        rpc("evm_setAutomine", [True])  # type: ignore[arg-type]
    system.token.mint(admin, admin.address, 7)
    system.token.mint(admin, admin.address, 7)
    assert system.token.balance_of(admin.address) == 14
    # A key with no ether for gas: the node's refusal, by name (nothing signed, nothing pending).
    with pytest.raises(errors.TransactionRejected, match="refused"):
        system.token.approve(Account.create(), system.ledger.address, 1)


def test_a_transaction_mined_out_of_gas_is_a_named_revert(anvil: Anvil) -> None:
    chain = connect(Settings(rpc_url=anvil.url))
    admin = chain.new_account()
    system = System.deploy(
        chain, admin, admin_entity_id=label_hash("OP"), min_split_unit=100, max_split_depth=3
    )
    fn = system.token.contract.functions.mint(admin.address, 5)
    with pytest.raises(errors.UnknownRevert, match="was mined and reverted"):
        Transactor(chain, system.decoder).send(admin, fn, gas=30_000)
    assert system.token.balance_of(admin.address) == 0


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
    assert registered.output.startswith("done in 0x")  # a write says where it was mined
    minted = runner.invoke(app, ["token", "mint", supplier, "--amount", "12345"])
    assert minted.exit_code == 0, minted.output
    balance = runner.invoke(app, ["token", "balance", supplier])
    assert balance.exit_code == 0 and balance.output.strip() == "12345" == str(
        system.token.balance_of(supplier)
    )
    not_bank = runner.invoke(app, ["token", "mint", supplier, "--amount", "1", "--key-env", "CERTLEDGER_KEY"])
    assert not_bank.exit_code == 1 and "refused by the contract" in not_bank.output, not_bank.output
    record = system.ledger.participant(supplier)
    assert (record.roles, record.active, record.entity_id) == (
        Role.SUPPLIER,
        True,
        label_hash("USCC:913200002222"),
    )

    shown = runner.invoke(app, ["participant", "show", supplier, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["roles"] == int(Role.SUPPLIER)

    plain = runner.invoke(app, ["participant", "show", supplier])
    assert plain.exit_code == 0, plain.output
    lines = plain.output.splitlines()
    assert f"entity_id: 0x{label_hash('USCC:913200002222').hex()}" in lines and "roles: SUPPLIER" in lines

    # An id nothing has is said so, not shown as a record of zeros.
    for unknown, said in (
        (["order", "show", "999"], "no order 999"),
        (["cert", "show", "999"], "no certificate 999"),
        (["cert", "lineage", "999"], "no certificate 999"),
        (["participant", "show", Account.create().address], "is not a registered participant"),
        (["discount", "buy", "999"], "no offer 999"),
    ):
        answer = runner.invoke(app, unknown)
        assert answer.exit_code == 2 and said in " ".join(answer.output.split()), (unknown, answer.output)

    again = runner.invoke(
        app, ["participant", "register", supplier, "--entity", "USCC:913200002222", "--role", "SUPPLIER"]
    )
    assert again.exit_code == 1
    assert "ParticipantAlreadyRegistered" in again.output
    assert f"account={supplier}" in again.output  # the error's fields, readable

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

    # An order the ledger refuses costs no approval: the escrow's approval is sent only once the
    # order is checked (it was sent first, mined and left behind).
    issuer = anvil.account(1).address
    for command in (
        [
            "participant",
            "register",
            issuer,
            "--entity",
            "USCC:ISSUER",
            "--role",
            "ISSUER",
            "--issuer-limit",
            "10000",
        ],
        ["token", "mint", issuer, "--amount", "5000"],
    ):
        assert runner.invoke(app, command).exit_code == 0
    nonce = system.chain.w3.eth.get_transaction_count(issuer)
    order = ["order", "open", supplier, "--amount", "1000", "--maturity-days", "30", "--invoice", "INV-CLI-1"]
    refused = runner.invoke(app, [*order, "--warehouse", "WH-NOPE", "--goods", "g", "--quantity", "5"])
    assert refused.exit_code == 1 and "UnknownWarehouse" in refused.output, refused.output
    assert "approved" not in refused.output
    assert system.token.allowance(issuer, system.ledger.address) == 0
    assert system.chain.w3.eth.get_transaction_count(issuer) == nonce
    device = f"{Account.create().address}:count"
    warehouse = [
        "warehouse",
        "register",
        "WH-CLI",
        "--device",
        device,
        "--range",
        "count:1:100",
        "--threshold",
        "1",
    ]
    assert runner.invoke(app, warehouse).exit_code == 0
    opened = runner.invoke(app, [*order, "--warehouse", "WH-CLI", "--goods", "g", "--quantity", "5"])
    assert opened.exit_code == 0, opened.output
    assert "approved the ledger to take 1000 in 0x" in opened.output and "order 1 opened" in opened.output
    assert system.ledger.order(1).escrowed == 1000
    shown = runner.invoke(app, ["order", "show", "1"])
    maturity = system.ledger.order(1).maturity
    assert f"maturity: {maturity} (20" in shown.output and " UTC)" in shown.output, shown.output
    early = runner.invoke(app, ["order", "cancel", "1"])
    assert early.exit_code == 1 and "DeadlineNotPassed(orderId=1, cancellableAfter=" in early.output
    assert " UTC)" in early.output  # a time with its date

    # The operator's jobs from the command line: an emergency pause, split rules, roles, limits,
    # and a warehouse's devices rotated, then the warehouse deactivated.
    def status() -> dict[str, Any]:
        shown = runner.invoke(app, ["admin", "status", "--json"])
        assert shown.exit_code == 0, shown.output
        return dict(json.loads(shown.output))

    assert (status()["paused"], status()["orders"], status()["max_split_depth"]) == (False, 1, 4)
    assert runner.invoke(app, ["admin", "pause"]).exit_code == 0 and status()["paused"] is True
    paused = runner.invoke(
        app, [*order[:-1], "INV-CLI-2", "--warehouse", "WH-CLI", "--goods", "g", "--quantity", "5"]
    )
    assert paused.exit_code == 1 and "SystemPaused" in paused.output and "approved" not in paused.output
    assert runner.invoke(app, ["admin", "unpause"]).exit_code == 0 and status()["paused"] is False
    rules = runner.invoke(app, ["admin", "split-rules", "--min-unit", "50", "--max-depth", "5"])
    assert rules.exit_code == 0 and (status()["min_split_unit"], status()["max_split_depth"]) == (50, 5)
    roles = ["participant", "roles", supplier, "--role", "SUPPLIER", "--role", "FACTOR"]
    assert runner.invoke(app, roles).exit_code == 0
    assert system.ledger.participant(supplier).roles == Role.SUPPLIER | Role.FACTOR
    assert runner.invoke(app, ["participant", "limit", issuer, "20000"]).exit_code == 0
    assert system.ledger.participant(issuer).issuer_limit == 20_000
    shown = json.loads(runner.invoke(app, ["warehouse", "show", "WH-CLI", "--json"]).output)
    assert (shown["active"], shown["threshold"], shown["device_set_version"]) == (True, 1, 1)
    rotate = ["warehouse", "rotate", "WH-CLI", "--device", f"{Account.create().address}:count"]
    rotate += ["--range", "count:1:100", "--threshold", "1"]
    assert runner.invoke(app, [*rotate, "--freshness", "7200"]).exit_code == 0
    assert runner.invoke(app, rotate).exit_code == 0  # the window is kept unless given
    shown = json.loads(runner.invoke(app, ["warehouse", "show", "WH-CLI", "--json"]).output)
    assert (shown["device_set_version"], shown["freshness"]) == (3, 7200)
    assert runner.invoke(app, ["warehouse", "deactivate", "WH-CLI"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["warehouse", "show", "WH-CLI", "--json"]).output)["active"] is False
    nowhere = runner.invoke(app, ["warehouse", "show", "WH-NOPE"])
    assert nowhere.exit_code == 2 and "no warehouse WH-NOPE" in nowhere.output

    cancel = runner.invoke(app, ["order", "cancel", "999"])
    assert cancel.exit_code == 1
    assert "UnknownOrder" in cancel.output

    # Bad input is one line and exit 2, never a traceback; a key is never echoed.
    bad_key = runner.invoke(app, ["order", "cancel", "1"], env={**env, "CERTLEDGER_KEY": "0xnot-a-key"})
    assert bad_key.exit_code == 2 and isinstance(bad_key.exception, SystemExit), bad_key.output
    assert "does not hold a hex private key" in bad_key.output and "not-a-key" not in bad_key.output
    bad_hex = runner.invoke(app, ["cert", "freeze", "1", "0x" + "zz" * 32])
    assert bad_hex.exit_code == 2 and "32-byte hex" in bad_hex.output
    no_prefix = runner.invoke(app, ["cert", "freeze", "1", "ab" * 32])
    assert no_prefix.exit_code == 2 and "0x prefix" in no_prefix.output
    too_big = runner.invoke(app, ["cert", "show", str(2**256)])
    assert too_big.exit_code == 2 and isinstance(too_big.exception, SystemExit), too_big.output
    bad_url = runner.invoke(app, ["order", "show", "1", "--rpc-url", "localhost:8545"])
    assert bad_url.exit_code == 2 and isinstance(bad_url.exception, SystemExit), bad_url.output

    # deploy refuses to overwrite a manifest, and checks the path before it sends anything.
    again_deploy = runner.invoke(app, ["deploy"])
    assert again_deploy.exit_code == 2 and "--force" in again_deploy.output
    nowhere = runner.invoke(app, ["deploy", "--manifest", str(tmp_path / "missing" / "d.json")])
    assert nowhere.exit_code == 2 and "no directory" in nowhere.output


def test_a_supplier_and_a_factor_work_from_the_cli(anvil: Anvil, tmp_path: Path) -> None:
    """From the command line a supplier splits, merges (the lineage shows where the value went) and
    grants approvals it can read back; a factor sees what an offer's price buys before paying, is
    told what it paid and at what rate, sees a refused payment credited at settlement and
    withdraws it."""
    chain = connect(Settings(rpc_url=anvil.url))
    admin, issuer, supplier, factor = (chain.new_account() for _ in range(4))
    devices = [chain.new_account(0), chain.new_account(0)]
    system = System.deploy(chain, admin, admin_entity_id=label_hash("USCC:OP"))
    manifest = tmp_path / "deployment.json"
    system.deployment.save(manifest)
    ledger, token = system.ledger, system.token
    for account, role in ((issuer, Role.ISSUER), (supplier, Role.SUPPLIER), (factor, Role.FACTOR)):
        ledger.register_participant(admin, account.address, label_hash(account.address), role, 10**12)
    for account in (issuer, factor):
        token.mint(admin, account.address, 10**9)
    warehouse, goods = label_hash("WH-F"), label_hash("goods")
    enrol_warehouse(system, admin, warehouse, devices)
    now = chain.now()
    token.approve(issuer, ledger.address, 100_000_000)
    order_id, _ = ledger.open_order(
        issuer, payee=supplier.address, amount=100_000_000, maturity=now + 90 * 86_400,
        invoice_hash=label_hash("INV-F"), warehouse=warehouse, goods_hash=goods, expected_quantity=1,
        deadline=now + 86_400,
    )  # fmt: skip
    root, _ = system.oracle.confirm_receipt(admin, *delivery(system, devices, order_id, warehouse, goods, 1))
    price = discount_price(100_000_000, 89, 600)
    offer_id, _ = ledger.offer_discount(supplier, root, value=100_000_000, price=price, expiry=now + 86_400)

    runner = CliRunner(env={"CERTLEDGER_RPC_URL": anvil.url, "CERTLEDGER_MANIFEST": str(manifest)})
    app = build_app()
    listed = runner.invoke(app, ["discount", "offers", "--buyer", factor.address, "--json"])
    assert listed.exit_code == 0, listed.output
    [offer] = json.loads(listed.output)
    assert (offer["offer_id"], offer["order_id"], offer["issuer"], offer["buyer"]) == (
        offer_id, order_id, issuer.address, None,
    )  # fmt: skip
    # Priced for 89 whole days with a little over 89 left: a little under the 6% quoted.
    assert offer["maturity"] == ledger.certificate(root).maturity and 585 <= offer["annual_rate_bps"] <= 600
    shown = runner.invoke(app, ["discount", "show", str(offer_id)])
    assert shown.exit_code == 0 and f"issuer: {issuer.address}" in shown.output, shown.output
    assert "maturity: " in shown.output and " UTC)" in shown.output  # a time with its date
    assert "buyer: anyone" in shown.output
    by_factor = runner.invoke(app, ["discount", "offers", "--seller", factor.address, "--json"])
    assert json.loads(by_factor.output) == []
    # The supplier splits a part off and merges it back: the lineage shows where its value went.
    as_supplier = {"CERTLEDGER_KEY": supplier.key.hex()}
    one_part = runner.invoke(app, ["cert", "split", str(root), "100000000"], env=as_supplier)
    assert one_part.exit_code == 2 and "at least two parts" in one_part.output, one_part.output
    [part], _ = ledger.split(supplier, root, [99_000_000, 1_000_000])
    merged = runner.invoke(app, ["cert", "merge", str(part), str(root)], env=as_supplier)
    assert f"merged 1000000 of certificate {part} into {root}" in merged.output, merged.output
    tree = runner.invoke(app, ["cert", "lineage", str(root)])
    assert f"#{part} {supplier.address} 0 live\n    merged 1000000 into #{root}" in tree.output, tree.output

    # Approvals from the command line, and what an operator may move.
    approvals = ["cert", "approvals", str(root), factor.address, "--json"]
    for grant, seen in (
        (["cert", "approve", str(root), factor.address, "--value", "500"], (False, False, 500)),
        (["cert", "approve", str(root), factor.address], (True, False, 500)),
        (["cert", "approve-all", factor.address], (True, True, 500)),
        (["cert", "approve-all", factor.address, "--revoke"], (True, False, 500)),
    ):
        assert runner.invoke(app, grant, env=as_supplier).exit_code == 0, grant
        shown = json.loads(runner.invoke(app, approvals).output)
        assert (shown["approved"], shown["approved_for_all"], shown["allowance"]) == seen, grant

    bought = runner.invoke(app, ["discount", "buy", str(offer_id)], env={"CERTLEDGER_KEY": factor.key.hex()})
    assert bought.exit_code == 0, bought.output
    said = " ".join(bought.output.split())
    assert f"approved the ledger to take {price}" in said
    assert f"bought 100000000 of certificate {root} for {price} (implied " in said
    implied = float(said.split("(implied ")[1].split("%")[0])  # the sale event's rate
    assert abs(implied * 100 - offer["annual_rate_bps"]) <= 1  # a few seconds after the listing
    assert ledger.certificate(root).holder == factor.address
    assert json.loads(runner.invoke(app, ["discount", "offers", "--json"]).output) == []

    token.set_blocked(admin, factor.address, True)  # the factor's bank refuses the push
    chain.advance_time(90 * 86_400)
    settled = runner.invoke(app, ["settle", str(root)], env={"CERTLEDGER_KEY": supplier.key.hex()})
    assert settled.exit_code == 0, settled.output
    said = " ".join(settled.output.split())
    assert f"certificate {root}: 100000000 due to {factor.address}" in said
    assert f"credited 100000000 to {factor.address}" in said and "certledger withdraw" in said
    assert runner.invoke(app, ["credit", factor.address]).output.strip() == "100000000"
    token.set_blocked(admin, factor.address, False)
    withdrawn = runner.invoke(app, ["withdraw"], env={"CERTLEDGER_KEY": factor.key.hex()})
    assert f"withdrew 100000000 to {factor.address}" in withdrawn.output, withdrawn.output
    assert runner.invoke(app, ["credit", factor.address]).output.strip() == "0"
