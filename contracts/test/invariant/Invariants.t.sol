// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Base} from "../Base.t.sol";
import {Handler} from "./Handler.sol";
import {ICertificateLedger} from "../../src/interfaces/ICertificateLedger.sol";
import {IParticipantRegistry, ROLES_HOLDER} from "../../src/interfaces/IParticipantRegistry.sol";

/// @title Invariants
/// @notice DESIGN.md's five invariants, checked after every call of random sequences of handler actions
/// (runs and depth from foundry.toml).
contract Invariants is Base {
    Handler internal handler;

    function setUp() public override {
        super.setUp();
        address[] memory holders = new address[](4);
        holders[0] = supplierA;
        holders[1] = supplierB;
        holders[2] = factor;
        holders[3] = factor2;
        address[] memory factors = new address[](2);
        factors[0] = factor;
        factors[1] = factor2;
        uint256[] memory pks = new uint256[](3);
        pks[0] = DEVICE_PK_1;
        pks[1] = DEVICE_PK_2;
        pks[2] = DEVICE_PK_3;
        handler = new Handler(
            ledger,
            oracle,
            token,
            Handler.Actors({
                admin: admin,
                issuer: issuer,
                regulator: regulator,
                bank: address(this),
                relayer: relayer,
                holders: holders,
                factors: factors,
                devicePks: pks
            })
        );

        bytes4[] memory selectors = new bytes4[](20);
        selectors[0] = Handler.openOrder.selector;
        selectors[1] = Handler.confirm.selector;
        selectors[2] = Handler.confirm.selector; // confirmations weigh double: they make certificates
        selectors[3] = Handler.replay.selector;
        selectors[4] = Handler.cancel.selector;
        selectors[5] = Handler.splitTo.selector;
        selectors[6] = Handler.transferWhole.selector;
        selectors[7] = Handler.merge.selector;
        selectors[8] = Handler.splitParts.selector;
        selectors[9] = Handler.discount.selector;
        selectors[10] = Handler.freeze.selector;
        selectors[11] = Handler.unfreeze.selector;
        selectors[12] = Handler.warp.selector;
        selectors[13] = Handler.settle.selector;
        selectors[14] = Handler.settleAllDue.selector;
        selectors[15] = Handler.setBlocked.selector;
        selectors[16] = Handler.withdraw.selector;
        selectors[17] = Handler.toggleSuspension.selector;
        selectors[18] = Handler.operatorMovesValue.selector;
        selectors[19] = Handler.operatorMovesWhole.selector;
        targetContract(address(handler));
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    // ------------------------------------------------------------------ the handler itself

    /// @dev Every handler action can take effect (so random runs are not vacuous), and the invariants
    /// hold along a fixed sequence too.
    function test_handler_actionsTakeEffect() public {
        handler.openOrder(AMOUNT, QTY, 0, 1, false); // supplierA, matures in about a day
        handler.openOrder(AMOUNT, QTY, 1, 1, false); // supplierB
        handler.openOrder(AMOUNT, QTY, 2, 1, true); // an invoice reused: refused
        handler.confirm(1, QTY, 0); // the first open order from seed 1 on: order 2
        handler.confirm(0, QTY, 1); // seed % 5 == 0: any order, here order 1
        handler.replay(0);
        handler.splitTo(0, 1, 3_000_00);
        handler.transferWhole(2, 2);
        handler.merge(0, 0, 100_00);
        handler.splitParts(0, 2);
        handler.discount(0, 1_000_00, 900_00, 0);
        handler.operatorMovesValue(0, 1, 2_000_00, 500_00, 2); // supplierA moves 500.00 (of 2,000.00) to factor
        handler.operatorMovesWhole(0, 1, 2, false); // to factor
        handler.operatorMovesWhole(0, 3, 1, true); // factor, operator for all, hands it to supplierB
        handler.freeze(0);
        handler.unfreeze(0);
        handler.toggleSuspension(0); // suspends supplierA
        handler.toggleSuspension(0); // reinstates
        handler.setBlocked(1, true); // supplierA
        handler.openOrder(AMOUNT, QTY, 0, 1, false);
        handler.cancel(2); // order 3 (seed 2): warps past its deadline, then cancels
        handler.warp(45 days);
        handler.settle(0, 1);
        handler.settleAllDue();
        handler.withdraw(0); // even seed: the bank lifts the block first
        string[17] memory actions = [
            "openOrder",
            "operatorMovesValue",
            "operatorMovesWhole",
            "confirm",
            "cancel",
            "splitTo",
            "transferWhole",
            "merge",
            "splitParts",
            "discount",
            "freeze",
            "unfreeze",
            "settle",
            "withdraw",
            "toggleSuspension",
            "setBlocked",
            "warp"
        ];
        for (uint256 i; i < actions.length; ++i) {
            vm.assertGt(handler.calls(bytes32(bytes(actions[i]))), 0, actions[i]);
        }
        vm.assertEq(handler.ghostInvoiceUses(handler.invoices()[0]), 1);
        vm.assertGt(handler.ghostWithdrawn(), 0);
        invariant_orderBooksBalance();
        invariant_valueConserved();
        invariant_escrowMatchesBalance();
        invariant_onlyEligibleHolders();
        invariant_frozenNeverMove();
        invariant_effectsAtMostOnce();
        invariant_operatorsWithinTheirRights();
    }

    // ------------------------------------------------------------------ one pass over the books

    struct Books {
        uint256 orderCount;
        uint256 certCount;
        uint256[] liveValue; // per order
        uint256[] allValue; // per order, any status
        uint256[] settledValue; // per order
        uint256[] certsOf; // per order
    }

    function _books() internal view returns (Books memory b) {
        (b.orderCount, b.certCount,) = ledger.counts();
        b.liveValue = new uint256[](b.orderCount + 1);
        b.allValue = new uint256[](b.orderCount + 1);
        b.settledValue = new uint256[](b.orderCount + 1);
        b.certsOf = new uint256[](b.orderCount + 1);
        for (uint256 id = 1; id <= b.certCount; ++id) {
            ICertificateLedger.Certificate memory c = ledger.certificate(id);
            b.allValue[c.orderId] += c.value;
            b.certsOf[c.orderId] += 1;
            if (c.status == ICertificateLedger.CertificateStatus.Live) b.liveValue[c.orderId] += c.value;
            else b.settledValue[c.orderId] += c.value;
        }
    }

    // ------------------------------------------------------------------ 1. per-order books balance

    /// @dev For every confirmed or cancelled order: live certificate value + paid + refunded == escrowed
    /// (== what was pulled from the issuer). An open order has no certificate yet and keeps its whole
    /// escrow: nothing paid, nothing refunded.
    function invariant_orderBooksBalance() public view {
        Books memory b = _books();
        for (uint256 o = 1; o <= b.orderCount; ++o) {
            ICertificateLedger.Order memory ord = ledger.order(o);
            vm.assertEq(uint256(ord.escrowed), handler.ghostEscrowed(o), "escrowed != amount pulled");
            if (ord.status == ICertificateLedger.OrderStatus.Open) {
                vm.assertEq(b.liveValue[o] + ord.paid + ord.refunded, 0, "open order moved escrow");
            } else {
                vm.assertEq(
                    b.liveValue[o] + ord.paid + ord.refunded,
                    ord.escrowed,
                    "live + paid + refunded != escrowed"
                );
            }
        }
    }

    // ------------------------------------------------------------------ 2. value conservation

    /// @dev Splits, merges, transfers and discount sales never create or destroy value: all certificates
    /// of an order (any status) hold exactly the face confirmed, and the paid part is exactly the
    /// settled certificates' value.
    function invariant_valueConserved() public view {
        Books memory b = _books();
        for (uint256 o = 1; o <= b.orderCount; ++o) {
            ICertificateLedger.Order memory ord = ledger.order(o);
            if (ord.status == ICertificateLedger.OrderStatus.Confirmed) {
                vm.assertEq(b.allValue[o], handler.ghostFace(o), "certificate value != confirmed face");
                vm.assertEq(b.allValue[o] + ord.refunded, ord.escrowed, "value + refunded != escrowed");
                vm.assertEq(b.settledValue[o], ord.paid, "settled value != paid");
            } else {
                vm.assertEq(b.certsOf[o], 0, "certificates of an unconfirmed order");
                vm.assertEq(uint256(ord.paid), 0, "paid on an unconfirmed order");
                uint256 refunded = ord.status == ICertificateLedger.OrderStatus.Cancelled ? ord.escrowed : 0;
                vm.assertEq(uint256(ord.refunded), refunded, "refund of an unconfirmed order");
            }
        }
    }

    // ------------------------------------------------------------------ 3. escrow == token balance

    /// @dev The ledger holds exactly open escrow plus unwithdrawn credits; credits add up; the issuer's
    /// outstanding is its open escrow.
    function invariant_escrowMatchesBalance() public view {
        (uint256 orderCount,,) = ledger.counts();
        uint256 open;
        for (uint256 o = 1; o <= orderCount; ++o) {
            ICertificateLedger.Order memory ord = ledger.order(o);
            open += uint256(ord.escrowed) - ord.paid - ord.refunded;
        }
        vm.assertEq(
            token.balanceOf(address(ledger)), open + ledger.totalCredits(), "balance != escrow + credits"
        );
        vm.assertEq(
            uint256(ledger.participant(issuer).outstanding), open, "issuer outstanding != open escrow"
        );
        address[] memory accounts = handler.accounts();
        uint256 credits;
        for (uint256 i; i < accounts.length; ++i) {
            credits += ledger.credit(accounts[i]);
        }
        vm.assertEq(credits, ledger.totalCredits(), "credits do not add up");
    }

    // ------------------------------------------------------------------ 4. who holds, and frozen ones never move

    /// @dev Every live certificate is held by a registered participant with a holder role; every
    /// successful move landed on an account that was active with a holder role at that time; ERC-721
    /// balances add up to the certificates issued.
    function invariant_onlyEligibleHolders() public view {
        (, uint256 certCount,) = ledger.counts();
        for (uint256 id = 1; id <= certCount; ++id) {
            ICertificateLedger.Certificate memory c = ledger.certificate(id);
            if (c.status != ICertificateLedger.CertificateStatus.Live) continue;
            IParticipantRegistry.Participant memory p = ledger.participant(c.holder);
            vm.assertTrue(p.roles & ROLES_HOLDER != 0, "live certificate held by a non-holder");
        }
        vm.assertEq(handler.ghostIneligibleReceipts(), 0, "a move landed on an ineligible account");
        address[] memory holders = handler.holders();
        uint256 balances;
        for (uint256 i; i < holders.length; ++i) {
            balances += ledger.balanceOf(holders[i]);
        }
        vm.assertEq(balances, certCount, "ERC-721 balances != certificates");
    }

    /// @dev A move by an operator: made only while the operator was active, within a value allowance
    /// it spent exactly (an unlimited one left alone), and leaving no ERC-721 approval behind.
    function invariant_operatorsWithinTheirRights() public view {
        vm.assertEq(handler.ghostInactiveOperatorMoves(), 0, "an inactive operator moved a certificate");
        vm.assertEq(handler.ghostAllowanceViolations(), 0, "a value allowance was overdrawn or misspent");
        vm.assertEq(handler.ghostApprovalsSurvived(), 0, "an approval survived a transfer");
    }

    /// @dev A certificate frozen by the regulator keeps its holder and value until unfrozen.
    function invariant_frozenNeverMove() public view {
        uint256[] memory ids = handler.frozenIds();
        for (uint256 i; i < ids.length; ++i) {
            ICertificateLedger.Certificate memory c = ledger.certificate(ids[i]);
            vm.assertTrue(c.frozen, "ghost-frozen certificate not frozen");
            vm.assertEq(c.holder, handler.frozenHolder(ids[i]), "frozen certificate changed holder");
            vm.assertEq(uint256(c.value), handler.frozenValue(ids[i]), "frozen certificate changed value");
            vm.assertEq(
                uint256(c.status),
                uint256(ICertificateLedger.CertificateStatus.Live),
                "frozen certificate settled"
            );
        }
    }

    // ------------------------------------------------------------------ 5. at most once

    /// @dev Each attestation, invoice hash and settlement takes effect at most once.
    function invariant_effectsAtMostOnce() public view {
        vm.assertEq(handler.ghostReplaySuccesses(), 0, "an attestation was replayed");
        (uint256 orderCount, uint256 certCount,) = ledger.counts();
        uint256 confirmed;
        for (uint256 o = 1; o <= orderCount; ++o) {
            uint256 n = handler.ghostConfirmations(o);
            vm.assertLe(n, 1, "order confirmed twice");
            if (ledger.order(o).status == ICertificateLedger.OrderStatus.Confirmed) {
                vm.assertEq(n, 1, "confirmed order without a confirmation");
                ++confirmed;
            }
        }
        vm.assertEq(confirmed, handler.usedReceiptCount(), "receipts != confirmed orders");
        for (uint256 id = 1; id <= certCount; ++id) {
            uint256 n = handler.ghostSettlements(id);
            vm.assertLe(n, 1, "certificate settled twice");
            bool settled = ledger.certificate(id).status == ICertificateLedger.CertificateStatus.Settled;
            vm.assertEq(n == 1, settled, "settlement record mismatch");
        }
        // An invoice is held by at most one open or confirmed order; a cancelled one gives it back.
        bytes32[] memory invoices = handler.invoices();
        uint256 openings;
        for (uint256 i; i < invoices.length; ++i) {
            uint256 held;
            for (uint256 o = 1; o <= orderCount; ++o) {
                ICertificateLedger.Order memory order = ledger.order(o);
                if (order.invoiceHash == invoices[i] && order.status != ICertificateLedger.OrderStatus.Cancelled) {
                    ++held;
                }
            }
            vm.assertLe(held, 1, "invoice financed twice");
            vm.assertEq(held, handler.ghostInvoiceHeld(invoices[i]), "invoice holders != ghost");
            vm.assertEq(ledger.invoiceUsed(invoices[i]), held == 1, "invoiceUsed != held");
            openings += handler.ghostInvoiceUses(invoices[i]);
        }
        vm.assertEq(openings, orderCount, "orders != invoice openings");
    }
}
