"""The demo's whole story driven over HTTP only: every participant signs its own transactions and
reads through the API. Outside HTTP are only what lies outside certledger: the dev chain's faucet
for gas, the clock, the warehouse devices signing their reading, and the bank blocking an account."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import Api, serve_world
from eth_account import Account
from eth_account.signers.local import LocalAccount
from world import DAY, World

YUAN = 100


@pytest.fixture
def api(world: World, tmp_path: Path) -> Iterator[Api]:
    yield from serve_world(world, tmp_path)


def _event(result: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(e["args"] for e in result["events"] if e["name"] == name)
    return found


def test_the_whole_lifecycle_over_http(api: Api, world: World) -> None:
    cast = world.cast
    issuer, tier1, factor, admin, gateway = cast.issuer, cast.supplier1, cast.factor, cast.admin, cast.relayer
    tier2: LocalAccount = Account.create()
    world.chain.fund(tier2.address, 10**19)

    # The operator registers the second-tier supplier.
    api.do(
        "register-participant",
        admin,
        {"account": tier2.address, "entity": "USCC:TIER2", "roles": ["SUPPLIER"]},
    )
    assert api.get(f"/v1/participants/{tier2.address}", tier1).json()["roles"] == ["SUPPLIER"]

    # The core enterprise escrows 100,000.00 for 1,000 brake discs.
    now = world.pending_time()
    opened = api.do(
        "open-order",
        issuer,
        {
            "payee": tier1.address,
            "amount": 100_000 * YUAN,
            "maturity": now + 30 * DAY,
            "invoice": "INV-LIFECYCLE-1",
            "warehouse": "WH-TEST-01",
            "goods": "brake disc BD-330",
            "expectedQuantity": 1_000,
            "deadline": now + 7 * DAY,
        },
    )
    order_id = int(_event(opened, "OrderOpened")["orderId"])

    # The warehouse's devices (a portal and the weighbridge) sign their readings; the gateway,
    # on the oracle's relayer allow-list, submits them over HTTP.
    observations, signatures = world.receipt(order_id, 1_000)
    prepared = api.client.post(
        "/v1/tx/prepare/confirm-receipt",
        json={
            "sender": gateway.address,
            "observations": [o.to_json() for o in observations],
            "signatures": ["0x" + s.hex() for s in signatures],
        },
    )
    assert prepared.status_code == 200, prepared.text
    confirmed = api.submit_raw(api.sign(gateway, prepared.json()))
    assert confirmed.status_code == 200, confirmed.text
    root = int(_event(confirmed.json(), "OrderConfirmed")["rootCertificateId"])
    assert [c["certificateId"] for c in api.get("/v1/certificates", tier1).json()["items"]] == [root]

    # Tier 1 keeps 50,000, passes 30,000 to tier 2 and sells 20,000 to the factor at 6% a year.
    split = api.do("split", tier1, {"certificateId": root, "values": [80_000 * YUAN, 20_000 * YUAN]})
    for_factor = int(_event(split, "CertificateIssued")["certificateId"])
    passed = api.do("split-to", tier1, {"certificateId": root, "to": tier2.address, "value": 30_000 * YUAN})
    tier2_cert = int(_event(passed, "CertificateIssued")["certificateId"])
    quote = api.client.get(
        "/v1/quote", params={"face": 20_000 * YUAN, "days": 29, "annualRateBps": 600}
    ).json()
    offered = api.do(
        "offer-discount",
        tier1,
        {
            "certificateId": for_factor,
            "value": 20_000 * YUAN,
            "price": quote["price"],
            "expiry": world.pending_time() + DAY,
            "buyer": factor.address,
        },
    )
    offer_id = int(_event(offered, "DiscountOffered")["offerId"])
    api.do("approve-token", factor, {"amount": quote["price"]})
    bought = api.do("buy", factor, {"offerId": offer_id})
    factor_cert = int(_event(bought, "DiscountSold")["boughtCertificateId"])

    assert [c["certificateId"] for c in api.get("/v1/certificates", tier2).json()["items"]] == [tier2_cert]
    assert [c["certificateId"] for c in api.get("/v1/certificates", factor).json()["items"]] == [factor_cert]
    tree = api.get(f"/v1/certificates/{root}/lineage", issuer).json()
    assert len(tree["children"]) == 2

    # Maturity. Tier 2's bank account is blocked, so its payment is credited for a later withdrawal.
    world.chain.advance_time(31 * DAY)
    world.token.set_blocked(admin, tier2.address, True)
    api.service.reader.reach(world.chain.w3.eth.block_number)  # reads are as of the index's last block
    status = api.get(f"/v1/settlement/orders/{order_id}", issuer).json()
    assert status["matured"] and sorted(status["liveCertificates"]) == sorted([root, tier2_cert, factor_cert])
    api.do("settle", tier1, {"certificateIds": status["liveCertificates"]})
    status = api.get(f"/v1/settlement/orders/{order_id}", issuer).json()
    assert status["liveCertificates"] == [] and status["inEscrow"] == 0 and status["paid"] == 100_000 * YUAN

    assert api.get("/v1/settlement/account", tier2).json()["credit"] == 30_000 * YUAN
    world.token.set_blocked(admin, tier2.address, False)
    api.do("withdraw", tier2)
    account = api.get("/v1/settlement/account", tier2).json()
    assert account["credit"] == 0
    assert [(p["kind"], p["credited"]) for p in account["payments"]["items"]] == [
        ("settlement", True),
        ("withdrawal", False),
    ]
    assert world.token.balance_of(tier2.address) == 30_000 * YUAN

    # The books balance, as the auditors' endpoint proves.
    verify = api.get("/v1/audit/verify", cast.regulator).json()
    assert verify["ok"], verify["findings"]
    report = api.get("/v1/audit/export", cast.regulator).json()
    assert report["totals"]["live"] == "0" and report["totals"]["paid"] == str(100_000 * YUAN)
