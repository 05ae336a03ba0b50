// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {TestBase} from "../utils/Test.sol";
import {CertificateLedger} from "../../src/CertificateLedger.sol";
import {ReceiptOracle} from "../../src/ReceiptOracle.sol";
import {SettlementToken} from "../../src/SettlementToken.sol";
import {ICertificateLedger} from "../../src/interfaces/ICertificateLedger.sol";
import {IReceiptOracle, KIND_CARTON_COUNT, KIND_NET_WEIGHT} from "../../src/interfaces/IReceiptOracle.sol";
import {IParticipantRegistry, ROLES_HOLDER} from "../../src/interfaces/IParticipantRegistry.sol";

/// @title Handler
/// @notice Bounded random actions on the system, in the manner of solmate's invariant handlers: every
/// action picks its actors and amounts from the fuzzer's seeds, acts as a real participant (prank),
/// swallows the reverts the rules call for, and keeps ghost records that the invariants compare with
/// the ledger's own books. Confirmations go through the oracle with real device signatures.
contract Handler is TestBase {
    struct Actors {
        address admin;
        address issuer;
        address regulator;
        address bank;
        address relayer;
        address[] holders; // suppliers and factors
        address[] factors;
        uint256[] devicePks;
    }

    CertificateLedger public immutable ledger;
    ReceiptOracle public immutable oracle;
    SettlementToken public immutable token;

    address internal immutable _admin;
    address internal immutable _issuer;
    address internal immutable _regulator;
    address internal immutable _bank;
    address internal immutable _relayer;
    address[] internal _holders;
    address[] internal _factors;
    uint256[] internal _devicePks;

    bytes32 public constant WAREHOUSE = keccak256("WH-SH-PUDONG-01");
    bytes32 public constant GOODS = keccak256("steel coil Q235B x100");
    uint64 internal constant CARTON_GRAMS = 25_000; // as Base's, inside the warehouse's ranges
    uint256 internal constant MAX_AMOUNT = 1_000_000_00;

    // ------------------------------------------------------------------ ghost state
    mapping(uint256 orderId => uint256) public ghostEscrowed;
    mapping(uint256 orderId => uint256) public ghostFace;
    mapping(uint256 orderId => uint256) public ghostConfirmations;
    mapping(uint256 certificateId => uint256) public ghostSettlements;
    mapping(bytes32 invoice => uint256) public ghostInvoiceUses; // orders opened with it
    mapping(bytes32 invoice => uint256) public ghostInvoiceHeld; // of those, open or confirmed
    bytes32[] internal _invoices;
    uint256 public ghostReplaySuccesses;
    uint256 public ghostIneligibleReceipts; // a move that landed on an account not active with a holder role
    uint256 public ghostWithdrawn;
    // Operator moves: by an account not active at the time, past or not spending a value allowance,
    // or leaving an ERC-721 approval alive after the certificate changed hands.
    uint256 public ghostInactiveOperatorMoves;
    uint256 public ghostAllowanceViolations;
    uint256 public ghostApprovalsSurvived;

    // Regulator freezes: what each frozen certificate looked like when frozen.
    uint256[] internal _frozen;
    mapping(uint256 certificateId => address) public frozenHolder;
    mapping(uint256 certificateId => uint256) public frozenValue;
    mapping(uint256 certificateId => bool) public ghostFrozen;

    /// @dev Enough to rebuild a receipt that took effect, for {replay}.
    struct UsedReceipt {
        uint256 orderId;
        uint64 qty;
        uint64 at;
        uint64 firstSequence;
        uint64 deadline;
        uint32 version;
        uint256 portal;
    }

    UsedReceipt[] internal _usedReceipts;
    uint256 internal _invoiceNonce;
    uint64 internal _sequence;

    // How often each action took effect (keeps the runs honest: see the smoke test).
    mapping(bytes32 action => uint256) public calls;

    constructor(
        CertificateLedger ledger_,
        ReceiptOracle oracle_,
        SettlementToken token_,
        Actors memory actors
    ) {
        ledger = ledger_;
        oracle = oracle_;
        token = token_;
        _admin = actors.admin;
        _issuer = actors.issuer;
        _regulator = actors.regulator;
        _bank = actors.bank;
        _relayer = actors.relayer;
        _holders = actors.holders;
        _factors = actors.factors;
        _devicePks = actors.devicePks;
    }

    // ================================================================== actions

    function openOrder(
        uint256 amountSeed,
        uint256 qtySeed,
        uint256 payeeSeed,
        uint256 maturitySeed,
        bool reuse
    ) external {
        uint256 amount = bound(amountSeed, 1, MAX_AMOUNT);
        uint64 qty = uint64(bound(qtySeed, 1, 1_000));
        address payee = _holders[payeeSeed % _holders.length];
        // One in eight is pay-on-receipt (already mature when confirmed).
        uint40 maturity = maturitySeed % 8 == 0
            ? uint40(block.timestamp)
            : uint40(block.timestamp + bound(maturitySeed, 1 days, 45 days));
        uint40 deadline = uint40(block.timestamp + 21 days);
        // Now and then the issuer tries to finance an invoice again (must fail with DuplicateInvoice
        // unless its order was cancelled).
        bytes32 invoice = reuse && qtySeed % 4 == 0 && _invoices.length != 0
            ? _invoices[amountSeed % _invoices.length]
            : keccak256(abi.encode("invoice", ++_invoiceNonce));

        vm.prank(_issuer);
        try ledger.openOrder(payee, amount, maturity, invoice, WAREHOUSE, GOODS, qty, deadline) returns (
            uint256 orderId
        ) {
            ghostEscrowed[orderId] = amount;
            if (++ghostInvoiceUses[invoice] == 1) _invoices.push(invoice);
            ++ghostInvoiceHeld[invoice];
            ++calls["openOrder"];
        } catch {}
    }

    function confirm(uint256 orderSeed, uint256 qtySeed, uint256 signerSeed) external {
        (uint256 orderCount,,) = ledger.counts();
        if (orderCount == 0) return;
        // Mostly an order that can still be confirmed; one in five any order (a second confirmation).
        uint256 orderId = orderSeed % orderCount + 1;
        if (orderSeed % 5 != 0) {
            for (uint256 k; k < orderCount; ++k) {
                uint256 candidate = (orderSeed % orderCount + k) % orderCount + 1;
                ICertificateLedger.Order memory c = ledger.order(candidate);
                if (c.status == ICertificateLedger.OrderStatus.Open && c.deadline >= block.timestamp) {
                    orderId = candidate;
                    break;
                }
            }
        }
        ICertificateLedger.Order memory o = ledger.order(orderId);
        uint64 qty = uint64(bound(qtySeed, 1, uint256(o.expectedQuantity) * 2));
        UsedReceipt memory u = UsedReceipt({
            orderId: orderId,
            qty: qty,
            at: uint64(block.timestamp),
            firstSequence: _sequence + 1,
            deadline: uint64(block.timestamp + 1 hours),
            version: oracle.warehouse(o.warehouse).deviceSetVersion,
            portal: signerSeed
        });
        _sequence += 2;
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _receipt(u, o);
        bool payee = _eligible(o.payee);

        vm.prank(_relayer);
        try oracle.confirmReceipt(obs, sigs) returns (uint256 rootId) {
            ++ghostConfirmations[orderId];
            uint256 escrowed = ghostEscrowed[orderId];
            ghostFace[orderId] = qty >= o.expectedQuantity ? escrowed : escrowed * qty / o.expectedQuantity;
            if (!payee) ++ghostIneligibleReceipts;
            if (o.maturity <= block.timestamp) ++ghostSettlements[rootId]; // paid on receipt
            _usedReceipts.push(u);
            ++calls["confirm"];
        } catch {}
    }

    /// @dev Resubmits the observations of a receipt that already took effect, freshly signed: must fail.
    function replay(uint256 seed) external {
        if (_usedReceipts.length == 0) return;
        UsedReceipt memory u = _usedReceipts[seed % _usedReceipts.length];
        (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs) = _receipt(u, ledger.order(u.orderId));
        vm.prank(_relayer);
        try oracle.confirmReceipt(obs, sigs) {
            ++ghostReplaySuccesses;
            ++ghostConfirmations[u.orderId];
        } catch {}
    }

    function cancel(uint256 orderSeed) external {
        (uint256 orderCount,,) = ledger.counts();
        if (orderCount == 0) return;
        uint256 orderId = orderSeed % orderCount + 1;
        ICertificateLedger.Order memory o = ledger.order(orderId);
        // Cancellable after the deadline plus the warehouse's freshness window.
        uint256 cancellableAfter = uint256(o.deadline) + oracle.warehouse(o.warehouse).freshness;
        if (o.status == ICertificateLedger.OrderStatus.Open && block.timestamp <= cancellableAfter) {
            vm.warp(cancellableAfter + 1);
        }
        vm.prank(_issuer);
        try ledger.cancelOrder(orderId) {
            --ghostInvoiceHeld[o.invoiceHash];
            ++calls["cancel"];
        } catch {}
    }

    function splitTo(uint256 certSeed, uint256 toSeed, uint256 valueSeed) external {
        (bool ok, uint256 id, ICertificateLedger.Certificate memory c) = _pick(certSeed);
        if (!ok || c.value == 0) return;
        address to = _holders[toSeed % _holders.length];
        uint256 value = bound(valueSeed, 1, c.value);
        bool eligible = _eligible(to);
        vm.prank(c.holder);
        try ledger.transferFrom(id, to, value) {
            if (!eligible) ++ghostIneligibleReceipts;
            ++calls["splitTo"];
        } catch {}
    }

    function transferWhole(uint256 certSeed, uint256 toSeed) external {
        (bool ok, uint256 id, ICertificateLedger.Certificate memory c) = _pick(certSeed);
        if (!ok) return;
        address to = _holders[toSeed % _holders.length];
        bool eligible = _eligible(to);
        vm.prank(c.holder);
        try ledger.transferFrom(c.holder, to, id) {
            if (!eligible) ++ghostIneligibleReceipts;
            ++calls["transferWhole"];
        } catch {}
    }

    function merge(uint256 fromSeed, uint256 toSeed, uint256 valueSeed) external {
        (bool ok, uint256 fromId, ICertificateLedger.Certificate memory c) = _pick(fromSeed);
        if (!ok || c.value == 0) return;
        (, uint256 count,) = ledger.counts();
        uint256 toId;
        for (uint256 k; k < count; ++k) {
            uint256 candidate = (toSeed % count + k) % count + 1;
            if (candidate != fromId && ledger.certificate(candidate).orderId == c.orderId) {
                toId = candidate;
                break;
            }
        }
        if (toId == 0) return;
        address receiver = ledger.certificate(toId).holder;
        bool eligible = receiver == c.holder || _eligible(receiver);
        uint256 value = bound(valueSeed, 1, c.value);
        vm.prank(c.holder);
        try ledger.transferFrom(fromId, toId, value) {
            if (!eligible) ++ghostIneligibleReceipts;
            ++calls["merge"];
        } catch {}
    }

    function splitParts(uint256 certSeed, uint256 partsSeed) external {
        (bool ok, uint256 id, ICertificateLedger.Certificate memory c) = _pick(certSeed);
        if (!ok) return;
        uint256 parts = bound(partsSeed, 2, 4);
        uint256[] memory values = new uint256[](parts);
        uint256 share = c.value / parts;
        values[0] = c.value - share * (parts - 1);
        for (uint256 i = 1; i < parts; ++i) {
            values[i] = share;
        }
        vm.prank(c.holder);
        try ledger.split(id, values) {
            ++calls["splitParts"];
        } catch {}
    }

    function discount(uint256 certSeed, uint256 valueSeed, uint256 priceSeed, uint256 buyerSeed) external {
        (bool ok, uint256 id, ICertificateLedger.Certificate memory c) = _pick(certSeed);
        if (!ok || c.value == 0) return;
        uint256 value = bound(valueSeed, 1, c.value);
        uint256 price = bound(priceSeed, 1, value);
        uint256 expiry = block.timestamp + 10 days;
        if (expiry > c.maturity) expiry = c.maturity;
        vm.prank(c.holder);
        try ledger.offerDiscount(id, value, price, address(0), uint40(expiry)) returns (uint256 offerId) {
            address buyer = _factors[buyerSeed % _factors.length];
            bool eligible = _eligible(buyer);
            vm.prank(buyer);
            try ledger.buyDiscounted(offerId) {
                if (!eligible) ++ghostIneligibleReceipts;
                ++calls["discount"];
            } catch {}
        } catch {}
    }

    /// @dev A holder grants another account a value allowance, which then moves part of the value
    /// to a third (a new certificate).
    function operatorMovesValue(
        uint256 certSeed,
        uint256 operatorSeed,
        uint256 allowanceSeed,
        uint256 valueSeed,
        uint256 toSeed
    ) external {
        (bool ok, uint256 id, ICertificateLedger.Certificate memory c) = _pick(certSeed);
        if (!ok || c.value == 0) return;
        address operator = _account(operatorSeed);
        if (operator == c.holder) return;
        // Sometimes unlimited, sometimes short of the move: both must be honoured exactly.
        uint256 allowance = allowanceSeed % 5 == 0 ? type(uint256).max : bound(allowanceSeed, 1, c.value);
        vm.prank(c.holder);
        try ledger.approve(id, operator, allowance) {} catch {
            return;
        }
        address to = _holders[toSeed % _holders.length];
        uint256 value = bound(valueSeed, 1, c.value);
        bool eligible = _eligible(to);
        bool active = ledger.participant(operator).active;
        // An operator approved for the whole certificate moves value without spending its allowance.
        bool whole = ledger.isApprovedForAll(c.holder, operator) || ledger.getApproved(id) == operator;
        vm.prank(operator);
        try ledger.transferFrom(id, to, value) {
            if (!eligible) ++ghostIneligibleReceipts;
            if (!active) ++ghostInactiveOperatorMoves;
            uint256 left = ledger.allowance(id, operator);
            bool spends = !whole && allowance != type(uint256).max;
            if ((spends && value > allowance) || left != (spends ? allowance - value : allowance)) {
                ++ghostAllowanceViolations;
            }
            ++calls["operatorMovesValue"];
        } catch {}
    }

    /// @dev A holder approves another account for one certificate, or for all its certificates,
    /// which then moves the whole certificate to a third.
    function operatorMovesWhole(uint256 certSeed, uint256 operatorSeed, uint256 toSeed, bool forAll) external {
        (bool ok, uint256 id, ICertificateLedger.Certificate memory c) = _pick(certSeed);
        if (!ok) return;
        address operator = _account(operatorSeed);
        if (operator == c.holder) return;
        vm.prank(c.holder);
        if (forAll) {
            ledger.setApprovalForAll(operator, true);
        } else {
            try ledger.approve(operator, id) {} catch {
                return;
            }
        }
        address to = _holders[toSeed % _holders.length];
        bool eligible = _eligible(to);
        bool active = ledger.participant(operator).active;
        vm.prank(operator);
        try ledger.transferFrom(c.holder, to, id) {
            if (!eligible) ++ghostIneligibleReceipts;
            if (!active) ++ghostInactiveOperatorMoves;
            if (to != c.holder && ledger.getApproved(id) != address(0)) ++ghostApprovalsSurvived;
            ++calls["operatorMovesWhole"];
        } catch {}
    }

    function freeze(uint256 certSeed) external {
        (uint256 id, ICertificateLedger.Certificate memory c) = _pickAny(certSeed);
        if (id == 0) return;
        vm.prank(_regulator);
        try ledger.freeze(id, "handler") {
            ghostFrozen[id] = true;
            frozenHolder[id] = c.holder;
            frozenValue[id] = c.value;
            _frozen.push(id);
            ++calls["freeze"];
        } catch {}
    }

    function unfreeze(uint256 seed) external {
        if (_frozen.length == 0) return;
        uint256 index = seed % _frozen.length;
        uint256 id = _frozen[index];
        vm.prank(_regulator);
        try ledger.unfreeze(id) {
            ghostFrozen[id] = false;
            _frozen[index] = _frozen[_frozen.length - 1];
            _frozen.pop();
            ++calls["unfreeze"];
        } catch {}
    }

    function warp(uint256 secondsSeed) external {
        vm.warp(block.timestamp + bound(secondsSeed, 1 hours, 15 days));
        ++calls["warp"];
    }

    /// @dev Settles up to three certificates from `certSeed` on; settled, frozen or immature ones
    /// make the batch revert, so double settlement is tried too.
    function settle(uint256 certSeed, uint256 countSeed) external {
        (, uint256 count,) = ledger.counts();
        if (count == 0) return;
        uint256 n = bound(countSeed, 1, 3);
        if (n > count) n = count;
        uint256[] memory ids = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            ids[i] = (certSeed % count + i) % count + 1;
        }
        try ledger.settle(ids) {
            for (uint256 i; i < n; ++i) {
                ++ghostSettlements[ids[i]];
            }
            ++calls["settle"];
        } catch {}
    }

    /// @dev Settles every certificate that may be settled now, one by one (drives runs to completion).
    function settleAllDue() external {
        (, uint256 count,) = ledger.counts();
        for (uint256 id = 1; id <= count; ++id) {
            ICertificateLedger.Certificate memory c = ledger.certificate(id);
            if (
                c.status != ICertificateLedger.CertificateStatus.Live || c.frozen
                    || c.maturity > block.timestamp
            ) {
                continue;
            }
            try ledger.settle(_single(id)) {
                ++ghostSettlements[id];
                ++calls["settle"];
            } catch {}
        }
    }

    function setBlocked(uint256 actorSeed, bool blocked) external {
        address account = _account(actorSeed);
        vm.prank(_bank);
        token.setBlocked(account, blocked);
        ++calls["setBlocked"];
    }

    /// @dev Withdraws for an account with a credit if there is one; half the time the bank has lifted
    /// its block first, otherwise a still-blocked account fails and keeps its credit.
    function withdraw(uint256 actorSeed) external {
        address account = _account(actorSeed);
        for (uint256 k; k <= _holders.length; ++k) {
            address candidate = _account(actorSeed % (_holders.length + 1) + k);
            if (ledger.credit(candidate) != 0) {
                account = candidate;
                break;
            }
        }
        if (actorSeed % 2 == 0) {
            vm.prank(_bank);
            token.setBlocked(account, false);
        }
        vm.prank(account);
        try ledger.withdraw() returns (uint256 amount) {
            ghostWithdrawn += amount;
            ++calls["withdraw"];
        } catch {}
    }

    function toggleSuspension(uint256 holderSeed) external {
        address account = _holders[holderSeed % _holders.length];
        bool active = ledger.participant(account).active; // read before the prank: a call consumes it
        if (active && holderSeed % 3 != 0) return; // suspensions are rarer than reinstatements
        vm.prank(_admin);
        if (active) {
            ledger.suspendParticipant(account);
        } else {
            ledger.reinstateParticipant(account);
        }
        ++calls["toggleSuspension"];
    }

    // ================================================================== views for the invariants

    function frozenIds() external view returns (uint256[] memory) {
        return _frozen;
    }

    function invoices() external view returns (bytes32[] memory) {
        return _invoices;
    }

    function holders() external view returns (address[] memory) {
        return _holders;
    }

    /// @notice Everyone who can be owed a credit: the issuer (refunds) and the holders.
    function accounts() external view returns (address[] memory list) {
        list = new address[](_holders.length + 1);
        list[0] = _issuer;
        for (uint256 i; i < _holders.length; ++i) {
            list[i + 1] = _holders[i];
        }
    }

    function usedReceiptCount() external view returns (uint256) {
        return _usedReceipts.length;
    }

    // ================================================================== internal

    function _eligible(address account) internal view returns (bool) {
        IParticipantRegistry.Participant memory p = ledger.participant(account);
        return p.active && p.roles & ROLES_HOLDER != 0;
    }

    function _account(uint256 seed) internal view returns (address) {
        uint256 i = seed % (_holders.length + 1);
        return i == 0 ? _issuer : _holders[i - 1];
    }

    function _pickAny(uint256 seed)
        internal
        view
        returns (uint256 id, ICertificateLedger.Certificate memory c)
    {
        (, uint256 count,) = ledger.counts();
        if (count == 0) return (0, c);
        id = seed % count + 1;
        c = ledger.certificate(id);
    }

    /// @dev A live certificate from `seed` on, if any.
    function _pick(uint256 seed)
        internal
        view
        returns (bool ok, uint256 id, ICertificateLedger.Certificate memory c)
    {
        (, uint256 count,) = ledger.counts();
        for (uint256 k; k < count; ++k) {
            id = (seed % count + k) % count + 1;
            c = ledger.certificate(id);
            if (c.status == ICertificateLedger.CertificateStatus.Live) return (true, id, c);
        }
    }

    /// @dev The weighbridge (second key) and one of the two portals, in ascending address order,
    /// each observing `u.qty` cartons (or their weight).
    function _receipt(UsedReceipt memory u, ICertificateLedger.Order memory o)
        internal
        view
        returns (IReceiptOracle.Observation[] memory obs, bytes[] memory sigs)
    {
        uint256[] memory pks = new uint256[](2);
        pks[0] = u.portal % 2 == 0 ? _devicePks[0] : _devicePks[2];
        pks[1] = _devicePks[1];
        if (vm.addr(pks[0]) > vm.addr(pks[1])) (pks[0], pks[1]) = (pks[1], pks[0]);
        obs = new IReceiptOracle.Observation[](2);
        sigs = new bytes[](2);
        for (uint256 i; i < 2; ++i) {
            bool weighs = pks[i] == _devicePks[1];
            obs[i] = IReceiptOracle.Observation({
                orderId: u.orderId,
                warehouse: o.warehouse,
                goodsHash: o.goodsHash,
                device: vm.addr(pks[i]),
                kind: weighs ? KIND_NET_WEIGHT : KIND_CARTON_COUNT,
                value: weighs ? u.qty * CARTON_GRAMS : u.qty,
                observedAt: u.at,
                sequence: u.firstSequence + uint64(i),
                deviceSetVersion: u.version,
                deadline: u.deadline
            });
            (uint8 v, bytes32 r, bytes32 s) = vm.sign(pks[i], oracle.observationDigest(obs[i]));
            sigs[i] = abi.encodePacked(r, s, v);
        }
    }

    function _single(uint256 id) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](1);
        ids[0] = id;
    }
}
