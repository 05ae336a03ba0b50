// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Base} from "./Base.t.sol";
import {ReceiptOracle} from "../src/ReceiptOracle.sol";
import {CertificateLedger} from "../src/CertificateLedger.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IReceiptOracle} from "../src/interfaces/IReceiptOracle.sol";
import {ICertificateLedger} from "../src/interfaces/ICertificateLedger.sol";
import {ROLE_ADMIN} from "../src/interfaces/IParticipantRegistry.sol";

contract ReceiptOracleTest is Base {
    uint256 internal constant DEVICE_PK_4 = 0xD4;

    uint256 internal orderId;

    function setUp() public override {
        super.setUp();
        orderId = _openOrder();
    }

    function _fresh() internal returns (IReceiptOracle.ReceiptAttestation memory) {
        return _attestation(orderId, QTY, uint64(block.timestamp));
    }

    function _expectConfirmRevert(
        IReceiptOracle.ReceiptAttestation memory a,
        bytes[] memory sigs,
        bytes memory err
    ) internal {
        vm.expectRevert(err);
        vm.prank(relayer);
        oracle.confirmReceipt(a, sigs);
        vm.assertEq(uint256(ledger.order(orderId).status), uint256(ICertificateLedger.OrderStatus.Open));
    }

    function _addrs(address a, address b, address c) internal pure returns (address[] memory list) {
        list = new address[](3);
        list[0] = a;
        list[1] = b;
        list[2] = c;
    }

    // ------------------------------------------------------------------ bindLedger

    function test_bindLedger_emitsAndStores() public {
        ReceiptOracle o = new ReceiptOracle();
        CertificateLedger l =
            new CertificateLedger(IERC20(address(token)), address(o), admin, ADMIN_ENTITY, MIN_UNIT, MAX_DEPTH);
        vm.expectEmit(address(o));
        emit IReceiptOracle.LedgerBound(address(l));
        o.bindLedger(address(l));
        vm.assertEq(o.ledger(), address(l));
    }

    function test_bindLedger_ledgerOfAnotherOracle() public {
        ReceiptOracle o = new ReceiptOracle();
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.LedgerMismatch.selector, address(ledger)));
        o.bindLedger(address(ledger));
    }

    function test_bindLedger_alreadyBound() public {
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.LedgerAlreadyBound.selector, address(ledger)));
        oracle.bindLedger(address(0xBEEF));
    }

    function test_bindLedger_notDeployer() public {
        ReceiptOracle o = new ReceiptOracle();
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.NotAdmin.selector, admin));
        vm.prank(admin);
        o.bindLedger(address(ledger));
    }

    function test_bindLedger_zeroAddress() public {
        ReceiptOracle o = new ReceiptOracle();
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.LedgerMismatch.selector, address(0)));
        o.bindLedger(address(0));
    }

    function test_registerWarehouse_beforeBind() public {
        ReceiptOracle o = new ReceiptOracle();
        vm.expectRevert(_err(IReceiptOracle.LedgerNotBound.selector));
        vm.prank(admin);
        o.registerWarehouse(WAREHOUSE, devices, 2, FRESHNESS);
    }

    // ------------------------------------------------------------------ registerWarehouse

    function test_registerWarehouse_storesAndEmits() public {
        bytes32 w = keccak256("WH-NEW");
        vm.expectEmit(address(oracle));
        emit IReceiptOracle.DeviceSetChanged(w, 1, devices, 3, 600);
        vm.prank(admin);
        oracle.registerWarehouse(w, devices, 3, 600);
        IReceiptOracle.Warehouse memory rec = oracle.warehouse(w);
        vm.assertTrue(rec.active);
        vm.assertEq(uint256(rec.threshold), 3);
        vm.assertEq(uint256(rec.deviceCount), 3);
        vm.assertEq(uint256(rec.deviceSetVersion), 1);
        vm.assertEq(uint256(rec.freshness), 600);
        for (uint256 i; i < 3; ++i) {
            vm.assertTrue(oracle.isDevice(w, devices[i]));
        }
        vm.assertFalse(oracle.isDevice(w, vm.addr(STRANGER_PK)));
        vm.assertFalse(oracle.isDevice(w, address(0)));
    }

    function test_registerWarehouse_alreadyRegistered() public {
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.WarehouseAlreadyRegistered.selector, WAREHOUSE));
        vm.prank(admin);
        oracle.registerWarehouse(WAREHOUSE, devices, 2, FRESHNESS);
    }

    function test_registerWarehouse_notAdmin() public {
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.NotAdmin.selector, issuer));
        vm.prank(issuer);
        oracle.registerWarehouse(keccak256("WH-NEW"), devices, 2, FRESHNESS);
    }

    function test_registerWarehouse_suspendedAdmin() public {
        // An admin cannot suspend itself (AdminSelfLockout); a second admin does it.
        address admin2 = makeAddr("admin2");
        vm.prank(admin);
        ledger.registerParticipant(admin2, keccak256("admin2"), ROLE_ADMIN, 0);
        vm.prank(admin2);
        ledger.suspendParticipant(admin);
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.NotAdmin.selector, admin));
        vm.prank(admin);
        oracle.registerWarehouse(keccak256("WH-NEW"), devices, 2, FRESHNESS);
    }

    function test_registerWarehouse_zeroThreshold() public {
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.InvalidDeviceSet.selector, 3, 0, FRESHNESS));
        vm.prank(admin);
        oracle.registerWarehouse(keccak256("WH-NEW"), devices, 0, FRESHNESS);
    }

    function test_registerWarehouse_thresholdAboveDevices() public {
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.InvalidDeviceSet.selector, 3, 4, FRESHNESS));
        vm.prank(admin);
        oracle.registerWarehouse(keccak256("WH-NEW"), devices, 4, FRESHNESS);
    }

    function test_registerWarehouse_tooManyDevices() public {
        address[] memory many = new address[](17);
        for (uint256 i; i < 17; ++i) {
            many[i] = vm.addr(1000 + i);
        }
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.InvalidDeviceSet.selector, 17, 2, FRESHNESS));
        vm.prank(admin);
        oracle.registerWarehouse(keccak256("WH-NEW"), many, 2, FRESHNESS);
    }

    function test_registerWarehouse_zeroFreshness() public {
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.InvalidDeviceSet.selector, 3, 2, 0));
        vm.prank(admin);
        oracle.registerWarehouse(keccak256("WH-NEW"), devices, 2, 0);
    }

    function test_registerWarehouse_duplicateDevice() public {
        address[] memory list = _addrs(devices[0], devices[1], devices[0]);
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.InvalidDevice.selector, devices[0]));
        vm.prank(admin);
        oracle.registerWarehouse(keccak256("WH-NEW"), list, 2, FRESHNESS);
    }

    function test_registerWarehouse_zeroDevice() public {
        address[] memory list = _addrs(devices[0], address(0), devices[2]);
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.InvalidDevice.selector, address(0)));
        vm.prank(admin);
        oracle.registerWarehouse(keccak256("WH-NEW"), list, 2, FRESHNESS);
    }

    // ------------------------------------------------------------------ rotateDevices

    function _rotate() internal returns (address[] memory next) {
        next = _addrs(devices[0], devices[1], vm.addr(DEVICE_PK_4)); // device 3 retired, device 4 enrolled
        vm.prank(admin);
        oracle.rotateDevices(WAREHOUSE, next, 2, FRESHNESS);
    }

    function test_rotateDevices_bumpsVersionAndEmits() public {
        address[] memory next = _addrs(devices[0], devices[1], vm.addr(DEVICE_PK_4));
        vm.expectEmit(address(oracle));
        emit IReceiptOracle.DeviceSetChanged(WAREHOUSE, 2, next, 2, FRESHNESS);
        vm.prank(admin);
        oracle.rotateDevices(WAREHOUSE, next, 2, FRESHNESS);
        vm.assertEq(uint256(oracle.warehouse(WAREHOUSE).deviceSetVersion), 2);
        vm.assertTrue(oracle.isDevice(WAREHOUSE, devices[0]));
        vm.assertTrue(oracle.isDevice(WAREHOUSE, vm.addr(DEVICE_PK_4)));
        vm.assertFalse(oracle.isDevice(WAREHOUSE, devices[2]));
    }

    function test_rotateDevices_unknownWarehouse() public {
        bytes32 w = keccak256("WH-NONE");
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.UnknownWarehouse.selector, w));
        vm.prank(admin);
        oracle.rotateDevices(w, devices, 2, FRESHNESS);
    }

    function test_rotateDevices_notAdmin() public {
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.NotAdmin.selector, regulator));
        vm.prank(regulator);
        oracle.rotateDevices(WAREHOUSE, devices, 2, FRESHNESS);
    }

    function test_rotateDevices_invalidSet() public {
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.InvalidDeviceSet.selector, 3, 0, FRESHNESS));
        vm.prank(admin);
        oracle.rotateDevices(WAREHOUSE, devices, 0, FRESHNESS);
    }

    function test_confirmReceipt_staleDeviceSetAfterRotation() public {
        IReceiptOracle.ReceiptAttestation memory a = _fresh(); // signed under version 1
        bytes[] memory sigs = _sign(a, _defaultPks());
        _rotate();
        _expectConfirmRevert(
            a,
            sigs,
            abi.encodeWithSelector(IReceiptOracle.StaleDeviceSet.selector, WAREHOUSE, uint32(1), uint32(2))
        );
    }

    function test_confirmReceipt_rotatedOutDevice() public {
        _rotate();
        IReceiptOracle.ReceiptAttestation memory a = _fresh(); // version 2
        uint256[] memory pks = _sortByAddress(_pks(DEVICE_PK_1, DEVICE_PK_3));
        bytes[] memory sigs = _signDigest(oracle.attestationDigest(a), pks);
        uint256 retiredIndex = pks[0] == DEVICE_PK_3 ? 0 : 1;
        _expectConfirmRevert(
            a, sigs, abi.encodeWithSelector(IReceiptOracle.UnknownDevice.selector, retiredIndex, devices[2])
        );
    }

    function test_confirmReceipt_newDeviceAfterRotation() public {
        _rotate();
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        bytes[] memory sigs = _sign(a, _pks(DEVICE_PK_2, DEVICE_PK_4));
        uint256 rootId = oracle.confirmReceipt(a, sigs);
        vm.assertEq(_value(rootId), AMOUNT);
    }

    // ------------------------------------------------------------------ deactivateWarehouse

    function test_deactivateWarehouse_refusesAttestations() public {
        vm.expectEmit(address(oracle));
        emit IReceiptOracle.WarehouseDeactivated(WAREHOUSE);
        vm.prank(admin);
        oracle.deactivateWarehouse(WAREHOUSE);
        vm.assertFalse(oracle.warehouse(WAREHOUSE).active);
        vm.assertFalse(oracle.isDevice(WAREHOUSE, devices[0]));

        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        bytes[] memory sigs = _sign(a, _defaultPks());
        _expectConfirmRevert(
            a, sigs, abi.encodeWithSelector(IReceiptOracle.UnknownWarehouse.selector, WAREHOUSE)
        );
    }

    function test_deactivateWarehouse_twice() public {
        vm.prank(admin);
        oracle.deactivateWarehouse(WAREHOUSE);
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.UnknownWarehouse.selector, WAREHOUSE));
        vm.prank(admin);
        oracle.deactivateWarehouse(WAREHOUSE);
    }

    /// @dev Current behaviour: a deactivated warehouse can be neither registered again nor rotated
    /// back into use (its version stays, so registration sees it as taken).
    function test_deactivateWarehouse_isPermanent() public {
        vm.prank(admin);
        oracle.deactivateWarehouse(WAREHOUSE);
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.WarehouseAlreadyRegistered.selector, WAREHOUSE));
        vm.prank(admin);
        oracle.registerWarehouse(WAREHOUSE, devices, 2, FRESHNESS);
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.UnknownWarehouse.selector, WAREHOUSE));
        vm.prank(admin);
        oracle.rotateDevices(WAREHOUSE, devices, 2, FRESHNESS);
    }

    function test_deactivateWarehouse_notAdmin() public {
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.NotAdmin.selector, supplierA));
        vm.prank(supplierA);
        oracle.deactivateWarehouse(WAREHOUSE);
    }

    // ------------------------------------------------------------------ confirmReceipt

    function test_attestationDigest_matchesEip712() public view {
        IReceiptOracle.ReceiptAttestation memory a = IReceiptOracle.ReceiptAttestation({
            orderId: 1,
            warehouse: WAREHOUSE,
            goodsHash: GOODS,
            quantity: 100,
            receivedAt: uint64(T0),
            deviceSetVersion: 1,
            nonce: 9
        });
        bytes32 domain = keccak256(
            abi.encode(
                keccak256(
                    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
                ),
                keccak256("certledger ReceiptOracle"),
                keccak256("1"),
                block.chainid,
                address(oracle)
            )
        );
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256(
                    "ReceiptAttestation(uint256 orderId,bytes32 warehouse,bytes32 goodsHash,uint64 quantity,uint64 receivedAt,uint32 deviceSetVersion,uint256 nonce)"
                ),
                a.orderId,
                a.warehouse,
                a.goodsHash,
                a.quantity,
                a.receivedAt,
                a.deviceSetVersion,
                a.nonce
            )
        );
        vm.assertEq(oracle.attestationDigest(a), keccak256(abi.encodePacked("\x19\x01", domain, structHash)));
        vm.assertEq(
            oracle.RECEIPT_ATTESTATION_TYPEHASH(),
            keccak256(
                "ReceiptAttestation(uint256 orderId,bytes32 warehouse,bytes32 goodsHash,uint64 quantity,uint64 receivedAt,uint32 deviceSetVersion,uint256 nonce)"
            )
        );
    }

    function test_confirmReceipt_anyoneMaySubmitAndEmits() public {
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        bytes32 digest = oracle.attestationDigest(a);
        uint256[] memory pks = _sortByAddress(_defaultPks());
        bytes[] memory sigs = _signDigest(digest, pks);
        address[] memory signers = new address[](2);
        signers[0] = vm.addr(pks[0]);
        signers[1] = vm.addr(pks[1]);

        vm.expectEmit(address(oracle));
        emit IReceiptOracle.ReceiptAttested(digest, orderId, WAREHOUSE, QTY, uint64(block.timestamp), signers);
        vm.prank(outsider);
        uint256 rootId = oracle.confirmReceipt(a, sigs);
        vm.assertEq(rootId, 1);
        vm.assertTrue(oracle.attestationUsed(digest));
    }

    function test_confirmReceipt_allThreeDevices() public {
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        bytes[] memory sigs = _sign(a, _pks(DEVICE_PK_3, DEVICE_PK_1, DEVICE_PK_2));
        vm.assertEq(oracle.confirmReceipt(a, sigs), 1);
    }

    function test_confirmReceipt_replay() public {
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        bytes[] memory sigs = _sign(a, _defaultPks());
        oracle.confirmReceipt(a, sigs);
        bytes32 digest = oracle.attestationDigest(a);
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.AttestationAlreadyUsed.selector, digest));
        oracle.confirmReceipt(a, sigs);
    }

    function test_confirmReceipt_secondAttestationForConfirmedOrder() public {
        _confirm(orderId, QTY);
        IReceiptOracle.ReceiptAttestation memory a = _fresh(); // new nonce, new digest
        bytes[] memory sigs = _sign(a, _defaultPks());
        vm.expectRevert(
            abi.encodeWithSelector(
                ICertificateLedger.OrderNotOpen.selector, orderId, ICertificateLedger.OrderStatus.Confirmed
            )
        );
        oracle.confirmReceipt(a, sigs);
        (, uint256 certs,) = ledger.counts();
        vm.assertEq(certs, 1);
    }

    /// @dev Recovers what `sig` says about `digest` the way the oracle does (a stranger, here).
    function _recover(bytes32 digest, bytes memory sig) internal pure returns (address) {
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly {
            r := mload(add(sig, 32))
            s := mload(add(sig, 64))
            v := byte(0, mload(add(sig, 96)))
        }
        return ecrecover(digest, v, r, s);
    }

    function test_confirmReceipt_wrongChainId() public {
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        uint256 realChain = block.chainid;
        vm.chainId(realChain + 1);
        bytes32 otherDigest = oracle.attestationDigest(a);
        vm.chainId(realChain);
        bytes32 digest = oracle.attestationDigest(a);
        vm.assertNotEq(otherDigest, digest);
        bytes[] memory sigs = _signDigest(otherDigest, _defaultPks());
        _expectConfirmRevert(
            a,
            sigs,
            abi.encodeWithSelector(IReceiptOracle.UnknownDevice.selector, 0, _recover(digest, sigs[0]))
        );
    }

    function test_confirmReceipt_otherDeployment() public {
        ReceiptOracle other = new ReceiptOracle();
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        bytes32 otherDigest = other.attestationDigest(a);
        bytes32 digest = oracle.attestationDigest(a);
        bytes[] memory sigs = _signDigest(otherDigest, _defaultPks());
        _expectConfirmRevert(
            a,
            sigs,
            abi.encodeWithSelector(IReceiptOracle.UnknownDevice.selector, 0, _recover(digest, sigs[0]))
        );
    }

    function test_confirmReceipt_stale() public {
        vm.warp(T0 + 2 days);
        uint64 receivedAt = uint64(block.timestamp - FRESHNESS - 1);
        IReceiptOracle.ReceiptAttestation memory a = _attestation(orderId, QTY, receivedAt);
        bytes[] memory sigs = _sign(a, _defaultPks());
        _expectConfirmRevert(
            a, sigs, abi.encodeWithSelector(IReceiptOracle.AttestationStale.selector, receivedAt, FRESHNESS)
        );
    }

    function test_confirmReceipt_exactlyFreshnessOld() public {
        vm.warp(T0 + 2 days);
        IReceiptOracle.ReceiptAttestation memory a =
            _attestation(orderId, QTY, uint64(block.timestamp - FRESHNESS));
        bytes[] memory sigs = _sign(a, _defaultPks());
        vm.assertEq(oracle.confirmReceipt(a, sigs), 1);
    }

    function test_confirmReceipt_fromFuture() public {
        IReceiptOracle.ReceiptAttestation memory a = _attestation(orderId, QTY, uint64(block.timestamp + 1));
        bytes[] memory sigs = _sign(a, _defaultPks());
        _expectConfirmRevert(
            a,
            sigs,
            abi.encodeWithSelector(
                IReceiptOracle.AttestationFromFuture.selector, block.timestamp + 1, block.timestamp
            )
        );
    }

    function test_confirmReceipt_belowThreshold() public {
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        bytes[] memory sigs = new bytes[](1);
        sigs[0] = _sig(DEVICE_PK_1, oracle.attestationDigest(a));
        _expectConfirmRevert(a, sigs, abi.encodeWithSelector(IReceiptOracle.SignatureCount.selector, 1, 2, 3));
    }

    function test_confirmReceipt_noSignatures() public {
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        _expectConfirmRevert(
            a, new bytes[](0), abi.encodeWithSelector(IReceiptOracle.SignatureCount.selector, 0, 2, 3)
        );
    }

    function test_confirmReceipt_moreSignaturesThanDevices() public {
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        bytes[] memory three = _sign(a, _pks(DEVICE_PK_1, DEVICE_PK_2, DEVICE_PK_3));
        bytes[] memory sigs = new bytes[](4);
        for (uint256 i; i < 3; ++i) {
            sigs[i] = three[i];
        }
        sigs[3] = three[2];
        _expectConfirmRevert(a, sigs, abi.encodeWithSelector(IReceiptOracle.SignatureCount.selector, 4, 2, 3));
    }

    function test_confirmReceipt_duplicateSigner() public {
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        bytes memory sig = _sig(DEVICE_PK_1, oracle.attestationDigest(a));
        bytes[] memory sigs = new bytes[](2);
        sigs[0] = sig;
        sigs[1] = sig;
        _expectConfirmRevert(
            a, sigs, abi.encodeWithSelector(IReceiptOracle.SignersNotAscending.selector, 1, devices[0])
        );
    }

    function test_confirmReceipt_unsortedSigners() public {
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        bytes[] memory sorted = _sign(a, _defaultPks());
        bytes[] memory sigs = new bytes[](2);
        sigs[0] = sorted[1];
        sigs[1] = sorted[0];
        address lower = _recover(oracle.attestationDigest(a), sorted[0]);
        _expectConfirmRevert(
            a, sigs, abi.encodeWithSelector(IReceiptOracle.SignersNotAscending.selector, 1, lower)
        );
    }

    function test_confirmReceipt_unknownDevice() public {
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        bytes32 digest = oracle.attestationDigest(a);
        bytes[] memory sigs = new bytes[](2);
        sigs[0] = _sig(STRANGER_PK, digest);
        sigs[1] = _sig(DEVICE_PK_1, digest);
        _expectConfirmRevert(
            a, sigs, abi.encodeWithSelector(IReceiptOracle.UnknownDevice.selector, 0, vm.addr(STRANGER_PK))
        );
    }

    function test_confirmReceipt_deviceOfAnotherWarehouse() public {
        bytes32 w = keccak256("WH-OTHER");
        address[] memory own = new address[](2);
        own[0] = vm.addr(0xE1);
        own[1] = vm.addr(0xE2);
        vm.prank(admin);
        oracle.registerWarehouse(w, own, 1, FRESHNESS);
        // Devices of WAREHOUSE sign an attestation naming another warehouse: not its devices, refused.
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        a.warehouse = w;
        uint256[] memory pks = _sortByAddress(_defaultPks());
        bytes[] memory sigs = _signDigest(oracle.attestationDigest(a), pks);
        _expectConfirmRevert(
            a, sigs, abi.encodeWithSelector(IReceiptOracle.UnknownDevice.selector, 0, vm.addr(pks[0]))
        );
    }

    function _split(bytes memory sig) internal pure returns (bytes32 r, bytes32 s, uint8 v) {
        assembly {
            r := mload(add(sig, 32))
            s := mload(add(sig, 64))
            v := byte(0, mload(add(sig, 96)))
        }
    }

    function test_confirmReceipt_highSMalleated() public {
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        bytes[] memory sigs = _sign(a, _defaultPks());
        (bytes32 r, bytes32 s, uint8 v) = _split(sigs[1]);
        bytes32 highS = bytes32(SECP256K1_N - uint256(s));
        uint8 flippedV = v == 27 ? 28 : 27;
        // The malleated signature is the same signer to plain ecrecover...
        bytes32 digest = oracle.attestationDigest(a);
        vm.assertEq(ecrecover(digest, flippedV, r, highS), ecrecover(digest, v, r, s));
        // ...but the oracle refuses high s.
        sigs[1] = abi.encodePacked(r, highS, flippedV);
        _expectConfirmRevert(a, sigs, abi.encodeWithSelector(IReceiptOracle.InvalidSignature.selector, 1));
    }

    function test_confirmReceipt_vZeroOrOne() public {
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        bytes[] memory sigs = _sign(a, _defaultPks());
        (bytes32 r, bytes32 s, uint8 v) = _split(sigs[0]);
        sigs[0] = abi.encodePacked(r, s, v - 27);
        _expectConfirmRevert(a, sigs, abi.encodeWithSelector(IReceiptOracle.InvalidSignature.selector, 0));
    }

    function test_confirmReceipt_garbageSignatures() public {
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        bytes[] memory good = _sign(a, _defaultPks());
        bytes[4] memory garbage = [
            bytes(hex"deadbeef"), // short
            new bytes(65), // all zero: r = 0, recovers to nothing
            abi.encodePacked(bytes32(uint256(1)), bytes32(type(uint256).max), uint8(27)), // s above n
            abi.encodePacked(good[1], uint8(0)) // 66 bytes
        ];
        for (uint256 i; i < garbage.length; ++i) {
            bytes[] memory sigs = new bytes[](2);
            sigs[0] = good[0];
            sigs[1] = garbage[i];
            _expectConfirmRevert(a, sigs, abi.encodeWithSelector(IReceiptOracle.InvalidSignature.selector, 1));
        }
    }

    function test_confirmReceipt_tamperedAttestation() public {
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        bytes[] memory sigs = _sign(a, _defaultPks());
        a.quantity = QTY + 1; // relayer inflates the count
        bytes32 digest = oracle.attestationDigest(a);
        _expectConfirmRevert(
            a,
            sigs,
            abi.encodeWithSelector(IReceiptOracle.UnknownDevice.selector, 0, _recover(digest, sigs[0]))
        );
    }

    function test_confirmReceipt_receiptMismatchBubblesFromLedger() public {
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        a.goodsHash = bytes32(uint256(1));
        bytes[] memory sigs = _sign(a, _defaultPks());
        _expectConfirmRevert(
            a,
            sigs,
            abi.encodeWithSelector(
                ICertificateLedger.ReceiptDoesNotMatchOrder.selector, orderId, WAREHOUSE, bytes32(uint256(1))
            )
        );
        vm.assertFalse(oracle.attestationUsed(oracle.attestationDigest(a)));
    }

    function test_confirmReceipt_afterDeadline() public {
        vm.warp(DEADLINE + 10);
        IReceiptOracle.ReceiptAttestation memory a = _attestation(orderId, QTY, uint64(DEADLINE + 5));
        bytes[] memory sigs = _sign(a, _defaultPks());
        _expectConfirmRevert(
            a,
            sigs,
            abi.encodeWithSelector(
                ICertificateLedger.ReceiptAfterDeadline.selector, orderId, DEADLINE + 5, DEADLINE
            )
        );
    }

    function test_confirmReceipt_unknownWarehouse() public {
        IReceiptOracle.ReceiptAttestation memory a = _fresh();
        a.warehouse = keccak256("WH-NONE");
        bytes[] memory sigs = _sign(a, _defaultPks());
        _expectConfirmRevert(
            a, sigs, abi.encodeWithSelector(IReceiptOracle.UnknownWarehouse.selector, a.warehouse)
        );
    }
}
