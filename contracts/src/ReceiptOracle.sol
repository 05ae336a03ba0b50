// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

import {IReceiptOracle} from "./interfaces/IReceiptOracle.sol";
import {ICertificateLedger} from "./interfaces/ICertificateLedger.sol";
import {ROLE_ADMIN} from "./interfaces/IParticipantRegistry.sol";

/// @title ReceiptOracle
/// @notice Turns m-of-n warehouse device signatures over a receipt into a ledger confirmation.
/// @dev Storage:
///   _warehouses[w]          one slot: active | threshold | deviceCount | deviceSetVersion | freshness
///   _deviceVersion[w][d]    the device-set version `d` was last enrolled in; a device is current
///                           only while this equals the warehouse's version, so a rotation retires
///                           every old key at once, without a loop
///   _used[digest]           attestations already applied
contract ReceiptOracle is IReceiptOracle, EIP712 {
    /// @notice Most devices a warehouse may enrol (bounds the signature loop).
    uint256 public constant MAX_DEVICES = 16;

    bytes32 public constant RECEIPT_ATTESTATION_TYPEHASH = keccak256(
        "ReceiptAttestation(uint256 orderId,bytes32 warehouse,bytes32 goodsHash,uint64 quantity,uint64 receivedAt,uint32 deviceSetVersion,uint256 nonce)"
    );

    address private immutable _deployer;
    ICertificateLedger private _ledger;

    mapping(bytes32 warehouse => Warehouse) private _warehouses;
    mapping(bytes32 warehouse => mapping(address device => uint32 version)) private _deviceVersion;
    mapping(bytes32 digest => bool) private _used;

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
    function registerWarehouse(bytes32 warehouseId, address[] calldata devices, uint8 threshold, uint32 freshness)
        external
        onlyAdmin
    {
        if (_warehouses[warehouseId].deviceSetVersion != 0) revert WarehouseAlreadyRegistered(warehouseId);
        _setDevices(warehouseId, devices, threshold, freshness);
    }

    /// @inheritdoc IReceiptOracle
    function rotateDevices(bytes32 warehouseId, address[] calldata devices, uint8 threshold, uint32 freshness)
        external
        onlyAdmin
    {
        if (!_warehouses[warehouseId].active) revert UnknownWarehouse(warehouseId);
        _setDevices(warehouseId, devices, threshold, freshness);
    }

    /// @inheritdoc IReceiptOracle
    function deactivateWarehouse(bytes32 warehouseId) external onlyAdmin {
        Warehouse storage w = _warehouses[warehouseId];
        if (!w.active) revert UnknownWarehouse(warehouseId);
        w.active = false;
        emit WarehouseDeactivated(warehouseId);
    }

    /// @inheritdoc IReceiptOracle
    function confirmReceipt(ReceiptAttestation calldata a, bytes[] calldata signatures)
        external
        returns (uint256 rootCertificateId)
    {
        Warehouse memory w = _warehouses[a.warehouse];
        if (!w.active) revert UnknownWarehouse(a.warehouse);
        if (a.deviceSetVersion != w.deviceSetVersion) {
            revert StaleDeviceSet(a.warehouse, a.deviceSetVersion, w.deviceSetVersion);
        }
        // slither-disable-next-line timestamp
        if (a.receivedAt > block.timestamp) revert AttestationFromFuture(a.receivedAt, block.timestamp);
        // slither-disable-next-line timestamp
        if (block.timestamp - a.receivedAt > w.freshness) revert AttestationStale(a.receivedAt, w.freshness);
        uint256 count = signatures.length;
        if (count < w.threshold || count > w.deviceCount) revert SignatureCount(count, w.threshold, w.deviceCount);

        bytes32 digest = attestationDigest(a);
        if (_used[digest]) revert AttestationAlreadyUsed(digest);
        address[] memory signers = _verifySigners(a.warehouse, w.deviceSetVersion, digest, signatures);

        _used[digest] = true;
        emit ReceiptAttested(digest, a.orderId, a.warehouse, a.quantity, a.receivedAt, signers);
        rootCertificateId = _ledger.confirmReceipt(a.orderId, a.warehouse, a.goodsHash, a.quantity, a.receivedAt);
    }

    /// @inheritdoc IReceiptOracle
    function attestationDigest(ReceiptAttestation calldata a) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    RECEIPT_ATTESTATION_TYPEHASH,
                    a.orderId,
                    a.warehouse,
                    a.goodsHash,
                    a.quantity,
                    a.receivedAt,
                    a.deviceSetVersion,
                    a.nonce
                )
            )
        );
    }

    /// @inheritdoc IReceiptOracle
    function warehouse(bytes32 warehouseId) external view returns (Warehouse memory) {
        return _warehouses[warehouseId];
    }

    /// @inheritdoc IReceiptOracle
    function isDevice(bytes32 warehouseId, address device) external view returns (bool) {
        Warehouse storage w = _warehouses[warehouseId];
        return w.active && device != address(0) && _deviceVersion[warehouseId][device] == w.deviceSetVersion;
    }

    /// @inheritdoc IReceiptOracle
    function attestationUsed(bytes32 digest) external view returns (bool) {
        return _used[digest];
    }

    /// @inheritdoc IReceiptOracle
    function ledger() external view returns (address) {
        return address(_ledger);
    }

    /// @dev Recovers each signer; each must be a current device, and signers strictly ascending
    /// (so no device counts twice). OpenZeppelin's ECDSA refuses high-s and v other than 27/28.
    function _verifySigners(bytes32 warehouseId, uint32 version, bytes32 digest, bytes[] calldata signatures)
        private
        view
        returns (address[] memory signers)
    {
        uint256 count = signatures.length;
        signers = new address[](count);
        address previous = address(0);
        for (uint256 i = 0; i < count; ++i) {
            // The third value only details the error kind; any error is an invalid signature here.
            // slither-disable-next-line unused-return
            (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signatures[i]);
            if (err != ECDSA.RecoverError.NoError || signer == address(0)) revert InvalidSignature(i);
            if (_deviceVersion[warehouseId][signer] != version) revert UnknownDevice(i, signer);
            if (signer <= previous) revert SignersNotAscending(i, signer);
            signers[i] = signer;
            previous = signer;
        }
    }

    function _setDevices(bytes32 warehouseId, address[] calldata devices, uint8 threshold, uint32 freshness) private {
        uint256 n = devices.length;
        if (threshold == 0 || threshold > n || n > MAX_DEVICES || freshness == 0) {
            revert InvalidDeviceSet(n, threshold, freshness);
        }
        Warehouse storage w = _warehouses[warehouseId];
        uint32 version = w.deviceSetVersion + 1;
        for (uint256 i; i < n; ++i) {
            address device = devices[i];
            if (device == address(0) || _deviceVersion[warehouseId][device] == version) revert InvalidDevice(device);
            _deviceVersion[warehouseId][device] = version;
        }
        w.active = true;
        w.threshold = threshold;
        w.deviceCount = uint8(n);
        w.deviceSetVersion = version;
        w.freshness = freshness;
        emit DeviceSetChanged(warehouseId, version, devices, threshold, freshness);
    }
}
