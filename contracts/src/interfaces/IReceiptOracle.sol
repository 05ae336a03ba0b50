// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @dev Reading kinds: bit `kind` of a warehouse's required-kinds mask. Kinds 1..7.
uint8 constant KIND_CARTON_COUNT = 1; // an RFID portal's count of tagged cartons: the delivered quantity
uint8 constant KIND_NET_WEIGHT = 2; // a weighbridge's net weight in grams: the cross-check
uint8 constant MAX_KIND = 7;

/// @title IReceiptOracle
/// @notice Registered warehouses, their device keys (each of one reading kind), threshold m, reading
/// ranges and freshness window; verifies EIP-712 observations signed each by its own device and tells
/// the ledger the delivered quantity, once per order.
/// @dev The EIP-712 domain is ("certledger ReceiptOracle", "1", chain id, this contract), so a
/// signature for another chain or another deployment recovers to a stranger and is refused.
interface IReceiptOracle {
    /// @notice One device's signed reading of the goods of an order.
    /// @param orderId the ledger order the goods belong to
    /// @param warehouse the receiving warehouse's id
    /// @param goodsHash hash of the goods description, as in the order
    /// @param device the signing device's address
    /// @param kind the reading kind (KIND_*), as enrolled for the device
    /// @param value the reading: cartons counted, or grams weighed
    /// @param observedAt unix time of the reading
    /// @param sequence the device's own counter; each (device, sequence) is accepted once, in any order
    /// @param deviceSetVersion the warehouse's device-set version the device belongs to
    /// @param deadline unix time after which the observation may no longer be submitted
    struct Observation {
        uint256 orderId;
        bytes32 warehouse;
        bytes32 goodsHash;
        address device;
        uint8 kind;
        uint64 value;
        uint64 observedAt;
        uint64 sequence;
        uint32 deviceSetVersion;
        uint64 deadline;
    }

    /// @notice A device key and the kind of reading it makes.
    struct DeviceEnrolment {
        address device;
        uint8 kind;
    }

    /// @notice The plausible readings of one kind; every kind with a range is required in a receipt.
    struct ReadingRange {
        uint8 kind;
        uint64 min;
        uint64 max;
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
    /// @dev A device set of `deviceCount` with threshold `threshold` is invalid (need 1 <= m <= n <= max,
    /// 0 < freshness <= MAX_FRESHNESS).
    error InvalidDeviceSet(uint256 deviceCount, uint256 threshold, uint256 freshness);
    /// @dev Device `device` is zero or listed twice.
    error InvalidDevice(address device);
    /// @dev Device `device` is enrolled with `kind`, which has no reading range.
    error InvalidDeviceKind(address device, uint8 kind);
    /// @dev The range [`min`, `max`] for `kind` is invalid: kind outside 1..7, listed twice, min > max or max 0.
    error InvalidReadingRange(uint8 kind, uint64 min, uint64 max);
    /// @dev Reading kind `kind` is required but missing: from a receipt's observations, or at
    /// enrolment from the ranges (carton count always) or from the devices.
    error MissingReadingKind(uint8 kind);
    /// @dev `relayer` is not on the oracle's relayer allow-list.
    error RelayerNotAllowed(address relayer);
    /// @dev `observations` and `signatures` differ in length.
    error LengthMismatch(uint256 observations, uint256 signatures);
    /// @dev `count` observations given; the warehouse needs `threshold` (and at most `max`).
    error SignatureCount(uint256 count, uint256 threshold, uint256 max);
    /// @dev Observation `index` names another order, warehouse or goods than observation 0.
    error ObservationMismatch(uint256 index);
    /// @dev The observation names device-set `given`; the warehouse is at `current`.
    error StaleDeviceSet(bytes32 warehouse, uint32 given, uint32 current);
    /// @dev Observation `index` had to be submitted by `deadline`; it is `nowTs`.
    error ObservationExpired(uint256 index, uint256 deadline, uint256 nowTs);
    /// @dev Observation `index` was made at `observedAt`, after the block time `nowTs`.
    error ObservationFromFuture(uint256 index, uint256 observedAt, uint256 nowTs);
    /// @dev Observation `index` made at `observedAt` is older than the `freshness` window allows.
    error ObservationStale(uint256 index, uint256 observedAt, uint256 freshness);
    /// @dev Signature `index` is malformed (length, high s, v not 27/28, or recovers to zero).
    error InvalidSignature(uint256 index);
    /// @dev Signature `index` recovers to `signer`, not to the observation's `device`.
    error SignerMismatch(uint256 index, address signer, address device);
    /// @dev Observation `index` names `device`, not a current device of the warehouse.
    error UnknownDevice(uint256 index, address device);
    /// @dev Observation `index` by `device` claims `kind`, not the kind the device is enrolled with.
    error DeviceKindMismatch(uint256 index, address device, uint8 kind);
    /// @dev Observation `index` names `device`, not after the previous one: devices must be strictly
    /// ascending, which also rules out one device counted twice.
    error DevicesNotAscending(uint256 index, address device);
    /// @dev Observation `index` reads `value` of `kind`, outside the warehouse's [`min`, `max`].
    error ReadingOutOfRange(uint256 index, uint8 kind, uint64 value, uint64 min, uint64 max);
    /// @dev `device` already had an observation with `sequence` accepted.
    error SequenceAlreadyUsed(address device, uint64 sequence);

    /// @dev The ledger this oracle confirms to was bound.
    event LedgerBound(address indexed ledger);
    /// @dev Warehouse `warehouse` got device set `deviceSetVersion` of `devices` with `threshold`
    /// and `freshness` seconds (registration, or rotation which voids every earlier signature).
    event DeviceSetChanged(bytes32 indexed warehouse, uint32 indexed deviceSetVersion, address[] devices, uint8 threshold, uint32 freshness);
    /// @dev The devices of set `deviceSetVersion` read `deviceKinds` (in the order of
    /// {DeviceSetChanged}'s devices); readings of `rangeKinds[i]` must lie in [`rangeMins[i]`,
    /// `rangeMaxs[i]`], and every ranged kind is required. Flat arrays, so that any ABI decoder reads it.
    event ReadingRulesChanged(
        bytes32 indexed warehouse,
        uint32 indexed deviceSetVersion,
        uint8[] deviceKinds,
        uint8[] rangeKinds,
        uint64[] rangeMins,
        uint64[] rangeMaxs
    );
    /// @dev Warehouse `warehouse` was deactivated.
    event WarehouseDeactivated(bytes32 indexed warehouse);
    /// @dev `relayer` was put on (`allowed`) or taken off the relayer allow-list.
    event RelayerChanged(address indexed relayer, bool allowed);
    /// @dev `device`'s observation `sequence` for `orderId` was accepted: `kind` read `value` at `observedAt`.
    event ObservationAccepted(
        address indexed device, uint64 indexed sequence, uint256 indexed orderId, uint8 kind, uint64 value, uint64 observedAt
    );
    /// @dev A receipt for `orderId` was verified: `digest` is the hash of its observations' EIP-712
    /// digests in order, `quantity` the lowest carton count, `receivedAt` the latest reading time.
    event ReceiptAttested(
        bytes32 indexed digest, uint256 indexed orderId, bytes32 indexed warehouse, uint64 quantity, uint64 receivedAt, address[] signers
    );

    /// @notice Binds the ledger (once): the ledger's address depends on this oracle's.
    /// @dev Requirements: caller is the deployer; not yet bound; the ledger's `receiptOracle()` is
    /// this contract. Emits {LedgerBound}.
    function bindLedger(address ledger_) external;

    /// @notice Registers a warehouse with its devices and their kinds, threshold m, freshness window
    /// and reading ranges.
    /// @dev Requirements: caller an active ADMIN of the ledger; warehouse new; 1 <= m <= n <=
    /// MAX_DEVICES; distinct non-zero devices; 0 < freshness <= MAX_FRESHNESS (7 days); valid ranges including carton count;
    /// each device's kind has a range and each ranged kind has a device.
    /// Emits {DeviceSetChanged} and {ReadingRulesChanged}.
    function registerWarehouse(
        bytes32 warehouseId,
        DeviceEnrolment[] calldata devices,
        uint8 threshold,
        uint32 freshness,
        ReadingRange[] calldata ranges
    ) external;

    /// @notice Replaces a warehouse's device set and reading rules (key rotation): the version goes
    /// up, so observations signed under the old set no longer verify.
    /// Emits {DeviceSetChanged} and {ReadingRulesChanged}.
    function rotateDevices(
        bytes32 warehouseId,
        DeviceEnrolment[] calldata devices,
        uint8 threshold,
        uint32 freshness,
        ReadingRange[] calldata ranges
    ) external;

    /// @notice Deactivates a warehouse: its observations are refused. Emits {WarehouseDeactivated}.
    function deactivateWarehouse(bytes32 warehouseId) external;

    /// @notice Puts `relayer` on or off the allow-list of accounts that may submit receipts.
    /// @dev Requirements: caller an active ADMIN of the ledger. Emits {RelayerChanged}.
    function setRelayer(address relayer, bool allowed) external;

    /// @notice Verifies the observations against their signatures and confirms the order on the
    /// ledger with the lowest carton count as the delivered quantity.
    /// @dev Requirements: caller allow-listed; between m and n observations in strictly ascending
    /// device order, all for one order, warehouse and goods, each signed by its device (65 bytes,
    /// low s, v 27/28), current, fresh, unexpired, in range and with an unused sequence; at least one
    /// of each required kind. Emits {ObservationAccepted} for each and {ReceiptAttested}.
    /// @return rootCertificateId the certificate the ledger minted
    function confirmReceipt(Observation[] calldata observations, bytes[] calldata signatures)
        external
        returns (uint256 rootCertificateId);

    /// @notice The EIP-712 digest a device signs for `observation`.
    function observationDigest(Observation calldata observation) external view returns (bytes32);
    function warehouse(bytes32 warehouseId) external view returns (Warehouse memory);
    /// @notice The bitmask of reading kinds every receipt of the warehouse must include.
    function requiredKinds(bytes32 warehouseId) external view returns (uint8);
    /// @notice The reading range of `kind` in the warehouse's current rules ([0, 0] if none).
    function readingRange(bytes32 warehouseId, uint8 kind) external view returns (ReadingRange memory);
    function isDevice(bytes32 warehouseId, address device) external view returns (bool);
    /// @notice The kind `device` reads in the warehouse's current set, 0 if it is not a current device.
    function deviceKind(bytes32 warehouseId, address device) external view returns (uint8);
    function isRelayer(address account) external view returns (bool);
    function sequenceUsed(address device, uint64 sequence) external view returns (bool);
    function ledger() external view returns (address);
}
