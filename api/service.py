"""Everything a request handler needs, built once per process from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from api.auth import Authenticator, NonceStore
from api.index import IndexReader
from api.settings import ApiSettings
from chain_client.chain import Chain
from chain_client.index.db import IndexDatabase
from chain_client.models import Role
from chain_client.relay import Relay
from chain_client.system import System


@dataclass
class Service:
    settings: ApiSettings
    system: System
    relay: Relay
    reader: IndexReader
    auth: Authenticator

    @property
    def chain(self) -> Chain:
        return self.system.chain

    @classmethod
    def build(cls, system: System, settings: ApiSettings) -> Service:
        db = IndexDatabase(settings.index_db)
        reader = IndexReader(
            system.chain,
            system.deployment,
            db,
            interval=settings.index_sync_interval,
            follower=settings.index_follower,
            wait=settings.index_wait,
            background=not system.chain.embedded,
        )
        reader.prime()
        auth = Authenticator(
            settings.auth_secret.get_secret_value().encode(),
            settings.auth_domain,
            system.deployment.chain_id,
            settings.login_ttl,
            settings.token_ttl,
            NonceStore(settings.auth_db),
        )
        return cls(settings=settings, system=system, relay=Relay(system), reader=reader, auth=auth)


def role_names(roles: int) -> list[str]:
    return [r.name for r in Role if r & roles and r.name is not None]
