// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Base} from "./Base.t.sol";
import {ICertificateLedger} from "../src/interfaces/ICertificateLedger.sol";
import {SettlementToken} from "../src/SettlementToken.sol";
import {ROLE_ISSUER} from "../src/interfaces/IParticipantRegistry.sol";

/// @notice Settlement at maturity, the push-or-credit payment and withdraw.
contract SettleTest is Base {
    uint256 internal id;
    uint256 internal orderId;

    function setUp() public override {
        super.setUp();
        id = _issue();
        orderId = ledger.certificate(id).orderId;
    }

    function test_settle_paysHolderAtMaturity() public {
        vm.warp(MATURITY);
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.CertificateSettled(id, orderId, supplierA, uint128(AMOUNT));
        vm.prank(outsider); // anyone may trigger
        ledger.settle(_one(id));

        vm.assertEq(token.balanceOf(supplierA), AMOUNT);
        vm.assertEq(token.balanceOf(address(ledger)), 0);
        vm.assertEq(
            uint256(ledger.certificate(id).status), uint256(ICertificateLedger.CertificateStatus.Settled)
        );
        vm.assertEq(uint256(ledger.order(orderId).paid), AMOUNT);
        vm.assertEq(uint256(ledger.participant(issuer).outstanding), 0);
        // The record stays for the audit.
        vm.assertEq(_value(id), AMOUNT);
        vm.assertEq(_holder(id), supplierA);
    }

    function test_settle_beforeMaturity() public {
        vm.warp(MATURITY - 1);
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.CertificateNotMatured.selector, id, MATURITY)
        );
        ledger.settle(_one(id));
        vm.assertEq(token.balanceOf(address(ledger)), AMOUNT);
    }

    function test_settle_twice() public {
        vm.warp(MATURITY);
        ledger.settle(_one(id));
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateAlreadySettled.selector, id));
        ledger.settle(_one(id));
        vm.assertEq(token.balanceOf(supplierA), AMOUNT);
    }

    function test_settle_duplicateInBatch() public {
        vm.warp(MATURITY);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateAlreadySettled.selector, id));
        ledger.settle(_two(id, id));
        vm.assertEq(token.balanceOf(supplierA), 0);
        vm.assertEq(
            uint256(ledger.certificate(id).status), uint256(ICertificateLedger.CertificateStatus.Live)
        );
    }

    function test_settle_frozen() public {
        vm.prank(regulator);
        ledger.freeze(id, "AML review");
        vm.warp(MATURITY);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateFrozen.selector, id));
        ledger.settle(_one(id));
    }

    function test_settle_unknown() public {
        vm.warp(MATURITY);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnknownCertificate.selector, 8));
        ledger.settle(_two(id, 8));
        vm.assertEq(token.balanceOf(supplierA), 0);
    }

    function test_settle_emptyBatch() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.BatchTooLarge.selector, 0, 64));
        ledger.settle(new uint256[](0));
    }

    function test_settle_batchTooLarge() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.BatchTooLarge.selector, 65, 64));
        ledger.settle(new uint256[](65));
    }

    function test_settle_batchOfTen() public {
        address[3] memory holders = [supplierA, supplierB, factor];
        uint256[] memory ids = new uint256[](10);
        ids[0] = id;
        for (uint256 i = 1; i < 10; ++i) {
            ids[i] = _splitTo(id, holders[i % 3], 1_000_00 - i);
        }
        uint256[3] memory expected;
        uint256[3] memory before;
        for (uint256 k; k < 3; ++k) {
            before[k] = token.balanceOf(holders[k]);
        }
        for (uint256 i; i < 10; ++i) {
            address h = _holder(ids[i]);
            for (uint256 k; k < 3; ++k) {
                if (holders[k] == h) expected[k] += _value(ids[i]);
            }
        }
        vm.warp(MATURITY + 30 days);
        ledger.settle(ids);
        for (uint256 k; k < 3; ++k) {
            vm.assertEq(token.balanceOf(holders[k]) - before[k], expected[k]);
        }
        vm.assertEq(uint256(ledger.order(orderId).paid), AMOUNT);
        vm.assertEq(token.balanceOf(address(ledger)), 0);
    }

    function test_settle_blockedHolderIsCredited() public {
        uint256 part = _splitTo(id, supplierB, 3_000_00);
        token.setBlocked(supplierB, true);
        vm.warp(MATURITY);

        vm.expectEmit(address(ledger));
        emit ICertificateLedger.CertificateSettled(id, orderId, supplierA, 7_000_00);
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.CertificateSettled(part, orderId, supplierB, 3_000_00);
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.PaymentCredited(supplierB, orderId, 3_000_00);
        ledger.settle(_two(id, part));

        vm.assertEq(token.balanceOf(supplierA), 7_000_00); // the batch was not held up
        vm.assertEq(token.balanceOf(supplierB), 0);
        vm.assertEq(ledger.credit(supplierB), 3_000_00);
        vm.assertEq(ledger.totalCredits(), 3_000_00);
        vm.assertEq(token.balanceOf(address(ledger)), 3_000_00);
        vm.assertEq(uint256(ledger.order(orderId).paid), AMOUNT);

        // Still blocked: the withdrawal fails and the credit stays.
        vm.expectRevert(abi.encodeWithSelector(SettlementToken.AccountBlocked.selector, supplierB));
        vm.prank(supplierB);
        ledger.withdraw();
        vm.assertEq(ledger.credit(supplierB), 3_000_00);

        token.setBlocked(supplierB, false);
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.Withdrawn(supplierB, 3_000_00);
        vm.prank(supplierB);
        uint256 amount = ledger.withdraw();
        vm.assertEq(amount, 3_000_00);
        vm.assertEq(token.balanceOf(supplierB), 3_000_00);
        vm.assertEq(ledger.credit(supplierB), 0);
        vm.assertEq(ledger.totalCredits(), 0);
        vm.assertEq(token.balanceOf(address(ledger)), 0);

        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.NothingToWithdraw.selector, supplierB));
        vm.prank(supplierB);
        ledger.withdraw();
    }

    function test_withdraw_nothing() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.NothingToWithdraw.selector, supplierA));
        vm.prank(supplierA);
        ledger.withdraw();
    }

    function test_withdraw_creditAboveUint128_paidInParts() public {
        // Two pay-on-receipt payments of 2^127 + 1 the token refuses: a credit past uint128, which
        // Withdrawn (uint128, like every amount logged) could not carry in one event.
        uint256 part = (uint256(1) << 127) + 1;
        address bigIssuer = makeAddr("bigIssuer");
        vm.prank(admin);
        ledger.registerParticipant(bigIssuer, keccak256("bigIssuer"), ROLE_ISSUER, type(uint128).max);
        token.mint(bigIssuer, 2 * part);
        vm.prank(bigIssuer);
        token.approve(address(ledger), type(uint256).max);
        token.setBlocked(supplierB, true);
        for (uint256 i; i < 2; ++i) {
            vm.prank(bigIssuer);
            uint256 big = ledger.openOrder(
                supplierB, part, uint40(block.timestamp), keccak256(abi.encode("big", i)), WAREHOUSE, GOODS, QTY, DEADLINE
            );
            _confirm(big, QTY); // pays on receipt: credited at once
        }
        vm.assertEq(ledger.credit(supplierB), 2 * part);
        token.setBlocked(supplierB, false);

        vm.expectEmit(address(ledger));
        emit ICertificateLedger.Withdrawn(supplierB, type(uint128).max);
        vm.prank(supplierB);
        vm.assertEq(ledger.withdraw(), type(uint128).max);
        uint256 rest = 2 * part - type(uint128).max;
        vm.assertEq(ledger.credit(supplierB), rest);
        vm.assertEq(ledger.totalCredits(), rest);

        vm.expectEmit(address(ledger));
        emit ICertificateLedger.Withdrawn(supplierB, uint128(rest));
        vm.prank(supplierB);
        vm.assertEq(ledger.withdraw(), rest);
        vm.assertEq(ledger.credit(supplierB), 0);
        vm.assertEq(token.balanceOf(supplierB), 2 * part);
    }

    function test_settle_suspendedHolderStillPaid() public {
        vm.prank(admin);
        ledger.suspendParticipant(supplierA);
        vm.warp(MATURITY);
        ledger.settle(_one(id));
        vm.assertEq(token.balanceOf(supplierA), AMOUNT);
    }

    function test_settle_creditsAccumulateAcrossOrders() public {
        uint256 second = _issue(2_000_00);
        token.setBlocked(supplierA, true);
        vm.warp(MATURITY);
        ledger.settle(_two(id, second));
        vm.assertEq(ledger.credit(supplierA), AMOUNT + 2_000_00);
        vm.assertEq(ledger.totalCredits(), AMOUNT + 2_000_00);
    }
}
