"""The prepare endpoints answer for the ids they are given as the read endpoints do: an id the index
does not know is 404 NotFound, a record outside the caller's read scope 403 Forbidden, before any
simulation (whose contract error would name the record's holder, value, maturity, status or
buyer). Only a record the caller may read is simulated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import Api, build_api, serve_world
from world import World

DAY = 86_400
#: Fields a contract error would carry about someone else's record.
_PRIVATE = {"holder", "value", "needed", "maturity", "status", "buyer", "caller"}


@pytest.fixture
def api(world: World, tmp_path: Path) -> Iterator[Api]:
    yield from serve_world(world, tmp_path)


@pytest.fixture
def books(world: World) -> dict[str, int]:
    """supplier2's certificate on an order supplier1 and issuer2 have no part in, an offer of part of
    it reserved for the factor, and supplier1's own certificate on another order."""
    s2 = world.cast.supplier2
    order2, cert2 = world.certificate_for(payee=s2.address)
    order1, cert1 = world.certificate_for()
    expiry = world.pending_time() + DAY
    offer, _ = world.ledger.offer_discount(
        s2, cert2, value=1_000_00, price=900_00, buyer=world.cast.factor.address, expiry=expiry
    )
    return {"order2": order2, "cert2": cert2, "order1": order1, "cert1": cert1, "offer": offer}


def _refused_as_read(r: Any, status: int, code: str, **fields: Any) -> None:
    body = r.json()
    assert (r.status_code, body["code"]) == (status, code), r.text
    assert not _PRIVATE & set(body["fields"]), body
    for name, value in fields.items():
        assert body["fields"][name] == value, body


def test_prepare_refuses_records_out_of_scope_as_the_reads_do(
    api: Api, world: World, books: dict[str, int]
) -> None:
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    cert1, cert2 = books["cert1"], books["cert2"]
    # The reads refuse supplier1 supplier2's certificate, order and offer ...
    assert api.get(f"/v1/certificates/{cert2}", s1).status_code == 403
    assert api.get(f"/v1/orders/{books['order2']}", s1).status_code == 403
    assert api.get(f"/v1/offers/{books['offer']}", s1).status_code == 403
    # ... and so does every job naming them, without the contract's view of them.
    jobs: list[tuple[str, Any, dict[str, Any], dict[str, int]]] = [
        ("transfer", s1, {"certificateId": cert2, "to": s1.address}, {"certificateId": cert2}),
        ("split", s1, {"certificateId": cert2, "values": [1_000_00, 1_000_00]}, {"certificateId": cert2}),
        ("split-to", s1, {"certificateId": cert2, "to": s1.address, "value": 10**9},
         {"certificateId": cert2}),
        ("merge", s1, {"fromId": cert1, "toId": cert2, "value": 1}, {"certificateId": cert2}),
        (
            "offer-discount",
            s1,
            {"certificateId": cert2, "value": 100_00, "price": 90_00, "expiry": world.pending_time() + DAY},
            {"certificateId": cert2},
        ),
        ("settle", s1, {"certificateIds": [cert2]}, {"certificateId": cert2}),
        ("settle", s1, {"certificateIds": [cert1, cert2]}, {"certificateId": cert2}),
        ("freeze", s1, {"certificateId": cert2, "reason": "x"}, {"certificateId": cert2}),
        ("cancel-order", world.cast.issuer2, {"orderId": books["order2"]}, {"orderId": books["order2"]}),
        ("buy", s1, {"offerId": books["offer"]}, {"offerId": books["offer"]}),
        ("cancel-offer", s1, {"offerId": books["offer"]}, {"offerId": books["offer"]}),
    ]  # fmt: skip
    for job, who, body, fields in jobs:
        _refused_as_read(api.prepare(job, who, body), 403, "Forbidden", **fields)
    # Their own records are simulated as before: the contract's answer comes through.
    r = api.prepare("split-to", s1, {"certificateId": cert1, "to": s2.address, "value": 10**20})
    assert (r.status_code, r.json()["code"]) == (409, "InsufficientValue")
    assert api.prepare("transfer", s2, {"certificateId": cert2, "to": s1.address}).status_code == 200


def test_settle_is_prepared_for_the_certificates_the_caller_reads(
    api: Api, world: World, books: dict[str, int]
) -> None:
    """The contract settles a matured certificate for any sender; the service simulates it for
    those who read the certificate (its holders, past holders, its order's issuer, auditors and
    regulators), whose answers (here: not matured, and when) tell them nothing new."""
    cert2 = books["cert2"]
    for who in (world.cast.supplier2, world.cast.issuer, world.cast.regulator):
        r = api.prepare("settle", who, {"certificateIds": [cert2]})
        assert (r.status_code, r.json()["code"]) == (409, "CertificateNotMatured"), r.text
    # An account whose role reads no certificates prepares no settle of them.
    r = api.prepare("settle", world.cast.admin, {"certificateIds": [cert2]})
    assert (r.status_code, r.json()["code"]) == (403, "Forbidden")
    world.chain.advance_time(91 * DAY)
    assert api.prepare("settle", world.cast.supplier2, {"certificateIds": [cert2]}).status_code == 200
    r = api.prepare("settle", world.cast.supplier1, {"certificateIds": [cert2]})
    assert (r.status_code, r.json()["code"]) == (403, "Forbidden")


def test_unknown_ids_are_404_in_prepare(api: Api, world: World, books: dict[str, int]) -> None:
    s1, factor, admin = world.cast.supplier1, world.cast.factor, world.cast.admin
    stranger = "0x" + "12" * 20
    cases: list[tuple[str, Any, dict[str, Any], str, str]] = [
        ("buy", factor, {"offerId": 999}, "offer", "999"),
        ("cancel-offer", s1, {"offerId": 999}, "offer", "999"),
        ("suspend-participant", admin, {"account": stranger}, "participant", stranger),
        ("reinstate-participant", admin, {"account": stranger}, "participant", stranger),
        ("settle", factor, {"certificateIds": [999]}, "certificate", "999"),
        ("settle", s1, {"certificateIds": [books["cert1"], 999]}, "certificate", "999"),
        ("freeze", world.cast.regulator, {"certificateId": 999, "reason": "x"}, "certificate", "999"),
        ("transfer", s1, {"certificateId": 999, "to": world.cast.supplier2.address}, "certificate", "999"),
        ("merge", s1, {"fromId": books["cert1"], "toId": 999, "value": 1}, "certificate", "999"),
        ("cancel-order", world.cast.issuer, {"orderId": 999}, "order", "999"),
    ]
    for job, who, body, kind, key in cases:
        r = api.prepare(job, who, body)
        assert (r.status_code, r.json()["code"]) == (404, "NotFound"), (job, r.text)
        assert r.json()["fields"] == {"kind": kind, "id": key}
    # As the reads answer them.
    assert api.get("/v1/offers/999", world.cast.regulator).json()["code"] == "NotFound"
    assert api.get(f"/v1/participants/{stranger}", s1).json()["code"] == "NotFound"


def test_an_offer_whose_certificate_moved_does_not_name_its_holder(
    api: Api, world: World, books: dict[str, int]
) -> None:
    s1, s2, factor = world.cast.supplier1, world.cast.supplier2, world.cast.factor
    offer, _ = world.ledger.offer_discount(
        s2, books["cert2"], value=1_000_00, price=900_00, expiry=world.pending_time() + DAY
    )
    world.ledger.transfer(s2, books["cert2"], s1.address)
    r = api.prepare("buy", factor, {"offerId": offer})
    _refused_as_read(r, 409, "OfferStale", offerId=offer)
    assert s1.address not in r.text


def test_a_closed_offer_to_anyone_is_no_secret_to_a_factor(
    api: Api, world: World, books: dict[str, int]
) -> None:
    s2, factor = world.cast.supplier2, world.cast.factor
    offer, _ = world.ledger.offer_discount(
        s2, books["cert2"], value=1_000_00, price=900_00, expiry=world.pending_time() + DAY
    )
    # Open to any factor, not to a supplier (as GET /v1/offers/{id} answers them).
    r = api.prepare("buy", world.cast.supplier1, {"offerId": offer})
    _refused_as_read(r, 403, "Forbidden", offerId=offer)
    world.ledger.cancel_offer(s2, offer)
    r = api.prepare("buy", factor, {"offerId": offer})
    assert (r.status_code, r.json()["code"], r.json()["fields"]) == (409, "OfferNotOpen", {"offerId": offer})


def test_prepare_right_after_a_write_the_index_has_not_seen(world: World, tmp_path: Path) -> None:
    """The scope check reads the index; a refusal from an index behind the chain is checked again
    once it has caught up, so a prepare does not fail for the index's lag."""
    api = build_api(world, tmp_path, index_sync_interval=60)
    try:
        s1, s2 = world.cast.supplier1, world.cast.supplier2
        headers = api.login(s1)
        order, cert = world.certificate_for()  # on chain, not in the index yet
        expiry = world.pending_time() + DAY
        offer, _ = world.ledger.offer_discount(s1, cert, value=100_00, price=90_00, expiry=expiry)
        assert api.service.reader.synced_block() < world.chain.w3.eth.block_number
        jobs = [
            ("transfer", {"certificateId": cert, "to": s2.address}),
            ("cancel-offer", {"offerId": offer}),
        ]
        for job, body in jobs:
            r = api.client.post(f"/v1/tx/prepare/{job}", json=body, headers=headers)
            assert r.status_code == 200, (job, r.text)
        issuer = api.login(world.cast.issuer)
        r = api.client.post("/v1/tx/prepare/cancel-order", json={"orderId": order}, headers=issuer)
        assert r.json()["code"] == "OrderNotOpen"  # simulated: the issuer's own order
    finally:
        api.service.reader.db.close()
