"""Contract functions that name the argument they cannot take.

web3 matches a call's arguments against the ABI and, when one does not fit its type (a negative
`uint256`, a 33-byte `bytes32`), raises `MismatchedABI` saying only that no function matched. A
client method taking an amount from its caller should instead say which amount is wrong, with a
`CertledgerError` the caller already catches: `CheckedFunctions` wraps `contract.functions` and
turns that refusal into `errors.InvalidArgument`. Arguments that fit go to web3 untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_abi import is_encodable
from eth_utils.abi import collapse_if_tuple
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import MismatchedABI, Web3ValidationError

from chain_client.errors import InvalidArgument


class CheckedFunction:
    def __init__(self, contract: Contract, name: str, signature: str | None = None) -> None:
        self._contract = contract
        self._name = name
        self._signature = signature

    def __call__(self, *args: Any) -> ContractFunction:
        try:
            if self._signature is not None:
                chosen: ContractFunction = self._contract.get_function_by_signature(self._signature)(*args)
                return chosen
            function: ContractFunction = getattr(self._contract.functions, self._name)(*args)
            return function
        except (MismatchedABI, Web3ValidationError) as exc:
            invalid = self._invalid(args)
            if invalid is None:
                raise
            raise invalid from exc

    def _invalid(self, args: Sequence[Any]) -> InvalidArgument | None:
        """The first argument the function's type cannot hold; for an overloaded name, of the
        overload the arguments fit best (fewest misfits; a tie names nothing). None when web3
        refused for another reason: its own error is then the clearest account."""
        fits: list[tuple[int, InvalidArgument]] = []
        for entry in self._candidates(len(args)):
            types = [collapse_if_tuple(dict(spec)) for spec in entry["inputs"]]
            misfits = [
                n for n, (t, value) in enumerate(zip(types, args, strict=True)) if not is_encodable(t, value)
            ]
            if misfits:
                number = misfits[0]
                argument = entry["inputs"][number].get("name") or f"argument {number}"
                invalid = InvalidArgument(
                    self._signature or self._name, argument, args[number], types[number]
                )
                fits.append((len(misfits), invalid))
        fits.sort(key=lambda fit: fit[0])
        if not fits or (len(fits) > 1 and fits[0][0] == fits[1][0]):
            return None
        return fits[0][1]

    def _candidates(self, arity: int) -> list[dict[str, Any]]:
        abi: list[dict[str, Any]] = [dict(e) for e in self._contract.abi]
        entries = [
            e
            for e in abi
            if e.get("type") == "function" and e.get("name") == self._name and len(e["inputs"]) == arity
        ]
        if self._signature is None:
            return entries
        return [e for e in entries if _signature(e) == self._signature]


def _signature(entry: dict[str, Any]) -> str:
    return f"{entry['name']}({','.join(collapse_if_tuple(dict(i)) for i in entry['inputs'])})"


class CheckedFunctions:
    """`contract.functions` whose calls raise `InvalidArgument` for an argument that does not fit."""

    def __init__(self, contract: Contract) -> None:
        self._contract = contract

    def __getattr__(self, name: str) -> CheckedFunction:
        if name.startswith("_"):
            raise AttributeError(name)
        return CheckedFunction(self._contract, name)

    def by_signature(self, signature: str) -> CheckedFunction:
        """One overload of a function, e.g. "transferFrom(uint256,address,uint256)"."""
        return CheckedFunction(self._contract, signature.split("(", 1)[0], signature)
