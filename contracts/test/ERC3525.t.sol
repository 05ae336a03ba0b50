// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC721} from "@openzeppelin/contracts/token/ERC721/IERC721.sol";

import {Base} from "./Base.t.sol";
import {
    AnswersTrueToEverything,
    ERC3525ReceiverMock,
    ShortAnswerReceiver,
    SilentFallback
} from "./mocks/Receivers.sol";
import {ICertificateLedger} from "../src/interfaces/ICertificateLedger.sol";
import {IERC3525} from "../src/interfaces/IERC3525.sol";
import {
    IParticipantRegistry,
    ROLE_AUDITOR,
    ROLE_FACTOR,
    ROLE_REGULATOR,
    ROLE_SUPPLIER,
    ROLES_HOLDER
} from "../src/interfaces/IParticipantRegistry.sol";

/// @notice Value moves (ERC-3525): split to a new holder, merge within an order, value allowances.
contract ERC3525Test is Base {
    uint256 internal id;
    uint256 internal orderId;

    function setUp() public override {
        super.setUp();
        id = _issue();
        orderId = ledger.certificate(id).orderId;
    }

    // ------------------------------------------------------------------ introspection

    function test_supportsInterface() public view {
        vm.assertTrue(ledger.supportsInterface(0x01ffc9a7));
        vm.assertTrue(ledger.supportsInterface(0x80ac58cd));
        vm.assertTrue(ledger.supportsInterface(0xd5358140));
        vm.assertFalse(ledger.supportsInterface(0xffffffff));
        vm.assertFalse(ledger.supportsInterface(0x5b5e139f)); // ERC-721 metadata is not claimed
    }

    function test_interfaceId_matchesEip() public pure {
        vm.assertEq(bytes32(type(IERC3525).interfaceId), bytes32(bytes4(0xd5358140)));
    }

    function test_valueDecimals_isTokenDecimals() public view {
        vm.assertEq(uint256(ledger.valueDecimals()), 2);
    }

    function test_slotOf_isOrderId() public {
        uint256 other = _issue();
        vm.assertEq(ledger.slotOf(id), orderId);
        vm.assertEq(ledger.slotOf(other), orderId + 1);
        vm.assertEq(ledger.balanceOf(id), AMOUNT);
    }

    function test_slotOf_unknown() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnknownCertificate.selector, 9));
        ledger.slotOf(9);
    }

    // ------------------------------------------------------------------ transferFrom(id, address, value): split to

    function test_transferFromToAddress_splitsToNewHolder() public {
        vm.expectEmit(address(ledger));
        emit IERC721.Transfer(address(0), supplierB, 2);
        vm.expectEmit(address(ledger));
        emit IERC3525.SlotChanged(2, 0, orderId);
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.CertificateIssued(2, orderId, id, supplierB, 3_000_00, 1, MATURITY);
        vm.expectEmit(address(ledger));
        emit IERC3525.TransferValue(id, 2, 3_000_00);
        vm.prank(supplierA);
        uint256 newId = ledger.transferFrom(id, supplierB, 3_000_00);

        vm.assertEq(newId, 2);
        vm.assertEq(_value(id), AMOUNT - 3_000_00);
        vm.assertEq(_value(newId), 3_000_00);
        ICertificateLedger.Certificate memory c = ledger.certificate(newId);
        vm.assertEq(c.holder, supplierB);
        vm.assertEq(uint256(c.parentId), id);
        vm.assertEq(uint256(c.depth), 1);
        vm.assertEq(uint256(c.orderId), orderId);
        vm.assertEq(uint256(c.maturity), MATURITY);
        vm.assertEq(ledger.slotOf(newId), orderId);
        vm.assertEq(ledger.balanceOf(supplierB), 1);
        vm.assertEq(ledger.balanceOf(supplierA), 1);
    }

    function test_transferFromToAddress_wholeValueLeavesEmptyCertificate() public {
        // Documented behaviour: moving all value leaves the source live with zero value.
        uint256 newId = _splitTo(id, supplierB, AMOUNT);
        vm.assertEq(_value(id), 0);
        vm.assertEq(_value(newId), AMOUNT);
        vm.assertEq(
            uint256(ledger.certificate(id).status), uint256(ICertificateLedger.CertificateStatus.Live)
        );
    }

    function test_transferFromToAddress_zeroValue() public {
        vm.expectRevert(_err(ICertificateLedger.ZeroAmount.selector));
        vm.prank(supplierA);
        ledger.transferFrom(id, supplierB, 0);
    }

    function test_transferFromToAddress_insufficientValue() public {
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.InsufficientValue.selector, id, AMOUNT, AMOUNT + 1)
        );
        vm.prank(supplierA);
        ledger.transferFrom(id, supplierB, AMOUNT + 1);
    }

    function test_transferFromToAddress_belowMinimumUnit() public {
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.SplitBelowMinimumUnit.selector, id, 99, MIN_UNIT)
        );
        vm.prank(supplierA);
        ledger.transferFrom(id, supplierB, 99);
    }

    function test_transferFromToAddress_remainderBelowMinimumUnit() public {
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.SplitBelowMinimumUnit.selector, id, 1, MIN_UNIT)
        );
        vm.prank(supplierA);
        ledger.transferFrom(id, supplierB, AMOUNT - 1);
    }

    function test_transferFromToAddress_toZero() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.InvalidReceiver.selector, address(0)));
        vm.prank(supplierA);
        ledger.transferFrom(id, address(0), 1_000_00);
    }

    function test_transferFromToAddress_receiverUnregistered() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.ReceiverNotEligible.selector, outsider));
        vm.prank(supplierA);
        ledger.transferFrom(id, outsider, 1_000_00);
        vm.assertEq(_value(id), AMOUNT);
    }

    function test_transferFromToAddress_receiverSuspended() public {
        vm.prank(admin);
        ledger.suspendParticipant(supplierB);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.ReceiverNotEligible.selector, supplierB));
        vm.prank(supplierA);
        ledger.transferFrom(id, supplierB, 1_000_00);
    }

    function test_transferFromToAddress_receiverRegulatorOnly() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.ReceiverNotEligible.selector, regulator));
        vm.prank(supplierA);
        ledger.transferFrom(id, regulator, 1_000_00);
    }

    function test_transferFromToAddress_notApproved() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                ICertificateLedger.InsufficientAllowance.selector, supplierB, id, 0, 1_000_00
            )
        );
        vm.prank(supplierB);
        ledger.transferFrom(id, supplierB, 1_000_00);
    }

    function test_transferFromToAddress_holderSuspended() public {
        vm.prank(admin);
        ledger.suspendParticipant(supplierA);
        vm.expectRevert(abi.encodeWithSelector(IParticipantRegistry.ParticipantNotActive.selector, supplierA));
        vm.prank(supplierA);
        ledger.transferFrom(id, supplierB, 1_000_00);
    }

    function test_transferFromToAddress_holderLostHolderRoles() public {
        vm.prank(admin);
        ledger.setRoles(supplierA, ROLE_AUDITOR);
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, supplierA, ROLES_HOLDER)
        );
        vm.prank(supplierA);
        ledger.transferFrom(id, supplierB, 1_000_00);
        vm.assertEq(_value(id), AMOUNT);
    }

    function test_transferFromToAddress_spenderOfHolderWithoutHolderRoles() public {
        vm.prank(supplierA);
        ledger.approve(id, factor, 5_000_00);
        vm.prank(admin);
        ledger.setRoles(supplierA, ROLE_REGULATOR);
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, supplierA, ROLES_HOLDER)
        );
        vm.prank(factor);
        ledger.transferFrom(id, factor, 1_000_00);
    }

    function test_transferFromToAddress_holderRolesRestored() public {
        vm.startPrank(admin);
        ledger.setRoles(supplierA, ROLE_AUDITOR);
        ledger.setRoles(supplierA, ROLE_SUPPLIER);
        vm.stopPrank();
        uint256 newId = _splitTo(id, supplierB, 1_000_00);
        vm.assertEq(_holder(newId), supplierB);
        vm.assertEq(_value(id), AMOUNT - 1_000_00);
    }

    function test_transferFromToAddress_depthExceeded() public {
        uint256 d1 = _splitTo(id, supplierB, 5_000_00);
        uint256 d2 = _splitTo(d1, supplierA, 2_000_00);
        uint256 d3 = _splitTo(d2, supplierB, 1_000_00);
        vm.assertEq(uint256(ledger.certificate(d3).depth), 3);
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.SplitDepthExceeded.selector, d3, 3, MAX_DEPTH)
        );
        vm.prank(supplierB);
        ledger.transferFrom(d3, supplierA, 500_00);
    }

    function test_transferFromToAddress_toAcceptingReceiver() public {
        ERC3525ReceiverMock receiver = new ERC3525ReceiverMock(true);
        vm.prank(admin);
        ledger.registerParticipant(address(receiver), keccak256("receiver"), ROLE_SUPPLIER, 0);
        uint256 newId = _splitTo(id, address(receiver), 1_000_00);
        vm.assertEq(receiver.calls(), 1);
        vm.assertEq(receiver.lastFromTokenId(), id);
        vm.assertEq(receiver.lastToTokenId(), newId);
        vm.assertEq(receiver.lastValue(), 1_000_00);
    }

    function test_transferFromToAddress_toRejectingReceiver() public {
        ERC3525ReceiverMock receiver = new ERC3525ReceiverMock(false);
        vm.prank(admin);
        ledger.registerParticipant(address(receiver), keccak256("receiver"), ROLE_SUPPLIER, 0);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnsafeReceiver.selector, address(receiver)));
        vm.prank(supplierA);
        ledger.transferFrom(id, address(receiver), 1_000_00);
        vm.assertEq(_value(id), AMOUNT);
    }

    function test_transferFromToAddress_toSilentFallback() public {
        // A registered contract that answers every call with no data (a Safe without a fallback
        // handler) declares nothing through ERC-165: it receives value as an account does.
        SilentFallback safe = new SilentFallback();
        vm.prank(admin);
        ledger.registerParticipant(address(safe), keccak256("safe"), ROLE_SUPPLIER, 0);
        uint256 newId = _splitTo(id, address(safe), 1_000_00);
        vm.assertEq(_holder(newId), address(safe));
        vm.assertEq(_value(newId), 1_000_00);
    }

    function test_transferFromToAddress_toAnswersTrueToEverything() public {
        // It answers true for 0xffffffff too, so ERC-165 detection finds no ERC-165 support.
        AnswersTrueToEverything receiver = new AnswersTrueToEverything();
        vm.prank(admin);
        ledger.registerParticipant(address(receiver), keccak256("receiver"), ROLE_FACTOR, 0);
        uint256 newId = _splitTo(id, address(receiver), 1_000_00);
        vm.assertEq(_holder(newId), address(receiver));
    }

    function test_transferFromToAddress_toShortAnswerReceiver() public {
        ShortAnswerReceiver receiver = new ShortAnswerReceiver();
        vm.prank(admin);
        ledger.registerParticipant(address(receiver), keccak256("receiver"), ROLE_SUPPLIER, 0);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnsafeReceiver.selector, address(receiver)));
        vm.prank(supplierA);
        ledger.transferFrom(id, address(receiver), 1_000_00);
        vm.assertEq(_value(id), AMOUNT);
    }

    // ------------------------------------------------------------------ transferFrom(id, id, value): merge

    function test_transferFromToId_merges() public {
        uint256 part = _splitTo(id, supplierA, 4_000_00);
        vm.expectEmit(address(ledger));
        emit IERC3525.TransferValue(part, id, 1_500_00);
        vm.prank(supplierA);
        ledger.transferFrom(part, id, 1_500_00);
        vm.assertEq(_value(id), 7_500_00);
        vm.assertEq(_value(part), 2_500_00);
        vm.assertEq(_value(id) + _value(part), AMOUNT);
    }

    function test_transferFromToId_intoAnotherHoldersCertificate() public {
        uint256 theirs = _splitTo(id, supplierB, 1_000_00);
        vm.prank(supplierA);
        ledger.transferFrom(id, theirs, 2_000_00);
        vm.assertEq(_value(theirs), 3_000_00);
        vm.assertEq(_holder(theirs), supplierB);
    }

    function test_transferFromToId_receiverSuspended() public {
        uint256 theirs = _splitTo(id, supplierB, 1_000_00);
        vm.prank(admin);
        ledger.suspendParticipant(supplierB);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.ReceiverNotEligible.selector, supplierB));
        vm.prank(supplierA);
        ledger.transferFrom(id, theirs, 2_000_00);
    }

    function test_transferFromToId_holderSuspended() public {
        uint256 part = _splitTo(id, supplierA, 1_000_00);
        vm.prank(admin);
        ledger.suspendParticipant(supplierA);
        vm.expectRevert(abi.encodeWithSelector(IParticipantRegistry.ParticipantNotActive.selector, supplierA));
        vm.prank(supplierA);
        ledger.transferFrom(part, id, 500_00);
    }

    function test_transferFromToId_holderLostHolderRoles() public {
        uint256 theirs = _splitTo(id, supplierB, 1_000_00);
        vm.prank(admin);
        ledger.setRoles(supplierA, ROLE_AUDITOR);
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, supplierA, ROLES_HOLDER)
        );
        vm.prank(supplierA);
        ledger.transferFrom(id, theirs, 500_00);
        vm.assertEq(_value(theirs), 1_000_00);
    }

    function test_transferFromToId_holderRolesRestored() public {
        uint256 theirs = _splitTo(id, supplierB, 1_000_00);
        vm.startPrank(admin);
        ledger.setRoles(supplierA, ROLE_AUDITOR);
        ledger.setRoles(supplierA, ROLE_SUPPLIER);
        vm.stopPrank();
        vm.prank(supplierA);
        ledger.transferFrom(id, theirs, 500_00);
        vm.assertEq(_value(theirs), 1_500_00);
    }

    function test_transferFromToId_toSilentFallback() public {
        SilentFallback safe = new SilentFallback();
        vm.prank(admin);
        ledger.registerParticipant(address(safe), keccak256("safe"), ROLE_SUPPLIER, 0);
        uint256 theirs = _splitTo(id, address(safe), 1_000_00);
        vm.prank(supplierA);
        ledger.transferFrom(id, theirs, 500_00);
        vm.assertEq(_value(theirs), 1_500_00);
    }

    function test_transferFromToId_slotMismatch() public {
        uint256 other = _issue();
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.SlotMismatch.selector, id, other));
        vm.prank(supplierA);
        ledger.transferFrom(id, other, 1_000_00);
    }

    function test_transferFromToId_selfTransfer() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.SelfTransfer.selector, id));
        vm.prank(supplierA);
        ledger.transferFrom(id, id, 1_000_00);
    }

    function test_transferFromToId_insufficientValue() public {
        uint256 part = _splitTo(id, supplierA, 1_000_00);
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.InsufficientValue.selector, part, 1_000_00, 1_000_01)
        );
        vm.prank(supplierA);
        ledger.transferFrom(part, id, 1_000_01);
    }

    function test_transferFromToId_zeroValue() public {
        uint256 part = _splitTo(id, supplierA, 1_000_00);
        vm.expectRevert(_err(ICertificateLedger.ZeroAmount.selector));
        vm.prank(supplierA);
        ledger.transferFrom(part, id, 0);
    }

    function test_transferFromToId_unknownTarget() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnknownCertificate.selector, 77));
        vm.prank(supplierA);
        ledger.transferFrom(id, 77, 1);
    }

    function test_transferFromToId_toAcceptingReceiver() public {
        ERC3525ReceiverMock receiver = new ERC3525ReceiverMock(true);
        vm.prank(admin);
        ledger.registerParticipant(address(receiver), keccak256("receiver"), ROLE_SUPPLIER, 0);
        uint256 theirs = _splitTo(id, address(receiver), 1_000_00);
        vm.prank(supplierA);
        ledger.transferFrom(id, theirs, 500_00);
        vm.assertEq(receiver.calls(), 2);
        vm.assertEq(receiver.lastToTokenId(), theirs);
        vm.assertEq(receiver.lastValue(), 500_00);
    }

    function test_transferFromToId_toRejectingReceiver() public {
        ERC3525ReceiverMock receiver = new ERC3525ReceiverMock(false);
        vm.prank(admin);
        ledger.registerParticipant(address(receiver), keccak256("receiver"), ROLE_SUPPLIER, 0);
        // Minting to it through a whole transfer does not ask it; merging value into it does.
        uint256 part = _splitTo(id, supplierA, 1_000_00);
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, address(receiver), part);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnsafeReceiver.selector, address(receiver)));
        vm.prank(supplierA);
        ledger.transferFrom(id, part, 500_00);
    }

    // ------------------------------------------------------------------ value allowances

    function test_approveValue_setsAndEmits() public {
        vm.expectEmit(address(ledger));
        emit IERC3525.ApprovalValue(id, factor, 5_000_00);
        vm.prank(supplierA);
        ledger.approve(id, factor, 5_000_00);
        vm.assertEq(ledger.allowance(id, factor), 5_000_00);
    }

    function test_approveValue_spentBySplit() public {
        vm.prank(supplierA);
        ledger.approve(id, factor, 5_000_00);
        vm.expectEmit(address(ledger));
        emit IERC3525.ApprovalValue(id, factor, 3_000_00);
        vm.prank(factor);
        uint256 newId = ledger.transferFrom(id, factor, 2_000_00);
        vm.assertEq(_holder(newId), factor);
        vm.assertEq(ledger.allowance(id, factor), 3_000_00);

        vm.expectRevert(
            abi.encodeWithSelector(
                ICertificateLedger.InsufficientAllowance.selector, factor, id, 3_000_00, 4_000_00
            )
        );
        vm.prank(factor);
        ledger.transferFrom(id, factor, 4_000_00);
    }

    function test_approveValue_spentByMerge() public {
        uint256 part = _splitTo(id, supplierA, 2_000_00);
        vm.prank(supplierA);
        ledger.approve(part, supplierB, 1_000_00);
        vm.prank(supplierB);
        ledger.transferFrom(part, id, 1_000_00);
        vm.assertEq(ledger.allowance(part, supplierB), 0);
        vm.assertEq(_value(id), 9_000_00);
    }

    function test_approveValue_unlimitedNotDecreased() public {
        vm.prank(supplierA);
        ledger.approve(id, factor, type(uint256).max);
        vm.prank(factor);
        ledger.transferFrom(id, factor, 2_000_00);
        vm.assertEq(ledger.allowance(id, factor), type(uint256).max);
    }

    function test_approveValue_voidedByWholeTransfer() public {
        vm.prank(supplierA);
        ledger.approve(id, factor, 5_000_00);
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, id);
        vm.assertEq(ledger.allowance(id, factor), 0);
        vm.prank(supplierB);
        ledger.transferFrom(supplierB, supplierA, id);
        vm.assertEq(ledger.allowance(id, factor), 0);
    }

    function test_approveValue_byApprovedAddress() public {
        vm.prank(supplierA);
        ledger.approve(factor, id);
        // Only the holder grants allowances: an approved address moves value itself, no more.
        _assertGrantRefused(factor, supplierB);
        vm.prank(factor);
        uint256 newId = ledger.transferFrom(id, factor, 1_000_00);
        vm.assertEq(_holder(newId), factor);
    }

    function test_approveValue_byOperatorForAll() public {
        vm.prank(supplierA);
        ledger.setApprovalForAll(supplierB, true);
        _assertGrantRefused(supplierB, factor);
    }

    /// @dev `caller`, not the holder, may not give `to` a value allowance on `id` (D81).
    function _assertGrantRefused(address caller, address to) internal {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.NotApprovedOrHolder.selector, caller, id));
        vm.prank(caller);
        ledger.approve(id, to, 1_000_00);
        vm.assertEq(ledger.allowance(id, to), 0);
    }

    function test_approveValue_revokedApprovalLeavesNothingToSpend() public {
        // The approved address cannot give itself an allowance that outlives the holder's revoking
        // its approval (a compromised key kept the whole value so before D81).
        vm.prank(supplierA);
        ledger.approve(factor, id);
        vm.prank(factor);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.NotApprovedOrHolder.selector, factor, id));
        ledger.approve(id, factor, type(uint256).max);
        vm.prank(supplierA);
        ledger.approve(address(0), id);
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.InsufficientAllowance.selector, factor, id, 0, AMOUNT)
        );
        vm.prank(factor);
        ledger.transferFrom(id, factor, AMOUNT);
        vm.assertEq(ledger.balanceOf(id), AMOUNT);
    }

    function test_approve_byApprovedAddress() public {
        // ERC-721 approvals stay the holder's and its operators' even when ERC-3525 value ones do not
        vm.prank(supplierA);
        ledger.approve(factor, id);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.NotApprovedOrHolder.selector, factor, id));
        vm.prank(factor);
        ledger.approve(supplierB, id);
    }

    function test_approveValue_notHolder() public {
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.NotApprovedOrHolder.selector, supplierB, id)
        );
        vm.prank(supplierB);
        ledger.approve(id, supplierB, 1);
    }

    function test_approveValue_toHolder() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.InvalidOperator.selector, supplierA));
        vm.prank(supplierA);
        ledger.approve(id, supplierA, 1);
    }

    function test_approveValue_toZero() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.InvalidOperator.selector, address(0)));
        vm.prank(supplierA);
        ledger.approve(id, address(0), 1);
    }

    function test_approveValue_suspendedSpender() public {
        vm.prank(supplierA);
        ledger.approve(id, factor, 5_000_00);
        vm.prank(admin);
        ledger.suspendParticipant(factor);
        vm.expectRevert(abi.encodeWithSelector(IParticipantRegistry.ParticipantNotActive.selector, factor));
        vm.prank(factor);
        ledger.transferFrom(id, supplierB, 1_000_00);
    }

    function test_wholeApprovalCoversValue() public {
        vm.prank(supplierA);
        ledger.approve(factor, id);
        vm.prank(factor);
        ledger.transferFrom(id, supplierB, 1_000_00);
        vm.assertEq(_value(id), 9_000_00);
    }
}
