"""What the API takes and gives back exactly: request bodies refuse unknown fields and loosely typed
numbers, mixed-case addresses must carry a right EIP-55 checksum, a prepared transaction signs with
plain eth-account, and an expired offer is not listed as open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import Api, serve_world
from eth_account import Account
from pydantic import BaseModel
from world import DAY, World

import api.schemas as schemas


@pytest.fixture
def api(world: World, tmp_path: Path) -> Iterator[Api]:
    yield from serve_world(world, tmp_path)


def _locs(r: Any) -> list[list[str]]:
    return [e["loc"] for e in r.json()["fields"]["errors"]]


def _refused(r: Any, field: str) -> None:
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "ValidationError"
    assert any(loc[-1] == field or field in loc for loc in _locs(r)), body
    assert field in body["message"]


def test_every_request_body_refuses_unknown_fields() -> None:
    bodies = [
        v
        for name, v in vars(schemas).items()
        if isinstance(v, type)
        and issubclass(v, BaseModel)
        and (name.endswith(("In", "Request")) or name == "SignedTx")
    ]
    assert len(bodies) >= 25
    for model in bodies:
        assert model.model_config.get("extra") == "forbid", model.__name__


def test_a_misspelt_field_is_refused_not_dropped(api: Api, world: World) -> None:
    s1, factor = world.cast.supplier1, world.cast.factor
    _, root = world.certificate_for()
    body = {
        "certificateId": root,
        "value": 100_00,
        "price": 90_00,
        "expiry": world.pending_time() + DAY,
        "Buyer": factor.address,  # a typo for buyer: the offer would be open to everyone
    }
    _refused(api.prepare("offer-discount", s1, body), "Buyer")
    # Nested bodies too, and the sign-in bodies.
    r = api.client.post("/v1/auth/nonce", json={"address": s1.address, "chain": 1})
    _refused(r, "chain")


@pytest.mark.parametrize(
    "value",
    [True, False, 1.0, 1e7, "1", "10000000"],
    ids=["true", "false", "float-1.0", "float-1e7", "string-1", "string-amount"],
)
def test_ids_and_amounts_take_json_integers_only(api: Api, world: World, value: Any) -> None:
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    _, root = world.certificate_for()
    r = api.prepare("transfer", s1, {"certificateId": value, "to": s2.address})
    _refused(r, "certificateId")
    r = api.prepare("split-to", s1, {"certificateId": root, "to": s2.address, "value": value})
    _refused(r, "value")
    r = api.prepare("approve-token", s1, {"amount": value})
    _refused(r, "amount")
    # The same numbers as JSON integers are taken.
    r = api.prepare("split-to", s1, {"certificateId": root, "to": s2.address, "value": 10_000_000})
    assert r.status_code == 200, r.text


def test_a_mixed_case_address_needs_a_right_checksum(api: Api, world: World) -> None:
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    _, root = world.certificate_for()
    checksummed = s2.address
    digits = checksummed[2:]
    # Flip the case of one letter: still mixed case, no longer the EIP-55 checksum.
    at = next(i for i, c in enumerate(digits) if c.isalpha())
    wrong = "0x" + digits[:at] + digits[at].swapcase() + digits[at + 1 :]
    assert wrong != checksummed and wrong.lower() == checksummed.lower()
    _refused(api.prepare("transfer", s1, {"certificateId": root, "to": wrong}), "to")
    for good in (checksummed, "0x" + digits.lower(), "0x" + digits.upper()):
        r = api.prepare("transfer", s1, {"certificateId": root, "to": good})
        assert r.status_code == 200, r.text
        assert r.json()["to"] == world.ledger.contract.address


def test_a_prepared_transaction_signs_with_plain_eth_account(api: Api, world: World) -> None:
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    _, root = world.certificate_for()
    r = api.prepare("transfer", s1, {"certificateId": root, "to": s2.address})
    assert r.status_code == 200, r.text
    prepared = r.json()
    assert None not in prepared.values(), prepared
    signed = Account.sign_transaction(prepared, s1.key)  # as it is: no field dropped or converted
    done = api.submit_raw(bytes(signed.raw_transaction))
    assert done.status_code == 200, done.text
    assert world.ledger.certificate(root).holder == s2.address


def test_an_expired_offer_is_not_listed_as_open(api: Api, world: World) -> None:
    s1, factor = world.cast.supplier1, world.cast.factor
    _, root = world.certificate_for()
    expiry = world.pending_time() + DAY
    done = api.do(
        "offer-discount", s1, {"certificateId": root, "value": 100_00, "price": 90_00, "expiry": expiry}
    )
    offer_id = int(done["events"][-1]["args"]["offerId"])
    listed = api.get("/v1/offers", factor).json()
    assert [o["offerId"] for o in listed["items"]] == [offer_id]
    assert listed["items"][0]["expired"] is False
    world.chain.advance_time(DAY + 1)
    assert world.chain.now() >= expiry
    api.service.reader.prime()  # the index reaches the new block (reads sync at most once a second)
    assert api.get("/v1/offers", factor).json()["total"] == 0
    assert api.get("/v1/offers", s1).json()["total"] == 0
    everything = api.get("/v1/offers", s1, openOnly="false").json()
    assert [(o["offerId"], o["open"], o["expired"]) for o in everything["items"]] == [(offer_id, True, True)]
    read = api.get(f"/v1/offers/{offer_id}", s1).json()
    assert (read["open"], read["expired"]) == (True, True)
    # What the listing says is what the chain does: a buy is refused.
    r = api.prepare("buy", factor, {"offerId": offer_id})
    assert (r.status_code, r.json()["code"]) == (409, "OfferExpired")
