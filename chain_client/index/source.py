"""What the index asks of a node: the head, logs of a block range, block headers, calls at a block.

Against a JSON-RPC node the requests go out raw (and batched where there are many), skipping web3's
per-field result formatters: a replay downloads tens of thousands of logs and headers and the
formatters would cost more than the transfer. The embedded chain has no raw JSON-RPC, so there the
same questions go through web3's API.

getLogs can also be sent ahead (`request_logs`) and its answer read later: over HTTP the request
goes out on a connection of its own, so the node works on the next range while this process applies
the previous one. No thread is involved: a second Python thread parsing JSON would fight the
applying thread for the GIL and, measured, cost more than the overlap gains.
"""

from __future__ import annotations

import base64
import http.client
import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import msgspec
from eth_utils import to_checksum_address
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import Timeout as RequestsTimeout
from web3.types import BlockIdentifier, FilterParams, TxParams

from chain_client.chain import Chain
from chain_client.errors import CertledgerError, NodeUnavailable
from chain_client.index.decode import RawLog

#: Requests per JSON-RPC batch: large enough to amortise a round trip, small enough for any node.
BATCH_SIZE = 250


class RpcRequestError(CertledgerError):
    """The node answered a request with an error (for getLogs: often a range or result limit)."""


@dataclass(frozen=True, slots=True)
class Header:
    number: int
    hash: str
    parent_hash: str


class PendingLogs:
    """A getLogs whose answer is read by `result()` (once)."""

    def __init__(self, read: Callable[[], list[RawLog]]) -> None:
        self._read = read

    def result(self) -> list[RawLog]:
        return self._read()


class _HttpConnection:
    """One keep-alive HTTP(S) connection to a JSON-RPC URL, able to send a request now and read its
    answer later. http.client rather than the provider's requests session: requests cannot split
    the send from the read, and the answer here is one large body read in one piece."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout = timeout
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if parts.username is not None:
            user_password = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(user_password).decode("ascii")
        self._connection: http.client.HTTPConnection | None = None

    def send(self, body: bytes) -> None:
        if self._connection is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._connection = kind(self._host, self._port, timeout=self._timeout)
        try:
            self._connection.request("POST", self._path, body, self._headers)
        except Exception:
            self.close()
            raise

    def receive(self) -> tuple[int, bytes]:
        assert self._connection is not None, "receive() without send()"
        try:
            response = self._connection.getresponse()
            body = response.read()
        except Exception:
            self.close()
            raise
        if response.will_close:
            self.close()
        return response.status, body

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class NodeSource:
    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self._raw = not chain.embedded
        self._url = chain.settings.rpc_url or "embedded"
        self._logs_http: _HttpConnection | None = None
        #: for batches (headers, calls): the logs connection may have a request in flight
        self._batch_http: _HttpConnection | None = None
        if self._raw and self._url.startswith(("http://", "https://")):
            self._logs_http = _HttpConnection(self._url, chain.settings.rpc_timeout)
            self._batch_http = _HttpConnection(self._url, chain.settings.rpc_timeout)
        self._logs_in_flight = False
        self._logs_sent = 0

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
        for start in range(0, len(requests), BATCH_SIZE):
            chunk = list(requests[start : start + BATCH_SIZE])
            responses = self._send_batch(chunk)
            for (method, _), response in zip(chunk, responses, strict=True):
                if "error" in response:
                    raise RpcRequestError(f"{method}: {response['error']}")
                results.append(response["result"])
        return results

    def _send_batch(self, chunk: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
        """The node's answers to one JSON-RPC batch, in request order. Over HTTP on a connection of
        our own: through web3's provider (requests) a batch costs milliseconds more, and a sync
        sends two per range."""
        conn = self._batch_http
        if conn is None:
            provider = self.chain.w3.provider
            try:
                answer = provider.make_batch_request([(cast(Any, m), p) for m, p in chunk])  # type: ignore[attr-defined]
            except (RequestsConnectionError, RequestsTimeout) as exc:
                raise NodeUnavailable(self._url, str(exc)) from exc
            if not isinstance(answer, list):
                raise RpcRequestError(f"batch refused: {answer.get('error')}")
            return list(answer)
        body = json.dumps(
            [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(chunk)]
        )
        self._send(conn, body)
        status, raw = self._receive(conn)
        decoded = self._json(status, raw, "batch")
        if isinstance(decoded, dict):
            raise RpcRequestError(f"batch refused: {decoded.get('error')}")
        if not isinstance(decoded, list) or len(decoded) != len(chunk):
            raise NodeUnavailable(
                self._url, f"batch: HTTP {status}, {len(chunk)} requests, no matching answers"
            )
        by_id = {r.get("id"): r for r in decoded if isinstance(r, dict)}
        if set(by_id) != set(range(len(chunk))):
            raise NodeUnavailable(self._url, "batch: answers do not match the requests' ids")
        return [by_id[i] for i in range(len(chunk))]

    # ------------------------------------------------------------------ questions

    def head(self) -> int:
        if self._raw:
            return int(self._request("eth_blockNumber", []), 16)
        return int(self.chain.w3.eth.block_number)

    def logs(self, first: int, last: int, addresses: Sequence[str]) -> list[RawLog]:
        """Logs of `addresses` in blocks first..last, in chain order."""
        return self.request_logs(first, last, addresses).result()

    def request_logs(self, first: int, last: int, addresses: Sequence[str]) -> PendingLogs:
        """`logs`, sent now and read by `result()`; the node works on it in the meantime. One at a
        time: a new request abandons an unread one. RpcRequestError (or NodeUnavailable) comes
        from `result()`."""
        params = {"fromBlock": hex(first), "toBlock": hex(last), "address": list(addresses)}
        conn = self._logs_http
        if conn is None:
            if self._raw:
                return PendingLogs(lambda: _rpc_logs(self._request("eth_getLogs", [params])))
            return PendingLogs(lambda: self._web3_logs(first, last, addresses))
        if self._logs_in_flight:
            conn.close()  # the unread answer would come first on this connection
        self._send(conn, json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [params]}))
        self._logs_in_flight = True
        self._logs_sent += 1
        ticket = self._logs_sent

        def read() -> list[RawLog]:
            if not self._logs_in_flight or ticket != self._logs_sent:
                raise RuntimeError(f"getLogs {first}..{last} was read already or abandoned")
            self._logs_in_flight = False
            status, answer = self._receive(conn)
            if status == 200:
                try:
                    typed = _LOGS_ANSWER.decode(answer)
                except msgspec.MsgspecError:
                    pass  # not a list of logs: an error, or not JSON-RPC at all (reported below)
                else:
                    if typed.result is not None and typed.error is None:
                        return _typed_logs(typed.result, lower_case=_all_lower_case(answer))
            response = self._json(status, answer, "eth_getLogs")
            if not isinstance(response, dict):
                raise NodeUnavailable(self._url, f"eth_getLogs: HTTP {status}, not JSON-RPC")
            if "error" in response:
                raise RpcRequestError(f"eth_getLogs: {response['error']}")
            if status != 200 or "result" not in response:
                raise NodeUnavailable(self._url, f"eth_getLogs: HTTP {status}, no result")
            return _rpc_logs(response["result"], lower_case=_all_lower_case(answer))

        return PendingLogs(read)

    def _send(self, conn: _HttpConnection, body: str) -> None:
        try:
            conn.send(body.encode("ascii"))
        except (OSError, http.client.HTTPException) as exc:
            raise NodeUnavailable(self._url, str(exc)) from exc

    def _receive(self, conn: _HttpConnection) -> tuple[int, bytes]:
        try:
            return conn.receive()
        except (OSError, http.client.HTTPException) as exc:
            raise NodeUnavailable(self._url, str(exc)) from exc

    def _json(self, status: int, body: bytes, what: str) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            raise NodeUnavailable(self._url, f"{what}: HTTP {status}, not JSON-RPC") from None

    def _web3_logs(self, first: int, last: int, addresses: Sequence[str]) -> list[RawLog]:
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

    def has_code(self, addresses: Sequence[str], block: int) -> dict[str, bool]:
        """Whether each address holds contract code at `block` (the state of that block)."""
        if self._raw:
            found = self._batch([("eth_getCode", [a, hex(block)]) for a in addresses])
            return {a: str(code) not in ("0x", "") for a, code in zip(addresses, found, strict=True)}
        w3 = self.chain.w3
        return {
            a: bool(w3.eth.get_code(to_checksum_address(a), cast(BlockIdentifier, block))) for a in addresses
        }

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


class _RpcLog(msgspec.Struct, rename="camel"):
    """A JSON-RPC log object as it is parsed (other keys, such as blockTimestamp, are skipped)."""

    address: str
    topics: tuple[str, ...]
    data: str
    block_number: str
    block_hash: str
    transaction_hash: str
    transaction_index: str
    log_index: str
    removed: bool = False


class _LogsAnswer(msgspec.Struct):
    result: list[_RpcLog] | None = None
    error: Any = None


#: A getLogs answer parsed straight into typed structs: measured on a 20,000-log replay, a third of
#: the time of json.loads into dicts and RawLogs made from those, and as strict (a missing key or
#: a wrong type fails the parse, and the answer is then reported as json.loads reads it).
_LOGS_ANSWER = msgspec.json.Decoder(_LogsAnswer)


def _typed_logs(raw: list[_RpcLog], lower_case: bool) -> list[RawLog]:
    """Parsed logs as RawLogs in chain order, removed ones left out. `lower_case`: the caller knows
    the answer holds no upper-case hex digit, so nothing needs lowering (most nodes answer in lower
    case; lowering every string was a tenth of a replay's fetching)."""
    make = tuple.__new__  # the NamedTuple's own constructor is a Python function, twice as slow
    logs = [
        make(
            RawLog,
            (
                e.address,
                e.topics,
                e.data,
                int(e.block_number, 16),
                e.block_hash,
                e.transaction_hash,
                int(e.transaction_index, 16),
                int(e.log_index, 16),
            ),
        )
        for e in raw
        if not e.removed
    ]
    if not lower_case:
        logs = [RawLog.lowered(log) for log in logs]
    logs.sort(key=_POSITION)
    return logs


def _rpc_logs(raw: list[dict[str, Any]], lower_case: bool = False) -> list[RawLog]:
    """Raw JSON-RPC logs (as parsed into dicts) in chain order, removed ones left out: the same
    structs and the same path as a getLogs answer parsed typed (`lower_case`: see `_typed_logs`)."""
    return _typed_logs(msgspec.convert(raw, list[_RpcLog]), lower_case)


#: Any of these bytes in a getLogs answer may be an upper-case hex digit (no key of a log object
#: has one: address, topics, data, blockHash, blockNumber, blockTimestamp, transactionHash,
#: transactionIndex, logIndex, removed). Most nodes answer in lower case, and scanning the body
#: for them costs less than lowering every string of every log (six substring searches: a regular
#: expression's character class scans twenty times slower).
_UPPER_HEX = (b"A", b"B", b"C", b"D", b"E", b"F")


def _all_lower_case(body: bytes) -> bool:
    return not any(letter in body for letter in _UPPER_HEX)


#: (block number, transaction index, log index) of a RawLog, as a C-level key function
_POSITION = operator.itemgetter(3, 6, 7)


def misplaced_log(logs: Sequence[RawLog], first: int, last: int) -> str | None:
    """What is wrong with a getLogs answer for blocks first..last, None if nothing: a log outside
    the range, or positions (block, transaction index, log index) not strictly increasing, which
    includes a log given twice. A node's answer is refused for either: a repeated log would be
    applied to the books twice. (Answers come sorted; for a sorted list the check is the bounds of
    its ends and one C-level pass over the positions.)"""
    if not logs:
        return None
    positions = list(map(_POSITION, logs))
    if not all(map(operator.lt, positions, positions[1:])):
        at = next(i for i in range(1, len(positions)) if not positions[i - 1] < positions[i])
        what = "twice" if positions[at - 1] == positions[at] else "out of order"
        return f"the log at block {positions[at][0]} tx {positions[at][1]} log {positions[at][2]} {what}"
    if positions[0][0] < first or positions[-1][0] > last:
        outside = positions[0] if positions[0][0] < first else positions[-1]
        return f"a log of block {outside[0]}, outside the range"
    return None


def _hex(value: Any) -> str:
    return "0x" + bytes(value).hex()


def _header(block: Any) -> Header | None:
    if block is None:
        return None
    return Header(int(block["number"], 16), str(block["hash"]).lower(), str(block["parentHash"]).lower())
