"""Writes over HTTP: per-job prepare, the participant signs, POST /v1/tx checks and relays.
Every refusal leaves the chain as it was."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import Api, build_api, raw_tx, serve_world
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from hexbytes import HexBytes
from proxy_support import NODE_TROUBLE, NODE_TROUBLE_IDS, Answer, failing_node
from web3 import HTTPProvider
from world import DAY, FRESHNESS, World

from chain_client.errors import NodeUnavailable
from chain_client.models import CertificateStatus, Role
from chain_client.relay import DecodedTx, RelayRefused


@pytest.fixture
def api(world: World, tmp_path: Path) -> Iterator[Api]:
    yield from serve_world(world, tmp_path)


def unprotected(world: World, account: LocalAccount, to: str, data: str) -> bytes:
    """A legacy transaction signed with no chain id (v = 27/28), as before EIP-155."""
    w3 = world.chain.w3
    tx: dict[str, Any] = {
        "to": to,
        "data": data,
        "nonce": w3.eth.get_transaction_count(account.address),
        "gas": 300_000,
        "gasPrice": 2 * int(w3.eth.get_block("latest")["baseFeePerGas"]) + 10**9,
        "value": 0,
    }
    return bytes(account.sign_transaction(tx).raw_transaction)


def transfer_data(world: World, sender: str, to: str, certificate_id: int) -> str:
    fn = world.ledger.contract.get_function_by_signature("transferFrom(address,address,uint256)")
    return str(fn(sender, to, certificate_id)._encode_transaction_data())


def merge_data(world: World, from_id: int, to_id: int, value: int) -> str:
    fn = world.ledger.contract.get_function_by_signature("transferFrom(uint256,uint256,uint256)")
    return str(fn(from_id, to_id, value)._encode_transaction_data())


def test_transfer_split_merge_over_http(api: Api, world: World) -> None:
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    _, root = world.certificate_for()
    done = api.do("split", s1, {"certificateId": root, "values": [60_000_00, 40_000_00]})
    assert done["function"] == "split" and done["sender"] == s1.address
    part = next(int(e["args"]["certificateId"]) for e in done["events"] if e["name"] == "CertificateIssued")
    done = api.do("merge", s1, {"fromId": part, "toId": root, "value": 10_000_00})
    assert world.ledger.certificate(root).value == 70_000_00
    done = api.do("split-to", s1, {"certificateId": root, "to": s2.address, "value": 20_000_00})
    tier2 = next(int(e["args"]["certificateId"]) for e in done["events"] if e["name"] == "CertificateIssued")
    assert world.ledger.certificate(tier2).holder == s2.address
    done = api.do("transfer", s1, {"certificateId": part, "to": s2.address})
    assert done["events"][0]["name"] == "Transfer" and world.ledger.certificate(part).holder == s2.address
    # The index followed every write: the new holder reads them at once.
    held = api.get("/v1/certificates", s2).json()
    assert {c["certificateId"] for c in held["items"]} == {part, tier2}


def test_discount_offer_buy_and_cancel(api: Api, world: World) -> None:
    s1, factor = world.cast.supplier1, world.cast.factor
    _, root = world.certificate_for()
    expiry = world.pending_time() + DAY
    quote = api.client.get("/v1/quote", params={"face": 50_000_00, "days": 90, "annualRateBps": 600}).json()
    done = api.do(
        "offer-discount",
        s1,
        {
            "certificateId": root,
            "value": 50_000_00,
            "price": quote["price"],
            "expiry": expiry,
            "buyer": factor.address,
        },
    )
    offer_id = int(done["events"][-1]["args"]["offerId"])
    listed = api.get("/v1/offers", factor).json()
    assert [o["offerId"] for o in listed["items"]] == [offer_id]
    assert api.get(f"/v1/offers/{offer_id}", factor).json()["price"] == quote["price"]
    done = api.do("buy", factor, {"offerId": offer_id})
    sold = next(e for e in done["events"] if e["name"] == "DiscountSold")
    bought = int(sold["args"]["boughtCertificateId"])
    assert world.ledger.certificate(bought).holder == factor.address
    assert api.get("/v1/offers", factor).json()["total"] == 0
    # A second offer, cancelled by its seller.
    done = api.do(
        "offer-discount", s1, {"certificateId": root, "value": 100_00, "price": 90_00, "expiry": expiry}
    )
    second = int(done["events"][-1]["args"]["offerId"])
    api.do("cancel-offer", s1, {"offerId": second})
    assert not world.ledger.offer(second).open
    r = api.prepare("buy", factor, {"offerId": second})
    assert (r.status_code, r.json()["code"]) == (409, "OfferNotOpen")


def test_an_offer_reserved_for_a_non_factor_is_refused_at_prepare(api: Api, world: World) -> None:
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    _, root = world.certificate_for()
    body = {
        "certificateId": root,
        "value": 50_000_00,
        "price": 49_000_00,
        "expiry": world.pending_time() + DAY,
        "buyer": s2.address,
    }
    head = world.chain.w3.eth.block_number
    r = api.prepare("offer-discount", s1, body)
    assert (r.status_code, r.json()["code"]) == (422, "BuyerNotEligible"), r.text
    assert r.json()["fields"]["buyer"].lower() == s2.address.lower()
    assert world.chain.w3.eth.block_number == head


def test_issuer_opens_and_cancels_an_order(api: Api, world: World) -> None:
    issuer = world.cast.issuer
    api.do("approve-token", issuer, {"amount": 10**12})
    now = world.pending_time()
    body = {
        "payee": world.cast.supplier1.address,
        "amount": 1_000_00,
        "maturity": now + 30 * DAY,
        "invoice": "INV-HTTP-1",
        "warehouse": "WH-TEST-01",
        "goods": "brake disc BD-330",
        "expectedQuantity": 10,
        "deadline": now + DAY,
    }
    done = api.do("open-order", issuer, body)
    order_id = int(next(e for e in done["events"] if e["name"] == "OrderOpened")["args"]["orderId"])
    assert api.get(f"/v1/orders/{order_id}", issuer).json()["status"] == "OPEN"
    again = api.prepare("open-order", issuer, body)
    assert (again.status_code, again.json()["code"]) == (409, "DuplicateInvoice")
    early = api.prepare("cancel-order", issuer, {"orderId": order_id})
    assert (early.status_code, early.json()["code"]) == (409, "DeadlineNotPassed")
    assert "cancellableAfter" in early.json()["fields"]
    world.chain.advance_time(DAY + FRESHNESS + 60)
    api.do("cancel-order", issuer, {"orderId": order_id})
    assert api.get(f"/v1/orders/{order_id}", issuer).json()["status"] == "CANCELLED"


def test_gateway_confirms_receipt_with_a_signed_transaction(api: Api, world: World) -> None:
    order_id = world.open_order()
    observations, signatures = world.receipt(order_id, 1_000)
    body: dict[str, Any] = {
        "sender": world.cast.relayer.address,
        # In the wrong order on purpose: the service sorts them as the oracle requires.
        "observations": [o.to_json() for o in reversed(observations)],
        "signatures": ["0x" + s.hex() for s in reversed(signatures)],
    }
    prepare = "/v1/tx/prepare/confirm-receipt"
    too_few = api.client.post(
        prepare, json={**body, "observations": body["observations"][:1], "signatures": body["signatures"][:1]}
    )
    assert (too_few.status_code, too_few.json()["code"]) == (422, "SignatureCount")
    malformed = api.client.post(prepare, json={**body, "observations": [{"order_id": "one"}, {}]})
    assert (malformed.status_code, malformed.json()["code"]) == (422, "InvalidObservation")
    spaced = [{**body["observations"][0], "warehouse": "0x" + "ab" * 15 + " " + "ab" * 16 + " "}]
    whitespace = api.client.post(
        prepare, json={**body, "observations": spaced, "signatures": body["signatures"][:1]}
    )
    assert (whitespace.status_code, whitespace.json()["code"]) == (422, "InvalidObservation")  # was a 500
    unlisted = api.client.post(prepare, json={**body, "sender": world.cast.outsider.address})
    assert (unlisted.status_code, unlisted.json()["code"]) == (403, "RelayerNotAllowed")
    prepared = api.client.post(prepare, json=body)
    assert prepared.status_code == 200, prepared.text
    r = api.submit_raw(api.sign(world.cast.relayer, prepared.json()))
    assert r.status_code == 200, r.text
    assert r.json()["contract"] == "ReceiptOracle" and r.json()["function"] == "confirmReceipt"
    assert world.ledger.order(order_id).status.name == "CONFIRMED"


def test_freeze_settle_and_withdraw(api: Api, world: World) -> None:
    s1, regulator = world.cast.supplier1, world.cast.regulator
    order_id, root = world.certificate_for(maturity_in=10 * DAY)
    api.do("freeze", regulator, {"certificateId": root, "reason": "court order 17"})
    frozen = api.prepare("transfer", s1, {"certificateId": root, "to": world.cast.supplier2.address})
    assert (frozen.status_code, frozen.json()["code"]) == (409, "CertificateFrozen")
    api.do("unfreeze", regulator, {"certificateId": root})
    early = api.prepare("settle", s1, {"certificateIds": [root]})
    assert (early.status_code, early.json()["code"]) == (409, "CertificateNotMatured")
    world.chain.advance_time(11 * DAY)
    world.token.set_blocked(world.cast.admin, s1.address, True)  # the push fails: credited instead
    api.do("settle", s1, {"certificateIds": [root]})
    status = api.get(f"/v1/settlement/orders/{order_id}", s1).json()
    assert status["matured"] and status["settledCertificates"] == [root] and status["inEscrow"] == 0
    account = api.get("/v1/settlement/account", s1).json()
    assert account["credit"] == 100_000_00
    world.token.set_blocked(world.cast.admin, s1.address, False)
    api.do("withdraw", s1)
    assert api.get("/v1/settlement/account", s1).json()["credit"] == 0
    assert world.token.balance_of(s1.address) == 100_000_00
    nothing = api.prepare("withdraw", s1)
    assert (nothing.status_code, nothing.json()["code"]) == (409, "NothingToWithdraw")


# ---------------------------------------------------------------------- refusals


def test_refusals_change_nothing(api: Api, world: World) -> None:
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    _, root = world.certificate_for()
    ledger = world.ledger.address
    head, books = world.chain.w3.eth.block_number, world.balances()
    block_gas = int(world.chain.w3.eth.get_block("latest")["gasLimit"])
    cases: list[tuple[bytes, int, str]] = [
        # Not simulated: supplier2 may not read the certificate (the contract's IncorrectHolder would
        # name its holder), refused as GET /v1/certificates/{id} refuses it (tests/test_api_scope.py).
        (
            raw_tx(world, s2, ledger, transfer_data(world, s2.address, s1.address, root)),
            403,
            "Forbidden",
        ),
        # An unknown certificate, as the reads answer it.
        (
            raw_tx(world, s1, ledger, transfer_data(world, s1.address, s2.address, 999)),
            404,
            "NotFound",
        ),
        # Reverts in simulation: supplier1 reads the certificate, but a merge into itself is no job.
        (
            raw_tx(world, s1, ledger, merge_data(world, root, root, 1)),
            422,
            "SelfTransfer",
        ),
        # A contract this service does not relay to, and a function it does not relay.
        (raw_tx(world, s1, s2.address, "0x"), 422, "UnknownContract"),
        (
            raw_tx(
                world,
                s1,
                world.oracle.address,
                str(world.oracle.contract.functions.bindLedger(ledger)._encode_transaction_data()),
            ),
            422,
            "JobNotAllowed",
        ),
        # A supplier cannot freeze.
        (
            raw_tx(
                world,
                s1,
                ledger,
                str(
                    world.ledger.contract.functions.freeze(root, keccak(text="x"))._encode_transaction_data()
                ),
            ),
            403,
            "RoleRequired",
        ),
        # A token approval always succeeds: an account registered nowhere (or a supplier, which
        # never pays the ledger) may not relay one, or anyone could fill blocks through the service.
        *[
            (
                raw_tx(
                    world, who, world.token.address,
                    str(world.token.contract.functions.approve(ledger, 1)._encode_transaction_data()),
                ),
                403,
                "RoleRequired",
            )
            for who in (world.cast.outsider, s1)
        ],
        (
            raw_tx(world, s1, ledger, transfer_data(world, s1.address, s2.address, root), chainId=1),
            422,
            "WrongChain",
        ),
        (
            raw_tx(world, s1, ledger, transfer_data(world, s1.address, s2.address, root), value=1),
            422,
            "EtherNotAccepted",
        ),
        (
            raw_tx(world, s1, ledger, transfer_data(world, s1.address, s2.address, root), nonce=7),
            409,
            "NonceGap",
        ),
        (b"\x12\x34", 422, "MalformedTransaction"),
        # Signed without a chain id (pre-EIP-155): it would be valid on any chain.
        (unprotected(world, s1, ledger, transfer_data(world, s1.address, s2.address, root)), 422,
         "UnprotectedTransaction"),
        # Gas and fees no block would take, or that the job cannot run on.
        (raw_tx(world, s1, ledger, transfer_data(world, s1.address, s2.address, root), gas=block_gas + 1),
         422, "GasAboveBlockLimit"),
        (raw_tx(world, s1, ledger, transfer_data(world, s1.address, s2.address, root),
                maxFeePerGas=1, maxPriorityFeePerGas=1), 422, "FeeBelowBaseFee"),
        (raw_tx(world, s1, ledger, transfer_data(world, s1.address, s2.address, root), gas=30_000), 422,
         "SimulationFailed"),
        (raw_tx(world, s1, ledger, transfer_data(world, s1.address, s2.address, root), gas=21_000), 422,
         "SimulationFailed"),
    ]  # fmt: skip
    for raw, status, code in cases:
        r = api.submit_raw(raw)
        assert (r.status_code, r.json()["code"]) == (status, code), r.text
        assert set(r.json()) == {"code", "message", "fields"}
    # Prepared, the approval is refused as its submission is, not handed out to be refused later.
    r = api.prepare("approve-token", s1, {"amount": 1})
    assert (r.status_code, r.json()["code"]) == (403, "RoleRequired"), r.text
    assert world.chain.w3.eth.block_number == head
    assert world.balances() == books


def test_replayed_signed_transaction_is_refused(api: Api, world: World) -> None:
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    _, root = world.certificate_for()
    prepared = api.prepare("transfer", s1, {"certificateId": root, "to": s2.address}).json()
    raw = api.sign(s1, prepared)
    first = api.submit_raw(raw)
    assert first.status_code == 200
    head = world.chain.w3.eth.block_number
    r = api.submit_raw(raw)
    # A client that lost the first answer sends the same bytes again and gets it: the outcome of
    # this very transaction, mined once (D56), with nothing sent.
    assert r.status_code == 200, r.text
    assert r.json() == first.json()
    assert world.chain.w3.eth.block_number == head
    # Another transaction on a used nonce is refused the same way, but was not included.
    other = api.sign(s1, {**prepared, "gas": prepared["gas"] + 1})
    r = api.submit_raw(other)
    assert (r.status_code, r.json()["fields"]["included"]) == (409, False)


def test_a_mined_write_the_index_cannot_reach_in_time_is_still_a_success(
    world: World, tmp_path: Path
) -> None:
    """A lagging index must not turn a done write into an error that a client would retry (and so
    do twice): the answer says the write is mined and not yet indexed."""
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    _, root = world.certificate_for()
    index = str(tmp_path / "index.sqlite")
    syncing = build_api(world, tmp_path, index)  # made the index once, then stopped: a follower behind
    raw = syncing.sign(s1, syncing.prepare("transfer", s1, {"certificateId": root, "to": s2.address}).json())
    syncing.service.reader.db.close()
    # A worker that only reads the index its follower keeps (`serve --workers N`).
    api = build_api(world, tmp_path, index, index_follower=True, index_wait=0.2)
    r = api.submit_raw(raw)
    assert r.status_code == 200, r.text
    assert r.json()["indexed"] is False and r.json()["blockNumber"] == world.chain.w3.eth.block_number
    assert world.ledger.certificate(root).holder == s2.address


def test_a_node_failing_after_the_send_answers_outcome_unknown_with_the_hash(
    api: Api, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    _, root = world.certificate_for()
    raw = api.sign(s1, api.prepare("transfer", s1, {"certificateId": root, "to": s2.address}).json())
    real = api.service.system.tx.receipt

    def node_gone(tx_hash: str, timeout: float = 0.0) -> None:
        raise NodeUnavailable("http://node", "connection reset while waiting")

    monkeypatch.setattr(api.service.system.tx, "receipt", node_gone)
    r = api.submit_raw(raw)
    assert (r.status_code, r.json()["code"]) == (504, "OutcomeUnknown"), r.text
    tx_hash = r.json()["fields"]["txHash"]
    monkeypatch.setattr(api.service.system.tx, "receipt", real)
    # Sent: the same bytes again tell the client its outcome; a newly signed one would move it twice.
    again = api.submit_raw(raw)
    assert again.status_code == 200, again.text
    assert again.json()["txHash"] == tx_hash
    assert world.ledger.certificate(root).holder == s2.address


def test_an_access_list_is_charged_in_the_simulation(api: Api, world: World) -> None:
    """An access list costs intrinsic gas (2,400 an address): a transaction signed with the gas
    `prepare` estimated plus an access list runs out of gas on chain. The simulation charges it,
    so it is refused with nothing sent; with the gas to cover it, the same job goes through."""
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    _, root = world.certificate_for()
    prepared = api.prepare("transfer", s1, {"certificateId": root, "to": s2.address}).json()
    unsigned: dict[str, Any] = {k: v for k, v in prepared.items() if v is not None}
    access_list: Any = [
        {"address": "0x" + f"{i:040x}", "storageKeys": ["0x" + "00" * 32]} for i in range(1, 9)
    ]
    head, nonce = world.chain.w3.eth.block_number, world.chain.w3.eth.get_transaction_count(s1.address)
    short = bytes(s1.sign_transaction({**unsigned, "type": 2, "accessList": access_list}).raw_transaction)
    r = api.submit_raw(short)
    assert (r.status_code, r.json()["code"]) == (422, "SimulationFailed"), r.text
    assert world.chain.w3.eth.block_number == head
    assert world.chain.w3.eth.get_transaction_count(s1.address) == nonce
    assert world.ledger.certificate(root).holder == s1.address
    covered = {**unsigned, "type": 2, "accessList": access_list, "gas": prepared["gas"] + 8 * (2_400 + 1_900)}
    r = api.submit_raw(bytes(s1.sign_transaction(covered).raw_transaction))
    assert r.status_code == 200, r.text
    assert world.ledger.certificate(root).holder == s2.address


def test_a_transaction_mined_and_reverted_is_not_answered_like_a_refusal(
    api: Api, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state moves between the simulation and the block (a regulator freezes the certificate):
    the transaction is mined and reverts. The answer is 409 RevertedOnChain with the hash, block
    and gas spent, and the contract's error nested, not the refusal's 409 CertificateFrozen that
    would tell the client its nonce and gas were untouched."""
    s1, s2, regulator = world.cast.supplier1, world.cast.supplier2, world.cast.regulator
    _, root = world.certificate_for()
    raw = api.sign(s1, api.prepare("transfer", s1, {"certificateId": root, "to": s2.address}).json())
    relay = api.service.relay
    simulate = relay.simulate

    def then_frozen(tx: DecodedTx) -> None:
        simulate(tx)
        world.ledger.freeze(regulator, root, keccak(text="court order 18"))

    monkeypatch.setattr(relay, "simulate", then_frozen)
    nonce = world.chain.w3.eth.get_transaction_count(s1.address)
    r = api.submit_raw(raw)
    assert (r.status_code, r.json()["code"]) == (409, "RevertedOnChain"), r.text
    fields = r.json()["fields"]
    receipt = world.chain.w3.eth.get_transaction_receipt(HexBytes(keccak(raw)))
    assert receipt["status"] == 0
    assert fields["txHash"] == "0x" + keccak(raw).hex()
    assert (fields["blockNumber"], fields["gasUsed"]) == (receipt["blockNumber"], receipt["gasUsed"])
    assert fields["gasUsed"] > 21_000
    assert fields["error"]["code"] == "CertificateFrozen"
    assert fields["error"]["fields"]["certificateId"] == root
    assert set(fields["error"]) == {"code", "message", "fields"}
    assert world.chain.w3.eth.get_transaction_count(s1.address) == nonce + 1
    assert world.ledger.certificate(root).holder == s1.address
    monkeypatch.undo()
    # The same bytes again (a client that lost the answer): the same outcome, not a refusal that
    # would say only that the nonce is used, and nothing sent.
    head = world.chain.w3.eth.block_number
    again = api.submit_raw(raw)
    assert (again.status_code, again.json()["code"]) == (409, "RevertedOnChain"), again.text
    assert again.json() == r.json()
    assert world.chain.w3.eth.block_number == head


def test_bytes_mined_between_the_check_and_the_send_answer_their_outcome(
    api: Api, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same bytes sent twice at once: the second request's check passes, then the node refuses
    the used nonce. They are this very transaction, mined: the answer is its outcome."""
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    _, root = world.certificate_for()
    prepared = api.prepare("transfer", s1, {"certificateId": root, "to": s2.address}).json()
    raw = api.sign(s1, prepared)
    first = api.submit_raw(raw)
    assert first.status_code == 200, first.text
    relay = api.service.relay
    monkeypatch.setattr(relay, "_check_nonce", lambda tx: None)  # as if checked before it was mined
    monkeypatch.setattr(relay, "simulate", lambda tx: None)
    again = api.submit_raw(raw)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    # Another transaction on that nonce is not this one: refused, not included.
    r = api.submit_raw(api.sign(s1, {**prepared, "gas": prepared["gas"] + 1}))
    assert (r.status_code, r.json()["code"]) == (409, "NonceAlreadyUsed"), r.text
    assert r.json()["fields"]["included"] is False


def _counts(
    world: World, monkeypatch: pytest.MonkeyPatch, latest: list[int], pending: int, block: Any
) -> None:
    """The node's answers to the nonce check: the latest counts in turn, the pending count, the
    pending block (an exception to raise, or the block)."""
    eth = world.chain.w3.eth
    answers = iter(latest)

    def count(address: str, block_identifier: Any = "latest") -> int:
        return pending if block_identifier == "pending" else next(answers)

    def get_block(identifier: Any, full_transactions: bool = False) -> Any:
        if isinstance(block, Exception):
            raise block
        return block

    monkeypatch.setattr(eth, "get_transaction_count", count)
    monkeypatch.setattr(eth, "get_block", get_block)


def test_a_block_mined_during_the_pending_check_is_not_a_pending_transaction(
    api: Api, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nonces 5 and 6 pending when counted, mined by the time the pending block is read (so it lacks
    them): they are in the state the simulation runs on, not pending transactions it misses."""
    from chain_client.relay import decode_raw

    s1 = world.cast.supplier1
    tx = decode_raw(raw_tx(world, s1, world.ledger.address, "0x", nonce=7))
    relay = api.service.relay
    _counts(world, monkeypatch, [5, 7], 7, {"transactions": []})
    relay._check_nonce(tx)  # nothing pending any more: no refusal
    # Still pending and missing from the pending block: refused as before.
    _counts(world, monkeypatch, [5, 5], 7, {"transactions": []})
    with pytest.raises(RelayRefused) as refused:
        relay._check_nonce(tx)
    assert refused.value.code == "PendingTransaction"


def test_a_node_without_a_pending_block_is_a_pending_transaction_refusal(
    api: Api, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that answers null for the pending block (web3's BlockNotFound) does not show that it
    holds the sender's pending transactions: 409 PendingTransaction, not a 500."""
    from web3.exceptions import BlockNotFound

    s1, s2 = world.cast.supplier1, world.cast.supplier2
    _, root = world.certificate_for()
    prepared = api.prepare("transfer", s1, {"certificateId": root, "to": s2.address}).json()
    raw = api.sign(s1, {**prepared, "nonce": prepared["nonce"] + 1})
    nonce = prepared["nonce"]
    _counts(world, monkeypatch, [nonce] * 4, nonce + 1, BlockNotFound("Block with id: 'pending' not found."))
    r = api.submit_raw(raw)
    assert (r.status_code, r.json()["code"]) == (409, "PendingTransaction"), r.text


def test_pending_transactions_on_the_embedded_chain(
    api: Api, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With auto-mining off, eth-tester keeps sent transactions out of its pending nonce count and
    its pending block, so the simulation cannot see them: a sender with one pending is refused
    (409 PendingTransaction), a second transaction on its nonce is not taken for a replacement,
    and the same bytes sent again wait for their receipt rather than being refused."""
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    _, root = world.certificate_for()
    prepared = api.prepare("transfer", s1, {"certificateId": root, "to": s2.address}).json()
    first = api.sign(s1, prepared)
    same_nonce = api.sign(s1, {**prepared, "gas": prepared["gas"] + 1})
    next_nonce = api.sign(s1, {**prepared, "nonce": prepared["nonce"] + 1})
    tester = world.chain._tester
    monkeypatch.setattr(world.chain.settings, "receipt_timeout", 0.2)
    tester.disable_auto_mine_transactions()
    try:
        world.chain.w3.eth.send_raw_transaction(first)  # from the wallet, or another worker
        r = api.submit_raw(next_nonce)
        assert (r.status_code, r.json()["code"]) == (409, "PendingTransaction"), r.text
        assert r.json()["fields"]["pending"] == 1
        r = api.submit_raw(same_nonce)
        assert (r.status_code, r.json()["code"]) == (409, "NonceAlreadyUsed"), r.text
        assert r.json()["fields"]["included"] is False
        r = api.submit_raw(first)
        assert (r.status_code, r.json()["code"]) == (504, "ReceiptTimeout"), r.text
        assert r.json()["fields"]["txHash"] == "0x" + keccak(first).hex()
        assert [p["hash"] for p in tester._pending_transactions] == ["0x" + keccak(first).hex()]
    finally:
        tester.enable_auto_mine_transactions()  # mines what is pending
    assert world.ledger.certificate(root).holder == s2.address
    r = api.submit_raw(first)
    assert (r.status_code, r.json()["txHash"]) == (200, "0x" + keccak(first).hex()), r.text
    # Mined: the next nonce is simulated against it (no longer s1's).
    r = api.submit_raw(next_nonce)
    assert (r.status_code, r.json()["code"]) == (403, "IncorrectHolder"), r.text


@pytest.mark.parametrize("answer", NODE_TROUBLE, ids=NODE_TROUBLE_IDS)
def test_a_node_behind_a_failing_proxy_is_503(
    api: Api, world: World, monkeypatch: pytest.MonkeyPatch, answer: Answer
) -> None:
    """A node behind a proxy that is down (an HTTP error status), or one answering with a JSON-RPC
    error about itself: 503 NodeUnavailable with Retry-After for a write, a prepare (whose estimate
    is not a refusal: the transaction is not at fault) and a read, never a 500 or a 4xx."""
    s1, s2 = world.cast.supplier1, world.cast.supplier2
    _, root = world.certificate_for()
    raw = raw_tx(world, s1, world.ledger.address, transfer_data(world, s1.address, s2.address, root))
    headers = api.login(s1)
    with failing_node(answer) as url:
        monkeypatch.setattr(world.chain.w3, "provider", HTTPProvider(url))
        monkeypatch.setattr(api.service.reader, "_last", 0.0)  # the next read syncs first
        answers = {
            "submit": api.submit_raw(raw),
            # No id to check against the caller's scope: straight to the estimate.
            "prepare": api.client.post("/v1/tx/prepare/withdraw", headers=headers),
            "read": api.client.get("/v1/certificates", headers=headers),
        }
        monkeypatch.undo()
    for what, r in answers.items():
        assert (r.status_code, r.json()["code"]) == (503, "NodeUnavailable"), (what, r.text)
        assert r.headers["Retry-After"] == "5"
    assert world.ledger.certificate(root).holder == s1.address


def test_contract_error_at_prepare_carries_its_fields(api: Api, world: World) -> None:
    _, root = world.certificate_for()
    r = api.prepare("split", world.cast.supplier1, {"certificateId": root, "values": [100_000_00 - 50, 50]})
    assert r.status_code == 422
    assert r.json()["code"] == "SplitBelowMinimumUnit"
    assert r.json()["fields"] == {"certificateId": root, "part": 50, "minUnit": 100}
    bad = api.prepare("split", world.cast.supplier1, {"certificateId": 0, "values": [1]})
    assert (bad.status_code, bad.json()["code"]) == (422, "ValidationError")


def test_node_down_is_503_with_retry_after(api: Api, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    _, root = world.certificate_for()
    raw = raw_tx(
        world,
        world.cast.supplier1,
        world.ledger.address,
        transfer_data(world, world.cast.supplier1.address, world.cast.supplier2.address, root),
    )
    headers = api.login(world.cast.supplier1)

    def down(*_: object, **__: object) -> int:
        raise NodeUnavailable("http://node", "connection refused")

    monkeypatch.setattr(type(world.chain.w3.eth), "get_transaction_count", down)
    monkeypatch.setattr(api.service.reader, "_last", 0.0)
    monkeypatch.setattr(api.service.reader._indexer, "sync", down)
    for r in (api.submit_raw(raw), api.client.get("/v1/certificates", headers=headers)):
        assert (r.status_code, r.json()["code"]) == (503, "NodeUnavailable")
        assert r.headers["Retry-After"] == "5"
    monkeypatch.undo()
    assert world.ledger.certificate(root).holder == world.cast.supplier1.address
    assert world.ledger.certificate(root).status == CertificateStatus.LIVE


def test_an_orders_settlement_status_reads_the_indexs_clock_not_the_node(
    api: Api, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`matured` asked the node for its latest block on every read: a read that failed while the
    node was away, and a clock that could disagree with the one offers are judged by."""
    order, _ = world.certificate_for(maturity_in=10 * DAY)
    issuer = world.cast.issuer
    path = f"/v1/settlement/orders/{order}"
    api.service.reader.reach(world.chain.w3.eth.block_number)
    assert api.get(path, issuer).json()["matured"] is False
    world.chain.advance_time(11 * DAY)  # mines a block stamped past the maturity
    api.service.reader.reach(world.chain.w3.eth.block_number)
    assert api.get(path, issuer).json()["matured"] is True

    def down(*_: object, **__: object) -> Any:
        raise NodeUnavailable("http://node", "connection refused")

    monkeypatch.setattr(type(world.chain.w3.eth), "get_block", down)
    r = api.get(path, issuer)
    assert (r.status_code, r.json()["matured"]) == (200, True)


def test_operator_suspends_and_reinstates_over_http(api: Api, world: World) -> None:
    admin, s2 = world.cast.admin, world.cast.supplier2
    refused = api.prepare("suspend-participant", world.cast.supplier1, {"account": s2.address})
    assert refused.status_code == 403 and refused.json()["code"] == "AccountMissingRole"
    api.do("suspend-participant", admin, {"account": s2.address})
    assert not world.ledger.participant(s2.address).active
    nonce = api.client.post("/v1/auth/nonce", json={"address": s2.address}).json()["message"]
    signature = "0x" + bytes(s2.sign_message(encode_defunct(text=nonce)).signature).hex()
    r = api.client.post("/v1/auth/login", json={"message": nonce, "signature": signature})
    assert (r.status_code, r.json()["code"]) == (403, "ParticipantNotActive")
    again = api.prepare("suspend-participant", admin, {"account": s2.address})
    assert (again.status_code, again.json()["code"]) == (403, "ParticipantNotActive")
    api.do("reinstate-participant", admin, {"account": s2.address})
    assert api.get("/v1/auth/me", s2).json()["active"] is True


def test_an_operator_moves_what_its_holder_approved(api: Api, world: World) -> None:
    """An operator is out of a certificate's read scope until its holder approves it: then the
    move is prepared and relayed, and the contract's approval rules decide (D71)."""
    s1, s2, factor = world.cast.supplier1, world.cast.supplier2, world.cast.factor
    _, root = world.certificate_for()
    # Not approved: the certificate is none of the factor's business.
    r = api.prepare("split-to", factor, {"certificateId": root, "to": factor.address, "value": 1_000_00})
    assert (r.status_code, r.json()["code"]) == (403, "Forbidden")
    # Part of the value: a factor takes the part its allowance covers, no more.
    api.do("approve-value", s1, {"certificateId": root, "operator": factor.address, "value": 5_000_00})
    done = api.do("split-to", factor, {"certificateId": root, "to": factor.address, "value": 3_000_00})
    part = next(int(e["args"]["certificateId"]) for e in done["events"] if e["name"] == "CertificateIssued")
    assert world.ledger.certificate(part).holder == factor.address
    assert world.ledger.allowance(root, factor.address) == 2_000_00
    r = api.prepare("split-to", factor, {"certificateId": root, "to": factor.address, "value": 3_000_00})
    assert (r.status_code, r.json()["code"]) == (409, "InsufficientAllowance")
    assert r.json()["fields"]["allowance"] == 2_000_00
    # A merge into another certificate of the same holder: none of the factor's business to read,
    # but the holder's own, so the value the holder let it move may go there (the CLI could; the
    # API refused the destination). Another holder's certificate stays out of reach.
    value = world.ledger.certificate(root).value
    [kept], _ = world.ledger.split(s1, root, [value - 1_000_00, 1_000_00])
    elsewhere, _ = world.ledger.split_to(s1, root, s2.address, 1_000_00)
    api.service.reader.reach(world.chain.w3.eth.block_number)
    assert api.get(f"/v1/certificates/{kept}", factor).status_code == 403
    api.do("merge", factor, {"fromId": root, "toId": kept, "value": 1_000_00})
    assert world.ledger.certificate(kept).value == 2_000_00
    assert world.ledger.allowance(root, factor.address) == 1_000_00
    r = api.prepare("merge", factor, {"fromId": root, "toId": elsewhere, "value": 1_000_00})
    assert (r.status_code, r.json()["code"]) == (403, "Forbidden"), r.text
    # Reading the source is not moving it: supplier2 reads the root its part came from, but a
    # merge from it into the holder's other certificate is refused as unreadable, not answered
    # InsufficientAllowance, which would tell that the holder has that certificate.
    assert api.get(f"/v1/certificates/{root}", s2).status_code == 200
    r = api.prepare("merge", s2, {"fromId": root, "toId": kept, "value": 1_000_00})
    assert (r.status_code, r.json()["code"]) == (403, "Forbidden"), r.text
    # The whole certificate, approved for it alone: moved from its holder, named in `holder`.
    api.do("approve", s1, {"certificateId": root, "operator": s2.address})
    api.do("transfer", s2, {"certificateId": root, "to": s2.address, "holder": s1.address})
    assert world.ledger.certificate(root).holder == s2.address
    # Every certificate of a holder, until the approval is taken back.
    api.do("set-approval-for-all", s2, {"operator": s1.address, "approved": True})
    api.do("transfer", s1, {"certificateId": root, "to": s1.address, "holder": s2.address})
    api.do("set-approval-for-all", s2, {"operator": s1.address, "approved": False})
    assert not world.ledger.contract.functions.isApprovedForAll(s2.address, s1.address).call()
    # A past holder reads the certificate still, and the contract answers for its approval.
    r = api.prepare("transfer", s2, {"certificateId": root, "to": s2.address, "holder": s1.address})
    assert (r.status_code, r.json()["code"]) == (403, "NotApprovedOrHolder")
    assert world.ledger.certificate(root).holder == s1.address


def test_labels_and_their_hashes_name_the_same_record(api: Api, world: World) -> None:
    """An invoice, a warehouse or goods are given as a label (hashed on chain) or as the hash
    itself, as the reads show it: an invoice financed through the client is a duplicate over HTTP
    under its hash; hex-like text of the wrong length is refused, not hashed as a label."""
    issuer = world.cast.issuer
    invoice = world.fresh_label("INV")
    world.open_order(invoice=invoice)
    now = world.pending_time()
    body = {
        "payee": world.cast.supplier1.address,
        "amount": 1_000_00,
        "maturity": now + 30 * DAY,
        "invoice": "0x" + invoice.hex(),
        "warehouse": "0x" + world.warehouse.hex(),
        "goods": "brake disc BD-330",
        "expectedQuantity": 10,
        "deadline": now + DAY,
    }
    api.do("approve-token", issuer, {"amount": 10**12})
    for given in ("0x" + invoice.hex(), "0X" + invoice.hex().upper()):
        r = api.prepare("open-order", issuer, {**body, "invoice": given})
        assert (r.status_code, r.json()["code"]) == (409, "DuplicateInvoice"), given
        assert r.json()["fields"]["invoiceHash"] == "0x" + invoice.hex()
    done = api.do("open-order", issuer, {**body, "invoice": "INV-HTTP-LABEL"})
    opened = next(e for e in done["events"] if e["name"] == "OrderOpened")["args"]
    assert opened["invoiceHash"] == "0x" + keccak(text="INV-HTTP-LABEL").hex()
    assert world.ledger.order(int(opened["orderId"])).warehouse == world.warehouse
    for near_hex in (invoice.hex(), "0x" + invoice.hex()[:-1], "0x1234"):
        r = api.prepare("open-order", issuer, {**body, "invoice": near_hex})
        assert (r.status_code, r.json()["code"]) == (422, "ValidationError"), near_hex


def test_the_operator_administers_over_http(api: Api, world: World) -> None:
    admin, s2, regulator = world.cast.admin, world.cast.supplier2, world.cast.regulator
    api.do("set-roles", admin, {"account": s2.address, "roles": ["SUPPLIER", "FACTOR"]})
    assert world.ledger.participant(s2.address).roles == Role.SUPPLIER | Role.FACTOR
    api.do("set-issuer-limit", admin, {"account": world.cast.issuer.address, "limit": 7_000_000_00})
    assert world.ledger.participant(world.cast.issuer.address).issuer_limit == 7_000_000_00
    api.do("set-split-rules", admin, {"minSplitUnit": 50_00, "maxSplitDepth": 5})
    r = api.prepare("set-split-rules", s2, {"minSplitUnit": 1, "maxSplitDepth": 5})
    assert (r.status_code, r.json()["code"]) == (403, "AccountMissingRole")
    # The operator stops everything in an emergency (a regulator freezes certificates instead).
    _, root = world.certificate_for()
    assert api.prepare("pause", regulator).json()["code"] == "AccountMissingRole"
    api.do("pause", admin)
    r = api.prepare("split", world.cast.supplier1, {"certificateId": root, "values": [1_000_00, 49_000_00]})
    assert (r.status_code, r.json()["code"]) == (409, "SystemPaused")
    api.do("unpause", admin)
    assert not world.ledger.paused()
    # The oracle's enrolments.
    device = world.cast.devices[0].address
    warehouse = {
        "warehouse": "WH-HTTP-9",
        "devices": [{"address": device, "kind": 1}],
        "threshold": 1,
        "freshness": 600,
        "ranges": [{"kind": 1, "min": 1, "max": 1_000}],
    }
    api.do("register-warehouse", admin, warehouse)
    wh = world.oracle.warehouse(keccak(text="WH-HTTP-9"))
    assert (wh.active, wh.threshold, wh.freshness, wh.device_set_version) == (True, 1, 600, 1)
    api.do("rotate-devices", admin, {**warehouse, "freshness": 900})
    wh = world.oracle.warehouse(keccak(text="WH-HTTP-9"))
    assert (wh.freshness, wh.device_set_version) == (900, 2)
    api.do("set-relayer", admin, {"relayer": s2.address, "allowed": True})
    assert world.oracle.is_relayer(s2.address)
    api.do("deactivate-warehouse", admin, {"warehouse": "WH-HTTP-9"})
    assert not world.oracle.warehouse(keccak(text="WH-HTTP-9")).active
    r = api.prepare("deactivate-warehouse", admin, {"warehouse": "WH-HTTP-9"})
    assert (r.status_code, r.json()["code"]) == (404, "UnknownWarehouse")  # retired: as if never enrolled


def test_routing_answers_have_the_error_shape(api: Api) -> None:
    r = api.client.get("/v1/no-such-thing")
    assert r.status_code == 404
    assert r.json() == {"code": "NotFound", "message": "Not Found", "fields": {"path": "/v1/no-such-thing"}}
    r = api.client.delete("/v1/orders/1")
    assert (r.status_code, r.json()["code"]) == (405, "MethodNotAllowed")
    assert r.headers["allow"] == "GET"


def _offer_and_signed_cancel(api: Api, world: World, **terms: Any) -> tuple[int, bytes]:
    """supplier1's offer of part of a fresh certificate, and its cancel prepared and signed while
    the offer is open (a wallet that takes its time to send it)."""
    s1 = world.cast.supplier1
    _, root = world.certificate_for()
    offer, _ = world.ledger.offer_discount(
        s1, root, value=10_000_00, price=9_000_00, expiry=world.pending_time() + DAY, **terms
    )
    api.service.reader.reach(world.chain.w3.eth.block_number)
    prepared = api.prepare("cancel-offer", s1, {"offerId": offer})
    assert prepared.status_code == 200, prepared.text
    return offer, api.sign(s1, prepared.json())


def _bought(world: World, offer: int) -> dict[str, Any]:
    """The factor buys `offer` with its own wallet, not through the service (whose requests on the
    embedded chain wait for one another)."""
    factor = world.cast.factor
    world.token.approve(factor, world.ledger.address, 9_000_00)
    _, result = world.ledger.buy_discounted(factor, offer)
    return {"txHash": result.tx_hash, "blockNumber": result.block_number}


def test_cancelling_an_offer_sold_meanwhile_says_it_was_sold(api: Api, world: World) -> None:
    """The factor's buy is mined before the seller's cancel is sent: the cancel is refused with the
    contract's OfferNotOpen, and the answer says the offer was sold, and in which transaction."""
    s1 = world.cast.supplier1
    offer, cancel = _offer_and_signed_cancel(api, world)
    buy = _bought(world, offer)
    head = world.chain.w3.eth.block_number
    for r in (api.submit_raw(cancel), api.prepare("cancel-offer", s1, {"offerId": offer})):
        assert (r.status_code, r.json()["code"]) == (409, "OfferNotOpen"), r.text
        assert r.json()["fields"] == {
            "offerId": offer,
            "state": "sold",
            "closedTx": buy["txHash"],
            "closedBlock": buy["blockNumber"],
        }
        assert "sold" in r.json()["message"] and buy["txHash"] in r.json()["message"]
    assert world.chain.w3.eth.block_number == head  # refused: nothing sent


def test_cancelling_an_offer_twice_says_it_was_cancelled(api: Api, world: World) -> None:
    s1 = world.cast.supplier1
    offer, cancel = _offer_and_signed_cancel(api, world, buyer=world.cast.factor.address)
    done = api.submit_raw(cancel).json()
    r = api.prepare("cancel-offer", s1, {"offerId": offer})
    assert (r.status_code, r.json()["code"]) == (409, "OfferNotOpen"), r.text
    assert r.json()["fields"] == {
        "offerId": offer,
        "state": "cancelled",
        "closedTx": done["txHash"],
        "closedBlock": done["blockNumber"],
    }
    # The factor it was reserved for reads the offer, and hears the same of its buy.
    r = api.prepare("buy", world.cast.factor, {"offerId": offer})
    assert (r.json()["code"], r.json()["fields"]["state"]) == ("OfferNotOpen", "cancelled")


def test_a_cancel_mined_after_the_buy_says_the_offer_was_sold(
    api: Api, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The buy lands between the cancel's simulation and its block: 409 RevertedOnChain, with the
    contract's OfferNotOpen nested and what closed the offer."""
    offer, cancel = _offer_and_signed_cancel(api, world)
    relay = api.service.relay
    simulate = relay.simulate
    buys: list[dict[str, Any]] = []

    def then_bought(tx: DecodedTx) -> None:
        simulate(tx)
        buys.append(_bought(world, offer))

    monkeypatch.setattr(relay, "simulate", then_bought)
    r = api.submit_raw(cancel)
    assert (r.status_code, r.json()["code"]) == (409, "RevertedOnChain"), r.text
    [buy] = buys
    fields = r.json()["fields"]
    assert fields["txHash"] == "0x" + keccak(cancel).hex() and fields["blockNumber"] > buy["blockNumber"]
    assert fields["error"]["code"] == "OfferNotOpen"
    assert fields["error"]["fields"] == {
        "offerId": offer,
        "state": "sold",
        "closedTx": buy["txHash"],
        "closedBlock": buy["blockNumber"],
    }
