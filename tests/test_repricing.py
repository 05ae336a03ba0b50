"""Transactions priced out of the blocks, on anvil: the base fee jumps after a transaction was sent
and no block will include it at its own fee. The relayer and the keeper replace it (same call,
same nonce, higher fee), and exactly one transaction of the nonce is mined.

Anvil runs with automine off here, so the test decides when blocks are made and at what base fee
(anvil_setNextBlockBaseFeePerGas); its miner leaves out a transaction whose maxFeePerGas is below
the block's base fee, as every node does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from index_support import anvil_node
from oracle_support import chain_ranges
from web3.types import TxParams, Wei

from chain_client.chain import Chain, connect
from chain_client.errors import TransactionRejected, TransactionTimeout
from chain_client.models import CertificateStatus, OrderStatus, Role
from chain_client.receipts import DeviceEnrolment, ReadingKind, label_hash
from chain_client.settings import Settings
from chain_client.system import System
from chain_client.transactions import PRIORITY_FEE, PreparedTx
from oracle.chainview import SystemView
from oracle.devices import DeviceSigner, MemorySequence, ReadingContext
from oracle.gateway import Gateway
from oracle.keeper import Keeper
from oracle.relayer import Relayer
from oracle.settings import OracleSettings
from oracle.store import OrderState, Store
from oracle.submitter import ChainSubmitter
from oracle.wire import SignedReading, decode_reading

pytestmark = pytest.mark.anvil

DAY = 86_400
CARTON_G = 12_000
AMOUNT = 1_000_000
#: how far the base fee jumps: far past the doubling a fresh transaction's fee allows for
SPIKE = 50


@dataclass
class Node:
    chain: Chain
    system: System
    admin: LocalAccount
    issuer: LocalAccount
    supplier: LocalAccount
    relayer: LocalAccount
    warehouse: bytes
    devices: list[DeviceSigner]

    def rpc(self, method: str, *params: Any) -> Any:
        answer = self.chain.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
        assert "error" not in answer, answer
        return answer["result"]

    def automine(self, on: bool) -> None:
        self.rpc("evm_setAutomine", on)

    def mine(self) -> list[str]:
        """Mines one block; returns the hashes of the transactions in it."""
        self.rpc("evm_mine")
        block = self.chain.w3.eth.get_block("latest")
        return ["0x" + bytes(HexBytes(h)).hex() for h in block["transactions"]]  # type: ignore[arg-type]

    def spike(self) -> int:
        """The next block's base fee jumps SPIKE-fold; mines it (without what it prices out)."""
        base = int(self.chain.w3.eth.get_block("latest")["baseFeePerGas"])
        self.rpc("anvil_setNextBlockBaseFeePerGas", hex(SPIKE * base))
        mined = self.mine()
        assert mined == [], f"a block at the new fee included {mined}"
        return SPIKE * base

    def open_order(self, *, maturity_in: int = 90 * DAY) -> int:
        now = self.chain.now()
        order_id, _ = self.system.ledger.open_order(
            self.issuer, payee=self.supplier.address, amount=AMOUNT, maturity=now + maturity_in,
            invoice_hash=label_hash(f"INV-{time.monotonic_ns()}"), warehouse=self.warehouse,
            goods_hash=label_hash("goods"), expected_quantity=100, deadline=now + 14 * DAY,
        )  # fmt: skip
        return order_id

    def readings(self, order_id: int) -> list[bytes]:
        """Both devices' agreeing readings of a full delivery, as they arrive at a gateway."""
        version = self.system.oracle.warehouse(self.warehouse).device_set_version
        context = ReadingContext(order_id, self.warehouse, label_hash("goods"), version)
        observed = self.chain.now() - 30
        payloads = []
        for device in self.devices:
            value = 100 * CARTON_G if device.kind == ReadingKind.NET_WEIGHT_GRAMS else 100
            observation, signature = device.observe(context, value, observed_at=observed, valid_for=3_600)
            payloads.append(SignedReading(observation, signature).encode())
        return payloads


@pytest.fixture
def node() -> Iterator[Node]:
    with anvil_node() as url:
        chain = connect(Settings(rpc_url=url, poll_interval=0.01, receipt_timeout=0.3))
        admin, issuer, supplier, relayer = (chain.new_account() for _ in range(4))
        system = System.deploy(chain, admin, admin_entity_id=label_hash("USCC:OPERATOR"))
        ledger = system.ledger
        ledger.register_participant(admin, issuer.address, label_hash("USCC:I"), Role.ISSUER, 10**12)
        ledger.register_participant(admin, supplier.address, label_hash("USCC:S"), Role.SUPPLIER)
        system.token.mint(admin, issuer.address, 10**12)
        system.token.approve(issuer, ledger.address, 2**256 - 1)
        warehouse = label_hash("WH-FEES")
        devices = [
            DeviceSigner(Account.create(), kind, MemorySequence(1), chain_id=chain.chain_id,
                         oracle=system.oracle.address)
            for kind in (ReadingKind.CARTON_COUNT, ReadingKind.NET_WEIGHT_GRAMS)
        ]  # fmt: skip
        system.oracle.register_warehouse(
            admin, warehouse, [DeviceEnrolment(d.address, int(d.kind)) for d in devices], 2, 3_600,
            chain_ranges(),
        )  # fmt: skip
        system.oracle.set_relayer(admin, relayer.address, True)
        yield Node(chain, system, admin, issuer, supplier, relayer, warehouse, devices)


def test_repriced_is_the_same_call_at_one_nonce_and_only_when_priced_out(node: Node) -> None:
    tx, token = node.system.tx, node.system.token
    node.automine(False)
    prepared = tx.prepare(node.admin, token.contract.functions.mint(node.supplier.address, 5))
    assert tx.repriced(node.admin, prepared) is None  # its fee still stands
    tx.broadcast(prepared)
    base = node.spike()

    replacement = tx.repriced(node.admin, prepared)
    assert replacement is not None and replacement.tx_hash != prepared.tx_hash
    old, new = prepared.unsigned(), replacement.unsigned()
    assert new["nonce"] == old["nonce"] == prepared.nonce == replacement.nonce
    assert {k: v for k, v in new.items() if "Fee" not in k} == {
        k: v for k, v in old.items() if "Fee" not in k
    }
    assert new["maxPriorityFeePerGas"] * 8 >= old["maxPriorityFeePerGas"] * 9
    assert new["maxPriorityFeePerGas"] >= PRIORITY_FEE
    assert new["maxFeePerGas"] >= 2 * base + new["maxPriorityFeePerGas"]
    assert PreparedTx.from_raw(replacement.raw) == replacement
    assert tx.repriced(node.admin, replacement) is None  # priced for these blocks

    tx.broadcast(replacement)
    assert node.mine() == [replacement.tx_hash]
    assert tx.receipt(prepared.tx_hash) is None
    assert token.balance_of(node.supplier.address) == 5

    # A cap below what the blocks ask: no replacement is signed, the transaction waits.
    stuck = tx.prepare(node.admin, token.contract.functions.mint(node.supplier.address, 7))
    tx.broadcast(stuck)
    node.spike()
    node.chain.settings = node.chain.settings.model_copy(update={"max_fee_per_gas": base})
    assert tx.repriced(node.admin, stuck) is None
    with pytest.raises(ValueError, match="signed by"):
        tx.repriced(node.supplier, stuck)


def test_a_transaction_outbid_by_the_market_tip_is_repriced_to_it(node: Node) -> None:
    """Busy blocks: while a transaction waits, other senders' tips rise far above its own, and
    the node's eth_maxPriorityFeePerGas (anvil's, like geth's, follows the tips recent blocks
    paid) says so. Its base fee still stands; it is replaced at the market's tip all the same,
    and a transaction prepared now is offered that tip from the start."""
    tx, token, w3 = node.system.tx, node.system.token, node.chain.w3
    prepared = tx.prepare(node.admin, token.contract.functions.mint(node.supplier.address, 13))
    assert prepared.unsigned()["maxPriorityFeePerGas"] == PRIORITY_FEE
    market = 20 * PRIORITY_FEE
    other = node.chain.new_account()
    for nonce in range(5):  # others' traffic, mined at the market's tip
        busy: dict[str, Any] = {
            "to": node.supplier.address, "value": 1, "gas": 21_000, "nonce": nonce,
            "chainId": node.chain.chain_id, "maxPriorityFeePerGas": market,
            "maxFeePerGas": market + 4 * int(w3.eth.get_block("latest")["baseFeePerGas"]),
        }  # fmt: skip
        w3.eth.wait_for_transaction_receipt(
            w3.eth.send_raw_transaction(other.sign_transaction(busy).raw_transaction)
        )
    assert int(w3.eth.max_priority_fee) == market

    node.automine(False)
    tx.broadcast(prepared)
    replacement = tx.repriced(node.admin, prepared)
    assert replacement is not None and replacement.nonce == prepared.nonce
    new = replacement.unsigned()
    base = int(w3.eth.get_block("latest")["baseFeePerGas"])
    assert new["maxPriorityFeePerGas"] == market and new["maxFeePerGas"] >= 2 * base + market
    assert tx.repriced(node.admin, replacement) is None  # offers what the market asks
    fresh = tx.fees()
    assert fresh["maxPriorityFeePerGas"] == market

    tx.broadcast(replacement)
    assert node.mine() == [replacement.tx_hash]
    assert tx.receipt(prepared.tx_hash) is None
    assert token.balance_of(node.supplier.address) == 13


def test_the_relayer_replaces_a_priced_out_receipt_and_confirms_once(node: Node, tmp_path: Path) -> None:
    order_id = node.open_order()
    store = Store(tmp_path / "oracle.db")
    view = SystemView(node.system)
    store.register_order(
        order_id, carton_weight_grams=CARTON_G, count_tolerance=None, weight_tolerance_pct=None
    )
    gateway = Gateway(store, view, clock_skew=30)
    for payload in node.readings(order_id):
        assert gateway.ingest(payload, "test").accepted
    settings = OracleSettings(
        carton_weight_grams=CARTON_G, retry_base=0.01, retry_max=0.02, db=tmp_path / "o.db"
    )
    submitter = ChainSubmitter(node.system, node.relayer, view.lock)
    relayer = Relayer(store, view, submitter, settings, receipt_timeout=0.2)

    node.automine(False)
    relayer.step()
    first = store.order(order_id)
    assert first is not None and first.state == OrderState.SUBMITTING and first.tx_hash is not None
    node.spike()
    time.sleep(0.05)  # past the backoff of "not mined yet"
    relayer.step()
    replaced = store.order(order_id)
    assert replaced is not None and replaced.state == OrderState.SUBMITTING, replaced
    assert replaced.replaced == (first.tx_hash,) and replaced.tx_hash != first.tx_hash
    assert "replacing 1 priced out" in replaced.detail

    assert node.mine() == [replaced.tx_hash]
    time.sleep(0.05)
    relayer.step()
    done = store.order(order_id)
    assert done is not None and done.state == OrderState.CONFIRMED, done
    assert done.tx_hash == replaced.tx_hash
    order = node.system.ledger.order(order_id)
    assert order.status == OrderStatus.CONFIRMED and done.root_certificate_id == order.root_certificate_id
    node.automine(True)
    confirmed = node.system.ledger.contract.events.OrderConfirmed.get_logs(from_block=0)
    assert [e["args"]["orderId"] for e in confirmed] == [order_id]


def _matured_root(node: Node) -> tuple[int, int]:
    """A receipt confirmed for a new order, and the time moved past its maturity: (root, order)."""
    order_id = node.open_order(maturity_in=10 * DAY)
    readings = [decode_reading(payload) for payload in node.readings(order_id)]
    observations, signatures = [r.observation for r in readings], [r.signature for r in readings]
    root, _ = node.system.oracle.confirm_receipt(node.relayer, observations, signatures)
    node.chain.advance_time(11 * DAY)
    return root, order_id


def test_the_keeper_replaces_a_priced_out_settle_and_pays_once(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = _matured_root(node)
    token, supplier = node.system.token, node.supplier.address
    before = token.balance_of(supplier)

    keeper = Keeper(node.system, node.relayer)
    node.automine(False)
    first = keeper.run_once()
    assert first.settled == [] and len(first.unconfirmed) == 1
    node.spike()
    # The node refuses the first replacement (say, the key's ether ran short): the batch stays in
    # flight with the transaction the node still holds, and nothing new is signed.
    real = node.system.tx.broadcast

    def refusing(prepared: PreparedTx) -> None:
        raise TransactionRejected(prepared.tx_hash, "insufficient funds for gas * price + value")

    monkeypatch.setattr(node.system.tx, "broadcast", refusing)
    refused = keeper.run_once()
    assert refused.repriced == [] and len(refused.refused) == 1 and refused.settled == []
    monkeypatch.setattr(node.system.tx, "broadcast", real)
    second = keeper.run_once()  # finds it priced out: replaces it, sends nothing new
    assert second.settled == [] and len(second.repriced) == 1
    assert node.mine() == second.repriced
    third = keeper.run_once()
    assert third.settled == [root] and third.transactions == second.repriced
    assert keeper.run_once().settled == []
    node.automine(True)
    assert token.balance_of(supplier) - before == AMOUNT
    assert node.system.ledger.certificate(root).status == CertificateStatus.SETTLED


def test_a_legacy_transaction_is_repriced_by_its_gas_price(node: Node) -> None:
    """As a zero-fee or pre-London network takes them: one price per gas, judged against the
    node's own."""
    w3, tx = node.chain.w3, node.system.tx
    node.automine(False)
    fn = node.system.token.contract.functions.mint(node.supplier.address, 3)
    price = int(w3.eth.gas_price)
    params: TxParams = {
        "from": node.admin.address, "gas": 200_000, "gasPrice": Wei(price), "chainId": node.chain.chain_id,
        "nonce": w3.eth.get_transaction_count(node.admin.address),
    }  # fmt: skip
    built: Any = fn.build_transaction(params)
    prepared = PreparedTx.from_raw(bytes(node.admin.sign_transaction(built).raw_transaction))
    assert tx.repriced(node.admin, prepared) is None
    tx.broadcast(prepared)
    node.spike()
    replacement = tx.repriced(node.admin, prepared)
    assert replacement is not None and replacement.nonce == prepared.nonce
    new_price = replacement.unsigned()["gasPrice"]
    assert new_price * 8 >= price * 9 and new_price >= int(w3.eth.gas_price)
    tx.broadcast(replacement)
    assert node.mine() == [replacement.tx_hash]
    assert node.system.token.balance_of(node.supplier.address) == 3


def test_a_send_priced_out_while_it_waits_is_replaced_and_its_result_returned(node: Node) -> None:
    """Any job the client sends itself (the CLI's, the demo's): while it waits for the receipt
    the base fee jumps; the client replaces the transaction and returns the one that was mined."""
    settings = node.chain.settings
    node.chain.settings = settings.model_copy(update={"receipt_timeout": 30.0, "reprice_interval": 0.1})
    node.automine(False)
    pooled: list[dict[str, Any]] = []

    def pool() -> list[dict[str, Any]]:
        content = node.rpc("txpool_content")["pending"]
        return [tx for by_nonce in content.values() for tx in by_nonce.values()]

    def chain_side() -> None:
        deadline = time.monotonic() + 20
        while not pool() and time.monotonic() < deadline:
            time.sleep(0.02)
        pooled.extend(pool())
        base = node.spike()  # the waiting transaction is priced out
        while time.monotonic() < deadline:
            priced = [tx for tx in pool() if int(tx["maxFeePerGas"], 16) >= base]
            if priced:
                pooled.extend(priced)
                node.mine()
                return
            time.sleep(0.02)

    side = threading.Thread(target=chain_side)
    side.start()
    result = node.system.token.mint(node.admin, node.supplier.address, 11)
    side.join()
    node.automine(True)
    first, replacement = pooled
    assert first["nonce"] == replacement["nonce"] and first["hash"] != replacement["hash"]
    assert result.tx_hash == replacement["hash"]
    assert node.system.token.balance_of(node.supplier.address) == 11


def test_a_restarted_keeper_takes_up_the_batch_the_last_one_left_in_flight(
    node: Node, tmp_path: Path
) -> None:
    """A keeper process that stops while its batch waits (priced out, say) left the nonce taken; a
    new one that forgot the batch signed the next nonce behind it, and nothing of the key's moved."""
    root, order_id = _matured_root(node)
    w3, relayer = node.chain.w3, node.relayer.address

    node.automine(False)
    first = Keeper(node.system, node.relayer, Store(tmp_path / "oracle.db")).run_once()
    assert first.settled == [] and len(first.unconfirmed) == 1
    node.spike()  # the batch is priced out, and its keeper is gone

    store = Store(tmp_path / "oracle.db")
    kept = store.flight()
    assert kept is not None and kept[0] == [(root, order_id)]
    keeper = Keeper(node.system, node.relayer, store)
    second = keeper.run_once()  # looks for the old batch first: replaces it at its nonce
    assert second.settled == [] and len(second.repriced) == 1
    assert node.mine() == second.repriced
    third = keeper.run_once()
    assert third.settled == [root] and third.transactions == second.repriced
    assert store.flight() is None and store.settled_count() == 1
    # One nonce for the one batch: nothing was signed behind it.
    assert w3.eth.get_transaction_count(relayer, "pending") == w3.eth.get_transaction_count(relayer)
    assert node.system.ledger.certificate(root).status == CertificateStatus.SETTLED
    node.automine(True)


def test_a_batch_left_by_another_key_is_given_up_with_an_alert(node: Node, tmp_path: Path) -> None:
    """The store outlived a key rotation: the old key's batch holds none of the new key's nonces."""
    root, order_id = _matured_root(node)
    node.automine(False)
    left = Keeper(node.system, node.relayer, Store(tmp_path / "oracle.db")).run_once()
    assert len(left.unconfirmed) == 1
    node.rpc("anvil_dropAllTransactions")
    node.automine(True)

    rotated = node.chain.new_account()
    store = Store(tmp_path / "oracle.db")
    keeper = Keeper(node.system, rotated, store)
    assert store.flight() is None
    [alert] = store.alerts()
    assert alert.kind == "keeper" and f"signed by {node.relayer.address}" in alert.message
    assert keeper.run_once().settled == [root]
    assert node.system.ledger.certificate(root).status == CertificateStatus.SETTLED


def test_a_batch_past_a_nonce_gap_is_given_up_and_settled_anew(node: Node, tmp_path: Path) -> None:
    """The node lost the key's earlier transaction (dropped from its pool): the batch behind it
    waits for a nonce nothing of the keeper's will fill, and was followed up for ever."""
    root, _ = _matured_root(node)
    node.automine(False)
    with pytest.raises(TransactionTimeout):  # sent at nonce n, left unmined
        node.system.token.approve(node.relayer, node.supplier.address, 1)
    keeper = Keeper(node.system, node.relayer, Store(tmp_path / "oracle.db"))
    left = keeper.run_once()  # the batch at n + 1
    assert len(left.unconfirmed) == 1
    node.rpc("anvil_dropAllTransactions")
    node.automine(True)
    node.chain.nonces.forget(node.relayer.address)

    run = keeper.run_once()
    assert run.settled == [root] and run.transactions != left.unconfirmed
    assert keeper.store is not None and keeper.store.flight() is None
    assert "past the key's next" in keeper.store.alerts()[0].message
