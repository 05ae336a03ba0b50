"""Strict, fast decoding of the ledger's and the oracle's logs for the index.

`chain_client.events.EventDecoder` decodes through web3's `get_event_data`, which costs more per
log than downloading it; a replay decodes tens of thousands. This decoder is built from the same
ABIs and as strict: an unknown topic, a wrong topic count, a data length that does not match, or
a word with non-zero padding from a tracked address raises the same `UndecodableLog` (arrays are
held to their one canonical encoding, which eth_abi does not check). Each event's decoder is
compiled from the ABI into straight-line Python (`_compile`); the generic walk over the words,
with eth_abi for other dynamic data, is the fallback and the reference. tests/test_index_replay.py
checks that this decoder and the client's agree on every event of a random lifecycle.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import event_abi_to_log_topic, to_checksum_address

from chain_client.artifacts import load_artifact
from chain_client.events import UndecodableLog

_WORD_HEX = 64
_TOPIC_HEX = 2 + _WORD_HEX
#: A log's data as the ABI encodes it: 0x and whole 32-byte words of lower-case hex digits.
_DATA = re.compile(r"0x(?:[0-9a-f]{64})*").fullmatch


def _topics_and_data(count: int) -> Callable[[str], re.Match[str] | None]:
    """A check of `count` topics of 66 characters each joined with the data: every topic is 0x and
    64 lower-case hex digits, the data 0x and lower-case hex digits (its length is checked word by
    word where it is read). One regular expression over the whole log: `int(word, 16)` alone would
    take a sign, underscores or spaces, and bytes32 values are copied as they are."""
    return re.compile(f"(?:0x[0-9a-f]{{64}}){{{count}}}0x[0-9a-f]*").fullmatch


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

    def lowered(self) -> RawLog:
        """This log with its hex strings in lower case."""
        return self._replace(
            address=self.address.lower(),
            topics=tuple(t.lower() for t in self.topics),
            data=self.data.lower(),
            block_hash=self.block_hash.lower(),
            tx_hash=self.tx_hash.lower(),
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
    topic_count: int
    data_types: tuple[str, ...]  # non-indexed inputs, for eth_abi when one is dynamic
    data_names: tuple[str, ...]
    static_hex_length: int | None  # exact data length in hex digits when every data input is a word
    json_plan: tuple[tuple[str, int], ...]  # (name, kind) sorted by name, for canonical JSON
    json_keys: tuple[str, ...]  # '"name":' in that sorted order
    #: per input in ABI order: (name, in a topic?, topic index or data hex offset, kind, size, json slot)
    steps: tuple[tuple[str, bool, int, int, int, int], ...]

    #: `decode` compiled for this event (see `_compile`)
    fast: Callable[[tuple[str, ...], str], tuple[dict[str, Any], str]] | None = None

    def decode(self, topics: tuple[str, ...], data: str) -> tuple[dict[str, Any], str]:
        """The arguments and their canonical JSON, in one pass over the words."""
        if self.fast is not None:
            return self.fast(topics, data)
        return self.decode_generic(topics, data)

    def decode_generic(self, topics: tuple[str, ...], data: str) -> tuple[dict[str, Any], str]:
        """`decode` for any event, dynamic data included, by walking the plan."""
        if len(topics) != self.topic_count or any(len(t) != _TOPIC_HEX for t in topics):
            raise ValueError(f"{len(topics)} topics, expected {self.topic_count} of 32 bytes")
        if not _topics_and_data(self.topic_count)("".join(topics) + data) or not _DATA(data):
            raise ValueError("topics or data are not 0x and 32-byte words of lower-case hex")
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
    spec = _EventSpec(
        name=entry["name"],
        names=tuple(i["name"] for i in inputs),
        types=stored,
        topic_count=topic,
        data_types=tuple(i["type"] for i in data),
        data_names=tuple(i["name"] for i in data),
        static_hex_length=2 + _WORD_HEX * len(data) if static else None,
        json_plan=json_plan,
        json_keys=tuple(f'"{name}":' for name, _ in json_plan),
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
    if not all(_word_array(t) for t, (_, _, _, k, _) in zip(spec.types, plan, strict=True) if k == _DYNAMIC):
        return spec
    return dataclasses.replace(spec, fast=_compile(spec))


def _word_array(abi_type: str) -> bool:
    """A dynamic array of one-word values (`address[]`, `uint8[]`): decoded without eth_abi."""
    return abi_type.endswith("[]") and _kind(abi_type[:-2], False)[0] not in (_DYNAMIC, _HASHED)


def _compile(spec: _EventSpec) -> Callable[[tuple[str, ...], str], tuple[dict[str, Any], str]]:
    """`decode` for an event of one-word values and arrays of them, as straight-line Python.

    A replay decodes every log: the generic walk over the plan spends most of its time deciding
    what each word is. The compiled function reads each word at its fixed place with the same
    checks as `_read_word`, each array where the canonical encoding puts it, and writes the
    canonical JSON with one f-string. The code is made from our own ABIs only; names enter it
    through repr()."""
    head_hex = 2 + _WORD_HEX * len(spec.data_types)
    lines = [
        "def decode(topics, data):",
        f"    if len(topics) != {spec.topic_count} or "
        + " or ".join(f"len(topics[{i}]) != {_TOPIC_HEX}" for i in range(spec.topic_count))
        + ":",
        f"        raise ValueError(f'{{len(topics)}} topics, expected {spec.topic_count} of 32 bytes')",
        "    if not HEX(''.join(topics) + data):",
        "        raise ValueError('topics or data are not 0x and 32-byte words of lower-case hex')",
        f"    if len(data) < {head_hex}:",
        "        raise ValueError(f'{(len(data) - 2) // 2} data bytes, expected '"
        f"'{head_hex // 2 - 1} or more')",
        # hex position of the next array's content: the canonical encoding puts the arrays after
        # the head, in argument order, with nothing between or after them
        f"    at = {head_hex}",
    ]
    values: list[str] = []
    texts: dict[int, str] = {}
    for i, (_, in_topic, start, kind, size, slot) in enumerate(spec.steps):
        word = f"topics[{start}][2:]" if in_topic else f"data[{start}:{start + _WORD_HEX}]"
        v = f"v{i}"
        if kind == _DYNAMIC:
            item_kind, item_size = _kind(spec.types[i][:-2], False)
            lines += [
                f"    if int({word}, 16) * 2 + 2 != at:",
                f"        raise ValueError('array {i} is not where it belongs')",
                "    n = int(data[at:at + 64], 16)",
                "    at += 64",
                "    if n > (len(data) - at) // 64: raise ValueError('array longer than the data')",
                f"    {v} = tuple([read_word(data[j:j + 64], {item_kind}, {item_size}) "
                "for j in range(at, at + 64 * n, 64)])",
                "    at += 64 * n",
            ]
            texts[slot] = f"{{json_value({_DYNAMIC}, {v})}}"
        elif kind == _UINT:
            lines.append(f"    {v} = int({word}, 16)")
            if size < 256:
                lines.append(f"    if {v} >> {size}: raise ValueError('uint{size} out of range')")
            texts[slot] = f'"{{{v}}}"'
        elif kind == _ADDRESS:
            lines.append(f"    w = {word}")
            lines.append("    if w[:24] != PAD: raise ValueError('address padding')")
            lines.append(f"    {v} = CHECKSUMS.get(w[24:]) or checksum(w[24:])")
            texts[slot] = f'"{{{v}}}"'
        elif (kind == _BYTES and size == 32) or kind == _HASHED:
            source = f"topics[{start}]" if in_topic else f"'0x' + {word}"
            lines.append(f"    {v} = {source}")
            texts[slot] = f'"{{{v}}}"'
        else:
            lines.append(f"    {v} = read_word({word}, {kind}, {size})")
            texts[slot] = f"{{json_value({kind}, {v})}}"
        values.append(v)
    lines += [
        "    if at != len(data):",
        "        raise ValueError(f'{(len(data) - 2) // 2} data bytes, expected {(at - 2) // 2}')",
    ]
    args = ", ".join(f"{name!r}: {v}" for (name, *_), v in zip(spec.steps, values, strict=True))
    body = ",".join(key + texts[slot] for slot, key in enumerate(spec.json_keys))
    lines.append(f"    return {{{args}}}, f'{{{{{body.replace(chr(39), chr(92) + chr(39))}}}}}'")
    namespace: dict[str, Any] = {
        "PAD": _ADDRESS_PAD,
        "HEX": _topics_and_data(spec.topic_count),
        "CHECKSUMS": _CHECKSUMS,
        "checksum": checksum,
        "read_word": _read_word,
        "json_value": _json_value,
    }
    exec(compile("\n".join(lines) + "\n", f"<decode {spec.name}>", "exec"), namespace)  # noqa: S102
    decode: Callable[[tuple[str, ...], str], tuple[dict[str, Any], str]] = namespace["decode"]
    return decode


def _specs(abi: list[dict[str, Any]]) -> dict[str, _EventSpec]:
    """topic0 -> event spec, for every named event of an ABI."""
    return {
        "0x" + event_abi_to_log_topic(entry).hex(): _spec(entry)  # type: ignore[arg-type]
        for entry in abi
        if entry.get("type") == "event" and not entry.get("anonymous")
    }


#: compiled specs per artifact: every sync and verify builds a decoder, and compiling one is
#: a noticeable part of a short sync
_ARTIFACT_SPECS: dict[str, dict[str, _EventSpec]] = {}


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
            specs = _ARTIFACT_SPECS.get(name)
            if specs is None:
                specs = _ARTIFACT_SPECS[name] = _specs(list(load_artifact(name).abi))
            decoder._add(address, specs)
        return decoder

    def register(self, address: str, abi: list[dict[str, Any]]) -> None:
        self._add(address, _specs(abi))

    def _add(self, address: str, specs: dict[str, _EventSpec]) -> None:
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
        # tuple.__new__: a NamedTuple's own constructor is a Python function, twice as slow
        return tuple.__new__(
            Event,
            (
                spec.name,
                args,
                self._checksums[log.address],
                log.block_number,
                log.block_hash,
                log.tx_hash,
                log.tx_index,
                log.log_index,
                canonical,
            ),
        )


def _where(log: RawLog) -> str:
    return f"log {log.log_index} of tx {log.tx_hash} in block {log.block_number} from {log.address}"
