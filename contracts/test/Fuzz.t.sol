// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Base} from "./Base.t.sol";
import {ICertificateLedger} from "../src/interfaces/ICertificateLedger.sol";

/// @notice Property tests over random inputs (the seed is fixed in foundry.toml). Each property has a
/// fixed-input twin elsewhere (Orders, Split, Discount, ERC3525 tests).
contract FuzzTest is Base {
    // ------------------------------------------------------------------ pro-rata face

    function testFuzz_confirm_proRataFace(uint256 amount, uint64 expected, uint64 delivered) public {
        amount = bound(amount, 1, ISSUER_LIMIT);
        expected = uint64(bound(expected, 1, type(uint64).max));
        delivered = uint64(bound(delivered, 1, type(uint64).max));
        uint256 issuerBefore = token.balanceOf(issuer);

        uint256 orderId = _openOrder(supplierA, amount, MATURITY, expected, DEADLINE);
        // Straight from the oracle's address: the ledger's arithmetic over all of uint64, beyond the
        // reading ranges the oracle enforces.
        vm.prank(address(oracle));
        uint256 rootId = ledger.confirmReceipt(orderId, WAREHOUSE, GOODS, delivered, uint64(block.timestamp));

        uint256 face = delivered >= expected ? amount : amount * delivered / expected;
        vm.assertEq(_value(rootId), face, "face");
        vm.assertLe(face, amount);
        ICertificateLedger.Order memory o = ledger.order(orderId);
        vm.assertEq(uint256(o.refunded), amount - face, "refund");
        vm.assertEq(token.balanceOf(address(ledger)), face, "escrow left");
        vm.assertEq(token.balanceOf(issuer), issuerBefore - face, "issuer paid only the face");
        vm.assertEq(uint256(ledger.participant(issuer).outstanding), face, "outstanding");
        // Never more than the delivered share, and less than one unit under it.
        vm.assertLe(face * expected, amount * (delivered >= expected ? expected : delivered));
    }

    // ------------------------------------------------------------------ split preserves value

    function testFuzz_split_preservesValue(uint256 seed, uint256 parts) public {
        parts = bound(parts, 2, 16);
        uint256 id = _issue();
        uint256 slack = AMOUNT - parts * MIN_UNIT;
        uint256[] memory values = new uint256[](parts);
        uint256 sum;
        for (uint256 i; i < parts; ++i) {
            uint256 extra = i == parts - 1 ? slack : uint256(keccak256(abi.encode(seed, i))) % (slack + 1);
            slack -= extra;
            values[i] = MIN_UNIT + extra;
            sum += values[i];
        }
        vm.assertEq(sum, AMOUNT);

        vm.prank(supplierA);
        uint256[] memory newIds = ledger.split(id, values);

        vm.assertEq(newIds.length, parts - 1);
        vm.assertEq(_value(id), values[0]);
        uint256 total = _value(id);
        for (uint256 i; i < newIds.length; ++i) {
            vm.assertEq(_value(newIds[i]), values[i + 1]);
            vm.assertEq(ledger.slotOf(newIds[i]), ledger.slotOf(id));
            vm.assertEq(_holder(newIds[i]), supplierA);
            total += _value(newIds[i]);
        }
        vm.assertEq(total, AMOUNT);
        vm.assertEq(ledger.balanceOf(supplierA), parts);
    }

    function testFuzz_split_mismatchRefused(uint256 a, uint256 b) public {
        uint256 id = _issue();
        a = bound(a, MIN_UNIT, AMOUNT);
        b = bound(b, MIN_UNIT, AMOUNT);
        vm.assume(a + b != AMOUNT);
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.SplitPartsMismatch.selector, id, a + b, AMOUNT)
        );
        vm.prank(supplierA);
        ledger.split(id, _two(a, b));
    }

    // ------------------------------------------------------------------ discountPrice

    function testFuzz_discountPrice_monotonicAndBelowFace(
        uint128 face,
        uint256 days1,
        uint256 days2,
        uint256 rate1,
        uint256 rate2
    ) public view {
        days1 = bound(days1, 0, 3650);
        days2 = bound(days2, days1, 3650);
        rate1 = bound(rate1, 0, 1_000_000);
        rate2 = bound(rate2, rate1, 1_000_000);

        uint256 p = ledger.discountPrice(face, days1, rate1);
        vm.assertLe(p, face, "price above face");
        vm.assertLe(ledger.discountPrice(face, days2, rate1), p, "longer term must not cost more");
        vm.assertLe(ledger.discountPrice(face, days1, rate2), p, "higher rate must not cost more");
        if (days1 == 0 || rate1 == 0) vm.assertEq(p, face);
        // Rounded down: the price grown at the rate is within one unit of face.
        uint256 grown = p * (3_650_000 + rate1 * days1) / 3_650_000;
        vm.assertLe(grown, face);
    }

    function testFuzz_discountPrice_monotonicInFace(uint128 face1, uint128 face2, uint256 d, uint256 r)
        public
        view
    {
        d = bound(d, 0, 3650);
        r = bound(r, 0, 1_000_000);
        (uint256 lo, uint256 hi) = face1 <= face2 ? (face1, face2) : (face2, face1);
        vm.assertLe(ledger.discountPrice(lo, d, r), ledger.discountPrice(hi, d, r));
    }

    // ------------------------------------------------------------------ round trips

    function testFuzz_roundTrip_splitTransferMerge(uint256 amount, uint256 part) public {
        amount = bound(amount, 2 * MIN_UNIT, ISSUER_LIMIT);
        part = bound(part, MIN_UNIT, amount - MIN_UNIT);
        uint256 id = _issue(amount);

        uint256 child = _splitTo(id, supplierB, part); // split to another holder
        vm.assertEq(_value(id) + _value(child), amount);
        vm.prank(supplierB);
        ledger.transferFrom(supplierB, supplierA, child); // whole transfer back
        vm.assertEq(_holder(child), supplierA);
        vm.prank(supplierA);
        ledger.transferFrom(child, id, part); // merge back
        vm.assertEq(_value(id), amount);
        vm.assertEq(_value(child), 0);
        vm.assertEq(ledger.balanceOf(supplierA), 2);
        vm.assertEq(ledger.balanceOf(supplierB), 0);
        vm.assertEq(token.balanceOf(address(ledger)), amount);

        // And the whole amount settles to the holder, once.
        vm.warp(MATURITY);
        ledger.settle(_two(id, child));
        vm.assertEq(token.balanceOf(supplierA), amount);
        vm.assertEq(uint256(ledger.order(ledger.slotOf(id)).paid), amount);
    }

    function testFuzz_roundTrip_mergeThenSplit(uint256 a, uint256 b) public {
        uint256 id = _issue();
        a = bound(a, MIN_UNIT, AMOUNT - MIN_UNIT);
        uint256 other = _splitTo(id, supplierB, a);
        b = bound(b, 1, AMOUNT - a);
        vm.prank(supplierA);
        ledger.transferFrom(id, other, b);
        vm.assertEq(_value(id) + _value(other), AMOUNT);
        vm.assertEq(_value(other), a + b);
    }

    function testFuzz_discount_valueConservedAndPaid(uint256 value, uint256 price, uint256 elapsed) public {
        uint256 id = _issue();
        value = bound(value, MIN_UNIT, AMOUNT);
        if (value != AMOUNT && AMOUNT - value < MIN_UNIT) value = AMOUNT;
        price = bound(price, 1, value);
        elapsed = bound(elapsed, 0, 89 days);
        vm.prank(supplierA);
        uint256 offerId = ledger.offerDiscount(id, value, price, address(0), MATURITY);
        vm.warp(T0 + elapsed);
        uint256 factorBefore = token.balanceOf(factor);

        vm.prank(factor);
        uint256 bought = ledger.buyDiscounted(offerId);

        vm.assertEq(_value(bought), value);
        vm.assertEq(_holder(bought), factor);
        vm.assertEq(bought == id ? value : _value(id) + _value(bought), AMOUNT);
        vm.assertEq(token.balanceOf(supplierA), price);
        vm.assertEq(factorBefore - token.balanceOf(factor), price);
        vm.assertEq(token.balanceOf(address(ledger)), AMOUNT);
    }

    function testFuzz_valueAllowance_spentExactly(uint256 allowed, uint256 spend) public {
        uint256 id = _issue();
        allowed = bound(allowed, MIN_UNIT, AMOUNT - MIN_UNIT);
        spend = bound(spend, MIN_UNIT, allowed);
        vm.prank(supplierA);
        ledger.approve(id, factor, allowed);
        vm.prank(factor);
        uint256 newId = ledger.transferFrom(id, factor, spend);
        vm.assertEq(ledger.allowance(id, factor), allowed - spend);
        vm.assertEq(_value(newId) + _value(id), AMOUNT);
    }
}
