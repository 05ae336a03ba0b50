"""Dependencies shared by the routes, as `Annotated` aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from eth_typing import ChecksumAddress
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import unauthorized
from api.errors import ApiError
from api.index import IndexLagging
from api.service import Service
from chain_client.models import Role

#: Roles that read everything (DESIGN: auditors and regulators see the whole history).
ALL_SEEING = Role.AUDITOR | Role.REGULATOR
HOLDERS = Role.SUPPLIER | Role.FACTOR

#: Seconds a caller's registry record may be reused: a suspension takes effect within this (plus
#: the index's lag) instead of costing a database read on every request.
PARTICIPANT_MAX_AGE = 1.0

_bearer = HTTPBearer(auto_error=False, description="Token from POST /v1/auth/login")


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


@dataclass(frozen=True)
class Caller:
    address: ChecksumAddress
    roles: Role

    @property
    def sees_all(self) -> bool:
        return bool(self.roles & ALL_SEEING)

    def has(self, roles: Role) -> bool:
        return bool(self.roles & roles)


async def get_caller(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The signed-in participant, with its roles as the index has them now: a participant suspended
    or stripped of a role since it signed in loses that access (within PARTICIPANT_MAX_AGE and the
    index's lag). A coroutine: it runs on every request, and its work (an HMAC, at most one local
    database read a second) is shorter than a hop to the thread pool."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized("NotAuthenticated", "sign in: POST /v1/auth/nonce, then /v1/auth/login")
    claims = service.auth.verify_token(credentials.credentials)
    return caller_at(service, claims.address, signed_in=True)


def caller_at(
    service: Service, address: ChecksumAddress, *, signed_in: bool, max_age: float = PARTICIPANT_MAX_AGE
) -> Caller:
    """The participant at `address` as the index has it now: its roles, refused (403) when it has
    none or is suspended. `signed_in`: sign-in found the account registered on chain (participants
    are never removed), so an index without it has not caught up yet (503 IndexUnavailable with
    Retry-After, not a refusal); otherwise (the sender of a signed transaction, POST /v1/tx) an
    account the index does not know is 403 NotParticipant. `max_age`: how old a cached registry
    record may be (0: read it now)."""
    service.reader.fresh()
    record = service.reader.participant(address, max_age=max_age)
    if record is None and signed_in:
        raise IndexLagging(f"the index has not reached {address}'s registration yet")
    if record is None or not record.roles:
        raise ApiError(403, "NotParticipant", "the account is not a registered participant")
    if not record.active:
        raise ApiError(403, "ParticipantNotActive", "the participant is suspended")
    return Caller(address, Role(record.roles))


CallerDep = Annotated[Caller, Depends(get_caller)]


@dataclass(frozen=True)
class Paging:
    limit: int
    offset: int


async def get_paging(
    limit: Annotated[int, Query(ge=1, le=500, description="Items per page.")] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9, description="Items to skip.")] = 0,
) -> Paging:
    return Paging(limit, offset)


PagingDep = Annotated[Paging, Depends(get_paging)]
