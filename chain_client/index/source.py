"""What the index asks of a node: the head, logs of a block range, block headers, calls at a block.

Against a JSON-RPC node the requests go out raw (and batched where there are many), skipping web3's
per-field result formatters: a replay downloads tens of thousands of logs and headers and the
formatters would cost more than the transfer. The embedded chain has no raw JSON-RPC, so there the
same questions go through web3's API.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from eth_utils import to_checksum_address
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import Timeout as RequestsTimeout
from web3.types import BlockIdentifier, FilterParams, TxParams

from chain_client.chain import Chain
from chain_client.errors import NodeUnavailable
from chain_client.index.decode import RawLog

#: Requests per JSON-RPC batch: large enough to amortise a round trip, small enough for any node.
BATCH_SIZE = 250


class RpcRequestError(Exception):
    """The node answered a request with an error (for getLogs: often a range or result limit)."""


@dataclass(frozen=True, slots=True)
class Header:
    number: int
    hash: str
    parent_hash: str


class NodeSource:
    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self._raw = not chain.embedded
        self._url = chain.settings.rpc_url or "embedded"

    # ------------------------------------------------------------------ requests

    def _request(self, method: str, params: list[Any]) -> Any:
        try:
            response = self.chain.w3.provider.make_request(cast(Any, method), params)
        except (RequestsConnectionError, RequestsTimeout) as exc:
            raise NodeUnavailable(self._url, str(exc)) from exc
        if "error" in response:
            raise RpcRequestError(f"{method}: {response['error']}")
        return response["result"]

    def _batch(self, requests: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        results: list[Any] = []
        provider = self.chain.w3.provider
        for start in range(0, len(requests), BATCH_SIZE):
            chunk = [(cast(Any, m), p) for m, p in requests[start : start + BATCH_SIZE]]
            try:
                responses = provider.make_batch_request(chunk)  # type: ignore[attr-defined]
            except (RequestsConnectionError, RequestsTimeout) as exc:
                raise NodeUnavailable(self._url, str(exc)) from exc
            if not isinstance(responses, list):
                raise RpcRequestError(f"batch refused: {responses.get('error')}")
            for (method, _), response in zip(chunk, responses, strict=True):
                if "error" in response:
                    raise RpcRequestError(f"{method}: {response['error']}")
                results.append(response["result"])
        return results

    # ------------------------------------------------------------------ questions

    def head(self) -> int:
        if self._raw:
            return int(self._request("eth_blockNumber", []), 16)
        return int(self.chain.w3.eth.block_number)

    def logs(self, first: int, last: int, addresses: Sequence[str]) -> list[RawLog]:
        """Logs of `addresses` in blocks first..last, in chain order."""
        if self._raw:
            params = {"fromBlock": hex(first), "toBlock": hex(last), "address": list(addresses)}
            raw = self._request("eth_getLogs", [params])
            logs = [RawLog.from_rpc(entry) for entry in raw if not entry.get("removed")]
        else:
            flt: FilterParams = {
                "fromBlock": first,
                "toBlock": last,
                "address": [to_checksum_address(a) for a in addresses],
            }
            logs = [RawLog.from_web3(entry) for entry in self.chain.w3.eth.get_logs(flt)]
        logs.sort(key=_position)
        return logs

    def headers(self, numbers: Sequence[int]) -> dict[int, Header | None]:
        """Headers of the given blocks (None for a block the node does not have)."""
        wanted = sorted(set(numbers))
        if self._raw:
            found = self._batch([("eth_getBlockByNumber", [hex(n), False]) for n in wanted])
            return {n: _header(b) for n, b in zip(wanted, found, strict=True)}
        result: dict[int, Header | None] = {}
        for n in wanted:
            try:
                block = self.chain.w3.eth.get_block(n)
            except Exception as exc:  # eth-tester raises BlockNotFound from its own module
                if type(exc).__name__ != "BlockNotFound":
                    raise
                result[n] = None
                continue
            result[n] = Header(n, _hex(block["hash"]), _hex(block["parentHash"]))
        return result

    def call_many(self, calls: Sequence[tuple[str, bytes]], block: int) -> list[bytes]:
        """Return data of eth_call (to, data) for each call, all at `block`."""
        if self._raw:
            found = self._batch(
                [("eth_call", [{"to": to, "data": "0x" + data.hex()}, hex(block)]) for to, data in calls]
            )
            return [bytes.fromhex(str(r)[2:]) for r in found]
        w3 = self.chain.w3
        results = []
        for to, data in calls:
            tx: TxParams = {"to": to_checksum_address(to), "data": data}
            results.append(bytes(w3.eth.call(tx, cast(BlockIdentifier, block))))
        return results


def _position(log: RawLog) -> tuple[int, int, int]:
    return log.position


def _hex(value: Any) -> str:
    return "0x" + bytes(value).hex()


def _header(block: Any) -> Header | None:
    if block is None:
        return None
    return Header(int(block["number"], 16), str(block["hash"]).lower(), str(block["parentHash"]).lower())
