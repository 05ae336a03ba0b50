// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC721} from "@openzeppelin/contracts/token/ERC721/IERC721.sol";

import {Base} from "./Base.t.sol";
import {ICertificateLedger} from "../src/interfaces/ICertificateLedger.sol";
import {IERC3525} from "../src/interfaces/IERC3525.sol";
import {IParticipantRegistry, ROLE_ISSUER} from "../src/interfaces/IParticipantRegistry.sol";
import {IReceiptOracle} from "../src/interfaces/IReceiptOracle.sol";
import {SettlementToken} from "../src/SettlementToken.sol";

/// @notice openOrder, cancelOrder and what a confirmation does to escrow and certificates.
contract OrdersTest is Base {
    // ------------------------------------------------------------------ openOrder

    function test_openOrder_escrowsAndEmits() public {
        bytes32 invoice = keccak256("INV-2024-0001");
        uint256 issuerBefore = token.balanceOf(issuer);

        vm.expectEmit(address(ledger));
        emit ICertificateLedger.OrderOpened(
            1, issuer, supplierA, uint128(AMOUNT), MATURITY, DEADLINE, invoice, WAREHOUSE, GOODS, QTY
        );
        vm.prank(issuer);
        uint256 orderId =
            ledger.openOrder(supplierA, AMOUNT, MATURITY, invoice, WAREHOUSE, GOODS, QTY, DEADLINE);

        vm.assertEq(orderId, 1);
        vm.assertEq(token.balanceOf(issuer), issuerBefore - AMOUNT);
        vm.assertEq(token.balanceOf(address(ledger)), AMOUNT);
        vm.assertTrue(ledger.invoiceUsed(invoice));
        vm.assertEq(uint256(ledger.participant(issuer).outstanding), AMOUNT);
        (uint256 orders, uint256 certs,) = ledger.counts();
        vm.assertEq(orders, 1);
        vm.assertEq(certs, 0);

        ICertificateLedger.Order memory o = ledger.order(orderId);
        vm.assertEq(o.issuer, issuer);
        vm.assertEq(o.payee, supplierA);
        vm.assertEq(uint256(o.maturity), MATURITY);
        vm.assertEq(uint256(o.deadline), DEADLINE);
        vm.assertEq(uint256(o.status), uint256(ICertificateLedger.OrderStatus.Open));
        vm.assertEq(uint256(o.expectedQuantity), QTY);
        vm.assertEq(uint256(o.escrowed), AMOUNT);
        vm.assertEq(uint256(o.paid), 0);
        vm.assertEq(uint256(o.refunded), 0);
        vm.assertEq(o.invoiceHash, invoice);
        vm.assertEq(o.warehouse, WAREHOUSE);
        vm.assertEq(o.goodsHash, GOODS);
        vm.assertEq(uint256(o.rootCertificateId), 0);
    }

    function test_openOrder_maxAmount() public {
        vm.prank(admin);
        ledger.setIssuerLimit(issuer, type(uint128).max);
        token.mint(issuer, type(uint128).max);
        uint256 orderId = _openOrder(supplierA, type(uint128).max, MATURITY, QTY, DEADLINE);
        vm.assertEq(uint256(ledger.order(orderId).escrowed), type(uint128).max);
    }

    /// @dev Calls openOrder as `caller` expecting `err`, and checks no token moved.
    function _expectOpenRevert(
        bytes memory err,
        address caller,
        address payee,
        uint256 amount,
        bytes32 invoice,
        uint64 qty,
        uint40 deadline
    ) internal {
        uint256 callerBefore = token.balanceOf(caller);
        uint256 ledgerBefore = token.balanceOf(address(ledger));
        (uint256 ordersBefore,,) = ledger.counts();
        vm.expectRevert(err);
        vm.prank(caller);
        ledger.openOrder(payee, amount, MATURITY, invoice, WAREHOUSE, GOODS, qty, deadline);
        vm.assertEq(token.balanceOf(caller), callerBefore);
        vm.assertEq(token.balanceOf(address(ledger)), ledgerBefore);
        (uint256 ordersAfter,,) = ledger.counts();
        vm.assertEq(ordersAfter, ordersBefore);
        vm.assertFalse(ledger.invoiceUsed(invoice) && invoice == keccak256("fresh"));
    }

    function test_openOrder_zeroAmount() public {
        _expectOpenRevert(
            _err(ICertificateLedger.ZeroAmount.selector),
            issuer,
            supplierA,
            0,
            keccak256("fresh"),
            QTY,
            DEADLINE
        );
    }

    function test_openOrder_zeroQuantity() public {
        _expectOpenRevert(
            _err(ICertificateLedger.ZeroAmount.selector),
            issuer,
            supplierA,
            AMOUNT,
            keccak256("fresh"),
            0,
            DEADLINE
        );
    }

    function test_openOrder_amountTooLarge() public {
        uint256 amount = uint256(type(uint128).max) + 1;
        _expectOpenRevert(
            abi.encodeWithSelector(ICertificateLedger.AmountTooLarge.selector, amount),
            issuer,
            supplierA,
            amount,
            keccak256("fresh"),
            QTY,
            DEADLINE
        );
    }

    function test_openOrder_deadlineNow() public {
        _expectOpenRevert(
            abi.encodeWithSelector(ICertificateLedger.DeadlineInPast.selector, T0, T0),
            issuer,
            supplierA,
            AMOUNT,
            keccak256("fresh"),
            QTY,
            uint40(T0)
        );
    }

    function test_openOrder_deadlineInPast() public {
        _expectOpenRevert(
            abi.encodeWithSelector(ICertificateLedger.DeadlineInPast.selector, T0 - 1, T0),
            issuer,
            supplierA,
            AMOUNT,
            keccak256("fresh"),
            QTY,
            uint40(T0 - 1)
        );
    }

    function test_openOrder_payeeUnregistered() public {
        _expectOpenRevert(
            abi.encodeWithSelector(ICertificateLedger.PayeeNotEligible.selector, outsider),
            issuer,
            outsider,
            AMOUNT,
            keccak256("fresh"),
            QTY,
            DEADLINE
        );
    }

    function test_openOrder_payeeWithoutHolderRole() public {
        _expectOpenRevert(
            abi.encodeWithSelector(ICertificateLedger.PayeeNotEligible.selector, regulator),
            issuer,
            regulator,
            AMOUNT,
            keccak256("fresh"),
            QTY,
            DEADLINE
        );
    }

    function test_openOrder_payeeSuspended() public {
        vm.prank(admin);
        ledger.suspendParticipant(supplierA);
        _expectOpenRevert(
            abi.encodeWithSelector(ICertificateLedger.PayeeNotEligible.selector, supplierA),
            issuer,
            supplierA,
            AMOUNT,
            keccak256("fresh"),
            QTY,
            DEADLINE
        );
    }

    function test_openOrder_zeroInvoiceHash() public {
        _expectOpenRevert(
            abi.encodeWithSelector(ICertificateLedger.DuplicateInvoice.selector, bytes32(0)),
            issuer,
            supplierA,
            AMOUNT,
            bytes32(0),
            QTY,
            DEADLINE
        );
    }

    function test_openOrder_duplicateInvoice() public {
        bytes32 invoice = keccak256("INV-DUP");
        vm.prank(issuer);
        ledger.openOrder(supplierA, AMOUNT, MATURITY, invoice, WAREHOUSE, GOODS, QTY, DEADLINE);
        _expectOpenRevert(
            abi.encodeWithSelector(ICertificateLedger.DuplicateInvoice.selector, invoice),
            issuer,
            supplierB,
            AMOUNT,
            invoice,
            QTY,
            DEADLINE
        );
    }

    function test_openOrder_invoiceReusedAfterCancel() public {
        bytes32 invoice = keccak256("INV-CANCELLED");
        vm.prank(issuer);
        uint256 orderId =
            ledger.openOrder(supplierA, AMOUNT, MATURITY, invoice, WAREHOUSE, GOODS, QTY, DEADLINE);
        vm.warp(DEADLINE + FRESHNESS + 1);
        vm.prank(issuer);
        ledger.cancelOrder(orderId);
        vm.assertFalse(ledger.invoiceUsed(invoice));
        vm.prank(issuer);
        uint256 again = ledger.openOrder(
            supplierA, AMOUNT, uint40(DEADLINE + 30 days), invoice, WAREHOUSE, GOODS, QTY, uint40(DEADLINE + 7 days)
        );
        vm.assertEq(again, orderId + 1);
        vm.assertTrue(ledger.invoiceUsed(invoice));
        _expectOpenRevert(
            abi.encodeWithSelector(ICertificateLedger.DuplicateInvoice.selector, invoice),
            issuer,
            supplierB,
            AMOUNT,
            invoice,
            QTY,
            uint40(DEADLINE + 7 days)
        );
    }

    function test_openOrder_invoiceOfConfirmedOrder() public {
        uint256 orderId = _openOrder();
        _confirm(orderId, QTY);
        bytes32 invoice = ledger.order(orderId).invoiceHash;
        _expectOpenRevert(
            abi.encodeWithSelector(ICertificateLedger.DuplicateInvoice.selector, invoice),
            issuer,
            supplierA,
            AMOUNT,
            invoice,
            QTY,
            uint40(DEADLINE + 7 days)
        );
    }

    function test_openOrder_unknownWarehouse() public {
        bytes32 nowhere = keccak256("WH-DOES-NOT-EXIST");
        uint256 balance = token.balanceOf(issuer);
        vm.prank(issuer);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnknownWarehouse.selector, nowhere));
        ledger.openOrder(supplierA, AMOUNT, MATURITY, keccak256("INV-NOWHERE"), nowhere, GOODS, QTY, DEADLINE);
        vm.assertEq(token.balanceOf(issuer), balance);
        vm.assertFalse(ledger.invoiceUsed(keccak256("INV-NOWHERE")));
    }

    function test_openOrder_inactiveWarehouse() public {
        vm.prank(admin);
        oracle.deactivateWarehouse(WAREHOUSE_2);
        vm.prank(issuer);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnknownWarehouse.selector, WAREHOUSE_2));
        ledger.openOrder(supplierA, AMOUNT, MATURITY, keccak256("INV-CLOSED"), WAREHOUSE_2, GOODS, QTY, DEADLINE);
    }

    function test_openOrder_issuerLimitExceeded() public {
        _openOrder(ISSUER_LIMIT - 10);
        _expectOpenRevert(
            abi.encodeWithSelector(
                IParticipantRegistry.IssuerLimitExceeded.selector, issuer, ISSUER_LIMIT - 10, 11, ISSUER_LIMIT
            ),
            issuer,
            supplierA,
            11,
            keccak256("fresh"),
            QTY,
            DEADLINE
        );
        // exactly up to the limit is fine
        _openOrder(10);
        vm.assertEq(uint256(ledger.participant(issuer).outstanding), ISSUER_LIMIT);
    }

    function test_openOrder_callerMissingIssuerRole() public {
        _fund(supplierA);
        _expectOpenRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, supplierA, ROLE_ISSUER),
            supplierA,
            supplierB,
            AMOUNT,
            keccak256("fresh"),
            QTY,
            DEADLINE
        );
    }

    function test_openOrder_callerSuspended() public {
        vm.prank(admin);
        ledger.suspendParticipant(issuer);
        _expectOpenRevert(
            abi.encodeWithSelector(IParticipantRegistry.ParticipantNotActive.selector, issuer),
            issuer,
            supplierA,
            AMOUNT,
            keccak256("fresh"),
            QTY,
            DEADLINE
        );
    }

    function test_openOrder_callerNotRegistered() public {
        _expectOpenRevert(
            abi.encodeWithSelector(IParticipantRegistry.ParticipantNotRegistered.selector, outsider),
            outsider,
            supplierA,
            AMOUNT,
            keccak256("fresh"),
            QTY,
            DEADLINE
        );
    }

    function test_openOrder_paused() public {
        vm.prank(admin);
        ledger.pause();
        _expectOpenRevert(
            _err(ICertificateLedger.SystemPaused.selector),
            issuer,
            supplierA,
            AMOUNT,
            keccak256("fresh"),
            QTY,
            DEADLINE
        );
    }

    function test_openOrder_issuerBlockedByBank() public {
        token.setBlocked(issuer, true);
        _expectOpenRevert(
            abi.encodeWithSelector(SettlementToken.AccountBlocked.selector, issuer),
            issuer,
            supplierA,
            AMOUNT,
            keccak256("fresh"),
            QTY,
            DEADLINE
        );
        vm.assertEq(uint256(ledger.participant(issuer).outstanding), 0);
    }

    // ------------------------------------------------------------------ cancelOrder

    function test_cancelOrder_afterDeadlineRefunds() public {
        uint256 before = token.balanceOf(issuer);
        uint256 orderId = _openOrder();
        vm.warp(DEADLINE + FRESHNESS + 1);
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.OrderCancelled(orderId, issuer, uint128(AMOUNT));
        vm.prank(issuer);
        ledger.cancelOrder(orderId);

        ICertificateLedger.Order memory o = ledger.order(orderId);
        vm.assertEq(uint256(o.status), uint256(ICertificateLedger.OrderStatus.Cancelled));
        vm.assertEq(uint256(o.refunded), AMOUNT);
        vm.assertEq(uint256(o.paid), 0);
        vm.assertEq(token.balanceOf(issuer), before);
        vm.assertEq(token.balanceOf(address(ledger)), 0);
        vm.assertEq(uint256(ledger.participant(issuer).outstanding), 0);
    }

    function test_cancelOrder_atDeadline() public {
        uint256 orderId = _openOrder();
        vm.warp(DEADLINE + FRESHNESS);
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.DeadlineNotPassed.selector, orderId, DEADLINE + FRESHNESS)
        );
        vm.prank(issuer);
        ledger.cancelOrder(orderId);
        vm.assertEq(token.balanceOf(address(ledger)), AMOUNT);
    }

    function test_cancelOrder_beforeDeadline() public {
        uint256 orderId = _openOrder();
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.DeadlineNotPassed.selector, orderId, DEADLINE + FRESHNESS)
        );
        vm.prank(issuer);
        ledger.cancelOrder(orderId);
    }

    function test_cancelOrder_confirmedOrder() public {
        uint256 orderId = _openOrder();
        _confirm(orderId, QTY);
        vm.warp(DEADLINE + FRESHNESS + 1);
        vm.expectRevert(
            abi.encodeWithSelector(
                ICertificateLedger.OrderNotOpen.selector, orderId, ICertificateLedger.OrderStatus.Confirmed
            )
        );
        vm.prank(issuer);
        ledger.cancelOrder(orderId);
        vm.assertEq(token.balanceOf(address(ledger)), AMOUNT);
    }

    function test_cancelOrder_twice() public {
        uint256 orderId = _openOrder();
        vm.warp(DEADLINE + FRESHNESS + 1);
        vm.prank(issuer);
        ledger.cancelOrder(orderId);
        vm.expectRevert(
            abi.encodeWithSelector(
                ICertificateLedger.OrderNotOpen.selector, orderId, ICertificateLedger.OrderStatus.Cancelled
            )
        );
        vm.prank(issuer);
        ledger.cancelOrder(orderId);
    }

    function test_cancelOrder_unknownOrder() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnknownOrder.selector, 7));
        vm.prank(issuer);
        ledger.cancelOrder(7);
    }

    function test_cancelOrder_notIssuer() public {
        uint256 orderId = _openOrder();
        vm.warp(DEADLINE + FRESHNESS + 1);
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.NotOrderIssuer.selector, orderId, supplierA)
        );
        vm.prank(supplierA);
        ledger.cancelOrder(orderId);
    }

    function test_cancelOrder_blockedIssuerIsCredited() public {
        uint256 orderId = _openOrder();
        vm.warp(DEADLINE + FRESHNESS + 1);
        token.setBlocked(issuer, true);
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.PaymentCredited(issuer, orderId, uint128(AMOUNT));
        vm.prank(issuer);
        ledger.cancelOrder(orderId);
        vm.assertEq(ledger.credit(issuer), AMOUNT);
        vm.assertEq(ledger.totalCredits(), AMOUNT);
        vm.assertEq(token.balanceOf(address(ledger)), AMOUNT);

        token.setBlocked(issuer, false);
        vm.prank(issuer);
        vm.assertEq(ledger.withdraw(), AMOUNT);
        vm.assertEq(token.balanceOf(issuer), FUNDS);
        vm.assertEq(ledger.totalCredits(), 0);
    }

    function test_cancelOrder_thenConfirmRefused() public {
        uint256 orderId = _openOrder();
        vm.warp(DEADLINE + FRESHNESS + 1);
        vm.prank(issuer);
        ledger.cancelOrder(orderId);
        // A receipt at the deadline is stale by the time cancelling is allowed; a fresher one (made
        // after the deadline) is refused by the ledger as cancelled.
        (IReceiptOracle.Observation[] memory late, bytes[] memory sigs) = _receipt(orderId, QTY, uint64(block.timestamp));
        vm.expectRevert(
            abi.encodeWithSelector(
                ICertificateLedger.OrderNotOpen.selector, orderId, ICertificateLedger.OrderStatus.Cancelled
            )
        );
        _submit(late, sigs);
    }

    /// The race the freshness window closes: goods arrive at the deadline, the relayer is a minute
    /// late; the issuer, who sees the receipt first, cannot cancel before it is confirmed.
    function test_cancelOrder_cannotRaceAReceiptMadeByTheDeadline() public {
        uint256 orderId = _openOrder();
        (IReceiptOracle.Observation[] memory a, bytes[] memory sigs) = _receipt(orderId, QTY, uint64(DEADLINE));
        vm.warp(DEADLINE + 60);
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.DeadlineNotPassed.selector, orderId, DEADLINE + FRESHNESS)
        );
        vm.prank(issuer);
        ledger.cancelOrder(orderId);
        uint256 root = _submit(a, sigs);
        vm.assertEq(ledger.ownerOf(root), supplierA);
    }

    // ------------------------------------------------------------------ confirmation

    function test_confirmReceipt_fullDeliveryMintsRoot() public {
        uint256 orderId = _openOrder();
        (IReceiptOracle.Observation[] memory a, bytes[] memory sigs) = _receipt(orderId, QTY, uint64(block.timestamp));

        vm.expectEmit(address(ledger));
        emit IERC721.Transfer(address(0), supplierA, 1);
        vm.expectEmit(address(ledger));
        emit IERC3525.SlotChanged(1, 0, orderId);
        vm.expectEmit(address(ledger));
        emit IERC3525.TransferValue(0, 1, AMOUNT);
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.CertificateIssued(1, orderId, 0, supplierA, uint128(AMOUNT), 0, MATURITY);
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.OrderConfirmed(orderId, 1, QTY, uint64(block.timestamp), uint128(AMOUNT), 0);
        uint256 rootId = _submit(a, sigs);

        vm.assertEq(rootId, 1);
        ICertificateLedger.Certificate memory c = ledger.certificate(rootId);
        vm.assertEq(c.holder, supplierA);
        vm.assertEq(uint256(c.value), AMOUNT);
        vm.assertEq(uint256(c.orderId), orderId);
        vm.assertEq(uint256(c.parentId), 0);
        vm.assertEq(uint256(c.depth), 0);
        vm.assertEq(uint256(c.maturity), MATURITY);
        vm.assertEq(uint256(c.status), uint256(ICertificateLedger.CertificateStatus.Live));
        vm.assertFalse(c.frozen);

        ICertificateLedger.Order memory o = ledger.order(orderId);
        vm.assertEq(uint256(o.status), uint256(ICertificateLedger.OrderStatus.Confirmed));
        vm.assertEq(uint256(o.deliveredQuantity), QTY);
        vm.assertEq(uint256(o.rootCertificateId), rootId);
        vm.assertEq(uint256(o.refunded), 0);
        vm.assertEq(ledger.ownerOf(rootId), supplierA);
        vm.assertEq(ledger.balanceOf(supplierA), 1);
        vm.assertEq(token.balanceOf(address(ledger)), AMOUNT);
    }

    function test_confirmReceipt_shortDeliveryRefundsProRata() public {
        uint256 issuerBefore = token.balanceOf(issuer);
        uint256 orderId = _openOrder();
        (IReceiptOracle.Observation[] memory a, bytes[] memory sigs) = _receipt(orderId, 70, uint64(block.timestamp));
        uint128 face = uint128(AMOUNT * 70 / 100);

        vm.expectEmit(address(ledger));
        emit ICertificateLedger.OrderConfirmed(
            orderId, 1, 70, uint64(block.timestamp), face, uint128(AMOUNT) - face
        );
        uint256 rootId = _submit(a, sigs);

        vm.assertEq(_value(rootId), face);
        vm.assertEq(token.balanceOf(issuer), issuerBefore - face);
        vm.assertEq(token.balanceOf(address(ledger)), face);
        ICertificateLedger.Order memory o = ledger.order(orderId);
        vm.assertEq(uint256(o.refunded), AMOUNT - face);
        vm.assertEq(uint256(o.deliveredQuantity), 70);
        vm.assertEq(uint256(ledger.participant(issuer).outstanding), face);
    }

    function test_confirmReceipt_shortDeliveryRoundsFaceDown() public {
        uint256 orderId = _openOrder(supplierA, 1000, MATURITY, 3, DEADLINE);
        uint256 rootId = _confirm(orderId, 1);
        vm.assertEq(_value(rootId), 333);
        vm.assertEq(uint256(ledger.order(orderId).refunded), 667);
    }

    function test_confirmReceipt_overDeliveryCapped() public {
        uint256 issuerBefore = token.balanceOf(issuer);
        uint256 orderId = _openOrder();
        uint256 rootId = _confirm(orderId, QTY * 3);
        vm.assertEq(_value(rootId), AMOUNT);
        ICertificateLedger.Order memory o = ledger.order(orderId);
        vm.assertEq(uint256(o.refunded), 0);
        vm.assertEq(uint256(o.deliveredQuantity), QTY * 3);
        vm.assertEq(token.balanceOf(issuer), issuerBefore - AMOUNT);
    }

    function test_confirmReceipt_payOnReceiptWhenMature() public {
        uint256 orderId = _openOrder(supplierA, AMOUNT, uint40(T0), QTY, DEADLINE);
        vm.warp(T0 + 1 hours);
        (IReceiptOracle.Observation[] memory a, bytes[] memory sigs) = _receipt(orderId, QTY, uint64(block.timestamp));
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.CertificateSettled(1, orderId, supplierA, uint128(AMOUNT));
        uint256 rootId = _submit(a, sigs);

        vm.assertEq(token.balanceOf(supplierA), AMOUNT);
        vm.assertEq(token.balanceOf(address(ledger)), 0);
        vm.assertEq(
            uint256(ledger.certificate(rootId).status), uint256(ICertificateLedger.CertificateStatus.Settled)
        );
        vm.assertEq(uint256(ledger.order(orderId).paid), AMOUNT);
        vm.assertEq(uint256(ledger.participant(issuer).outstanding), 0);
    }

    function test_confirmReceipt_payOnReceiptAtMaturityInstant() public {
        uint40 maturity = uint40(T0 + 1 days);
        uint256 orderId = _openOrder(supplierA, AMOUNT, maturity, QTY, DEADLINE);
        vm.warp(maturity);
        uint256 rootId = _confirm(orderId, QTY);
        vm.assertEq(
            uint256(ledger.certificate(rootId).status), uint256(ICertificateLedger.CertificateStatus.Settled)
        );
        vm.assertEq(token.balanceOf(supplierA), AMOUNT);
    }

    function test_confirmReceipt_payOnReceiptShortDelivery() public {
        uint256 issuerBefore = token.balanceOf(issuer);
        uint256 orderId = _openOrder(supplierA, AMOUNT, 0, QTY, DEADLINE);
        _confirm(orderId, 40);
        uint256 face = AMOUNT * 40 / 100;
        vm.assertEq(token.balanceOf(supplierA), face);
        vm.assertEq(token.balanceOf(issuer), issuerBefore - face);
        vm.assertEq(token.balanceOf(address(ledger)), 0);
        ICertificateLedger.Order memory o = ledger.order(orderId);
        vm.assertEq(uint256(o.paid), face);
        vm.assertEq(uint256(o.refunded), AMOUNT - face);
    }

    function test_confirmReceipt_payOnReceiptBlockedPayeeCredited() public {
        uint256 orderId = _openOrder(supplierA, AMOUNT, 0, QTY, DEADLINE);
        token.setBlocked(supplierA, true);
        (IReceiptOracle.Observation[] memory a, bytes[] memory sigs) = _receipt(orderId, QTY, uint64(block.timestamp));
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.PaymentCredited(supplierA, orderId, uint128(AMOUNT));
        _submit(a, sigs);
        vm.assertEq(ledger.credit(supplierA), AMOUNT);
        vm.assertEq(token.balanceOf(address(ledger)), AMOUNT);
    }

    function test_confirmReceipt_notOracle() public {
        uint256 orderId = _openOrder();
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.NotReceiptOracle.selector, relayer));
        vm.prank(relayer);
        ledger.confirmReceipt(orderId, WAREHOUSE, GOODS, QTY, uint64(block.timestamp));
    }

    function test_confirmReceipt_unknownOrder() public {
        uint256 orderId = _openOrder();
        (IReceiptOracle.Observation[] memory a,) = _receipt(orderId, QTY, uint64(block.timestamp));
        for (uint256 i; i < a.length; ++i) {
            a[i].orderId = 5;
        }
        bytes[] memory sigs = _resign(a);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnknownOrder.selector, 5));
        _submit(a, sigs);
    }

    function test_confirmReceipt_wrongGoods() public {
        uint256 orderId = _openOrder();
        (IReceiptOracle.Observation[] memory a,) = _receipt(orderId, QTY, uint64(block.timestamp));
        for (uint256 i; i < a.length; ++i) {
            a[i].goodsHash = keccak256("other goods");
        }
        bytes[] memory sigs = _resign(a);
        vm.expectRevert(
            abi.encodeWithSelector(
                ICertificateLedger.ReceiptDoesNotMatchOrder.selector,
                orderId,
                WAREHOUSE,
                keccak256("other goods")
            )
        );
        _submit(a, sigs);
    }

    function test_confirmReceipt_wrongWarehouse() public {
        uint256 orderId = _openOrder();
        (IReceiptOracle.Observation[] memory a,) = _receipt(orderId, QTY, uint64(block.timestamp));
        for (uint256 i; i < a.length; ++i) {
            a[i].warehouse = WAREHOUSE_2;
        }
        bytes[] memory sigs = _resign(a);
        vm.expectRevert(
            abi.encodeWithSelector(
                ICertificateLedger.ReceiptDoesNotMatchOrder.selector, orderId, WAREHOUSE_2, GOODS
            )
        );
        _submit(a, sigs);
    }

    function test_confirmReceipt_receivedAfterDeadline() public {
        uint256 orderId = _openOrder();
        vm.warp(DEADLINE + 30 minutes);
        (IReceiptOracle.Observation[] memory a, bytes[] memory sigs) = _receipt(orderId, QTY, uint64(DEADLINE + 1));
        vm.expectRevert(
            abi.encodeWithSelector(
                ICertificateLedger.ReceiptAfterDeadline.selector, orderId, DEADLINE + 1, DEADLINE
            )
        );
        _submit(a, sigs);
    }

    function test_confirmReceipt_receivedAtDeadlineSubmittedLater() public {
        uint256 orderId = _openOrder();
        vm.warp(DEADLINE + 30 minutes);
        (IReceiptOracle.Observation[] memory a, bytes[] memory sigs) = _receipt(orderId, QTY, uint64(DEADLINE));
        uint256 rootId = _submit(a, sigs);
        vm.assertEq(_value(rootId), AMOUNT);
    }

    /// The oracle's ranges refuse a zero count first; the ledger does not rely on them.
    function test_confirmReceipt_zeroQuantity() public {
        uint256 orderId = _openOrder();
        vm.expectRevert(_err(ICertificateLedger.ZeroAmount.selector));
        vm.prank(address(oracle));
        ledger.confirmReceipt(orderId, WAREHOUSE, GOODS, 0, uint64(block.timestamp));
    }

    function test_confirmReceipt_payeeSuspendedSinceOpening() public {
        uint256 orderId = _openOrder();
        vm.prank(admin);
        ledger.suspendParticipant(supplierA);
        (IReceiptOracle.Observation[] memory a, bytes[] memory sigs) = _receipt(orderId, QTY, uint64(block.timestamp));
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.ReceiverNotEligible.selector, supplierA));
        _submit(a, sigs);
        vm.assertFalse(oracle.sequenceUsed(a[0].device, a[0].sequence));
    }
}
