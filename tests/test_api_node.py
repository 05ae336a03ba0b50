"""The API against a real node (anvil): the background index sync of one worker, the follower
mode of several workers (`from_env`, as uvicorn's factory builds each worker), and `serve`'s checks."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from api_support import delivery, enrol_warehouse
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from fastapi.testclient import TestClient
from hexbytes import HexBytes
from index_support import anvil_node, connect_node, rpc
from pydantic import SecretStr
from typer.testing import CliRunner
from web3.exceptions import TransactionNotFound

from api.app import create_app, from_env
from api.cli import follow_index
from api.service import Service
from api.settings import ApiSettings
from certledger_main import build_app
from chain_client.models import Role
from chain_client.receipts import label_hash
from chain_client.relay import DecodedTx, sign_prepared
from chain_client.system import System

DAY = 86_400
SECRET = "n" * 64


@dataclass
class Node:
    url: str
    system: System
    a: LocalAccount
    b: LocalAccount
    certificate: int
    admin: LocalAccount
    issuer: LocalAccount
    factor: LocalAccount
    devices: list[LocalAccount]
    warehouse: bytes
    goods: bytes
    #: the devices' last observation sequence
    sequence: int = 1

    def new_certificate(self, invoice: str) -> int:
        """A confirmed order's root certificate, held by `a`."""
        now = self.system.chain.now()
        order_id, _ = self.system.ledger.open_order(
            self.issuer,
            payee=self.a.address,
            amount=10_000,
            maturity=now + 90 * DAY,
            invoice_hash=label_hash(invoice),
            warehouse=self.warehouse,
            goods_hash=self.goods,
            expected_quantity=1,
            deadline=now + DAY,
        )
        self.sequence += 1
        observations, signatures = delivery(
            self.system, self.devices, order_id, self.warehouse, self.goods, sequence=self.sequence
        )
        root, _ = self.system.oracle.confirm_receipt(self.admin, observations, signatures)
        return int(root)


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with anvil_node() as url:
        chain = connect_node(url)
        admin, issuer = chain.new_account(), chain.new_account()
        a, b, factor = chain.new_account(), chain.new_account(), chain.new_account()
        devices = [chain.new_account(0) for _ in range(2)]
        system = System.deploy(chain, admin, admin_entity_id=label_hash("USCC:OPERATOR"))
        ledger = system.ledger
        ledger.register_participant(admin, issuer.address, label_hash("ISSUER"), Role.ISSUER, 10**12)
        ledger.register_participant(admin, a.address, label_hash("A"), Role.SUPPLIER)
        ledger.register_participant(admin, b.address, label_hash("B"), Role.SUPPLIER)
        ledger.register_participant(admin, factor.address, label_hash("F"), Role.FACTOR)
        warehouse, goods = label_hash("WH"), label_hash("goods")
        enrol_warehouse(system, admin, warehouse, devices)
        for payer in (issuer, factor):
            system.token.mint(admin, payer.address, 10**9)
            system.token.approve(payer, ledger.address, 10**9)
        now = chain.now()
        order_id, _ = ledger.open_order(
            issuer,
            payee=a.address,
            amount=10_000,
            maturity=now + 90 * DAY,
            invoice_hash=label_hash("INV-NODE"),
            warehouse=warehouse,
            goods_hash=goods,
            expected_quantity=1,
            deadline=now + DAY,
        )
        observations, signatures = delivery(system, devices, order_id, warehouse, goods, sequence=1)
        root, _ = system.oracle.confirm_receipt(admin, observations, signatures)
        yield Node(url, system, a, b, root, admin, issuer, factor, devices, warehouse, goods)


def _login(client: TestClient, account: LocalAccount) -> dict[str, str]:
    message = client.post("/v1/auth/nonce", json={"address": account.address}).json()["message"]
    signature = "0x" + bytes(account.sign_message(encode_defunct(text=message)).signature).hex()
    r = client.post("/v1/auth/login", json={"message": message, "signature": signature})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['accessToken']}"}


def _pass_on(client: TestClient, node: Node, sender: LocalAccount, to: LocalAccount) -> None:
    headers = _login(client, sender)
    prepared = client.post(
        "/v1/tx/prepare/transfer", json={"certificateId": node.certificate, "to": to.address}, headers=headers
    )
    assert prepared.status_code == 200, prepared.text
    assert prepared.json()["maxFeePerGas"] is not None  # EIP-1559 on anvil
    raw = "0x" + sign_prepared(sender, prepared.json()).hex()
    first = client.post("/v1/tx", json={"raw": raw})
    assert first.status_code == 200, first.text
    # The write answered once the index had its block: the receiver reads it at once.
    held = client.get("/v1/certificates", headers=_login(client, to)).json()
    assert [c["certificateId"] for c in held["items"]] == [node.certificate]
    # The same bytes again (a client that lost the answer): their outcome, nothing sent twice.
    again = client.post("/v1/tx", json={"raw": raw})
    assert (again.status_code, again.json()["txHash"]) == (200, first.json()["txHash"]), again.text


def test_one_worker_syncs_the_index_in_the_background(
    node: Node, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = ApiSettings(
        rpc_url=node.url,
        index_db=str(tmp_path / "index.sqlite"),
        auth_secret=SecretStr(SECRET),
        index_sync_interval=0.05,
    )
    service = Service.build(node.system, settings)
    assert service.reader.background
    with TestClient(create_app(service)) as client:  # the lifespan starts and stops the sync thread
        _pass_on(client, node, node.a, node.b)
        # Another process holds the index's write lock for a while: the thread's rounds fail (after
        # SQLite's busy timeout), and it goes on once the lock is gone.
        locker = sqlite3.connect(tmp_path / "index.sqlite")
        locker.execute("BEGIN EXCLUSIVE")
        node.system.ledger.transfer(node.b, node.certificate, node.a.address)
        deadline = time.monotonic() + 30
        while not any("index sync failed" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no sync round failed while the index was locked"
            time.sleep(0.1)
        locker.rollback()
        locker.close()
        thread = service.reader._thread
        assert thread is not None and thread.is_alive()
        deadline = time.monotonic() + 30
        while service.reader.synced_block() < node.system.chain.w3.eth.block_number:
            assert time.monotonic() < deadline, "the background sync did not recover"
            time.sleep(0.05)
        held = client.get("/v1/certificates", headers=_login(client, node.a)).json()
        assert [c["certificateId"] for c in held["items"]] == [node.certificate]
    assert service.reader._thread is None


def test_workers_read_an_index_a_follower_syncs(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "deployment.json"
    node.system.deployment.save(manifest)
    for name, value in {
        "CERTLEDGER_RPC_URL": node.url,
        "CERTLEDGER_MANIFEST": str(manifest),
        "CERTLEDGER_INDEX_DB": str(tmp_path / "index.sqlite"),
        "CERTLEDGER_AUTH_SECRET": SECRET,
        "CERTLEDGER_AUTH_DB": str(tmp_path / "nonces.sqlite"),
        "CERTLEDGER_INDEX_FOLLOWER": "true",
        "CERTLEDGER_INDEX_SYNC_INTERVAL": "0.05",
    }.items():
        monkeypatch.setenv(name, value)
    stop = threading.Event()
    follower = threading.Thread(target=follow_index, args=(ApiSettings(), stop), daemon=True)
    follower.start()
    try:
        # Two workers: a nonce issued by one is accepted by the other, and so is its token.
        first, second = TestClient(from_env()), TestClient(from_env())
        assert first.app.state.service.reader._indexer is None  # type: ignore[attr-defined]
        message = first.post("/v1/auth/nonce", json={"address": node.b.address}).json()["message"]
        signature = "0x" + bytes(node.b.sign_message(encode_defunct(text=message)).signature).hex()
        token = second.post("/v1/auth/login", json={"message": message, "signature": signature}).json()
        auth = {"Authorization": f"Bearer {token['accessToken']}"}
        # Sign-in reads the chain; the worker reads the follower's index, which may not have caught
        # up yet: until it has, the answer is 503 with Retry-After, never a refusal.
        deadline = time.monotonic() + 30
        me = first.get("/v1/auth/me", headers=auth)
        while me.status_code == 503 and time.monotonic() < deadline:
            assert me.headers["Retry-After"]
            time.sleep(0.1)
            me = first.get("/v1/auth/me", headers=auth)
        assert me.status_code == 200
        holder = node.system.ledger.certificate(node.certificate).holder
        sender, to = (node.a, node.b) if holder == node.a.address else (node.b, node.a)
        _pass_on(first, node, sender, to)
    finally:
        stop.set()
        follower.join(timeout=10)


# ---------------------------------------------------------------------- the relay on a node


def _service(node: Node, tmp_path: Path) -> Service:
    settings = ApiSettings(
        rpc_url=node.url,
        index_db=str(tmp_path / "index.sqlite"),
        auth_secret=SecretStr(SECRET),
        index_sync_interval=0.05,
    )
    return Service.build(node.system, settings)


def _prepare(client: TestClient, account: LocalAccount, job: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/v1/tx/prepare/{job}", json=body, headers=_login(client, account))
    assert r.status_code == 200, r.text
    prepared: dict[str, Any] = r.json()
    return prepared


def _unknown(node: Node, raw: bytes) -> bool:
    """Whether the node never got this transaction."""
    try:
        node.system.chain.w3.eth.get_transaction(HexBytes(keccak(raw)))
    except TransactionNotFound:
        return True
    return False


def test_a_sender_with_a_pending_transaction_is_simulated_against_it(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's transfer waits in the pool (sent by its wallet, or through another worker); the same job
    signed again with the next nonce is simulated on the pending block, which holds the first, and
    refused with nothing sent, instead of being mined, reverting and spending A's gas. The first
    one's bytes sent again while it is pending are not refused (a client would sign a new one and
    do the job twice): the answer waits for its receipt."""
    chain = node.system.chain
    certificate = node.new_certificate("INV-PENDING")
    monkeypatch.setattr(chain.settings, "receipt_timeout", 15.0)
    with TestClient(create_app(_service(node, tmp_path))) as client:
        prepared = _prepare(client, node.a, "transfer", {"certificateId": certificate, "to": node.b.address})
        first = sign_prepared(node.a, prepared)
        again = sign_prepared(node.a, {**prepared, "nonce": prepared["nonce"] + 1})
        rpc(chain, "evm_setAutomine", False)
        try:
            chain.w3.eth.send_raw_transaction(first)
            r = client.post("/v1/tx", json={"raw": "0x" + again.hex()})
            assert (r.status_code, r.json()["code"]) == (403, "IncorrectHolder"), r.text
            assert r.json()["fields"]["holder"] == node.b.address  # as of the pending block
            assert _unknown(node, again)
            rpc(chain, "evm_setIntervalMining", 1)
            r = client.post("/v1/tx", json={"raw": "0x" + first.hex()})
            assert r.status_code == 200, r.text
            assert r.json()["txHash"] == "0x" + keccak(first).hex()
        finally:
            rpc(chain, "evm_setIntervalMining", 0)  # which also turns auto-mining off
            rpc(chain, "evm_setAutomine", True)
    assert node.system.ledger.certificate(certificate).holder == node.b.address
    assert chain.w3.eth.get_transaction_count(node.a.address) == prepared["nonce"] + 1


def test_the_same_bytes_sent_again_while_pending_wait_for_their_receipt(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No block within the receipt timeout: the first answer is a 504 with the hash, which says to
    send the same bytes again. Sent again while still pending, they get the outcome (200 once
    mined), not a 409 NonceAlreadyUsed that would make the client sign the job a second time."""
    chain = node.system.chain
    certificate = node.new_certificate("INV-RESEND")
    with TestClient(create_app(_service(node, tmp_path))) as client:
        prepared = _prepare(client, node.a, "transfer", {"certificateId": certificate, "to": node.b.address})
        raw = "0x" + sign_prepared(node.a, prepared).hex()
        rpc(chain, "evm_setAutomine", False)
        try:
            monkeypatch.setattr(chain.settings, "receipt_timeout", 0.2)
            first = client.post("/v1/tx", json={"raw": raw})
            assert (first.status_code, first.json()["code"]) == (504, "ReceiptTimeout"), first.text
            rpc(chain, "evm_setIntervalMining", 1)
            monkeypatch.setattr(chain.settings, "receipt_timeout", 15.0)
            again = client.post("/v1/tx", json={"raw": raw})
            assert again.status_code == 200, again.text
            assert again.json()["txHash"] == first.json()["fields"]["txHash"]
        finally:
            rpc(chain, "evm_setIntervalMining", 0)
            rpc(chain, "evm_setAutomine", True)
    assert node.system.ledger.certificate(certificate).holder == node.b.address
    assert chain.w3.eth.get_transaction_count(node.a.address) == prepared["nonce"] + 1


def test_the_simulation_runs_at_the_time_of_the_next_block(node: Node, tmp_path: Path) -> None:
    """An offer lapses while the factor's wallet signs, and no block is mined meanwhile: the latest
    block still predates the expiry, the next one will not. Simulated at the pending block (the
    next block's time), the purchase is refused with nothing sent."""
    chain = node.system.chain
    certificate = node.new_certificate("INV-LAPSE")
    expiry = chain.now() + 100
    offer_id, _ = node.system.ledger.offer_discount(
        node.a, certificate, value=10_000, price=9_000, expiry=expiry, buyer=node.factor.address
    )
    with TestClient(create_app(_service(node, tmp_path))) as client:
        raw = sign_prepared(node.factor, _prepare(client, node.factor, "buy", {"offerId": offer_id}))
        nonce = chain.w3.eth.get_transaction_count(node.factor.address)
        rpc(chain, "evm_increaseTime", 200)  # the next block's time; nothing mined
        assert chain.now() < expiry
        r = client.post("/v1/tx", json={"raw": "0x" + raw.hex()})
        assert (r.status_code, r.json()["code"]) == (409, "OfferExpired"), r.text
    assert _unknown(node, raw)
    assert chain.w3.eth.get_transaction_count(node.factor.address) == nonce
    rpc(chain, "evm_mine")


def test_a_cancel_behind_a_pending_buy_says_the_offer_is_closing(node: Node, tmp_path: Path) -> None:
    """The factor's buy waits in the pool when the seller asks to cancel: the simulation on the
    pending block meets OfferNotOpen while the index and the last block have the offer open. The
    answer says a transaction waiting to be mined closes it; once mined, that it was sold, and where."""
    chain = node.system.chain
    certificate = node.new_certificate("INV-CLOSING")
    offer_id, _ = node.system.ledger.offer_discount(
        node.a, certificate, value=10_000, price=9_000, expiry=chain.now() + DAY, buyer=node.factor.address
    )
    with TestClient(create_app(_service(node, tmp_path))) as client:
        buy = sign_prepared(node.factor, _prepare(client, node.factor, "buy", {"offerId": offer_id}))
        seller = _login(client, node.a)
        rpc(chain, "evm_setAutomine", False)
        try:
            chain.w3.eth.send_raw_transaction(buy)
            r = client.post("/v1/tx/prepare/cancel-offer", json={"offerId": offer_id}, headers=seller)
            assert (r.status_code, r.json()["code"]) == (409, "OfferNotOpen"), r.text
            assert r.json()["fields"] == {"offerId": offer_id, "state": "closing"}
            assert "waiting to be mined" in r.json()["message"]
            rpc(chain, "evm_mine")
        finally:
            rpc(chain, "evm_setAutomine", True)
        receipt = chain.w3.eth.wait_for_transaction_receipt(HexBytes(keccak(buy)), timeout=15)
        assert receipt["status"] == 1
        r = client.post("/v1/tx/prepare/cancel-offer", json={"offerId": offer_id}, headers=seller)
        assert (r.status_code, r.json()["code"]) == (409, "OfferNotOpen"), r.text
        assert r.json()["fields"] == {
            "offerId": offer_id,
            "state": "sold",
            "closedTx": "0x" + keccak(buy).hex(),
            "closedBlock": receipt["blockNumber"],
        }


def test_an_access_list_the_gas_does_not_cover_is_refused(node: Node, tmp_path: Path) -> None:
    chain = node.system.chain
    certificate = node.new_certificate("INV-ACCESS")
    with TestClient(create_app(_service(node, tmp_path))) as client:
        prepared = _prepare(client, node.a, "transfer", {"certificateId": certificate, "to": node.b.address})
        unsigned: dict[str, Any] = {k: v for k, v in prepared.items() if v is not None}
        access_list: Any = [{"address": "0x" + f"{i:040x}", "storageKeys": []} for i in range(1, 9)]
        raw = bytes(
            node.a.sign_transaction({**unsigned, "type": 2, "accessList": access_list}).raw_transaction
        )
        r = client.post("/v1/tx", json={"raw": "0x" + raw.hex()})
        assert (r.status_code, r.json()["code"]) == (422, "SimulationFailed"), r.text
    assert _unknown(node, raw)
    assert chain.w3.eth.get_transaction_count(node.a.address) == prepared["nonce"]
    assert node.system.ledger.certificate(certificate).holder == node.a.address


def test_a_revert_on_chain_is_409_with_its_receipt_and_error(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator suspends A between the simulation and the block: A's transfer is mined and
    reverts. The answer says so (its nonce and gas are spent), with the error recovered by
    replaying it at its block, not as the refusal a simulation would have given."""
    chain, ledger = node.system.chain, node.system.ledger
    certificate = node.new_certificate("INV-MOVED")
    service = _service(node, tmp_path)
    simulate = service.relay.simulate

    def then_suspended(tx: DecodedTx) -> None:
        simulate(tx)
        ledger.suspend(node.admin, node.a.address)

    with TestClient(create_app(service)) as client:
        prepared = _prepare(client, node.a, "transfer", {"certificateId": certificate, "to": node.b.address})
        raw = sign_prepared(node.a, prepared)
        monkeypatch.setattr(service.relay, "simulate", then_suspended)
        try:
            r = client.post("/v1/tx", json={"raw": "0x" + raw.hex()})
        finally:
            ledger.reinstate(node.admin, node.a.address)
    assert (r.status_code, r.json()["code"]) == (409, "RevertedOnChain"), r.text
    fields = r.json()["fields"]
    receipt = chain.w3.eth.get_transaction_receipt(HexBytes(keccak(raw)))
    assert receipt["status"] == 0 and fields["txHash"] == "0x" + keccak(raw).hex()
    assert (fields["blockNumber"], fields["gasUsed"]) == (receipt["blockNumber"], receipt["gasUsed"])
    assert fields["error"]["code"] == "ParticipantNotActive"
    assert fields["error"]["fields"]["account"] == node.a.address
    assert chain.w3.eth.get_transaction_count(node.a.address) == prepared["nonce"] + 1


def test_serve_refuses_several_workers_on_the_embedded_chain() -> None:
    result = CliRunner().invoke(build_app(), ["serve", "--workers", "2"], env={"CERTLEDGER_RPC_URL": ""})
    assert result.exit_code == 2
    assert "--workers" in result.output


def test_reads_refuse_an_index_of_a_chain_the_node_no_longer_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's chain is reset (or another started on its URL) under a running service: its
    follower failed every round for ever while the reads went on answering 200 with the gone
    chain's books. They answer 503 IndexOffChain, saying to rebuild the index."""
    from api import index

    monkeypatch.setattr(index, "CHAIN_CHECK_INTERVAL", 0.0)
    with anvil_node() as url:
        chain = connect_node(url)
        admin, a = chain.new_account(), chain.new_account()
        system = System.deploy(chain, admin, admin_entity_id=label_hash("USCC:OPERATOR"))
        system.ledger.register_participant(admin, a.address, label_hash("A"), Role.SUPPLIER)
        settings = ApiSettings(
            rpc_url=url, index_db=str(tmp_path / "index.sqlite"), auth_secret=SecretStr(SECRET)
        )
        service = Service.build(system, settings)
        with TestClient(create_app(service)) as client:
            headers = _login(client, a)
            assert client.get("/v1/certificates", headers=headers).status_code == 200
            rpc(chain, "anvil_reset")  # the chain starts again from its genesis
            # The check runs beside the requests (a hung node must not hold one): soon refused.
            deadline = time.monotonic() + 10
            while (r := client.get("/v1/certificates", headers=headers)).status_code == 200:
                assert time.monotonic() < deadline, "reads went on serving the gone chain's books"
                time.sleep(0.05)
            assert (r.status_code, r.json()["code"]) == (503, "IndexOffChain"), r.text
            assert "audit replay" in r.json()["message"] and "Retry-After" not in r.headers
            # Signing in reads the registry on chain, where the ledger's code is gone: said so, not a 500.
            message = client.post("/v1/auth/nonce", json={"address": a.address}).json()["message"]
            signature = "0x" + bytes(a.sign_message(encode_defunct(text=message)).signature).hex()
            r = client.post("/v1/auth/login", json={"message": message, "signature": signature})
            assert (r.status_code, r.json()["code"]) == (503, "ContractMissing"), r.text
