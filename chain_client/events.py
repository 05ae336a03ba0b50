"""Strict decoding of the logs our contracts emit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_typing import ChecksumAddress
from eth_utils import event_abi_to_log_topic, to_checksum_address
from web3 import Web3
from web3._utils.events import get_event_data
from web3.types import LogReceipt, TxReceipt


class UndecodableLog(Exception):
    """A log from one of our contracts matches no event in its ABI."""


@dataclass(frozen=True)
class DecodedEvent:
    """One decoded log with where it came from."""

    name: str
    args: dict[str, Any]
    address: ChecksumAddress
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int

    def __getitem__(self, key: str) -> Any:
        return self.args[key]


class EventDecoder:
    """Decodes logs of known contract addresses with their ABIs; other addresses are ignored."""

    def __init__(self, w3: Web3) -> None:
        self._w3 = w3
        self._by_address: dict[ChecksumAddress, dict[bytes, dict[str, Any]]] = {}

    def register(self, address: str, abi: list[dict[str, Any]]) -> None:
        topics = {
            event_abi_to_log_topic(entry): entry  # type: ignore[arg-type]
            for entry in abi
            if entry.get("type") == "event" and not entry.get("anonymous")
        }
        self._by_address[to_checksum_address(address)] = topics

    @property
    def addresses(self) -> list[ChecksumAddress]:
        return list(self._by_address)

    def decode_log(self, log: LogReceipt) -> DecodedEvent | None:
        """The decoded event, or None for a log of an address we do not track."""
        address = to_checksum_address(log["address"])
        topics = self._by_address.get(address)
        if topics is None:
            return None
        if not log["topics"]:
            raise UndecodableLog(f"log without topics from {address}")
        abi = topics.get(bytes(log["topics"][0]))
        if abi is None:
            raise UndecodableLog(f"unknown event topic 0x{bytes(log['topics'][0]).hex()} from {address}")
        data = get_event_data(self._w3.codec, abi, log)
        return DecodedEvent(
            name=data["event"],
            args=dict(data["args"]),
            address=address,
            block_number=int(log["blockNumber"]),
            block_hash="0x" + bytes(log["blockHash"]).hex(),
            tx_hash="0x" + bytes(log["transactionHash"]).hex(),
            log_index=int(log["logIndex"]),
        )

    def decode_receipt(self, receipt: TxReceipt) -> list[DecodedEvent]:
        return [e for log in receipt["logs"] if (e := self.decode_log(log)) is not None]
