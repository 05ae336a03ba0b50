"""Reads from the index, scoped by role: holders see what they hold or held and its lineage, an
issuer its orders and all their descendants, auditors and regulators everything. Each test runs
with the index in SQLite and in PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from api_support import Api, serve_world
from pg import PgCluster, pg_cluster
from world import DAY, DEFAULT_AMOUNT, DEFAULT_QUANTITY, World

from chain_client.index.state import merges as state_merges
from chain_client.models import Role
from chain_client.pricing import discount_price

_databases = count()


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with pg_cluster() as running:
        yield running


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, world: World, tmp_path: Path) -> Iterator[Api]:
    """Every read on an index in SQLite and in a real PostgreSQL server."""
    index_db = None
    if request.param == "postgresql":
        cluster: PgCluster = request.getfixturevalue("cluster")
        index_db = cluster.create_database(f"api_{next(_databases)}")
    served = serve_world(world, tmp_path, index_db)
    api = next(served)
    assert api.service.reader.db.dialect == request.param
    yield api
    next(served, None)


@pytest.fixture
def tree(world: World) -> dict[str, int]:
    """Order 1 -> root held by supplier1; part `a` split to supplier2; part `b` split to the factor;
    a second order's root held by supplier2 (nothing to do with supplier1)."""
    s1 = world.cast.supplier1
    order, root = world.certificate_for()
    a, _ = world.ledger.split_to(s1, root, world.cast.supplier2.address, 30_000_00)
    b, _ = world.ledger.split_to(s1, root, world.cast.factor.address, 20_000_00)
    other_order, other = world.certificate_for(payee=world.cast.supplier2.address)
    return {"order": order, "root": root, "a": a, "b": b, "other_order": other_order, "other": other}


def _ids(page: dict[str, Any]) -> list[int]:
    return [item["certificateId"] for item in page["items"]]


def _tree_ids(node: dict[str, Any]) -> set[int]:
    return {node["certificate"]["certificateId"]} | {i for c in node["children"] for i in _tree_ids(c)}


def test_a_supplier_cannot_read_another_suppliers_certificates(
    api: Api, world: World, tree: dict[str, int]
) -> None:
    s1 = world.cast.supplier1
    assert _ids(api.get("/v1/certificates", s1).json()) == [tree["root"]]
    r = api.get(f"/v1/certificates/{tree['other']}", s1)
    assert (r.status_code, r.json()["code"]) == (403, "Forbidden")
    r = api.get("/v1/certificates", s1, holder=world.cast.supplier2.address)
    assert r.status_code == 403
    for path in ("", "/lineage", "/history"):
        assert api.get(f"/v1/certificates/{tree['other']}{path}", s1).status_code == 403
    assert api.get(f"/v1/orders/{tree['other_order']}", s1).status_code == 403


def test_lineage_shows_the_callers_branch_only(api: Api, world: World, tree: dict[str, int]) -> None:
    s2 = world.cast.supplier2
    # supplier2 sees part a and where it came from, not the factor's sibling part b.
    lineage = api.get(f"/v1/certificates/{tree['a']}/lineage", s2).json()
    assert lineage["certificate"]["certificateId"] == tree["root"]
    assert _tree_ids(lineage) == {tree["root"], tree["a"]}
    assert api.get(f"/v1/certificates/{tree['b']}", s2).status_code == 403
    assert api.get(f"/v1/certificates/{tree['root']}", s2).status_code == 200
    # supplier1 made both parts: it sees the whole tree.
    whole = api.get(f"/v1/certificates/{tree['root']}/lineage", world.cast.supplier1).json()
    assert _tree_ids(whole) == {tree["root"], tree["a"], tree["b"]}


def test_lineage_shows_where_merged_value_went(api: Api, world: World, tree: dict[str, int]) -> None:
    """Parent links do not show a merge: the tree's values no longer added up to the face, with no
    hint where the rest went. Each node lists the merges of its value, as `audit lineage` does
    (the same merges the auditor's refold finds), and a split is no merge."""
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    value = world.ledger.certificate(tree["root"]).value
    [kept], _ = world.ledger.split(s1, tree["root"], [value - 10_000_00, 10_000_00])
    merge = world.ledger.merge(s1, kept, tree["root"], 4_000_00)
    world.ledger.merge(s2, tree["a"], tree["root"], 1_000_00)  # into another holder's certificate
    api.service.reader.reach(world.chain.w3.eth.block_number)
    whole = api.get(f"/v1/certificates/{tree['root']}/lineage", s1).json()

    def merges(node: dict[str, Any]) -> dict[int, list[tuple[int, int]]]:
        found = {
            node["certificate"]["certificateId"]: [
                (m["certificateId"], m["value"]) for m in node["mergedInto"]
            ]
        }
        for child in node["children"]:
            found |= merges(child)
        return found

    assert merges(whole) == {
        tree["root"]: [],
        tree["a"]: [(tree["root"], 1_000_00)],
        tree["b"]: [],
        kept: [(tree["root"], 4_000_00)],
    }
    [into_root] = [n for n in whole["children"] if n["certificate"]["certificateId"] == kept][0]["mergedInto"]
    assert (into_root["txHash"], into_root["blockNumber"]) == (merge.tx_hash, merge.block_number)
    reader = api.service.reader
    audited = {(m.source, m.target, m.value) for m in state_merges(reader.db, reader.state())}
    assert audited == {(kept, tree["root"], 4_000_00), (tree["a"], tree["root"], 1_000_00)}
    # A merge into a certificate the caller may not read is not told: supplier2 gives part of `a`
    # to the factor's `b`; it sees that `a` shrank, not where the value went. supplier1, who split
    # both off, sees it.
    world.ledger.merge(s2, tree["a"], tree["b"], 500_00)
    reader.reach(world.chain.w3.eth.block_number)
    assert merges(api.get(f"/v1/certificates/{tree['a']}/lineage", s2).json())[tree["a"]] == [
        (tree["root"], 1_000_00)
    ]
    assert merges(api.get(f"/v1/certificates/{tree['root']}/lineage", s1).json())[tree["a"]] == [
        (tree["root"], 1_000_00),
        (tree["b"], 500_00),
    ]


def test_held_certificates_stay_readable(api: Api, world: World, tree: dict[str, int]) -> None:
    s1 = world.cast.supplier1
    world.ledger.transfer(s1, tree["root"], world.cast.supplier2.address)
    api.service.reader.reach(world.chain.w3.eth.block_number)
    assert _ids(api.get("/v1/certificates", s1).json()) == []
    assert tree["root"] in _ids(api.get("/v1/certificates", s1, held="true").json())
    assert api.get(f"/v1/certificates/{tree['root']}", s1).json()["holder"] == world.cast.supplier2.address
    history = api.get(f"/v1/certificates/{tree['root']}/history", s1).json()
    holders = [c for c in history["items"] if c["field"] == "holder"]
    assert holders[-1]["old"] == s1.address and holders[-1]["new"] == world.cast.supplier2.address


def test_held_within_an_order_is_the_callers_holdings_there_not_the_orders_view(
    api: Api, world: World, tree: dict[str, int]
) -> None:
    """`held` with `orderId` was ignored: the order's whole visible tree came back, the root
    supplier2 never held included, for a client summing what it holds or held in the order."""
    s2 = world.cast.supplier2
    assert _ids(api.get("/v1/certificates", s2, orderId=tree["order"]).json()) == [tree["root"], tree["a"]]
    world.ledger.split_to(s2, tree["a"], world.cast.supplier1.address, 10_000_00)
    world.ledger.transfer(s2, tree["a"], world.cast.factor.address)
    api.service.reader.reach(world.chain.w3.eth.block_number)
    assert _ids(api.get("/v1/certificates", s2, held="true", orderId=tree["order"]).json()) == [tree["a"]]
    assert _ids(api.get("/v1/certificates", s2, orderId=tree["order"], holder=s2.address).json()) == []
    assert _ids(api.get("/v1/certificates", s2, held="true").json()) == [tree["a"], tree["other"]]


def test_issuer_sees_its_orders_and_all_descendants(api: Api, world: World, tree: dict[str, int]) -> None:
    issuer = world.cast.issuer
    orders = api.get("/v1/orders", issuer).json()
    assert {o["orderId"] for o in orders["items"]} == {tree["order"], tree["other_order"]}
    certs = api.get("/v1/certificates", issuer, orderId=tree["order"]).json()
    assert _ids(certs) == [tree["root"], tree["a"], tree["b"]]
    # Who holds what within its order, as well.
    s2, s1 = world.cast.supplier2.address, world.cast.supplier1.address
    assert _ids(api.get("/v1/certificates", issuer, orderId=tree["order"], holder=s2).json()) == [tree["a"]]
    assert _ids(api.get("/v1/certificates", issuer, orderId=tree["order"], holder=s1).json()) == [
        tree["root"]
    ]
    # Not another holder's holdings at large, nor within an order it did not issue, nor for a holder.
    assert api.get("/v1/certificates", issuer, holder=s2).status_code == 403
    other = api.get("/v1/certificates", world.cast.issuer2, orderId=tree["order"], holder=s2)
    assert (other.status_code, other.json()["fields"]) == (403, {"orderId": tree["order"]})
    mine = api.get("/v1/certificates", world.cast.supplier1, orderId=tree["order"], holder=s2)
    assert (mine.status_code, mine.json()["fields"]) == (403, {"holder": s2})
    # issuer2 issued none of them.
    issuer2 = world.cast.issuer2
    assert api.get("/v1/orders", issuer2).json()["total"] == 0
    assert api.get(f"/v1/orders/{tree['order']}", issuer2).status_code == 403
    assert api.get(f"/v1/certificates/{tree['a']}", issuer2).status_code == 403


def test_regulator_sees_everything_and_pages(api: Api, world: World, tree: dict[str, int]) -> None:
    regulator = world.cast.regulator
    holdings = api.get("/v1/certificates", regulator, holder=world.cast.supplier2.address).json()
    assert _ids(holdings) == [tree["a"], tree["other"]]
    supplier2 = world.cast.supplier2.address
    first = api.get("/v1/certificates", regulator, holder=supplier2, limit=1).json()
    second = api.get("/v1/certificates", regulator, holder=supplier2, limit=1, offset=1).json()
    assert (first["total"], _ids(first), _ids(second)) == (2, [tree["a"]], [tree["other"]])
    assert api.get("/v1/orders", regulator).json()["total"] == 2
    assert api.get(f"/v1/certificates/{tree['b']}", regulator).status_code == 200


def test_unknown_ids_are_404_and_bad_ones_422(api: Api, world: World, tree: dict[str, int]) -> None:
    s1 = world.cast.supplier1
    for path in ("/v1/certificates/999", "/v1/orders/999", "/v1/offers/999", "/v1/settlement/orders/999"):
        r = api.get(path, world.cast.regulator)
        assert (r.status_code, r.json()["code"]) == (404, "NotFound"), path
        assert r.json()["fields"]["id"] == 999  # a number, as every id below 2^53 is
    huge = 2**60 + 1  # above 2^53: a string, which a JSON number would round
    assert api.get(f"/v1/certificates/{huge}", world.cast.regulator).json()["fields"] == {
        "kind": "certificate",
        "id": str(huge),
    }
    for path in ("/v1/certificates/0", "/v1/certificates/abc", "/v1/orders/-1"):
        assert api.get(path, s1).json()["code"] == "ValidationError"
    assert api.get("/v1/certificates", s1, limit=0).status_code == 422
    assert api.get(f"/v1/participants/{world.cast.outsider.address}", s1).status_code == 404


def test_participants_directory(api: Api, world: World) -> None:
    s1 = world.cast.supplier1
    directory = api.get("/v1/participants", s1, limit=100).json()
    assert directory["total"] == 7  # admin, two issuers, two suppliers, factor, regulator
    factor = api.get(f"/v1/participants/{world.cast.factor.address}", s1).json()
    assert factor["roles"] == ["FACTOR"] and factor["active"]


def test_a_role_without_certificates_reads_none(api: Api, world: World, tree: dict[str, int]) -> None:
    admin = world.cast.admin
    r = api.get("/v1/certificates", admin)
    assert (r.status_code, r.json()["code"]) == (403, "Forbidden")
    assert api.get("/v1/participants", admin).status_code == 200


def test_quote_matches_the_contract(api: Api, world: World) -> None:
    q = api.client.get("/v1/quote", params={"face": 1_000_000_00, "days": 90, "annualRateBps": 600}).json()
    assert q["price"] == world.ledger.quote(1_000_000_00, 90, 600)
    assert q["discount"] == 1_000_000_00 - q["price"]
    assert api.client.get("/v1/quote", params={"face": -1, "days": 1, "annualRateBps": 1}).status_code == 422


def test_audit_verify_and_export_for_auditors_only(api: Api, world: World, tree: dict[str, int]) -> None:
    regulator = world.cast.regulator
    report = api.get("/v1/audit/verify", regulator).json()
    assert report["ok"] is True and report["findings"] == [] and report["notes"] == []
    assert report["details"] == []
    exported = api.get("/v1/audit/export", regulator).json()
    assert exported["counts"]["certificate"] == 4 and exported["digest"] == report["digest"]
    csv = api.get("/v1/audit/export/certificates.csv", regulator)
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert len(csv.text.strip().splitlines()) == 5
    assert api.get("/v1/audit/export/secrets.csv", regulator).status_code == 404
    for path in ("/v1/audit/verify", "/v1/audit/export"):
        assert api.get(path, world.cast.supplier1).status_code == 403


def test_offers_are_seen_by_their_seller_and_eligible_factors(
    api: Api, world: World, tree: dict[str, int]
) -> None:
    expiry = world.pending_time() + 86_400
    offer_id, _ = world.ledger.offer_discount(
        world.cast.supplier2, tree["a"], value=100_00, price=90_00, expiry=expiry
    )
    api.service.reader.reach(world.chain.w3.eth.block_number)
    assert api.get(f"/v1/offers/{offer_id}", world.cast.supplier2).status_code == 200
    assert api.get(f"/v1/offers/{offer_id}", world.cast.factor).status_code == 200
    r = api.get(f"/v1/offers/{offer_id}", world.cast.supplier1)
    assert (r.status_code, r.json()["code"]) == (403, "Forbidden")
    assert api.get("/v1/offers", world.cast.supplier1).json()["total"] == 0


def test_an_offer_is_buyable_only_while_the_ledger_would_sell_it(
    api: Api, world: World, tree: dict[str, int]
) -> None:
    """Offers stay open on chain when their certificate moves, shrinks or is frozen (D13): listed
    as open, they were refused when bought. `buyable` says which the ledger would sell now, and a
    factor's purchase agrees with it every time."""
    s1, s2, factor, a = world.cast.supplier1, world.cast.supplier2, world.cast.factor, tree["a"]
    expiry = world.pending_time() + 30 * 86_400

    def offer(value: int) -> int:
        return world.ledger.offer_discount(s2, a, value=value, price=value * 9 // 10, expiry=expiry)[0]

    def check(buyable: set[int]) -> None:
        api.service.reader.reach(world.chain.w3.eth.block_number)
        listed = api.get("/v1/offers", factor).json()["items"]
        assert {o["offerId"] for o in listed} == set(offers)  # all open and unexpired
        assert {o["offerId"] for o in listed if o["buyable"]} == buyable
        assert _offer_ids(api.get("/v1/offers", factor, buyableOnly="true").json()) == sorted(buyable)
        for offer_id in offers:
            assert api.get(f"/v1/offers/{offer_id}", s2).json()["buyable"] == (offer_id in buyable)
            bought = api.prepare("buy", factor, {"offerId": offer_id})
            assert (bought.status_code == 200) == (offer_id in buyable), (offer_id, bought.json())

    offers = [offer(100_00)]
    check(set(offers))
    world.ledger.transfer(s2, a, s1.address)  # moved away: IncorrectHolder
    check(set())
    world.ledger.transfer(s1, a, s2.address)  # and back: OfferStale all the same
    check(set())
    # The factor itself got the certificate: it reads it, and is told the seller no longer holds
    # it as a conflict (409), not as though the factor were refused (403, as for a move).
    world.ledger.transfer(s2, a, factor.address)
    api.service.reader.reach(world.chain.w3.eth.block_number)
    r = api.prepare("buy", factor, {"offerId": offers[0]})
    assert (r.status_code, r.json()["code"]) == (409, "IncorrectHolder"), r.text
    assert r.json()["fields"] == {"from": s2.address, "certificateId": a, "holder": factor.address}
    world.ledger.transfer(factor, a, s2.address)
    offers += [offer(100_00), offer(30_000_00)]  # made after the return; the second is all of it
    check({offers[1], offers[2]})
    world.ledger.freeze(world.cast.regulator, a, b"\x01" * 32)
    check(set())
    world.ledger.unfreeze(world.cast.regulator, a)
    world.ledger.split_to(s2, a, s1.address, 1_000_00)  # less than the third offer's value now
    check({offers[1]})
    world.ledger.pause(world.cast.admin)  # SystemPaused
    check(set())
    world.ledger.unpause(world.cast.admin)
    check({offers[1]})
    # A sale whose remainder would fall below the minimum unit (SplitBelowMinimumUnit): the value
    # left after a split-off since the offer, not at the offer, decides.
    unit, _ = world.ledger.split_rules()
    value = world.ledger.certificate(a).value
    offers.append(offer(value // 2))
    check({offers[1], offers[3]})
    world.ledger.split_to(s2, a, s1.address, value - value // 2 - unit // 2)
    check({offers[1]})
    # A transfer to itself voids the holder's offers as any whole move does (OfferStale), though
    # the holder stays the same.
    world.ledger.transfer(s2, a, s2.address)
    check(set())


def _offer_ids(page: dict[str, Any]) -> list[int]:
    return [item["offerId"] for item in page["items"]]


def test_health_names_the_head_and_the_indexed_block(api: Api, world: World) -> None:
    health = api.client.get("/health").json()
    assert health["head"] == world.chain.w3.eth.block_number and health["indexed"] <= health["head"]


def test_closed_offers_are_hidden_from_factors_not_party_to_them(
    api: Api, world: World, tree: dict[str, int]
) -> None:
    s2, factor = world.cast.supplier2, world.cast.factor
    expiry = world.pending_time() + 86_400
    to_anyone, _ = world.ledger.offer_discount(s2, tree["a"], value=100_00, price=90_00, expiry=expiry)
    for_factor, _ = world.ledger.offer_discount(
        s2, tree["a"], value=100_00, price=95_00, expiry=expiry, buyer=factor.address
    )
    api.service.reader.reach(world.chain.w3.eth.block_number)
    assert api.get(f"/v1/offers/{to_anyone}", factor).status_code == 200
    world.ledger.cancel_offer(s2, to_anyone)
    world.ledger.cancel_offer(s2, for_factor)
    api.service.reader.reach(world.chain.w3.eth.block_number)
    # Closed, an offer to anyone is the seller's business (and, once sold, its buyer's).
    assert api.get(f"/v1/offers/{to_anyone}", factor).status_code == 403
    assert api.get(f"/v1/offers/{to_anyone}", s2).status_code == 200
    listed = api.get("/v1/offers", factor, openOnly="false").json()
    assert [o["offerId"] for o in listed["items"]] == [for_factor]  # reserved for it: still its own
    assert api.get("/v1/offers", s2, openOnly="false").json()["total"] == 2


def test_an_offer_shows_a_factor_what_it_would_buy(api: Api, world: World) -> None:
    """A factor cannot read a certificate it never held, so the offer itself says what the price
    buys: the order, its debtor (the issuer), the maturity, and the rate a purchase now would earn,
    which the sale's DiscountSold event then reports."""
    s1, factor = world.cast.supplier1, world.cast.factor
    order_id, root = world.certificate_for()
    cert = world.ledger.certificate(root)
    days = (cert.maturity - world.pending_time()) // 86_400
    price = discount_price(100_000_00, days, 600)
    offer_id, _ = world.ledger.offer_discount(
        s1, root, value=100_000_00, price=price, expiry=world.pending_time() + 86_400
    )
    left_open, _ = world.ledger.offer_discount(
        s1, root, value=100_000_00, price=price, expiry=world.pending_time() + 86_400
    )
    api.service.reader.reach(world.chain.w3.eth.block_number)
    assert api.get(f"/v1/certificates/{root}", factor).status_code == 403
    listed, other = api.get("/v1/offers", factor).json()["items"]
    assert other["offerId"] == left_open
    assert listed == api.get(f"/v1/offers/{offer_id}", factor).json()
    assert (listed["orderId"], listed["issuer"], listed["maturity"]) == (
        order_id,
        world.cast.issuer.address,
        cert.maturity,
    )
    assert 590 <= listed["annualRateBps"] <= 600  # quoted for whole days, offered a little before
    sale = world.ledger.buy_discounted(factor, offer_id)[1].event("DiscountSold")
    assert abs(sale["annualRateBps"] - listed["annualRateBps"]) <= 1  # a few seconds later
    api.service.reader.reach(world.chain.w3.eth.block_number)
    sold = api.get(f"/v1/offers/{offer_id}", s1).json()  # its rate is the sale event's now
    assert (sold["open"], sold["annualRateBps"]) == (False, None)
    world.chain.advance_time(cert.maturity - world.chain.now() + 1)
    api.service.reader.prime()
    matured = api.get(f"/v1/offers/{left_open}", factor).json()
    assert matured["annualRateBps"] is None and matured["maturity"] == cert.maturity


def test_a_previous_holder_does_not_follow_the_value_downstream(
    api: Api, world: World, tree: dict[str, int]
) -> None:
    s1, s2, factor = world.cast.supplier1, world.cast.supplier2, world.cast.factor
    world.ledger.transfer(s1, tree["root"], s2.address)
    later, _ = world.ledger.split_to(s2, tree["root"], factor.address, 10_000_00)
    api.service.reader.reach(world.chain.w3.eth.block_number)
    # supplier1 sees the parts it split off while it held the root, not what supplier2 did after.
    assert api.get(f"/v1/certificates/{later}", s1).status_code == 403
    assert _tree_ids(api.get(f"/v1/certificates/{tree['root']}/lineage", s1).json()) == {
        tree["root"], tree["a"], tree["b"],
    }  # fmt: skip
    # supplier2 sees what it split off the root, and its own part a, not supplier1's part b.
    assert _tree_ids(api.get(f"/v1/certificates/{tree['root']}/lineage", s2).json()) == {
        tree["root"], tree["a"], later,
    }  # fmt: skip
    assert api.get(f"/v1/certificates/{tree['b']}", s2).status_code == 403
    settlement = api.get(f"/v1/settlement/orders/{tree['order']}", s2).json()
    assert settlement["liveCertificates"] == sorted([tree["root"], tree["a"], later])


def test_history_is_for_those_who_held_the_certificate(api: Api, world: World, tree: dict[str, int]) -> None:
    s2, factor = world.cast.supplier2, world.cast.factor
    # supplier2 sees the root its part came from, as it stands, but not its history (the splits to
    # others and the holders it had).
    assert api.get(f"/v1/certificates/{tree['root']}", s2).status_code == 200
    r = api.get(f"/v1/certificates/{tree['root']}/history", s2)
    assert (r.status_code, r.json()["code"]) == (403, "Forbidden")
    assert api.get(f"/v1/certificates/{tree['a']}/history", s2).status_code == 200
    assert api.get(f"/v1/certificates/{tree['b']}/history", factor).status_code == 200
    assert api.get(f"/v1/certificates/{tree['root']}/history", world.cast.issuer).status_code == 200
    assert api.get(f"/v1/certificates/{tree['root']}/history", world.cast.regulator).status_code == 200
    # An issuer reads the history of its own orders' certificates only: supplier2 made an issuer
    # too is still no issuer of this order.
    world.ledger.set_roles(world.cast.admin, s2.address, Role.ISSUER | Role.SUPPLIER)
    api.service.reader.reach(world.chain.w3.eth.block_number)
    assert api.client.get("/v1/auth/me", headers=api.login(s2)).json()["roles"] == ["ISSUER", "SUPPLIER"]
    r = api.get(f"/v1/certificates/{tree['root']}/history", s2)
    assert (r.status_code, r.json()["code"]) == (403, "Forbidden")


_BOOKS = ("issuerLimit", "outstanding", "certificateCount")


def test_the_directory_shows_books_to_their_owner_and_overseers_only(
    api: Api, world: World, tree: dict[str, int]
) -> None:
    """The directory names who may hold, not what anyone holds or owes (D40)."""
    s1, issuer = world.cast.supplier1, world.cast.issuer

    def entries(reader: Any) -> dict[str, dict[str, Any]]:
        return {p["address"]: p for p in api.get("/v1/participants", reader, limit=100).json()["items"]}

    seen_by_s1 = entries(s1)
    assert seen_by_s1[s1.address]["certificateCount"] == 1  # its own books
    for address, entry in seen_by_s1.items():
        if address != s1.address:
            assert all(entry[k] is None for k in _BOOKS), entry
            assert entry["roles"] and "active" in entry
    one = api.get(f"/v1/participants/{issuer.address}", s1).json()
    assert all(one[k] is None for k in _BOOKS) and one["roles"] == ["ISSUER"]
    mine = api.get(f"/v1/participants/{issuer.address}", issuer).json()
    assert mine["outstanding"] > 0 and mine["issuerLimit"] > 0
    assert api.get("/v1/auth/me", issuer).json()["outstanding"] == mine["outstanding"]
    overseen = entries(world.cast.regulator)
    assert overseen[issuer.address]["outstanding"] == mine["outstanding"]
    assert overseen[world.cast.supplier2.address]["certificateCount"] == 2
    assert all(entries(world.cast.admin)[issuer.address][k] is None for k in _BOOKS)


def test_orders_include_those_the_caller_holds_or_held_a_certificate_of(
    api: Api, world: World, tree: dict[str, int]
) -> None:
    """GET /v1/orders lists what GET /v1/orders/{id} answers: an order the caller issued, is payee
    of, or holds or held a certificate of; one query, so its pages neither repeat nor skip."""
    s2, factor = world.cast.supplier2, world.cast.factor
    # The factor holds part b of the first order; it gets part of supplier2's order and passes it on.
    passed, _ = world.ledger.split_to(s2, tree["other"], factor.address, 10_000_00)
    world.ledger.transfer(factor, passed, s2.address)
    third, _ = world.certificate_for(payee=s2.address)  # nothing to do with the factor
    api.service.reader.reach(world.chain.w3.eth.block_number)
    listed = api.get("/v1/orders", factor).json()
    assert [o["orderId"] for o in listed["items"]] == [tree["order"], tree["other_order"]]
    assert listed["total"] == 2
    pages = [api.get("/v1/orders", factor, limit=1, offset=i).json() for i in range(3)]
    assert [[o["orderId"] for o in p["items"]] for p in pages] == [[tree["order"]], [tree["other_order"]], []]
    assert {p["total"] for p in pages[:2]} == {2}
    for order_id in (tree["order"], tree["other_order"]):
        assert api.get(f"/v1/orders/{order_id}", factor).status_code == 200
    assert api.get(f"/v1/orders/{third}", factor).status_code == 403
    # supplier2: payee of two orders, holder of part a of the first.
    listed = api.get("/v1/orders", s2).json()
    assert [o["orderId"] for o in listed["items"]] == [tree["order"], tree["other_order"], third]


def test_a_credited_settlement_is_listed_once(api: Api, world: World) -> None:
    """A settlement the token refused to push is one payment, marked credited, not a settlement plus
    a credit of the same money; its withdrawal is an entry of its own. `credit` is the chain's."""
    s1, s2, admin = world.cast.supplier1, world.cast.supplier2, world.cast.admin
    order, root = world.certificate_for(maturity_in=DAY)
    part, _ = world.ledger.split_to(s1, root, s2.address, 30_000_00)
    root_value = world.ledger.certificate(root).value
    world.chain.advance_time(2 * DAY)
    world.token.set_blocked(admin, s2.address, True)
    settled = world.ledger.settle(s1, [root, part])
    api.service.reader.reach(world.chain.w3.eth.block_number)

    account = api.get("/v1/settlement/account", s2).json()
    assert account["credit"] == world.ledger.credit(s2.address) == 30_000_00
    payments = account["payments"]
    assert payments["total"] == 1
    [paid] = payments["items"]
    assert (paid["kind"], paid["credited"], paid["amount"]) == ("settlement", True, 30_000_00)
    assert (paid["certificateId"], paid["orderId"], paid["txHash"]) == (part, order, settled.tx_hash)
    # The push to supplier1 in the same batch went through.
    mine = api.get("/v1/settlement/account", s1).json()
    assert mine["credit"] == 0
    assert [(p["kind"], p["credited"], p["amount"]) for p in mine["payments"]["items"]] == [
        ("settlement", False, root_value)
    ]

    world.token.set_blocked(admin, s2.address, False)
    withdrawn = world.ledger.withdraw(s2)
    api.service.reader.reach(world.chain.w3.eth.block_number)
    account = api.get("/v1/settlement/account", s2).json()
    assert account["credit"] == world.ledger.credit(s2.address) == 0
    listed = [(p["kind"], p["credited"], p["amount"], p["txHash"]) for p in account["payments"]["items"]]
    assert listed == [
        ("settlement", True, 30_000_00, settled.tx_hash),
        ("withdrawal", False, 30_000_00, withdrawn.tx_hash),
    ]
    assert account["payments"]["total"] == 2
    pages = [api.get("/v1/settlement/account", s2, limit=1, offset=i).json()["payments"] for i in range(3)]
    assert [[p["kind"] for p in page["items"]] for page in pages] == [["settlement"], ["withdrawal"], []]
    assert [page["total"] for page in pages] == [2, 2, 2]


def test_a_credited_refund_is_told_from_the_settlement_pushed_with_it(api: Api, world: World) -> None:
    """A short delivery of a matured order refunds the issuer and pays the supplier in one
    transaction: only the refused push (the issuer's refund) is marked credited."""
    issuer, s1, admin = world.cast.issuer, world.cast.supplier1, world.cast.admin
    order = world.open_order(maturity_in=DAY)
    world.chain.advance_time(2 * DAY)
    world.token.set_blocked(admin, issuer.address, True)
    root = world.confirm(order, DEFAULT_QUANTITY // 4)
    api.service.reader.reach(world.chain.w3.eth.block_number)

    refund = world.ledger.credit(issuer.address)
    assert refund > 0
    books = api.get("/v1/settlement/account", issuer).json()
    assert books["credit"] == refund
    assert [(p["kind"], p["credited"], p["amount"]) for p in books["payments"]["items"]] == [
        ("escrow", False, DEFAULT_AMOUNT),
        ("refund", True, refund),
    ]
    supplier = api.get("/v1/settlement/account", s1).json()
    assert supplier["credit"] == 0
    assert [(p["kind"], p["credited"], p["certificateId"]) for p in supplier["payments"]["items"]] == [
        ("settlement", False, root)
    ]
