// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

import {IReceiptOracle, KIND_CARTON_COUNT, MAX_KIND} from "./interfaces/IReceiptOracle.sol";
import {ICertificateLedger} from "./interfaces/ICertificateLedger.sol";
import {ROLE_ADMIN} from "./interfaces/IParticipantRegistry.sol";

/// @title ReceiptOracle
/// @notice Turns m device-signed observations of a delivery into a ledger confirmation.
/// @dev Storage:
///   _warehouses[w]            one slot: active | threshold | deviceCount | deviceSetVersion |
///                             freshness | requiredKinds
///   _devices[w][d]            one slot: the device-set version `d` was last enrolled in | its kind.
///                             A device is current only while that version equals the warehouse's,
///                             so a rotation retires every old key at once, without a loop
///   _ranges[w][version][kind] one slot: min | max. Keyed by version so a rotation needs no clearing
///   _sequences[d][word]       256 sequence numbers per word, a bit set once each is accepted
///   _relayers[a]              the submit allow-list
contract ReceiptOracle is IReceiptOracle, EIP712 {
    /// @notice Most devices a warehouse may enrol (bounds the signature loop).
    uint256 public constant MAX_DEVICES = 16;
    /// @notice The longest freshness window a warehouse may have. Cancelling an order waits for its
    /// deadline plus the window (D26): a window set far too long (a typo of 2^32 - 1 seconds) would
    /// hold every open order of the warehouse from cancellation, and accept readings decades old.
    uint32 public constant MAX_FRESHNESS = 7 days;

    bytes32 public constant OBSERVATION_TYPEHASH = keccak256(
        "Observation(uint256 orderId,bytes32 warehouse,bytes32 goodsHash,address device,uint8 kind,uint64 value,uint64 observedAt,uint64 sequence,uint32 deviceSetVersion,uint64 deadline)"
    );

    struct WarehouseSlot {
        bool active;
        uint8 threshold;
        uint8 deviceCount;
        uint32 deviceSetVersion;
        uint32 freshness;
        uint8 requiredKinds;
    }

    struct DeviceSlot {
        uint32 version;
        uint8 kind;
    }

    struct RangeSlot {
        uint64 min;
        uint64 max;
    }

    /// @dev What the verification loop carries from one observation to the next.
    struct Tally {
        address previous;
        uint8 kinds;
        uint64 quantity;
        uint64 receivedAt;
    }

    address private immutable _deployer;
    ICertificateLedger private _ledger;

    mapping(bytes32 warehouse => WarehouseSlot) private _warehouses;
    mapping(bytes32 warehouse => mapping(address device => DeviceSlot)) private _devices;
    mapping(bytes32 warehouse => mapping(uint32 version => mapping(uint8 kind => RangeSlot))) private _ranges;
    mapping(address device => mapping(uint256 word => uint256 bits)) private _sequences;
    mapping(address account => bool) private _relayers;

    constructor() EIP712("certledger ReceiptOracle", "1") {
        _deployer = msg.sender;
    }

    modifier onlyAdmin() {
        ICertificateLedger l = _ledger;
        if (address(l) == address(0)) revert LedgerNotBound();
        if (!l.hasRole(ROLE_ADMIN, msg.sender)) revert NotAdmin(msg.sender);
        _;
    }

    /// @inheritdoc IReceiptOracle
    function bindLedger(address ledger_) external {
        if (msg.sender != _deployer) revert NotAdmin(msg.sender);
        if (address(_ledger) != address(0)) revert LedgerAlreadyBound(address(_ledger));
        // The ledger must name this oracle as its own, or warehouses would be run by another
        // ledger's admins while the real one could never be confirmed.
        if (ledger_ == address(0) || ICertificateLedger(ledger_).receiptOracle() != address(this)) {
            revert LedgerMismatch(ledger_);
        }
        _ledger = ICertificateLedger(ledger_);
        emit LedgerBound(ledger_);
    }

    /// @inheritdoc IReceiptOracle
    function registerWarehouse(
        bytes32 warehouseId,
        DeviceEnrolment[] calldata devices,
        uint8 threshold,
        uint32 freshness,
        ReadingRange[] calldata ranges
    ) external onlyAdmin {
        if (_warehouses[warehouseId].deviceSetVersion != 0) revert WarehouseAlreadyRegistered(warehouseId);
        _setDevices(warehouseId, devices, threshold, freshness, ranges);
    }

    /// @inheritdoc IReceiptOracle
    function rotateDevices(
        bytes32 warehouseId,
        DeviceEnrolment[] calldata devices,
        uint8 threshold,
        uint32 freshness,
        ReadingRange[] calldata ranges
    ) external onlyAdmin {
        if (!_warehouses[warehouseId].active) revert UnknownWarehouse(warehouseId);
        _setDevices(warehouseId, devices, threshold, freshness, ranges);
    }

    /// @inheritdoc IReceiptOracle
    function deactivateWarehouse(bytes32 warehouseId) external onlyAdmin {
        WarehouseSlot storage w = _warehouses[warehouseId];
        if (!w.active) revert UnknownWarehouse(warehouseId);
        w.active = false;
        emit WarehouseDeactivated(warehouseId);
    }

    /// @inheritdoc IReceiptOracle
    function setRelayer(address relayer, bool allowed) external onlyAdmin {
        _relayers[relayer] = allowed;
        emit RelayerChanged(relayer, allowed);
    }

    /// @inheritdoc IReceiptOracle
    function confirmReceipt(Observation[] calldata observations, bytes[] calldata signatures)
        external
        returns (uint256 rootCertificateId)
    {
        // The devices' signatures are the authority; the allow-list keeps strangers from racing the
        // gateway's relayer with copied observations and from spending the devices' sequence numbers.
        if (!_relayers[msg.sender]) revert RelayerNotAllowed(msg.sender);
        uint256 count = observations.length;
        if (count != signatures.length) revert LengthMismatch(count, signatures.length);
        if (count == 0) revert SignatureCount(0, 0, 0);
        Observation calldata first = observations[0];
        WarehouseSlot memory w = _warehouses[first.warehouse];
        if (!w.active) revert UnknownWarehouse(first.warehouse);
        if (count < w.threshold || count > w.deviceCount) revert SignatureCount(count, w.threshold, w.deviceCount);

        Tally memory tally = Tally({previous: address(0), kinds: 0, quantity: type(uint64).max, receivedAt: 0});
        bytes32[] memory digests = new bytes32[](count);
        address[] memory signers = new address[](count);
        for (uint256 i; i < count; ++i) {
            Observation calldata o = observations[i];
            if (o.orderId != first.orderId || o.warehouse != first.warehouse || o.goodsHash != first.goodsHash) {
                revert ObservationMismatch(i);
            }
            digests[i] = _verify(i, o, signatures[i], w);
            _tally(i, o, tally, w.deviceSetVersion);
            _useSequence(o.device, o.sequence);
            signers[i] = o.device;
            emit ObservationAccepted(o.device, o.sequence, o.orderId, o.kind, o.value, o.observedAt);
        }
        uint8 missing = w.requiredKinds & ~tally.kinds;
        if (missing != 0) revert MissingReadingKind(_lowestKind(missing));

        bytes32 digest = keccak256(abi.encodePacked(digests));
        emit ReceiptAttested(digest, first.orderId, first.warehouse, tally.quantity, tally.receivedAt, signers);
        rootCertificateId =
            _ledger.confirmReceipt(first.orderId, first.warehouse, first.goodsHash, tally.quantity, tally.receivedAt);
    }

    /// @inheritdoc IReceiptOracle
    function observationDigest(Observation calldata o) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    OBSERVATION_TYPEHASH,
                    o.orderId,
                    o.warehouse,
                    o.goodsHash,
                    o.device,
                    o.kind,
                    o.value,
                    o.observedAt,
                    o.sequence,
                    o.deviceSetVersion,
                    o.deadline
                )
            )
        );
    }

    /// @inheritdoc IReceiptOracle
    function warehouse(bytes32 warehouseId) external view returns (Warehouse memory) {
        WarehouseSlot storage w = _warehouses[warehouseId];
        return Warehouse({
            active: w.active,
            threshold: w.threshold,
            deviceCount: w.deviceCount,
            deviceSetVersion: w.deviceSetVersion,
            freshness: w.freshness
        });
    }

    /// @inheritdoc IReceiptOracle
    function requiredKinds(bytes32 warehouseId) external view returns (uint8) {
        return _warehouses[warehouseId].requiredKinds;
    }

    /// @inheritdoc IReceiptOracle
    function readingRange(bytes32 warehouseId, uint8 kind) external view returns (ReadingRange memory) {
        RangeSlot storage r = _ranges[warehouseId][_warehouses[warehouseId].deviceSetVersion][kind];
        return ReadingRange({kind: kind, min: r.min, max: r.max});
    }

    /// @inheritdoc IReceiptOracle
    function isDevice(bytes32 warehouseId, address device) external view returns (bool) {
        return deviceKind(warehouseId, device) != 0;
    }

    /// @inheritdoc IReceiptOracle
    function deviceKind(bytes32 warehouseId, address device) public view returns (uint8) {
        WarehouseSlot storage w = _warehouses[warehouseId];
        DeviceSlot storage d = _devices[warehouseId][device];
        if (!w.active || device == address(0) || d.version != w.deviceSetVersion) return 0;
        return d.kind;
    }

    /// @inheritdoc IReceiptOracle
    function isRelayer(address account) external view returns (bool) {
        return _relayers[account];
    }

    /// @inheritdoc IReceiptOracle
    function sequenceUsed(address device, uint64 sequence) external view returns (bool) {
        return _sequences[device][sequence >> 8] & (uint256(1) << (sequence & 0xff)) != 0;
    }

    /// @inheritdoc IReceiptOracle
    function ledger() external view returns (address) {
        return address(_ledger);
    }

    /// @dev Checks observation `i`'s version, times and signature; returns its EIP-712 digest.
    /// OpenZeppelin's ECDSA refuses high-s and v other than 27/28.
    function _verify(uint256 i, Observation calldata o, bytes calldata signature, WarehouseSlot memory w)
        private
        view
        returns (bytes32 digest)
    {
        if (o.deviceSetVersion != w.deviceSetVersion) {
            revert StaleDeviceSet(o.warehouse, o.deviceSetVersion, w.deviceSetVersion);
        }
        // slither-disable-next-line timestamp
        if (o.deadline < block.timestamp) revert ObservationExpired(i, o.deadline, block.timestamp);
        // slither-disable-next-line timestamp
        if (o.observedAt > block.timestamp) revert ObservationFromFuture(i, o.observedAt, block.timestamp);
        // slither-disable-next-line timestamp
        if (block.timestamp - o.observedAt > w.freshness) revert ObservationStale(i, o.observedAt, w.freshness);
        digest = observationDigest(o);
        // The third value only details the error kind; any error is an invalid signature here.
        // slither-disable-next-line unused-return
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signature);
        if (err != ECDSA.RecoverError.NoError || signer == address(0)) revert InvalidSignature(i);
        if (signer != o.device) revert SignerMismatch(i, signer, o.device);
    }

    /// @dev Checks observation `i`'s device, kind and value against the current rules and adds it to
    /// the tally: the kinds seen, the lowest count (what every portal saw) and the latest time.
    function _tally(uint256 i, Observation calldata o, Tally memory tally, uint32 version) private view {
        DeviceSlot memory d = _devices[o.warehouse][o.device];
        if (d.version != version) revert UnknownDevice(i, o.device);
        if (d.kind != o.kind) revert DeviceKindMismatch(i, o.device, o.kind);
        if (o.device <= tally.previous) revert DevicesNotAscending(i, o.device);
        RangeSlot memory r = _ranges[o.warehouse][version][o.kind];
        if (o.value < r.min || o.value > r.max) revert ReadingOutOfRange(i, o.kind, o.value, r.min, r.max);
        tally.previous = o.device;
        tally.kinds |= _bit(o.kind);
        if (o.kind == KIND_CARTON_COUNT && o.value < tally.quantity) tally.quantity = o.value;
        if (o.observedAt > tally.receivedAt) tally.receivedAt = o.observedAt;
    }

    function _useSequence(address device, uint64 sequence) private {
        uint256 bit = uint256(1) << (sequence & 0xff);
        uint256 word = _sequences[device][sequence >> 8];
        if (word & bit != 0) revert SequenceAlreadyUsed(device, sequence);
        _sequences[device][sequence >> 8] = word | bit;
    }

    function _bit(uint8 kind) private pure returns (uint8) {
        return uint8(1) << kind;
    }

    function _lowestKind(uint8 mask) private pure returns (uint8 kind) {
        kind = 1;
        while (mask & _bit(kind) == 0) ++kind;
    }

    function _setDevices(
        bytes32 warehouseId,
        DeviceEnrolment[] calldata devices,
        uint8 threshold,
        uint32 freshness,
        ReadingRange[] calldata ranges
    ) private {
        if (
            threshold == 0 || threshold > devices.length || devices.length > MAX_DEVICES || freshness == 0
                || freshness > MAX_FRESHNESS
        ) {
            revert InvalidDeviceSet(devices.length, threshold, freshness);
        }
        uint32 version = _warehouses[warehouseId].deviceSetVersion + 1;
        uint8 required = _setRanges(warehouseId, version, ranges);
        address[] memory keys = _enrolDevices(warehouseId, version, required, devices);
        _warehouses[warehouseId] = WarehouseSlot({
            active: true,
            threshold: threshold,
            deviceCount: uint8(devices.length),
            deviceSetVersion: version,
            freshness: freshness,
            requiredKinds: required
        });
        emit DeviceSetChanged(warehouseId, version, keys, threshold, freshness);
        _emitRules(warehouseId, version, devices, ranges);
    }

    function _emitRules(
        bytes32 warehouseId,
        uint32 version,
        DeviceEnrolment[] calldata devices,
        ReadingRange[] calldata ranges
    ) private {
        uint8[] memory deviceKinds = new uint8[](devices.length);
        for (uint256 i; i < devices.length; ++i) {
            deviceKinds[i] = devices[i].kind;
        }
        uint256 n = ranges.length;
        uint8[] memory kinds = new uint8[](n);
        uint64[] memory mins = new uint64[](n);
        uint64[] memory maxs = new uint64[](n);
        for (uint256 i; i < n; ++i) {
            (kinds[i], mins[i], maxs[i]) = (ranges[i].kind, ranges[i].min, ranges[i].max);
        }
        emit ReadingRulesChanged(warehouseId, version, deviceKinds, kinds, mins, maxs);
    }

    /// @dev Enrols each device into `version` with its kind, one of the `required` kinds; every
    /// required kind needs a device, or each receipt of the warehouse would be unconfirmable.
    function _enrolDevices(bytes32 warehouseId, uint32 version, uint8 required, DeviceEnrolment[] calldata devices)
        private
        returns (address[] memory keys)
    {
        uint256 n = devices.length;
        keys = new address[](n);
        uint8 enrolled = 0;
        for (uint256 i; i < n; ++i) {
            DeviceEnrolment calldata e = devices[i];
            if (e.device == address(0) || _devices[warehouseId][e.device].version == version) {
                revert InvalidDevice(e.device);
            }
            if (e.kind == 0 || e.kind > MAX_KIND || required & _bit(e.kind) == 0) {
                revert InvalidDeviceKind(e.device, e.kind);
            }
            _devices[warehouseId][e.device] = DeviceSlot({version: version, kind: e.kind});
            enrolled |= _bit(e.kind);
            keys[i] = e.device;
        }
        if (enrolled != required) revert MissingReadingKind(_lowestKind(required & ~enrolled));
    }

    /// @dev Stores the ranges of a new device-set version; returns the mask of ranged kinds.
    function _setRanges(bytes32 warehouseId, uint32 version, ReadingRange[] calldata ranges)
        private
        returns (uint8 required)
    {
        uint256 count = ranges.length;
        for (uint256 i; i < count; ++i) {
            ReadingRange calldata r = ranges[i];
            if (r.kind == 0 || r.kind > MAX_KIND || required & _bit(r.kind) != 0 || r.min > r.max || r.max == 0) {
                revert InvalidReadingRange(r.kind, r.min, r.max);
            }
            required |= _bit(r.kind);
            _ranges[warehouseId][version][r.kind] = RangeSlot({min: r.min, max: r.max});
        }
        // The carton count is the delivered quantity: without it there is nothing to confirm.
        if (required & _bit(KIND_CARTON_COUNT) == 0) revert MissingReadingKind(KIND_CARTON_COUNT);
    }
}
