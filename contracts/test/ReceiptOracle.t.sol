// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Base} from "./Base.t.sol";
import {ReceiptOracle} from "../src/ReceiptOracle.sol";
import {CertificateLedger} from "../src/CertificateLedger.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IReceiptOracle, KIND_CARTON_COUNT, KIND_NET_WEIGHT} from "../src/interfaces/IReceiptOracle.sol";
import {ICertificateLedger} from "../src/interfaces/ICertificateLedger.sol";
import {ROLE_ADMIN} from "../src/interfaces/IParticipantRegistry.sol";

contract ReceiptOracleTest is Base {
    uint256 internal constant DEVICE_PK_4 = 0xD4;
    uint8 internal constant KIND_TEMPERATURE = 3;

    uint256 internal orderId;

    function setUp() public override {
        super.setUp();
        orderId = _openOrder();
    }

    function _fresh() internal returns (IReceiptOracle.Observation[] memory, bytes[] memory) {
        return _receipt(orderId, QTY, uint64(block.timestamp));
    }

    function _expectConfirmRevert(IReceiptOracle.Observation[] memory obs, bytes[] memory sigs, bytes memory err)
        internal
    {
        vm.expectRevert(err);
        vm.prank(relayer);
        oracle.confirmReceipt(obs, sigs);
        vm.assertEq(uint256(ledger.order(orderId).status), uint256(ICertificateLedger.OrderStatus.Open));
        for (uint256 i; i < obs.length; ++i) {
            vm.assertFalse(oracle.sequenceUsed(obs[i].device, obs[i].sequence));
        }
    }

    /// @dev Where in the ascending order the key sits among the default pair.
    function _indexOf(IReceiptOracle.Observation[] memory obs, uint256 pk) internal pure returns (uint256) {
        for (uint256 i; i < obs.length; ++i) {
            if (obs[i].device == vm.addr(pk)) return i;
        }
        revert("key not in receipt");
    }

    function _enrol(address a, uint8 ka, address b, uint8 kb, address c, uint8 kc)
        internal
        pure
        returns (IReceiptOracle.DeviceEnrolment[] memory e)
    {
        e = new IReceiptOracle.DeviceEnrolment[](3);
        e[0] = IReceiptOracle.DeviceEnrolment({device: a, kind: ka});
        e[1] = IReceiptOracle.DeviceEnrolment({device: b, kind: kb});
        e[2] = IReceiptOracle.DeviceEnrolment({device: c, kind: kc});
    }

    function _register(bytes32 w, IReceiptOracle.DeviceEnrolment[] memory e, uint8 m) internal {
        vm.prank(admin);
        oracle.registerWarehouse(w, e, m, FRESHNESS, _ranges());
    }

    function _expectRegisterRevert(IReceiptOracle.DeviceEnrolment[] memory e, uint8 m, uint32 fresh, bytes memory err)
        internal
    {
        _expectRegisterRevert(e, m, fresh, _ranges(), err);
    }

    function _expectRegisterRevert(
        IReceiptOracle.DeviceEnrolment[] memory e,
        uint8 m,
        uint32 fresh,
        IReceiptOracle.ReadingRange[] memory ranges,
        bytes memory err
    ) internal {
        vm.expectRevert(err);
        vm.prank(admin);
        oracle.registerWarehouse(keccak256("WH-NEW"), e, m, fresh, ranges);
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
        IReceiptOracle.DeviceEnrolment[] memory e = _defaultEnrolment();
        IReceiptOracle.ReadingRange[] memory r = _ranges();
        vm.expectRevert(_err(IReceiptOracle.LedgerNotBound.selector));
        vm.prank(admin);
        o.registerWarehouse(WAREHOUSE, e, 2, FRESHNESS, r);
    }

    // ------------------------------------------------------------------ registerWarehouse

    function test_registerWarehouse_storesAndEmits() public {
        bytes32 w = keccak256("WH-NEW");
        IReceiptOracle.DeviceEnrolment[] memory e = _defaultEnrolment();
        IReceiptOracle.ReadingRange[] memory r = _ranges();
        uint8[] memory kinds = new uint8[](3);
        kinds[0] = KIND_CARTON_COUNT;
        kinds[1] = KIND_NET_WEIGHT;
        kinds[2] = KIND_CARTON_COUNT;
        vm.expectEmit(address(oracle));
        emit IReceiptOracle.DeviceSetChanged(w, 1, devices, 3, 600);
        uint8[] memory rangeKinds = new uint8[](2);
        uint64[] memory mins = new uint64[](2);
        uint64[] memory maxs = new uint64[](2);
        (rangeKinds[0], mins[0], maxs[0]) = (KIND_CARTON_COUNT, 1, MAX_CARTONS);
        (rangeKinds[1], mins[1], maxs[1]) = (KIND_NET_WEIGHT, 1, MAX_CARTONS * CARTON_GRAMS);
        vm.expectEmit(address(oracle));
        emit IReceiptOracle.ReadingRulesChanged(w, 1, kinds, rangeKinds, mins, maxs);
        vm.prank(admin);
        oracle.registerWarehouse(w, e, 3, 600, r);
        IReceiptOracle.Warehouse memory rec = oracle.warehouse(w);
        vm.assertTrue(rec.active);
        vm.assertEq(uint256(rec.threshold), 3);
        vm.assertEq(uint256(rec.deviceCount), 3);
        vm.assertEq(uint256(rec.deviceSetVersion), 1);
        vm.assertEq(uint256(rec.freshness), 600);
        vm.assertEq(uint256(oracle.requiredKinds(w)), 0x06); // bits 1 (count) and 2 (weight)
        for (uint256 i; i < 3; ++i) {
            vm.assertTrue(oracle.isDevice(w, devices[i]));
            vm.assertEq(uint256(oracle.deviceKind(w, devices[i])), uint256(kinds[i]));
        }
        IReceiptOracle.ReadingRange memory weight = oracle.readingRange(w, KIND_NET_WEIGHT);
        vm.assertEq(uint256(weight.min), 1);
        vm.assertEq(uint256(weight.max), MAX_CARTONS * CARTON_GRAMS);
        vm.assertFalse(oracle.isDevice(w, vm.addr(STRANGER_PK)));
        vm.assertFalse(oracle.isDevice(w, address(0)));
        vm.assertEq(uint256(oracle.deviceKind(w, vm.addr(STRANGER_PK))), 0);
    }

    function test_registerWarehouse_alreadyRegistered() public {
        IReceiptOracle.DeviceEnrolment[] memory e = _defaultEnrolment();
        IReceiptOracle.ReadingRange[] memory r = _ranges();
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.WarehouseAlreadyRegistered.selector, WAREHOUSE));
        vm.prank(admin);
        oracle.registerWarehouse(WAREHOUSE, e, 2, FRESHNESS, r);
    }

    function test_registerWarehouse_notAdmin() public {
        IReceiptOracle.DeviceEnrolment[] memory e = _defaultEnrolment();
        IReceiptOracle.ReadingRange[] memory r = _ranges();
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.NotAdmin.selector, issuer));
        vm.prank(issuer);
        oracle.registerWarehouse(keccak256("WH-NEW"), e, 2, FRESHNESS, r);
    }

    function test_registerWarehouse_suspendedAdmin() public {
        // An admin cannot suspend itself (AdminSelfLockout); a second admin does it.
        address admin2 = makeAddr("admin2");
        vm.prank(admin);
        ledger.registerParticipant(admin2, keccak256("admin2"), ROLE_ADMIN, 0);
        vm.prank(admin2);
        ledger.suspendParticipant(admin);
        _expectRegisterRevert(
            _defaultEnrolment(), 2, FRESHNESS, abi.encodeWithSelector(IReceiptOracle.NotAdmin.selector, admin)
        );
    }

    function test_registerWarehouse_zeroThreshold() public {
        _expectRegisterRevert(
            _defaultEnrolment(),
            0,
            FRESHNESS,
            abi.encodeWithSelector(IReceiptOracle.InvalidDeviceSet.selector, 3, 0, FRESHNESS)
        );
    }

    function test_registerWarehouse_thresholdAboveDevices() public {
        _expectRegisterRevert(
            _defaultEnrolment(),
            4,
            FRESHNESS,
            abi.encodeWithSelector(IReceiptOracle.InvalidDeviceSet.selector, 3, 4, FRESHNESS)
        );
    }

    function test_registerWarehouse_tooManyDevices() public {
        IReceiptOracle.DeviceEnrolment[] memory many = new IReceiptOracle.DeviceEnrolment[](17);
        for (uint256 i; i < 17; ++i) {
            many[i] = IReceiptOracle.DeviceEnrolment({device: vm.addr(1000 + i), kind: i == 0 ? 2 : 1});
        }
        _expectRegisterRevert(
            many, 2, FRESHNESS, abi.encodeWithSelector(IReceiptOracle.InvalidDeviceSet.selector, 17, 2, FRESHNESS)
        );
    }

    function test_registerWarehouse_zeroFreshness() public {
        _expectRegisterRevert(
            _defaultEnrolment(), 2, 0, abi.encodeWithSelector(IReceiptOracle.InvalidDeviceSet.selector, 3, 2, 0)
        );
    }

    function test_registerWarehouse_freshnessAboveMaximum() public {
        uint32 week = oracle.MAX_FRESHNESS();
        vm.assertEq(uint256(week), 7 days);
        _expectRegisterRevert(
            _defaultEnrolment(),
            2,
            week + 1,
            _ranges(),
            abi.encodeWithSelector(IReceiptOracle.InvalidDeviceSet.selector, 3, 2, week + 1)
        );
        vm.prank(admin);
        oracle.registerWarehouse(keccak256("WH-WEEK"), _defaultEnrolment(), 2, week, _ranges());
    }

    function test_registerWarehouse_duplicateDevice() public {
        _expectRegisterRevert(
            _enrol(devices[0], 1, devices[1], 2, devices[0], 1),
            2,
            FRESHNESS,
            abi.encodeWithSelector(IReceiptOracle.InvalidDevice.selector, devices[0])
        );
    }

    function test_registerWarehouse_zeroDevice() public {
        _expectRegisterRevert(
            _enrol(devices[0], 1, address(0), 2, devices[2], 1),
            2,
            FRESHNESS,
            abi.encodeWithSelector(IReceiptOracle.InvalidDevice.selector, address(0))
        );
    }

    function test_registerWarehouse_deviceKindWithoutRange() public {
        _expectRegisterRevert(
            _enrol(devices[0], 1, devices[1], 2, devices[2], KIND_TEMPERATURE),
            2,
            FRESHNESS,
            abi.encodeWithSelector(IReceiptOracle.InvalidDeviceKind.selector, devices[2], KIND_TEMPERATURE)
        );
    }

    function test_registerWarehouse_deviceKindZero() public {
        _expectRegisterRevert(
            _enrol(devices[0], 1, devices[1], 2, devices[2], 0),
            2,
            FRESHNESS,
            abi.encodeWithSelector(IReceiptOracle.InvalidDeviceKind.selector, devices[2], 0)
        );
    }

    function test_registerWarehouse_rangedKindWithoutDevice() public {
        _expectRegisterRevert(
            _enrol(devices[0], 1, devices[1], 1, devices[2], 1),
            2,
            FRESHNESS,
            abi.encodeWithSelector(IReceiptOracle.MissingReadingKind.selector, KIND_NET_WEIGHT)
        );
    }

    function test_registerWarehouse_noCartonCountRange() public {
        IReceiptOracle.ReadingRange[] memory r = new IReceiptOracle.ReadingRange[](1);
        r[0] = IReceiptOracle.ReadingRange({kind: KIND_NET_WEIGHT, min: 1, max: 10});
        _expectRegisterRevert(
            _enrol(devices[0], 2, devices[1], 2, devices[2], 2),
            2,
            FRESHNESS,
            r,
            abi.encodeWithSelector(IReceiptOracle.MissingReadingKind.selector, KIND_CARTON_COUNT)
        );
    }

    function test_registerWarehouse_invalidRanges() public {
        IReceiptOracle.ReadingRange[4] memory bad = [
            IReceiptOracle.ReadingRange({kind: 0, min: 1, max: 10}),
            IReceiptOracle.ReadingRange({kind: 8, min: 1, max: 10}),
            IReceiptOracle.ReadingRange({kind: KIND_NET_WEIGHT, min: 11, max: 10}),
            IReceiptOracle.ReadingRange({kind: KIND_NET_WEIGHT, min: 0, max: 0})
        ];
        for (uint256 i; i < bad.length; ++i) {
            IReceiptOracle.ReadingRange[] memory r = _ranges();
            r[1] = bad[i];
            _expectRegisterRevert(
                _defaultEnrolment(),
                2,
                FRESHNESS,
                r,
                abi.encodeWithSelector(IReceiptOracle.InvalidReadingRange.selector, bad[i].kind, bad[i].min, bad[i].max)
            );
        }
    }

    function test_registerWarehouse_duplicateRangeKind() public {
        IReceiptOracle.ReadingRange[] memory r = new IReceiptOracle.ReadingRange[](3);
        r[0] = _ranges()[0];
        r[1] = _ranges()[1];
        r[2] = IReceiptOracle.ReadingRange({kind: KIND_CARTON_COUNT, min: 5, max: 6});
        _expectRegisterRevert(
            _defaultEnrolment(),
            2,
            FRESHNESS,
            r,
            abi.encodeWithSelector(IReceiptOracle.InvalidReadingRange.selector, KIND_CARTON_COUNT, 5, 6)
        );
    }

    // ------------------------------------------------------------------ relayers

    function test_setRelayer_allowsAndRevokes() public {
        vm.expectEmit(address(oracle));
        emit IReceiptOracle.RelayerChanged(outsider, true);
        vm.prank(admin);
        oracle.setRelayer(outsider, true);
        vm.assertTrue(oracle.isRelayer(outsider));
        vm.prank(admin);
        oracle.setRelayer(outsider, false);
        vm.assertFalse(oracle.isRelayer(outsider));
    }

    function test_setRelayer_notAdmin() public {
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.NotAdmin.selector, relayer));
        vm.prank(relayer);
        oracle.setRelayer(relayer, true);
    }

    function test_confirmReceipt_notAllowListedRelayer() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _fresh();
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.RelayerNotAllowed.selector, outsider));
        vm.prank(outsider);
        oracle.confirmReceipt(obs, sigs);
    }

    function test_confirmReceipt_revokedRelayer() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _fresh();
        vm.prank(admin);
        oracle.setRelayer(relayer, false);
        _expectConfirmRevert(obs, sigs, abi.encodeWithSelector(IReceiptOracle.RelayerNotAllowed.selector, relayer));
    }

    // ------------------------------------------------------------------ rotateDevices

    /// @dev Device 3 (a portal) retired, device 4 enrolled as a portal.
    function _rotate() internal {
        vm.prank(admin);
        oracle.rotateDevices(
            WAREHOUSE, _enrol(devices[0], 1, devices[1], 2, vm.addr(DEVICE_PK_4), 1), 2, FRESHNESS, _ranges()
        );
    }

    function test_rotateDevices_bumpsVersionAndEmits() public {
        address[] memory next = new address[](3);
        next[0] = devices[0];
        next[1] = devices[1];
        next[2] = vm.addr(DEVICE_PK_4);
        vm.expectEmit(address(oracle));
        emit IReceiptOracle.DeviceSetChanged(WAREHOUSE, 2, next, 2, FRESHNESS);
        _rotate();
        vm.assertEq(uint256(oracle.warehouse(WAREHOUSE).deviceSetVersion), 2);
        vm.assertTrue(oracle.isDevice(WAREHOUSE, devices[0]));
        vm.assertTrue(oracle.isDevice(WAREHOUSE, vm.addr(DEVICE_PK_4)));
        vm.assertFalse(oracle.isDevice(WAREHOUSE, devices[2]));
    }

    function test_rotateDevices_changesKindsAndRanges() public {
        IReceiptOracle.ReadingRange[] memory r = new IReceiptOracle.ReadingRange[](1);
        r[0] = IReceiptOracle.ReadingRange({kind: KIND_CARTON_COUNT, min: 10, max: 500});
        vm.prank(admin);
        oracle.rotateDevices(WAREHOUSE, _enrol(devices[0], 1, devices[1], 1, devices[2], 1), 2, FRESHNESS, r);
        vm.assertEq(uint256(oracle.requiredKinds(WAREHOUSE)), 0x02); // bit 1: count only
        vm.assertEq(uint256(oracle.deviceKind(WAREHOUSE, devices[1])), KIND_CARTON_COUNT);
        vm.assertEq(uint256(oracle.readingRange(WAREHOUSE, KIND_NET_WEIGHT).max), 0);
        vm.assertEq(uint256(oracle.readingRange(WAREHOUSE, KIND_CARTON_COUNT).min), 10);
    }

    function test_rotateDevices_unknownWarehouse() public {
        bytes32 w = keccak256("WH-NONE");
        IReceiptOracle.DeviceEnrolment[] memory e = _defaultEnrolment();
        IReceiptOracle.ReadingRange[] memory r = _ranges();
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.UnknownWarehouse.selector, w));
        vm.prank(admin);
        oracle.rotateDevices(w, e, 2, FRESHNESS, r);
    }

    function test_rotateDevices_notAdmin() public {
        IReceiptOracle.DeviceEnrolment[] memory e = _defaultEnrolment();
        IReceiptOracle.ReadingRange[] memory r = _ranges();
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.NotAdmin.selector, regulator));
        vm.prank(regulator);
        oracle.rotateDevices(WAREHOUSE, e, 2, FRESHNESS, r);
    }

    function test_rotateDevices_invalidSet() public {
        IReceiptOracle.DeviceEnrolment[] memory e = _defaultEnrolment();
        IReceiptOracle.ReadingRange[] memory r = _ranges();
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.InvalidDeviceSet.selector, 3, 0, FRESHNESS));
        vm.prank(admin);
        oracle.rotateDevices(WAREHOUSE, e, 0, FRESHNESS, r);
    }

    function test_confirmReceipt_staleDeviceSetAfterRotation() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _fresh(); // signed under version 1
        _rotate();
        _expectConfirmRevert(
            obs, sigs, abi.encodeWithSelector(IReceiptOracle.StaleDeviceSet.selector, WAREHOUSE, uint32(1), uint32(2))
        );
    }

    function test_confirmReceipt_rotatedOutDevice() public {
        _rotate();
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) =
            _receipt(orderId, QTY, uint64(block.timestamp), _pks(DEVICE_PK_2, DEVICE_PK_3));
        _expectConfirmRevert(
            obs,
            sigs,
            abi.encodeWithSelector(IReceiptOracle.UnknownDevice.selector, _indexOf(obs, DEVICE_PK_3), devices[2])
        );
    }

    function test_confirmReceipt_newDeviceAfterRotation() public {
        _rotate();
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) =
            _receipt(orderId, QTY, uint64(block.timestamp), _pks(DEVICE_PK_2, DEVICE_PK_4));
        vm.assertEq(_value(_submit(obs, sigs)), AMOUNT);
    }

    // ------------------------------------------------------------------ deactivateWarehouse

    function test_deactivateWarehouse_refusesObservations() public {
        vm.expectEmit(address(oracle));
        emit IReceiptOracle.WarehouseDeactivated(WAREHOUSE);
        vm.prank(admin);
        oracle.deactivateWarehouse(WAREHOUSE);
        vm.assertFalse(oracle.warehouse(WAREHOUSE).active);
        vm.assertFalse(oracle.isDevice(WAREHOUSE, devices[0]));

        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _fresh();
        _expectConfirmRevert(obs, sigs, abi.encodeWithSelector(IReceiptOracle.UnknownWarehouse.selector, WAREHOUSE));
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
        IReceiptOracle.DeviceEnrolment[] memory e = _defaultEnrolment();
        IReceiptOracle.ReadingRange[] memory r = _ranges();
        vm.prank(admin);
        oracle.deactivateWarehouse(WAREHOUSE);
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.WarehouseAlreadyRegistered.selector, WAREHOUSE));
        vm.prank(admin);
        oracle.registerWarehouse(WAREHOUSE, e, 2, FRESHNESS, r);
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.UnknownWarehouse.selector, WAREHOUSE));
        vm.prank(admin);
        oracle.rotateDevices(WAREHOUSE, e, 2, FRESHNESS, r);
    }

    function test_deactivateWarehouse_notAdmin() public {
        vm.expectRevert(abi.encodeWithSelector(IReceiptOracle.NotAdmin.selector, supplierA));
        vm.prank(supplierA);
        oracle.deactivateWarehouse(WAREHOUSE);
    }

    // ------------------------------------------------------------------ digest

    function test_observationDigest_matchesEip712() public view {
        string memory typeString =
            "Observation(uint256 orderId,bytes32 warehouse,bytes32 goodsHash,address device,uint8 kind,uint64 value,uint64 observedAt,uint64 sequence,uint32 deviceSetVersion,uint64 deadline)";
        IReceiptOracle.Observation memory o = IReceiptOracle.Observation({
            orderId: 1,
            warehouse: WAREHOUSE,
            goodsHash: GOODS,
            device: devices[1],
            kind: KIND_NET_WEIGHT,
            value: 2_500_000,
            observedAt: uint64(T0),
            sequence: 9,
            deviceSetVersion: 1,
            deadline: uint64(T0 + 1 hours)
        });
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("certledger ReceiptOracle"),
                keccak256("1"),
                block.chainid,
                address(oracle)
            )
        );
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256(bytes(typeString)),
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
        );
        vm.assertEq(oracle.observationDigest(o), keccak256(abi.encodePacked("\x19\x01", domain, structHash)));
        vm.assertEq(oracle.OBSERVATION_TYPEHASH(), keccak256(bytes(typeString)));
    }

    // ------------------------------------------------------------------ confirmReceipt: success

    function test_confirmReceipt_emitsAndUsesSequences() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _fresh();
        bytes32 digest =
            keccak256(abi.encodePacked(oracle.observationDigest(obs[0]), oracle.observationDigest(obs[1])));
        address[] memory signers = new address[](2);
        signers[0] = obs[0].device;
        signers[1] = obs[1].device;

        vm.expectEmit(address(oracle));
        emit IReceiptOracle.ObservationAccepted(
            obs[0].device, obs[0].sequence, orderId, obs[0].kind, obs[0].value, obs[0].observedAt
        );
        vm.expectEmit(address(oracle));
        emit IReceiptOracle.ObservationAccepted(
            obs[1].device, obs[1].sequence, orderId, obs[1].kind, obs[1].value, obs[1].observedAt
        );
        vm.expectEmit(address(oracle));
        emit IReceiptOracle.ReceiptAttested(digest, orderId, WAREHOUSE, QTY, uint64(block.timestamp), signers);
        vm.assertEq(_submit(obs, sigs), 1);
        vm.assertTrue(oracle.sequenceUsed(obs[0].device, obs[0].sequence));
        vm.assertTrue(oracle.sequenceUsed(obs[1].device, obs[1].sequence));
    }

    function test_confirmReceipt_allThreeDevices() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) =
            _receipt(orderId, QTY, uint64(block.timestamp), _pks(DEVICE_PK_3, DEVICE_PK_1, DEVICE_PK_2));
        vm.assertEq(_submit(obs, sigs), 1);
    }

    /// Two portals disagree: the lower count is what both saw, and is what the supplier is paid for.
    function test_confirmReceipt_lowestCountIsDelivered() public {
        (IReceiptOracle.Observation[] memory obs,) =
            _receipt(orderId, QTY, uint64(block.timestamp), _pks(DEVICE_PK_3, DEVICE_PK_1, DEVICE_PK_2));
        obs[_indexOf(obs, DEVICE_PK_3)].value = 80;
        uint256 root = _submit(obs, _resign(obs));
        vm.assertEq(uint256(ledger.order(orderId).deliveredQuantity), 80);
        vm.assertEq(_value(root), AMOUNT * 80 / 100);
    }

    /// The received time is the latest reading's.
    function test_confirmReceipt_latestReadingIsReceivedAt() public {
        vm.warp(T0 + 1 hours);
        (IReceiptOracle.Observation[] memory obs,) = _fresh();
        obs[0].observedAt = uint64(T0 + 10 minutes);
        obs[1].observedAt = uint64(T0 + 50 minutes);
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.OrderConfirmed(orderId, 1, QTY, uint64(T0 + 50 minutes), uint128(AMOUNT), 0);
        _submit(obs, _resign(obs));
    }

    /// Sequences are unordered: a device's later reading may confirm before its earlier one.
    function test_confirmReceipt_sequencesInAnyOrder() public {
        uint256 second = _openOrder();
        (IReceiptOracle.Observation[] memory early, bytes[] memory earlySigs) = _fresh();
        (IReceiptOracle.Observation[] memory late, bytes[] memory lateSigs) =
            _receipt(second, QTY, uint64(block.timestamp));
        vm.assertGt(late[0].sequence, early[0].sequence);
        _submit(late, lateSigs);
        _submit(early, earlySigs);
        vm.assertEq(uint256(ledger.order(orderId).status), uint256(ICertificateLedger.OrderStatus.Confirmed));
    }

    /// @dev Old readings whose submission deadline the device set later than usual.
    function _oldReceipt(uint64 at) internal returns (IReceiptOracle.Observation[] memory obs, bytes[] memory) {
        (obs,) = _receipt(orderId, QTY, at);
        for (uint256 i; i < obs.length; ++i) {
            obs[i].deadline = uint64(block.timestamp + 1 hours);
        }
        return (obs, _resign(obs));
    }

    function test_confirmReceipt_exactlyFreshnessOld() public {
        vm.warp(T0 + 2 days);
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) =
            _oldReceipt(uint64(block.timestamp - FRESHNESS));
        vm.assertEq(_submit(obs, sigs), 1);
    }

    function test_confirmReceipt_atDeadline() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _fresh();
        vm.warp(obs[0].deadline);
        vm.assertEq(_submit(obs, sigs), 1);
    }

    function test_confirmReceipt_boundaryValuesInRange() public {
        (IReceiptOracle.Observation[] memory obs,) = _fresh();
        uint256 count = _indexOf(obs, DEVICE_PK_1);
        obs[count].value = MAX_CARTONS;
        obs[1 - count].value = 1;
        _submit(obs, _resign(obs));
        vm.assertEq(uint256(ledger.order(orderId).deliveredQuantity), MAX_CARTONS);
    }

    // ------------------------------------------------------------------ confirmReceipt: replay

    function test_confirmReceipt_replay() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _fresh();
        _submit(obs, sigs);
        vm.expectRevert(
            abi.encodeWithSelector(IReceiptOracle.SequenceAlreadyUsed.selector, obs[0].device, obs[0].sequence)
        );
        _submit(obs, sigs);
    }

    /// A used observation cannot be recycled into another order's receipt, even re-signed for it:
    /// the (device, sequence) pair is spent.
    function test_confirmReceipt_sequenceReusedForAnotherOrder() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _fresh();
        _submit(obs, sigs);
        uint256 second = _openOrder();
        for (uint256 i; i < obs.length; ++i) {
            obs[i].orderId = second;
        }
        bytes[] memory resigned = _resign(obs);
        vm.expectRevert(
            abi.encodeWithSelector(IReceiptOracle.SequenceAlreadyUsed.selector, obs[0].device, obs[0].sequence)
        );
        _submit(obs, resigned);
    }

    function test_confirmReceipt_secondReceiptForConfirmedOrder() public {
        _confirm(orderId, QTY);
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _fresh(); // new sequences
        _expectLedgerRefusal(obs, sigs);
        (, uint256 certs,) = ledger.counts();
        vm.assertEq(certs, 1);
    }

    function _expectLedgerRefusal(IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) internal {
        vm.expectRevert(
            abi.encodeWithSelector(
                ICertificateLedger.OrderNotOpen.selector, orderId, ICertificateLedger.OrderStatus.Confirmed
            )
        );
        _submit(obs, sigs);
        vm.assertFalse(oracle.sequenceUsed(obs[0].device, obs[0].sequence));
    }

    // ------------------------------------------------------------------ confirmReceipt: domain

    function test_confirmReceipt_wrongChainId() public {
        (IReceiptOracle.Observation[] memory obs,) = _fresh();
        uint256 realChain = block.chainid;
        vm.chainId(realChain + 1);
        bytes[] memory sigs = _resign(obs);
        vm.chainId(realChain);
        address stranger = ecrecover(oracle.observationDigest(obs[0]), _v(sigs[0]), _r(sigs[0]), _s(sigs[0]));
        vm.assertNotEq(stranger, obs[0].device);
        _expectConfirmRevert(
            obs, sigs, abi.encodeWithSelector(IReceiptOracle.SignerMismatch.selector, 0, stranger, obs[0].device)
        );
    }

    function test_confirmReceipt_otherDeployment() public {
        ReceiptOracle other = new ReceiptOracle();
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _fresh();
        sigs[0] = _sig(_pkOf(obs[0].device), other.observationDigest(obs[0]));
        address stranger = ecrecover(oracle.observationDigest(obs[0]), _v(sigs[0]), _r(sigs[0]), _s(sigs[0]));
        _expectConfirmRevert(
            obs, sigs, abi.encodeWithSelector(IReceiptOracle.SignerMismatch.selector, 0, stranger, obs[0].device)
        );
    }

    // ------------------------------------------------------------------ confirmReceipt: time

    function test_confirmReceipt_expiredDeadline() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _fresh();
        uint256 deadline = obs[0].deadline;
        vm.warp(deadline + 1);
        _expectConfirmRevert(
            obs,
            sigs,
            abi.encodeWithSelector(IReceiptOracle.ObservationExpired.selector, 0, deadline, deadline + 1)
        );
    }

    function test_confirmReceipt_stale() public {
        vm.warp(T0 + 2 days);
        uint64 at = uint64(block.timestamp - FRESHNESS - 1);
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _oldReceipt(at);
        _expectConfirmRevert(
            obs, sigs, abi.encodeWithSelector(IReceiptOracle.ObservationStale.selector, 0, at, FRESHNESS)
        );
    }

    function test_confirmReceipt_fromFuture() public {
        (IReceiptOracle.Observation[] memory obs,) = _fresh();
        obs[1].observedAt = uint64(block.timestamp + 1);
        _expectConfirmRevert(
            obs,
            _resign(obs),
            abi.encodeWithSelector(
                IReceiptOracle.ObservationFromFuture.selector, 1, block.timestamp + 1, block.timestamp
            )
        );
    }

    // ------------------------------------------------------------------ confirmReceipt: quorum

    function _single(IReceiptOracle.Observation memory o, bytes memory sig)
        internal
        pure
        returns (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs)
    {
        obs = new IReceiptOracle.Observation[](1);
        obs[0] = o;
        sigs = new bytes[](1);
        sigs[0] = sig;
    }

    function test_confirmReceipt_belowThreshold() public {
        (IReceiptOracle.Observation[] memory two, bytes[] memory twoSigs) = _fresh();
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _single(two[0], twoSigs[0]);
        _expectConfirmRevert(obs, sigs, abi.encodeWithSelector(IReceiptOracle.SignatureCount.selector, 1, 2, 3));
    }

    function test_confirmReceipt_noObservations() public {
        _expectConfirmRevert(
            new IReceiptOracle.Observation[](0),
            new bytes[](0),
            abi.encodeWithSelector(IReceiptOracle.SignatureCount.selector, 0, 0, 0)
        );
    }

    function test_confirmReceipt_lengthMismatch() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory two) = _fresh();
        bytes[] memory sigs = new bytes[](1);
        sigs[0] = two[0];
        _expectConfirmRevert(obs, sigs, abi.encodeWithSelector(IReceiptOracle.LengthMismatch.selector, 2, 1));
    }

    function test_confirmReceipt_moreObservationsThanDevices() public {
        (IReceiptOracle.Observation[] memory three,) =
            _receipt(orderId, QTY, uint64(block.timestamp), _pks(DEVICE_PK_1, DEVICE_PK_2, DEVICE_PK_3));
        IReceiptOracle.Observation[] memory obs = new IReceiptOracle.Observation[](4);
        for (uint256 i; i < 3; ++i) {
            obs[i] = three[i];
        }
        obs[3] = three[2];
        _expectConfirmRevert(obs, _resign(obs), abi.encodeWithSelector(IReceiptOracle.SignatureCount.selector, 4, 2, 3));
    }

    /// One portal's reading twice (even under two sequence numbers) does not make a quorum.
    function test_confirmReceipt_duplicateDevicePadsQuorum() public {
        (IReceiptOracle.Observation[] memory obs,) =
            _receipt(orderId, QTY, uint64(block.timestamp), _pks(DEVICE_PK_1, DEVICE_PK_1));
        _expectConfirmRevert(
            obs, _resign(obs), abi.encodeWithSelector(IReceiptOracle.DevicesNotAscending.selector, 1, devices[0])
        );
    }

    function test_confirmReceipt_unsortedDevices() public {
        (IReceiptOracle.Observation[] memory sorted, bytes[] memory sortedSigs) = _fresh();
        IReceiptOracle.Observation[] memory obs = new IReceiptOracle.Observation[](2);
        bytes[] memory sigs = new bytes[](2);
        (obs[0], obs[1]) = (sorted[1], sorted[0]);
        (sigs[0], sigs[1]) = (sortedSigs[1], sortedSigs[0]);
        _expectConfirmRevert(
            obs, sigs, abi.encodeWithSelector(IReceiptOracle.DevicesNotAscending.selector, 1, sorted[0].device)
        );
    }

    /// Two portals agree but nobody weighed the goods: a required kind is missing.
    function test_confirmReceipt_oneSensorKindOnly() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) =
            _receipt(orderId, QTY, uint64(block.timestamp), _pks(DEVICE_PK_1, DEVICE_PK_3));
        _expectConfirmRevert(
            obs, sigs, abi.encodeWithSelector(IReceiptOracle.MissingReadingKind.selector, KIND_NET_WEIGHT)
        );
    }

    // ------------------------------------------------------------------ confirmReceipt: devices

    function test_confirmReceipt_unknownDevice() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) =
            _receipt(orderId, QTY, uint64(block.timestamp), _pks(STRANGER_PK, DEVICE_PK_2));
        uint256 i = _indexOf(obs, STRANGER_PK);
        _expectConfirmRevert(
            obs, sigs, abi.encodeWithSelector(IReceiptOracle.UnknownDevice.selector, i, vm.addr(STRANGER_PK))
        );
    }

    function test_confirmReceipt_deviceClaimsAnotherKind() public {
        (IReceiptOracle.Observation[] memory obs,) = _fresh();
        uint256 i = _indexOf(obs, DEVICE_PK_1); // a portal posing as the weighbridge
        obs[i].kind = KIND_NET_WEIGHT;
        _expectConfirmRevert(
            obs,
            _resign(obs),
            abi.encodeWithSelector(IReceiptOracle.DeviceKindMismatch.selector, i, devices[0], KIND_NET_WEIGHT)
        );
    }

    function test_confirmReceipt_deviceOfAnotherWarehouse() public {
        bytes32 w = keccak256("WH-OTHER");
        _register(w, _enrol(vm.addr(0xE1), 1, vm.addr(0xE2), 2, vm.addr(0xE3), 1), 1);
        // Devices of WAREHOUSE sign observations naming another warehouse: not its devices, refused.
        (IReceiptOracle.Observation[] memory obs,) = _fresh();
        for (uint256 i; i < obs.length; ++i) {
            obs[i].warehouse = w;
        }
        _expectConfirmRevert(
            obs, _resign(obs), abi.encodeWithSelector(IReceiptOracle.UnknownDevice.selector, 0, obs[0].device)
        );
    }

    function test_confirmReceipt_mixedOrders() public {
        uint256 second = _openOrder();
        (IReceiptOracle.Observation[] memory obs,) = _fresh();
        obs[1].orderId = second;
        _expectConfirmRevert(obs, _resign(obs), abi.encodeWithSelector(IReceiptOracle.ObservationMismatch.selector, 1));
    }

    function test_confirmReceipt_mixedGoods() public {
        (IReceiptOracle.Observation[] memory obs,) = _fresh();
        obs[1].goodsHash = keccak256("other goods");
        _expectConfirmRevert(obs, _resign(obs), abi.encodeWithSelector(IReceiptOracle.ObservationMismatch.selector, 1));
    }

    function test_confirmReceipt_unknownWarehouse() public {
        (IReceiptOracle.Observation[] memory obs,) = _fresh();
        bytes32 w = keccak256("WH-NONE");
        for (uint256 i; i < obs.length; ++i) {
            obs[i].warehouse = w;
        }
        _expectConfirmRevert(obs, _resign(obs), abi.encodeWithSelector(IReceiptOracle.UnknownWarehouse.selector, w));
    }

    // ------------------------------------------------------------------ confirmReceipt: values

    function test_confirmReceipt_countOutOfRange() public {
        (IReceiptOracle.Observation[] memory obs,) = _fresh();
        uint256 i = _indexOf(obs, DEVICE_PK_1);
        obs[i].value = MAX_CARTONS + 1;
        _expectConfirmRevert(
            obs,
            _resign(obs),
            abi.encodeWithSelector(
                IReceiptOracle.ReadingOutOfRange.selector, i, KIND_CARTON_COUNT, MAX_CARTONS + 1, 1, MAX_CARTONS
            )
        );
    }

    function test_confirmReceipt_zeroWeight() public {
        (IReceiptOracle.Observation[] memory obs,) = _fresh();
        uint256 i = _indexOf(obs, DEVICE_PK_2);
        obs[i].value = 0;
        _expectConfirmRevert(
            obs,
            _resign(obs),
            abi.encodeWithSelector(
                IReceiptOracle.ReadingOutOfRange.selector, i, KIND_NET_WEIGHT, 0, 1, MAX_CARTONS * CARTON_GRAMS
            )
        );
    }

    // ------------------------------------------------------------------ confirmReceipt: signatures

    function _r(bytes memory sig) internal pure returns (bytes32 r) {
        assembly {
            r := mload(add(sig, 32))
        }
    }

    function _s(bytes memory sig) internal pure returns (bytes32 s) {
        assembly {
            s := mload(add(sig, 64))
        }
    }

    function _v(bytes memory sig) internal pure returns (uint8 v) {
        assembly {
            v := byte(0, mload(add(sig, 96)))
        }
    }

    function test_confirmReceipt_highSMalleated() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _fresh();
        (bytes32 r, bytes32 s, uint8 v) = (_r(sigs[1]), _s(sigs[1]), _v(sigs[1]));
        bytes32 highS = bytes32(SECP256K1_N - uint256(s));
        uint8 flippedV = v == 27 ? 28 : 27;
        // The malleated signature is the same signer to plain ecrecover...
        bytes32 digest = oracle.observationDigest(obs[1]);
        vm.assertEq(ecrecover(digest, flippedV, r, highS), ecrecover(digest, v, r, s));
        // ...but the oracle refuses high s.
        sigs[1] = abi.encodePacked(r, highS, flippedV);
        _expectConfirmRevert(obs, sigs, abi.encodeWithSelector(IReceiptOracle.InvalidSignature.selector, 1));
    }

    function test_confirmReceipt_vZeroOrOne() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _fresh();
        sigs[0] = abi.encodePacked(_r(sigs[0]), _s(sigs[0]), _v(sigs[0]) - 27);
        _expectConfirmRevert(obs, sigs, abi.encodeWithSelector(IReceiptOracle.InvalidSignature.selector, 0));
    }

    function test_confirmReceipt_garbageSignatures() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory good) = _fresh();
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
            _expectConfirmRevert(obs, sigs, abi.encodeWithSelector(IReceiptOracle.InvalidSignature.selector, 1));
        }
    }

    /// A relayer that inflates a count breaks the device's signature.
    function test_confirmReceipt_tamperedReading() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _fresh();
        obs[0].value += 1;
        address stranger = ecrecover(oracle.observationDigest(obs[0]), _v(sigs[0]), _r(sigs[0]), _s(sigs[0]));
        _expectConfirmRevert(
            obs, sigs, abi.encodeWithSelector(IReceiptOracle.SignerMismatch.selector, 0, stranger, obs[0].device)
        );
    }

    /// One device's valid signature on another device's observation.
    function test_confirmReceipt_signatureOfAnotherDevice() public {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _fresh();
        sigs[0] = _sig(DEVICE_PK_3, oracle.observationDigest(obs[0]));
        _expectConfirmRevert(
            obs, sigs, abi.encodeWithSelector(IReceiptOracle.SignerMismatch.selector, 0, devices[2], obs[0].device)
        );
    }

    // ------------------------------------------------------------------ confirmReceipt: ledger

    function test_confirmReceipt_receiptMismatchBubblesFromLedger() public {
        (IReceiptOracle.Observation[] memory obs,) = _fresh();
        for (uint256 i; i < obs.length; ++i) {
            obs[i].goodsHash = bytes32(uint256(1));
        }
        _expectConfirmRevert(
            obs,
            _resign(obs),
            abi.encodeWithSelector(
                ICertificateLedger.ReceiptDoesNotMatchOrder.selector, orderId, WAREHOUSE, bytes32(uint256(1))
            )
        );
    }

    function test_confirmReceipt_afterOrderDeadline() public {
        vm.warp(DEADLINE + 10);
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _receipt(orderId, QTY, uint64(DEADLINE + 5));
        _expectConfirmRevert(
            obs,
            sigs,
            abi.encodeWithSelector(ICertificateLedger.ReceiptAfterDeadline.selector, orderId, DEADLINE + 5, DEADLINE)
        );
    }
}
