"""Every refused request: the specific typed exception, its fields, and books left exactly as they were."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from requests.exceptions import ReadTimeout
from world import (
    CARTON_GRAMS,
    DAY,
    DEFAULT_AMOUNT,
    DEFAULT_QUANTITY,
    DEVICE_KINDS,
    FRESHNESS,
    ISSUER_LIMIT,
    MAX_CARTONS,
    MAX_SPLIT_DEPTH,
    MIN_SPLIT_UNIT,
    RANGES,
    YUAN,
    Cast,
    World,
    enrolment,
)

from chain_client import errors
from chain_client.functions import CheckedFunctions
from chain_client.ledger import ZERO_ADDRESS, LedgerClient
from chain_client.models import OrderStatus, Role
from chain_client.pricing import discount_price
from chain_client.receipts import (
    MAX_FRESHNESS,
    Observation,
    ReadingKind,
    ReadingRange,
    ReceiptOracleClient,
    label_hash,
    recover_observation_signer,
    sign_observation,
    signature_is_canonical,
)
from chain_client.transactions import Transactor

E = TypeVar("E", bound=BaseException)
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@contextmanager
def refused(world: World, kind: type[E]) -> Iterator[pytest.ExceptionInfo[E]]:
    """Expects exactly `kind` (not a subclass or sibling) and no change to any book."""
    before = world.balances()
    with pytest.raises(kind) as info:
        yield info
    assert type(info.value) is kind, (
        f"expected {kind.__name__}, got {type(info.value).__name__}: {info.value}"
    )
    assert world.balances() == before


def same(a: Any, b: str) -> bool:
    """Addresses compared case-insensitively: error fields are not checksummed (see
    test_address_fields_of_errors_are_checksummed, which holds the client to that)."""
    return isinstance(a, str) and a.lower() == b.lower()


def fields(info: pytest.ExceptionInfo[errors.ContractError]) -> dict[str, Any]:
    return info.value.fields


# ====================================================================== the exception classes


def test_every_contract_error_is_a_typed_certledger_error() -> None:
    assert len(errors.ERRORS) > 50
    for name, cls in errors.ERRORS.items():
        assert issubclass(cls, errors.ContractError)
        assert issubclass(cls, errors.ContractReverted)
        assert issubclass(cls, errors.CertledgerError)
        assert cls.__name__ == cls.error_name == name
        assert getattr(errors, name) is cls
        assert len(cls.selector) == 4
    for name in (
        "DuplicateInvoice",
        "CertificateFrozen",
        "SequenceAlreadyUsed",
        "ERC20InsufficientAllowance",
    ):
        assert name in errors.ERRORS
    assert issubclass(errors.ContractPanic, errors.ContractReverted)
    assert issubclass(errors.UnknownRevert, errors.ContractReverted)
    assert not issubclass(errors.UnknownRevert, errors.ContractError)
    for base in (
        errors.NodeUnavailable,
        errors.TransactionTimeout,
        errors.ManifestError,
        errors.ContractReverted,
        errors.OutcomeUnknown,
        errors.TransactionRejected,
    ):
        assert issubclass(base, errors.CertledgerError)


def test_decode_revert_round_trips_fields() -> None:
    invoice = label_hash("INV-1")
    data = errors.DuplicateInvoice.selector + abi_encode(["bytes32"], [invoice])
    for raw in (data, "0x" + data.hex(), data.hex()):
        exc = errors.decode_revert(raw)
        assert type(exc) is errors.DuplicateInvoice
        assert isinstance(exc, errors.ContractError)
        assert exc.fields == {"invoiceHash": invoice}
        assert exc.data == data
        assert "DuplicateInvoice(invoiceHash=0x" in str(exc)


def test_decode_revert_of_unknown_data_is_unknown_revert() -> None:
    for raw in (bytes.fromhex("deadbeef") + b"\x00" * 32, b"", None, "0x12"):
        exc = errors.decode_revert(raw)
        assert type(exc) is errors.UnknownRevert
    text = bytes.fromhex("08c379a0") + abi_encode(["string"], ["nope"])
    exc = errors.decode_revert(text)
    assert type(exc) is errors.UnknownRevert and "nope" in str(exc)
    panic = errors.decode_revert(bytes.fromhex("4e487b71") + (0x11).to_bytes(32, "big"))
    assert isinstance(panic, errors.ContractPanic) and panic.code == 0x11
    # A panic selector with a body that is no uint256 is no panic the EVM made.
    for body in (b"\x01", (0x11).to_bytes(32, "big") + b"\x00"):
        assert type(errors.decode_revert(bytes.fromhex("4e487b71") + body)) is errors.UnknownRevert
    # A known selector whose body does not decode is still one of ours, with the raw data.
    malformed = errors.DuplicateInvoice.selector + b"\x01"
    exc = errors.decode_revert(malformed)
    assert type(exc) is errors.UnknownRevert and exc.data == malformed and "malformed" in str(exc)


def test_a_send_whose_answer_is_lost_reports_its_hash_not_a_failure(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node took the transaction, then the connection failed: the caller must learn the hash
    (to look it up), not a plain failure it would retry, doing the job twice."""
    eth = world.chain.w3.eth
    real = eth.send_raw_transaction
    sent: list[bytes] = []

    def taken_then_lost(raw: Any) -> Any:
        real(raw)
        sent.append(bytes(raw))
        raise ReadTimeout("read timed out")

    monkeypatch.setattr(eth, "send_raw_transaction", taken_then_lost)
    with pytest.raises(errors.OutcomeUnknown) as info:
        world.token.transfer(world.cast.issuer, world.cast.supplier1.address, 1)
    assert info.value.tx_hash == "0x" + keccak(sent[0]).hex()
    assert world.token.balance_of(world.cast.supplier1.address) == 1  # it happened, once


def test_a_sender_without_ether_for_gas_is_refused_by_name(world: World) -> None:
    poor = Account.create()
    with pytest.raises(errors.TransactionRejected) as info:
        world.token.approve(poor, world.ledger.address, 1)
    assert info.value.tx_hash == "" and info.value.reason


def test_address_fields_of_errors_are_checksummed(world: World, ledger: LedgerClient, cast: Cast) -> None:
    """Everything else in the client (records, events) gives EIP-55 checksummed addresses; the
    fields of a decoded contract error should too, so `exc.fields["receiver"] == account.address`."""
    _, root_id = world.certificate_for()
    with refused(world, errors.ReceiverNotEligible) as info:
        ledger.transfer(cast.supplier1, root_id, cast.outsider.address)
    assert fields(info)["receiver"] == cast.outsider.address


# ====================================================================== orders


def test_zero_amount_and_zero_quantity(world: World) -> None:
    with refused(world, errors.ZeroAmount) as info:
        world.open_order(amount=0)
    assert fields(info) == {}
    with refused(world, errors.ZeroAmount):
        world.open_order(expected_quantity=0)


def test_negative_amounts_are_refused_before_signing(world: World, ledger: LedgerClient, cast: Cast) -> None:
    """web3 says only that no function matched; the client names the argument, and sends nothing."""
    _, root_id = world.certificate_for()
    nonce = world.chain.w3.eth.get_transaction_count(cast.supplier1.address)
    cases: list[tuple[Callable[[], object], str, str]] = [
        (lambda: world.open_order(amount=-1), "amount", "uint256"),
        (lambda: world.open_order(expected_quantity=-5), "expectedQuantity", "uint64"),
        (lambda: ledger.split(cast.supplier1, root_id, [-100, DEFAULT_AMOUNT + 100]), "values", "uint256[]"),
        (lambda: ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, -1), "value", "uint256"),
        (lambda: ledger.merge(cast.supplier1, root_id, root_id, -1), "value", "uint256"),
        (lambda: ledger.approve_value(cast.supplier1, root_id, cast.factor.address, -1), "value", "uint256"),
        (
            lambda: ledger.offer_discount(
                cast.supplier1, root_id, value=DEFAULT_AMOUNT, price=-1, expiry=2**40
            ),
            "price",
            "uint256",
        ),
    ]
    # A name with overloads (transferFrom): the argument of the overload the call fits best.
    cases.append((lambda: ledger.transfer(cast.supplier1, root_id, "0x1234"), "to", "address"))  # type: ignore[arg-type]
    fns = CheckedFunctions(ledger.contract)
    cases.append((lambda: fns.transferFrom(cast.supplier1.address, "0x1234", root_id), "to", "address"))
    for call, argument, abi_type in cases:
        with refused(world, errors.InvalidArgument) as info:
            call()
        assert (info.value.argument, info.value.abi_type) == (argument, abi_type)
        assert isinstance(info.value, ValueError)
    assert world.chain.w3.eth.get_transaction_count(cast.supplier1.address) == nonce


def test_amount_too_large(world: World) -> None:
    with refused(world, errors.AmountTooLarge) as info:
        world.open_order(amount=2**128)
    assert fields(info) == {"amount": 2**128}


def test_deadline_in_the_past(world: World) -> None:
    now = world.pending_time()
    with refused(world, errors.DeadlineInPast) as info:
        world.open_order(deadline_in=0)
    assert fields(info) == {"deadline": now, "nowTs": now}


def test_payee_that_may_not_hold(world: World, cast: Cast) -> None:
    for payee in (cast.regulator.address, cast.outsider.address, cast.issuer2.address):
        with refused(world, errors.PayeeNotEligible) as info:
            world.open_order(payee=payee)
        assert same(fields(info)["payee"], payee)


def test_duplicate_invoice_is_refused_anywhere(world: World, ledger: LedgerClient, cast: Cast) -> None:
    invoice = world.fresh_label("INV")
    world.open_order(invoice=invoice)
    with refused(world, errors.DuplicateInvoice) as info:
        world.open_order(invoice=invoice)
    assert fields(info) == {"invoiceHash": invoice}
    # Another issuer, another payee: still the same invoice.
    with refused(world, errors.DuplicateInvoice):
        world.open_order(invoice=invoice, issuer=cast.issuer2, payee=cast.factor.address)


def test_a_cancelled_order_gives_its_invoice_back(world: World, ledger: LedgerClient, cast: Cast) -> None:
    # Nothing was financed on a cancelled order: the real order for the invoice may follow (D54).
    invoice = world.fresh_label("INV")
    order_id = world.open_order(invoice=invoice, deadline_in=DAY)
    world.chain.advance_time(2 * DAY)
    ledger.cancel_order(cast.issuer, order_id)
    assert not ledger.invoice_used(invoice)
    again = world.open_order(invoice=invoice)
    assert ledger.order(again).invoice_hash == invoice
    with refused(world, errors.DuplicateInvoice) as info:
        world.open_order(invoice=invoice, issuer=cast.issuer2, payee=cast.factor.address)
    assert fields(info) == {"invoiceHash": invoice}


def test_an_order_for_a_warehouse_that_cannot_confirm(world: World, cast: Cast) -> None:
    nowhere = world.fresh_label("WH")
    with refused(world, errors.UnknownWarehouse) as info:
        world.open_order(warehouse=nowhere)
    assert fields(info) == {"warehouse": nowhere}
    closed = world.fresh_label("WH")
    world.oracle.register_warehouse(cast.admin, closed, enrolment(cast.devices), 2, FRESHNESS, RANGES)
    world.oracle.deactivate_warehouse(cast.admin, closed)
    with refused(world, errors.UnknownWarehouse) as info2:
        world.open_order(warehouse=closed)
    assert fields(info2) == {"warehouse": closed}


def test_issuer_limit_exceeded(world: World, cast: Cast) -> None:
    world.open_order(amount=4_000_000 * YUAN)
    with refused(world, errors.IssuerLimitExceeded) as info:
        world.open_order(amount=1_000_000 * YUAN + 1)
    f = fields(info)
    assert same(f["issuer"], cast.issuer.address)
    assert (f["outstanding"], f["requested"], f["limit"]) == (
        4_000_000 * YUAN,
        1_000_000 * YUAN + 1,
        ISSUER_LIMIT,
    )
    world.open_order(amount=1_000_000 * YUAN)  # exactly at the limit is fine


def test_only_an_active_issuer_opens_orders(world: World, ledger: LedgerClient, cast: Cast) -> None:
    with refused(world, errors.AccountMissingRole) as info:
        world.open_order(issuer=cast.supplier1)
    assert same(fields(info)["account"], cast.supplier1.address)
    assert fields(info)["role"] == int(Role.ISSUER)
    with refused(world, errors.ParticipantNotRegistered) as info2:
        world.open_order(issuer=cast.outsider)
    assert same(fields(info2)["account"], cast.outsider.address)
    ledger.suspend(cast.admin, cast.issuer.address)
    with refused(world, errors.ParticipantNotActive) as info3:
        world.open_order()
    assert same(fields(info3)["account"], cast.issuer.address)


def test_an_issuer_that_did_not_approve_the_escrow(world: World, ledger: LedgerClient, cast: Cast) -> None:
    with refused(world, errors.ERC20InsufficientAllowance) as info:
        world.open_order(issuer=cast.issuer2)
    f = fields(info)
    assert same(f["spender"], ledger.address)
    assert (f["allowance"], f["needed"]) == (0, DEFAULT_AMOUNT)


def test_cancelling_a_confirmed_order(world: World, ledger: LedgerClient, cast: Cast) -> None:
    order_id, _ = world.certificate_for()
    world.chain.advance_time(15 * DAY)
    with refused(world, errors.OrderNotOpen) as info:
        ledger.cancel_order(cast.issuer, order_id)
    assert fields(info) == {"orderId": order_id, "status": int(OrderStatus.CONFIRMED)}


def test_cancelling_twice(world: World, ledger: LedgerClient, cast: Cast) -> None:
    order_id = world.open_order(deadline_in=DAY)
    world.chain.advance_time(2 * DAY)
    ledger.cancel_order(cast.issuer, order_id)
    with refused(world, errors.OrderNotOpen) as info:
        ledger.cancel_order(cast.issuer, order_id)
    assert fields(info) == {"orderId": order_id, "status": int(OrderStatus.CANCELLED)}


def test_cancelling_before_the_deadline(world: World, ledger: LedgerClient, cast: Cast) -> None:
    order_id = world.open_order(deadline_in=DAY)
    deadline = ledger.order(order_id).deadline
    world.chain.advance_time(DAY // 2)
    with refused(world, errors.DeadlineNotPassed) as info:
        ledger.cancel_order(cast.issuer, order_id)
    assert fields(info) == {"orderId": order_id, "cancellableAfter": deadline + FRESHNESS}


def test_cancelling_within_the_freshness_window_after_the_deadline(
    world: World, ledger: LedgerClient, cast: Cast
) -> None:
    # A receipt signed at the deadline can still arrive: the issuer must wait it out.
    order_id = world.open_order(deadline_in=DAY)
    deadline = ledger.order(order_id).deadline
    world.chain.advance_time(DAY + FRESHNESS // 2)
    with refused(world, errors.DeadlineNotPassed) as info:
        ledger.cancel_order(cast.issuer, order_id)
    assert fields(info) == {"orderId": order_id, "cancellableAfter": deadline + FRESHNESS}


def test_cancelling_by_someone_else(world: World, ledger: LedgerClient, cast: Cast) -> None:
    order_id = world.open_order(deadline_in=DAY)
    world.chain.advance_time(2 * DAY)
    for stranger in (cast.issuer2, cast.supplier1, cast.admin, cast.outsider):
        with refused(world, errors.NotOrderIssuer) as info:
            ledger.cancel_order(stranger, order_id)
        assert fields(info)["orderId"] == order_id
        assert same(fields(info)["caller"], stranger.address)


def test_unknown_order(world: World, ledger: LedgerClient, oracle: ReceiptOracleClient, cast: Cast) -> None:
    with refused(world, errors.UnknownOrder) as info:
        ledger.cancel_order(cast.issuer, 999)
    assert fields(info) == {"orderId": 999}
    observations, signatures = world.receipt(999, 10)
    with refused(world, errors.UnknownOrder) as info:
        oracle.confirm_receipt(cast.relayer, observations, signatures)
    assert fields(info) == {"orderId": 999}
    assert not oracle.sequence_used(observations[0].device, observations[0].sequence)


# ====================================================================== certificates: split rules


def test_split_parts_that_do_not_sum(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    for values in ([50_000 * YUAN, 49_999 * YUAN], [50_000 * YUAN, 50_000 * YUAN + 1]):
        with refused(world, errors.SplitPartsMismatch) as info:
            ledger.split(cast.supplier1, root_id, values)
        assert fields(info) == {"certificateId": root_id, "sum": sum(values), "value": DEFAULT_AMOUNT}
    # Parts summing past 2^256 - 1 are the same mismatch (the sum saturates), not a panic.
    with refused(world, errors.SplitPartsMismatch) as info:
        ledger.split(cast.supplier1, root_id, [2**256 - 1, DEFAULT_AMOUNT + 1])
    assert fields(info) == {"certificateId": root_id, "sum": 2**256 - 1, "value": DEFAULT_AMOUNT}


def test_split_into_too_few_or_too_many_parts(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    for values in (
        [DEFAULT_AMOUNT],
        [],
        [DEFAULT_AMOUNT // 20] * 20,
        [DEFAULT_AMOUNT // 17] * 16 + [DEFAULT_AMOUNT // 17 + DEFAULT_AMOUNT % 17],
    ):
        with refused(world, errors.SplitPartCount) as info:
            ledger.split(cast.supplier1, root_id, values)
        assert fields(info) == {"parts": len(values), "maxParts": 16}
    # 16 parts is the most, and allowed.
    parts = [DEFAULT_AMOUNT // 16] * 16
    new_ids, _ = ledger.split(cast.supplier1, root_id, parts)
    assert len(new_ids) == 15


def test_split_below_the_minimum_unit(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    small = MIN_SPLIT_UNIT - 1
    # A part below the unit ...
    with refused(world, errors.SplitBelowMinimumUnit) as info:
        ledger.split(cast.supplier1, root_id, [DEFAULT_AMOUNT - small, small])
    assert fields(info) == {"certificateId": root_id, "part": small, "minUnit": MIN_SPLIT_UNIT}
    # ... or what the certificate would keep (the first part is the remainder).
    with refused(world, errors.SplitBelowMinimumUnit) as info:
        ledger.split(cast.supplier1, root_id, [small, DEFAULT_AMOUNT - small])
    assert fields(info) == {"certificateId": root_id, "part": small, "minUnit": MIN_SPLIT_UNIT}
    with refused(world, errors.SplitBelowMinimumUnit) as info:
        ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, small)
    assert fields(info) == {"certificateId": root_id, "part": small, "minUnit": MIN_SPLIT_UNIT}
    with refused(world, errors.SplitBelowMinimumUnit) as info:
        ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, DEFAULT_AMOUNT - small)
    assert fields(info) == {"certificateId": root_id, "part": small, "minUnit": MIN_SPLIT_UNIT}
    # Exactly the unit is fine, as part and as remainder.
    ledger.split(
        cast.supplier1, root_id, [MIN_SPLIT_UNIT, DEFAULT_AMOUNT - 2 * MIN_SPLIT_UNIT, MIN_SPLIT_UNIT]
    )


def test_split_with_a_zero_first_part(world: World, ledger: LedgerClient, cast: Cast) -> None:
    """ICertificateLedger.split: "2..MAX_SPLIT_PARTS parts summing to its value, each at least the
    minimum unit". The remainder check alone skips a zero remainder, so the part the certificate
    keeps needs its own check, or the split leaves a zero-value live certificate and moves all the
    value one level deeper."""
    _, root_id = world.certificate_for()
    with refused(world, errors.SplitBelowMinimumUnit) as info:
        ledger.split(cast.supplier1, root_id, [0, DEFAULT_AMOUNT])
    assert fields(info) == {"certificateId": root_id, "part": 0, "minUnit": MIN_SPLIT_UNIT}


def test_split_past_the_maximum_depth(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, cert_id = world.certificate_for()
    for depth in range(1, MAX_SPLIT_DEPTH + 1):
        cert_id, _ = ledger.split_to(cast.supplier1, cert_id, cast.supplier1.address, 10_000 * YUAN // depth)
        assert ledger.certificate(cert_id).depth == depth
    assert ledger.certificate(cert_id).depth == MAX_SPLIT_DEPTH
    expected = {"certificateId": cert_id, "depth": MAX_SPLIT_DEPTH, "maxDepth": MAX_SPLIT_DEPTH}
    with refused(world, errors.SplitDepthExceeded) as info:
        ledger.split_to(cast.supplier1, cert_id, cast.supplier2.address, 1_000 * YUAN)
    assert fields(info) == expected
    with refused(world, errors.SplitDepthExceeded) as info:
        ledger.split(
            cast.supplier1, cert_id, [1_000 * YUAN, ledger.certificate(cert_id).value - 1_000 * YUAN]
        )
    assert fields(info) == expected
    with refused(world, errors.SplitDepthExceeded) as info:
        ledger.offer_discount(
            cast.supplier1, cert_id, value=1_000 * YUAN, price=900 * YUAN, expiry=world.chain.now() + DAY
        )
    assert fields(info) == expected
    # It can still move whole.
    ledger.transfer(cast.supplier1, cert_id, cast.supplier2.address)


def test_split_more_than_the_certificate_holds(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    with refused(world, errors.InsufficientValue) as info:
        ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, DEFAULT_AMOUNT + 1)
    assert fields(info) == {"certificateId": root_id, "value": DEFAULT_AMOUNT, "needed": DEFAULT_AMOUNT + 1}
    with refused(world, errors.ZeroAmount):
        ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, 0)


# ====================================================================== certificates: receivers


def test_transfer_to_an_unregistered_account(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    with refused(world, errors.ReceiverNotEligible) as info:
        ledger.transfer(cast.supplier1, root_id, cast.outsider.address)
    assert same(fields(info)["receiver"], cast.outsider.address)
    with refused(world, errors.ReceiverNotEligible) as info:
        ledger.split_to(cast.supplier1, root_id, cast.outsider.address, 1_000 * YUAN)
    assert same(fields(info)["receiver"], cast.outsider.address)


def test_transfer_to_a_suspended_participant(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    ledger.suspend(cast.admin, cast.supplier2.address)
    with refused(world, errors.ReceiverNotEligible) as info:
        ledger.transfer(cast.supplier1, root_id, cast.supplier2.address)
    assert same(fields(info)["receiver"], cast.supplier2.address)
    with refused(world, errors.ReceiverNotEligible):
        ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, 1_000 * YUAN)
    ledger.reinstate(cast.admin, cast.supplier2.address)
    ledger.transfer(cast.supplier1, root_id, cast.supplier2.address)


def test_transfer_to_an_account_without_a_holder_role(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    for account in (cast.regulator, cast.issuer, cast.admin):
        with refused(world, errors.ReceiverNotEligible) as info:
            ledger.transfer(cast.supplier1, root_id, account.address)
        assert same(fields(info)["receiver"], account.address)


def test_transfer_to_the_zero_address(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    with refused(world, errors.InvalidReceiver) as info:
        ledger.transfer(cast.supplier1, root_id, ZERO_ADDRESS)
    assert same(fields(info)["receiver"], ZERO_ADDRESS)


def test_a_suspended_holder_cannot_move(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    ledger.suspend(cast.admin, cast.supplier1.address)
    with refused(world, errors.ParticipantNotActive) as info:
        ledger.transfer(cast.supplier1, root_id, cast.supplier2.address)
    assert same(fields(info)["account"], cast.supplier1.address)
    with refused(world, errors.ParticipantNotActive):
        ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, 1_000 * YUAN)


def test_a_holder_without_a_holder_role_cannot_move(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    part_ids, _ = ledger.split(cast.supplier1, root_id, [60_000 * YUAN, 40_000 * YUAN])
    ledger.set_roles(cast.admin, cast.supplier1.address, Role.AUDITOR)
    with refused(world, errors.AccountMissingRole) as info:
        ledger.transfer(cast.supplier1, root_id, cast.supplier2.address)
    assert same(fields(info)["account"], cast.supplier1.address)
    assert fields(info)["role"] == int(Role.SUPPLIER | Role.FACTOR)
    for move in (
        lambda: ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, 1_000 * YUAN),
        lambda: ledger.split(cast.supplier1, root_id, [30_000 * YUAN, 30_000 * YUAN]),
        lambda: ledger.merge(cast.supplier1, part_ids[0], root_id, 1_000 * YUAN),
        lambda: ledger.offer_discount(
            cast.supplier1, root_id, value=1_000 * YUAN, price=900 * YUAN, expiry=world.chain.now() + DAY
        ),
    ):
        with refused(world, errors.AccountMissingRole) as info:
            move()
        assert same(fields(info)["account"], cast.supplier1.address)
    # An operator it approved earlier is refused for the same reason.
    ledger.set_roles(cast.admin, cast.supplier1.address, Role.SUPPLIER)
    ledger.approve(cast.supplier1, cast.factor.address, root_id)
    ledger.set_roles(cast.admin, cast.supplier1.address, Role.ISSUER)
    with refused(world, errors.AccountMissingRole):
        ledger.transfer(cast.factor, root_id, cast.factor.address)
    # With a holder role back, the certificates move again.
    ledger.set_roles(cast.admin, cast.supplier1.address, Role.FACTOR)
    ledger.transfer(cast.supplier1, root_id, cast.supplier2.address)
    ledger.merge(cast.supplier1, part_ids[0], root_id, 1_000 * YUAN)


def test_only_the_holder_grants_approvals(world: World, ledger: LedgerClient, cast: Cast) -> None:
    """An operator for all moves the certificate itself but grants nothing: an approval it gave
    would outlive the holder's revoking it (D81)."""
    _, root_id = world.certificate_for()
    ledger.set_approval_for_all(cast.supplier1, cast.supplier2.address, True)
    with refused(world, errors.NotApprovedOrHolder) as info:
        ledger.approve(cast.supplier2, cast.factor.address, root_id)
    assert same(fields(info)["operator"], cast.supplier2.address)
    assert fields(info)["certificateId"] == root_id
    with refused(world, errors.NotApprovedOrHolder):
        ledger.approve_value(cast.supplier2, root_id, cast.factor.address, 1_000 * YUAN)
    ledger.split_to(cast.supplier2, root_id, cast.supplier2.address, 1_000 * YUAN)
    ledger.approve_value(cast.supplier1, root_id, cast.factor.address, 1_000 * YUAN)
    ledger.split_to(cast.factor, root_id, cast.factor.address, 1_000 * YUAN)


def test_moving_someone_elses_certificate(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    with refused(world, errors.NotApprovedOrHolder) as info:
        ledger.transfer(cast.supplier2, root_id, cast.supplier2.address)
    assert same(fields(info)["operator"], cast.supplier2.address)
    assert fields(info)["certificateId"] == root_id
    with refused(world, errors.NotApprovedOrHolder):
        ledger.split(cast.supplier2, root_id, [50_000 * YUAN, 50_000 * YUAN])
    with refused(world, errors.NotApprovedOrHolder):
        ledger.offer_discount(cast.supplier2, root_id, value=1_000, price=900, expiry=world.chain.now() + DAY)


def test_value_operator_beyond_its_allowance(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    with refused(world, errors.InsufficientAllowance) as info:
        ledger.split_to(cast.supplier2, root_id, cast.supplier2.address, 1_000 * YUAN)
    f = fields(info)
    assert same(f["operator"], cast.supplier2.address)
    assert (f["certificateId"], f["allowance"], f["needed"]) == (root_id, 0, 1_000 * YUAN)

    ledger.approve_value(cast.supplier1, root_id, cast.supplier2.address, 1_000 * YUAN)
    with refused(world, errors.InsufficientAllowance) as info:
        ledger.split_to(cast.supplier2, root_id, cast.supplier2.address, 2_000 * YUAN)
    assert (fields(info)["allowance"], fields(info)["needed"]) == (1_000 * YUAN, 2_000 * YUAN)
    new_id, _ = ledger.split_to(cast.supplier2, root_id, cast.supplier2.address, 600 * YUAN)
    with refused(world, errors.InsufficientAllowance) as info:
        ledger.merge(cast.supplier2, root_id, new_id, 401 * YUAN)
    assert (fields(info)["allowance"], fields(info)["needed"]) == (400 * YUAN, 401 * YUAN)
    # A value allowance is not a whole-certificate approval.
    with refused(world, errors.NotApprovedOrHolder):
        ledger.transfer(cast.supplier2, root_id, cast.supplier2.address)


def test_an_allowance_dies_with_the_holding(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    ledger.approve_value(cast.supplier1, root_id, cast.factor.address, 5_000 * YUAN)
    ledger.transfer(cast.supplier1, root_id, cast.supplier2.address)
    ledger.transfer(cast.supplier2, root_id, cast.supplier1.address)  # back to the approver
    with refused(world, errors.InsufficientAllowance) as info:
        ledger.split_to(cast.factor, root_id, cast.factor.address, 1_000 * YUAN)
    assert fields(info)["allowance"] == 0


def test_merge_across_orders(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, first = world.certificate_for()
    _, second = world.certificate_for()
    with refused(world, errors.SlotMismatch) as info:
        ledger.merge(cast.supplier1, first, second, 1_000)
    assert fields(info) == {"fromId": first, "toId": second}


def test_merge_into_itself_or_nothing(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    (part_id,), _ = ledger.split(cast.supplier1, root_id, [60_000 * YUAN, 40_000 * YUAN])
    with refused(world, errors.SelfTransfer) as info:
        ledger.merge(cast.supplier1, root_id, root_id, 1_000)
    assert fields(info) == {"certificateId": root_id}
    with refused(world, errors.ZeroAmount):
        ledger.merge(cast.supplier1, part_id, root_id, 0)
    with refused(world, errors.InsufficientValue) as info:
        ledger.merge(cast.supplier1, part_id, root_id, 40_000 * YUAN + 1)
    assert fields(info) == {"certificateId": part_id, "value": 40_000 * YUAN, "needed": 40_000 * YUAN + 1}


def test_unknown_certificate(world: World, ledger: LedgerClient, cast: Cast) -> None:
    world.certificate_for()
    actions: list[Callable[[], object]] = [
        lambda: ledger.transfer(cast.supplier1, 999, cast.supplier2.address),
        lambda: ledger.split_to(cast.supplier1, 999, cast.supplier2.address, 1_000),
        lambda: ledger.split(cast.supplier1, 999, [500, 500]),
        lambda: ledger.merge(cast.supplier1, 999, 1, 500),
        lambda: ledger.merge(cast.supplier1, 1, 999, 500),
        lambda: ledger.settle(cast.relayer, [999]),
        lambda: ledger.freeze(cast.regulator, 999, b"\x01" * 32),
        lambda: ledger.offer_discount(
            cast.supplier1, 999, value=1_000, price=900, expiry=world.chain.now() + DAY
        ),
    ]
    for action in actions:
        with refused(world, errors.UnknownCertificate) as info:
            action()
        assert fields(info) == {"certificateId": 999}


# ====================================================================== frozen, matured, settled


def test_a_frozen_certificate_cannot_move_or_settle(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for(maturity_in=10 * DAY)
    (part_id,), _ = ledger.split(cast.supplier1, root_id, [60_000 * YUAN, 40_000 * YUAN])
    offer_id, _ = ledger.offer_discount(
        cast.supplier1, root_id, value=1_000 * YUAN, price=990 * YUAN, expiry=world.chain.now() + DAY
    )
    ledger.freeze(cast.regulator, root_id, label_hash("court order"))
    actions: list[Callable[[], object]] = [
        lambda: ledger.transfer(cast.supplier1, root_id, cast.supplier2.address),
        lambda: ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, 1_000 * YUAN),
        lambda: ledger.split(cast.supplier1, root_id, [30_000 * YUAN, 30_000 * YUAN]),
        lambda: ledger.merge(cast.supplier1, root_id, part_id, 1_000 * YUAN),
        lambda: ledger.merge(cast.supplier1, part_id, root_id, 1_000 * YUAN),  # into a frozen one
        lambda: ledger.offer_discount(
            cast.supplier1, root_id, value=1_000 * YUAN, price=990 * YUAN, expiry=world.chain.now() + DAY
        ),
        lambda: ledger.buy_discounted(cast.factor, offer_id),
        lambda: ledger.freeze(cast.regulator, root_id, label_hash("again")),
    ]
    for action in actions:
        with refused(world, errors.CertificateFrozen) as info:
            action()
        assert fields(info) == {"certificateId": root_id}
    world.chain.advance_time(11 * DAY)
    with refused(world, errors.CertificateFrozen) as info:
        ledger.settle(cast.relayer, [part_id, root_id])
    assert fields(info) == {"certificateId": root_id}
    ledger.unfreeze(cast.regulator, root_id)
    ledger.settle(cast.relayer, [part_id, root_id])


def test_unfreezing_what_is_not_frozen_and_freezing_by_a_non_regulator(
    world: World, ledger: LedgerClient, cast: Cast
) -> None:
    _, root_id = world.certificate_for()
    with refused(world, errors.CertificateNotFrozen) as info:
        ledger.unfreeze(cast.regulator, root_id)
    assert fields(info) == {"certificateId": root_id}
    for who in (cast.admin, cast.supplier1, cast.factor):
        with refused(world, errors.AccountMissingRole) as info:
            ledger.freeze(who, root_id, label_hash("no"))
        assert same(fields(info)["account"], who.address)
        assert fields(info)["role"] == int(Role.REGULATOR)


def test_moving_a_matured_certificate(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for(maturity_in=5 * DAY)
    maturity = ledger.certificate(root_id).maturity
    world.chain.advance_time(5 * DAY + 1)
    actions: list[Callable[[], object]] = [
        lambda: ledger.transfer(cast.supplier1, root_id, cast.supplier2.address),
        lambda: ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, 1_000 * YUAN),
        lambda: ledger.split(cast.supplier1, root_id, [50_000 * YUAN, 50_000 * YUAN]),
        lambda: ledger.offer_discount(
            cast.supplier1, root_id, value=1_000, price=900, expiry=world.chain.now() + DAY
        ),
    ]
    for action in actions:
        with refused(world, errors.CertificateMatured) as info:
            action()
        assert fields(info) == {"certificateId": root_id, "maturity": maturity}


def test_moving_a_settled_certificate(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for(maturity_in=5 * DAY)
    world.chain.advance_time(6 * DAY)
    ledger.settle(cast.relayer, [root_id])
    for action in (
        lambda: ledger.transfer(cast.supplier1, root_id, cast.supplier2.address),
        lambda: ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, 1_000 * YUAN),
        lambda: ledger.freeze(cast.regulator, root_id, label_hash("late")),
    ):
        with refused(world, errors.CertificateAlreadySettled) as info:
            action()
        assert fields(info) == {"certificateId": root_id}


def test_settling_before_maturity(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for(maturity_in=5 * DAY)
    maturity = ledger.certificate(root_id).maturity
    world.chain.advance_time(4 * DAY)
    with refused(world, errors.CertificateNotMatured) as info:
        ledger.settle(cast.relayer, [root_id])
    assert fields(info) == {"certificateId": root_id, "maturity": maturity}


def test_settling_twice(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for(maturity_in=5 * DAY)
    world.chain.advance_time(6 * DAY)
    ledger.settle(cast.relayer, [root_id])
    with refused(world, errors.CertificateAlreadySettled) as info:
        ledger.settle(cast.relayer, [root_id])
    assert fields(info) == {"certificateId": root_id}
    # Twice in one batch: the whole batch is refused.
    _, third = world.certificate_for(maturity_in=DAY)
    world.chain.advance_time(2 * DAY)
    with refused(world, errors.CertificateAlreadySettled) as info:
        ledger.settle(cast.relayer, [third, third])
    assert fields(info) == {"certificateId": third}


def test_settlement_batch_size(world: World, ledger: LedgerClient, cast: Cast) -> None:
    with refused(world, errors.BatchTooLarge) as info:
        ledger.settle(cast.relayer, [])
    assert fields(info) == {"size": 0, "max": 64}
    with refused(world, errors.BatchTooLarge) as info:
        ledger.settle(cast.relayer, list(range(1, 66)))
    assert fields(info) == {"size": 65, "max": 64}


def test_nothing_to_withdraw(world: World, ledger: LedgerClient, cast: Cast) -> None:
    with refused(world, errors.NothingToWithdraw) as info:
        ledger.withdraw(cast.supplier1)
    assert same(fields(info)["account"], cast.supplier1.address)


def test_withdrawing_to_a_still_blocked_account(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for(maturity_in=DAY)
    world.token.set_blocked(cast.admin, cast.supplier1.address, True)
    world.chain.advance_time(2 * DAY)
    ledger.settle(cast.relayer, [root_id])
    assert ledger.credit(cast.supplier1.address) == DEFAULT_AMOUNT
    with refused(world, errors.AccountBlocked) as info:
        ledger.withdraw(cast.supplier1)
    assert same(fields(info)["account"], cast.supplier1.address)


# ====================================================================== discount sales


def test_price_above_face_and_other_bad_offers(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    expiry = world.chain.now() + DAY
    with refused(world, errors.PriceAboveFace) as info:
        ledger.offer_discount(
            cast.supplier1, root_id, value=1_000 * YUAN, price=1_000 * YUAN + 1, expiry=expiry
        )
    assert fields(info) == {"price": 1_000 * YUAN + 1, "face": 1_000 * YUAN}
    with refused(world, errors.ZeroAmount):
        ledger.offer_discount(cast.supplier1, root_id, value=1_000 * YUAN, price=0, expiry=expiry)
    with refused(world, errors.InsufficientValue):
        ledger.offer_discount(cast.supplier1, root_id, value=DEFAULT_AMOUNT + 1, price=1, expiry=expiry)
    with refused(world, errors.SplitBelowMinimumUnit):
        ledger.offer_discount(cast.supplier1, root_id, value=MIN_SPLIT_UNIT - 1, price=1, expiry=expiry)
    now = world.pending_time()
    with refused(world, errors.OfferExpiryInPast) as info:
        ledger.offer_discount(cast.supplier1, root_id, value=1_000 * YUAN, price=900 * YUAN, expiry=now)
    assert fields(info) == {"expiry": now}


def test_offer_reserved_for_another_buyer(world: World, ledger: LedgerClient, cast: Cast) -> None:
    ledger.register_participant(cast.admin, cast.outsider.address, label_hash("USCC:FACTOR2"), Role.FACTOR)
    _, root_id = world.certificate_for()
    offer_id, _ = ledger.offer_discount(
        cast.supplier1,
        root_id,
        value=10_000 * YUAN,
        price=9_900 * YUAN,
        expiry=world.chain.now() + DAY,
        buyer=cast.factor.address,
    )
    with refused(world, errors.OfferReservedForAnother) as info:
        ledger.buy_discounted(cast.outsider, offer_id)
    f = fields(info)
    assert f["offerId"] == offer_id
    assert same(f["buyer"], cast.factor.address) and same(f["caller"], cast.outsider.address)
    ledger.buy_discounted(cast.factor, offer_id)


def test_an_offer_cannot_be_reserved_for_someone_who_cannot_buy(
    world: World, ledger: LedgerClient, cast: Cast
) -> None:
    _, root_id = world.certificate_for()
    for buyer in (cast.supplier2, cast.outsider):
        with refused(world, errors.BuyerNotEligible) as info:
            ledger.offer_discount(
                cast.supplier1,
                root_id,
                value=10_000 * YUAN,
                price=9_900 * YUAN,
                expiry=world.chain.now() + DAY,
                buyer=buyer.address,
            )
        assert same(fields(info)["buyer"], buyer.address)


def test_an_open_offer_needs_a_factor_with_the_money(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    offer_id, _ = ledger.offer_discount(
        cast.supplier1, root_id, value=10_000 * YUAN, price=9_900 * YUAN, expiry=world.chain.now() + DAY
    )
    with refused(world, errors.AccountMissingRole) as info:
        ledger.buy_discounted(cast.supplier2, offer_id)
    assert same(fields(info)["account"], cast.supplier2.address)
    assert fields(info)["role"] == int(Role.FACTOR)
    ledger.register_participant(cast.admin, cast.outsider.address, label_hash("USCC:FACTOR2"), Role.FACTOR)
    with refused(world, errors.ERC20InsufficientAllowance) as info2:
        ledger.buy_discounted(cast.outsider, offer_id)
    assert (fields(info2)["allowance"], fields(info2)["needed"]) == (0, 9_900 * YUAN)


def test_expired_offer(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    expiry = world.pending_time() + 3_600
    offer_id, _ = ledger.offer_discount(
        cast.supplier1, root_id, value=10_000 * YUAN, price=9_900 * YUAN, expiry=expiry
    )
    world.chain.advance_time(7_200)
    with refused(world, errors.OfferExpired) as info:
        ledger.buy_discounted(cast.factor, offer_id)
    assert fields(info) == {"offerId": offer_id, "expiry": expiry}


def test_seller_no_longer_holding(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    offer_id, _ = ledger.offer_discount(
        cast.supplier1, root_id, value=10_000 * YUAN, price=9_900 * YUAN, expiry=world.chain.now() + DAY
    )
    ledger.transfer(cast.supplier1, root_id, cast.supplier2.address)
    with refused(world, errors.IncorrectHolder) as info:
        ledger.buy_discounted(cast.factor, offer_id)
    f = fields(info)
    assert f["certificateId"] == root_id
    assert same(f["from"], cast.supplier1.address) and same(f["holder"], cast.supplier2.address)


def test_an_offer_does_not_survive_a_round_trip_of_its_certificate(
    world: World, ledger: LedgerClient, cast: Cast
) -> None:
    """The seller passed the certificate on and got it back: the old offer is void."""
    _, root_id = world.certificate_for()
    offer_id, _ = ledger.offer_discount(
        cast.supplier1, root_id, value=10_000 * YUAN, price=9_900 * YUAN, expiry=world.chain.now() + DAY
    )
    ledger.transfer(cast.supplier1, root_id, cast.supplier2.address)
    ledger.transfer(cast.supplier2, root_id, cast.supplier1.address)
    with refused(world, errors.OfferStale) as info:
        ledger.buy_discounted(cast.factor, offer_id)
    assert fields(info) == {"offerId": offer_id}


def test_seller_holding_less_than_offered(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    offer_id, _ = ledger.offer_discount(
        cast.supplier1, root_id, value=60_000 * YUAN, price=59_000 * YUAN, expiry=world.chain.now() + DAY
    )
    ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, 50_000 * YUAN)
    with refused(world, errors.InsufficientValue) as info:
        ledger.buy_discounted(cast.factor, offer_id)
    assert fields(info) == {"certificateId": root_id, "value": 50_000 * YUAN, "needed": 60_000 * YUAN}


def test_offer_bought_twice_or_cancelled(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    offer_id, _ = ledger.offer_discount(
        cast.supplier1, root_id, value=10_000 * YUAN, price=9_900 * YUAN, expiry=world.chain.now() + DAY
    )
    with refused(world, errors.NotOfferSeller) as info:
        ledger.cancel_offer(cast.supplier2, offer_id)
    assert fields(info)["offerId"] == offer_id and same(fields(info)["caller"], cast.supplier2.address)
    ledger.buy_discounted(cast.factor, offer_id)
    for action in (
        lambda: ledger.buy_discounted(cast.factor, offer_id),
        lambda: ledger.cancel_offer(cast.supplier1, offer_id),
    ):
        with refused(world, errors.OfferNotOpen) as info:
            action()
        assert fields(info) == {"offerId": offer_id}
    with refused(world, errors.OfferNotOpen) as info:
        ledger.buy_discounted(cast.factor, 77)
    assert fields(info) == {"offerId": 77}


# ====================================================================== pause


def test_a_paused_system_refuses_every_operation(
    world: World, ledger: LedgerClient, oracle: ReceiptOracleClient, cast: Cast
) -> None:
    order_id = world.open_order(deadline_in=DAY)
    _, root_id = world.certificate_for(maturity_in=3 * DAY)
    (part_id,), _ = ledger.split(cast.supplier1, root_id, [60_000 * YUAN, 40_000 * YUAN])
    offer_id, _ = ledger.offer_discount(
        cast.supplier1, root_id, value=10_000 * YUAN, price=9_900 * YUAN, expiry=world.chain.now() + 5 * DAY
    )
    world.chain.advance_time(2 * DAY)
    ledger.pause(cast.admin)
    assert ledger.paused()
    late_order = order_id  # past its deadline: cancellable but for the pause
    observations, signatures = world.receipt(order_id, 10)
    actions: dict[str, Callable[[], object]] = {
        "open": lambda: world.open_order(),
        "confirm": lambda: oracle.confirm_receipt(cast.relayer, observations, signatures),
        "cancel": lambda: ledger.cancel_order(cast.issuer, late_order),
        "transfer": lambda: ledger.transfer(cast.supplier1, root_id, cast.supplier2.address),
        "split_to": lambda: ledger.split_to(cast.supplier1, root_id, cast.supplier2.address, 1_000 * YUAN),
        "split": lambda: ledger.split(cast.supplier1, root_id, [30_000 * YUAN, 30_000 * YUAN]),
        "merge": lambda: ledger.merge(cast.supplier1, part_id, root_id, 1_000 * YUAN),
        "offer": lambda: ledger.offer_discount(
            cast.supplier1, root_id, value=1_000 * YUAN, price=900 * YUAN, expiry=world.chain.now() + DAY
        ),
        "buy": lambda: ledger.buy_discounted(cast.factor, offer_id),
        "pause": lambda: ledger.pause(cast.admin),
    }
    for name, action in actions.items():
        with refused(world, errors.SystemPaused) as info:
            action()
        assert fields(info) == {}, name
    world.chain.advance_time(2 * DAY)
    for action in (lambda: ledger.settle(cast.relayer, [root_id]), lambda: ledger.withdraw(cast.supplier1)):
        with refused(world, errors.SystemPaused):
            action()
    ledger.unpause(cast.admin)
    with refused(world, errors.SystemNotPaused):
        ledger.unpause(cast.admin)
    ledger.settle(cast.relayer, [root_id, part_id])


def test_only_an_admin_pauses(world: World, ledger: LedgerClient, cast: Cast) -> None:
    with refused(world, errors.AccountMissingRole) as info:
        ledger.pause(cast.regulator)
    assert fields(info)["role"] == int(Role.ADMIN)


# ====================================================================== registry and oracle administration


def test_registry_refusals(world: World, ledger: LedgerClient, cast: Cast) -> None:
    with refused(world, errors.ParticipantAlreadyRegistered) as info:
        ledger.register_participant(cast.admin, cast.supplier1.address, label_hash("X"), Role.SUPPLIER)
    assert same(fields(info)["account"], cast.supplier1.address)
    with refused(world, errors.AccountMissingRole):
        ledger.register_participant(cast.issuer, cast.outsider.address, label_hash("X"), Role.SUPPLIER)
    with refused(world, errors.InvalidParticipant) as info:
        ledger.register_participant(cast.admin, cast.outsider.address, label_hash("X"), Role(0))
    assert fields(info)["roles"] == 0
    with refused(world, errors.InvalidParticipant):
        ledger.register_participant(cast.admin, cast.outsider.address, b"\x00" * 32, Role.SUPPLIER)
    with refused(world, errors.ParticipantAlreadyActive):
        ledger.reinstate(cast.admin, cast.supplier1.address)
    with refused(world, errors.ParticipantNotRegistered):
        ledger.suspend(cast.admin, cast.outsider.address)
    with refused(world, errors.InvalidSplitRules) as info:
        ledger.set_split_rules(cast.admin, 0, 3)
    assert fields(info) == {"minSplitUnit": 0, "maxSplitDepth": 3}


def test_oracle_administration_refusals(world: World, oracle: ReceiptOracleClient, cast: Cast) -> None:
    devices = enrolment(cast.devices)
    with refused(world, errors.WarehouseAlreadyRegistered) as info:
        oracle.register_warehouse(cast.admin, world.warehouse, devices, 2, FRESHNESS, RANGES)
    assert fields(info) == {"warehouse": world.warehouse}
    other = label_hash("WH-OTHER")
    with refused(world, errors.NotAdmin) as info:
        oracle.register_warehouse(cast.regulator, other, devices, 2, FRESHNESS, RANGES)
    assert same(fields(info)["caller"], cast.regulator.address)
    with refused(world, errors.InvalidDeviceSet) as info:
        oracle.register_warehouse(cast.admin, other, devices, 4, FRESHNESS, RANGES)
    assert fields(info) == {"deviceCount": 3, "threshold": 4, "freshness": FRESHNESS}
    with refused(world, errors.InvalidDeviceSet):
        oracle.register_warehouse(cast.admin, other, devices, 0, FRESHNESS, RANGES)
    # A window past a week (a typo of 2^32 - 1 held the warehouse's orders from cancellation); the
    # client and the API bound their input by the contract's own constant.
    assert oracle.contract.functions.MAX_FRESHNESS().call() == MAX_FRESHNESS == 7 * 86_400
    with refused(world, errors.InvalidDeviceSet) as info:
        oracle.register_warehouse(cast.admin, other, devices, 2, 2**32 - 1, RANGES)
    assert fields(info) == {"deviceCount": 3, "threshold": 2, "freshness": 2**32 - 1}
    with refused(world, errors.InvalidDeviceSet):
        oracle.rotate_devices(cast.admin, world.warehouse, devices, 2, 7 * 86_400 + 1, RANGES)
    with refused(world, errors.InvalidDevice) as info:
        oracle.register_warehouse(
            cast.admin, other, [devices[0], devices[0], devices[1]], 1, FRESHNESS, RANGES
        )
    assert same(fields(info)["device"], devices[0].address)
    with refused(world, errors.MissingReadingKind) as info:
        oracle.register_warehouse(cast.admin, other, [devices[0], devices[2]], 1, FRESHNESS, RANGES)
    assert fields(info) == {"kind": ReadingKind.NET_WEIGHT_GRAMS}
    with refused(world, errors.InvalidDeviceKind) as info:
        oracle.register_warehouse(cast.admin, other, devices, 2, FRESHNESS, RANGES[:1])
    assert fields(info)["kind"] == ReadingKind.NET_WEIGHT_GRAMS
    with refused(world, errors.InvalidReadingRange) as info:
        oracle.register_warehouse(
            cast.admin,
            other,
            devices,
            2,
            FRESHNESS,
            [RANGES[0], ReadingRange(ReadingKind.NET_WEIGHT_GRAMS, 9, 8)],
        )
    assert fields(info) == {"kind": ReadingKind.NET_WEIGHT_GRAMS, "min": 9, "max": 8}
    with refused(world, errors.UnknownWarehouse):
        oracle.rotate_devices(cast.admin, other, devices, 2, FRESHNESS, RANGES)
    with refused(world, errors.NotAdmin):
        oracle.set_relayer(cast.relayer, cast.outsider.address, True)


# ====================================================================== receipts through the oracle


def confirm_refused(
    world: World,
    kind: type[E],
    observations: list[Observation],
    signatures: list[bytes],
    relayer: LocalAccount | None = None,
) -> pytest.ExceptionInfo[E]:
    """Submits through the client (which sorts by device) and expects `kind`; every observation's
    sequence number stays unused, so the devices' readings are not burnt by a refusal."""
    with refused(world, kind) as info:
        world.oracle.confirm_receipt(relayer or world.cast.relayer, observations, signatures)
    for obs in observations:
        assert not world.oracle.sequence_used(obs.device, obs.sequence)
    return info


def send_raw_confirm(world: World, observations: list[Observation], signatures: list[bytes]) -> None:
    """Calls ReceiptOracle.confirmReceipt with the observations exactly in the order given."""
    fn = world.oracle.contract.functions.confirmReceipt([o.as_tuple() for o in observations], signatures)
    Transactor(world.chain, world.system.decoder).send(world.cast.relayer, fn)


def test_the_client_digest_matches_the_contract(world: World) -> None:
    (obs,), _ = world.receipt(world.open_order(), DEFAULT_QUANTITY, devices=(1,))
    assert world.oracle.observation_digest(obs) == obs.digest(world.chain.chain_id, world.oracle.address)
    assert Observation.from_json(obs.to_json()) == obs


def test_a_relayer_not_on_the_allow_list(world: World, oracle: ReceiptOracleClient, cast: Cast) -> None:
    order_id = world.open_order()
    observations, signatures = world.receipt(order_id, DEFAULT_QUANTITY)
    info = confirm_refused(world, errors.RelayerNotAllowed, observations, signatures, relayer=cast.outsider)
    assert same(info.value.fields["relayer"], cast.outsider.address)
    # Revoked: the gateway's own relayer is refused too, until allowed again.
    oracle.set_relayer(cast.admin, cast.relayer.address, False)
    assert not oracle.is_relayer(cast.relayer.address)
    confirm_refused(world, errors.RelayerNotAllowed, observations, signatures)
    oracle.set_relayer(cast.admin, cast.relayer.address, True)
    oracle.confirm_receipt(cast.relayer, observations, signatures)


def test_replayed_receipt(
    world: World, ledger: LedgerClient, oracle: ReceiptOracleClient, cast: Cast
) -> None:
    order_id = world.open_order()
    observations, signatures = world.receipt(order_id, DEFAULT_QUANTITY)
    oracle.confirm_receipt(cast.relayer, observations, signatures)
    assert all(oracle.sequence_used(o.device, o.sequence) for o in observations)
    # The same receipt again: the oracle stops it before the ledger sees it.
    with refused(world, errors.SequenceAlreadyUsed) as info:
        oracle.confirm_receipt(cast.relayer, observations, signatures)
    first = min(observations, key=lambda o: int(o.device, 16))
    assert fields(info)["sequence"] == first.sequence and same(fields(info)["device"], first.device)
    # A spent reading re-signed for another order is still spent.
    second = world.open_order()
    moved = [replace(o, order_id=second) for o in observations]
    with refused(world, errors.SequenceAlreadyUsed):
        oracle.confirm_receipt(cast.relayer, moved, world.sign(moved))
    # Fresh readings for the confirmed order: the ledger refuses a second confirmation.
    again, again_signatures = world.receipt(order_id, DEFAULT_QUANTITY)
    info2 = confirm_refused(world, errors.OrderNotOpen, again, again_signatures)
    assert info2.value.fields == {"orderId": order_id, "status": int(OrderStatus.CONFIRMED)}
    assert len(ledger.contract.events.OrderConfirmed.get_logs(from_block=0)) == 1


def test_signatures_for_another_chain_or_deployment(world: World, ledger: LedgerClient) -> None:
    order_id = world.open_order()
    observations, _ = world.receipt(order_id, DEFAULT_QUANTITY)
    chain_id = world.chain.chain_id
    for domain_chain, domain_contract in ((chain_id + 1, world.oracle.address), (chain_id, ledger.address)):
        signatures = [
            sign_observation(world.device(o.device), o, domain_chain, domain_contract) for o in observations
        ]
        stranger = recover_observation_signer(signatures[0], observations[0], chain_id, world.oracle.address)
        assert stranger != observations[0].device
        info = confirm_refused(world, errors.SignerMismatch, observations, signatures)
        index = info.value.fields["index"]
        ordered = sorted(observations, key=lambda o: int(o.device, 16))
        assert same(info.value.fields["device"], ordered[index].device)
        assert not same(info.value.fields["signer"], ordered[index].device)


def test_a_device_signing_for_another(world: World, cast: Cast) -> None:
    order_id = world.open_order()
    observations, signatures = world.receipt(order_id, DEFAULT_QUANTITY)
    # The weighbridge's observation signed by the outsider's key.
    weigh = next(i for i, o in enumerate(observations) if o.kind == ReadingKind.NET_WEIGHT_GRAMS)
    signatures[weigh] = world.oracle.sign(cast.outsider, observations[weigh])
    info = confirm_refused(world, errors.SignerMismatch, observations, signatures)
    assert same(info.value.fields["signer"], cast.outsider.address)


def test_a_key_that_is_not_a_device(world: World, cast: Cast) -> None:
    order_id = world.open_order()
    portal = world.observation(order_id, 0, DEFAULT_QUANTITY, signer=cast.outsider)
    weigh = world.observation(order_id, 1, DEFAULT_QUANTITY)
    info = confirm_refused(world, errors.UnknownDevice, [portal, weigh], world.sign([portal, weigh]))
    assert same(info.value.fields["device"], cast.outsider.address)


def test_expired_stale_and_future_readings(world: World) -> None:
    order_id = world.open_order()
    now = world.pending_time()
    expired, signatures = world.receipt(order_id, DEFAULT_QUANTITY, deadline=now - 1)
    info = confirm_refused(world, errors.ObservationExpired, expired, signatures)
    assert info.value.fields == {"index": 0, "deadline": now - 1, "nowTs": now}
    stale_at = now - FRESHNESS - 60
    stale, signatures = world.receipt(order_id, DEFAULT_QUANTITY, observed_at=stale_at)
    info = confirm_refused(world, errors.ObservationStale, stale, signatures)
    assert info.value.fields == {"index": 0, "observedAt": stale_at, "freshness": FRESHNESS}
    future, signatures = world.receipt(order_id, DEFAULT_QUANTITY, observed_at=now + 600)
    info = confirm_refused(world, errors.ObservationFromFuture, future, signatures)
    assert info.value.fields == {"index": 0, "observedAt": now + 600, "nowTs": now}


def test_too_few_or_too_many_observations(world: World, cast: Cast) -> None:
    order_id = world.open_order()
    observations, signatures = world.receipt(order_id, DEFAULT_QUANTITY, devices=(0, 1, 2))
    info = confirm_refused(world, errors.SignatureCount, observations[:1], signatures[:1])
    assert info.value.fields == {"count": 1, "threshold": 2, "max": 3}
    info = confirm_refused(world, errors.SignatureCount, [], [])
    assert info.value.fields == {"count": 0, "threshold": 0, "max": 0}
    extra = world.observation(order_id, 0, DEFAULT_QUANTITY, signer=cast.outsider)
    four = [*observations, extra]
    info = confirm_refused(world, errors.SignatureCount, four, world.sign(four))
    assert info.value.fields == {"count": 4, "threshold": 2, "max": 3}
    with refused(world, errors.LengthMismatch):
        send_raw_confirm(world, observations, signatures[:2])


def test_one_device_padding_the_quorum(world: World) -> None:
    """A portal's reading twice, even under two sequence numbers, is not two devices."""
    order_id = world.open_order()
    observations, signatures = world.receipt(order_id, DEFAULT_QUANTITY, devices=(0, 0, 1))
    info = confirm_refused(world, errors.DevicesNotAscending, observations, signatures)
    assert same(info.value.fields["device"], world.cast.devices[0].address)


def test_devices_out_of_order(world: World) -> None:
    order_id = world.open_order()
    observations, signatures = world.receipt(order_id, DEFAULT_QUANTITY)
    pairs = sorted(
        zip(observations, signatures, strict=True), key=lambda p: int(p[0].device, 16), reverse=True
    )
    with refused(world, errors.DevicesNotAscending) as info:
        send_raw_confirm(world, [o for o, _ in pairs], [s for _, s in pairs])
    assert fields(info)["index"] == 1
    send_raw_confirm(world, [o for o, _ in reversed(pairs)], [s for _, s in reversed(pairs)])


def test_one_sensor_kind_only(world: World) -> None:
    """Both portals agree, but nobody weighed the goods: no receipt."""
    order_id = world.open_order()
    observations, signatures = world.receipt(order_id, DEFAULT_QUANTITY, devices=(0, 2))
    info = confirm_refused(world, errors.MissingReadingKind, observations, signatures)
    assert info.value.fields == {"kind": ReadingKind.NET_WEIGHT_GRAMS}


def test_a_device_claiming_another_kind(world: World) -> None:
    order_id = world.open_order()
    portal = replace(world.observation(order_id, 0, DEFAULT_QUANTITY), kind=ReadingKind.NET_WEIGHT_GRAMS)
    weigh = world.observation(order_id, 1, DEFAULT_QUANTITY)
    info = confirm_refused(world, errors.DeviceKindMismatch, [portal, weigh], world.sign([portal, weigh]))
    assert info.value.fields["kind"] == ReadingKind.NET_WEIGHT_GRAMS


def test_out_of_range_readings(world: World) -> None:
    order_id = world.open_order()
    too_many = world.observation(order_id, 0, MAX_CARTONS + 1)
    weigh = world.observation(order_id, 1, DEFAULT_QUANTITY)
    info = confirm_refused(world, errors.ReadingOutOfRange, [too_many, weigh], world.sign([too_many, weigh]))
    assert info.value.fields["value"] == MAX_CARTONS + 1
    assert (info.value.fields["min"], info.value.fields["max"]) == (1, MAX_CARTONS)
    nothing = world.observation(order_id, 0, 0)
    info = confirm_refused(world, errors.ReadingOutOfRange, [nothing, weigh], world.sign([nothing, weigh]))
    assert info.value.fields["value"] == 0


def test_the_lowest_count_is_delivered(world: World, ledger: LedgerClient) -> None:
    order_id = world.open_order(expected_quantity=DEFAULT_QUANTITY)
    low = world.observation(order_id, 0, DEFAULT_QUANTITY - 100)
    weigh = world.observation(order_id, 1, DEFAULT_QUANTITY)
    high = world.observation(order_id, 2, DEFAULT_QUANTITY)
    world.oracle.confirm_receipt(world.cast.relayer, [low, weigh, high], world.sign([low, weigh, high]))
    assert ledger.order(order_id).delivered_quantity == DEFAULT_QUANTITY - 100


def test_rotated_devices(world: World, oracle: ReceiptOracleClient, cast: Cast) -> None:
    order_id = world.open_order()
    old, old_signatures = world.receipt(order_id, DEFAULT_QUANTITY)
    new_devices: list[LocalAccount] = [world.chain.new_account(0) for _ in range(3)]
    oracle.rotate_devices(cast.admin, world.warehouse, enrolment(new_devices), 2, FRESHNESS, RANGES)
    assert oracle.warehouse(world.warehouse).device_set_version == 2
    assert not oracle.is_device(world.warehouse, cast.devices[0].address)
    assert oracle.device_kind(world.warehouse, new_devices[1].address) == ReadingKind.NET_WEIGHT_GRAMS
    info = confirm_refused(world, errors.StaleDeviceSet, old, old_signatures)
    assert info.value.fields == {"warehouse": world.warehouse, "given": 1, "current": 2}
    # Naming the new version does not help the retired keys.
    retired, retired_signatures = world.receipt(order_id, DEFAULT_QUANTITY)
    info2 = confirm_refused(world, errors.UnknownDevice, retired, retired_signatures)
    assert info2.value.fields["index"] == 0
    now = world.pending_time()
    fresh, fresh_signatures = oracle.observe_delivery(
        [(d, k) for d, k in zip(new_devices, DEVICE_KINDS, strict=True)][:2],
        order_id=order_id,
        warehouse=world.warehouse,
        goods_hash=world.goods,
        cartons=DEFAULT_QUANTITY,
        carton_grams=CARTON_GRAMS,
        observed_at=now - 60,
        sequences=(1, 1),
        deadline=now + FRESHNESS,
    )
    oracle.confirm_receipt(cast.relayer, fresh, fresh_signatures)


def high_s(signature: bytes) -> bytes:
    """The other valid-looking (r, n - s) form of an ECDSA signature, with v flipped."""
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    return r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])


def test_malleated_high_s_signature(world: World) -> None:
    order_id = world.open_order()
    observations, signatures = world.receipt(order_id, DEFAULT_QUANTITY)
    bad = high_s(signatures[1])
    # The malleated form is refused off chain by the canonical check ...
    assert signature_is_canonical(signatures[1]) and not signature_is_canonical(bad)
    with pytest.raises(ValueError):
        recover_observation_signer(bad, observations[1], world.chain.chain_id, world.oracle.address)
    # ... and on chain.
    index = sorted(observations, key=lambda o: int(o.device, 16)).index(observations[1])
    info = confirm_refused(world, errors.InvalidSignature, observations, [signatures[0], bad])
    assert info.value.fields == {"index": index}


def test_signature_with_v_0_or_1_and_garbage(world: World) -> None:
    order_id = world.open_order()
    observations, signatures = world.receipt(order_id, DEFAULT_QUANTITY)
    low_v = [s[:64] + bytes([s[64] - 27]) for s in signatures]
    assert not any(signature_is_canonical(s) for s in low_v)
    info = confirm_refused(world, errors.InvalidSignature, observations, low_v)
    assert info.value.fields == {"index": 0}
    for garbage in (b"\x00" * 65, signatures[0][:64], b"\xde\xad\xbe\xef", signatures[0] + b"\x00"):
        assert not signature_is_canonical(garbage)
        with refused(world, errors.InvalidSignature):
            send_raw_confirm(world, sorted(observations, key=lambda o: int(o.device, 16)), [garbage, garbage])


def test_receipt_for_another_warehouse_or_other_goods(
    world: World, oracle: ReceiptOracleClient, cast: Cast
) -> None:
    other = label_hash("WH-TEST-02")
    oracle.register_warehouse(cast.admin, other, enrolment(cast.devices), 2, FRESHNESS, RANGES)
    order_id = world.open_order()
    observations, signatures = world.receipt(order_id, DEFAULT_QUANTITY, warehouse=other)
    info = confirm_refused(world, errors.ReceiptDoesNotMatchOrder, observations, signatures)
    assert info.value.fields == {"orderId": order_id, "warehouse": other, "goodsHash": world.goods}
    wrong_goods = label_hash("cast iron, not brake discs")
    observations, signatures = world.receipt(order_id, DEFAULT_QUANTITY, goods=wrong_goods)
    info = confirm_refused(world, errors.ReceiptDoesNotMatchOrder, observations, signatures)
    assert info.value.fields == {"orderId": order_id, "warehouse": world.warehouse, "goodsHash": wrong_goods}
    mixed = [
        world.observation(order_id, 0, DEFAULT_QUANTITY),
        world.observation(order_id, 1, 10, goods=wrong_goods),
    ]
    info = confirm_refused(world, errors.ObservationMismatch, mixed, world.sign(mixed))
    assert info.value.fields == {"index": 1}


def test_unknown_or_deactivated_warehouse(world: World, oracle: ReceiptOracleClient, cast: Cast) -> None:
    order_id = world.open_order()
    nowhere = label_hash("WH-NOWHERE")
    observations, signatures = world.receipt(
        order_id, DEFAULT_QUANTITY, warehouse=nowhere, device_set_version=1
    )
    info = confirm_refused(world, errors.UnknownWarehouse, observations, signatures)
    assert info.value.fields == {"warehouse": nowhere}
    oracle.deactivate_warehouse(cast.admin, world.warehouse)
    observations, signatures = world.receipt(order_id, DEFAULT_QUANTITY, device_set_version=1)
    info = confirm_refused(world, errors.UnknownWarehouse, observations, signatures)
    assert info.value.fields == {"warehouse": world.warehouse}


def test_receipt_after_the_deadline(world: World, ledger: LedgerClient) -> None:
    order_id = world.open_order(deadline_in=600)
    deadline = ledger.order(order_id).deadline
    world.chain.advance_time(1_200)
    observations, signatures = world.receipt(order_id, DEFAULT_QUANTITY, observed_at=deadline + 1)
    info = confirm_refused(world, errors.ReceiptAfterDeadline, observations, signatures)
    assert info.value.fields == {"orderId": order_id, "receivedAt": deadline + 1, "deadline": deadline}


def test_payee_suspended_before_the_receipt(world: World, ledger: LedgerClient, cast: Cast) -> None:
    order_id = world.open_order()
    ledger.suspend(cast.admin, cast.supplier1.address)
    observations, signatures = world.receipt(order_id, DEFAULT_QUANTITY)
    info = confirm_refused(world, errors.ReceiverNotEligible, observations, signatures)
    assert same(info.value.fields["receiver"], cast.supplier1.address)


def test_only_the_oracle_confirms_on_the_ledger(world: World, ledger: LedgerClient, cast: Cast) -> None:
    order_id = world.open_order()
    fn = ledger.contract.functions.confirmReceipt(
        order_id, world.warehouse, world.goods, 10, world.chain.now()
    )
    with refused(world, errors.NotReceiptOracle) as info:
        Transactor(world.chain, world.system.decoder).send(cast.outsider, fn)
    assert same(fields(info)["caller"], cast.outsider.address)


# ====================================================================== what a refusal costs


def test_a_refused_request_spends_no_gas(world: World, ledger: LedgerClient, cast: Cast) -> None:
    _, root_id = world.certificate_for()
    w3 = world.chain.w3
    for sender, action in (
        (cast.outsider, lambda: ledger.transfer(cast.outsider, root_id, cast.supplier2.address)),
        (cast.supplier1, lambda: ledger.transfer(cast.supplier1, root_id, cast.outsider.address)),
        (cast.issuer, lambda: world.open_order(amount=0)),
    ):
        ether = w3.eth.get_balance(sender.address)
        nonce = w3.eth.get_transaction_count(sender.address)
        block = w3.eth.block_number
        with pytest.raises(errors.ContractError):
            action()
        assert w3.eth.get_balance(sender.address) == ether
        assert w3.eth.get_transaction_count(sender.address) == nonce
        assert w3.eth.block_number == block
    # The nonce sequence is intact: the next request goes through.
    ledger.transfer(cast.supplier1, root_id, cast.supplier2.address)


def test_a_revert_on_chain_is_typed_too(world: World, ledger: LedgerClient, cast: Cast) -> None:
    """With an explicit gas limit the transaction is sent unsimulated and reverts on chain;
    Transactor.send documents typed contract errors, so it must not leak the embedded backend's
    own TransactionFailed."""
    _, root_id = world.certificate_for()
    fn = ledger.contract.functions.transferFrom(cast.supplier1.address, cast.supplier2.address, root_id)
    with pytest.raises(errors.CertledgerError) as info:
        Transactor(world.chain, world.system.decoder).send(cast.outsider, fn, gas=200_000)
    assert type(info.value) is errors.NotApprovedOrHolder
    assert ledger.certificate(root_id).holder == cast.supplier1.address


def test_pricing_refuses_a_face_above_the_ledgers_amounts() -> None:
    with pytest.raises(ValueError):
        discount_price(2**128, 30, 600)


def test_a_manifest_whose_contracts_are_not_one_system_is_refused(world: World) -> None:
    """Every address must hold the contract the manifest says and name the others; and the ledger
    and oracle must be compiled from this client's sources (its ABI reads their events)."""
    from chain_client.deploy import Deployment

    d = world.system.deployment
    d.check(world.chain)
    cases: list[tuple[Deployment, str]] = [
        (replace(d, token=world.cast.outsider.address), "no contract code at SettlementToken"),
        (replace(d, token=d.oracle), "names settlementToken"),
        (replace(d, ledger=d.token), "does not answer settlementToken"),
        (replace(d, oracle=d.token), "names receiptOracle"),
        (replace(d, artifact_hashes={**d.artifact_hashes, "CertificateLedger": "00" * 32}), "other sources"),
        (replace(d, chain_id=d.chain_id + 1), "node is chain"),
    ]
    for manifest, why in cases:
        with pytest.raises(errors.ManifestError, match=why):
            manifest.check(world.chain)
