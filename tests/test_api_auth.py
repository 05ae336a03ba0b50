"""Sign-in: EIP-4361 message, EIP-191 signature, short-lived HMAC bearer tokens, on-chain roles."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import Api, serve_world
from eth_account import Account
from eth_account.messages import encode_defunct
from world import World


@pytest.fixture
def api(world: World, tmp_path: Path) -> Iterator[Api]:
    yield from serve_world(world, tmp_path)


def _challenge(api: Api, address: str) -> str:
    r = api.client.post("/v1/auth/nonce", json={"address": address})
    assert r.status_code == 200
    message: str = r.json()["message"]
    return message


def _login(api: Api, message: str, signer: object) -> tuple[int, dict[str, object]]:
    signature = signer.sign_message(encode_defunct(text=message)).signature  # type: ignore[attr-defined]
    r = api.client.post(
        "/v1/auth/login", json={"message": message, "signature": "0x" + bytes(signature).hex()}
    )
    return r.status_code, r.json()


def test_login_gives_a_token_with_the_chain_roles(api: Api, world: World) -> None:
    message = _challenge(api, world.cast.supplier1.address)
    assert world.cast.supplier1.address in message
    assert f"Chain ID: {world.chain.chain_id}" in message and "Nonce: " in message
    status, body = _login(api, message, world.cast.supplier1)
    assert status == 200
    assert body["roles"] == ["SUPPLIER"] and body["address"] == world.cast.supplier1.address
    me = api.client.get("/v1/auth/me", headers={"Authorization": f"Bearer {body['accessToken']}"})
    assert me.status_code == 200 and me.json()["roles"] == ["SUPPLIER"]


def test_forged_signature_is_refused(api: Api, world: World) -> None:
    message = _challenge(api, world.cast.supplier1.address)
    status, body = _login(api, message, world.cast.supplier2)  # someone else's key
    assert (status, body["code"]) == (401, "InvalidSignature")
    # The forged attempt did not burn the nonce: the rightful owner still signs in with it.
    assert _login(api, message, world.cast.supplier1)[0] == 200


def test_edited_message_is_refused(api: Api, world: World) -> None:
    message = _challenge(api, world.cast.supplier1.address).replace("Version: 1", "Version: 2")
    status, body = _login(api, message, world.cast.supplier1)
    assert (status, body["code"]) == (401, "InvalidMessage")


def test_reused_nonce_is_refused(api: Api, world: World) -> None:
    message = _challenge(api, world.cast.supplier1.address)
    assert _login(api, message, world.cast.supplier1)[0] == 200
    status, body = _login(api, message, world.cast.supplier1)
    assert (status, body["code"]) == (401, "NonceInvalid")


def test_expired_message_is_refused(api: Api, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    message = _challenge(api, world.cast.supplier1.address)
    later = time.time() + api.service.settings.login_ttl + 5
    monkeypatch.setattr("api.auth.time.time", lambda: later)
    status, body = _login(api, message, world.cast.supplier1)
    assert (status, body["code"]) == (401, "MessageExpired")


def test_expired_token_is_refused(api: Api, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    headers = api.login(world.cast.supplier1)
    later = time.time() + api.service.settings.token_ttl + 5
    monkeypatch.setattr("api.auth.time.time", lambda: later)
    r = api.client.get("/v1/certificates", headers=headers)
    assert (r.status_code, r.json()["code"]) == (401, "TokenExpired")


def test_tampered_or_missing_token_is_refused(api: Api, world: World) -> None:
    token = api.login(world.cast.supplier1)["Authorization"].removeprefix("Bearer ")
    body, tag = token.split(".")
    # Another payload under the old tag: the HMAC no longer matches.
    forged = body[:-2] + ("AA" if body[-2:] != "AA" else "BB")
    for headers in ({"Authorization": f"Bearer {forged}.{tag}"}, {"Authorization": "Bearer nonsense"}, {}):
        r = api.client.get("/v1/certificates", headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["code"] in ("InvalidToken", "NotAuthenticated")
    # A header is read as latin-1: a token with bytes outside ASCII is refused like any bad one.
    odd = f"Bearer {body}.{tag[:-1]}\xe9".encode("latin-1")
    r = api.client.get("/v1/certificates", headers={b"Authorization": odd})
    assert (r.status_code, r.json()["code"]) == (401, "InvalidToken"), r.text


def test_unregistered_account_gets_no_token(api: Api, world: World) -> None:
    message = _challenge(api, world.cast.outsider.address)
    status, body = _login(api, message, world.cast.outsider)
    assert (status, body["code"]) == (403, "NotParticipant")
    stranger = Account.create()
    assert _login(api, _challenge(api, stranger.address), stranger)[1]["code"] == "NotParticipant"


def test_suspended_participant_loses_access(api: Api, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # The caller's record is reused for up to a second; a suspension shows once that has passed.
    clock = [time.monotonic()]
    monkeypatch.setattr("api.index.time.monotonic", lambda: clock[0])
    headers = api.login(world.cast.supplier1)
    assert api.client.get("/v1/certificates", headers=headers).status_code == 200
    world.ledger.suspend(world.cast.admin, world.cast.supplier1.address)
    api.service.reader.reach(world.chain.w3.eth.block_number)
    clock[0] += 2
    r = api.client.get("/v1/certificates", headers=headers)
    assert (r.status_code, r.json()["code"]) == (403, "ParticipantNotActive")
    status, body = _login(api, _challenge(api, world.cast.supplier1.address), world.cast.supplier1)
    assert (status, body["code"]) == (403, "ParticipantNotActive")


def test_bad_nonce_request_is_a_validation_error(api: Api) -> None:
    r = api.client.post("/v1/auth/nonce", json={"address": "0x1234"})
    assert (r.status_code, r.json()["code"]) == (422, "ValidationError")
