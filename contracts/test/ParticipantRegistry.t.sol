// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Base} from "./Base.t.sol";
import {IParticipantRegistry} from "../src/interfaces/IParticipantRegistry.sol";
import {
    ROLE_ADMIN,
    ROLE_ISSUER,
    ROLE_SUPPLIER,
    ROLE_FACTOR,
    ROLE_REGULATOR,
    ROLE_AUDITOR,
    ROLES_ALL
} from "../src/interfaces/IParticipantRegistry.sol";

contract ParticipantRegistryTest is Base {
    bytes32 internal constant NEW_ENTITY = keccak256("91440300MA5NEW0001");

    function test_constructor_registersAdmin() public view {
        IParticipantRegistry.Participant memory p = ledger.participant(admin);
        vm.assertEq(p.entityId, ADMIN_ENTITY);
        vm.assertEq(uint256(p.roles), uint256(ROLE_ADMIN));
        vm.assertTrue(p.active);
        vm.assertTrue(ledger.hasRole(ROLE_ADMIN, admin));
    }

    // ------------------------------------------------------------------ registerParticipant

    function test_registerParticipant_storesRecordAndEmits() public {
        vm.expectEmit(address(ledger));
        emit IParticipantRegistry.ParticipantRegistered(outsider, NEW_ENTITY, ROLE_SUPPLIER | ROLE_FACTOR, 5);
        vm.prank(admin);
        ledger.registerParticipant(outsider, NEW_ENTITY, ROLE_SUPPLIER | ROLE_FACTOR, 5);

        IParticipantRegistry.Participant memory p = ledger.participant(outsider);
        vm.assertEq(p.entityId, NEW_ENTITY);
        vm.assertEq(uint256(p.roles), uint256(ROLE_SUPPLIER | ROLE_FACTOR));
        vm.assertTrue(p.active);
        vm.assertEq(uint256(p.certificateCount), 0);
        vm.assertEq(uint256(p.issuerLimit), 5);
        vm.assertEq(uint256(p.outstanding), 0);
        vm.assertTrue(ledger.hasRole(ROLE_SUPPLIER, outsider));
        vm.assertTrue(ledger.hasRole(ROLE_SUPPLIER | ROLE_FACTOR, outsider));
        vm.assertFalse(ledger.hasRole(ROLE_ISSUER, outsider));
    }

    function test_registerParticipant_alreadyRegistered() public {
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.ParticipantAlreadyRegistered.selector, supplierA)
        );
        vm.prank(admin);
        ledger.registerParticipant(supplierA, NEW_ENTITY, ROLE_FACTOR, 0);
    }

    function test_registerParticipant_zeroAddress() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                IParticipantRegistry.InvalidParticipant.selector, address(0), NEW_ENTITY, ROLE_SUPPLIER
            )
        );
        vm.prank(admin);
        ledger.registerParticipant(address(0), NEW_ENTITY, ROLE_SUPPLIER, 0);
    }

    function test_registerParticipant_zeroEntityId() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                IParticipantRegistry.InvalidParticipant.selector, outsider, bytes32(0), ROLE_SUPPLIER
            )
        );
        vm.prank(admin);
        ledger.registerParticipant(outsider, bytes32(0), ROLE_SUPPLIER, 0);
    }

    function test_registerParticipant_noRoles() public {
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.InvalidParticipant.selector, outsider, NEW_ENTITY, 0)
        );
        vm.prank(admin);
        ledger.registerParticipant(outsider, NEW_ENTITY, 0, 0);
    }

    function test_registerParticipant_unknownRoleBit() public {
        uint8 roles = ROLES_ALL + 1; // bit 6
        vm.expectRevert(
            abi.encodeWithSelector(
                IParticipantRegistry.InvalidParticipant.selector, outsider, NEW_ENTITY, roles
            )
        );
        vm.prank(admin);
        ledger.registerParticipant(outsider, NEW_ENTITY, roles, 0);
    }

    function test_registerParticipant_callerMissingRole() public {
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, issuer, ROLE_ADMIN)
        );
        vm.prank(issuer);
        ledger.registerParticipant(outsider, NEW_ENTITY, ROLE_SUPPLIER, 0);
    }

    function test_registerParticipant_callerNotRegistered() public {
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.ParticipantNotRegistered.selector, outsider)
        );
        vm.prank(outsider);
        ledger.registerParticipant(outsider, NEW_ENTITY, ROLE_SUPPLIER, 0);
    }

    function test_registerParticipant_callerSuspendedAdmin() public {
        // An admin cannot suspend itself (AdminSelfLockout); a second admin does it.
        address admin2 = makeAddr("admin2");
        vm.prank(admin);
        ledger.registerParticipant(admin2, keccak256("admin2"), ROLE_ADMIN, 0);
        vm.prank(admin2);
        ledger.suspendParticipant(admin);
        vm.expectRevert(abi.encodeWithSelector(IParticipantRegistry.ParticipantNotActive.selector, admin));
        vm.prank(admin);
        ledger.registerParticipant(outsider, NEW_ENTITY, ROLE_SUPPLIER, 0);
    }

    // ------------------------------------------------------------------ setRoles

    function test_setRoles_replacesRolesAndEmits() public {
        vm.expectEmit(address(ledger));
        emit IParticipantRegistry.ParticipantRolesChanged(supplierA, ROLE_FACTOR);
        vm.prank(admin);
        ledger.setRoles(supplierA, ROLE_FACTOR);
        vm.assertEq(uint256(ledger.participant(supplierA).roles), uint256(ROLE_FACTOR));
        vm.assertFalse(ledger.hasRole(ROLE_SUPPLIER, supplierA));
        vm.assertTrue(ledger.hasRole(ROLE_FACTOR, supplierA));
    }

    function test_setRoles_notRegistered() public {
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.ParticipantNotRegistered.selector, outsider)
        );
        vm.prank(admin);
        ledger.setRoles(outsider, ROLE_SUPPLIER);
    }

    function test_setRoles_zeroRoles() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                IParticipantRegistry.InvalidParticipant.selector, supplierA, keccak256("supplierA"), 0
            )
        );
        vm.prank(admin);
        ledger.setRoles(supplierA, 0);
    }

    function test_setRoles_unknownRoleBit() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                IParticipantRegistry.InvalidParticipant.selector,
                supplierA,
                keccak256("supplierA"),
                uint8(0x80)
            )
        );
        vm.prank(admin);
        ledger.setRoles(supplierA, 0x80);
    }

    function test_setRoles_notAdmin() public {
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, regulator, ROLE_ADMIN)
        );
        vm.prank(regulator);
        ledger.setRoles(supplierA, ROLE_FACTOR);
    }

    // ------------------------------------------------------------------ setIssuerLimit

    function test_setIssuerLimit_setsAndEmits() public {
        vm.expectEmit(address(ledger));
        emit IParticipantRegistry.IssuerLimitChanged(issuer, 42);
        vm.prank(admin);
        ledger.setIssuerLimit(issuer, 42);
        vm.assertEq(uint256(ledger.participant(issuer).issuerLimit), 42);
    }

    function test_setIssuerLimit_notRegistered() public {
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.ParticipantNotRegistered.selector, outsider)
        );
        vm.prank(admin);
        ledger.setIssuerLimit(outsider, 1);
    }

    function test_setIssuerLimit_notAdmin() public {
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, issuer, ROLE_ADMIN)
        );
        vm.prank(issuer);
        ledger.setIssuerLimit(issuer, type(uint128).max);
    }

    function test_setIssuerLimit_belowOutstandingBlocksOnlyNewOrders() public {
        uint256 orderId = _openOrder();
        vm.prank(admin);
        ledger.setIssuerLimit(issuer, 1);
        // The existing order still confirms and settles.
        uint256 id = _confirm(orderId, QTY);
        vm.assertEq(_value(id), AMOUNT);
        // A new one is refused.
        bytes32 invoice = _nextInvoice();
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.IssuerLimitExceeded.selector, issuer, AMOUNT, 1, 1)
        );
        vm.prank(issuer);
        ledger.openOrder(supplierA, 1, MATURITY, invoice, WAREHOUSE, GOODS, QTY, DEADLINE);
    }

    // ------------------------------------------------------------------ suspend / reinstate

    function test_suspendParticipant_deactivatesAndEmits() public {
        vm.expectEmit(address(ledger));
        emit IParticipantRegistry.ParticipantSuspended(supplierA, admin);
        vm.prank(admin);
        ledger.suspendParticipant(supplierA);
        vm.assertFalse(ledger.participant(supplierA).active);
        vm.assertFalse(ledger.hasRole(ROLE_SUPPLIER, supplierA));
        // roles are kept
        vm.assertEq(uint256(ledger.participant(supplierA).roles), uint256(ROLE_SUPPLIER));
    }

    function test_suspendParticipant_alreadySuspended() public {
        vm.prank(admin);
        ledger.suspendParticipant(supplierA);
        vm.expectRevert(abi.encodeWithSelector(IParticipantRegistry.ParticipantNotActive.selector, supplierA));
        vm.prank(admin);
        ledger.suspendParticipant(supplierA);
    }

    function test_suspendParticipant_self() public {
        vm.expectRevert(abi.encodeWithSelector(IParticipantRegistry.AdminSelfLockout.selector, admin));
        vm.prank(admin);
        ledger.suspendParticipant(admin);
        vm.assertTrue(ledger.participant(admin).active);
    }

    function test_setRoles_selfDroppingAdmin() public {
        vm.expectRevert(abi.encodeWithSelector(IParticipantRegistry.AdminSelfLockout.selector, admin));
        vm.prank(admin);
        ledger.setRoles(admin, ROLE_SUPPLIER);
        vm.assertTrue(ledger.hasRole(ROLE_ADMIN, admin));
    }

    function test_setRoles_selfKeepingAdmin() public {
        vm.prank(admin);
        ledger.setRoles(admin, ROLE_ADMIN | ROLE_AUDITOR);
        vm.assertTrue(ledger.hasRole(ROLE_ADMIN | ROLE_AUDITOR, admin));
    }

    function test_suspendParticipant_notRegistered() public {
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.ParticipantNotRegistered.selector, outsider)
        );
        vm.prank(admin);
        ledger.suspendParticipant(outsider);
    }

    function test_suspendParticipant_notAdmin() public {
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, supplierB, ROLE_ADMIN)
        );
        vm.prank(supplierB);
        ledger.suspendParticipant(supplierA);
    }

    function test_reinstateParticipant_reactivatesAndEmits() public {
        vm.prank(admin);
        ledger.suspendParticipant(supplierA);
        vm.expectEmit(address(ledger));
        emit IParticipantRegistry.ParticipantReinstated(supplierA, admin);
        vm.prank(admin);
        ledger.reinstateParticipant(supplierA);
        vm.assertTrue(ledger.participant(supplierA).active);
        vm.assertTrue(ledger.hasRole(ROLE_SUPPLIER, supplierA));
    }

    function test_reinstateParticipant_alreadyActive() public {
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.ParticipantAlreadyActive.selector, supplierA)
        );
        vm.prank(admin);
        ledger.reinstateParticipant(supplierA);
    }

    function test_reinstateParticipant_notRegistered() public {
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.ParticipantNotRegistered.selector, outsider)
        );
        vm.prank(admin);
        ledger.reinstateParticipant(outsider);
    }

    function test_reinstateParticipant_notAdmin() public {
        vm.prank(admin);
        ledger.suspendParticipant(supplierA);
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, supplierB, ROLE_ADMIN)
        );
        vm.prank(supplierB);
        ledger.reinstateParticipant(supplierA);
    }

    // ------------------------------------------------------------------ views

    function test_hasRole_zeroRoleIsFalse() public view {
        vm.assertFalse(ledger.hasRole(0, supplierA));
        vm.assertFalse(ledger.hasRole(ROLE_SUPPLIER, outsider));
    }

    function test_participant_unregisteredIsZero() public view {
        IParticipantRegistry.Participant memory p = ledger.participant(outsider);
        vm.assertEq(p.entityId, bytes32(0));
        vm.assertEq(uint256(p.roles), 0);
        vm.assertFalse(p.active);
    }
}
