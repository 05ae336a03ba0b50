// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC721Receiver} from "@openzeppelin/contracts/token/ERC721/IERC721Receiver.sol";
import {IERC3525Receiver} from "../../src/interfaces/IERC3525Receiver.sol";

/// @notice An ERC-721 receiver that answers `retval`, or reverts when `reverts` is set; it records the
/// last call so tests can check what the ledger passed.
contract ERC721ReceiverMock is IERC721Receiver {
    bytes4 private immutable _retval;
    bool private immutable _reverts;

    address public lastOperator;
    address public lastFrom;
    uint256 public lastTokenId;
    bytes public lastData;
    uint256 public calls;

    error ReceiverRefused();

    constructor(bytes4 retval, bool reverts) {
        _retval = retval;
        _reverts = reverts;
    }

    function onERC721Received(address operator, address from, uint256 tokenId, bytes calldata data)
        external
        returns (bytes4)
    {
        if (_reverts) revert ReceiverRefused();
        lastOperator = operator;
        lastFrom = from;
        lastTokenId = tokenId;
        lastData = data;
        ++calls;
        return _retval;
    }
}

/// @notice A contract with no receiver hooks at all.
contract PlainContract {
    function ping() external pure returns (bool) {
        return true;
    }
}

/// @notice An ERC-3525 receiver declaring the interface (ERC-165) that accepts or refuses value.
contract ERC3525ReceiverMock is IERC3525Receiver {
    bool private immutable _accept;

    uint256 public lastFromTokenId;
    uint256 public lastToTokenId;
    uint256 public lastValue;
    uint256 public calls;

    constructor(bool accept) {
        _accept = accept;
    }

    function supportsInterface(bytes4 interfaceId) external pure returns (bool) {
        return interfaceId == 0x01ffc9a7 || interfaceId == type(IERC3525Receiver).interfaceId;
    }

    function onERC3525Received(address, uint256 fromTokenId, uint256 toTokenId, uint256 value, bytes calldata)
        external
        returns (bytes4)
    {
        lastFromTokenId = fromTokenId;
        lastToTokenId = toTokenId;
        lastValue = value;
        ++calls;
        return _accept ? IERC3525Receiver.onERC3525Received.selector : bytes4(0xdeadbeef);
    }
}

/// @notice A contract whose fallback accepts every call and answers no data, as a Safe without a
/// fallback handler does. It declares nothing through ERC-165.
contract SilentFallback {
    fallback() external payable {}
}

/// @notice A contract whose fallback answers `true` (one ABI word) to every call, so a naive ERC-165
/// probe would think it supports every interface, 0xffffffff included.
contract AnswersTrueToEverything {
    fallback() external {
        assembly {
            mstore(0, 1)
            return(0, 32)
        }
    }
}

/// @notice Declares IERC3525Receiver, and answers every hook with the right selector but in 4 bytes,
/// not the 32 of an ABI-encoded bytes4.
contract ShortAnswerReceiver {
    function supportsInterface(bytes4 interfaceId) external pure returns (bool) {
        return interfaceId == 0x01ffc9a7 || interfaceId == type(IERC3525Receiver).interfaceId;
    }

    fallback() external {
        bytes4 selector = msg.sig;
        assembly {
            mstore(0, selector)
            return(0, 4)
        }
    }
}
