"""A deployed certledger system: the chain, the manifest and one client per contract."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eth_account.signers.local import LocalAccount

from chain_client.artifacts import load_artifact
from chain_client.chain import Chain, connect
from chain_client.deploy import Deployment, deploy_system
from chain_client.events import EventDecoder
from chain_client.ledger import LedgerClient
from chain_client.receipts import ReceiptOracleClient
from chain_client.settings import Settings
from chain_client.token import SettlementTokenClient
from chain_client.transactions import Transactor


@dataclass
class System:
    chain: Chain
    deployment: Deployment
    ledger: LedgerClient
    oracle: ReceiptOracleClient
    token: SettlementTokenClient
    decoder: EventDecoder
    #: the one transactor (and nonce manager use) every client above shares
    tx: Transactor

    @classmethod
    def attach(cls, chain: Chain, deployment: Deployment) -> System:
        """Clients for an existing deployment (the manifest is checked against the node)."""
        deployment.check(chain)
        decoder = EventDecoder(chain.w3)
        for address, name in (
            (deployment.ledger, "CertificateLedger"),
            (deployment.oracle, "ReceiptOracle"),
            (deployment.token, "SettlementToken"),
        ):
            decoder.register(address, list(load_artifact(name).abi))
        tx = Transactor(chain, decoder)
        return cls(
            chain=chain,
            deployment=deployment,
            ledger=LedgerClient(chain, deployment.ledger, tx),
            oracle=ReceiptOracleClient(chain, deployment.oracle, tx),
            token=SettlementTokenClient(chain, deployment.token, tx),
            decoder=decoder,
            tx=tx,
        )

    @classmethod
    def deploy(
        cls,
        chain: Chain,
        admin: LocalAccount,
        *,
        admin_entity_id: bytes,
        min_split_unit: int = 100,
        max_split_depth: int = 8,
    ) -> System:
        """Deploys a fresh system (with a settlement token whose issuing bank is `admin`)."""
        deployment = deploy_system(
            chain,
            admin,
            admin_entity_id=admin_entity_id,
            min_split_unit=min_split_unit,
            max_split_depth=max_split_depth,
        )
        return cls.attach(chain, deployment)

    @classmethod
    def from_manifest(cls, settings: Settings, manifest: Path | None = None) -> System:
        return cls.attach(connect(settings), Deployment.load(manifest or settings.manifest))
