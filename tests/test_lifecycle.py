"""The whole lifecycle through the Python client on the embedded chain: each step's books and events."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
from eth_utils import keccak
from rich.console import Console
from world import (
    DAY,
    DEFAULT_AMOUNT,
    DEFAULT_QUANTITY,
    FRESHNESS,
    ISSUER_FUNDS,
    ISSUER_LIMIT,
    MAX_SPLIT_DEPTH,
    MIN_SPLIT_UNIT,
    YUAN,
    Cast,
    CertBook,
    OfferBook,
    OrderBook,
    World,
    check_demo_end_state,
)

from chain_client import errors
from chain_client.chain import connect
from chain_client.demo import run_demo
from chain_client.ledger import LedgerClient, LineageNode
from chain_client.models import CertificateStatus, OrderStatus, Role
from chain_client.pricing import discount_price, implied_annual_rate_bps
from chain_client.receipts import ReceiptOracleClient, label_hash, recover_observation_signer
from chain_client.settings import Settings
from chain_client.token import SettlementTokenClient
from chain_client.transactions import TxResult


def block_time(world: World, result: TxResult) -> int:
    return int(world.chain.w3.eth.get_block(result.block_number)["timestamp"])


def token_transfers(world: World, result: TxResult) -> list[tuple[str, str, int]]:
    """(from, to, amount) of the settlement token's Transfer events in a transaction."""
    return [
        (e["from"], e["to"], int(e["value"]))
        for e in result.all("Transfer")
        if e.address == world.token.address
    ]


def shape(node: LineageNode) -> tuple[int, list[Any]]:
    """A lineage tree as nested (id, children) tuples."""
    return (node.certificate.certificate_id, [shape(k) for k in node.children])


# ---------------------------------------------------------------------- the fixture itself


def test_each_test_starts_from_the_set_up_state(world: World, ledger: LedgerClient, cast: Cast) -> None:
    assert ledger.counts() == (0, 0, 0)
    assert ledger.split_rules() == (MIN_SPLIT_UNIT, MAX_SPLIT_DEPTH)
    assert not ledger.paused()
    assert world.token.balance_of(cast.issuer.address) == ISSUER_FUNDS
    assert ledger.participant(cast.issuer.address).issuer_limit == ISSUER_LIMIT
    assert ledger.participant(cast.supplier1.address).roles == Role.SUPPLIER
    assert world.oracle.warehouse(world.warehouse).device_set_version == 1
    # Leave something behind: the next test must not see it.
    world.certificate_for()


def test_each_test_starts_from_the_set_up_state_again(world: World, ledger: LedgerClient) -> None:
    assert ledger.counts() == (0, 0, 0)


def test_the_snapshot_helper_reads_what_the_client_reads(
    world: World, ledger: LedgerClient, cast: Cast
) -> None:
    """world.balances() decodes views itself (for speed); it must agree with the client."""
    _, root_id = world.certificate_for()
    ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, 10_000 * YUAN)
    ledger.offer_discount(
        cast.supplier1, root_id, value=1_000 * YUAN, price=990 * YUAN, expiry=world.chain.now() + DAY
    )
    world.open_order(amount=5_000 * YUAN)
    state = world.balances()
    assert state.counts == ledger.counts() == (2, 2, 1)
    for i, book in state.orders.items():
        o = ledger.order(i)
        assert book == OrderBook(
            o.status, o.escrowed, o.paid, o.refunded, o.delivered_quantity, o.root_certificate_id
        )
    for i, cert in state.certificates.items():
        c = ledger.certificate(i)
        assert cert == CertBook(c.holder, c.value, c.status, c.frozen, c.depth, c.parent_id, c.order_id)
    f = ledger.offer(1)
    assert state.offers[1] == OfferBook(f.open, f.seller, f.buyer, f.value, f.price)
    for name, address in cast.parties().items():
        assert state.tokens[name] == world.token.balance_of(address)
        assert state.credits[name] == ledger.credit(address)
    assert state.tokens["ledger"] == world.token.balance_of(ledger.address)
    assert state.outstanding["issuer"] == ledger.participant(cast.issuer.address).outstanding
    assert state.total_credits == ledger.total_credits() and state.paused == ledger.paused()


# ---------------------------------------------------------------------- the chain's clock


@pytest.mark.parametrize("seconds", [3_600, 1, 0])
def test_advance_time_moves_the_clock_by_the_seconds_given(world: World, seconds: int) -> None:
    """Chain.advance_time: "Moves chain time forward by `seconds` and mines a block; returns the
    new timestamp" (and only negative values are refused). On anvil it does (test_anvil.py)."""
    chain = world.chain
    before, block = chain.now(), chain.w3.eth.block_number
    after = chain.advance_time(seconds)
    assert after == chain.now()
    assert chain.w3.eth.block_number == block + 1
    assert after >= before + seconds
    with pytest.raises(ValueError):
        chain.advance_time(-1)


def test_advance_time_after_the_chain_sat_idle() -> None:
    """eth-tester stamps the next block with the wall clock once that is ahead of the chain, so a
    chain that sat idle has its pending block already in the future. advance_time must still move
    time forward by at least `seconds` (here it asks for less than the idle gap)."""
    chain = connect(Settings())
    chain.new_account()  # a block
    while time.time() < chain.now() + 4:  # idle until the wall clock is well past the last block
        time.sleep(0.1)
    chain.new_account()  # the block after it; the one after that follows the wall clock
    before, block = chain.now(), chain.w3.eth.block_number
    assert int(chain.w3.eth.get_block("pending")["timestamp"]) >= before + 3
    after = chain.advance_time(1)
    assert chain.w3.eth.block_number == block + 1
    assert after == chain.now() >= before + 1


# ---------------------------------------------------------------------- orders and receipts


def test_open_order_escrows_the_amount(world: World, ledger: LedgerClient, cast: Cast) -> None:
    token = world.token
    invoice = world.fresh_label("INV")
    now = world.pending_time()
    order_id, result = ledger.open_order(
        cast.issuer,
        payee=cast.supplier1.address,
        amount=DEFAULT_AMOUNT,
        maturity=now + 90 * DAY,
        invoice_hash=invoice,
        warehouse=world.warehouse,
        goods_hash=world.goods,
        expected_quantity=DEFAULT_QUANTITY,
        deadline=now + 14 * DAY,
    )
    assert order_id == 1
    opened = result.event("OrderOpened")
    assert opened["issuer"] == cast.issuer.address
    assert opened["payee"] == cast.supplier1.address
    assert opened["escrowed"] == DEFAULT_AMOUNT
    assert opened["invoiceHash"] == invoice
    assert opened["expectedQuantity"] == DEFAULT_QUANTITY

    order = ledger.order(order_id)
    assert order.status == OrderStatus.OPEN
    assert (order.escrowed, order.paid, order.refunded, order.in_escrow) == (
        DEFAULT_AMOUNT,
        0,
        0,
        DEFAULT_AMOUNT,
    )
    assert (order.issuer, order.payee) == (cast.issuer.address, cast.supplier1.address)
    assert (order.maturity, order.deadline) == (now + 90 * DAY, now + 14 * DAY)
    assert order.root_certificate_id == 0
    assert ledger.invoice_used(invoice)
    assert token.balance_of(cast.issuer.address) == ISSUER_FUNDS - DEFAULT_AMOUNT
    assert token.balance_of(ledger.address) == DEFAULT_AMOUNT
    assert ledger.participant(cast.issuer.address).outstanding == DEFAULT_AMOUNT


def test_confirm_full_delivery_mints_the_root_to_the_payee(
    world: World, ledger: LedgerClient, oracle: ReceiptOracleClient, cast: Cast
) -> None:
    order_id = world.open_order()
    observations, signatures = world.receipt(order_id, DEFAULT_QUANTITY)
    # The client's EIP-712 encoding is the contract's, and each device signed its own reading.
    chain_id = world.chain.chain_id
    for obs, signature in zip(observations, signatures, strict=True):
        assert oracle.observation_digest(obs) == obs.digest(chain_id, oracle.address)
        assert recover_observation_signer(signature, obs, chain_id, oracle.address) == obs.device
    assert {o.device for o in observations} == {d.address for d in cast.devices[:2]}

    root_id, result = oracle.confirm_receipt(cast.relayer, observations, signatures)

    confirmed = result.event("OrderConfirmed")
    assert (confirmed["orderId"], confirmed["rootCertificateId"]) == (order_id, root_id)
    assert (confirmed["face"], confirmed["refunded"]) == (DEFAULT_AMOUNT, 0)
    assert confirmed["deliveredQuantity"] == DEFAULT_QUANTITY
    attested = result.event("ReceiptAttested")
    ordered = sorted(observations, key=lambda o: int(o.device, 16))
    assert attested["digest"] == keccak(b"".join(oracle.observation_digest(o) for o in ordered))
    assert list(attested["signers"]) == [o.device for o in ordered]
    assert (attested["quantity"], attested["receivedAt"]) == (DEFAULT_QUANTITY, observations[0].observed_at)
    accepted = result.all("ObservationAccepted")
    assert [(a["device"], a["sequence"], a["value"]) for a in accepted] == [
        (o.device, o.sequence, o.value) for o in ordered
    ]
    assert all(oracle.sequence_used(o.device, o.sequence) for o in observations)

    root = ledger.certificate(root_id)
    assert root.holder == cast.supplier1.address
    assert (root.value, root.depth, root.parent_id, root.order_id) == (DEFAULT_AMOUNT, 0, 0, order_id)
    assert root.status == CertificateStatus.LIVE and not root.frozen
    order = ledger.order(order_id)
    assert order.status == OrderStatus.CONFIRMED
    assert (order.root_certificate_id, order.delivered_quantity) == (root_id, DEFAULT_QUANTITY)
    assert (order.paid, order.refunded) == (0, 0)
    assert ledger.participant(cast.supplier1.address).certificate_count == 1
    # Nothing paid yet: the escrow waits for maturity.
    assert world.token.balance_of(ledger.address) == DEFAULT_AMOUNT
    assert token_transfers(world, result) == []


def test_short_delivery_refunds_the_undelivered_share(world: World, ledger: LedgerClient, cast: Cast) -> None:
    token = world.token
    amount, expected, delivered = 99_999 * YUAN + 99, 1_000, 333
    order_id = world.open_order(amount=amount, expected_quantity=expected)
    issuer_before = token.balance_of(cast.issuer.address)
    root_id, result = world.oracle.confirm_receipt(cast.relayer, *world.receipt(order_id, delivered))

    face = amount * delivered // expected
    refund = amount - face
    assert refund > 0
    confirmed = result.event("OrderConfirmed")
    assert (confirmed["face"], confirmed["refunded"]) == (face, refund)
    assert ledger.certificate(root_id).value == face
    order = ledger.order(order_id)
    assert (order.refunded, order.paid, order.delivered_quantity) == (refund, 0, delivered)
    assert token.balance_of(cast.issuer.address) == issuer_before + refund
    assert token.balance_of(ledger.address) == face
    assert ledger.participant(cast.issuer.address).outstanding == face
    assert token_transfers(world, result) == [(ledger.address, cast.issuer.address, refund)]


def test_over_delivery_is_not_the_issuers_debt(world: World, ledger: LedgerClient) -> None:
    order_id = world.open_order(expected_quantity=100)
    root_id = world.confirm(order_id, 150)
    assert ledger.certificate(root_id).value == DEFAULT_AMOUNT
    order = ledger.order(order_id)
    assert (order.delivered_quantity, order.refunded) == (150, 0)


def test_confirm_with_all_three_devices(world: World, ledger: LedgerClient) -> None:
    order_id = world.open_order()
    root_id = world.confirm(order_id, DEFAULT_QUANTITY, devices=(0, 1, 2))
    assert ledger.certificate(root_id).value == DEFAULT_AMOUNT


def test_pay_on_receipt_pays_the_payee_in_the_confirm_transaction(
    world: World, ledger: LedgerClient, cast: Cast
) -> None:
    token = world.token
    order_id = world.open_order(maturity_in=0, expected_quantity=10)
    supplier_before = token.balance_of(cast.supplier1.address)
    issuer_before = token.balance_of(cast.issuer.address)
    root_id, result = world.oracle.confirm_receipt(cast.relayer, *world.receipt(order_id, 8))

    face = DEFAULT_AMOUNT * 8 // 10
    refund = DEFAULT_AMOUNT - face
    settled = result.event("CertificateSettled")
    assert (settled["certificateId"], settled["holder"], settled["value"]) == (
        root_id,
        cast.supplier1.address,
        face,
    )
    assert sorted(token_transfers(world, result)) == sorted(
        [(ledger.address, cast.issuer.address, refund), (ledger.address, cast.supplier1.address, face)]
    )
    assert token.balance_of(cast.supplier1.address) == supplier_before + face
    assert token.balance_of(cast.issuer.address) == issuer_before + refund
    assert token.balance_of(ledger.address) == 0
    order = ledger.order(order_id)
    assert (order.paid, order.refunded, order.in_escrow) == (face, refund, 0)
    assert ledger.certificate(root_id).status == CertificateStatus.SETTLED
    assert ledger.participant(cast.issuer.address).outstanding == 0


# ---------------------------------------------------------------------- moving certificates


def test_split_to_a_new_holder(world: World, ledger: LedgerClient, cast: Cast) -> None:
    order_id, root_id = world.certificate_for()
    part = 30_000 * YUAN
    new_id, result = ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, part)

    issued = result.event("CertificateIssued")
    assert (issued["certificateId"], issued["parentId"], issued["orderId"]) == (new_id, root_id, order_id)
    assert (issued["holder"], issued["depth"]) == (cast.supplier2.address, 1)
    moved = result.event("TransferValue")
    assert (moved["_fromTokenId"], moved["_toTokenId"], moved["_value"]) == (root_id, new_id, part)
    new = ledger.certificate(new_id)
    root = ledger.certificate(root_id)
    assert (new.holder, new.value, new.depth, new.parent_id) == (cast.supplier2.address, part, 1, root_id)
    assert (new.order_id, new.maturity) == (order_id, root.maturity)
    assert root.value == DEFAULT_AMOUNT - part
    assert root.holder == cast.supplier1.address
    assert ledger.participant(cast.supplier2.address).certificate_count == 1


def test_certificate_issued_events_carry_the_value_of_a_split(
    world: World, ledger: LedgerClient, cast: Cast
) -> None:
    """ICertificateLedger: CertificateIssued says the certificate "was created for `holder` with
    `value`", and DESIGN.md wants every event to carry what is needed to rebuild state from logs.
    A root's event does; a split's (split_to, split, partial discount sale) must too."""
    _, root_id = world.certificate_for()
    root_issued = ledger.contract.events.CertificateIssued.get_logs(from_block=0)
    assert [int(e["args"]["value"]) for e in root_issued] == [DEFAULT_AMOUNT]

    new_id, by_split_to = ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, 30_000 * YUAN)
    new_ids, by_split = ledger.split(cast.supplier1, root_id, [50_000 * YUAN, 20_000 * YUAN])
    offer_id, _ = ledger.offer_discount(
        cast.supplier1, root_id, value=10_000 * YUAN, price=9_900 * YUAN, expiry=world.chain.now() + DAY
    )
    bought_id, by_sale = ledger.buy_discounted(cast.factor, offer_id)

    emitted = {
        int(e["certificateId"]): int(e["value"])
        for r in (by_split_to, by_split, by_sale)
        for e in r.all("CertificateIssued")
    }
    on_chain = {i: ledger.certificate(i).value for i in (new_id, *new_ids, bought_id)}
    assert on_chain == {new_id: 30_000 * YUAN, new_ids[0]: 20_000 * YUAN, bought_id: 10_000 * YUAN}
    assert emitted == on_chain


def test_split_into_parts_kept_by_the_holder(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    values = [50_000 * YUAN, 30_000 * YUAN, 20_000 * YUAN]
    new_ids, _ = ledger.split(cast.supplier1, root_id, values)

    assert len(new_ids) == 2
    certs = [ledger.certificate(i) for i in [root_id, *new_ids]]
    assert [c.value for c in certs] == values
    assert all(c.holder == cast.supplier1.address for c in certs)
    assert [c.parent_id for c in certs] == [0, root_id, root_id]
    assert [c.depth for c in certs] == [0, 1, 1]
    assert ledger.participant(cast.supplier1.address).certificate_count == 3


def test_certificates_of_an_order_within_a_block_range(
    world: World, ledger: LedgerClient, cast: Cast
) -> None:
    order_id, root_id = world.certificate_for()
    root_block = world.chain.w3.eth.block_number
    (part_id,), _ = ledger.split(cast.supplier1, root_id, [60_000 * YUAN, 40_000 * YUAN])
    split_block = world.chain.w3.eth.block_number
    assert ledger.certificate_ids_of_order(order_id) == [root_id, part_id]
    assert ledger.certificate_ids_of_order(order_id, to_block=root_block) == [root_id]
    assert ledger.certificate_ids_of_order(order_id, root_block + 1, split_block) == [part_id]
    assert ledger.certificate_ids_of_order(order_id, split_block + 1) == []


def test_merge_moves_value_within_an_order(world: World, ledger: LedgerClient, cast: Cast) -> None:
    order_id, root_id = world.certificate_for()
    (part_id,), _ = ledger.split(cast.supplier1, root_id, [60_000 * YUAN, 40_000 * YUAN])
    ledger.merge(cast.supplier1, part_id, root_id, 15_000 * YUAN)
    assert (ledger.certificate(root_id).value, ledger.certificate(part_id).value) == (
        75_000 * YUAN,
        25_000 * YUAN,
    )
    result = ledger.merge(cast.supplier1, part_id, root_id)  # the rest
    moved = result.event("TransferValue")
    assert (moved["_fromTokenId"], moved["_toTokenId"], moved["_value"]) == (part_id, root_id, 25_000 * YUAN)
    assert ledger.certificate(root_id).value == DEFAULT_AMOUNT
    assert ledger.certificate(part_id).value == 0
    live = [c for c in ledger.certificates_of_order(order_id) if c.status == CertificateStatus.LIVE]
    assert sum(c.value for c in live) == DEFAULT_AMOUNT


def test_merge_into_another_holders_certificate(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    theirs, _ = ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, 10_000 * YUAN)
    ledger.merge(cast.supplier1, root_id, theirs, 5_000 * YUAN)
    assert ledger.certificate(theirs).value == 15_000 * YUAN
    assert ledger.certificate(theirs).holder == cast.supplier2.address
    assert ledger.certificate(root_id).value == 85_000 * YUAN


def test_whole_transfer(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    result = ledger.transfer(cast.supplier1, root_id, cast.supplier2.address)
    moved = [e for e in result.all("Transfer") if e.address == ledger.address]
    assert [(e["from"], e["to"], e["tokenId"]) for e in moved] == [
        (cast.supplier1.address, cast.supplier2.address, root_id)
    ]
    cert = ledger.certificate(root_id)
    assert (cert.holder, cert.value) == (cast.supplier2.address, DEFAULT_AMOUNT)
    assert ledger.participant(cast.supplier1.address).certificate_count == 0
    assert ledger.participant(cast.supplier2.address).certificate_count == 1
    assert ledger.contract.functions.ownerOf(root_id).call() == cast.supplier2.address


def test_whole_approval_lets_an_operator_transfer_once(
    world: World, ledger: LedgerClient, cast: Cast
) -> None:
    _, root_id = world.certificate_for()
    ledger.approve(cast.supplier1, cast.factor.address, root_id)
    assert ledger.contract.functions.getApproved(root_id).call() == cast.factor.address
    ledger.transfer(cast.factor, root_id, cast.supplier2.address)
    assert ledger.certificate(root_id).holder == cast.supplier2.address
    # The approval was keyed to the previous holding: it does not survive the transfer.
    assert ledger.contract.functions.getApproved(root_id).call() == "0x" + "00" * 20


def test_value_approval_lets_an_operator_split(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    allowance = 20_000 * YUAN
    result = ledger.approve_value(cast.supplier1, root_id, cast.supplier2.address, allowance)
    approved = result.event("ApprovalValue")
    assert (approved["_tokenId"], approved["_operator"], approved["_value"]) == (
        root_id,
        cast.supplier2.address,
        allowance,
    )
    new_id, _ = ledger.split_to(cast.supplier2, root_id, cast.supplier2.address, 15_000 * YUAN)
    assert ledger.certificate(new_id).holder == cast.supplier2.address
    assert ledger.certificate(root_id).value == DEFAULT_AMOUNT - 15_000 * YUAN
    assert ledger.contract.functions.allowance(root_id, cast.supplier2.address).call() == 5_000 * YUAN
    ledger.merge(cast.supplier2, root_id, new_id, 5_000 * YUAN)
    assert ledger.contract.functions.allowance(root_id, cast.supplier2.address).call() == 0
    assert ledger.certificate(new_id).value == 20_000 * YUAN


# ---------------------------------------------------------------------- discount sales


def test_quote_equals_the_python_pricing(ledger: LedgerClient) -> None:
    for face, days, rate in [
        (100_000, 90, 600),
        (1, 1, 1),
        (10**20, 365, 10_000),
        (12345, 0, 600),
        (999, 30, 0),
    ]:
        assert ledger.quote(face, days, rate) == discount_price(face, days, rate)


def test_discount_sale_of_a_whole_certificate(world: World, ledger: LedgerClient, cast: Cast) -> None:
    token = world.token
    _, root_id = world.certificate_for()
    cert = ledger.certificate(root_id)
    days_left = (cert.maturity - world.chain.now()) // DAY
    price = discount_price(cert.value, days_left, 600)
    assert ledger.quote(cert.value, days_left, 600) == price
    offer_id, offered = ledger.offer_discount(
        cast.supplier1,
        root_id,
        value=cert.value,
        price=price,
        expiry=world.chain.now() + DAY,
        buyer=cast.factor.address,
    )
    assert offered.event("DiscountOffered")["price"] == price
    offer = ledger.offer(offer_id)
    assert (offer.open, offer.seller, offer.buyer, offer.value, offer.price) == (
        True,
        cast.supplier1.address,
        cast.factor.address,
        cert.value,
        price,
    )
    seller_before = token.balance_of(cast.supplier1.address)
    factor_before = token.balance_of(cast.factor.address)

    bought_id, result = ledger.buy_discounted(cast.factor, offer_id)

    assert bought_id == root_id
    assert ledger.certificate(root_id).holder == cast.factor.address
    assert token.balance_of(cast.supplier1.address) == seller_before + price
    assert token.balance_of(cast.factor.address) == factor_before - price
    assert token.balance_of(ledger.address) == DEFAULT_AMOUNT  # the escrow is untouched
    sold = result.event("DiscountSold")
    assert (sold["seller"], sold["buyer"], sold["value"], sold["price"]) == (
        cast.supplier1.address,
        cast.factor.address,
        cert.value,
        price,
    )
    expected_rate = implied_annual_rate_bps(cert.value, price, cert.maturity - block_time(world, result))
    assert sold["annualRateBps"] == expected_rate
    # The price was quoted for whole days left; the sale happens a little before that.
    assert 580 <= expected_rate <= 600
    assert not ledger.offer(offer_id).open


def test_an_approval_is_sent_only_for_a_payment_the_ledger_would_take(
    world: World, ledger: LedgerClient, cast: Cast
) -> None:
    """`ensure_allowance(check=...)` simulates the paying transaction first: a request the ledger
    refuses anyway (an unknown warehouse, an offer already sold) or the payer cannot fund sends
    no approval and leaves none behind; one missing only the allowance gets it."""
    token = world.token
    _, root_id = world.certificate_for()
    value = ledger.certificate(root_id).value
    offer_id, _ = ledger.offer_discount(
        cast.supplier1, root_id, value=value, price=value - 1, expiry=world.chain.now() + DAY
    )
    for payer in (cast.issuer, cast.factor):
        token.approve(payer, ledger.address, 0)
    now = world.pending_time()
    terms: dict[str, Any] = {
        "payee": cast.supplier1.address,
        "amount": DEFAULT_AMOUNT,
        "maturity": now + 90 * DAY,
        "invoice_hash": world.fresh_label("INV"),
        "warehouse": label_hash("no such warehouse"),
        "goods_hash": world.goods,
        "expected_quantity": DEFAULT_QUANTITY,
        "deadline": now + 14 * DAY,
    }
    issuer, factor = cast.issuer.address, cast.factor.address

    def order_check() -> None:
        ledger.check_open_order(issuer, **terms)

    def buy_check() -> None:
        ledger.check_buy_discounted(factor, offer_id)

    nonce = world.chain.w3.eth.get_transaction_count(issuer)
    with pytest.raises(errors.UnknownWarehouse):
        token.ensure_allowance(
            cast.issuer,
            ledger.address,
            DEFAULT_AMOUNT,
            check=order_check,
        )
    balance = token.balance_of(issuer)
    with pytest.raises(errors.ERC20InsufficientBalance) as short:
        token.ensure_allowance(cast.issuer, ledger.address, balance + 1, check=order_check)
    assert (short.value.balance, short.value.needed) == (balance, balance + 1)
    assert world.chain.w3.eth.get_transaction_count(issuer) == nonce  # nothing sent
    assert token.allowance(issuer, ledger.address) == 0

    terms["warehouse"] = world.warehouse
    approval = token.ensure_allowance(cast.issuer, ledger.address, DEFAULT_AMOUNT, check=order_check)
    assert approval is not None and token.allowance(issuer, ledger.address) == DEFAULT_AMOUNT
    ledger.open_order(cast.issuer, **terms)

    approval = token.ensure_allowance(cast.factor, ledger.address, value - 1, check=buy_check)
    assert approval is not None
    ledger.buy_discounted(cast.factor, offer_id)
    with pytest.raises(errors.OfferNotOpen):  # sold: buying it again is refused before approving
        token.ensure_allowance(
            cast.factor,
            ledger.address,
            value - 1,
            check=buy_check,
        )
    assert token.allowance(factor, ledger.address) == 0


def test_discount_sale_of_part_of_a_certificate(world: World, ledger: LedgerClient, cast: Cast) -> None:
    token = world.token
    order_id, root_id = world.certificate_for()
    face = 40_000 * YUAN
    price = discount_price(face, 60, 800)
    offer_id, _ = ledger.offer_discount(
        cast.supplier1, root_id, value=face, price=price, expiry=world.chain.now() + DAY
    )
    seller_before = token.balance_of(cast.supplier1.address)

    bought_id, result = ledger.buy_discounted(cast.factor, offer_id)

    assert bought_id != root_id
    bought = ledger.certificate(bought_id)
    assert (bought.holder, bought.value, bought.parent_id, bought.order_id) == (
        cast.factor.address,
        face,
        root_id,
        order_id,
    )
    assert ledger.certificate(root_id).value == DEFAULT_AMOUNT - face
    assert token.balance_of(cast.supplier1.address) == seller_before + price
    sold = result.event("DiscountSold")
    assert (sold["certificateId"], sold["boughtCertificateId"]) == (root_id, bought_id)
    assert sold["annualRateBps"] == implied_annual_rate_bps(
        face, price, bought.maturity - block_time(world, result)
    )


def test_a_seller_may_withdraw_an_offer(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    offer_id, _ = ledger.offer_discount(
        cast.supplier1, root_id, value=1_000, price=900, expiry=world.chain.now() + DAY
    )
    result = ledger.cancel_offer(cast.supplier1, offer_id)
    assert result.event("DiscountOfferCancelled")["offerId"] == offer_id
    assert not ledger.offer(offer_id).open


# ---------------------------------------------------------------------- regulator


def test_freeze_and_unfreeze(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    reason = label_hash("KYC refresh")
    result = ledger.freeze(cast.regulator, root_id, reason)
    imposed = result.event("FreezeImposed")
    assert (imposed["certificateId"], imposed["regulator"], imposed["reason"]) == (
        root_id,
        cast.regulator.address,
        reason,
    )
    assert ledger.certificate(root_id).frozen
    lifted = ledger.unfreeze(cast.regulator, root_id).event("FreezeLifted")
    assert (lifted["certificateId"], lifted["regulator"]) == (root_id, cast.regulator.address)
    assert not ledger.certificate(root_id).frozen
    ledger.transfer(cast.supplier1, root_id, cast.supplier2.address)
    assert ledger.certificate(root_id).holder == cast.supplier2.address


# ---------------------------------------------------------------------- cancel, settle, withdraw


def test_cancel_after_the_deadline_refunds_the_escrow(world: World, ledger: LedgerClient, cast: Cast) -> None:
    token = world.token
    order_id = world.open_order(deadline_in=DAY)
    # Cancellable once a receipt made by the deadline can no longer arrive (it would be stale).
    world.chain.advance_time(DAY + FRESHNESS + 10)
    result = ledger.cancel_order(cast.issuer, order_id)
    cancelled = result.event("OrderCancelled")
    assert (cancelled["orderId"], cancelled["issuer"], cancelled["refunded"]) == (
        order_id,
        cast.issuer.address,
        DEFAULT_AMOUNT,
    )
    order = ledger.order(order_id)
    assert order.status == OrderStatus.CANCELLED
    assert (order.escrowed, order.refunded, order.paid, order.in_escrow) == (
        DEFAULT_AMOUNT,
        DEFAULT_AMOUNT,
        0,
        0,
    )
    assert token.balance_of(cast.issuer.address) == ISSUER_FUNDS
    assert token.balance_of(ledger.address) == 0
    assert ledger.participant(cast.issuer.address).outstanding == 0


def test_settle_at_maturity_pays_each_holder(world: World, ledger: LedgerClient, cast: Cast) -> None:
    token = world.token
    order_id, root_id = world.certificate_for(maturity_in=30 * DAY)
    to_supplier2, _ = ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, 25_000 * YUAN)
    price = discount_price(35_000 * YUAN, 29, 500)
    offer_id, _ = ledger.offer_discount(
        cast.supplier1, root_id, value=35_000 * YUAN, price=price, expiry=world.chain.now() + DAY
    )
    to_factor, _ = ledger.buy_discounted(cast.factor, offer_id)
    before = {
        a: token.balance_of(a) for a in (cast.supplier1.address, cast.supplier2.address, cast.factor.address)
    }

    world.chain.advance_time(30 * DAY)
    # Anyone may settle: here an account registered nowhere.
    result = ledger.settle(cast.outsider, [root_id, to_supplier2, to_factor])

    paid = {(e["certificateId"], e["holder"], e["value"]) for e in result.all("CertificateSettled")}
    assert paid == {
        (root_id, cast.supplier1.address, 40_000 * YUAN),
        (to_supplier2, cast.supplier2.address, 25_000 * YUAN),
        (to_factor, cast.factor.address, 35_000 * YUAN),
    }
    assert token.balance_of(cast.supplier1.address) == before[cast.supplier1.address] + 40_000 * YUAN
    assert token.balance_of(cast.supplier2.address) == before[cast.supplier2.address] + 25_000 * YUAN
    assert token.balance_of(cast.factor.address) == before[cast.factor.address] + 35_000 * YUAN
    assert token.balance_of(ledger.address) == 0
    for cid in (root_id, to_supplier2, to_factor):
        assert ledger.certificate(cid).status == CertificateStatus.SETTLED
    order = ledger.order(order_id)
    assert (order.paid, order.refunded, order.in_escrow) == (DEFAULT_AMOUNT, 0, 0)
    assert ledger.participant(cast.issuer.address).outstanding == 0


def test_a_refused_push_is_credited_and_withdrawn_after_unblocking(
    world: World, ledger: LedgerClient, token: SettlementTokenClient, cast: Cast
) -> None:
    _, root_id = world.certificate_for(maturity_in=10 * DAY)
    part_id, _ = ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, 30_000 * YUAN)
    token.set_blocked(cast.admin, cast.supplier2.address, True)
    world.chain.advance_time(10 * DAY)
    supplier1_before = token.balance_of(cast.supplier1.address)

    result = ledger.settle(cast.relayer, [root_id, part_id])

    credited = result.event("PaymentCredited")
    assert (credited["account"], credited["amount"]) == (cast.supplier2.address, 30_000 * YUAN)
    # The blocked holder does not hold up the rest of the batch.
    assert token.balance_of(cast.supplier1.address) == supplier1_before + 70_000 * YUAN
    assert ledger.credit(cast.supplier2.address) == 30_000 * YUAN
    assert ledger.total_credits() == 30_000 * YUAN
    assert token.balance_of(ledger.address) == 30_000 * YUAN
    assert ledger.certificate(part_id).status == CertificateStatus.SETTLED

    token.set_blocked(cast.admin, cast.supplier2.address, False)
    withdrawn = ledger.withdraw(cast.supplier2).event("Withdrawn")
    assert (withdrawn["account"], withdrawn["amount"]) == (cast.supplier2.address, 30_000 * YUAN)
    assert token.balance_of(cast.supplier2.address) == 30_000 * YUAN
    assert ledger.credit(cast.supplier2.address) == 0
    assert ledger.total_credits() == 0
    assert token.balance_of(ledger.address) == 0


# ---------------------------------------------------------------------- reads


def test_lineage_is_the_tree_of_splits(world: World, ledger: LedgerClient, cast: Cast) -> None:
    order_id, root_id = world.certificate_for()
    a, _ = ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, 30_000 * YUAN)
    b, c = ledger.split(cast.supplier1, root_id, [40_000 * YUAN, 20_000 * YUAN, 10_000 * YUAN])[0]
    (a1,), _ = ledger.split(cast.supplier2, a, [20_000 * YUAN, 10_000 * YUAN])
    a1x, _ = ledger.split_to(cast.supplier2, a1, cast.supplier1.address, 5_000 * YUAN)
    # Another order's certificates stay out of this tree.
    world.certificate_for()

    for start in (root_id, a, a1x):
        tree = ledger.lineage(start)
        assert tree.certificate.certificate_id == root_id
        assert shape(tree) == (root_id, [(a, [(a1, [(a1x, [])])]), (b, []), (c, [])])
    walked = [n.certificate for n in ledger.lineage(root_id).walk()]
    assert [x.certificate_id for x in walked] == [root_id, a, a1, a1x, b, c]
    assert [x.depth for x in walked] == [0, 1, 2, 3, 1, 1]
    assert all(x.order_id == order_id for x in walked)
    assert sum(x.value for x in walked) == DEFAULT_AMOUNT
    assert all(n.merged_into == [] for n in ledger.lineage(root_id).walk())  # splits are no merges

    # Merges show where value went that parent links do not: into the same holder's certificate
    # and into another's, each with its value, in chain order.
    ledger.merge(cast.supplier1, c, b, 4_000 * YUAN)
    ledger.merge(cast.supplier1, c, a1, 1_000 * YUAN)
    ledger.merge(cast.supplier1, a1x, root_id, 2_000 * YUAN)  # a1x was passed back to supplier1
    given = {n.certificate.certificate_id: n.merged_into for n in ledger.lineage(root_id).walk()}
    assert given == {
        root_id: [], a: [], a1: [], b: [],
        c: [(b, 4_000 * YUAN), (a1, 1_000 * YUAN)],
        a1x: [(root_id, 2_000 * YUAN)],
    }  # fmt: skip


def test_holdings_follow_the_certificates(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for(maturity_in=5 * DAY)
    part_id, _ = ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, 10_000 * YUAN)
    other_order, other_root = world.certificate_for(payee=cast.supplier2.address)
    ledger.transfer(cast.supplier2, other_root, cast.supplier1.address)
    ledger.transfer(cast.supplier1, other_root, cast.supplier2.address)  # and back

    assert [c.certificate_id for c in ledger.holdings(cast.supplier1.address)] == [root_id]
    assert [c.certificate_id for c in ledger.holdings(cast.supplier2.address)] == [part_id, other_root]
    assert ledger.holdings(cast.factor.address) == []

    world.chain.advance_time(5 * DAY)
    ledger.settle(cast.relayer, [root_id, part_id])
    assert ledger.holdings(cast.supplier1.address) == []
    assert [c.certificate_id for c in ledger.holdings(cast.supplier1.address, live_only=False)] == [root_id]
    assert [c.certificate_id for c in ledger.holdings(cast.supplier2.address)] == [other_root]
    assert ledger.certificate(other_root).order_id == other_order


# ---------------------------------------------------------------------- the demo


def test_run_demo_reconciles() -> None:
    out = io.StringIO()
    system = run_demo(connect(Settings()), Console(file=out, width=120))
    check_demo_end_state(system, out.getvalue())
