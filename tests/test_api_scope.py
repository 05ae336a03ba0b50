"""The prepare endpoints answer for the ids they are given as the read endpoints do: an id the index
does not know is 404 NotFound, a record outside the caller's read scope 403 Forbidden, before any
simulation (whose contract error would name the record's holder, value, maturity, status or
buyer). Only a record the caller may read is simulated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import Api, build_api, raw_tx, serve_world
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from world import World

from api.routes import tx as tx_routes
from api.routes.tx import RECORD_PARAMETERS, STALE_OFFER
from chain_client.artifacts import load_artifact
from chain_client.models import Role
from chain_client.relay import JOB_ROLES, DecodedTx

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
    cases: list[tuple[str, Any, dict[str, Any], str, Any]] = [
        ("buy", factor, {"offerId": 999}, "offer", 999),
        ("cancel-offer", s1, {"offerId": 999}, "offer", 999),
        ("suspend-participant", admin, {"account": stranger}, "participant", stranger),
        ("reinstate-participant", admin, {"account": stranger}, "participant", stranger),
        ("settle", factor, {"certificateIds": [999]}, "certificate", 999),
        ("settle", s1, {"certificateIds": [books["cert1"], 999]}, "certificate", 999),
        ("freeze", world.cast.regulator, {"certificateId": 999, "reason": "x"}, "certificate", 999),
        ("transfer", s1, {"certificateId": 999, "to": world.cast.supplier2.address}, "certificate", 999),
        ("merge", s1, {"fromId": books["cert1"], "toId": 999, "value": 1}, "certificate", 999),
        ("cancel-order", world.cast.issuer, {"orderId": 999}, "order", 999),
    ]
    for job, who, body, kind, key in cases:
        r = api.prepare(job, who, body)
        assert (r.status_code, r.json()["code"]) == (404, "NotFound"), (job, r.text)
        assert r.json()["fields"] == {"kind": kind, "id": key}
    # As the reads answer them.
    assert api.get("/v1/offers/999", world.cast.regulator).json()["code"] == "NotFound"
    assert api.get(f"/v1/participants/{stranger}", s1).json()["code"] == "NotFound"


def _offer_then_move_its_certificate(world: World, books: dict[str, int]) -> int:
    """supplier2 offers part of its certificate to any factor, then moves the certificate to
    supplier1 (whom the factor may not read about); returns the offer."""
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    offer, _ = world.ledger.offer_discount(
        s2, books["cert2"], value=1_000_00, price=900_00, expiry=world.pending_time() + DAY
    )
    world.ledger.transfer(s2, books["cert2"], s1.address)
    return offer


def test_an_offer_whose_certificate_moved_does_not_name_its_holder(
    api: Api, world: World, books: dict[str, int]
) -> None:
    s1, factor = world.cast.supplier1, world.cast.factor
    offer = _offer_then_move_its_certificate(world, books)
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


# ---------------------------------------------------------------------- POST /v1/tx
#
# A signed transaction is scoped as its sender reads (the signature is the authentication): the
# records its call names are checked against the sender's read scope, as the index knows the sender,
# before the relay simulates it; a refusal sends nothing.


def _signed(world: World, account: LocalAccount, call: Any, **overrides: Any) -> bytes:
    """`call` signed by hand, with no prepare (what a careless or hostile client sends)."""
    data = overrides.pop("data", call._encode_transaction_data())
    return raw_tx(world, account, call.address, data, **{"gas": 500_000, **overrides})


_MOVE = "transferFrom(address,address,uint256)"
_SPLIT_TO = "transferFrom(uint256,address,uint256)"
_MERGE = "transferFrom(uint256,uint256,uint256)"


def _fn(world: World, signature: str, *args: Any) -> Any:
    return world.ledger.contract.get_function_by_signature(signature)(*args)


def _relayed(api: Api, world: World, account: LocalAccount, call: Any) -> Any:
    """Submits `call` signed by `account`; a refusal must leave the chain and the nonce as they were."""
    w3 = world.chain.w3
    head, nonce = w3.eth.block_number, w3.eth.get_transaction_count(account.address)
    r = api.submit_raw(_signed(world, account, call))
    if r.status_code != 200:
        assert (w3.eth.block_number, w3.eth.get_transaction_count(account.address)) == (head, nonce)
    world.chain.nonces.forget(account.address)
    return r


def test_relay_refuses_signed_jobs_on_records_out_of_scope(
    api: Api, world: World, books: dict[str, int]
) -> None:
    """supplier2's certificate, order and offer, named in transactions others signed: refused as the
    reads refuse them, before the simulation whose error would name their holder, maturity, value,
    status or buyer; nothing is sent."""
    s1, s2, factor = world.cast.supplier1, world.cast.supplier2, world.cast.factor
    cert1, cert2, offer = books["cert1"], books["cert2"], books["offer"]
    ledger = world.ledger.contract.functions
    state = world.balances()
    expiry = world.pending_time() + DAY
    jobs: list[tuple[LocalAccount, Any, dict[str, int]]] = [
        (s1, _fn(world, _MOVE, s1.address, factor.address, cert2),
         {"certificateId": cert2}),
        (s1, _fn(world, _MOVE, s2.address, s1.address, cert2),
         {"certificateId": cert2}),
        (s1, _fn(world, _SPLIT_TO, cert2, s1.address, 10**9),
         {"certificateId": cert2}),
        (s1, _fn(world, _MERGE, cert1, cert2, 1), {"certificateId": cert2}),
        (s1, _fn(world, "approve(address,uint256)", factor.address, cert2), {"certificateId": cert2}),
        (s1, ledger.split(cert2, [1_000_00, 1_000_00]), {"certificateId": cert2}),
        (s1, ledger.offerDiscount(cert2, 100_00, 90_00, factor.address, expiry), {"certificateId": cert2}),
        (s1, ledger.settle([cert2]), {"certificateId": cert2}),
        (s1, ledger.settle([cert1, cert2]), {"certificateId": cert2}),
        (s1, ledger.buyDiscounted(offer), {"offerId": offer}),
        (s1, ledger.cancelDiscountOffer(offer), {"offerId": offer}),
        (world.cast.issuer2, ledger.cancelOrder(books["order2"]), {"orderId": books["order2"]}),
    ]  # fmt: skip
    for who, call, fields in jobs:
        r = _relayed(api, world, who, call)
        _refused_as_read(r, 403, "Forbidden", **fields)
        assert s2.address not in r.text
    # Settling is open to any sender on chain; relayed here only for those who read the certificate.
    # A fresh key, or a participant suspended since, reads nothing.
    outsider = world.cast.outsider
    _refused_as_read(_relayed(api, world, outsider, ledger.settle([cert2])), 403, "NotParticipant")
    world.ledger.suspend(world.cast.admin, s2.address)
    api.service.reader.reach(world.chain.w3.eth.block_number)  # within the index's lag (D39)
    _refused_as_read(_relayed(api, world, s2, ledger.settle([cert2])), 403, "ParticipantNotActive")
    assert world.balances() == state


def test_relay_answers_unknown_ids_as_the_reads_do(api: Api, world: World, books: dict[str, int]) -> None:
    s1, factor = world.cast.supplier1, world.cast.factor
    ledger = world.ledger.contract.functions
    stranger = "0x" + "12" * 20
    cases: list[tuple[LocalAccount, Any, str, Any]] = [
        (s1, _fn(world, _MOVE, s1.address, factor.address, 999),
         "certificate", 999),
        (s1, ledger.settle([books["cert1"], 999]), "certificate", 999),
        (s1, _fn(world, _MERGE, books["cert1"], 999, 1), "certificate", 999),
        (factor, ledger.buyDiscounted(999), "offer", 999),
        (s1, ledger.cancelDiscountOffer(999), "offer", 999),
        (world.cast.issuer, ledger.cancelOrder(999), "order", 999),
        (world.cast.admin, ledger.suspendParticipant(stranger), "participant", stranger),
    ]  # fmt: skip
    for who, call, kind, key in cases:
        r = _relayed(api, world, who, call)
        assert (r.status_code, r.json()["code"]) == (404, "NotFound"), r.text
        assert r.json()["fields"] == {"kind": kind, "id": key}
    # Call data the job's ABI does not decode names nothing this service can check: not simulated.
    head = world.chain.w3.eth.block_number
    settle = ledger.settle([books["cert1"]])
    truncated = str(settle._encode_transaction_data())[:-40]
    r = api.submit_raw(_signed(world, s1, settle, data=truncated))
    assert (r.status_code, r.json()["code"], r.json()["fields"]) == (
        422, "MalformedCall", {"function": "settle"},
    ), r.text  # fmt: skip
    assert world.chain.w3.eth.block_number == head


def test_relay_passes_the_holders_own_jobs_and_their_errors(
    api: Api, world: World, books: dict[str, int]
) -> None:
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    cert2 = books["cert2"]
    # The holder's own failing job: simulated, the contract's error with its fields.
    r = _relayed(api, world, s2, _fn(world, _SPLIT_TO, cert2, s1.address, 10**12))
    assert (r.status_code, r.json()["code"]) == (409, "InsufficientValue"), r.text
    assert r.json()["fields"]["certificateId"] == cert2 and "value" in r.json()["fields"]
    r = _relayed(api, world, s2, _fn(world, _MOVE, s2.address, s1.address, cert2))
    assert r.status_code == 200, r.text
    assert world.ledger.certificate(cert2).holder == s1.address
    # supplier2 held it: it still reads it, and its failing job is answered with the contract's error
    # (the holder it names is what GET /v1/certificates/{id} shows supplier2 anyway).
    r = _relayed(api, world, s2, _fn(world, _MOVE, s2.address, s1.address, cert2))
    assert (r.status_code, r.json()["code"]) == (403, "IncorrectHolder"), r.text
    assert api.get(f"/v1/certificates/{cert2}", s2).json()["holder"] == s1.address


def test_relay_settles_for_those_who_read_the_certificate(
    api: Api, world: World, books: dict[str, int]
) -> None:
    s2, issuer, regulator = world.cast.supplier2, world.cast.issuer, world.cast.regulator
    settle = world.ledger.contract.functions.settle([books["cert2"]])
    # Its order's issuer and a regulator read it: their failing settle is told why, and when.
    for who in (issuer, regulator):
        r = _relayed(api, world, who, settle)
        assert (r.status_code, r.json()["code"]) == (409, "CertificateNotMatured"), r.text
        assert "maturity" in r.json()["fields"]
    world.chain.advance_time(91 * DAY)
    before = world.token.balance_of(s2.address)
    r = _relayed(api, world, issuer, settle)
    assert r.status_code == 200, r.text
    assert r.json()["sender"] == issuer.address
    assert world.token.balance_of(s2.address) == before + 100_000_00


def test_relay_tells_a_buyer_a_stale_offer_without_its_holder(
    api: Api, world: World, books: dict[str, int]
) -> None:
    s1, factor = world.cast.supplier1, world.cast.factor
    offer = _offer_then_move_its_certificate(world, books)
    r = _relayed(api, world, factor, world.ledger.contract.functions.buyDiscounted(offer))
    _refused_as_read(r, 409, "OfferStale", offerId=offer)
    assert s1.address not in r.text


def test_a_buy_mined_and_reverted_names_no_holder_either(
    api: Api, world: World, books: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The certificate moves between the buy's simulation and its block: the answer is 409
    RevertedOnChain (nonce and gas spent) with OfferStale nested, not the contract's IncorrectHolder."""
    s1, s2, factor = world.cast.supplier1, world.cast.supplier2, world.cast.factor
    offer, _ = world.ledger.offer_discount(
        s2, books["cert2"], value=1_000_00, price=900_00, expiry=world.pending_time() + DAY
    )
    relay = api.service.relay
    simulate = relay.simulate

    def then_moved(tx: DecodedTx) -> None:
        simulate(tx)
        world.ledger.transfer(s2, books["cert2"], s1.address)

    monkeypatch.setattr(relay, "simulate", then_moved)
    r = api.submit_raw(_signed(world, factor, world.ledger.contract.functions.buyDiscounted(offer)))
    assert (r.status_code, r.json()["code"]) == (409, "RevertedOnChain"), r.text
    fields = r.json()["fields"]
    assert fields["error"] == {
        "code": "OfferStale",
        "message": STALE_OFFER,
        "fields": {"offerId": offer},
    }
    assert {"txHash", "blockNumber", "gasUsed"} <= set(fields)
    assert s1.address not in r.text


def _offer_on_a_certificate_the_factor_may_not_read(world: World, books: dict[str, int]) -> int:
    """An offer of supplier2's certificate reserved for the factor, open past the maturity."""
    offer, _ = world.ledger.offer_discount(
        world.cast.supplier2, books["cert2"], value=1_000_00, price=900_00,
        buyer=world.cast.factor.address, expiry=world.pending_time() + 200 * DAY,
    )  # fmt: skip
    return offer


def _matured(world: World, books: dict[str, int]) -> None:
    world.chain.advance_time(91 * DAY)


def _frozen(world: World, books: dict[str, int]) -> None:
    world.ledger.freeze(world.cast.regulator, books["cert2"], keccak(text="court order 7"))


def _settled(world: World, books: dict[str, int]) -> None:
    world.chain.advance_time(91 * DAY)
    world.ledger.settle(world.cast.issuer, [books["cert2"]])


@pytest.mark.parametrize("change", [_matured, _frozen, _settled], ids=["matured", "frozen", "settled"])
def test_a_buy_tells_no_more_of_the_certificate_than_that_the_offer_is_stale(
    api: Api, world: World, books: dict[str, int], change: Any
) -> None:
    """buyDiscounted checks the certificate can move before anything else about it: matured (with
    its maturity), frozen or settled. A buyer who may not read the certificate hears only that the
    offer is stale, at prepare and at relay, as for a holder or value that changed."""
    factor = world.cast.factor
    offer = _offer_on_a_certificate_the_factor_may_not_read(world, books)
    change(world, books)
    assert api.get(f"/v1/certificates/{books['cert2']}", factor).status_code == 403
    r = api.prepare("buy", factor, {"offerId": offer})
    _refused_as_read(r, 409, "OfferStale", offerId=offer)
    assert r.json()["fields"] == {"offerId": offer}
    r = _relayed(api, world, factor, world.ledger.contract.functions.buyDiscounted(offer))
    _refused_as_read(r, 409, "OfferStale", offerId=offer)
    assert r.json()["fields"] == {"offerId": offer}
    # The seller reads its certificate: its own prepare of the same state is told as it is.
    r = api.prepare("cancel-offer", world.cast.supplier2, {"offerId": offer})
    assert r.status_code == 200, r.text


def test_a_buy_frozen_before_its_block_names_only_the_offer(
    api: Api, world: World, books: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen between the buy's simulation and its block: 409 RevertedOnChain with OfferStale nested
    (offer id alone), not CertificateFrozen with the certificate's id."""
    factor = world.cast.factor
    offer = _offer_on_a_certificate_the_factor_may_not_read(world, books)
    relay = api.service.relay
    simulate = relay.simulate

    def then_frozen(tx: DecodedTx) -> None:
        simulate(tx)
        _frozen(world, books)

    monkeypatch.setattr(relay, "simulate", then_frozen)
    r = api.submit_raw(_signed(world, factor, world.ledger.contract.functions.buyDiscounted(offer)))
    assert (r.status_code, r.json()["code"]) == (409, "RevertedOnChain"), r.text
    assert r.json()["fields"]["error"] == {
        "code": "OfferStale", "message": STALE_OFFER, "fields": {"offerId": offer}
    }  # fmt: skip
    assert "CertificateFrozen" not in r.text


def test_a_buyer_who_reads_the_certificate_hears_the_contracts_error(
    api: Api, world: World, books: dict[str, int]
) -> None:
    """The rule is the read scope, not the buy: a factor that held the certificate reads it (D40),
    so its buy is told CertificateFrozen as GET /v1/certificates/{id} would show it frozen."""
    s2, factor = world.cast.supplier2, world.cast.factor
    cert2 = books["cert2"]
    world.ledger.transfer(s2, cert2, factor.address)
    world.ledger.transfer(factor, cert2, s2.address)
    offer = _offer_on_a_certificate_the_factor_may_not_read(world, books)
    _frozen(world, books)
    assert api.get(f"/v1/certificates/{cert2}", factor).status_code == 200
    r = api.prepare("buy", factor, {"offerId": offer})
    assert (r.status_code, r.json()["code"]) == (409, "CertificateFrozen"), r.text


def test_the_check_after_the_index_caught_up_reads_the_callers_roles_afresh(
    world: World, tmp_path: Path
) -> None:
    """A supplier made a factor moments ago (the index has not seen it) buys an offer open to any
    factor: the refusal from the lagging index is checked again once it caught up, with the roles
    the index has then, not the ones read for the request."""
    api = build_api(world, tmp_path, index_sync_interval=60)
    try:
        s1, s2 = world.cast.supplier1, world.cast.supplier2
        _, cert = world.certificate_for(payee=s2.address)
        offer, _ = world.ledger.offer_discount(
            s2, cert, value=1_000_00, price=900_00, expiry=world.pending_time() + DAY
        )
        headers = api.login(s1)
        api.service.reader.reach(world.chain.w3.eth.block_number)
        world.ledger.set_roles(world.cast.admin, s1.address, Role.SUPPLIER | Role.FACTOR)
        assert api.service.reader.synced_block() < world.chain.w3.eth.block_number
        r = api.client.post("/v1/tx/prepare/buy", json={"offerId": offer}, headers=headers)
        assert r.json().get("code") != "Forbidden", r.text
        assert r.status_code in (200, 409), r.text
    finally:
        api.service.reader.db.close()


def test_a_refusal_stands_when_the_index_cannot_catch_up(
    api: Api, world: World, books: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check again after the index's lag is best effort: the node or the database failing
    meanwhile leaves the first refusal (403, 404), never a 500."""
    import msgspec

    from chain_client.index.sync import IndexInconsistent, ReorgTooDeep
    from chain_client.transactions import unavailable

    s1 = world.cast.supplier1
    world.ledger.transfer(s1, books["cert1"], world.cast.supplier2.address)  # a block to be behind
    monkeypatch.setattr(api.service.reader, "synced_block", lambda: world.chain.w3.eth.block_number - 1)
    troubles = [
        IndexInconsistent("books disagree"),
        ReorgTooDeep("gone"),
        unavailable("http://node", ConnectionError("reset")),
        msgspec.ValidationError("misshapen"),
    ]
    for trouble in troubles:

        def fail(block: int, wait: float | None = None, trouble: Exception = trouble) -> None:
            raise trouble

        monkeypatch.setattr(api.service.reader, "reach", fail)
        r = api.prepare("transfer", s1, {"certificateId": books["cert2"], "to": s1.address})
        _refused_as_read(r, 403, "Forbidden", certificateId=books["cert2"])
        r = api.submit_raw(_signed(world, s1, _fn(world, _MOVE, s1.address, s1.address, 10**9)))
        _refused_as_read(r, 404, "NotFound")


def test_an_unauthenticated_refusal_waits_little_for_a_follower(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone may post a signed transaction naming an unknown id. With a follower a few blocks
    behind, the check again waits at most RETRY_WAIT for it, not the index_wait a write may wait
    for its own block; further behind, not at all."""
    import time

    api = build_api(world, tmp_path, index_sync_interval=60, index_wait=5.0)
    try:
        outsider = world.cast.supplier1
        call = _fn(world, _MOVE, outsider.address, outsider.address, 10**9)
        world.certificate_for()  # blocks the index has not seen
        reader = api.service.reader
        monkeypatch.setattr(reader, "_indexer", None)  # another process follows, and is stuck
        monkeypatch.setattr(tx_routes, "RETRY_WAIT", 0.3)
        assert 0 < world.chain.w3.eth.block_number - reader.synced_block() <= tx_routes.RETRY_LAG_BLOCKS
        started = time.monotonic()
        r = api.submit_raw(_signed(world, outsider, call))
        _refused_as_read(r, 404, "NotFound")
        assert time.monotonic() - started < 2.0
        # Far behind: the refusal is not checked again (nothing to wait for).
        monkeypatch.setattr(tx_routes, "RETRY_LAG_BLOCKS", 0)
        monkeypatch.setattr(reader, "reach", lambda *a, **k: pytest.fail("waited for the index"))
        r = api.submit_raw(_signed(world, outsider, call))
        _refused_as_read(r, 404, "NotFound")
    finally:
        api.service.reader.db.close()


def test_the_quick_scope_check_agrees_with_the_whole_visible_set(
    api: Api, world: World, books: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """certificate_for answers a holder's own certificate, or an issuer's order's, without computing
    the caller's whole visible set: the answers are the same as with it, for every caller and
    certificate, and a write on one's own certificate does not compute the set at all."""
    from api import views
    from api.deps import caller_at
    from api.errors import ApiError

    s1, s2, factor = world.cast.supplier1, world.cast.supplier2, world.cast.factor
    world.ledger.transfer(s1, books["cert1"], factor.address)  # held before, not now
    child, _ = world.ledger.split_to(s2, books["cert2"], s1.address, 10_000_00)  # split off by s2
    grandchild, _ = world.ledger.split_to(s1, child, factor.address, 5_000_00)  # s1 passes part on
    world.ledger.split_to(factor, grandchild, s2.address, 1_000_00)  # and factor, without s1
    world.certificate_for(payee=factor.address)
    world.ledger.set_roles(world.cast.admin, world.cast.issuer2.address, Role.ISSUER | Role.SUPPLIER)
    reader = api.service.reader
    reader.reach(world.chain.w3.eth.block_number)
    ids = sorted(reader.certificates(set(range(1, 20))))
    assert len(ids) >= 5
    cast = world.cast
    for account in (cast.issuer, cast.issuer2, s1, s2, factor, cast.regulator, cast.admin):
        caller = caller_at(api.service, account.address, signed_in=True, max_age=0.0)
        try:
            visible: set[int] | None = views.visible_certificates(reader, caller)
        except ApiError:
            visible = set()
        for cid in ids:
            try:
                views.certificate_for(reader, caller, cid)
                quick = True
            except ApiError:
                quick = False
            try:
                views.certificates_for(reader, caller, [cid, cid])
                several = True
            except ApiError:
                several = False
            expected = visible is None or cid in visible
            assert (quick, several) == (expected, expected), (account.address, cid)

    def no_whole_set(*args: Any) -> None:
        raise AssertionError("computed the whole visible set")

    monkeypatch.setattr(views, "visible_certificates", no_whole_set)
    r = api.prepare("split", s2, {"certificateId": books["cert2"], "values": [40_000_00, 50_000_00]})
    assert r.status_code in (200, 409, 422), r.text
    assert r.json().get("code") not in ("Forbidden", "InternalError")
    r = api.prepare("freeze", cast.regulator, {"certificateId": books["cert1"], "reason": "x"})
    assert r.status_code == 200, r.text
    r = api.prepare("settle", cast.issuer, {"certificateIds": [books["cert1"], books["cert2"]]})
    assert (r.status_code, r.json()["code"]) == (409, "CertificateNotMatured"), r.text


def test_relay_right_after_a_write_the_index_has_not_seen(world: World, tmp_path: Path) -> None:
    """A sender registered, and a certificate it received, moments ago: the index has neither yet.
    The refusal from the lagging index is checked again once it has caught up: the job relays."""
    api = build_api(world, tmp_path, index_sync_interval=60)
    try:
        admin, s1, newcomer = world.cast.admin, world.cast.supplier1, world.cast.outsider
        _, cert = world.certificate_for()
        world.ledger.register_participant(admin, newcomer.address, keccak(text="NEWCOMER"), Role.SUPPLIER)
        world.ledger.transfer(s1, cert, newcomer.address)
        assert api.service.reader.synced_block() < world.chain.w3.eth.block_number
        assert api.service.reader.participant(newcomer.address) is None
        call = _fn(world, _SPLIT_TO, cert, s1.address, 10_000_00)
        r = _relayed(api, world, newcomer, call)
        assert r.status_code == 200, r.text
        assert r.json()["indexed"] is True
    finally:
        api.service.reader.db.close()


def test_confirm_receipt_prepare_tells_nothing_of_the_order_beyond_its_id(
    api: Api, world: World, books: dict[str, int]
) -> None:
    """prepare/confirm-receipt has no sign-in (`sender` is a claim): the order must exist, and a
    ledger error about it carries its code and the order id only. The allow-listed relayer that
    signs the same job gets the contract's whole answer from POST /v1/tx."""
    relayer = world.cast.relayer
    prepare = "/v1/tx/prepare/confirm-receipt"

    def body(order_id: int) -> dict[str, Any]:
        observations, signatures = world.receipt(order_id, 1_000)
        return {
            "sender": relayer.address,
            "observations": [o.to_json() for o in observations],
            "signatures": ["0x" + s.hex() for s in signatures],
        }

    r = api.client.post(prepare, json=body(999))
    assert (r.status_code, r.json()["code"], r.json()["fields"]) == (
        404, "NotFound", {"kind": "order", "id": 999},
    )  # fmt: skip
    order = books["order2"]  # confirmed
    r = api.client.post(prepare, json=body(order))
    assert (r.status_code, r.json()["code"], r.json()["fields"]) == (409, "OrderNotOpen", {"orderId": order})
    assert "status" not in r.text
    # The relayer's own signed transaction: the oracle's allow-list let it in, the contract answers.
    observations, signatures = world.receipt(order, 1_000)
    r = _relayed(api, world, relayer, world.oracle.confirm_call(observations, signatures))
    assert (r.status_code, r.json()["code"]) == (409, "OrderNotOpen"), r.text
    assert "status" in r.json()["fields"]


def test_every_id_a_relayed_ledger_job_takes_is_scoped() -> None:
    """The scope check finds records by the ABI parameter's name: an id parameter it does not know
    would be simulated unchecked."""
    for entry in load_artifact("CertificateLedger").abi:
        if entry.get("type") != "function" or entry["name"] not in JOB_ROLES["CertificateLedger"]:
            continue
        for param in entry["inputs"]:
            if param["type"].startswith("uint") and param["name"].lower().endswith(("id", "ids")):
                assert param["name"] in RECORD_PARAMETERS, (entry["name"], param["name"])
