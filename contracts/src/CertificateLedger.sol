// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {IERC165} from "@openzeppelin/contracts/utils/introspection/IERC165.sol";
import {ERC165Checker} from "@openzeppelin/contracts/utils/introspection/ERC165Checker.sol";
import {IERC721} from "@openzeppelin/contracts/token/ERC721/IERC721.sol";
import {IERC721Receiver} from "@openzeppelin/contracts/token/ERC721/IERC721Receiver.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {ICertificateLedger} from "./interfaces/ICertificateLedger.sol";
import {IERC3525} from "./interfaces/IERC3525.sol";
import {IERC3525Receiver} from "./interfaces/IERC3525Receiver.sol";
import {IReceiptOracle} from "./interfaces/IReceiptOracle.sol";
import {ROLE_ADMIN, ROLE_ISSUER, ROLE_FACTOR, ROLE_REGULATOR} from "./interfaces/IParticipantRegistry.sol";
import {ParticipantRegistry} from "./ParticipantRegistry.sol";

/// @title CertificateLedger
/// @notice Orders, escrow, ERC-3525 debt certificates, discount sales and settlement.
/// @dev Storage layout (each line one slot):
///   _config                paused (8) | maxSplitDepth (8) | minSplitUnit (96) | orderCount (64) | certificateCount (64)
///   _offerCount, _totalCredits
///   _certs[id] slot 0      holder (160) | maturity (40) | epoch (32) | depth (8) | status (8) | frozen (8)
///   _certs[id] slot 1      value (128) | orderId (64) | parentId (64)
///   _orders[id]            7 slots, see {ICertificateLedger.Order}
///   _offers[id]            3 slots: certificateId | seller | holderEpoch, buyer | expiry | open, value | price
/// A whole transfer touches the config slot, the certificate's slot 0 and the two holders' records.
/// `epoch` counts holder changes: approvals are keyed by it, so a transfer voids them all without a
/// loop and an approval can never revive when a certificate returns to an earlier holder.
contract CertificateLedger is ICertificateLedger, ParticipantRegistry, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice Most parts one {split} may create.
    uint256 public constant MAX_SPLIT_PARTS = 16;
    /// @notice Most certificates one {settle} call may pay.
    uint256 public constant MAX_SETTLE_BATCH = 64;

    bytes4 private constant _IERC3525_ID = 0xd5358140;
    bytes4 private constant _IERC3525_RECEIVER_ID = 0x009ce20b;

    struct Config {
        bool paused;
        uint8 maxSplitDepth;
        uint96 minSplitUnit;
        uint64 orderCount;
        uint64 certificateCount;
    }

    struct Cert {
        address holder;
        uint40 maturity;
        uint32 epoch;
        uint8 depth;
        CertificateStatus status;
        bool frozen;
        uint128 value;
        uint64 orderId;
        uint64 parentId;
    }

    IERC20 private immutable _token;
    address private immutable _oracle;
    uint8 private immutable _valueDecimals;

    Config private _config;
    uint256 private _offerCount;
    uint256 private _totalCredits;

    mapping(uint256 orderId => Order) private _orders;
    mapping(uint256 certificateId => Cert) private _certs;
    mapping(uint256 offerId => DiscountOffer) private _offers;
    mapping(bytes32 invoiceHash => bool) private _invoiceUsed;
    mapping(address account => uint256) private _credits;
    mapping(uint256 certificateId => mapping(uint32 epoch => address)) private _tokenApprovals;
    mapping(uint256 certificateId => mapping(uint32 epoch => mapping(address operator => uint256))) private _allowances;
    mapping(address holder => mapping(address operator => bool)) private _operatorApprovals;

    /// @param token the settlement token (a tokenized deposit); one ledger per currency
    /// @param oracle the receipt oracle, the only caller of {confirmReceipt}
    /// @param admin the consortium operator
    /// @param adminEntityId the operator's entity id
    /// @param minSplitUnit the smallest part a split may create
    /// @param maxSplitDepth how many times a line of certificates may be split
    constructor(
        IERC20 token,
        address oracle,
        address admin,
        bytes32 adminEntityId,
        uint96 minSplitUnit,
        uint8 maxSplitDepth
    ) ParticipantRegistry(admin, adminEntityId) {
        if (address(token) == address(0) || oracle == address(0)) revert InvalidDeployment(address(token), oracle);
        _token = token;
        _oracle = oracle;
        _valueDecimals = IERC20Metadata(address(token)).decimals();
        _setSplitRules(minSplitUnit, maxSplitDepth);
    }

    modifier whenNotPaused() {
        if (_config.paused) revert SystemPaused();
        _;
    }

    // =================================================================== orders

    /// @inheritdoc ICertificateLedger
    function openOrder(
        address payee,
        uint256 amount,
        uint40 maturity,
        bytes32 invoiceHash,
        bytes32 warehouse,
        bytes32 goodsHash,
        uint64 expectedQuantity,
        uint40 deadline
    ) external nonReentrant whenNotPaused returns (uint256 orderId) {
        _checkRole(msg.sender, ROLE_ISSUER);
        if (amount == 0 || expectedQuantity == 0) revert ZeroAmount();
        if (amount > type(uint128).max) revert AmountTooLarge(amount);
        // slither-disable-next-line timestamp
        if (deadline <= block.timestamp) revert DeadlineInPast(deadline, block.timestamp);
        if (!_mayHold(_records[payee])) revert PayeeNotEligible(payee);
        if (invoiceHash == bytes32(0) || _invoiceUsed[invoiceHash]) revert DuplicateInvoice(invoiceHash);
        // An order no receipt can confirm would only lock the payee's goods until the issuer cancels.
        if (!IReceiptOracle(_oracle).warehouse(warehouse).active) revert UnknownWarehouse(warehouse);
        _addOutstanding(msg.sender, amount);

        _invoiceUsed[invoiceHash] = true;
        orderId = ++_config.orderCount;
        _orders[orderId] = Order({
            issuer: msg.sender,
            maturity: maturity,
            deadline: deadline,
            status: OrderStatus.Open,
            payee: payee,
            expectedQuantity: expectedQuantity,
            escrowed: uint128(amount),
            paid: 0,
            refunded: 0,
            deliveredQuantity: 0,
            rootCertificateId: 0,
            invoiceHash: invoiceHash,
            warehouse: warehouse,
            goodsHash: goodsHash
        });
        emit OrderOpened(
            orderId, msg.sender, payee, uint128(amount), maturity, deadline, invoiceHash, warehouse, goodsHash, expectedQuantity
        );
        _token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @inheritdoc ICertificateLedger
    function confirmReceipt(uint256 orderId, bytes32 warehouse, bytes32 goodsHash, uint64 quantity, uint64 receivedAt)
        external
        nonReentrant
        whenNotPaused
        returns (uint256 rootCertificateId)
    {
        if (msg.sender != _oracle) revert NotReceiptOracle(msg.sender);
        Order storage o = _openOrder(orderId);
        if (warehouse != o.warehouse || goodsHash != o.goodsHash) {
            revert ReceiptDoesNotMatchOrder(orderId, warehouse, goodsHash);
        }
        if (receivedAt > o.deadline) revert ReceiptAfterDeadline(orderId, receivedAt, o.deadline);
        if (quantity == 0) revert ZeroAmount();
        uint128 face;
        uint128 refund;
        (rootCertificateId, face, refund) = _confirm(o, orderId, quantity);
        emit OrderConfirmed(orderId, rootCertificateId, quantity, receivedAt, face, refund);
        _releaseAfterConfirm(o, orderId, rootCertificateId, face, refund);
    }

    /// @dev Books the confirmation and mints the root certificate of the delivered share.
    function _confirm(Order storage o, uint256 orderId, uint64 quantity)
        private
        returns (uint256 rootId, uint128 face, uint128 refund)
    {
        address payee = o.payee;
        if (!_mayHold(_records[payee])) revert ReceiverNotEligible(payee);
        uint64 expected = o.expectedQuantity;
        uint128 escrowed = o.escrowed;
        // Short delivery pays pro rata; over-delivery is not the issuer's debt.
        face = quantity >= expected ? escrowed : uint128(uint256(escrowed) * quantity / expected);
        refund = escrowed - face;
        o.status = OrderStatus.Confirmed;
        o.deliveredQuantity = quantity;
        o.refunded = refund;
        rootId = _mint(payee, orderId, 0, 0, o.maturity, face);
        o.rootCertificateId = uint64(rootId);
    }

    /// @dev Refunds a short delivery and, for an order already mature (pay on receipt), settles the
    /// root certificate at once. Every book is written before the first token call.
    function _releaseAfterConfirm(Order storage o, uint256 orderId, uint256 rootId, uint128 face, uint128 refund)
        private
    {
        address issuer = o.issuer;
        if (refund != 0) _releaseOutstanding(issuer, refund);
        // slither-disable-next-line timestamp
        bool payNow = o.maturity <= block.timestamp;
        if (payNow) _settle(rootId);
        _pay(issuer, orderId, refund);
        if (payNow) _pay(o.payee, orderId, face);
    }

    /// @inheritdoc ICertificateLedger
    function cancelOrder(uint256 orderId) external nonReentrant whenNotPaused {
        Order storage o = _openOrder(orderId);
        address issuer = o.issuer;
        if (msg.sender != issuer) revert NotOrderIssuer(orderId, msg.sender);
        // Without the freshness window an issuer, who sees its own warehouse's receipts first, could
        // cancel between the deadline and the relayer's confirmation of goods it already received.
        uint256 cancellableAfter = uint256(o.deadline) + IReceiptOracle(_oracle).warehouse(o.warehouse).freshness;
        // slither-disable-next-line timestamp
        if (block.timestamp <= cancellableAfter) revert DeadlineNotPassed(orderId, cancellableAfter);
        uint128 refund = o.escrowed;
        o.status = OrderStatus.Cancelled;
        o.refunded = refund;
        // Nothing was financed on it: the issuer may open the real order for this invoice again.
        _invoiceUsed[o.invoiceHash] = false;
        _releaseOutstanding(issuer, refund);
        emit OrderCancelled(orderId, issuer, refund);
        _pay(issuer, orderId, refund);
    }

    // =================================================================== ERC-721

    /// @inheritdoc IERC721
    function balanceOf(address holder) external view returns (uint256) {
        if (holder == address(0)) revert InvalidReceiver(holder);
        return _records[holder].certificateCount;
    }

    /// @inheritdoc IERC721
    function ownerOf(uint256 certificateId) external view returns (address) {
        return _existing(certificateId).holder;
    }

    /// @inheritdoc IERC721
    function transferFrom(address from, address to, uint256 certificateId) public whenNotPaused {
        Cert storage c = _movable(certificateId);
        address holder = c.holder;
        if (holder != from) revert IncorrectHolder(from, certificateId, holder);
        _authorizeWhole(c, certificateId, holder);
        _moveWhole(c, certificateId, holder, to);
    }

    /// @inheritdoc IERC721
    function safeTransferFrom(address from, address to, uint256 certificateId) external {
        safeTransferFrom(from, to, certificateId, "");
    }

    /// @inheritdoc IERC721
    function safeTransferFrom(address from, address to, uint256 certificateId, bytes memory data) public {
        transferFrom(from, to, certificateId);
        if (to.code.length != 0) {
            _checkReceiverAnswer(
                to,
                abi.encodeCall(IERC721Receiver.onERC721Received, (msg.sender, from, certificateId, data)),
                IERC721Receiver.onERC721Received.selector
            );
        }
    }

    /// @inheritdoc IERC721
    function approve(address to, uint256 certificateId) external {
        Cert storage c = _existing(certificateId);
        address holder = c.holder;
        _authorizeApproval(certificateId, holder);
        if (to == holder) revert InvalidOperator(to);
        _tokenApprovals[certificateId][c.epoch] = to;
        emit Approval(holder, to, certificateId);
    }

    /// @inheritdoc IERC721
    function setApprovalForAll(address operator, bool approved) external {
        if (operator == msg.sender || operator == address(0)) revert InvalidOperator(operator);
        _operatorApprovals[msg.sender][operator] = approved;
        emit ApprovalForAll(msg.sender, operator, approved);
    }

    /// @inheritdoc IERC721
    function getApproved(uint256 certificateId) external view returns (address) {
        Cert storage c = _existing(certificateId);
        return _tokenApprovals[certificateId][c.epoch];
    }

    /// @inheritdoc IERC721
    function isApprovedForAll(address holder, address operator) external view returns (bool) {
        return _operatorApprovals[holder][operator];
    }

    /// @notice Token name (ERC-721 metadata style; the metadata interface is not claimed).
    function name() external pure returns (string memory) {
        return "certledger Digital Debt Certificate";
    }

    /// @notice Token symbol.
    function symbol() external pure returns (string memory) {
        return "DDC";
    }

    // =================================================================== ERC-3525

    /// @inheritdoc IERC3525
    function valueDecimals() external view returns (uint8) {
        return _valueDecimals;
    }

    /// @inheritdoc IERC3525
    function balanceOf(uint256 certificateId) external view returns (uint256) {
        return _existing(certificateId).value;
    }

    /// @inheritdoc IERC3525
    function slotOf(uint256 certificateId) external view returns (uint256) {
        return _existing(certificateId).orderId;
    }

    /// @inheritdoc IERC3525
    function approve(uint256 certificateId, address operator, uint256 value) external {
        Cert storage c = _existing(certificateId);
        address holder = c.holder;
        _authorizeApproval(certificateId, holder);
        if (operator == holder || operator == address(0)) revert InvalidOperator(operator);
        _allowances[certificateId][c.epoch][operator] = value;
        emit ApprovalValue(certificateId, operator, value);
    }

    /// @inheritdoc IERC3525
    function allowance(uint256 certificateId, address operator) external view returns (uint256) {
        Cert storage c = _existing(certificateId);
        return _allowances[certificateId][c.epoch][operator];
    }

    /// @inheritdoc IERC3525
    /// @dev Merge: value moves between two live certificates of one order. Requirements: not paused;
    /// both movable; caller the holder, approved, or within its allowance (an operator active); the
    /// source's holder active with a holder role; the destination's holder may hold.
    function transferFrom(uint256 fromId, uint256 toId, uint256 value) external whenNotPaused {
        if (fromId == toId) revert SelfTransfer(fromId);
        if (value == 0) revert ZeroAmount();
        Cert storage src = _movable(fromId);
        Cert storage dst = _movable(toId);
        if (src.orderId != dst.orderId) revert SlotMismatch(fromId, toId);
        address holder = src.holder;
        _spendValue(src, fromId, holder, value);
        _checkHolder(_records[holder], holder);
        address receiver = dst.holder;
        if (receiver != holder && !_mayHold(_records[receiver])) revert ReceiverNotEligible(receiver);

        uint128 balance = src.value;
        if (balance < value) revert InsufficientValue(fromId, balance, value);
        unchecked {
            src.value = balance - uint128(value);
        }
        dst.value += uint128(value);
        emit TransferValue(fromId, toId, value);
        _checkOnERC3525Received(receiver, fromId, toId, value);
    }

    /// @inheritdoc IERC3525
    /// @dev Split to a new holder. Requirements: not paused; movable; caller the holder, approved,
    /// or within its allowance (an operator active); holder active with a holder role; `to` may hold;
    /// split rules.
    function transferFrom(uint256 fromId, address to, uint256 value)
        external
        whenNotPaused
        returns (uint256 newId)
    {
        if (value == 0) revert ZeroAmount();
        Cert storage src = _movable(fromId);
        address holder = src.holder;
        _spendValue(src, fromId, holder, value);
        _checkHolder(_records[holder], holder);
        newId = _splitOff(src, fromId, to, value);
        _checkOnERC3525Received(to, fromId, newId, value);
    }

    // =================================================================== split

    /// @inheritdoc ICertificateLedger
    function split(uint256 certificateId, uint256[] calldata values)
        external
        whenNotPaused
        returns (uint256[] memory newIds)
    {
        uint256 parts = values.length;
        if (parts < 2 || parts > MAX_SPLIT_PARTS) revert SplitPartCount(parts, MAX_SPLIT_PARTS);
        Cert storage src = _movable(certificateId);
        address holder = src.holder;
        _authorizeWhole(src, certificateId, holder);
        _checkHolder(_records[holder], holder);
        uint256 sum = 0;
        for (uint256 i = 0; i < parts; ++i) {
            // Saturating: parts summing past 2^256 - 1 are a mismatch like any other, not a panic.
            unchecked {
                uint256 next = sum + values[i];
                sum = next < sum ? type(uint256).max : next;
            }
        }
        if (sum != src.value) revert SplitPartsMismatch(certificateId, sum, src.value);
        // The kept part is checked here; each new part is checked by _splitOff.
        uint256 minUnit = _config.minSplitUnit;
        if (values[0] < minUnit) revert SplitBelowMinimumUnit(certificateId, values[0], minUnit);
        newIds = new uint256[](parts - 1);
        for (uint256 i = 1; i < parts; ++i) {
            newIds[i - 1] = _splitOff(src, certificateId, holder, values[i]);
        }
    }

    // =================================================================== discount

    /// @inheritdoc ICertificateLedger
    function offerDiscount(uint256 certificateId, uint256 value, uint256 price, address buyer, uint40 expiry)
        external
        whenNotPaused
        returns (uint256 offerId)
    {
        Cert storage c = _movable(certificateId);
        if (msg.sender != c.holder) revert NotApprovedOrHolder(msg.sender, certificateId);
        _checkHolder(_records[msg.sender], msg.sender);
        if (value == 0 || price == 0) revert ZeroAmount();
        if (c.value < value) revert InsufficientValue(certificateId, c.value, value);
        if (price > value) revert PriceAboveFace(price, value);
        // slither-disable-next-line timestamp
        if (expiry <= block.timestamp) revert OfferExpiryInPast(expiry);
        if (value < c.value) _checkSplitRules(c, certificateId, value);
        // A reservation for someone who cannot buy would sit open and unbuyable until it expires.
        if (buyer != address(0) && !_mayBuy(_records[buyer])) revert BuyerNotEligible(buyer);

        offerId = ++_offerCount;
        _offers[offerId] = DiscountOffer({
            certificateId: uint64(certificateId),
            seller: msg.sender,
            holderEpoch: c.epoch,
            buyer: buyer,
            expiry: expiry,
            open: true,
            value: uint128(value),
            price: uint128(price)
        });
        emit DiscountOffered(offerId, certificateId, msg.sender, buyer, uint128(value), uint128(price), expiry);
    }

    /// @inheritdoc ICertificateLedger
    function cancelDiscountOffer(uint256 offerId) external {
        DiscountOffer storage f = _offers[offerId];
        if (!f.open) revert OfferNotOpen(offerId);
        if (msg.sender != f.seller) revert NotOfferSeller(offerId, msg.sender);
        f.open = false;
        emit DiscountOfferCancelled(offerId);
    }

    /// @inheritdoc ICertificateLedger
    function buyDiscounted(uint256 offerId) external nonReentrant whenNotPaused returns (uint256 boughtId) {
        DiscountOffer storage f = _offers[offerId];
        if (!f.open) revert OfferNotOpen(offerId);
        // slither-disable-next-line timestamp
        if (f.expiry <= block.timestamp) revert OfferExpired(offerId, f.expiry);
        address buyer = f.buyer;
        if (buyer != address(0) && buyer != msg.sender) revert OfferReservedForAnother(offerId, buyer, msg.sender);
        _checkRole(msg.sender, ROLE_FACTOR);

        uint256 certificateId = f.certificateId;
        address seller = f.seller;
        uint128 value = f.value;
        uint128 price = f.price;
        Cert storage c = _movable(certificateId);
        if (c.holder != seller) revert IncorrectHolder(seller, certificateId, c.holder);
        if (c.epoch != f.holderEpoch) revert OfferStale(offerId);
        _checkHolder(_records[seller], seller);
        if (c.value < value) revert InsufficientValue(certificateId, c.value, value);

        f.open = false;
        uint256 timeLeft = c.maturity - block.timestamp;
        if (value == c.value) {
            _moveWhole(c, certificateId, seller, msg.sender);
            boughtId = certificateId;
        } else {
            boughtId = _splitOff(c, certificateId, msg.sender, value);
        }
        emit DiscountSold(offerId, certificateId, boughtId, seller, msg.sender, value, price, _annualRateBps(value, price, timeLeft));
        // A part bought is value moved to a new certificate, as with transferFrom(id, to, value).
        if (boughtId != certificateId) _checkOnERC3525Received(msg.sender, certificateId, boughtId, value);
        _token.safeTransferFrom(msg.sender, seller, price);
    }

    /// @inheritdoc ICertificateLedger
    function discountPrice(uint256 face, uint256 daysToMaturity, uint256 annualRateBps) external pure returns (uint256) {
        return face * 365 * 10_000 / (365 * 10_000 + annualRateBps * daysToMaturity);
    }

    // =================================================================== regulator

    /// @inheritdoc ICertificateLedger
    function freeze(uint256 certificateId, bytes32 reason) external onlyRole(ROLE_REGULATOR) {
        Cert storage c = _existing(certificateId);
        if (c.status != CertificateStatus.Live) revert CertificateAlreadySettled(certificateId);
        if (c.frozen) revert CertificateFrozen(certificateId);
        c.frozen = true;
        emit FreezeImposed(certificateId, msg.sender, reason);
    }

    /// @inheritdoc ICertificateLedger
    function unfreeze(uint256 certificateId) external onlyRole(ROLE_REGULATOR) {
        Cert storage c = _existing(certificateId);
        if (!c.frozen) revert CertificateNotFrozen(certificateId);
        c.frozen = false;
        emit FreezeLifted(certificateId, msg.sender);
    }

    // =================================================================== settlement

    /// @inheritdoc ICertificateLedger
    function settle(uint256[] calldata certificateIds) external nonReentrant whenNotPaused {
        uint256 n = certificateIds.length;
        if (n == 0 || n > MAX_SETTLE_BATCH) revert BatchTooLarge(n, MAX_SETTLE_BATCH);
        // Two passes so that every certificate's books are written before the first token call.
        address[] memory holders = new address[](n);
        uint128[] memory values = new uint128[](n);
        uint256[] memory orderIds = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            (holders[i], values[i], orderIds[i]) = _settle(certificateIds[i]);
        }
        for (uint256 i; i < n; ++i) {
            _pay(holders[i], orderIds[i], values[i]);
        }
    }

    /// @inheritdoc ICertificateLedger
    function withdraw() external nonReentrant whenNotPaused returns (uint256 amount) {
        amount = _credits[msg.sender];
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        // Withdrawn carries a uint128 like every amount the ledger emits; a credit beyond it (only
        // a sum of many credits can be) is paid out over several withdrawals, each one logged whole.
        if (amount > type(uint128).max) amount = type(uint128).max;
        _credits[msg.sender] -= amount;
        _totalCredits -= amount;
        emit Withdrawn(msg.sender, uint128(amount));
        _token.safeTransfer(msg.sender, amount);
    }

    // =================================================================== admin

    /// @inheritdoc ICertificateLedger
    function setSplitRules(uint96 minSplitUnit, uint8 maxSplitDepth) external onlyRole(ROLE_ADMIN) {
        _setSplitRules(minSplitUnit, maxSplitDepth);
    }

    /// @inheritdoc ICertificateLedger
    function pause() external onlyRole(ROLE_ADMIN) {
        if (_config.paused) revert SystemPaused();
        _config.paused = true;
        emit Paused(msg.sender);
    }

    /// @inheritdoc ICertificateLedger
    function unpause() external onlyRole(ROLE_ADMIN) {
        if (!_config.paused) revert SystemNotPaused();
        _config.paused = false;
        emit Unpaused(msg.sender);
    }

    // =================================================================== views

    /// @inheritdoc IERC165
    function supportsInterface(bytes4 interfaceId) external pure returns (bool) {
        return interfaceId == type(IERC165).interfaceId || interfaceId == type(IERC721).interfaceId
            || interfaceId == _IERC3525_ID;
    }

    function settlementToken() external view returns (address) {
        return address(_token);
    }

    function receiptOracle() external view returns (address) {
        return _oracle;
    }

    function order(uint256 orderId) external view returns (Order memory) {
        return _orders[orderId];
    }

    function certificate(uint256 certificateId) external view returns (Certificate memory) {
        Cert storage c = _certs[certificateId];
        return Certificate({
            holder: c.holder,
            maturity: c.maturity,
            depth: c.depth,
            status: c.status,
            frozen: c.frozen,
            value: c.value,
            orderId: c.orderId,
            parentId: c.parentId
        });
    }

    function discountOffer(uint256 offerId) external view returns (DiscountOffer memory) {
        return _offers[offerId];
    }

    function credit(address account) external view returns (uint256) {
        return _credits[account];
    }

    function totalCredits() external view returns (uint256) {
        return _totalCredits;
    }

    function invoiceUsed(bytes32 invoiceHash) external view returns (bool) {
        return _invoiceUsed[invoiceHash];
    }

    function splitRules() external view returns (uint96, uint8) {
        return (_config.minSplitUnit, _config.maxSplitDepth);
    }

    function paused() external view returns (bool) {
        return _config.paused;
    }

    function counts() external view returns (uint256, uint256, uint256) {
        return (_config.orderCount, _config.certificateCount, _offerCount);
    }

    // =================================================================== internal

    function _openOrder(uint256 orderId) private view returns (Order storage o) {
        o = _orders[orderId];
        OrderStatus status = o.status;
        if (status == OrderStatus.None) revert UnknownOrder(orderId);
        if (status != OrderStatus.Open) revert OrderNotOpen(orderId, status);
    }

    function _existing(uint256 certificateId) private view returns (Cert storage c) {
        c = _certs[certificateId];
        if (c.status == CertificateStatus.None) revert UnknownCertificate(certificateId);
    }

    /// @dev The certificate, if it may move now: live, not frozen, not matured.
    function _movable(uint256 certificateId) private view returns (Cert storage c) {
        c = _certs[certificateId];
        CertificateStatus status = c.status;
        if (status != CertificateStatus.Live) {
            if (status == CertificateStatus.None) revert UnknownCertificate(certificateId);
            revert CertificateAlreadySettled(certificateId);
        }
        if (c.frozen) revert CertificateFrozen(certificateId);
        // slither-disable-next-line timestamp
        if (block.timestamp >= c.maturity) revert CertificateMatured(certificateId, c.maturity);
    }

    function _isApprovedForWhole(address operator, address holder, Cert storage c, uint256 certificateId)
        private
        view
        returns (bool)
    {
        return _operatorApprovals[holder][operator] || _tokenApprovals[certificateId][c.epoch] == operator;
    }

    /// @dev Lets `msg.sender` move the whole certificate: its holder, or an active operator the
    /// holder approved for it or for all its certificates.
    function _authorizeWhole(Cert storage c, uint256 certificateId, address holder) private view {
        if (msg.sender == holder) return;
        if (!_isApprovedForWhole(msg.sender, holder, c, certificateId)) {
            revert NotApprovedOrHolder(msg.sender, certificateId);
        }
        _checkActive(msg.sender);
    }

    /// @dev Only the holder grants approvals on its certificate, ERC-721 and value alike (both
    /// standards say who must be refused, not who must be let in). An approval lasts as long as
    /// the holder's tenure (the epoch), not as long as its grantor's authority: one granted by an
    /// operator or approved address would outlive the holder's revoking that operator, and a
    /// compromised operator key could keep the whole value through an allowance it gave itself or
    /// an accomplice. Operators and approved addresses still move what they are approved for.
    /// The holder itself need not be active: an approval moves nothing, and every move it allows
    /// checks the holder again ({_checkHolder}), so a suspended or role-less holder's approval is
    /// inert until it may hold again. It may still revoke or lower approvals, which it should be able
    /// to do while suspended (say, after its operator's key was compromised).
    function _authorizeApproval(uint256 certificateId, address holder) private view {
        if (msg.sender != holder) revert NotApprovedOrHolder(msg.sender, certificateId);
    }

    /// @dev Lets `msg.sender` move `value` out of `c`: the holder, an approved operator, or an
    /// operator within its value allowance (which is spent). A non-holder must be active.
    function _spendValue(Cert storage c, uint256 certificateId, address holder, uint256 value) private {
        if (msg.sender == holder) return;
        if (!_isApprovedForWhole(msg.sender, holder, c, certificateId)) {
            mapping(address => uint256) storage allowances = _allowances[certificateId][c.epoch];
            uint256 allowed = allowances[msg.sender];
            if (allowed < value) revert InsufficientAllowance(msg.sender, certificateId, allowed, value);
            if (allowed != type(uint256).max) {
                unchecked {
                    allowances[msg.sender] = allowed - value;
                }
                emit ApprovalValue(certificateId, msg.sender, allowed - value);
            }
        }
        _checkActive(msg.sender);
    }

    /// @dev Moves the whole certificate from `holder` to `to` after the caller's authority was
    /// checked: holder active with a holder role, `to` eligible; bumps the epoch, voiding approvals.
    function _moveWhole(Cert storage c, uint256 certificateId, address holder, address to) private {
        if (to == address(0)) revert InvalidReceiver(to);
        Record storage from = _records[holder];
        _checkHolder(from, holder);
        Record storage dest = _records[to];
        if (!_mayHold(dest)) revert ReceiverNotEligible(to);
        from.certificateCount -= 1;
        dest.certificateCount += 1;
        c.holder = to;
        unchecked {
            c.epoch += 1;
        }
        emit Transfer(holder, to, certificateId);
    }

    /// @dev Splits `value` off `src` into a new certificate for `to`, under the split rules.
    function _splitOff(Cert storage src, uint256 fromId, address to, uint256 value) private returns (uint256 newId) {
        if (to == address(0)) revert InvalidReceiver(to);
        uint128 balance = src.value;
        if (balance < value) revert InsufficientValue(fromId, balance, value);
        _checkSplitRules(src, fromId, value);
        if (!_mayHold(_records[to])) revert ReceiverNotEligible(to);
        unchecked {
            src.value = balance - uint128(value);
        }
        newId = _mint(to, src.orderId, uint64(fromId), src.depth + 1, src.maturity, uint128(value));
        emit TransferValue(fromId, newId, value);
    }

    function _checkSplitRules(Cert storage src, uint256 fromId, uint256 value) private view {
        Config storage cfg = _config;
        uint256 minUnit = cfg.minSplitUnit;
        uint256 remainder = src.value - value;
        if (value < minUnit) revert SplitBelowMinimumUnit(fromId, value, minUnit);
        if (remainder != 0 && remainder < minUnit) revert SplitBelowMinimumUnit(fromId, remainder, minUnit);
        if (src.depth >= cfg.maxSplitDepth) revert SplitDepthExceeded(fromId, src.depth, cfg.maxSplitDepth);
    }

    /// @dev Creates certificate `id` for `to`. ERC-3525 order of events: Transfer (mint),
    /// SlotChanged, then TransferValue(0, id, value) for a root (a split emits its own).
    function _mint(address to, uint256 orderId, uint64 parentId, uint8 depth, uint40 maturity, uint128 value)
        private
        returns (uint256 id)
    {
        id = ++_config.certificateCount;
        _certs[id] = Cert({
            holder: to,
            maturity: maturity,
            epoch: 0,
            depth: depth,
            status: CertificateStatus.Live,
            frozen: false,
            value: value,
            orderId: uint64(orderId),
            parentId: parentId
        });
        _records[to].certificateCount += 1;
        emit Transfer(address(0), to, id);
        emit SlotChanged(id, 0, orderId);
        if (parentId == 0) emit TransferValue(0, id, value);
        emit CertificateIssued(id, orderId, parentId, to, value, depth, maturity);
    }

    /// @dev Marks a matured, unfrozen, live certificate settled and books its payment; the caller pays.
    function _settle(uint256 certificateId) private returns (address holder, uint128 value, uint256 orderId) {
        Cert storage c = _certs[certificateId];
        CertificateStatus status = c.status;
        if (status == CertificateStatus.None) revert UnknownCertificate(certificateId);
        if (status == CertificateStatus.Settled) revert CertificateAlreadySettled(certificateId);
        if (c.frozen) revert CertificateFrozen(certificateId);
        // slither-disable-next-line timestamp
        if (block.timestamp < c.maturity) revert CertificateNotMatured(certificateId, c.maturity);

        c.status = CertificateStatus.Settled;
        value = c.value;
        holder = c.holder;
        orderId = c.orderId;
        Order storage o = _orders[orderId];
        o.paid += value;
        _releaseOutstanding(o.issuer, value);
        emit CertificateSettled(certificateId, orderId, holder, value);
    }

    /// @dev Pushes `amount` to `to`; if the token refuses (a blocked account, say), credits it for
    /// {withdraw} instead so one bad recipient cannot hold up a settlement batch.
    function _pay(address to, uint256 orderId, uint128 amount) private returns (bool pushed) {
        if (amount == 0) return true;
        pushed = _token.trySafeTransfer(to, amount);
        if (!pushed) {
            _credits[to] += amount;
            // slither-disable-next-line costly-loop
            _totalCredits += amount;
            emit PaymentCredited(to, orderId, amount);
        }
    }

    function _setSplitRules(uint96 minSplitUnit, uint8 maxSplitDepth) private {
        if (minSplitUnit == 0 || maxSplitDepth == 0) revert InvalidSplitRules(minSplitUnit, maxSplitDepth);
        _config.minSplitUnit = minSplitUnit;
        _config.maxSplitDepth = maxSplitDepth;
        emit SplitRulesChanged(minSplitUnit, maxSplitDepth);
    }

    /// @dev ERC-3525: a contract receiving value that declares IERC3525Receiver must accept it.
    /// The declaration is read with ERC-165's own detection ({ERC165Checker}: bounded static calls
    /// whose answers are length-checked), so a contract that answers no data or no bool (a wallet
    /// whose fallback accepts every call) does not declare it and receives value like an account.
    function _checkOnERC3525Received(address to, uint256 fromId, uint256 toId, uint256 value) private {
        if (to.code.length == 0) return;
        if (!ERC165Checker.supportsInterface(to, _IERC3525_RECEIVER_ID)) return;
        _checkReceiverAnswer(
            to,
            abi.encodeCall(IERC3525Receiver.onERC3525Received, (msg.sender, fromId, toId, value, "")),
            IERC3525Receiver.onERC3525Received.selector
        );
    }

    /// @dev Calls receiver hook `callData` on `to`; reverts with {UnsafeReceiver} unless the call
    /// succeeds and its answer's first word is `selector`. A low-level call rather than a typed one:
    /// Solidity decodes a typed call's answer outside try/catch, so an answer of no or short data
    /// would revert the move with no reason at all instead of naming the receiver.
    function _checkReceiverAnswer(address to, bytes memory callData, bytes4 selector) private {
        // slither-disable-next-line low-level-calls
        (bool ok, bytes memory answer) = to.call(callData);
        if (!ok || answer.length < 32 || abi.decode(answer, (bytes32)) != bytes32(selector)) {
            revert UnsafeReceiver(to);
        }
    }

    /// @dev Simple annual rate in basis points implied by buying `value` due in `timeLeft` seconds
    /// for `price`; saturates at uint32 max.
    function _annualRateBps(uint256 value, uint256 price, uint256 timeLeft) private pure returns (uint32) {
        uint256 rate = (value - price) * 10_000 * 365 days / (price * timeLeft);
        // slither-disable-next-line timestamp
        return rate > type(uint32).max ? type(uint32).max : uint32(rate);
    }
}
