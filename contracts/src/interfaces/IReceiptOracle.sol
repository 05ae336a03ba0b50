// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title IReceiptOracle
/// @notice Registered warehouses, their device keys and signature threshold; verifies EIP-712
/// receipt attestations signed by m distinct current devices and tells the ledger, once each.
/// @dev The EIP-712 domain is ("certledger ReceiptOracle", "1", chain id, this contract), so a
/// signature for another chain or another deployment recovers to a stranger and is refused.
interface IReceiptOracle {
    /// @notice What the devices of a warehouse sign when goods for an order arrive.
    /// @param orderId the ledger order the goods belong to
    /// @param warehouse the receiving warehouse's id
    /// @param goodsHash hash of the goods description, as in the order
    /// @param quantity units counted on arrival
    /// @param receivedAt unix time of the receipt
    /// @param deviceSetVersion the warehouse's device-set version the signers belong to
    /// @param nonce free for the gateway, so that two receipts of equal content differ
    struct ReceiptAttestation {
        uint256 orderId;
        bytes32 warehouse;
        bytes32 goodsHash;
        uint64 quantity;
        uint64 receivedAt;
        uint32 deviceSetVersion;
        uint256 nonce;
    }

    /// @notice A warehouse's public record.
    struct Warehouse {
        bool active;
        uint8 threshold;
        uint8 deviceCount;
        uint32 deviceSetVersion;
        uint32 freshness;
    }

    /// @dev `caller` is not an active ADMIN of the ledger's registry.
    error NotAdmin(address caller);
    /// @dev The ledger is already bound (`ledger`).
    error LedgerAlreadyBound(address ledger);
    /// @dev `ledger` is zero or does not name this contract as its receipt oracle.
    error LedgerMismatch(address ledger);
    /// @dev No ledger is bound yet.
    error LedgerNotBound();
    /// @dev Warehouse `warehouse` is already registered.
    error WarehouseAlreadyRegistered(bytes32 warehouse);
    /// @dev No active warehouse `warehouse`.
    error UnknownWarehouse(bytes32 warehouse);
    /// @dev A device set of `deviceCount` with threshold `threshold` is invalid (need 1 <= m <= n <= max, freshness > 0).
    error InvalidDeviceSet(uint256 deviceCount, uint256 threshold, uint256 freshness);
    /// @dev Device `device` is zero or listed twice.
    error InvalidDevice(address device);
    /// @dev The attestation names device-set `given`; the warehouse is at `current`.
    error StaleDeviceSet(bytes32 warehouse, uint32 given, uint32 current);
    /// @dev The receipt time `receivedAt` is after the block time `nowTs`.
    error AttestationFromFuture(uint256 receivedAt, uint256 nowTs);
    /// @dev The receipt time `receivedAt` is older than the warehouse's `freshness` window allows.
    error AttestationStale(uint256 receivedAt, uint256 freshness);
    /// @dev The attestation with EIP-712 digest `digest` was already used.
    error AttestationAlreadyUsed(bytes32 digest);
    /// @dev `count` signatures given; the warehouse needs `threshold` (and at most `max`).
    error SignatureCount(uint256 count, uint256 threshold, uint256 max);
    /// @dev Signature `index` is malformed (length, high s, v not 27/28, or recovers to zero).
    error InvalidSignature(uint256 index);
    /// @dev Signature `index` recovers to `signer`, not a current device of the warehouse.
    error UnknownDevice(uint256 index, address signer);
    /// @dev Signature `index` recovers to `signer`, not after the previous signer: signers must be
    /// strictly ascending, which also rules out one device counted twice.
    error SignersNotAscending(uint256 index, address signer);

    /// @dev The ledger this oracle confirms to was bound.
    event LedgerBound(address indexed ledger);
    /// @dev Warehouse `warehouse` got device set `deviceSetVersion` of `devices` with `threshold`
    /// and `freshness` seconds (registration, or rotation which voids every earlier signature).
    event DeviceSetChanged(bytes32 indexed warehouse, uint32 indexed deviceSetVersion, address[] devices, uint8 threshold, uint32 freshness);
    /// @dev Warehouse `warehouse` was deactivated.
    event WarehouseDeactivated(bytes32 indexed warehouse);
    /// @dev An attestation with `digest` for `orderId` was verified, signed by `signers`.
    event ReceiptAttested(
        bytes32 indexed digest, uint256 indexed orderId, bytes32 indexed warehouse, uint64 quantity, uint64 receivedAt, address[] signers
    );

    /// @notice Binds the ledger (once): the ledger's address depends on this oracle's.
    /// @dev Requirements: caller is the deployer; not yet bound; the ledger's `receiptOracle()` is
    /// this contract. Emits {LedgerBound}.
    function bindLedger(address ledger_) external;

    /// @notice Registers a warehouse with its devices, threshold m and freshness window.
    /// @dev Requirements: caller an active ADMIN of the ledger; warehouse new; 1 <= m <= n <=
    /// MAX_DEVICES; distinct non-zero devices; freshness > 0. Emits {DeviceSetChanged}.
    function registerWarehouse(bytes32 warehouseId, address[] calldata devices, uint8 threshold, uint32 freshness) external;

    /// @notice Replaces a warehouse's device set (key rotation): the version goes up, so signatures
    /// made under the old set no longer verify. Emits {DeviceSetChanged}.
    function rotateDevices(bytes32 warehouseId, address[] calldata devices, uint8 threshold, uint32 freshness) external;

    /// @notice Deactivates a warehouse: its attestations are refused. Emits {WarehouseDeactivated}.
    function deactivateWarehouse(bytes32 warehouseId) external;

    /// @notice Verifies `attestation` against `signatures` and confirms the order on the ledger.
    /// Anyone may submit: the device signatures are the authority.
    /// @dev Signatures are 65 bytes (r, s, v) in strictly ascending signer order. Emits {ReceiptAttested}.
    /// @return rootCertificateId the certificate the ledger minted
    function confirmReceipt(ReceiptAttestation calldata attestation, bytes[] calldata signatures)
        external
        returns (uint256 rootCertificateId);

    /// @notice The EIP-712 digest devices sign for `attestation`.
    function attestationDigest(ReceiptAttestation calldata attestation) external view returns (bytes32);
    function warehouse(bytes32 warehouseId) external view returns (Warehouse memory);
    function isDevice(bytes32 warehouseId, address device) external view returns (bool);
    function attestationUsed(bytes32 digest) external view returns (bool);
    function ledger() external view returns (address);
}
