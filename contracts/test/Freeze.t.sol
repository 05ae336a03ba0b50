// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Base} from "./Base.t.sol";
import {ICertificateLedger} from "../src/interfaces/ICertificateLedger.sol";
import {IParticipantRegistry, ROLE_REGULATOR} from "../src/interfaces/IParticipantRegistry.sol";

/// @notice Regulator freezes; and that frozen, matured and settled certificates cannot move.
contract FreezeTest is Base {
    bytes32 internal constant REASON = "CSRC-2024-117";
    uint256 internal id;
    uint256 internal sibling; // same order, not frozen

    function setUp() public override {
        super.setUp();
        id = _issue();
        sibling = _splitTo(id, supplierA, 2_000_00);
    }

    function _freeze(uint256 certificateId) internal {
        vm.prank(regulator);
        ledger.freeze(certificateId, REASON);
    }

    // ------------------------------------------------------------------ freeze / unfreeze

    function test_freeze_setsAndEmits() public {
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.FreezeImposed(id, regulator, REASON);
        _freeze(id);
        vm.assertTrue(ledger.certificate(id).frozen);
    }

    function test_freeze_twice() public {
        _freeze(id);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateFrozen.selector, id));
        vm.prank(regulator);
        ledger.freeze(id, REASON);
    }

    function test_freeze_unknown() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnknownCertificate.selector, 99));
        vm.prank(regulator);
        ledger.freeze(99, REASON);
    }

    function test_freeze_settled() public {
        vm.warp(MATURITY);
        ledger.settle(_one(id));
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateAlreadySettled.selector, id));
        vm.prank(regulator);
        ledger.freeze(id, REASON);
    }

    function test_freeze_maturedButUnsettled() public {
        vm.warp(MATURITY + 1);
        _freeze(id);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateFrozen.selector, id));
        ledger.settle(_one(id));
    }

    function test_freeze_notRegulator() public {
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, admin, ROLE_REGULATOR)
        );
        vm.prank(admin);
        ledger.freeze(id, REASON);
    }

    function test_freeze_suspendedRegulator() public {
        vm.prank(admin);
        ledger.suspendParticipant(regulator);
        vm.expectRevert(abi.encodeWithSelector(IParticipantRegistry.ParticipantNotActive.selector, regulator));
        vm.prank(regulator);
        ledger.freeze(id, REASON);
    }

    function test_unfreeze_liftsAndEmits() public {
        _freeze(id);
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.FreezeLifted(id, regulator);
        vm.prank(regulator);
        ledger.unfreeze(id);
        vm.assertFalse(ledger.certificate(id).frozen);
        // movable again
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, id);
        vm.assertEq(_holder(id), supplierB);
    }

    function test_unfreeze_notFrozen() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateNotFrozen.selector, id));
        vm.prank(regulator);
        ledger.unfreeze(id);
    }

    function test_unfreeze_unknown() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnknownCertificate.selector, 99));
        vm.prank(regulator);
        ledger.unfreeze(99);
    }

    function test_unfreeze_notRegulator() public {
        _freeze(id);
        vm.expectRevert(
            abi.encodeWithSelector(
                IParticipantRegistry.AccountMissingRole.selector, supplierA, ROLE_REGULATOR
            )
        );
        vm.prank(supplierA);
        ledger.unfreeze(id);
    }

    function test_unfreeze_thenSettles() public {
        _freeze(id);
        vm.warp(MATURITY);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateFrozen.selector, id));
        ledger.settle(_one(id));
        vm.prank(regulator);
        ledger.unfreeze(id);
        ledger.settle(_one(id));
        vm.assertEq(token.balanceOf(supplierA), _value(id));
    }

    function test_freeze_worksWhilePaused() public {
        vm.prank(admin);
        ledger.pause();
        _freeze(id);
        vm.prank(regulator);
        ledger.unfreeze(id);
    }

    // ------------------------------------------------------------------ a frozen certificate cannot move

    function _assertUnchanged(uint256 certificateId, address holder, uint256 value) internal view {
        vm.assertEq(_holder(certificateId), holder);
        vm.assertEq(_value(certificateId), value);
    }

    function test_frozen_cannotTransferWhole() public {
        _freeze(id);
        uint256 v = _value(id);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateFrozen.selector, id));
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, id);
        _assertUnchanged(id, supplierA, v);
    }

    function test_frozen_cannotSafeTransfer() public {
        _freeze(id);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateFrozen.selector, id));
        vm.prank(supplierA);
        ledger.safeTransferFrom(supplierA, supplierB, id);
    }

    function test_frozen_cannotSplitTo() public {
        _freeze(id);
        uint256 v = _value(id);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateFrozen.selector, id));
        vm.prank(supplierA);
        ledger.transferFrom(id, supplierB, 1_000_00);
        _assertUnchanged(id, supplierA, v);
    }

    function test_frozen_cannotMergeOut() public {
        _freeze(id);
        uint256 v = _value(id);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateFrozen.selector, id));
        vm.prank(supplierA);
        ledger.transferFrom(id, sibling, 1_000_00);
        _assertUnchanged(id, supplierA, v);
    }

    function test_frozen_cannotMergeIn() public {
        _freeze(id);
        uint256 v = _value(id);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateFrozen.selector, id));
        vm.prank(supplierA);
        ledger.transferFrom(sibling, id, 1_000_00);
        _assertUnchanged(id, supplierA, v);
    }

    function test_frozen_cannotSplit() public {
        _freeze(id);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateFrozen.selector, id));
        vm.prank(supplierA);
        ledger.split(id, _two(4_000_00, 4_000_00));
    }

    function test_frozen_cannotOfferDiscount() public {
        _freeze(id);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateFrozen.selector, id));
        vm.prank(supplierA);
        ledger.offerDiscount(id, 1_000_00, 900_00, address(0), uint40(T0 + 1 days));
    }

    function test_frozen_siblingStillMoves() public {
        _freeze(id);
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, sibling);
        vm.assertEq(_holder(sibling), supplierB);
    }

    // ------------------------------------------------------------------ matured and settled certificates cannot move

    function test_matured_cannotTransfer() public {
        vm.warp(MATURITY);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateMatured.selector, id, MATURITY));
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, id);
    }

    function test_matured_cannotSplitTo() public {
        vm.warp(MATURITY + 5);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateMatured.selector, id, MATURITY));
        vm.prank(supplierA);
        ledger.transferFrom(id, supplierB, 1_000_00);
    }

    function test_matured_cannotMerge() public {
        vm.warp(MATURITY);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateMatured.selector, id, MATURITY));
        vm.prank(supplierA);
        ledger.transferFrom(id, sibling, 1_000_00);
    }

    function test_matured_cannotSplit() public {
        vm.warp(MATURITY);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateMatured.selector, id, MATURITY));
        vm.prank(supplierA);
        ledger.split(id, _two(4_000_00, 4_000_00));
    }

    function test_beforeMaturity_stillMoves() public {
        vm.warp(MATURITY - 1);
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, id);
    }

    function test_settled_cannotTransfer() public {
        vm.warp(MATURITY);
        ledger.settle(_one(id));
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateAlreadySettled.selector, id));
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, id);
    }

    function test_settled_cannotMerge() public {
        vm.warp(MATURITY);
        ledger.settle(_one(id));
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateAlreadySettled.selector, id));
        vm.prank(supplierA);
        ledger.transferFrom(id, sibling, 1_000_00);
    }

    function test_settled_cannotSplitTo() public {
        vm.warp(MATURITY);
        ledger.settle(_one(id));
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateAlreadySettled.selector, id));
        vm.prank(supplierA);
        ledger.transferFrom(id, supplierB, 1_000_00);
    }
}
