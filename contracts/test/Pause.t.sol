// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Base} from "./Base.t.sol";
import {ICertificateLedger} from "../src/interfaces/ICertificateLedger.sol";
import {IReceiptOracle} from "../src/interfaces/IReceiptOracle.sol";
import {IParticipantRegistry, ROLE_ADMIN, ROLE_SUPPLIER} from "../src/interfaces/IParticipantRegistry.sol";

/// @notice pause/unpause and that every guarded operation stops while paused.
contract PauseTest is Base {
    uint256 internal id;
    uint256 internal sibling;
    uint256 internal openOrderId;
    uint256 internal offerId;

    function setUp() public override {
        super.setUp();
        id = _issue();
        sibling = _splitTo(id, supplierA, 1_000_00);
        openOrderId = _openOrder();
        vm.prank(supplierA);
        offerId = ledger.offerDiscount(id, 1_000_00, 900_00, address(0), uint40(T0 + 1 days));
        vm.prank(admin);
        ledger.pause();
    }

    function _expectPaused() internal {
        vm.expectRevert(_err(ICertificateLedger.SystemPaused.selector));
    }

    function test_pause_state() public view {
        vm.assertTrue(ledger.paused());
    }

    function test_pause_emits() public {
        vm.prank(admin);
        ledger.unpause();
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.Paused(admin);
        vm.prank(admin);
        ledger.pause();
    }

    function test_pause_twice() public {
        _expectPaused();
        vm.prank(admin);
        ledger.pause();
    }

    function test_pause_notAdmin() public {
        vm.prank(admin);
        ledger.unpause();
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, regulator, ROLE_ADMIN)
        );
        vm.prank(regulator);
        ledger.pause();
    }

    function test_unpause_emitsAndResumes() public {
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.Unpaused(admin);
        vm.prank(admin);
        ledger.unpause();
        vm.assertFalse(ledger.paused());
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, sibling);
    }

    function test_unpause_notPaused() public {
        vm.prank(admin);
        ledger.unpause();
        vm.expectRevert(_err(ICertificateLedger.SystemNotPaused.selector));
        vm.prank(admin);
        ledger.unpause();
    }

    function test_unpause_notAdmin() public {
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, supplierA, ROLE_ADMIN)
        );
        vm.prank(supplierA);
        ledger.unpause();
    }

    // ------------------------------------------------------------------ every guarded function

    function test_paused_openOrder() public {
        bytes32 invoice = _nextInvoice();
        _expectPaused();
        vm.prank(issuer);
        ledger.openOrder(supplierA, AMOUNT, MATURITY, invoice, WAREHOUSE, GOODS, QTY, DEADLINE);
    }

    function test_paused_confirmReceipt() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) =
            _receipt(openOrderId, QTY, uint64(block.timestamp));
        _expectPaused();
        _submit(obs, sigs);
        vm.assertFalse(oracle.sequenceUsed(obs[0].device, obs[0].sequence));
    }

    function test_paused_cancelOrder() public {
        vm.warp(DEADLINE + 1);
        _expectPaused();
        vm.prank(issuer);
        ledger.cancelOrder(openOrderId);
    }

    function test_paused_transferFromWhole() public {
        _expectPaused();
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, id);
    }

    function test_paused_safeTransferFrom() public {
        _expectPaused();
        vm.prank(supplierA);
        ledger.safeTransferFrom(supplierA, supplierB, id);
    }

    function test_paused_safeTransferFromWithData() public {
        _expectPaused();
        vm.prank(supplierA);
        ledger.safeTransferFrom(supplierA, supplierB, id, hex"01");
    }

    function test_paused_transferFromToAddress() public {
        _expectPaused();
        vm.prank(supplierA);
        ledger.transferFrom(id, supplierB, 1_000_00);
    }

    function test_paused_transferFromToId() public {
        _expectPaused();
        vm.prank(supplierA);
        ledger.transferFrom(id, sibling, 1_000_00);
    }

    function test_paused_split() public {
        _expectPaused();
        vm.prank(supplierA);
        ledger.split(id, _two(4_500_00, 4_500_00));
    }

    function test_paused_offerDiscount() public {
        _expectPaused();
        vm.prank(supplierA);
        ledger.offerDiscount(id, 1_000_00, 900_00, address(0), uint40(T0 + 1 days));
    }

    function test_paused_buyDiscounted() public {
        _expectPaused();
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
    }

    function test_paused_settle() public {
        vm.warp(MATURITY);
        _expectPaused();
        ledger.settle(_one(id));
    }

    function test_paused_withdraw() public {
        _expectPaused();
        vm.prank(supplierA);
        ledger.withdraw();
    }

    // ------------------------------------------------------------------ what stays available

    function test_paused_adminAndViewsStillWork() public {
        vm.startPrank(admin);
        ledger.registerParticipant(outsider, keccak256("new"), ROLE_SUPPLIER, 0);
        ledger.suspendParticipant(outsider);
        ledger.setSplitRules(MIN_UNIT, MAX_DEPTH);
        vm.stopPrank();
        vm.prank(supplierA);
        ledger.cancelDiscountOffer(offerId);
        vm.prank(supplierA);
        ledger.approve(factor, id);
        vm.assertEq(ledger.ownerOf(id), supplierA);
        vm.assertEq(ledger.balanceOf(id), AMOUNT - 1_000_00);
    }
}
