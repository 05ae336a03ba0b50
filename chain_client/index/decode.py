"""Strict, fast decoding of the ledger's and the oracle's logs for the index.

`chain_client.events.EventDecoder` decodes through web3's `get_event_data`, which costs more per
log than downloading it; a replay decodes tens of thousands. This decoder is built from the same
ABIs and is exactly as strict: an unknown topic, a wrong topic count, a data length that does not
match, or a word with non-zero padding from a tracked address raises the same `UndecodableLog`.
Static words are sliced straight from the hex; events with dynamic data go through eth_abi.
tests/test_index_decode.py checks that both decoders agree on every event of a random lifecycle.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import event_abi_to_log_topic, to_checksum_address

from chain_client.artifacts import load_artifact
from chain_client.events import UndecodableLog

_WORD_HEX = 64
_TOPIC_HEX = 2 + _WORD_HEX


class RawLog(NamedTuple):
    """A log as the node sent it, normalised: hex strings in lower case, numbers as ints.

    A NamedTuple rather than a dataclass: a replay builds tens of thousands and a tuple is built
    several times faster."""

    address: str
    topics: tuple[str, ...]
    data: str
    block_number: int
    block_hash: str
    tx_hash: str
    tx_index: int
    log_index: int

    @classmethod
    def from_rpc(cls, log: Mapping[str, Any]) -> RawLog:
        """From a raw JSON-RPC log object (hex strings)."""
        return cls(
            log["address"].lower(),
            tuple(map(str.lower, log["topics"])),
            log["data"].lower(),
            int(log["blockNumber"], 16),
            log["blockHash"].lower(),
            log["transactionHash"].lower(),
            int(log["transactionIndex"], 16),
            int(log["logIndex"], 16),
        )

    @classmethod
    def from_web3(cls, log: Mapping[str, Any]) -> RawLog:
        """From a web3-formatted log (HexBytes and ints), as the embedded chain returns them."""
        return cls(
            str(log["address"]).lower(),
            tuple(_hex(t) for t in log["topics"]),
            _hex(log["data"]),
            int(log["blockNumber"]),
            _hex(log["blockHash"]),
            _hex(log["transactionHash"]),
            int(log["transactionIndex"]),
            int(log["logIndex"]),
        )

    @property
    def position(self) -> tuple[int, int, int]:
        return (self.block_number, self.tx_index, self.log_index)


class Event(NamedTuple):
    """A decoded log. Args hold ints, bools, checksum addresses, 0x-hex bytes and tuples."""

    name: str
    args: dict[str, Any]
    address: str
    block_number: int
    block_hash: str
    tx_hash: str
    tx_index: int
    log_index: int
    #: canonical JSON of `args` when the decoder made it (see digest.args_json), else ""
    args_json: str = ""

    @property
    def position(self) -> tuple[int, int, int]:
        return (self.block_number, self.tx_index, self.log_index)


def _hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    text = str(value).lower()
    return text if text.startswith("0x") else "0x" + text


_CHECKSUMS: dict[str, str] = {}


def checksum(address_hex: str) -> str:
    """Checksum address for 40 hex digits (with or without 0x), cached: a replay meets few addresses."""
    key = address_hex[-40:].lower()
    found = _CHECKSUMS.get(key)
    if found is None:
        found = to_checksum_address("0x" + key)
        _CHECKSUMS[key] = found
    return found


# Kinds of argument, by how the index reads them.
_UINT, _INT, _ADDRESS, _BOOL, _BYTES, _HASHED, _DYNAMIC = range(7)
_ADDRESS_PAD = "0" * 24


def _kind(abi_type: str, indexed: bool) -> tuple[int, int]:
    """(kind, size parameter) of an argument: one-word static types are read from the hex directly;
    an indexed dynamic value arrives as its hash; other data goes through eth_abi."""
    if abi_type.startswith("uint") and not abi_type.endswith("]"):
        return _UINT, int(abi_type[4:] or 256)
    if abi_type.startswith("int") and not abi_type.endswith("]"):
        return _INT, int(abi_type[3:] or 256)
    if abi_type == "address":
        return _ADDRESS, 0
    if abi_type == "bool":
        return _BOOL, 0
    if abi_type.startswith("bytes") and abi_type[5:].isdigit():
        return _BYTES, int(abi_type[5:])
    return (_HASHED, 0) if indexed else (_DYNAMIC, 0)


def _read_word(word: str, kind: int, size: int) -> Any:
    """The value of one 64-hex-digit word; ValueError on anything but canonical padding."""
    if kind == _UINT:
        value = int(word, 16)
        if value >> size:
            raise ValueError(f"uint{size} out of range")
        return value
    if kind == _ADDRESS:
        if word[:24] != _ADDRESS_PAD:
            raise ValueError("address padding")
        return checksum(word[24:])
    if kind == _BYTES:
        if word[2 * size :].strip("0"):
            raise ValueError(f"bytes{size} padding")
        return "0x" + word[: 2 * size]
    if kind == _BOOL:
        flag = int(word, 16)
        if flag > 1:
            raise ValueError("bool out of range")
        return flag == 1
    if kind == _INT:
        value = int(word, 16)
        if value >> 255:
            value -= 1 << 256
        if not -(1 << (size - 1)) <= value < 1 << (size - 1):
            raise ValueError(f"int{size} out of range")
        return value
    return "0x" + word  # _HASHED


def _normalise(abi_type: str, value: Any) -> Any:
    """An eth_abi value in the index's form (see `Event`)."""
    if abi_type.endswith("]"):
        inner = abi_type[: abi_type.rindex("[")]
        return tuple(_normalise(inner, v) for v in value)
    if abi_type == "address":
        return checksum(str(value))
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value


def _json_value(kind: int, value: Any) -> str:
    """Canonical JSON of one argument (integers as decimal strings, see digest.canonical)."""
    if kind in (_UINT, _INT):
        return '"' + str(value) + '"'
    if kind == _BOOL:
        return "true" if value else "false"
    if kind in (_ADDRESS, _BYTES, _HASHED):
        return '"' + str(value) + '"'  # hex digits and 0x only: nothing to escape
    return json.dumps(_canonical(value), separators=(",", ":"), ensure_ascii=True)


def _canonical(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


@dataclass(frozen=True)
class _EventSpec:
    name: str
    names: tuple[str, ...]  # every input, in ABI order
    types: tuple[str, ...]  # their ABI types as stored (an indexed dynamic value is its bytes32 hash)
    #: per input, in ABI order: (name, in a topic?, topic or data word position, kind, size)
    plan: tuple[tuple[str, bool, int, int, int], ...]
    topic_count: int
    data_types: tuple[str, ...]  # non-indexed inputs, for eth_abi when one is dynamic
    data_names: tuple[str, ...]
    static_hex_length: int | None  # exact data length in hex digits when every data input is a word
    json_plan: tuple[tuple[str, int], ...]  # (name, kind) sorted by name, for canonical JSON
    json_keys: tuple[str, ...]  # '"name":' in that sorted order
    json_slots: tuple[int, ...]  # per input in ABI order, its place in the sorted order
    #: per input in ABI order: (name, in a topic?, topic index or data hex offset, kind, size, json slot)
    steps: tuple[tuple[str, bool, int, int, int, int], ...]

    def decode(self, topics: tuple[str, ...], data: str) -> tuple[dict[str, Any], str]:
        """The arguments and their canonical JSON, in one pass over the words.

        The common one-word kinds are read inline (this runs once per log in a replay); the
        padding checks are those of `_read_word`."""
        if len(topics) != self.topic_count or len("".join(topics)) != _TOPIC_HEX * len(topics):
            raise ValueError(f"{len(topics)} topics, expected {self.topic_count} of 32 bytes")
        dynamic: dict[str, Any] | None = None
        if self.static_hex_length is None:
            values = abi_decode(list(self.data_types), bytes.fromhex(data[2:]), strict=True)
            dynamic = {
                n: _normalise(t, v) for n, t, v in zip(self.data_names, self.data_types, values, strict=True)
            }
        elif len(data) != self.static_hex_length:
            raise ValueError(
                f"{(len(data) - 2) // 2} data bytes, expected {(self.static_hex_length - 2) // 2}"
            )
        args: dict[str, Any] = {}
        pieces = list(self.json_keys)
        for name, in_topic, start, kind, size, slot in self.steps:
            if in_topic:
                word = topics[start][2:]
            elif dynamic is not None:
                value = args[name] = dynamic[name]
                pieces[slot] += _json_value(kind, value)
                continue
            else:
                word = data[start : start + _WORD_HEX]
            if kind == _UINT:
                number = int(word, 16)
                if number >> size:
                    raise ValueError(f"uint{size} out of range")
                args[name] = number
                pieces[slot] += f'"{number}"'
            elif kind == _ADDRESS:
                if word[:24] != _ADDRESS_PAD:
                    raise ValueError("address padding")
                text = args[name] = checksum(word[24:])
                pieces[slot] += f'"{text}"'
            elif kind == _BYTES and size == 32:
                text = args[name] = "0x" + word
                pieces[slot] += f'"{text}"'
            else:
                value = args[name] = _read_word(word, kind, size)
                pieces[slot] += _json_value(kind, value)
        return args, "{" + ",".join(pieces) + "}"

    def args_json(self, args: Mapping[str, Any]) -> str:
        return "{" + ",".join(f'"{n}":' + _json_value(k, args[n]) for n, k in self.json_plan) + "}"


def restore_value(abi_type: str, value: Any) -> Any:
    """A value from its canonical JSON form (see digest.canonical) back to the `Event` form."""
    if abi_type.endswith("]"):
        inner = abi_type[: abi_type.rindex("[")]
        return tuple(restore_value(inner, v) for v in value)
    if abi_type.startswith(("uint", "int")):
        return int(value)
    return value


def _spec(entry: Mapping[str, Any]) -> _EventSpec:
    inputs = entry["inputs"]
    plan: list[tuple[str, bool, int, int, int]] = []
    topic, word = 1, 0
    for i in inputs:
        kind, size = _kind(i["type"], i["indexed"])
        if i["indexed"]:
            plan.append((i["name"], True, topic, kind, size))
            topic += 1
        else:
            plan.append((i["name"], False, word, kind, size))
            word += 1
    data = [i for i in inputs if not i["indexed"]]
    static = all(_kind(i["type"], False)[0] != _DYNAMIC for i in data)
    json_plan = tuple(sorted((name, kind) for name, _, _, kind, _ in plan))
    stored = tuple(
        "bytes32" if k == _HASHED else i["type"] for i, (_, _, _, k, _) in zip(inputs, plan, strict=True)
    )
    return _EventSpec(
        name=entry["name"],
        names=tuple(i["name"] for i in inputs),
        types=stored,
        plan=tuple(plan),
        topic_count=topic,
        data_types=tuple(i["type"] for i in data),
        data_names=tuple(i["name"] for i in data),
        static_hex_length=2 + _WORD_HEX * len(data) if static else None,
        json_plan=json_plan,
        json_keys=tuple(f'"{name}":' for name, _ in json_plan),
        json_slots=tuple(json_plan.index((name, kind)) for name, _, _, kind, _ in plan),
        steps=tuple(
            (
                name,
                in_topic,
                position if in_topic else 2 + _WORD_HEX * position,
                kind,
                size,
                json_plan.index((name, kind)),
            )
            for name, in_topic, position, kind, size in plan
        ),
    )


class LogDecoder:
    """Decodes logs of registered addresses strictly; logs of other addresses are dropped."""

    def __init__(self) -> None:
        self._specs: dict[str, dict[str, _EventSpec]] = {}
        self._by_name: dict[str, dict[str, _EventSpec]] = {}
        self._checksums: dict[str, str] = {}

    @classmethod
    def for_contracts(cls, contracts: Iterable[tuple[str, str]]) -> LogDecoder:
        """A decoder for (address, artifact name) pairs."""
        decoder = cls()
        for address, name in contracts:
            decoder.register(address, list(load_artifact(name).abi))
        return decoder

    def register(self, address: str, abi: list[dict[str, Any]]) -> None:
        specs = {
            "0x" + event_abi_to_log_topic(entry).hex(): _spec(entry)  # type: ignore[arg-type]
            for entry in abi
            if entry.get("type") == "event" and not entry.get("anonymous")
        }
        self._specs[address.lower()] = specs
        self._by_name[address.lower()] = {spec.name: spec for spec in specs.values()}
        self._checksums[address.lower()] = checksum(address)

    @property
    def addresses(self) -> list[str]:
        """Registered addresses in checksum form (for a getLogs address filter)."""
        return [checksum(a) for a in self._specs]

    def restore(self, address: str, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Arguments of a stored event (canonical JSON, decoded) in the form `decode` gives."""
        spec = self._by_name.get(address.lower(), {}).get(name)
        if spec is None:
            raise UndecodableLog(f"no event {name} in the ABI of {address}")
        if set(args) != set(spec.names):
            raise UndecodableLog(f"stored {name} has arguments {sorted(args)}, the ABI {sorted(spec.names)}")
        return {n: restore_value(t, args[n]) for n, t in zip(spec.names, spec.types, strict=True)}

    def args_json(self, event: Event) -> str:
        """Canonical JSON of a decoded event's arguments (equal to digest.args_json, faster)."""
        if event.args_json:
            return event.args_json
        spec = self._by_name[event.address.lower()][event.name]
        return spec.args_json(event.args)

    def event_names(self) -> set[str]:
        return {spec.name for specs in self._specs.values() for spec in specs.values()}

    def decode(self, log: RawLog) -> Event | None:
        """The decoded event, None for an address not registered; UndecodableLog if it cannot be."""
        specs = self._specs.get(log.address)
        if specs is None:
            return None
        if not log.topics:
            raise UndecodableLog(f"{_where(log)}: no topics")
        spec = specs.get(log.topics[0])
        if spec is None:
            raise UndecodableLog(f"{_where(log)}: unknown event topic {log.topics[0]}")
        try:
            args, canonical = spec.decode(log.topics, log.data)
        except (ValueError, DecodingError) as exc:
            raise UndecodableLog(f"{_where(log)}: {spec.name} does not decode: {exc}") from exc
        return Event(
            spec.name,
            args,
            self._checksums[log.address],
            log.block_number,
            log.block_hash,
            log.tx_hash,
            log.tx_index,
            log.log_index,
            canonical,
        )


def _where(log: RawLog) -> str:
    return f"log {log.log_index} of tx {log.tx_hash} in block {log.block_number} from {log.address}"
