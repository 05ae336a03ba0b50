"""Exceptions of the chain client. Contract custom errors become typed Python exceptions.

    CertledgerError                 root: catch this to catch everything raised here
    ├── NodeUnavailable             the JSON-RPC endpoint did not answer
    ├── TransactionTimeout          no receipt within the configured time
    ├── NonceTooLow                 a prepared transaction's nonce went to another one
    ├── RevertedOnChain             a transaction was mined and reverted: its nonce and gas are spent
    ├── ManifestError               a deployment manifest is missing, malformed or for another chain
    ├── DevelopmentNodeRequired     a development control (funding, the clock) the node lacks
    ├── InvalidArgument             an argument the function's ABI type cannot hold (also ValueError)
    ├── ContractReverted            a call or transaction reverted (`mined` set: on chain)
    │   ├── ContractError           ... with a custom error of our contracts (one subclass per error,
    │   │   ├── DuplicateInvoice        generated from the compiled ABIs, carrying its fields)
    │   │   ├── CertificateFrozen
    │   │   └── ...
    │   ├── ContractPanic           ... with Panic(uint256) (an assertion or arithmetic bug)
    │   └── UnknownRevert           ... with data no ABI here explains

web3 reports a custom error only as hex; `decode_revert` turns it into the class named in the ABI,
so callers write `except errors.DuplicateInvoice as e: e.fields["invoiceHash"]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import function_signature_to_4byte_selector, to_checksum_address

from chain_client.artifacts import load_artifact

# Contracts whose ABIs define the errors a certledger transaction can revert with. The token's
# ABI brings OpenZeppelin's ERC-20 errors, the oracle's brings the ledger's through the call.
_ERROR_SOURCES = ("CertificateLedger", "ReceiptOracle", "SettlementToken")
_PANIC_SELECTOR = bytes.fromhex("4e487b71")
_ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")


class CertledgerError(Exception):
    """Root of every exception raised by certledger's chain client."""


class NodeUnavailable(CertledgerError):
    """The node at the configured URL did not answer."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"node {url} unavailable: {reason}")
        self.url = url
        self.reason = reason


class TransactionTimeout(CertledgerError):
    """A sent transaction got no receipt in time; it may still be mined."""

    def __init__(self, tx_hash: str, seconds: float, replaced: tuple[str, ...] = ()) -> None:
        also = f" (nor for {', '.join(replaced)}, which it replaced at a lower fee)" if replaced else ""
        super().__init__(f"no receipt for {tx_hash} after {seconds}s{also}")
        self.tx_hash = tx_hash
        self.seconds = seconds
        #: earlier transactions at the same nonce it replaced: any one of them may still be mined
        self.replaced = replaced


class NonceTooLow(CertledgerError):
    """A signed transaction's nonce was used by another transaction of its sender: it can never be
    included. Look it up once more (it may be the one that used it), then prepare a new one."""

    def __init__(self, tx_hash: str, nonce: int) -> None:
        super().__init__(f"nonce {nonce} of {tx_hash} is already used")
        self.tx_hash = tx_hash
        self.nonce = nonce


class OutcomeUnknown(CertledgerError):
    """A transaction was sent, or may have been, and its outcome could not be read: the node went
    away, or did not answer in time. Sending the same signed bytes again is safe (one nonce: at
    most one inclusion) and tells; signing a new transaction for the same job may do it twice."""

    def __init__(self, tx_hash: str, reason: str, replaced: tuple[str, ...] = ()) -> None:
        also = f" (it replaced {', '.join(replaced)} at its nonce: look for those too)" if replaced else ""
        super().__init__(
            f"{tx_hash} was sent but its outcome is unknown ({reason}){also}; look it up, or send the "
            "same signed transaction again, before signing a new one"
        )
        self.tx_hash = tx_hash
        self.reason = reason
        #: earlier transactions at the same nonce it replaced: any one of them may be the one mined
        self.replaced = replaced


class TransactionRejected(CertledgerError):
    """The node refused a transaction in its own words (funds for gas, fees, gas limit): nothing is
    pending. `tx_hash` is empty when it refused to estimate it, before anything was signed."""

    def __init__(self, tx_hash: str, reason: str) -> None:
        what = tx_hash or "the transaction"
        super().__init__(f"the node refused {what}: {reason}")
        self.tx_hash = tx_hash
        self.reason = reason


@dataclass(frozen=True)
class MinedRevert:
    """Where a transaction that reverted on chain was mined, and the gas it spent."""

    tx_hash: str
    block_number: int
    gas_used: int


class RevertedOnChain(CertledgerError):
    """A transaction was mined and reverted (the state moved between its simulation and its block):
    unlike a refusal before sending, its nonce is used and its gas is spent. `error` is the
    contract's typed error, recovered by replaying the transaction at its block. Sending the same
    bytes again changes nothing; doing the job needs a new transaction once its cause is gone."""

    def __init__(self, tx_hash: str, block_number: int, gas_used: int, error: ContractReverted) -> None:
        super().__init__(
            f"{tx_hash} was mined in block {block_number} and reverted with {error}; its nonce and "
            f"{gas_used} gas are spent"
        )
        self.tx_hash = tx_hash
        self.block_number = block_number
        self.gas_used = gas_used
        self.error = error

    @classmethod
    def of(cls, error: ContractReverted) -> RevertedOnChain:
        """The on-chain revert `error` reports (its `mined` must be set)."""
        if error.mined is None:
            raise ValueError("the revert was not mined")
        mined = error.mined
        return cls(mined.tx_hash, mined.block_number, mined.gas_used, error)


class DevelopmentNodeRequired(CertledgerError):
    """A development control (funding an account, moving the clock) refused by the node: only the
    embedded chain and development nodes (anvil) have them; a real network funds accounts itself."""

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(
            f"the node refused {method} ({reason}): funding accounts and moving the clock work on "
            "development nodes only (anvil, the embedded chain)"
        )
        self.method = method
        self.reason = reason


class ManifestError(CertledgerError):
    """A deployment manifest is missing, malformed, or for another chain or code."""


class ContractMissing(ManifestError):
    """A call to one of the manifest's contracts came back with no data: there is no code at its
    address on the node's chain now (the chain was reset or replaced under a running service)."""


class InvalidArgument(CertledgerError, ValueError):
    """An argument the contract function's ABI type cannot hold (a negative amount, a value past
    2^256 - 1, bytes of the wrong length): refused before anything is signed or sent. web3 says only
    that no function matched; this names the function, the argument, its value and its type."""

    def __init__(self, function: str, argument: str, value: Any, abi_type: str) -> None:
        super().__init__(f"{function}: {argument}={_show_short(value)} is not a valid {abi_type}")
        self.function = function
        self.argument = argument
        self.value = value
        self.abi_type = abi_type


def _show_short(value: Any) -> str:
    shown = _show(value) if isinstance(value, bytes) else repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


class ContractReverted(CertledgerError):
    """A contract call or transaction reverted. `mined` is set when a transaction reverted in a
    block (gas spent, nonce used), None when a simulation or a call reverted (nothing sent)."""

    #: set by chain_client's `Transactor` on an error recovered from a mined transaction
    mined: MinedRevert | None = None

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data


class ContractError(ContractReverted):
    """A contract reverted with one of its named custom errors; `fields` holds its arguments."""

    #: The error's name and ordered (name, type) inputs, set on each generated subclass.
    error_name: str = ""
    inputs: tuple[tuple[str, str], ...] = ()
    selector: bytes = b""

    def __init__(self, data: bytes = b"", **fields: Any) -> None:
        self.fields: dict[str, Any] = fields
        shown = ", ".join(f"{k}={_show(v)}" for k, v in fields.items())
        super().__init__(f"{self.error_name}({shown})", data)

    def __getattr__(self, name: str) -> Any:
        # Fields read as attributes too: `err.certificateId`.
        fields = self.__dict__.get("fields", {})
        if name in fields:
            return fields[name]
        raise AttributeError(name)


class ContractPanic(ContractReverted):
    """The EVM panicked (Panic(uint256)): an assertion, overflow or similar bug, never user error."""

    def __init__(self, code: int, data: bytes) -> None:
        super().__init__(f"Panic(0x{code:02x})", data)
        self.code = code


class UnknownRevert(ContractReverted):
    """A revert whose data matches no error in the known ABIs (or a plain string revert)."""


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


def _abi_type(entry: dict[str, Any]) -> str:
    if entry["type"].startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in entry["components"])
        return f"({inner}){entry['type'][5:]}"
    return str(entry["type"])


def _build_error_classes() -> dict[str, type[ContractError]]:
    classes: dict[str, type[ContractError]] = {}
    for contract in _ERROR_SOURCES:
        for entry in load_artifact(contract).abi:
            if entry.get("type") != "error" or entry["name"] in classes:
                continue
            inputs = tuple((i["name"], _abi_type(i)) for i in entry["inputs"])
            signature = f"{entry['name']}({','.join(t for _, t in inputs)})"
            classes[entry["name"]] = type(
                entry["name"],
                (ContractError,),
                {
                    "__doc__": f"Contract error `{signature}`.",
                    "__module__": __name__,
                    "error_name": entry["name"],
                    "inputs": inputs,
                    "selector": function_signature_to_4byte_selector(signature),
                },
            )
    return classes


ERRORS: dict[str, type[ContractError]] = _build_error_classes()
_BY_SELECTOR: dict[bytes, type[ContractError]] = {cls.selector: cls for cls in ERRORS.values()}
globals().update(ERRORS)


def __getattr__(name: str) -> type[ContractError]:
    # For type checkers: generated classes are module attributes typed as ContractError subclasses.
    try:
        return ERRORS[name]
    except KeyError:
        raise AttributeError(name) from None


def decode_revert(data: bytes | str | None, message: str = "") -> ContractReverted:
    """The typed exception for revert `data` (hex or bytes), as returned by a node."""
    raw = _to_bytes(data)
    selector, body = raw[:4], raw[4:]
    cls = _BY_SELECTOR.get(selector)
    try:
        if cls is not None:
            values = abi_decode([t for _, t in cls.inputs], body)
            return cls(raw, **{n: _typed_value(t, v) for (n, t), v in zip(cls.inputs, values, strict=True)})
        if selector == _PANIC_SELECTOR and len(body) == 32:
            return ContractPanic(int.from_bytes(body, "big"), raw)
        if selector == _ERROR_STRING_SELECTOR:
            (text,) = abi_decode(["string"], body)
            return UnknownRevert(f"reverted: {text}", raw)
    except DecodingError:
        # A known selector with a body that does not decode: no contract of ours reverts so, but
        # whoever reads the error must still get one of ours, with the raw data.
        return UnknownRevert(f"reverted with malformed data 0x{raw.hex()}", raw)
    return UnknownRevert(message or f"reverted with unknown data 0x{raw.hex()}", raw)


def _typed_value(abi_type: str, value: Any) -> Any:
    # eth_abi gives addresses in lower case; everything else in the client is checksummed.
    if abi_type == "address":
        return to_checksum_address(value)
    return value


def _to_bytes(data: bytes | str | None) -> bytes:
    if data is None:
        return b""
    if isinstance(data, bytes):
        return data
    text = data[2:] if data.startswith("0x") else data
    return bytes.fromhex(text)
