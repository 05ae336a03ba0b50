// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title ERC-3525 token receiver (interface id 0x009ce20b), written from the EIP.
interface IERC3525Receiver {
    /// @notice Called on a contract receiving value; must return this function's selector.
    function onERC3525Received(address _operator, uint256 _fromTokenId, uint256 _toTokenId, uint256 _value, bytes calldata _data)
        external
        returns (bytes4);
}
