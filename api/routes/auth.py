"""Sign-in: a one-time message to sign, then a short-lived bearer token."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CallerDep, ServiceDep
from api.errors import ApiError
from api.schemas import LoginRequest, LoginResponse, NonceRequest, NonceResponse, ParticipantOut
from api.service import role_names
from api.views import participant_out

router = APIRouter(prefix="/v1/auth", tags=["auth"])


@router.post("/nonce", response_model=NonceResponse)
def nonce(body: NonceRequest, service: ServiceDep) -> NonceResponse:
    """An EIP-4361 message with a one-time nonce for `address` to sign (EIP-191 personal_sign)."""
    challenge = service.auth.challenge(body.address)
    return NonceResponse(message=challenge.message, nonce=challenge.nonce, expiresAt=challenge.expires_at)


@router.post("/login", response_model=LoginResponse)
def login(body: LoginRequest, service: ServiceDep) -> LoginResponse:
    """Exchanges a signed login message for a bearer token. The roles come from the chain's
    registry: an unregistered or suspended account gets no token. A 503 (node down) leaves the
    nonce unused: send the same signed message again."""
    attempt = service.auth.verify_login(body.message, body.signature)
    address = attempt.address
    # The registry is read before the nonce is consumed: with the node down the answer is a 503
    # and the same signed message is good for another try.
    participant = service.system.ledger.participant(address)
    service.auth.consume(attempt)
    if not participant.registered:
        raise ApiError(403, "NotParticipant", "the account is not a registered participant")
    if not participant.active:
        raise ApiError(403, "ParticipantNotActive", "the participant is suspended")
    token, expires = service.auth.issue_token(address)
    return LoginResponse(
        accessToken=token, expiresAt=expires, address=address, roles=role_names(participant.roles)
    )


@router.get("/me", response_model=ParticipantOut)
def me(caller: CallerDep, service: ServiceDep) -> ParticipantOut:
    record = service.reader.participant(caller.address)
    assert record is not None  # get_caller checked it
    return participant_out(record, books=True)
