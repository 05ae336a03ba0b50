// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC3525} from "./IERC3525.sol";
import {IParticipantRegistry} from "./IParticipantRegistry.sol";

/// @title ICertificateLedger
/// @notice Orders with escrowed payment, the digital debt certificates (ERC-3525: slot = order id,
/// value = amount owed) minted on confirmed receipt, their movement among registered participants,
/// discount sales to factors, regulator freezes, and settlement at maturity.
/// @dev Every state change emits an event carrying what is needed to rebuild state from logs alone.
interface ICertificateLedger is IERC3525, IParticipantRegistry {
    enum OrderStatus {
        None,
        Open, // escrowed, waiting for the receipt attestation
        Confirmed, // receipt confirmed, root certificate minted
        Cancelled // deadline passed unconfirmed; escrow refunded
    }

    enum CertificateStatus {
        None,
        Live, // can move until maturity and settle after it
        Settled // its holder was paid its value
    }

    /// @notice An order's public record. Amounts in settlement-token units.
    struct Order {
        address issuer;
        uint40 maturity;
        uint40 deadline;
        OrderStatus status;
        address payee;
        uint64 expectedQuantity;
        uint128 escrowed;
        uint128 paid;
        uint128 refunded;
        uint64 deliveredQuantity;
        uint64 rootCertificateId;
        bytes32 invoiceHash;
        bytes32 warehouse;
        bytes32 goodsHash;
    }

    /// @notice A certificate's public record.
    struct Certificate {
        address holder;
        uint40 maturity;
        uint8 depth; // 0 for the root, parent's depth + 1 for a split
        CertificateStatus status;
        bool frozen;
        uint128 value;
        uint64 orderId;
        uint64 parentId; // 0 for the root
    }

    /// @notice A standing offer to sell `value` of a certificate at `price`.
    struct DiscountOffer {
        uint64 certificateId;
        address seller;
        uint32 holderEpoch; // the certificate's holder-change count when offered
        address buyer; // zero: any active factor
        uint40 expiry;
        bool open;
        uint128 value;
        uint128 price;
    }

    // ---------------------------------------------------------------- errors: orders
    /// @dev An amount or quantity that must be positive was zero.
    error ZeroAmount();
    /// @dev `amount` does not fit the 128-bit ledger amounts.
    error AmountTooLarge(uint256 amount);
    /// @dev `invoiceHash` is held by an order that is open or confirmed (anti double financing), or
    /// is zero. A cancelled order gives its invoice back.
    error DuplicateInvoice(bytes32 invoiceHash);
    /// @dev `warehouse` is not a registered, active warehouse of the receipt oracle: no receipt
    /// could ever confirm the order.
    error UnknownWarehouse(bytes32 warehouse);
    /// @dev The confirmation `deadline` is not after the current time `nowTs`.
    error DeadlineInPast(uint256 deadline, uint256 nowTs);
    /// @dev `payee` may not hold certificates (not an active supplier or factor).
    error PayeeNotEligible(address payee);
    /// @dev No order `orderId`.
    error UnknownOrder(uint256 orderId);
    /// @dev Order `orderId` is `status`, not Open.
    error OrderNotOpen(uint256 orderId, OrderStatus status);
    /// @dev `caller` is not the issuer of order `orderId`.
    error NotOrderIssuer(uint256 orderId, address caller);
    /// @dev Order `orderId` can be cancelled only after `cancellableAfter`: its deadline plus the
    /// warehouse's freshness window, so that goods received by the deadline can still be confirmed.
    error DeadlineNotPassed(uint256 orderId, uint256 cancellableAfter);
    /// @dev The receipt for order `orderId` names another warehouse or other goods.
    error ReceiptDoesNotMatchOrder(uint256 orderId, bytes32 warehouse, bytes32 goodsHash);
    /// @dev The goods of order `orderId` were received at `receivedAt`, after its `deadline`.
    error ReceiptAfterDeadline(uint256 orderId, uint256 receivedAt, uint256 deadline);
    /// @dev The constructor was given a zero `token` or `oracle` address.
    error InvalidDeployment(address token, address oracle);
    /// @dev Only the receipt oracle may confirm; `caller` is not it.
    error NotReceiptOracle(address caller);

    // ---------------------------------------------------------------- errors: certificates
    /// @dev No certificate `certificateId`.
    error UnknownCertificate(uint256 certificateId);
    /// @dev Certificate `certificateId` is frozen by a regulator.
    error CertificateFrozen(uint256 certificateId);
    /// @dev Certificate `certificateId` is not frozen.
    error CertificateNotFrozen(uint256 certificateId);
    /// @dev Certificate `certificateId` was already settled.
    error CertificateAlreadySettled(uint256 certificateId);
    /// @dev Certificate `certificateId` reached `maturity`: it can only be settled.
    error CertificateMatured(uint256 certificateId, uint256 maturity);
    /// @dev Certificate `certificateId` matures at `maturity`; it cannot be settled before.
    error CertificateNotMatured(uint256 certificateId, uint256 maturity);
    /// @dev `operator` may not move certificate `certificateId` (not holder, approved or operator),
    /// or may not grant an approval on it (only the holder does).
    error NotApprovedOrHolder(address operator, uint256 certificateId);
    /// @dev `operator` may move only `allowance` out of `certificateId`, not `needed`.
    error InsufficientAllowance(address operator, uint256 certificateId, uint256 allowance, uint256 needed);
    /// @dev Certificate `certificateId` holds `value`, less than `needed`.
    error InsufficientValue(uint256 certificateId, uint256 value, uint256 needed);
    /// @dev `from` is not the holder of certificate `certificateId` (it is `holder`).
    error IncorrectHolder(address from, uint256 certificateId, address holder);
    /// @dev `receiver` may not hold certificates (not registered, suspended or without a holder role).
    error ReceiverNotEligible(address receiver);
    /// @dev `receiver` is the zero address.
    error InvalidReceiver(address receiver);
    /// @dev Certificates `fromId` and `toId` belong to different orders (slots).
    error SlotMismatch(uint256 fromId, uint256 toId);
    /// @dev A certificate cannot move value into itself.
    error SelfTransfer(uint256 certificateId);
    /// @dev The split parts sum to `sum` (2^256 - 1 if they sum past it), not to the certificate's `value`.
    error SplitPartsMismatch(uint256 certificateId, uint256 sum, uint256 value);
    /// @dev A split needs between 2 and `maxParts` parts; `parts` were given.
    error SplitPartCount(uint256 parts, uint256 maxParts);
    /// @dev A part of `part` (or what would remain) is below the minimum split unit `minUnit`.
    error SplitBelowMinimumUnit(uint256 certificateId, uint256 part, uint256 minUnit);
    /// @dev Splitting `certificateId` (at `depth`) would pass the maximum split depth `maxDepth`.
    error SplitDepthExceeded(uint256 certificateId, uint256 depth, uint256 maxDepth);
    /// @dev The contract `to` did not accept a certificate or value: its `onERC721Received` (safe
    /// transfer) or, when it declares IERC3525Receiver, its `onERC3525Received` reverted or did not
    /// answer the hook's selector.
    error UnsafeReceiver(address to);
    /// @dev The approval target `operator` is the holder itself.
    error InvalidOperator(address operator);

    // ---------------------------------------------------------------- errors: discount, settlement
    /// @dev `price` is above the `face` value being sold.
    error PriceAboveFace(uint256 price, uint256 face);
    /// @dev The discount offer's `expiry` is not in the future.
    error OfferExpiryInPast(uint256 expiry);
    /// @dev No open discount offer `offerId`.
    error OfferNotOpen(uint256 offerId);
    /// @dev Discount offer `offerId` expired at `expiry`.
    error OfferExpired(uint256 offerId, uint256 expiry);
    /// @dev Discount offer `offerId` is reserved for `buyer`, not `caller`.
    error OfferReservedForAnother(uint256 offerId, address buyer, address caller);
    /// @dev An offer reserved for `buyer`, who is not an active FACTOR and so could never buy it.
    error BuyerNotEligible(address buyer);
    /// @dev The certificate of discount offer `offerId` changed hands after the offer was made (even
    /// if it came back to the seller): the offer is void.
    error OfferStale(uint256 offerId);
    /// @dev `caller` did not make discount offer `offerId`.
    error NotOfferSeller(uint256 offerId, address caller);
    /// @dev A settlement batch of `size` is over the `max`.
    error BatchTooLarge(uint256 size, uint256 max);
    /// @dev `account` has nothing to withdraw.
    error NothingToWithdraw(address account);
    /// @dev The system is paused.
    error SystemPaused();
    /// @dev The system is not paused.
    error SystemNotPaused();
    /// @dev Split rules out of range: `minSplitUnit` zero or `maxSplitDepth` zero.
    error InvalidSplitRules(uint256 minSplitUnit, uint256 maxSplitDepth);

    // ---------------------------------------------------------------- events
    /// @dev Order `orderId` was opened and `escrowed` pulled from `issuer` into the ledger.
    event OrderOpened(
        uint256 indexed orderId,
        address indexed issuer,
        address indexed payee,
        uint128 escrowed,
        uint40 maturity,
        uint40 deadline,
        bytes32 invoiceHash,
        bytes32 warehouse,
        bytes32 goodsHash,
        uint64 expectedQuantity
    );
    /// @dev Receipt of `deliveredQuantity` was confirmed; root certificate `rootCertificateId` of
    /// `face` was minted to the payee and `refunded` (short delivery) returned to the issuer.
    event OrderConfirmed(
        uint256 indexed orderId,
        uint256 indexed rootCertificateId,
        uint64 deliveredQuantity,
        uint64 receivedAt,
        uint128 face,
        uint128 refunded
    );
    /// @dev Unconfirmed order `orderId` was cancelled and `refunded` returned to its issuer.
    event OrderCancelled(uint256 indexed orderId, address indexed issuer, uint128 refunded);
    /// @dev Certificate `certificateId` of order `orderId` was created for `holder` with `value`,
    /// split from `parentId` (0 for a root) at `depth`, maturing at `maturity`.
    event CertificateIssued(
        uint256 indexed certificateId,
        uint256 indexed orderId,
        uint256 indexed parentId,
        address holder,
        uint128 value,
        uint8 depth,
        uint40 maturity
    );
    /// @dev Certificate `certificateId` was settled: its `value` is owed to `holder` and paid in the
    /// same transaction, or credited for withdrawal if the token refuses the push ({PaymentCredited}).
    event CertificateSettled(uint256 indexed certificateId, uint256 indexed orderId, address indexed holder, uint128 value);
    /// @dev A regulator froze certificate `certificateId`, citing `reason`.
    event FreezeImposed(uint256 indexed certificateId, address indexed regulator, bytes32 reason);
    /// @dev A regulator lifted the freeze on certificate `certificateId`.
    event FreezeLifted(uint256 indexed certificateId, address indexed regulator);
    /// @dev `seller` offered `value` of `certificateId` for `price`, to `buyer` (zero: any factor), until `expiry`.
    event DiscountOffered(
        uint256 indexed offerId,
        uint256 indexed certificateId,
        address indexed seller,
        address buyer,
        uint128 value,
        uint128 price,
        uint40 expiry
    );
    /// @dev The seller withdrew discount offer `offerId`.
    event DiscountOfferCancelled(uint256 indexed offerId);
    /// @dev Discount offer `offerId` was bought: `buyer` paid `price` to `seller` and received `value`
    /// as `boughtCertificateId` (the same id if the whole certificate was sold); `annualRateBps` is
    /// the implied simple annual discount rate ((value - price) / price * 365 days / time left).
    event DiscountSold(
        uint256 indexed offerId,
        uint256 indexed certificateId,
        uint256 indexed boughtCertificateId,
        address seller,
        address buyer,
        uint128 value,
        uint128 price,
        uint32 annualRateBps
    );
    /// @dev A payment of `amount` to `account` could not be pushed and was credited for withdrawal.
    event PaymentCredited(address indexed account, uint256 indexed orderId, uint128 amount);
    /// @dev `account` withdrew its credited `amount`.
    event Withdrawn(address indexed account, uint128 amount);
    /// @dev The split rules were set.
    event SplitRulesChanged(uint96 minSplitUnit, uint8 maxSplitDepth);
    /// @dev `account` paused the system.
    event Paused(address indexed account);
    /// @dev `account` unpaused the system.
    event Unpaused(address indexed account);

    // ---------------------------------------------------------------- orders
    /// @notice Opens an order and escrows `amount` of the settlement token from the caller.
    /// @dev Requirements: not paused; caller an active ISSUER within its limit; `payee` an active
    /// holder; `amount` and `expectedQuantity` > 0; `deadline` in the future; `invoiceHash` not held
    /// by an open or confirmed order; `warehouse` registered and active in the receipt oracle.
    /// The caller must have approved the ledger for `amount`. Emits {OrderOpened}.
    /// @return orderId the new order's id (also the slot of its certificates)
    function openOrder(
        address payee,
        uint256 amount,
        uint40 maturity,
        bytes32 invoiceHash,
        bytes32 warehouse,
        bytes32 goodsHash,
        uint64 expectedQuantity,
        uint40 deadline
    ) external returns (uint256 orderId);

    /// @notice Called by the receipt oracle once a receipt attestation verified.
    /// @dev Requirements: not paused; caller is the oracle; order Open; warehouse and goods match;
    /// `receivedAt` not after the deadline; `quantity` > 0. Mints the root certificate of face
    /// `escrowed * min(quantity, expected) / expected`, refunds the rest, and pays at once if the
    /// order is already mature. Emits {OrderConfirmed}, {CertificateIssued} and ERC-721/3525 events.
    function confirmReceipt(uint256 orderId, bytes32 warehouse, bytes32 goodsHash, uint64 quantity, uint64 receivedAt)
        external
        returns (uint256 rootCertificateId);

    /// @notice Cancels an unconfirmed order and refunds the escrow, once no receipt made by its
    /// deadline can still be confirmed.
    /// @dev Requirements: not paused; caller is the order's issuer; order Open; the deadline plus the
    /// warehouse's freshness window passed (a receipt signed at the deadline stays valid that long).
    /// The order's invoice hash may be used again. Emits {OrderCancelled}.
    function cancelOrder(uint256 orderId) external;

    // ---------------------------------------------------------------- certificates
    /// @notice Splits certificate `certificateId` into parts kept by its holder: the certificate
    /// keeps `values[0]`, new certificates are minted for the rest.
    /// @dev Requirements: caller may move the whole certificate; its holder active with a holder
    /// role; 2..MAX_SPLIT_PARTS parts summing to its value, each at least the minimum unit; depth
    /// within the maximum. Emits {CertificateIssued} and {TransferValue} per new part.
    /// @return newIds ids of the new certificates, in the order of `values[1:]`
    function split(uint256 certificateId, uint256[] calldata values) external returns (uint256[] memory newIds);

    // ---------------------------------------------------------------- discount
    /// @notice Offers `value` of certificate `certificateId` for `price` to `buyer` (zero: any
    /// active factor) until `expiry`.
    /// @dev Requirements: not paused; caller the holder, active with a holder role; certificate
    /// movable; 0 < price <= value <= its value; expiry in the future; a reserved buyer an active
    /// FACTOR. Emits {DiscountOffered}.
    function offerDiscount(uint256 certificateId, uint256 value, uint256 price, address buyer, uint40 expiry)
        external
        returns (uint256 offerId);

    /// @notice Withdraws an open discount offer. Emits {DiscountOfferCancelled}.
    function cancelDiscountOffer(uint256 offerId) external;

    /// @notice Buys discount offer `offerId`: pays its price to the seller and receives its value,
    /// in one transaction (delivery versus payment).
    /// @dev Requirements: not paused; caller an active FACTOR (the reserved buyer if any); offer open
    /// and unexpired; seller still holds the certificate with enough value and is active with a
    /// holder role; the certificate movable. The caller must have approved the ledger for the
    /// price. A part bought (not the whole certificate) is a value transfer: a caller contract
    /// declaring IERC3525Receiver must accept it in `onERC3525Received`, else {UnsafeReceiver}.
    /// Emits {DiscountSold}.
    /// @return boughtCertificateId the certificate now held by the caller
    function buyDiscounted(uint256 offerId) external returns (uint256 boughtCertificateId);

    /// @notice The price of `face` due in `daysToMaturity` days at a simple `annualRateBps`:
    /// face / (1 + rate * days / 365), rounded down.
    function discountPrice(uint256 face, uint256 daysToMaturity, uint256 annualRateBps) external pure returns (uint256);

    // ---------------------------------------------------------------- regulator
    /// @notice Freezes certificate `certificateId`: it cannot move or settle until unfrozen.
    /// @dev Requirements: caller an active REGULATOR; certificate Live and not frozen. Emits {FreezeImposed}.
    function freeze(uint256 certificateId, bytes32 reason) external;

    /// @notice Lifts the freeze on certificate `certificateId`.
    /// @dev Requirements: caller an active REGULATOR; certificate frozen. Emits {FreezeLifted}.
    function unfreeze(uint256 certificateId) external;

    // ---------------------------------------------------------------- settlement
    /// @notice Pays each listed certificate's holder its value from escrow. Anyone may call.
    /// @dev Requirements: not paused; at most MAX_SETTLE_BATCH ids; each Live, matured and not
    /// frozen. A payment the token refuses is credited for {withdraw}. Emits {CertificateSettled}.
    function settle(uint256[] calldata certificateIds) external;

    /// @notice Withdraws the caller's credited payments, at most 2^128 - 1 per call (a larger
    /// credit, a sum of many, takes several calls).
    /// @dev Requirements: not paused; a credit. Emits {Withdrawn}.
    function withdraw() external returns (uint256 amount);

    // ---------------------------------------------------------------- admin
    /// @notice Sets the smallest part a split may create and the deepest a split may go.
    /// @dev Requirements: caller an active ADMIN; both non-zero. Emits {SplitRulesChanged}.
    function setSplitRules(uint96 minSplitUnit, uint8 maxSplitDepth) external;

    /// @notice Stops every order, certificate and payment operation (admin and regulator functions
    /// and views stay). Emits {Paused}.
    function pause() external;

    /// @notice Resumes operation. Emits {Unpaused}.
    function unpause() external;

    // ---------------------------------------------------------------- views
    function settlementToken() external view returns (address);
    function receiptOracle() external view returns (address);
    function order(uint256 orderId) external view returns (Order memory);
    function certificate(uint256 certificateId) external view returns (Certificate memory);
    function discountOffer(uint256 offerId) external view returns (DiscountOffer memory);
    function credit(address account) external view returns (uint256);
    /// @notice Sum of all credits not yet withdrawn (held by the ledger beside open escrow).
    function totalCredits() external view returns (uint256);
    function invoiceUsed(bytes32 invoiceHash) external view returns (bool);
    function splitRules() external view returns (uint96 minSplitUnit, uint8 maxSplitDepth);
    function paused() external view returns (bool);
    /// @notice Ids issued so far: orders are 1..orderCount, certificates 1..certificateCount.
    function counts() external view returns (uint256 orderCount, uint256 certificateCount, uint256 offerCount);
}
