"""The receipt attestation: its EIP-712 type and signing. This is the one definition that the
contract (ReceiptOracle.sol), the demo and the warehouse devices share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_keys.exceptions import BadSignature
from eth_typing import ChecksumAddress
from eth_utils import ValidationError, keccak

from chain_client.artifacts import load_artifact
from chain_client.chain import Chain
from chain_client.models import Warehouse
from chain_client.transactions import Transactor, TxResult, call_checked

DOMAIN_NAME = "certledger ReceiptOracle"
DOMAIN_VERSION = "1"

ATTESTATION_TYPES: dict[str, list[dict[str, str]]] = {
    "ReceiptAttestation": [
        {"name": "orderId", "type": "uint256"},
        {"name": "warehouse", "type": "bytes32"},
        {"name": "goodsHash", "type": "bytes32"},
        {"name": "quantity", "type": "uint64"},
        {"name": "receivedAt", "type": "uint64"},
        {"name": "deviceSetVersion", "type": "uint32"},
        {"name": "nonce", "type": "uint256"},
    ]
}


def label_hash(label: str) -> bytes:
    """bytes32 id for a human label (warehouse name, goods description, invoice number)."""
    return keccak(text=label)


@dataclass(frozen=True)
class ReceiptAttestation:
    """What a warehouse's devices sign when goods for an order arrive."""

    order_id: int
    warehouse: bytes
    goods_hash: bytes
    quantity: int
    received_at: int
    device_set_version: int
    nonce: int

    def message(self) -> dict[str, Any]:
        return {
            "orderId": self.order_id,
            "warehouse": self.warehouse,
            "goodsHash": self.goods_hash,
            "quantity": self.quantity,
            "receivedAt": self.received_at,
            "deviceSetVersion": self.device_set_version,
            "nonce": self.nonce,
        }

    def as_tuple(self) -> tuple[int, bytes, bytes, int, int, int, int]:
        """The struct as the contract's ABI takes it."""
        return (
            self.order_id,
            self.warehouse,
            self.goods_hash,
            self.quantity,
            self.received_at,
            self.device_set_version,
            self.nonce,
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
                **ATTESTATION_TYPES,
            },
            "primaryType": "ReceiptAttestation",
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


def sign_attestation(
    device: LocalAccount, attestation: ReceiptAttestation, chain_id: int, oracle: ChecksumAddress
) -> bytes:
    """A device's 65-byte signature (r, s, v) over the attestation."""
    signable = encode_typed_data(full_message=attestation.typed_data(chain_id, oracle))
    return bytes(device.sign_message(signable).signature)


def recover_signer(
    signature: bytes, attestation: ReceiptAttestation, chain_id: int, oracle: ChecksumAddress
) -> ChecksumAddress:
    signable = encode_typed_data(full_message=attestation.typed_data(chain_id, oracle))
    address: ChecksumAddress = Account.recover_message(signable, signature=signature)
    return address


def in_signer_order(
    signatures: list[bytes], attestation: ReceiptAttestation, chain_id: int, oracle: ChecksumAddress
) -> list[bytes]:
    """Signatures sorted by signer address, ascending: the order the contract requires. One that
    recovers to no signer goes first, so the contract refuses it with its own InvalidSignature."""

    def signer_key(signature: bytes) -> int:
        try:
            return int(recover_signer(signature, attestation, chain_id, oracle), 16)
        except (ValueError, ValidationError, BadSignature):
            return -1

    return sorted(signatures, key=signer_key)


class ReceiptOracleClient:
    """Client of ReceiptOracle: warehouses, device sets, and confirming receipts."""

    def __init__(self, chain: Chain, address: ChecksumAddress, tx: Transactor) -> None:
        self.chain = chain
        self.address = address
        self.contract = chain.w3.eth.contract(address=address, abi=list(load_artifact("ReceiptOracle").abi))
        self._tx = tx

    def register_warehouse(
        self,
        admin: LocalAccount,
        warehouse: bytes,
        devices: list[ChecksumAddress],
        threshold: int,
        freshness: int,
    ) -> TxResult:
        """Enrols a warehouse with its device keys, needing `threshold` of them, readings at most
        `freshness` seconds old."""
        fn = self.contract.functions.registerWarehouse(warehouse, devices, threshold, freshness)
        return self._tx.send(admin, fn)

    def rotate_devices(
        self,
        admin: LocalAccount,
        warehouse: bytes,
        devices: list[ChecksumAddress],
        threshold: int,
        freshness: int,
    ) -> TxResult:
        """Replaces the device set; signatures under the old set stop verifying."""
        fn = self.contract.functions.rotateDevices(warehouse, devices, threshold, freshness)
        return self._tx.send(admin, fn)

    def deactivate_warehouse(self, admin: LocalAccount, warehouse: bytes) -> TxResult:
        return self._tx.send(admin, self.contract.functions.deactivateWarehouse(warehouse))

    def warehouse(self, warehouse: bytes) -> Warehouse:
        active, threshold, count, version, freshness = call_checked(
            self.contract.functions.warehouse(warehouse).call
        )
        return Warehouse(warehouse, bool(active), int(threshold), int(count), int(version), int(freshness))

    def is_device(self, warehouse: bytes, device: ChecksumAddress) -> bool:
        return bool(call_checked(self.contract.functions.isDevice(warehouse, device).call))

    def attestation_used(self, digest: bytes) -> bool:
        return bool(call_checked(self.contract.functions.attestationUsed(digest).call))

    def digest(self, attestation: ReceiptAttestation) -> bytes:
        """The digest as the contract computes it (a check on our EIP-712 encoding)."""
        return bytes(call_checked(self.contract.functions.attestationDigest(attestation.as_tuple()).call))

    def sign(self, device: LocalAccount, attestation: ReceiptAttestation) -> bytes:
        return sign_attestation(device, attestation, self.chain.chain_id, self.address)

    def confirm_receipt(
        self, relayer: LocalAccount, attestation: ReceiptAttestation, signatures: list[bytes]
    ) -> tuple[int, TxResult]:
        """Submits the attestation with its signatures (put in signer order here); returns the
        root certificate id the ledger minted."""
        ordered = in_signer_order(signatures, attestation, self.chain.chain_id, self.address)
        result = self._tx.send(
            relayer, self.contract.functions.confirmReceipt(attestation.as_tuple(), ordered)
        )
        return int(result.event("OrderConfirmed")["rootCertificateId"]), result
