// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Base} from "./Base.t.sol";
import {ICertificateLedger} from "../src/interfaces/ICertificateLedger.sol";
import {IERC3525} from "../src/interfaces/IERC3525.sol";
import {
    IParticipantRegistry,
    ROLE_ADMIN,
    ROLE_AUDITOR,
    ROLE_FACTOR,
    ROLES_HOLDER
} from "../src/interfaces/IParticipantRegistry.sol";

/// @notice split() into parts kept by the holder, and the split rules.
contract SplitTest is Base {
    uint256 internal id;
    uint256 internal orderId;

    function setUp() public override {
        super.setUp();
        id = _issue();
        orderId = ledger.certificate(id).orderId;
    }

    function _three(uint256 a, uint256 b, uint256 c) internal pure returns (uint256[] memory v) {
        v = new uint256[](3);
        v[0] = a;
        v[1] = b;
        v[2] = c;
    }

    function test_split_threeParts() public {
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.CertificateIssued(2, orderId, id, supplierA, 3_000_00, 1, MATURITY);
        vm.expectEmit(address(ledger));
        emit IERC3525.TransferValue(id, 2, 3_000_00);
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.CertificateIssued(3, orderId, id, supplierA, 2_000_00, 1, MATURITY);
        vm.expectEmit(address(ledger));
        emit IERC3525.TransferValue(id, 3, 2_000_00);
        vm.prank(supplierA);
        uint256[] memory newIds = ledger.split(id, _three(5_000_00, 3_000_00, 2_000_00));

        vm.assertEq(newIds.length, 2);
        vm.assertEq(newIds[0], 2);
        vm.assertEq(newIds[1], 3);
        vm.assertEq(_value(id), 5_000_00);
        vm.assertEq(_value(2), 3_000_00);
        vm.assertEq(_value(3), 2_000_00);
        vm.assertEq(_holder(2), supplierA);
        vm.assertEq(uint256(ledger.certificate(id).depth), 0);
        vm.assertEq(uint256(ledger.certificate(3).depth), 1);
        vm.assertEq(ledger.balanceOf(supplierA), 3);
    }

    function test_split_maxParts() public {
        uint256[] memory values = new uint256[](16);
        for (uint256 i; i < 16; ++i) {
            values[i] = AMOUNT / 16;
        }
        vm.prank(supplierA);
        uint256[] memory newIds = ledger.split(id, values);
        vm.assertEq(newIds.length, 15);
        uint256 sum = _value(id);
        for (uint256 i; i < 15; ++i) {
            sum += _value(newIds[i]);
        }
        vm.assertEq(sum, AMOUNT);
    }

    function test_split_partsMismatch() public {
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.SplitPartsMismatch.selector, id, AMOUNT - 1, AMOUNT)
        );
        vm.prank(supplierA);
        ledger.split(id, _two(5_000_00, 5_000_00 - 1));
    }

    function test_split_partsAboveValue() public {
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.SplitPartsMismatch.selector, id, AMOUNT + 1, AMOUNT)
        );
        vm.prank(supplierA);
        ledger.split(id, _two(5_000_00, 5_000_00 + 1));
    }

    function test_split_partsSumPastUint256() public {
        // The sum saturates: a mismatch named as such, not an arithmetic panic.
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.SplitPartsMismatch.selector, id, type(uint256).max, AMOUNT)
        );
        vm.prank(supplierA);
        ledger.split(id, _two(type(uint256).max, AMOUNT + 1));
    }

    function test_split_onePart() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.SplitPartCount.selector, 1, 16));
        vm.prank(supplierA);
        ledger.split(id, _one(AMOUNT));
    }

    function test_split_noParts() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.SplitPartCount.selector, 0, 16));
        vm.prank(supplierA);
        ledger.split(id, new uint256[](0));
    }

    function test_split_tooManyParts() public {
        uint256[] memory values = new uint256[](17);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.SplitPartCount.selector, 17, 16));
        vm.prank(supplierA);
        ledger.split(id, values);
    }

    function test_split_partBelowMinimumUnit() public {
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.SplitBelowMinimumUnit.selector, id, 50, MIN_UNIT)
        );
        vm.prank(supplierA);
        ledger.split(id, _three(AMOUNT - 150, 100, 50));
    }

    function test_split_keptPartBelowMinimumUnit() public {
        // The part kept by the certificate (values[0]) is checked as the remainder of the last split.
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.SplitBelowMinimumUnit.selector, id, 99, MIN_UNIT)
        );
        vm.prank(supplierA);
        ledger.split(id, _two(99, AMOUNT - 99));
    }

    /// @dev NatSpec: "each at least the minimum unit". A zero first part must be refused too; it would
    /// leave a live certificate of value 0.
    function test_split_zeroKeptPart() public {
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.SplitBelowMinimumUnit.selector, id, 0, MIN_UNIT)
        );
        vm.prank(supplierA);
        ledger.split(id, _three(0, 5_000_00, 5_000_00));
    }

    function test_split_exactlyMinimumUnit() public {
        vm.prank(supplierA);
        uint256[] memory newIds = ledger.split(id, _two(MIN_UNIT, AMOUNT - MIN_UNIT));
        vm.assertEq(_value(id), MIN_UNIT);
        vm.assertEq(_value(newIds[0]), AMOUNT - MIN_UNIT);
    }

    function test_split_depthExceeded() public {
        vm.prank(supplierA);
        uint256 d1 = ledger.split(id, _two(5_000_00, 5_000_00))[0];
        vm.prank(supplierA);
        uint256 d2 = ledger.split(d1, _two(2_500_00, 2_500_00))[0];
        vm.prank(supplierA);
        uint256 d3 = ledger.split(d2, _two(1_250_00, 1_250_00))[0];
        vm.assertEq(uint256(ledger.certificate(d3).depth), 3);
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.SplitDepthExceeded.selector, d3, 3, MAX_DEPTH)
        );
        vm.prank(supplierA);
        ledger.split(d3, _two(625_00, 625_00));
        // The root stays at depth 0 and may split again.
        vm.prank(supplierA);
        ledger.split(id, _two(2_500_00, 2_500_00));
    }

    function test_split_notHolder() public {
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.NotApprovedOrHolder.selector, supplierB, id)
        );
        vm.prank(supplierB);
        ledger.split(id, _two(5_000_00, 5_000_00));
    }

    function test_split_valueAllowanceIsNotEnough() public {
        vm.prank(supplierA);
        ledger.approve(id, supplierB, AMOUNT);
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.NotApprovedOrHolder.selector, supplierB, id)
        );
        vm.prank(supplierB);
        ledger.split(id, _two(5_000_00, 5_000_00));
    }

    function test_split_byApprovedOperatorKeepsHolder() public {
        vm.prank(supplierA);
        ledger.setApprovalForAll(supplierB, true);
        vm.prank(supplierB);
        uint256[] memory newIds = ledger.split(id, _two(5_000_00, 5_000_00));
        vm.assertEq(_holder(newIds[0]), supplierA);
    }

    function test_split_holderSuspended() public {
        vm.prank(admin);
        ledger.suspendParticipant(supplierA);
        // Refused as the holder's broken rule (D16), before the parts' receiver check.
        vm.expectRevert(abi.encodeWithSelector(IParticipantRegistry.ParticipantNotActive.selector, supplierA));
        vm.prank(supplierA);
        ledger.split(id, _two(5_000_00, 5_000_00));
    }

    function test_split_holderLostHolderRoles() public {
        vm.prank(admin);
        ledger.setRoles(supplierA, ROLE_AUDITOR);
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, supplierA, ROLES_HOLDER)
        );
        vm.prank(supplierA);
        ledger.split(id, _two(5_000_00, 5_000_00));
        vm.assertEq(_value(id), AMOUNT);
    }

    function test_split_operatorOfRolelessHolder() public {
        vm.prank(supplierA);
        ledger.setApprovalForAll(supplierB, true);
        vm.prank(admin);
        ledger.setRoles(supplierA, ROLE_AUDITOR);
        // An active operator cannot split for a holder that may not hold either.
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, supplierA, ROLES_HOLDER)
        );
        vm.prank(supplierB);
        ledger.split(id, _two(5_000_00, 5_000_00));
    }

    function test_split_holderRolesRestored() public {
        vm.startPrank(admin);
        ledger.setRoles(supplierA, ROLE_AUDITOR);
        ledger.setRoles(supplierA, ROLE_FACTOR);
        vm.stopPrank();
        vm.prank(supplierA);
        uint256[] memory newIds = ledger.split(id, _two(5_000_00, 5_000_00));
        vm.assertEq(_value(id), 5_000_00);
        vm.assertEq(_value(newIds[0]), 5_000_00);
        vm.assertEq(_holder(newIds[0]), supplierA);
    }

    function test_split_unknown() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnknownCertificate.selector, 5));
        vm.prank(supplierA);
        ledger.split(5, _two(5_000_00, 5_000_00));
    }

    // ------------------------------------------------------------------ setSplitRules

    function test_setSplitRules_setsAndEmits() public {
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.SplitRulesChanged(1_000_00, 5);
        vm.prank(admin);
        ledger.setSplitRules(1_000_00, 5);
        (uint96 minUnit, uint8 maxDepth) = ledger.splitRules();
        vm.assertEq(uint256(minUnit), 1_000_00);
        vm.assertEq(uint256(maxDepth), 5);

        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.SplitBelowMinimumUnit.selector, id, 999_99, 1_000_00)
        );
        vm.prank(supplierA);
        ledger.split(id, _two(AMOUNT - 999_99, 999_99));
    }

    function test_setSplitRules_zeroUnit() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.InvalidSplitRules.selector, 0, 3));
        vm.prank(admin);
        ledger.setSplitRules(0, 3);
    }

    function test_setSplitRules_zeroDepth() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.InvalidSplitRules.selector, 100, 0));
        vm.prank(admin);
        ledger.setSplitRules(100, 0);
    }

    function test_setSplitRules_notAdmin() public {
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, supplierA, ROLE_ADMIN)
        );
        vm.prank(supplierA);
        ledger.setSplitRules(1, 1);
    }
}
