"""Client of the settlement token (the demo's tokenized deposit, or any ERC-20 for reads)."""

from __future__ import annotations

from collections.abc import Callable

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress

from chain_client.artifacts import load_artifact
from chain_client.chain import Chain
from chain_client.errors import ERRORS, ContractError
from chain_client.functions import CheckedFunctions
from chain_client.transactions import Transactor, TxResult, call_checked


class SettlementTokenClient:
    def __init__(self, chain: Chain, address: ChecksumAddress, tx: Transactor) -> None:
        self.address = address
        self.contract = chain.w3.eth.contract(address=address, abi=list(load_artifact("SettlementToken").abi))
        self._fn = CheckedFunctions(self.contract)
        self._tx = tx

    def balance_of(self, account: ChecksumAddress) -> int:
        return int(call_checked(self._fn.balanceOf(account).call))

    def allowance(self, owner: ChecksumAddress, spender: ChecksumAddress) -> int:
        return int(call_checked(self._fn.allowance(owner, spender).call))

    def decimals(self) -> int:
        return int(call_checked(self._fn.decimals().call))

    def approve(self, owner: LocalAccount, spender: ChecksumAddress, amount: int) -> TxResult:
        return self._tx.send(owner, self._fn.approve(spender, amount))

    def ensure_allowance(
        self,
        owner: LocalAccount,
        spender: ChecksumAddress,
        amount: int,
        *,
        check: Callable[[], object] | None = None,
    ) -> TxResult | None:
        """Approves `spender` for `amount` unless it already may spend that much; returns the
        approval, if one was sent. `check` simulates the transaction that will spend it: given, an
        approval is sent only if that transaction would fail for the allowance alone, so a request
        the ledger refuses anyway (an expired offer, an unknown warehouse) costs no approval and
        leaves none behind. Its refusal is raised as it is; so is the token's
        ERC20InsufficientBalance when the owner cannot pay `amount` (the token checks the
        allowance first, so the simulation alone would not tell)."""
        if self.allowance(owner.address, spender) >= amount:
            return None
        if check is not None:
            balance = self.balance_of(owner.address)
            if balance < amount:
                raise ERRORS["ERC20InsufficientBalance"](sender=owner.address, balance=balance, needed=amount)
            try:
                check()
            except ContractError as exc:
                if exc.error_name != "ERC20InsufficientAllowance":
                    raise
        return self.approve(owner, spender, amount)

    def transfer(self, sender: LocalAccount, to: ChecksumAddress, amount: int) -> TxResult:
        return self._tx.send(sender, self._fn.transfer(to, amount))

    def mint(self, bank: LocalAccount, to: ChecksumAddress, amount: int) -> TxResult:
        """Issues deposit tokens (the demo token's bank only)."""
        return self._tx.send(bank, self._fn.mint(to, amount))

    def set_blocked(self, bank: LocalAccount, account: ChecksumAddress, blocked: bool) -> TxResult:
        """Blocks an account at the bank, so payments pushed to it fail (the demo token only)."""
        return self._tx.send(bank, self._fn.setBlocked(account, blocked))
