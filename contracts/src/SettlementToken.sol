// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title SettlementToken
/// @notice A plain ERC-20 standing in for a bank's tokenized deposit (2 decimals: yuan and fen), for
/// tests and the demo. Like a real deposit token it has an issuing bank that mints and can block an
/// account (sanctions, court order), which is what makes a pushed payment fail in practice.
contract SettlementToken is ERC20 {
    /// @dev `caller` is not the issuing bank.
    error NotIssuingBank(address caller);
    /// @dev `account` is blocked by the issuing bank.
    error AccountBlocked(address account);

    /// @dev The bank blocked (`blocked`) or unblocked `account`.
    event BlockChanged(address indexed account, bool blocked);

    address private immutable _bank;
    mapping(address account => bool) private _blocked;

    constructor(string memory name_, string memory symbol_) ERC20(name_, symbol_) {
        _bank = msg.sender;
    }

    /// @notice Mints `amount` to `to`. Requirements: caller is the issuing bank.
    function mint(address to, uint256 amount) external {
        _onlyBank();
        _mint(to, amount);
    }

    /// @notice Blocks or unblocks `account`: a blocked account can neither send nor receive.
    /// Requirements: caller is the issuing bank. Emits {BlockChanged}.
    function setBlocked(address account, bool blocked) external {
        _onlyBank();
        _blocked[account] = blocked;
        emit BlockChanged(account, blocked);
    }

    function isBlocked(address account) external view returns (bool) {
        return _blocked[account];
    }

    function decimals() public pure override returns (uint8) {
        return 2;
    }

    function _update(address from, address to, uint256 value) internal override {
        if (_blocked[from]) revert AccountBlocked(from);
        if (_blocked[to]) revert AccountBlocked(to);
        super._update(from, to, value);
    }

    function _onlyBank() private view {
        if (msg.sender != _bank) revert NotIssuingBank(msg.sender);
    }
}
