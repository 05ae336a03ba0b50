// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {
    IParticipantRegistry,
    ROLE_ADMIN,
    ROLE_FACTOR,
    ROLES_ALL,
    ROLES_HOLDER
} from "./interfaces/IParticipantRegistry.sol";

/// @title ParticipantRegistry
/// @notice Who may take part, in which roles, and whether they are active.
/// @dev Abstract: the certificate ledger inherits it so that the record every certificate move
/// checks (roles, active) and the ERC-721 balance it updates share one storage slot. A separate
/// registry contract would cost a cold external call per party per move and a fresh slot for a
/// new holder's balance (about 25,000 gas on a transfer); see docs/decisions.md.
///
/// Storage, per account:
///   _records[a]      one slot: roles (8 bits) | active (8) | certificateCount (64)
///   _entityIds[a]    one slot: bytes32 entity id
///   _issuerBooks[a]  one slot: issuerLimit (128) | outstanding (128)
abstract contract ParticipantRegistry is IParticipantRegistry {
    struct Record {
        uint8 roles;
        bool active;
        uint64 certificateCount;
    }

    struct IssuerBook {
        uint128 limit;
        uint128 outstanding;
    }

    mapping(address account => Record) internal _records;
    mapping(address account => bytes32) private _entityIds;
    mapping(address account => IssuerBook) private _issuerBooks;

    /// @param admin the consortium operator, registered active with the ADMIN role
    /// @param adminEntityId the operator's entity id
    constructor(address admin, bytes32 adminEntityId) {
        _register(admin, adminEntityId, ROLE_ADMIN, 0);
    }

    modifier onlyRole(uint8 role) {
        _checkRole(msg.sender, role);
        _;
    }

    /// @inheritdoc IParticipantRegistry
    function registerParticipant(address account, bytes32 entityId, uint8 roles, uint128 issuerLimit)
        external
        onlyRole(ROLE_ADMIN)
    {
        if (_records[account].roles != 0) revert ParticipantAlreadyRegistered(account);
        _register(account, entityId, roles, issuerLimit);
    }

    /// @inheritdoc IParticipantRegistry
    function setRoles(address account, uint8 roles) external onlyRole(ROLE_ADMIN) {
        Record storage r = _registered(account);
        if (roles == 0 || roles & ~ROLES_ALL != 0) revert InvalidParticipant(account, _entityIds[account], roles);
        if (account == msg.sender && roles & ROLE_ADMIN == 0) revert AdminSelfLockout(account);
        r.roles = roles;
        emit ParticipantRolesChanged(account, roles);
    }

    /// @inheritdoc IParticipantRegistry
    function setIssuerLimit(address account, uint128 limit) external onlyRole(ROLE_ADMIN) {
        _registered(account);
        _issuerBooks[account].limit = limit;
        emit IssuerLimitChanged(account, limit);
    }

    /// @inheritdoc IParticipantRegistry
    function suspendParticipant(address account) external onlyRole(ROLE_ADMIN) {
        Record storage r = _registered(account);
        if (!r.active) revert ParticipantNotActive(account);
        if (account == msg.sender) revert AdminSelfLockout(account);
        r.active = false;
        emit ParticipantSuspended(account, msg.sender);
    }

    /// @inheritdoc IParticipantRegistry
    function reinstateParticipant(address account) external onlyRole(ROLE_ADMIN) {
        Record storage r = _registered(account);
        if (r.active) revert ParticipantAlreadyActive(account);
        r.active = true;
        emit ParticipantReinstated(account, msg.sender);
    }

    /// @inheritdoc IParticipantRegistry
    function participant(address account) external view returns (Participant memory p) {
        Record memory r = _records[account];
        IssuerBook memory b = _issuerBooks[account];
        p = Participant({
            entityId: _entityIds[account],
            roles: r.roles,
            active: r.active,
            certificateCount: r.certificateCount,
            issuerLimit: b.limit,
            outstanding: b.outstanding
        });
    }

    /// @inheritdoc IParticipantRegistry
    function hasRole(uint8 role, address account) public view returns (bool) {
        Record storage r = _records[account];
        return r.active && role != 0 && r.roles & role == role;
    }

    // ------------------------------------------------------------------ internal

    function _register(address account, bytes32 entityId, uint8 roles, uint128 issuerLimit) private {
        if (account == address(0) || entityId == bytes32(0) || roles == 0 || roles & ~ROLES_ALL != 0) {
            revert InvalidParticipant(account, entityId, roles);
        }
        _records[account] = Record({roles: roles, active: true, certificateCount: 0});
        _entityIds[account] = entityId;
        _issuerBooks[account].limit = issuerLimit;
        emit ParticipantRegistered(account, entityId, roles, issuerLimit);
    }

    function _registered(address account) private view returns (Record storage r) {
        r = _records[account];
        if (r.roles == 0) revert ParticipantNotRegistered(account);
    }

    /// @dev Reverts unless `account` is registered, active and holds every bit of `role`.
    function _checkRole(address account, uint8 role) internal view {
        Record storage r = _registered(account);
        if (!r.active) revert ParticipantNotActive(account);
        if (r.roles & role != role) revert AccountMissingRole(account, role);
    }

    /// @dev Reverts unless `account` is registered and active (any role): the check on an operator.
    function _checkActive(address account) internal view {
        if (!_registered(account).active) revert ParticipantNotActive(account);
    }

    /// @dev True if `account` may hold a certificate: active with a holder role.
    function _mayHold(Record storage r) internal view returns (bool) {
        return r.active && r.roles & ROLES_HOLDER != 0;
    }

    /// @dev True if `account` may buy a discount offer: active with the FACTOR role.
    function _mayBuy(Record storage r) internal view returns (bool) {
        return r.active && r.roles & ROLE_FACTOR != 0;
    }

    /// @dev Reverts unless `account`, whose record is `r`, may hold certificates and so move one (or
    /// its value) out: the {_mayHold} rule, with the broken half named. A suspended holder
    /// (docs/decisions.md D16) and one whose holder roles were removed keep their certificates, which
    /// cannot move until the account is reinstated or its roles come back. A holder is always
    /// registered (roles never return to 0), so no registration check. Both fields are read before
    /// either branch: they share one slot, which the optimizer then loads once.
    function _checkHolder(Record storage r, address account) internal view {
        bool active = r.active;
        uint8 roles = r.roles;
        if (!active) revert ParticipantNotActive(account);
        if (roles & ROLES_HOLDER == 0) revert AccountMissingRole(account, ROLES_HOLDER);
    }

    /// @dev Books `amount` more outstanding against `issuer`'s limit.
    function _addOutstanding(address issuer, uint256 amount) internal {
        IssuerBook storage b = _issuerBooks[issuer];
        uint256 next = uint256(b.outstanding) + amount;
        if (next > b.limit) revert IssuerLimitExceeded(issuer, b.outstanding, amount, b.limit);
        b.outstanding = uint128(next);
    }

    /// @dev Releases `amount` of `issuer`'s outstanding (paid out or refunded).
    function _releaseOutstanding(address issuer, uint256 amount) internal {
        _issuerBooks[issuer].outstanding -= uint128(amount);
    }
}
