// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

// Role bits. A participant may hold several (a supplier that also factors, say).
uint8 constant ROLE_ADMIN = 1 << 0; // consortium operator: registers, limits, pauses
uint8 constant ROLE_ISSUER = 1 << 1; // core enterprise: opens and cancels orders
uint8 constant ROLE_SUPPLIER = 1 << 2; // holds, splits, transfers, offers for discount
uint8 constant ROLE_FACTOR = 1 << 3; // buys at a discount, holds, resells
uint8 constant ROLE_REGULATOR = 1 << 4; // freezes and unfreezes
uint8 constant ROLE_AUDITOR = 1 << 5; // reads everything off chain; no on-chain power
uint8 constant ROLES_ALL = (1 << 6) - 1;
// Only these roles may hold a certificate.
uint8 constant ROLES_HOLDER = ROLE_SUPPLIER | ROLE_FACTOR;

/// @title IParticipantRegistry
/// @notice The consortium's members: who they are (entity id = hash of the legal identifier), what
/// they may do (a role bitmask), whether they are active, and how much an issuer may owe at once.
/// @dev Roles are bits of one byte so that the record an ERC-721 holder check needs (roles, active,
/// certificate count) fits in one storage slot; see docs/decisions.md.
interface IParticipantRegistry {
    /// @notice A participant's public record.
    /// @param entityId hash of the legal identifier (e.g. keccak256 of the unified social credit code)
    /// @param roles bitmask of ROLE_* constants
    /// @param active false while suspended; an inactive participant can neither act nor receive
    /// @param certificateCount ERC-721 balance: certificates this account holds (any status)
    /// @param issuerLimit the most an issuer may have outstanding (escrowed, not yet paid or refunded)
    /// @param outstanding what the issuer has outstanding now
    struct Participant {
        bytes32 entityId;
        uint8 roles;
        bool active;
        uint64 certificateCount;
        uint128 issuerLimit;
        uint128 outstanding;
    }

    /// @dev `account` is already registered.
    error ParticipantAlreadyRegistered(address account);
    /// @dev `account` is not registered.
    error ParticipantNotRegistered(address account);
    /// @dev `account` is registered but suspended.
    error ParticipantNotActive(address account);
    /// @dev `account` is already active (reinstating it would change nothing).
    error ParticipantAlreadyActive(address account);
    /// @dev `account` lacks every role in `role` (a bitmask of ROLE_* values).
    error AccountMissingRole(address account, uint8 role);
    /// @dev Registration with a zero address, a zero entity id or no known role (`roles`).
    error InvalidParticipant(address account, bytes32 entityId, uint8 roles);
    /// @dev An admin may not suspend itself or drop its own ADMIN role: the last admin would lock
    /// the consortium out.
    error AdminSelfLockout(address account);
    /// @dev Opening `requested` more would take `issuer` past its `limit` (it owes `outstanding`).
    error IssuerLimitExceeded(address issuer, uint256 outstanding, uint256 requested, uint256 limit);

    /// @dev `account` was registered with its entity id, roles and issuer limit, and is active.
    event ParticipantRegistered(address indexed account, bytes32 indexed entityId, uint8 roles, uint128 issuerLimit);
    /// @dev `account`'s roles were replaced by `roles`.
    event ParticipantRolesChanged(address indexed account, uint8 roles);
    /// @dev `account`'s issuer limit was set to `limit`.
    event IssuerLimitChanged(address indexed account, uint128 limit);
    /// @dev `account` was suspended by admin `by`.
    event ParticipantSuspended(address indexed account, address indexed by);
    /// @dev `account` was reinstated by admin `by`.
    event ParticipantReinstated(address indexed account, address indexed by);

    /// @notice Registers `account` as an active participant.
    /// @dev Requirements: caller is an active ADMIN; `account` not registered; `account`,
    /// `entityId` and `roles` non-zero and `roles` only known bits. Emits {ParticipantRegistered}.
    function registerParticipant(address account, bytes32 entityId, uint8 roles, uint128 issuerLimit) external;

    /// @notice Replaces `account`'s roles. Without SUPPLIER or FACTOR it keeps the certificates it
    /// holds (and is paid for them at settlement), but they cannot move until a holder role is back.
    /// @dev Requirements: caller is an active ADMIN; `account` registered; `roles` valid; an admin
    /// keeps its own ADMIN role. Emits {ParticipantRolesChanged}.
    function setRoles(address account, uint8 roles) external;

    /// @notice Sets how much `account` may have outstanding as an issuer.
    /// @dev Requirements: caller is an active ADMIN; `account` registered. A limit below what is
    /// already outstanding only blocks new orders. Emits {IssuerLimitChanged}.
    function setIssuerLimit(address account, uint128 limit) external;

    /// @notice Suspends `account`: it can no longer act, hold newly moved certificates or receive;
    /// the certificates it holds cannot move until it is reinstated.
    /// @dev Requirements: caller is an active ADMIN; `account` registered, active, not the caller.
    /// Emits {ParticipantSuspended}.
    function suspendParticipant(address account) external;

    /// @notice Reinstates a suspended `account`.
    /// @dev Requirements: caller is an active ADMIN; `account` registered and suspended.
    /// Emits {ParticipantReinstated}.
    function reinstateParticipant(address account) external;

    /// @notice The record of `account` (all zero if unregistered).
    function participant(address account) external view returns (Participant memory);

    /// @notice True if `account` is registered, active and holds every bit of `role`.
    function hasRole(uint8 role, address account) external view returns (bool);
}
