"""The API against a real node (anvil): the background index sync of one worker, the follower
mode of several workers (`from_env`, as uvicorn's factory builds each worker), and `serve`'s checks."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from api_support import delivery, enrol_warehouse
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from fastapi.testclient import TestClient
from index_support import anvil_node, connect_node
from pydantic import SecretStr
from typer.testing import CliRunner

from api.app import create_app, from_env
from api.cli import follow_index
from api.service import Service
from api.settings import ApiSettings
from certledger_main import build_app
from chain_client.models import Role
from chain_client.receipts import label_hash
from chain_client.relay import sign_prepared
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


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with anvil_node() as url:
        chain = connect_node(url)
        admin, issuer = chain.new_account(), chain.new_account()
        a, b = chain.new_account(), chain.new_account()
        devices = [chain.new_account(0) for _ in range(2)]
        system = System.deploy(chain, admin, admin_entity_id=label_hash("USCC:OPERATOR"))
        ledger = system.ledger
        ledger.register_participant(admin, issuer.address, label_hash("ISSUER"), Role.ISSUER, 10**12)
        ledger.register_participant(admin, a.address, label_hash("A"), Role.SUPPLIER)
        ledger.register_participant(admin, b.address, label_hash("B"), Role.SUPPLIER)
        warehouse, goods = label_hash("WH"), label_hash("goods")
        enrol_warehouse(system, admin, warehouse, devices)
        system.token.mint(admin, issuer.address, 10**9)
        system.token.approve(issuer, ledger.address, 10**9)
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
        yield Node(url, system, a, b, root)


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
    assert client.post("/v1/tx", json={"raw": raw}).status_code == 200
    # The write answered once the index had its block: the receiver reads it at once.
    held = client.get("/v1/certificates", headers=_login(client, to)).json()
    assert [c["certificateId"] for c in held["items"]] == [node.certificate]
    again = client.post("/v1/tx", json={"raw": raw})
    assert (again.status_code, again.json()["code"]) == (409, "NonceAlreadyUsed")


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


def test_serve_refuses_several_workers_on_the_embedded_chain() -> None:
    result = CliRunner().invoke(build_app(), ["serve", "--workers", "2"], env={"CERTLEDGER_RPC_URL": ""})
    assert result.exit_code == 2
    assert "--workers" in result.output
