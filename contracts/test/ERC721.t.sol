// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC721} from "@openzeppelin/contracts/token/ERC721/IERC721.sol";
import {IERC721Receiver} from "@openzeppelin/contracts/token/ERC721/IERC721Receiver.sol";

import {Base} from "./Base.t.sol";
import {
    AnswersTrueToEverything,
    ERC721ReceiverMock,
    PlainContract,
    ShortAnswerReceiver,
    SilentFallback
} from "./mocks/Receivers.sol";
import {ICertificateLedger} from "../src/interfaces/ICertificateLedger.sol";
import {
    IParticipantRegistry,
    ROLE_SUPPLIER,
    ROLE_ISSUER,
    ROLE_FACTOR,
    ROLE_AUDITOR,
    ROLES_HOLDER
} from "../src/interfaces/IParticipantRegistry.sol";

/// @notice Whole-certificate moves (ERC-721 surface) and the permission check on every receiver.
contract ERC721Test is Base {
    uint256 internal id;

    function setUp() public override {
        super.setUp();
        id = _issue();
    }

    function _register(address account) internal {
        vm.prank(admin);
        ledger.registerParticipant(account, keccak256(abi.encode(account)), ROLE_SUPPLIER, 0);
    }

    // ------------------------------------------------------------------ transferFrom

    function test_transferFrom_holderMovesWhole() public {
        vm.expectEmit(address(ledger));
        emit IERC721.Transfer(supplierA, supplierB, id);
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, id);
        vm.assertEq(ledger.ownerOf(id), supplierB);
        vm.assertEq(_value(id), AMOUNT);
        vm.assertEq(ledger.balanceOf(supplierA), 0);
        vm.assertEq(ledger.balanceOf(supplierB), 1);
    }

    function test_transferFrom_toFactor() public {
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, factor, id);
        vm.assertEq(ledger.ownerOf(id), factor);
    }

    function test_transferFrom_incorrectFrom() public {
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.IncorrectHolder.selector, supplierB, id, supplierA)
        );
        vm.prank(supplierA);
        ledger.transferFrom(supplierB, factor, id);
    }

    function test_transferFrom_notApproved() public {
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.NotApprovedOrHolder.selector, supplierB, id)
        );
        vm.prank(supplierB);
        ledger.transferFrom(supplierA, supplierB, id);
        vm.assertEq(ledger.ownerOf(id), supplierA);
    }

    function test_transferFrom_unknownCertificate() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnknownCertificate.selector, 99));
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, 99);
    }

    function test_transferFrom_toZero() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.InvalidReceiver.selector, address(0)));
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, address(0), id);
    }

    function test_transferFrom_receiverUnregistered() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.ReceiverNotEligible.selector, outsider));
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, outsider, id);
        vm.assertEq(ledger.ownerOf(id), supplierA);
        vm.assertEq(ledger.balanceOf(supplierA), 1);
    }

    function test_transferFrom_receiverSuspended() public {
        vm.prank(admin);
        ledger.suspendParticipant(supplierB);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.ReceiverNotEligible.selector, supplierB));
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, id);
    }

    function test_transferFrom_receiverRegulatorOnly() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.ReceiverNotEligible.selector, regulator));
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, regulator, id);
    }

    function test_transferFrom_receiverIssuerOnly() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.ReceiverNotEligible.selector, issuer));
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, issuer, id);
    }

    function test_transferFrom_receiverLostHolderRole() public {
        vm.prank(admin);
        ledger.setRoles(supplierB, ROLE_ISSUER);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.ReceiverNotEligible.selector, supplierB));
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, id);
    }

    function test_transferFrom_holderSuspended() public {
        vm.prank(admin);
        ledger.suspendParticipant(supplierA);
        vm.expectRevert(abi.encodeWithSelector(IParticipantRegistry.ParticipantNotActive.selector, supplierA));
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, id);
    }

    function test_transferFrom_holderLostHolderRoles() public {
        vm.prank(admin);
        ledger.setRoles(supplierA, ROLE_AUDITOR);
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, supplierA, ROLES_HOLDER)
        );
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, id);
        vm.assertEq(ledger.ownerOf(id), supplierA);
    }

    function test_transferFrom_operatorOfHolderWithoutHolderRoles() public {
        vm.prank(supplierA);
        ledger.approve(factor, id);
        vm.prank(admin);
        ledger.setRoles(supplierA, ROLE_ISSUER);
        // The approved operator is active, but the certificate's holder may not hold.
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, supplierA, ROLES_HOLDER)
        );
        vm.prank(factor);
        ledger.transferFrom(supplierA, factor, id);
    }

    function test_transferFrom_holderRolesRestored() public {
        vm.startPrank(admin);
        ledger.setRoles(supplierA, ROLE_AUDITOR);
        ledger.setRoles(supplierA, ROLE_FACTOR);
        vm.stopPrank();
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, id);
        vm.assertEq(ledger.ownerOf(id), supplierB);
    }

    function test_transferFrom_holderReinstated() public {
        vm.startPrank(admin);
        ledger.suspendParticipant(supplierA);
        ledger.reinstateParticipant(supplierA);
        vm.stopPrank();
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, id);
        vm.assertEq(ledger.ownerOf(id), supplierB);
    }

    // ------------------------------------------------------------------ approvals

    function test_approve_setsAndEmits() public {
        vm.expectEmit(address(ledger));
        emit IERC721.Approval(supplierA, factor, id);
        vm.prank(supplierA);
        ledger.approve(factor, id);
        vm.assertEq(ledger.getApproved(id), factor);
    }

    function test_approve_approvedMayTransfer() public {
        vm.prank(supplierA);
        ledger.approve(factor, id);
        vm.prank(factor);
        ledger.transferFrom(supplierA, supplierB, id);
        vm.assertEq(ledger.ownerOf(id), supplierB);
    }

    function test_approve_notHolder() public {
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.NotApprovedOrHolder.selector, supplierB, id)
        );
        vm.prank(supplierB);
        ledger.approve(supplierB, id);
    }

    function test_approve_toHolder() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.InvalidOperator.selector, supplierA));
        vm.prank(supplierA);
        ledger.approve(supplierA, id);
    }

    function test_approve_unknownCertificate() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnknownCertificate.selector, 42));
        vm.prank(supplierA);
        ledger.approve(factor, 42);
    }

    function test_approve_byOperatorForAll() public {
        vm.prank(supplierA);
        ledger.setApprovalForAll(supplierB, true);
        // Only the holder approves: an approval the operator granted would outlive its revocation.
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.NotApprovedOrHolder.selector, supplierB, id));
        vm.prank(supplierB);
        ledger.approve(factor, id);
        vm.assertEq(ledger.getApproved(id), address(0));
        // It still moves the certificate itself while approved.
        vm.prank(supplierB);
        ledger.transferFrom(supplierA, factor, id);
        vm.assertEq(ledger.ownerOf(id), factor);
    }

    function test_approve_bySuspendedHolderIsInert() public {
        vm.prank(admin);
        ledger.suspendParticipant(supplierA);
        // A suspended holder may still set or clear approvals (to revoke, say) ...
        vm.prank(supplierA);
        ledger.approve(factor, id);
        vm.assertEq(ledger.getApproved(id), factor);
        // ... but nothing moves while it is suspended, whoever asks.
        vm.expectRevert(abi.encodeWithSelector(IParticipantRegistry.ParticipantNotActive.selector, supplierA));
        vm.prank(factor);
        ledger.transferFrom(supplierA, factor, id);
        vm.prank(supplierA);
        ledger.approve(address(0), id);
        vm.assertEq(ledger.getApproved(id), address(0));
    }

    function test_approve_voidedByTransferAndNotRevived() public {
        vm.prank(supplierA);
        ledger.approve(factor, id);
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, id);
        vm.assertEq(ledger.getApproved(id), address(0));

        // The certificate comes back: the old approval must stay dead.
        vm.prank(supplierB);
        ledger.transferFrom(supplierB, supplierA, id);
        vm.assertEq(ledger.getApproved(id), address(0));
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.NotApprovedOrHolder.selector, factor, id));
        vm.prank(factor);
        ledger.transferFrom(supplierA, factor, id);
    }

    function test_approve_cleared() public {
        vm.startPrank(supplierA);
        ledger.approve(factor, id);
        ledger.approve(address(0), id);
        vm.stopPrank();
        vm.assertEq(ledger.getApproved(id), address(0));
    }

    function test_approve_suspendedOperatorCannotMove() public {
        vm.prank(supplierA);
        ledger.approve(factor, id);
        vm.prank(admin);
        ledger.suspendParticipant(factor);
        vm.expectRevert(abi.encodeWithSelector(IParticipantRegistry.ParticipantNotActive.selector, factor));
        vm.prank(factor);
        ledger.transferFrom(supplierA, supplierB, id);
    }

    function test_getApproved_unknownCertificate() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnknownCertificate.selector, 42));
        ledger.getApproved(42);
    }

    function test_setApprovalForAll_setsAndEmits() public {
        vm.expectEmit(address(ledger));
        emit IERC721.ApprovalForAll(supplierA, factor, true);
        vm.prank(supplierA);
        ledger.setApprovalForAll(factor, true);
        vm.assertTrue(ledger.isApprovedForAll(supplierA, factor));

        vm.prank(factor);
        ledger.transferFrom(supplierA, supplierB, id);
        vm.assertEq(ledger.ownerOf(id), supplierB);
        // Operator approval belongs to the holder, not the certificate.
        vm.assertTrue(ledger.isApprovedForAll(supplierA, factor));
    }

    function test_setApprovalForAll_revoke() public {
        vm.startPrank(supplierA);
        ledger.setApprovalForAll(factor, true);
        ledger.setApprovalForAll(factor, false);
        vm.stopPrank();
        vm.assertFalse(ledger.isApprovedForAll(supplierA, factor));
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.NotApprovedOrHolder.selector, factor, id));
        vm.prank(factor);
        ledger.transferFrom(supplierA, factor, id);
    }

    function test_setApprovalForAll_self() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.InvalidOperator.selector, supplierA));
        vm.prank(supplierA);
        ledger.setApprovalForAll(supplierA, true);
    }

    function test_setApprovalForAll_zero() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.InvalidOperator.selector, address(0)));
        vm.prank(supplierA);
        ledger.setApprovalForAll(address(0), true);
    }

    // ------------------------------------------------------------------ safeTransferFrom

    function test_safeTransferFrom_toEOA() public {
        vm.prank(supplierA);
        ledger.safeTransferFrom(supplierA, supplierB, id);
        vm.assertEq(ledger.ownerOf(id), supplierB);
    }

    function test_safeTransferFrom_toAcceptingContract() public {
        ERC721ReceiverMock receiver = new ERC721ReceiverMock(IERC721Receiver.onERC721Received.selector, false);
        _register(address(receiver));
        vm.prank(supplierA);
        ledger.safeTransferFrom(supplierA, address(receiver), id, hex"c0ffee");
        vm.assertEq(ledger.ownerOf(id), address(receiver));
        vm.assertEq(receiver.calls(), 1);
        vm.assertEq(receiver.lastOperator(), supplierA);
        vm.assertEq(receiver.lastFrom(), supplierA);
        vm.assertEq(receiver.lastTokenId(), id);
        vm.assertEq(receiver.lastData(), hex"c0ffee");
    }

    function test_safeTransferFrom_toRejectingContract() public {
        ERC721ReceiverMock receiver = new ERC721ReceiverMock(bytes4(0x12345678), false);
        _register(address(receiver));
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnsafeReceiver.selector, address(receiver)));
        vm.prank(supplierA);
        ledger.safeTransferFrom(supplierA, address(receiver), id);
        vm.assertEq(ledger.ownerOf(id), supplierA);
    }

    function test_safeTransferFrom_toRevertingContract() public {
        ERC721ReceiverMock receiver = new ERC721ReceiverMock(IERC721Receiver.onERC721Received.selector, true);
        _register(address(receiver));
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnsafeReceiver.selector, address(receiver)));
        vm.prank(supplierA);
        ledger.safeTransferFrom(supplierA, address(receiver), id);
    }

    function test_safeTransferFrom_toContractWithoutHook() public {
        PlainContract plain = new PlainContract();
        _register(address(plain));
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnsafeReceiver.selector, address(plain)));
        vm.prank(supplierA);
        ledger.safeTransferFrom(supplierA, address(plain), id);
    }

    function test_safeTransferFrom_toSilentFallback() public {
        SilentFallback safe = new SilentFallback();
        _register(address(safe));
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnsafeReceiver.selector, address(safe)));
        vm.prank(supplierA);
        ledger.safeTransferFrom(supplierA, address(safe), id);
        // A plain transfer does not ask the receiver.
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, address(safe), id);
        vm.assertEq(ledger.ownerOf(id), address(safe));
    }

    function test_safeTransferFrom_toShortAnswer() public {
        ShortAnswerReceiver receiver = new ShortAnswerReceiver();
        _register(address(receiver));
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnsafeReceiver.selector, address(receiver)));
        vm.prank(supplierA);
        ledger.safeTransferFrom(supplierA, address(receiver), id);
    }

    function test_safeTransferFrom_toAnswersTrueToEverything() public {
        AnswersTrueToEverything receiver = new AnswersTrueToEverything();
        _register(address(receiver));
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnsafeReceiver.selector, address(receiver)));
        vm.prank(supplierA);
        ledger.safeTransferFrom(supplierA, address(receiver), id);
    }

    function test_safeTransferFrom_holderLostHolderRoles() public {
        vm.prank(admin);
        ledger.setRoles(supplierA, ROLE_AUDITOR);
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, supplierA, ROLES_HOLDER)
        );
        vm.prank(supplierA);
        ledger.safeTransferFrom(supplierA, supplierB, id);
    }

    function test_safeTransferFrom_toUnregisteredContract() public {
        ERC721ReceiverMock receiver = new ERC721ReceiverMock(IERC721Receiver.onERC721Received.selector, false);
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.ReceiverNotEligible.selector, address(receiver))
        );
        vm.prank(supplierA);
        ledger.safeTransferFrom(supplierA, address(receiver), id);
    }

    // ------------------------------------------------------------------ views

    function test_balanceOf_countsCertificates() public {
        vm.assertEq(ledger.balanceOf(supplierA), 1);
        uint256 second = _issue();
        vm.assertEq(ledger.balanceOf(supplierA), 2);
        _splitTo(id, supplierB, 1_000_00);
        vm.assertEq(ledger.balanceOf(supplierB), 1);
        vm.prank(supplierA);
        ledger.split(second, _two(5_000_00, 5_000_00));
        vm.assertEq(ledger.balanceOf(supplierA), 3);
        // Settled certificates still count (ERC-721 balance is of any status).
        vm.warp(MATURITY);
        ledger.settle(_one(second));
        vm.assertEq(ledger.balanceOf(supplierA), 3);
    }

    function test_balanceOf_zeroAddress() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.InvalidReceiver.selector, address(0)));
        ledger.balanceOf(address(0));
    }

    function test_ownerOf_unknown() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnknownCertificate.selector, 2));
        ledger.ownerOf(2);
    }

    function test_nameAndSymbol() public view {
        vm.assertEq(bytes(ledger.name()), bytes("certledger Digital Debt Certificate"));
        vm.assertEq(bytes(ledger.symbol()), bytes("DDC"));
    }
}
