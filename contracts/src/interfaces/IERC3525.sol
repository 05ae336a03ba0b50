// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC721} from "@openzeppelin/contracts/token/ERC721/IERC721.sol";

/// @title ERC-3525 Semi-Fungible Token (https://eips.ethereum.org/EIPS/eip-3525)
/// @dev Interface id 0xd5358140. Written from the EIP. The EIP marks the value functions
/// `payable`; this system moves no ether, so they are not (selectors, hence the id, are the same).
interface IERC3525 is IERC721 {
    /// @dev Value of `_value` moved from `_fromTokenId` to `_toTokenId` (0 for mint and burn).
    event TransferValue(uint256 indexed _fromTokenId, uint256 indexed _toTokenId, uint256 _value);
    /// @dev `_operator` may now move up to `_value` out of `_tokenId`.
    event ApprovalValue(uint256 indexed _tokenId, address indexed _operator, uint256 _value);
    /// @dev `_tokenId`'s slot changed (from 0 on mint).
    event SlotChanged(uint256 indexed _tokenId, uint256 indexed _oldSlot, uint256 indexed _newSlot);

    /// @notice Decimals of a token's value (those of the settlement token).
    function valueDecimals() external view returns (uint8);

    /// @notice The value held by `_tokenId`.
    function balanceOf(uint256 _tokenId) external view returns (uint256);

    /// @notice The slot of `_tokenId` (here: the order id).
    function slotOf(uint256 _tokenId) external view returns (uint256);

    /// @notice Lets `_operator` move up to `_value` out of `_tokenId`; only its holder may grant it.
    function approve(uint256 _tokenId, address _operator, uint256 _value) external;

    /// @notice What `_operator` may still move out of `_tokenId`.
    function allowance(uint256 _tokenId, address _operator) external view returns (uint256);

    /// @notice Moves `_value` from `_fromTokenId` into `_toTokenId` of the same slot.
    function transferFrom(uint256 _fromTokenId, uint256 _toTokenId, uint256 _value) external;

    /// @notice Moves `_value` from `_fromTokenId` into a new token owned by `_to`.
    /// @return newTokenId the id of the new token
    function transferFrom(uint256 _fromTokenId, address _to, uint256 _value) external returns (uint256 newTokenId);
}
