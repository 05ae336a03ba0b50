"""The API wired to the shared embedded world, and the few steps its tests repeat: sign in,
prepare a job, sign it with the participant's own key, submit it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from fastapi.testclient import TestClient
from httpx2 import Response
from world import World

from api.app import create_app
from api.service import Service
from api.settings import ApiSettings
from chain_client.receipts import DeviceEnrolment, Observation, ReadingKind, ReadingRange
from chain_client.relay import sign_prepared
from chain_client.system import System

SECRET = "x" * 64
_KINDS = (ReadingKind.CARTON_COUNT, ReadingKind.NET_WEIGHT_GRAMS)


@dataclass
class Api:
    client: TestClient
    service: Service
    world: World

    def login(self, account: LocalAccount) -> dict[str, str]:
        """Bearer headers for `account`, signed in through the two auth endpoints."""
        challenge = self.client.post("/v1/auth/nonce", json={"address": account.address})
        assert challenge.status_code == 200, challenge.text
        message = challenge.json()["message"]
        signature = account.sign_message(encode_defunct(text=message)).signature
        r = self.client.post(
            "/v1/auth/login", json={"message": message, "signature": "0x" + bytes(signature).hex()}
        )
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['accessToken']}"}

    def prepare(self, job: str, account: LocalAccount, body: dict[str, Any] | None = None) -> Response:
        r: Response = self.client.post(f"/v1/tx/prepare/{job}", json=body or {}, headers=self.login(account))
        return r

    def submit_raw(self, raw: bytes) -> Response:
        r: Response = self.client.post("/v1/tx", json={"raw": "0x" + raw.hex()})
        return r

    def sign(self, account: LocalAccount, unsigned: dict[str, Any]) -> bytes:
        return sign_prepared(account, unsigned)

    def do(self, job: str, account: LocalAccount, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """prepare, sign, submit: the whole write; asserts each step succeeded."""
        prepared = self.prepare(job, account, body)
        assert prepared.status_code == 200, prepared.text
        r = self.submit_raw(self.sign(account, prepared.json()))
        assert r.status_code == 200, r.text
        # The world's own helpers count nonces locally: let them ask the chain again.
        self.world.chain.nonces.forget(account.address)
        result: dict[str, Any] = r.json()
        return result

    def get(self, path: str, account: LocalAccount, **params: Any) -> Response:
        r: Response = self.client.get(path, headers=self.login(account), params=params)
        return r


def build_api(world: World, tmp_path: Path, index_db: str | None = None, **settings: Any) -> Api:
    """The API on `world`, its index in `index_db` (a URL; default a SQLite file in `tmp_path`)."""
    database = index_db or str(tmp_path / "index.sqlite")
    config = ApiSettings(index_db=database, auth_secret=SECRET, **settings)  # type: ignore[arg-type]
    service = Service.build(world.system, config)
    return Api(TestClient(create_app(service)), service, world)


def serve_world(world: World, tmp_path: Path, index_db: str | None = None) -> Iterator[Api]:
    """Body of each API test module's `api` fixture (a fixture imported by name would shadow the
    test parameters that use it)."""
    built = build_api(world, tmp_path, index_db)
    yield built
    built.service.reader.db.close()


def enrol_warehouse(
    system: System, admin: LocalAccount, warehouse: bytes, devices: Sequence[LocalAccount]
) -> None:
    """A warehouse of a portal and a weighbridge, both needed, with `admin` allowed to relay: for
    the node-backed tests and the benchmark, which build their own small systems."""
    enrolment = [DeviceEnrolment(d.address, kind) for d, kind in zip(devices, _KINDS, strict=True)]
    ranges = [ReadingRange(kind, 1, 10**12) for kind in _KINDS]
    system.oracle.register_warehouse(admin, warehouse, enrolment, len(_KINDS), 3_600, ranges)
    system.oracle.set_relayer(admin, admin.address, True)


def delivery(
    system: System,
    devices: Sequence[LocalAccount],
    order_id: int,
    warehouse: bytes,
    goods: bytes,
    sequence: int,
) -> tuple[list[Observation], list[bytes]]:
    """One carton delivered to an `enrol_warehouse` warehouse, observed and signed by its devices."""
    now = system.chain.now()
    return system.oracle.observe_delivery(
        list(zip(devices, _KINDS, strict=True)),
        order_id=order_id,
        warehouse=warehouse,
        goods_hash=goods,
        cartons=1,
        carton_grams=1_000,
        observed_at=now - 1,
        sequences=[sequence] * len(devices),
        deadline=now + 3_000,
    )


def raw_tx(world: World, account: LocalAccount, to: str, data: str, **overrides: Any) -> bytes:
    """A transaction signed by hand, with no prepare or simulation (what a careless or hostile
    client sends); `overrides` replace its fields."""
    w3 = world.chain.w3
    base = int(w3.eth.get_block("latest")["baseFeePerGas"])
    tx: dict[str, Any] = {
        "to": to,
        "data": data,
        "nonce": w3.eth.get_transaction_count(account.address),
        "gas": 300_000,
        "maxFeePerGas": 2 * base + 10**9,
        "maxPriorityFeePerGas": 10**9,
        "chainId": world.chain.chain_id,
        "value": 0,
    }
    tx.update(overrides)
    return bytes(account.sign_transaction(tx).raw_transaction)
