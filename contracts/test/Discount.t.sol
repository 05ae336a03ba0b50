// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";

import {Base} from "./Base.t.sol";
import {ERC3525ReceiverMock} from "./mocks/Receivers.sol";
import {ICertificateLedger} from "../src/interfaces/ICertificateLedger.sol";
import {
    IParticipantRegistry,
    ROLE_AUDITOR,
    ROLE_FACTOR,
    ROLE_SUPPLIER,
    ROLES_HOLDER
} from "../src/interfaces/IParticipantRegistry.sol";
import {SettlementToken} from "../src/SettlementToken.sol";

/// @notice Discount sale to a factor: offer, cancel, buy (delivery versus payment), the implied rate.
contract DiscountTest is Base {
    uint40 internal constant EXPIRY = uint40(T0 + 60 days);
    uint256 internal constant PRICE = 9_800_00;

    uint256 internal id;

    function setUp() public override {
        super.setUp();
        id = _issue();
    }

    function _offer(uint256 value, uint256 price, address buyer) internal returns (uint256 offerId) {
        vm.prank(_holder(id));
        offerId = ledger.offerDiscount(id, value, price, buyer, EXPIRY);
    }

    // ------------------------------------------------------------------ offerDiscount

    function test_offerDiscount_storesAndEmits() public {
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.DiscountOffered(
            1, id, supplierA, address(0), uint128(AMOUNT), uint128(PRICE), EXPIRY
        );
        vm.prank(supplierA);
        uint256 offerId = ledger.offerDiscount(id, AMOUNT, PRICE, address(0), EXPIRY);
        vm.assertEq(offerId, 1);
        ICertificateLedger.DiscountOffer memory f = ledger.discountOffer(offerId);
        vm.assertEq(uint256(f.certificateId), id);
        vm.assertEq(f.seller, supplierA);
        vm.assertEq(f.buyer, address(0));
        vm.assertEq(uint256(f.expiry), EXPIRY);
        vm.assertTrue(f.open);
        vm.assertEq(uint256(f.value), AMOUNT);
        vm.assertEq(uint256(f.price), PRICE);
        (,, uint256 offers) = ledger.counts();
        vm.assertEq(offers, 1);
        // The certificate does not move on offering.
        vm.assertEq(_holder(id), supplierA);
    }

    function test_offerDiscount_notHolder() public {
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.NotApprovedOrHolder.selector, supplierB, id)
        );
        vm.prank(supplierB);
        ledger.offerDiscount(id, AMOUNT, PRICE, address(0), EXPIRY);
    }

    function test_offerDiscount_approvedOperatorMayNotOffer() public {
        vm.prank(supplierA);
        ledger.setApprovalForAll(supplierB, true);
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.NotApprovedOrHolder.selector, supplierB, id)
        );
        vm.prank(supplierB);
        ledger.offerDiscount(id, AMOUNT, PRICE, address(0), EXPIRY);
    }

    function test_offerDiscount_holderSuspended() public {
        vm.prank(admin);
        ledger.suspendParticipant(supplierA);
        vm.expectRevert(abi.encodeWithSelector(IParticipantRegistry.ParticipantNotActive.selector, supplierA));
        vm.prank(supplierA);
        ledger.offerDiscount(id, AMOUNT, PRICE, address(0), EXPIRY);
    }

    function test_offerDiscount_holderLostHolderRoles() public {
        vm.prank(admin);
        ledger.setRoles(supplierA, ROLE_AUDITOR);
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, supplierA, ROLES_HOLDER)
        );
        vm.prank(supplierA);
        ledger.offerDiscount(id, AMOUNT, PRICE, address(0), EXPIRY);
    }

    function test_offerDiscount_zeroValue() public {
        vm.expectRevert(_err(ICertificateLedger.ZeroAmount.selector));
        vm.prank(supplierA);
        ledger.offerDiscount(id, 0, 0, address(0), EXPIRY);
    }

    function test_offerDiscount_zeroPrice() public {
        vm.expectRevert(_err(ICertificateLedger.ZeroAmount.selector));
        vm.prank(supplierA);
        ledger.offerDiscount(id, AMOUNT, 0, address(0), EXPIRY);
    }

    function test_offerDiscount_insufficientValue() public {
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.InsufficientValue.selector, id, AMOUNT, AMOUNT + 1)
        );
        vm.prank(supplierA);
        ledger.offerDiscount(id, AMOUNT + 1, PRICE, address(0), EXPIRY);
    }

    function test_offerDiscount_priceAboveFace() public {
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.PriceAboveFace.selector, 5_000_01, 5_000_00)
        );
        vm.prank(supplierA);
        ledger.offerDiscount(id, 5_000_00, 5_000_01, address(0), EXPIRY);
    }

    function test_offerDiscount_priceEqualsFace() public {
        uint256 offerId = _offer(AMOUNT, AMOUNT, address(0));
        vm.assertEq(uint256(ledger.discountOffer(offerId).price), AMOUNT);
    }

    function test_offerDiscount_expiryNow() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.OfferExpiryInPast.selector, T0));
        vm.prank(supplierA);
        ledger.offerDiscount(id, AMOUNT, PRICE, address(0), uint40(T0));
    }

    function test_offerDiscount_partBelowMinimumUnit() public {
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.SplitBelowMinimumUnit.selector, id, 50, MIN_UNIT)
        );
        vm.prank(supplierA);
        ledger.offerDiscount(id, 50, 40, address(0), EXPIRY);
    }

    function test_offerDiscount_matured() public {
        vm.warp(MATURITY);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateMatured.selector, id, MATURITY));
        vm.prank(supplierA);
        ledger.offerDiscount(id, AMOUNT, PRICE, address(0), uint40(MATURITY + 1));
    }

    function test_offerDiscount_reservedForNonFactor() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.BuyerNotEligible.selector, supplierB));
        vm.prank(supplierA);
        ledger.offerDiscount(id, AMOUNT, PRICE, supplierB, EXPIRY);
    }

    function test_offerDiscount_reservedForUnregistered() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.BuyerNotEligible.selector, outsider));
        vm.prank(supplierA);
        ledger.offerDiscount(id, AMOUNT, PRICE, outsider, EXPIRY);
    }

    function test_offerDiscount_reservedForSuspendedFactor() public {
        vm.prank(admin);
        ledger.suspendParticipant(factor2);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.BuyerNotEligible.selector, factor2));
        vm.prank(supplierA);
        ledger.offerDiscount(id, AMOUNT, PRICE, factor2, EXPIRY);
    }

    // ------------------------------------------------------------------ cancelDiscountOffer

    function test_cancelDiscountOffer_closesAndEmits() public {
        uint256 offerId = _offer(AMOUNT, PRICE, address(0));
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.DiscountOfferCancelled(offerId);
        vm.prank(supplierA);
        ledger.cancelDiscountOffer(offerId);
        vm.assertFalse(ledger.discountOffer(offerId).open);

        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.OfferNotOpen.selector, offerId));
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
    }

    function test_cancelDiscountOffer_twice() public {
        uint256 offerId = _offer(AMOUNT, PRICE, address(0));
        vm.prank(supplierA);
        ledger.cancelDiscountOffer(offerId);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.OfferNotOpen.selector, offerId));
        vm.prank(supplierA);
        ledger.cancelDiscountOffer(offerId);
    }

    function test_cancelDiscountOffer_unknown() public {
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.OfferNotOpen.selector, 3));
        vm.prank(supplierA);
        ledger.cancelDiscountOffer(3);
    }

    function test_cancelDiscountOffer_notSeller() public {
        uint256 offerId = _offer(AMOUNT, PRICE, address(0));
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.NotOfferSeller.selector, offerId, factor));
        vm.prank(factor);
        ledger.cancelDiscountOffer(offerId);
    }

    // ------------------------------------------------------------------ buyDiscounted

    function test_buyDiscounted_whole() public {
        uint256 offerId = _offer(AMOUNT, PRICE, address(0));
        uint256 factorBefore = token.balanceOf(factor);
        // (10,000.00 - 9,800.00) / 9,800.00 * 365 / 90 = 8.2766% -> 827 bps
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.DiscountSold(
            offerId, id, id, supplierA, factor, uint128(AMOUNT), uint128(PRICE), 827
        );
        vm.prank(factor);
        uint256 bought = ledger.buyDiscounted(offerId);

        vm.assertEq(bought, id);
        vm.assertEq(_holder(id), factor);
        vm.assertEq(_value(id), AMOUNT);
        vm.assertEq(token.balanceOf(supplierA), PRICE);
        vm.assertEq(token.balanceOf(factor), factorBefore - PRICE);
        vm.assertEq(token.balanceOf(address(ledger)), AMOUNT);
        vm.assertFalse(ledger.discountOffer(offerId).open);

        // At maturity the factor is paid the face.
        vm.warp(MATURITY);
        ledger.settle(_one(id));
        vm.assertEq(token.balanceOf(factor), factorBefore - PRICE + AMOUNT);
    }

    function test_buyDiscounted_partial() public {
        uint256 offerId = _offer(4_000_00, 3_900_00, address(0));
        vm.warp(T0 + 45 days); // 45 days left
        // (4,000 - 3,900) / 3,900 * 365 / 45 = 20.798% -> 2079 bps
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.DiscountSold(offerId, id, 2, supplierA, factor, 4_000_00, 3_900_00, 2079);
        vm.prank(factor);
        uint256 bought = ledger.buyDiscounted(offerId);

        vm.assertEq(bought, 2);
        vm.assertEq(_holder(bought), factor);
        vm.assertEq(_value(bought), 4_000_00);
        vm.assertEq(_value(id), AMOUNT - 4_000_00);
        vm.assertEq(_holder(id), supplierA);
        vm.assertEq(uint256(ledger.certificate(bought).parentId), id);
        vm.assertEq(token.balanceOf(supplierA), 3_900_00);
    }

    function _receivingFactor(bool accept) internal returns (ERC3525ReceiverMock receiver) {
        receiver = new ERC3525ReceiverMock(accept);
        vm.prank(admin);
        ledger.registerParticipant(address(receiver), keccak256("receiving factor"), ROLE_FACTOR, 0);
        _fund(address(receiver));
    }

    function test_buyDiscounted_partialToAcceptingReceiver() public {
        ERC3525ReceiverMock receiver = _receivingFactor(true);
        uint256 offerId = _offer(4_000_00, 3_900_00, address(receiver));
        vm.prank(address(receiver));
        uint256 bought = ledger.buyDiscounted(offerId);
        vm.assertEq(_holder(bought), address(receiver));
        vm.assertEq(receiver.calls(), 1);
        vm.assertEq(receiver.lastFromTokenId(), id);
        vm.assertEq(receiver.lastToTokenId(), bought);
        vm.assertEq(receiver.lastValue(), 4_000_00);
    }

    function test_buyDiscounted_partialToRefusingReceiver() public {
        ERC3525ReceiverMock receiver = _receivingFactor(false);
        uint256 offerId = _offer(4_000_00, 3_900_00, address(receiver));
        uint256 paidBefore = token.balanceOf(address(receiver));
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.UnsafeReceiver.selector, address(receiver)));
        vm.prank(address(receiver));
        ledger.buyDiscounted(offerId);
        vm.assertEq(_value(id), AMOUNT);
        vm.assertTrue(ledger.discountOffer(offerId).open);
        vm.assertEq(token.balanceOf(address(receiver)), paidBefore);
        vm.assertEq(token.balanceOf(supplierA), 0);
    }

    function test_buyDiscounted_wholeAsksNoValueHook() public {
        // The whole certificate changes hands as an ERC-721 move made by the buyer itself: no
        // value moves between certificates, so the buyer is not asked.
        ERC3525ReceiverMock receiver = _receivingFactor(false);
        uint256 offerId = _offer(AMOUNT, PRICE, address(receiver));
        vm.prank(address(receiver));
        uint256 bought = ledger.buyDiscounted(offerId);
        vm.assertEq(bought, id);
        vm.assertEq(_holder(id), address(receiver));
        vm.assertEq(receiver.calls(), 0);
    }

    function test_buyDiscounted_rateAtParIsZero() public {
        uint256 offerId = _offer(AMOUNT, AMOUNT, address(0));
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.DiscountSold(
            offerId, id, id, supplierA, factor, uint128(AMOUNT), uint128(AMOUNT), 0
        );
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
    }

    function test_buyDiscounted_rateSaturates() public {
        vm.prank(supplierA);
        uint256 offerId = ledger.offerDiscount(id, AMOUNT, 1, address(0), MATURITY);
        vm.warp(MATURITY - 1); // one second left at a huge discount
        vm.expectEmit(address(ledger));
        emit ICertificateLedger.DiscountSold(
            offerId, id, id, supplierA, factor, uint128(AMOUNT), 1, type(uint32).max
        );
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
    }

    function test_buyDiscounted_reservedBuyer() public {
        uint256 offerId = _offer(AMOUNT, PRICE, factor2);
        vm.expectRevert(
            abi.encodeWithSelector(
                ICertificateLedger.OfferReservedForAnother.selector, offerId, factor2, factor
            )
        );
        vm.prank(factor);
        ledger.buyDiscounted(offerId);

        vm.prank(factor2);
        ledger.buyDiscounted(offerId);
        vm.assertEq(_holder(id), factor2);
    }

    function test_buyDiscounted_expired() public {
        uint256 offerId = _offer(AMOUNT, PRICE, address(0));
        vm.warp(EXPIRY);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.OfferExpired.selector, offerId, EXPIRY));
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
    }

    function test_buyDiscounted_buyerNotFactor() public {
        uint256 offerId = _offer(AMOUNT, PRICE, address(0));
        _fund(supplierB);
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, supplierB, ROLE_FACTOR)
        );
        vm.prank(supplierB);
        ledger.buyDiscounted(offerId);
    }

    function test_buyDiscounted_buyerSuspended() public {
        uint256 offerId = _offer(AMOUNT, PRICE, address(0));
        vm.prank(admin);
        ledger.suspendParticipant(factor);
        vm.expectRevert(abi.encodeWithSelector(IParticipantRegistry.ParticipantNotActive.selector, factor));
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
    }

    function test_buyDiscounted_sellerSuspended() public {
        uint256 offerId = _offer(AMOUNT, PRICE, address(0));
        vm.prank(admin);
        ledger.suspendParticipant(supplierA);
        vm.expectRevert(abi.encodeWithSelector(IParticipantRegistry.ParticipantNotActive.selector, supplierA));
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
    }

    function test_buyDiscounted_sellerLostHolderRoles() public {
        uint256 offerId = _offer(AMOUNT, PRICE, address(0));
        vm.prank(admin);
        ledger.setRoles(supplierA, ROLE_AUDITOR);
        uint256 factorFunds = token.balanceOf(factor);
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, supplierA, ROLES_HOLDER)
        );
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
        vm.assertEq(_holder(id), supplierA);
        vm.assertEq(token.balanceOf(factor), factorFunds);
    }

    function test_buyDiscounted_partialSellerLostHolderRoles() public {
        uint256 offerId = _offer(4_000_00, 3_900_00, address(0));
        vm.prank(admin);
        ledger.setRoles(supplierA, ROLE_AUDITOR);
        vm.expectRevert(
            abi.encodeWithSelector(IParticipantRegistry.AccountMissingRole.selector, supplierA, ROLES_HOLDER)
        );
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
        vm.assertEq(_value(id), AMOUNT);
    }

    function test_buyDiscounted_sellerHolderRolesRestored() public {
        uint256 offerId = _offer(AMOUNT, PRICE, address(0));
        vm.startPrank(admin);
        ledger.setRoles(supplierA, ROLE_AUDITOR);
        ledger.setRoles(supplierA, ROLE_SUPPLIER | ROLE_AUDITOR);
        vm.stopPrank();
        // A role change is no holder change: the offer stays valid once the roles are back.
        vm.prank(factor);
        uint256 boughtId = ledger.buyDiscounted(offerId);
        vm.assertEq(boughtId, id);
        vm.assertEq(_holder(id), factor);
    }

    function test_buyDiscounted_sellerMovedCertificate() public {
        uint256 offerId = _offer(AMOUNT, PRICE, address(0));
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, id);
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.IncorrectHolder.selector, supplierA, id, supplierB)
        );
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
        vm.assertEq(token.balanceOf(supplierA), 0);
        vm.assertEq(_holder(id), supplierB);
    }

    function test_buyDiscounted_certificateCameBackToSeller() public {
        uint256 offerId = _offer(AMOUNT, PRICE, address(0));
        vm.prank(supplierA);
        ledger.transferFrom(supplierA, supplierB, id);
        vm.prank(supplierB);
        ledger.transferFrom(supplierB, supplierA, id);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.OfferStale.selector, offerId));
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
        vm.assertEq(_holder(id), supplierA);
    }

    function test_buyDiscounted_sellerSplitAwayValue() public {
        uint256 offerId = _offer(8_000_00, 7_900_00, address(0));
        _splitTo(id, supplierB, 5_000_00);
        vm.expectRevert(
            abi.encodeWithSelector(ICertificateLedger.InsufficientValue.selector, id, 5_000_00, 8_000_00)
        );
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
    }

    function test_buyDiscounted_twice() public {
        uint256 offerId = _offer(4_000_00, 3_900_00, address(0));
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.OfferNotOpen.selector, offerId));
        vm.prank(factor2);
        ledger.buyDiscounted(offerId);
        vm.assertEq(_value(id), AMOUNT - 4_000_00);
    }

    function test_buyDiscounted_frozen() public {
        uint256 offerId = _offer(AMOUNT, PRICE, address(0));
        vm.prank(regulator);
        ledger.freeze(id, "court order");
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateFrozen.selector, id));
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
    }

    function test_buyDiscounted_matured() public {
        vm.prank(supplierA);
        uint256 offerId = ledger.offerDiscount(id, AMOUNT, PRICE, address(0), uint40(MATURITY + 1 days));
        vm.warp(MATURITY);
        vm.expectRevert(abi.encodeWithSelector(ICertificateLedger.CertificateMatured.selector, id, MATURITY));
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
    }

    function test_buyDiscounted_buyerWithoutAllowanceIsAtomic() public {
        uint256 offerId = _offer(AMOUNT, PRICE, address(0));
        vm.prank(factor);
        token.approve(address(ledger), PRICE - 1);
        vm.expectRevert(
            abi.encodeWithSelector(
                IERC20Errors.ERC20InsufficientAllowance.selector, address(ledger), PRICE - 1, PRICE
            )
        );
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
        vm.assertEq(_holder(id), supplierA);
        vm.assertTrue(ledger.discountOffer(offerId).open);
    }

    function test_buyDiscounted_sellerBlockedByBankIsAtomic() public {
        uint256 offerId = _offer(4_000_00, 3_900_00, address(0));
        token.setBlocked(supplierA, true);
        vm.expectRevert(abi.encodeWithSelector(SettlementToken.AccountBlocked.selector, supplierA));
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
        vm.assertEq(_value(id), AMOUNT);
        (, uint256 certs,) = ledger.counts();
        vm.assertEq(certs, 1);
    }

    function test_buyDiscounted_resaleByFactor() public {
        uint256 offerId = _offer(AMOUNT, PRICE, address(0));
        vm.prank(factor);
        ledger.buyDiscounted(offerId);
        vm.warp(T0 + 30 days);
        vm.prank(factor);
        uint256 resale = ledger.offerDiscount(id, AMOUNT, 9_900_00, factor2, uint40(T0 + 70 days));
        vm.prank(factor2);
        ledger.buyDiscounted(resale);
        vm.assertEq(_holder(id), factor2);
    }

    // ------------------------------------------------------------------ discountPrice

    function test_discountPrice_knownValues() public view {
        // 10,000.00 at 8% for 90 days: 1,000,000 * 3,650,000 / (3,650,000 + 800 * 90)
        vm.assertEq(ledger.discountPrice(10_000_00, 90, 800), 980_655);
        vm.assertEq(ledger.discountPrice(10_000_00, 0, 800), 10_000_00);
        vm.assertEq(ledger.discountPrice(10_000_00, 365, 0), 10_000_00);
        // 100% a year for a year halves the price.
        vm.assertEq(ledger.discountPrice(10_000_00, 365, 10_000), 5_000_00);
    }
}
