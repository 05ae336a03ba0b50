"""A connection to a chain: the embedded py-evm chain (default) or a JSON-RPC node.

Only this package talks to a node; everything above it receives a `Chain`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexStr
from eth_utils import keccak
from web3 import EthereumTesterProvider, HTTPProvider, Web3
from web3.exceptions import BlockNotFound
from web3.providers.rpc.utils import ExceptionRetryConfiguration
from web3.types import Wei

from chain_client.errors import DevelopmentNodeRequired, NodeUnavailable
from chain_client.settings import Settings
from chain_client.transactions import NonceManager

# Enough for a settlement batch of 64 and for deployment, and the same as common public chains.
_EMBEDDED_GAS_LIMIT = 30_000_000


@dataclass
class Chain:
    """A web3 connection plus the few node controls the demo and tests need (time, funding)."""

    w3: Web3
    settings: Settings
    embedded: bool
    nonces: NonceManager = field(default_factory=NonceManager, repr=False)
    _tester: Any = field(default=None, repr=False)

    @property
    def chain_id(self) -> int:
        return int(self.w3.eth.chain_id)

    def now(self) -> int:
        """Timestamp of the latest block: the contracts' idea of now."""
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def head(self) -> int:
        """The latest block's number."""
        return int(self.w3.eth.block_number)

    def latest_block(self) -> tuple[int, int]:
        """The latest block's number and timestamp, read together (one block, not two reads)."""
        block = self.w3.eth.get_block("latest")
        return int(block["number"]), int(block["timestamp"])

    def block_time(self, block: int | HexStr) -> int:
        """The timestamp of block `block` (a number or a hash); web3's BlockNotFound if the node
        has no such block (a hash reorged away)."""
        return int(self.w3.eth.get_block(block)["timestamp"])

    def block_hash(self, number: int) -> str | None:
        """The 0x hash of the node's block `number`; None if the node has no such block."""
        try:
            return "0x" + bytes(self.w3.eth.get_block(number)["hash"]).hex()
        except BlockNotFound:
            return None

    def pending_nonce(self, address: ChecksumAddress) -> int:
        """The nonce the node would give `address`'s next transaction (its pending count)."""
        return int(self.w3.eth.get_transaction_count(address, "pending"))

    def advance_time(self, seconds: int) -> int:
        """Moves chain time forward by `seconds` and mines a block; returns the new timestamp.

        Only for development chains: the embedded chain and anvil (or a node with evm_increaseTime).
        """
        if seconds < 0:
            raise ValueError("time only moves forward")
        if self.embedded:
            # eth-tester's time_travel(t) mines one block stamped t - 1 and refuses a t before the
            # pending block's stamp, which follows the wall clock once a chain sat idle. If that
            # stamp is already late enough, mining one block moves time far enough.
            target = self.now() + seconds
            pending = int(self.w3.eth.get_block("pending")["timestamp"])
            if pending >= target:
                self._tester.mine_blocks(1)
            else:
                self._tester.time_travel(target + 1)
            return self.now()
        self._development("evm_increaseTime", [seconds])
        self._development("evm_mine", [])
        return self.now()

    def _development(self, method: str, params: list[Any]) -> Any:
        """A development node's control; a node without it says so in an error answer, which web3
        passes back rather than raising."""
        try:
            answer = self.w3.provider.make_request(cast(Any, method), params)
        except Exception as exc:  # a proxy that filters the method (403, 405), the node gone
            raise DevelopmentNodeRequired(method, str(exc) or type(exc).__name__) from exc
        error = answer.get("error")
        if error is not None:
            reason = error.get("message", error) if isinstance(error, dict) else error
            raise DevelopmentNodeRequired(method, str(reason))
        return answer.get("result")

    def fund(self, address: ChecksumAddress, wei: int) -> None:
        """Gives `address` ether for gas from the development chain's own funded account."""
        if self.embedded:
            faucet = self.w3.eth.accounts[0]
            tx_hash = self.w3.eth.send_transaction({"from": faucet, "to": address, "value": Wei(wei)})
            self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.settings.receipt_timeout)
            return
        balance = self.w3.eth.get_balance(address)
        self._development("anvil_setBalance", [address, hex(balance + wei)])

    def new_account(self, fund_wei: int = 10**20, seed: str | None = None) -> LocalAccount:
        """A fresh local key, funded for gas on a development chain. A `seed` makes the key
        reproducible (benchmarks want identical calldata run after run)."""
        account: LocalAccount = Account.from_key(keccak(text=seed)) if seed else Account.create()
        if fund_wei:
            self.fund(account.address, fund_wei)
        return account


def connect(settings: Settings | None = None) -> Chain:
    """Connects to `settings.rpc_url`, or starts a fresh embedded chain when it is None."""
    settings = settings or Settings()
    if settings.rpc_url is None:
        return _embedded(settings)
    # web3 retries a request that timed out five times by default: a hung node then held every
    # call for five rpc_timeouts (50 s) before anyone heard of it. A node that does not answer in
    # rpc_timeout is reported at once; refused connections and gateway errors are still retried.
    retry = ExceptionRetryConfiguration(errors=(ConnectionError, requests.HTTPError, requests.ConnectTimeout))
    provider = HTTPProvider(
        settings.rpc_url,
        request_kwargs={"timeout": settings.rpc_timeout},
        exception_retry_configuration=retry,
    )
    w3 = Web3(provider)
    try:
        w3.eth.get_block_number()
    except Exception as exc:  # requests raises several unrelated types for a dead endpoint
        raise NodeUnavailable(settings.rpc_url, str(exc)) from exc
    return Chain(w3=w3, settings=settings, embedded=False)


def _embedded(settings: Settings) -> Chain:
    # Imported here: py-evm is heavy and a node-backed process never needs it.
    from eth_tester import EthereumTester, PyEVMBackend

    params = PyEVMBackend.generate_genesis_params(overrides={"gas_limit": _EMBEDDED_GAS_LIMIT})
    tester = EthereumTester(PyEVMBackend(genesis_parameters=params))
    w3 = Web3(EthereumTesterProvider(tester))
    return Chain(w3=w3, settings=settings, embedded=True, _tester=tester)
