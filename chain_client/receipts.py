"""Warehouse device observations: their EIP-712 type, signing, and the ReceiptOracle client. This is
the one definition that the contract (ReceiptOracle.sol), the oracle gateway, the demo and the
devices share."""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils import keccak, to_checksum_address

from chain_client.artifacts import load_artifact
from chain_client.chain import Chain
from chain_client.functions import CheckedFunctions
from chain_client.models import Warehouse
from chain_client.transactions import PreparedTx, Transactor, TxResult, call_checked

DOMAIN_NAME = "certledger ReceiptOracle"
DOMAIN_VERSION = "1"

OBSERVATION_TYPES: dict[str, list[dict[str, str]]] = {
    "Observation": [
        {"name": "orderId", "type": "uint256"},
        {"name": "warehouse", "type": "bytes32"},
        {"name": "goodsHash", "type": "bytes32"},
        {"name": "device", "type": "address"},
        {"name": "kind", "type": "uint8"},
        {"name": "value", "type": "uint64"},
        {"name": "observedAt", "type": "uint64"},
        {"name": "sequence", "type": "uint64"},
        {"name": "deviceSetVersion", "type": "uint32"},
        {"name": "deadline", "type": "uint64"},
    ]
}

# secp256k1's group order: a signature with s above half of it is the malleated twin of a valid one.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class ReadingKind(IntEnum):
    """What a device measures (ReceiptOracle's KIND_* constants)."""

    CARTON_COUNT = 1  # an RFID portal counting tagged cartons: the delivered quantity
    NET_WEIGHT_GRAMS = 2  # a weighbridge's net weight: the cross-check


def delivery_ranges(max_cartons: int, carton_grams: int) -> tuple[ReadingRange, ReadingRange]:
    """The ranges of a warehouse of RFID portals and a weighbridge: 1 to `max_cartons` cartons, and
    up to their weight in grams."""
    return (
        ReadingRange(ReadingKind.CARTON_COUNT, 1, max_cartons),
        ReadingRange(ReadingKind.NET_WEIGHT_GRAMS, 1, max_cartons * carton_grams),
    )


#: The longest freshness window a warehouse may have (ReceiptOracle.MAX_FRESHNESS).
MAX_FRESHNESS = 7 * 86_400


def label_hash(label: str) -> bytes:
    """bytes32 id for a human label (warehouse name, goods description, invoice number)."""
    return keccak(text=label)


def bytes32_of(value: str) -> bytes:
    """A bytes32 given as 0x-hex, or a label hashed with keccak256 (`label_hash`). A value that looks
    like hex but is not exactly 32 bytes of it is refused (ValueError), not hashed as a label: an
    invoice hash pasted without its 0x, or with a digit missing, would otherwise be recorded as
    another value, and the duplicate-invoice check would never meet the real one."""
    prefixed = value[:2].lower() == "0x"
    body = value[2:] if prefixed else value
    looks_hex = prefixed or (len(body) >= 40 and all(c in string.hexdigits for c in body))
    if not looks_hex:
        return label_hash(value)
    if len(body) != 64 or not all(c in string.hexdigits for c in body):
        raise ValueError(f"not a 0x-prefixed 32-byte hex value: {value}")
    if not prefixed:
        raise ValueError(f"a 32-byte hex value needs its 0x prefix (else it is a label): {value}")
    return bytes.fromhex(body)


@dataclass(frozen=True)
class DeviceEnrolment:
    address: ChecksumAddress
    kind: int

    def as_tuple(self) -> tuple[ChecksumAddress, int]:
        return (self.address, self.kind)


@dataclass(frozen=True)
class ReadingRange:
    """Plausible readings of one kind; every kind with a range is required in a receipt."""

    kind: int
    min: int
    max: int

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.kind, self.min, self.max)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.min <= value <= self.max


@dataclass(frozen=True)
class Observation:
    """One device's signed reading of the goods of an order."""

    order_id: int
    warehouse: bytes
    goods_hash: bytes
    device: ChecksumAddress
    kind: int
    value: int
    observed_at: int
    sequence: int
    device_set_version: int
    deadline: int

    def message(self) -> dict[str, Any]:
        return {
            "orderId": self.order_id,
            "warehouse": self.warehouse,
            "goodsHash": self.goods_hash,
            "device": self.device,
            "kind": self.kind,
            "value": self.value,
            "observedAt": self.observed_at,
            "sequence": self.sequence,
            "deviceSetVersion": self.device_set_version,
            "deadline": self.deadline,
        }

    def as_tuple(self) -> tuple[int, bytes, bytes, ChecksumAddress, int, int, int, int, int, int]:
        """The struct as the contract's ABI takes it."""
        return (
            self.order_id,
            self.warehouse,
            self.goods_hash,
            self.device,
            self.kind,
            self.value,
            self.observed_at,
            self.sequence,
            self.device_set_version,
            self.deadline,
        )

    def typed_data(self, chain_id: int, oracle: ChecksumAddress) -> dict[str, Any]:
        """The full EIP-712 payload; the domain binds it to one chain and one oracle deployment."""
        return {
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                **OBSERVATION_TYPES,
            },
            "primaryType": "Observation",
            "domain": {
                "name": DOMAIN_NAME,
                "version": DOMAIN_VERSION,
                "chainId": chain_id,
                "verifyingContract": oracle,
            },
            "message": self.message(),
        }

    def digest(self, chain_id: int, oracle: ChecksumAddress) -> bytes:
        signable = encode_typed_data(full_message=self.typed_data(chain_id, oracle))
        return keccak(b"\x19" + signable.version + signable.header + signable.body)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe form (bytes as 0x hex) for MQTT, HTTP and the gateway's store."""
        return {
            "order_id": self.order_id,
            "warehouse": "0x" + self.warehouse.hex(),
            "goods_hash": "0x" + self.goods_hash.hex(),
            "device": self.device,
            "kind": self.kind,
            "value": self.value,
            "observed_at": self.observed_at,
            "sequence": self.sequence,
            "device_set_version": self.device_set_version,
            "deadline": self.deadline,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Observation:
        """The inverse of to_json; raises ValueError/KeyError/TypeError on a malformed document."""
        return cls(
            order_id=_uint(data["order_id"], 256),
            warehouse=_bytes32(data["warehouse"]),
            goods_hash=_bytes32(data["goods_hash"]),
            device=to_checksum_address(data["device"]),
            kind=_uint(data["kind"], 8),
            value=_uint(data["value"], 64),
            observed_at=_uint(data["observed_at"], 64),
            sequence=_uint(data["sequence"], 64),
            device_set_version=_uint(data["device_set_version"], 32),
            deadline=_uint(data["deadline"], 64),
        )


def _uint(value: object, bits: int) -> int:
    # bool is an int subclass; a JSON true must not pass for 1.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**bits:
        raise ValueError(f"not a uint{bits}: {value!r}")
    return value


def _bytes32(value: object) -> bytes:
    if not isinstance(value, str) or len(value) != 66:
        raise ValueError(f"not a 0x-prefixed bytes32: {value!r}")
    return strict_hex(value)


def strict_hex(value: str) -> bytes:
    """The bytes of `value`, 0x and hex digits only. bytes.fromhex alone skips whitespace, so
    66 characters of it could hold 31 bytes: a value the signature check takes but the chain's
    encoder refuses, and unauthenticated readings are parsed with this."""
    body = value[2:]
    if not value.startswith("0x") or len(body) % 2 or not all(c in string.hexdigits for c in body):
        raise ValueError(f"not 0x-prefixed hex: {value[:80]!r}")
    return bytes.fromhex(body)


def sign_observation(device: LocalAccount, obs: Observation, chain_id: int, oracle: ChecksumAddress) -> bytes:
    """A device's 65-byte signature (r, s, v) over its observation; eth-account signs low-s, v 27/28."""
    signable = encode_typed_data(full_message=obs.typed_data(chain_id, oracle))
    return bytes(device.sign_message(signable).signature)


def signature_is_canonical(signature: bytes) -> bool:
    """65 bytes, r and s in range, s in the lower half, v 27 or 28: what the contract accepts.
    Checked before recovery because eth-account would happily recover a malleated twin."""
    if len(signature) != 65:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    return 0 < r < SECP256K1_N and 0 < s <= SECP256K1_N // 2 and signature[64] in (27, 28)


def recover_observation_signer(
    signature: bytes, obs: Observation, chain_id: int, oracle: ChecksumAddress
) -> ChecksumAddress:
    """The address that signed `obs`; raises ValueError for a non-canonical or unrecoverable one."""
    if not signature_is_canonical(signature):
        raise ValueError("signature is not 65 bytes of low-s with v 27/28")
    signable = encode_typed_data(full_message=obs.typed_data(chain_id, oracle))
    try:
        address: ChecksumAddress = Account.recover_message(signable, signature=signature)
    except Exception as exc:  # eth-keys raises several unrelated types for a bad point
        raise ValueError(f"signature does not recover: {exc}") from exc
    return address


class ReceiptOracleClient:
    """Client of ReceiptOracle: warehouses, device sets, the relayer allow-list, and receipts."""

    def __init__(self, chain: Chain, address: ChecksumAddress, tx: Transactor) -> None:
        self.chain = chain
        self.address = address
        self.contract = chain.w3.eth.contract(address=address, abi=list(load_artifact("ReceiptOracle").abi))
        self._fn = CheckedFunctions(self.contract)
        self._tx = tx

    # ------------------------------------------------------------------ administration

    def register_warehouse(
        self,
        admin: LocalAccount,
        warehouse: bytes,
        devices: Sequence[DeviceEnrolment],
        threshold: int,
        freshness: int,
        ranges: Sequence[ReadingRange],
    ) -> TxResult:
        """Enrols a warehouse with its device keys and their kinds, needing `threshold` of them,
        readings at most `freshness` seconds old and within `ranges`."""
        fn = self._fn.registerWarehouse(
            warehouse, [d.as_tuple() for d in devices], threshold, freshness, [r.as_tuple() for r in ranges]
        )
        return self._tx.send(admin, fn)

    def rotate_devices(
        self,
        admin: LocalAccount,
        warehouse: bytes,
        devices: Sequence[DeviceEnrolment],
        threshold: int,
        freshness: int,
        ranges: Sequence[ReadingRange],
    ) -> TxResult:
        """Replaces the device set and rules; observations signed under the old set stop verifying."""
        fn = self._fn.rotateDevices(
            warehouse, [d.as_tuple() for d in devices], threshold, freshness, [r.as_tuple() for r in ranges]
        )
        return self._tx.send(admin, fn)

    def deactivate_warehouse(self, admin: LocalAccount, warehouse: bytes) -> TxResult:
        return self._tx.send(admin, self._fn.deactivateWarehouse(warehouse))

    def set_relayer(self, admin: LocalAccount, relayer: ChecksumAddress, allowed: bool) -> TxResult:
        """Puts `relayer` on (or takes it off) the list of accounts that may submit receipts."""
        return self._tx.send(admin, self._fn.setRelayer(relayer, allowed))

    # ------------------------------------------------------------------ reads

    def warehouse(self, warehouse: bytes) -> Warehouse:
        active, threshold, count, version, freshness = call_checked(self._fn.warehouse(warehouse).call)
        return Warehouse(warehouse, bool(active), int(threshold), int(count), int(version), int(freshness))

    def required_kinds(self, warehouse: bytes) -> list[int]:
        mask = int(call_checked(self._fn.requiredKinds(warehouse).call))
        return [kind for kind in range(1, 8) if mask >> kind & 1]

    def reading_range(self, warehouse: bytes, kind: int) -> ReadingRange:
        got_kind, low, high = call_checked(self._fn.readingRange(warehouse, kind).call)
        return ReadingRange(int(got_kind), int(low), int(high))

    def is_device(self, warehouse: bytes, device: ChecksumAddress) -> bool:
        return bool(call_checked(self._fn.isDevice(warehouse, device).call))

    def device_kind(self, warehouse: bytes, device: ChecksumAddress) -> int:
        """The kind `device` reads in the warehouse's current set; 0 if it is not a current device."""
        return int(call_checked(self._fn.deviceKind(warehouse, device).call))

    def is_relayer(self, account: ChecksumAddress) -> bool:
        return bool(call_checked(self._fn.isRelayer(account).call))

    def sequence_used(self, device: ChecksumAddress, sequence: int) -> bool:
        return bool(call_checked(self._fn.sequenceUsed(device, sequence).call))

    def observation_digest(self, obs: Observation) -> bytes:
        """The digest as the contract computes it (a check on our EIP-712 encoding)."""
        return bytes(call_checked(self._fn.observationDigest(obs.as_tuple()).call))

    # ------------------------------------------------------------------ receipts

    def sign(self, device: LocalAccount, obs: Observation) -> bytes:
        return sign_observation(device, obs, self.chain.chain_id, self.address)

    def observe(
        self,
        device: LocalAccount,
        *,
        order_id: int,
        warehouse: bytes,
        goods_hash: bytes,
        kind: int,
        value: int,
        observed_at: int,
        sequence: int,
        deadline: int,
        device_set_version: int | None = None,
    ) -> tuple[Observation, bytes]:
        """A device's observation under the warehouse's current device set (read from the chain
        unless given), and its signature."""
        if device_set_version is None:
            device_set_version = self.warehouse(warehouse).device_set_version
        obs = Observation(
            order_id=order_id,
            warehouse=warehouse,
            goods_hash=goods_hash,
            device=device.address,
            kind=kind,
            value=value,
            observed_at=observed_at,
            sequence=sequence,
            device_set_version=device_set_version,
            deadline=deadline,
        )
        return obs, self.sign(device, obs)

    def observe_delivery(
        self,
        devices: Sequence[tuple[LocalAccount, int]],
        *,
        order_id: int,
        warehouse: bytes,
        goods_hash: bytes,
        cartons: int,
        carton_grams: int,
        observed_at: int,
        sequences: Sequence[int],
        deadline: int,
    ) -> tuple[list[Observation], list[bytes]]:
        """Honest devices (key, kind) observing one delivery of `cartons`: a portal counts them, a
        weighbridge weighs `cartons * carton_grams`. Each device uses its own next sequence."""
        observations, signatures = [], []
        version = self.warehouse(warehouse).device_set_version  # one read for the whole delivery
        for (device, kind), sequence in zip(devices, sequences, strict=True):
            value = cartons * carton_grams if kind == ReadingKind.NET_WEIGHT_GRAMS else cartons
            obs, sig = self.observe(
                device,
                order_id=order_id,
                warehouse=warehouse,
                goods_hash=goods_hash,
                kind=kind,
                value=value,
                observed_at=observed_at,
                sequence=sequence,
                deadline=deadline,
                device_set_version=version,
            )
            observations.append(obs)
            signatures.append(sig)
        return observations, signatures

    def confirm_call(self, observations: Sequence[Observation], signatures: Sequence[bytes]) -> Any:
        """The contract call for a receipt, observations put in ascending device order."""
        pairs = sorted(zip(observations, signatures, strict=True), key=lambda p: int(p[0].device, 16))
        return self._fn.confirmReceipt([obs.as_tuple() for obs, _ in pairs], [sig for _, sig in pairs])

    def prepare_confirm(
        self, relayer: LocalAccount, observations: Sequence[Observation], signatures: Sequence[bytes]
    ) -> PreparedTx:
        """A receipt simulated and signed, not sent: for a relayer that records each transaction
        before broadcasting it (Transactor.broadcast, Transactor.receipt)."""
        return self._tx.prepare(relayer, self.confirm_call(observations, signatures))

    def confirm_receipt(
        self, relayer: LocalAccount, observations: Sequence[Observation], signatures: Sequence[bytes]
    ) -> tuple[int, TxResult]:
        """Submits the observations with their signatures; returns the root certificate id the
        ledger minted."""
        result = self._tx.send(relayer, self.confirm_call(observations, signatures))
        return int(result.event("OrderConfirmed")["rootCertificateId"]), result
