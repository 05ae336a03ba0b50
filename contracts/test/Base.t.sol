// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {Test} from "./utils/Test.sol";
import {CertificateLedger} from "../src/CertificateLedger.sol";
import {ReceiptOracle} from "../src/ReceiptOracle.sol";
import {SettlementToken} from "../src/SettlementToken.sol";
import {ICertificateLedger} from "../src/interfaces/ICertificateLedger.sol";
import {IReceiptOracle, KIND_CARTON_COUNT, KIND_NET_WEIGHT} from "../src/interfaces/IReceiptOracle.sol";
import {
    ROLE_ADMIN,
    ROLE_ISSUER,
    ROLE_SUPPLIER,
    ROLE_FACTOR,
    ROLE_REGULATOR,
    ROLE_AUDITOR
} from "../src/interfaces/IParticipantRegistry.sol";

/// @title Base
/// @notice One deployment shared by every test (in the manner of Uniswap v4's Deployers): token,
/// oracle, ledger bound together; an issuer with a limit, two suppliers, two factors, a regulator and
/// an auditor registered; two warehouses each with two RFID portals and a weighbridge, threshold 2,
/// and an allow-listed relayer. Helpers open orders, sign observations (sorted by device) and
/// confirm them through the oracle with real signatures.
abstract contract Base is Test {
    // ------------------------------------------------------------------ parameters
    uint256 internal constant T0 = 1_700_000_000;
    uint96 internal constant MIN_UNIT = 100; // 1.00 in a 2-decimal token
    uint8 internal constant MAX_DEPTH = 3;
    uint128 internal constant ISSUER_LIMIT = 100_000_000_00; // 100 million
    uint32 internal constant FRESHNESS = 1 days;
    uint8 internal constant THRESHOLD = 2;
    uint256 internal constant AMOUNT = 10_000_00; // 10,000.00
    uint64 internal constant QTY = 100;
    uint40 internal constant MATURITY = uint40(T0 + 90 days);
    uint40 internal constant DEADLINE = uint40(T0 + 7 days);
    uint256 internal constant FUNDS = 1_000_000_000_00;

    bytes32 internal constant ADMIN_ENTITY = keccak256("91310000MA1FL0001X");
    bytes32 internal constant WAREHOUSE = keccak256("WH-SH-PUDONG-01");
    bytes32 internal constant WAREHOUSE_2 = keccak256("WH-SZ-NANSHAN-02");
    bytes32 internal constant GOODS = keccak256("steel coil Q235B x100");

    uint64 internal constant CARTON_GRAMS = 25_000; // 25 kg a carton
    uint64 internal constant MAX_CARTONS = 1_000_000;

    uint256 internal constant DEVICE_PK_1 = 0xD1;
    uint256 internal constant DEVICE_PK_2 = 0xD2;
    uint256 internal constant DEVICE_PK_3 = 0xD3;
    uint256 internal constant STRANGER_PK = 0xBAD;
    uint256 internal constant SECP256K1_N =
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    // ------------------------------------------------------------------ system
    SettlementToken internal token;
    ReceiptOracle internal oracle;
    CertificateLedger internal ledger;

    address internal admin;
    address internal issuer;
    address internal supplierA;
    address internal supplierB;
    address internal factor;
    address internal factor2;
    address internal regulator;
    address internal auditor;
    address internal outsider; // never registered
    address internal relayer; // the allow-listed gateway relayer: submits receipts
    address[] internal devices;

    uint256 private _invoiceNonce;
    uint64 private _sequence;

    function setUp() public virtual {
        vm.warp(T0);
        admin = makeAddr("admin");
        issuer = makeAddr("issuer");
        supplierA = makeAddr("supplierA");
        supplierB = makeAddr("supplierB");
        factor = makeAddr("factor");
        factor2 = makeAddr("factor2");
        regulator = makeAddr("regulator");
        auditor = makeAddr("auditor");
        outsider = makeAddr("outsider");
        relayer = makeAddr("relayer");
        devices.push(vm.addr(DEVICE_PK_1));
        devices.push(vm.addr(DEVICE_PK_2));
        devices.push(vm.addr(DEVICE_PK_3));

        token = new SettlementToken("Tokenized CNY Deposit", "tCNY");
        oracle = new ReceiptOracle();
        ledger = new CertificateLedger(
            IERC20(address(token)), address(oracle), admin, ADMIN_ENTITY, MIN_UNIT, MAX_DEPTH
        );
        oracle.bindLedger(address(ledger));
        vm.label(address(token), "token");
        vm.label(address(oracle), "oracle");
        vm.label(address(ledger), "ledger");

        vm.startPrank(admin);
        ledger.registerParticipant(issuer, keccak256("issuer"), ROLE_ISSUER, ISSUER_LIMIT);
        ledger.registerParticipant(supplierA, keccak256("supplierA"), ROLE_SUPPLIER, 0);
        ledger.registerParticipant(supplierB, keccak256("supplierB"), ROLE_SUPPLIER, 0);
        ledger.registerParticipant(factor, keccak256("factor"), ROLE_FACTOR, 0);
        ledger.registerParticipant(factor2, keccak256("factor2"), ROLE_FACTOR, 0);
        ledger.registerParticipant(regulator, keccak256("regulator"), ROLE_REGULATOR, 0);
        ledger.registerParticipant(auditor, keccak256("auditor"), ROLE_AUDITOR, 0);
        oracle.registerWarehouse(WAREHOUSE, _defaultEnrolment(), THRESHOLD, FRESHNESS, _ranges());
        oracle.registerWarehouse(WAREHOUSE_2, _defaultEnrolment(), THRESHOLD, FRESHNESS, _ranges());
        oracle.setRelayer(relayer, true);
        vm.stopPrank();

        _fund(issuer);
        _fund(factor);
        _fund(factor2);
    }

    // ------------------------------------------------------------------ funding

    function _fund(address account) internal {
        token.mint(account, FUNDS);
        vm.prank(account);
        token.approve(address(ledger), type(uint256).max);
    }

    // ------------------------------------------------------------------ orders

    function _nextInvoice() internal returns (bytes32) {
        return keccak256(abi.encode("invoice", ++_invoiceNonce));
    }

    function _openOrder(address payee, uint256 amount, uint40 maturity, uint64 qty, uint40 deadline)
        internal
        returns (uint256 orderId)
    {
        bytes32 invoice = _nextInvoice();
        vm.prank(issuer);
        orderId = ledger.openOrder(payee, amount, maturity, invoice, WAREHOUSE, GOODS, qty, deadline);
    }

    function _openOrder(uint256 amount) internal returns (uint256) {
        return _openOrder(supplierA, amount, MATURITY, QTY, DEADLINE);
    }

    function _openOrder() internal returns (uint256) {
        return _openOrder(AMOUNT);
    }

    // ------------------------------------------------------------------ observations

    /// @dev DEVICE_PK_2 is the weighbridge; every other key an RFID portal.
    function _kindOf(uint256 pk) internal pure returns (uint8) {
        return pk == DEVICE_PK_2 ? KIND_NET_WEIGHT : KIND_CARTON_COUNT;
    }

    function _enrolment(address[] memory keys, uint8[] memory kinds)
        internal
        pure
        returns (IReceiptOracle.DeviceEnrolment[] memory e)
    {
        e = new IReceiptOracle.DeviceEnrolment[](keys.length);
        for (uint256 i; i < keys.length; ++i) {
            e[i] = IReceiptOracle.DeviceEnrolment({device: keys[i], kind: kinds[i]});
        }
    }

    /// @dev The three default devices: portal, weighbridge, portal.
    function _defaultEnrolment() internal view returns (IReceiptOracle.DeviceEnrolment[] memory) {
        uint8[] memory kinds = new uint8[](3);
        kinds[0] = _kindOf(DEVICE_PK_1);
        kinds[1] = _kindOf(DEVICE_PK_2);
        kinds[2] = _kindOf(DEVICE_PK_3);
        return _enrolment(devices, kinds);
    }

    function _ranges() internal pure returns (IReceiptOracle.ReadingRange[] memory r) {
        r = new IReceiptOracle.ReadingRange[](2);
        r[0] = IReceiptOracle.ReadingRange({kind: KIND_CARTON_COUNT, min: 1, max: MAX_CARTONS});
        r[1] = IReceiptOracle.ReadingRange({kind: KIND_NET_WEIGHT, min: 1, max: MAX_CARTONS * CARTON_GRAMS});
    }

    /// @dev Device `pk`'s observation of `quantity` cartons (or their weight) for a delivery to
    /// `warehouseId`, with a fresh sequence number and an hour from the reading to submit.
    function _observation(uint256 orderId, bytes32 warehouseId, bytes32 goods, uint256 pk, uint64 quantity, uint64 at)
        internal
        returns (IReceiptOracle.Observation memory)
    {
        uint8 kind = _kindOf(pk);
        return IReceiptOracle.Observation({
            orderId: orderId,
            warehouse: warehouseId,
            goodsHash: goods,
            device: vm.addr(pk),
            kind: kind,
            value: kind == KIND_CARTON_COUNT ? quantity : quantity * CARTON_GRAMS,
            observedAt: at,
            sequence: ++_sequence,
            deviceSetVersion: oracle.warehouse(warehouseId).deviceSetVersion,
            deadline: at + 1 hours
        });
    }

    function _pks(uint256 a, uint256 b) internal pure returns (uint256[] memory pks) {
        pks = new uint256[](2);
        pks[0] = a;
        pks[1] = b;
    }

    function _pks(uint256 a, uint256 b, uint256 c) internal pure returns (uint256[] memory pks) {
        pks = new uint256[](3);
        pks[0] = a;
        pks[1] = b;
        pks[2] = c;
    }

    /// @dev A portal and the weighbridge: the smallest receipt with every required kind.
    function _defaultPks() internal pure returns (uint256[] memory) {
        return _pks(DEVICE_PK_1, DEVICE_PK_2);
    }

    /// @dev Sorts keys by their address, ascending, as the oracle requires of observations.
    function _sortByAddress(uint256[] memory pks) internal pure returns (uint256[] memory) {
        for (uint256 i = 1; i < pks.length; ++i) {
            uint256 key = pks[i];
            uint256 j = i;
            while (j > 0 && vm.addr(pks[j - 1]) > vm.addr(key)) {
                pks[j] = pks[j - 1];
                --j;
            }
            pks[j] = key;
        }
        return pks;
    }

    function _sig(uint256 pk, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, digest);
        return abi.encodePacked(r, s, v);
    }

    /// @dev Each observation signed by the key at the same index.
    function _signAll(IReceiptOracle.Observation[] memory obs, uint256[] memory pks)
        internal
        view
        returns (bytes[] memory sigs)
    {
        sigs = new bytes[](obs.length);
        for (uint256 i; i < obs.length; ++i) {
            sigs[i] = _sig(pks[i], oracle.observationDigest(obs[i]));
        }
    }

    function _pkOf(address device) internal pure returns (uint256) {
        if (device == vm.addr(DEVICE_PK_1)) return DEVICE_PK_1;
        if (device == vm.addr(DEVICE_PK_2)) return DEVICE_PK_2;
        if (device == vm.addr(DEVICE_PK_3)) return DEVICE_PK_3;
        return STRANGER_PK;
    }

    /// @dev Signs each observation again by its own device, after a test changed it.
    function _resign(IReceiptOracle.Observation[] memory obs) internal view returns (bytes[] memory sigs) {
        sigs = new bytes[](obs.length);
        for (uint256 i; i < obs.length; ++i) {
            sigs[i] = _sig(_pkOf(obs[i].device), oracle.observationDigest(obs[i]));
        }
    }

    /// @dev A signed receipt for `orderId`: one observation of `quantity` made at `at` by each of
    /// `pks`, in ascending device order.
    function _receipt(uint256 orderId, uint64 quantity, uint64 at, uint256[] memory pks)
        internal
        returns (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs)
    {
        ICertificateLedger.Order memory o = ledger.order(orderId);
        pks = _sortByAddress(pks);
        obs = new IReceiptOracle.Observation[](pks.length);
        for (uint256 i; i < pks.length; ++i) {
            obs[i] = _observation(orderId, o.warehouse, o.goodsHash, pks[i], quantity, at);
        }
        sigs = _signAll(obs, pks);
    }

    function _receipt(uint256 orderId, uint64 quantity, uint64 at)
        internal
        returns (IReceiptOracle.Observation[] memory, bytes[] memory)
    {
        return _receipt(orderId, quantity, at, _defaultPks());
    }

    function _submit(IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) internal returns (uint256) {
        vm.prank(relayer);
        return oracle.confirmReceipt(obs, sigs);
    }

    /// @dev Confirms `orderId` with `quantity` received now, by a portal and the weighbridge, sent by
    /// the allow-listed relayer.
    function _confirm(uint256 orderId, uint64 quantity) internal returns (uint256 rootId) {
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) =
            _receipt(orderId, quantity, uint64(block.timestamp));
        rootId = _submit(obs, sigs);
    }

    /// @dev Opens an order of `amount` for supplierA and confirms full delivery: the root certificate.
    function _issue(uint256 amount) internal returns (uint256) {
        return _confirm(_openOrder(amount), QTY);
    }

    function _issue() internal returns (uint256) {
        return _issue(AMOUNT);
    }

    // ------------------------------------------------------------------ certificates

    function _value(uint256 id) internal view returns (uint256) {
        return ledger.certificate(id).value;
    }

    function _holder(uint256 id) internal view returns (address) {
        return ledger.certificate(id).holder;
    }

    function _splitTo(uint256 id, address to, uint256 value) internal returns (uint256 newId) {
        vm.prank(_holder(id));
        newId = ledger.transferFrom(id, to, value);
    }

    function _two(uint256 a, uint256 b) internal pure returns (uint256[] memory v) {
        v = new uint256[](2);
        v[0] = a;
        v[1] = b;
    }

    function _one(uint256 a) internal pure returns (uint256[] memory v) {
        v = new uint256[](1);
        v[0] = a;
    }

    function _err(bytes4 selector) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(selector);
    }
}
