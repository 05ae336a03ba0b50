"""Deploying a whole certledger system and the manifest that describes it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils import to_checksum_address

from chain_client.artifacts import load_artifact
from chain_client.chain import Chain
from chain_client.errors import ManifestError
from chain_client.events import EventDecoder
from chain_client.transactions import Transactor

MANIFEST_VERSION = 1
SYSTEM_CONTRACTS = ("SettlementToken", "ReceiptOracle", "CertificateLedger")


@dataclass(frozen=True)
class Deployment:
    """Where a certledger system lives: everything an auditor needs besides a node URL."""

    chain_id: int
    ledger: ChecksumAddress
    oracle: ChecksumAddress
    token: ChecksumAddress
    admin: ChecksumAddress
    deployment_block: int
    #: sha256 of each contract's deployed bytecode as compiled, to tell which code was deployed
    artifact_hashes: dict[str, str]
    version: int = MANIFEST_VERSION

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Deployment:
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ManifestError(f"no deployment manifest at {path}; run `certledger deploy`") from None
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not JSON: {exc}") from exc
        except (OSError, UnicodeDecodeError) as exc:  # a directory, no permission, not text
            raise ManifestError(f"cannot read the deployment manifest {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{path}: malformed manifest (a JSON {type(data).__name__}, not an object)")
        if data.get("version") != MANIFEST_VERSION:
            raise ManifestError(
                f"{path}: manifest version {data.get('version')}, expected {MANIFEST_VERSION}"
            )
        try:
            return cls(
                chain_id=_whole(data, "chain_id"),
                ledger=to_checksum_address(data["ledger"]),
                oracle=to_checksum_address(data["oracle"]),
                token=to_checksum_address(data["token"]),
                admin=to_checksum_address(data["admin"]),
                deployment_block=_whole(data, "deployment_block"),
                artifact_hashes=dict(data["artifact_hashes"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ManifestError(f"{path}: malformed manifest ({exc})") from exc

    def check(self, chain: Chain) -> None:
        """Refuses a manifest for another chain, for contracts compiled from other sources than this
        client's, or whose addresses are not one system: no code, or a ledger, oracle and token
        that do not name each other."""
        if chain.chain_id != self.chain_id:
            raise ManifestError(f"manifest is for chain {self.chain_id}, node is chain {chain.chain_id}")
        for name in ("CertificateLedger", "ReceiptOracle"):
            recorded, ours = self.artifact_hashes.get(name), artifact_hash(name)
            if recorded != ours:
                raise ManifestError(
                    f"the manifest's {name} was compiled from other sources ({recorded}) than this "
                    f"client's ({ours}): use the certledger release that deployed it"
                )
        for name, address in (
            ("CertificateLedger", self.ledger),
            ("ReceiptOracle", self.oracle),
            ("SettlementToken", self.token),
        ):
            if not bytes(chain.w3.eth.get_code(address)):
                raise ManifestError(f"no contract code at {name} address {address}")
        links = (
            ("CertificateLedger", self.ledger, "settlementToken", self.token),
            ("CertificateLedger", self.ledger, "receiptOracle", self.oracle),
            ("ReceiptOracle", self.oracle, "ledger", self.ledger),
        )
        for name, address, view, expected in links:
            contract = chain.w3.eth.contract(address=address, abi=list(load_artifact(name).abi))
            try:
                named = to_checksum_address(getattr(contract.functions, view)().call())
            except Exception as exc:  # not our contract at that address: any call can fail
                raise ManifestError(f"{name} address {address} does not answer {view}(): {exc}") from None
            if named != expected:
                raise ManifestError(f"{name} at {address} names {view} {named}; the manifest says {expected}")


def _whole(data: dict[str, Any], key: str) -> int:
    """A manifest's JSON integer (not a float, a string or a boolean, which int() would take)."""
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a whole number, not {value!r}")
    return value


def artifact_hash(name: str) -> str:
    return hashlib.sha256(bytes.fromhex(load_artifact(name).deployed_bytecode.removeprefix("0x"))).hexdigest()


def deploy_contract(
    chain: Chain, deployer: LocalAccount, name: str, *args: Any
) -> tuple[ChecksumAddress, int]:
    """Deploys artifact `name` with constructor `args`; returns its address and block."""
    artifact = load_artifact(name)
    factory = chain.w3.eth.contract(abi=list(artifact.abi), bytecode=artifact.bytecode)
    result = Transactor(chain, EventDecoder(chain.w3)).send(deployer, factory.constructor(*args))
    if result.contract_address is None:
        raise ManifestError(f"{name} deployment produced no contract")
    return to_checksum_address(result.contract_address), result.block_number


def deploy_system(
    chain: Chain,
    admin: LocalAccount,
    *,
    admin_entity_id: bytes,
    min_split_unit: int,
    max_split_depth: int,
    token: ChecksumAddress | None = None,
    token_name: str = "Tokenized Deposit CNY",
    token_symbol: str = "tCNY",
) -> Deployment:
    """Deploys the oracle and ledger (and a settlement token unless `token` is given) and binds them.

    `admin` becomes the consortium operator (ADMIN) and, for a new token, its issuing bank.
    """
    first_block: int | None = None
    if token is None:
        token, first_block = deploy_contract(chain, admin, "SettlementToken", token_name, token_symbol)
    oracle, block = deploy_contract(chain, admin, "ReceiptOracle")
    first_block = block if first_block is None else first_block
    ledger, _ = deploy_contract(
        chain,
        admin,
        "CertificateLedger",
        token,
        oracle,
        admin.address,
        admin_entity_id,
        min_split_unit,
        max_split_depth,
    )
    oracle_contract = chain.w3.eth.contract(address=oracle, abi=list(load_artifact("ReceiptOracle").abi))
    Transactor(chain, EventDecoder(chain.w3)).send(admin, oracle_contract.functions.bindLedger(ledger))
    return Deployment(
        chain_id=chain.chain_id,
        ledger=ledger,
        oracle=oracle,
        token=token,
        admin=admin.address,
        deployment_block=first_block,
        artifact_hashes={name: artifact_hash(name) for name in SYSTEM_CONTRACTS},
    )
