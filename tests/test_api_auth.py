"""Sign-in: EIP-4361 message, EIP-191 signature, short-lived HMAC bearer tokens, on-chain roles."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import ANY

import pytest
from api_support import SECRET, Api, serve_world
from eth_account import Account
from eth_account.messages import encode_defunct
from world import World

from api.auth import Authenticator, NonceStore
from chain_client.errors import NodeUnavailable


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


def test_a_message_edited_but_for_its_nonce_is_refused(api: Api, world: World) -> None:
    """The nonce alone does not bind the message: issued-at and expiry must be as issued too."""
    s1 = world.cast.supplier1
    message = _challenge(api, s1.address)
    lines = message.split("\n")
    edited = [
        "\n".join(f"Issued At: {stamp}" if line.startswith("Issued At: ") else line for line in lines)
        for stamp in ("9999-12-31T23:59:59Z", "2000-01-01T00:00:00Z")
    ]
    edited.append(
        "\n".join(
            "Expiration Time: 9999-12-31T23:59:59Z" if x.startswith("Expiration Time: ") else x for x in lines
        )
    )
    for forged in edited:
        assert forged != message
        status, body = _login(api, forged, s1)
        assert (status, body["code"]) == (401, "InvalidMessage"), forged
    # Refusing them used nothing up: the message as issued still signs in, once.
    assert _login(api, message, s1)[0] == 200
    assert _login(api, message, s1)[1]["code"] == "NonceInvalid"


def test_a_node_failure_at_login_leaves_the_nonce(
    api: Api, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    s1 = world.cast.supplier1
    message = _challenge(api, s1.address)

    def down(*_: object, **__: object) -> None:
        raise NodeUnavailable("http://node", "connection refused")

    monkeypatch.setattr(api.service.system.ledger, "participant", down)
    status, body = _login(api, message, s1)
    assert (status, body["code"]) == (503, "NodeUnavailable")
    monkeypatch.undo()
    # "Try again" means it: the same signed message signs in, and only once.
    assert _login(api, message, s1)[0] == 200
    assert _login(api, message, s1) == (401, {"code": "NonceInvalid", "message": ANY, "fields": {}})


def test_a_nonce_file_from_before_message_binding_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "auth.sqlite"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE login_nonce (nonce TEXT PRIMARY KEY, address TEXT NOT NULL,"
            " expires INTEGER NOT NULL)"
        )
        old.execute("INSERT INTO login_nonce VALUES ('n', 'a', 9999999999)")
    old.close()
    store = NonceStore(path)
    assert store.issued("n", "a", 0) is None  # unbound nonces are gone
    store.issue("m", "a", "d", int(time.time()) + 60)
    assert store.issued("m", "a", int(time.time())) == "d"
    assert not store.consume("m", "a", "other", int(time.time()))
    assert store.consume("m", "a", "d", int(time.time()))


def test_workers_migrating_one_nonce_file_at_once_keep_each_others_nonces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers start on a nonce file from before message binding. The second reads the old
    columns, then the first migrates the file and issues a nonce: the second must not drop the
    table the first just made (nor fail on one it dropped). Reading the columns inside the write
    lock makes the first wait for the second's migration, and then find nothing to migrate."""
    import threading
    from typing import Any

    path = tmp_path / "auth.sqlite"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE login_nonce (nonce TEXT PRIMARY KEY, address TEXT, expires INTEGER)")
    old.close()
    expires = int(time.time()) + 60
    first: list[NonceStore] = []

    def first_worker() -> None:
        store = NonceStore(path)
        store.issue("first", "a", "d", expires)  # a sign-in begins at the first worker
        first.append(store)

    worker = threading.Thread(target=first_worker)
    connect = sqlite3.connect

    class Interleaved:
        """The second worker's connection: once it has read the columns, the first worker runs."""

        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def execute(self, sql: str, *args: Any) -> Any:
            cursor = self.db.execute(sql, *args)
            if sql.startswith("PRAGMA table_info") and not worker.is_alive():
                rows = cursor.fetchall()
                worker.start()
                worker.join(0.5)  # done by now, unless it waits for this worker's write lock
                return iter(rows)
            return cursor

        def __getattr__(self, name: str) -> Any:
            return getattr(self.db, name)

        def __enter__(self) -> Any:
            return self.db.__enter__()

        def __exit__(self, *exc: Any) -> Any:
            return self.db.__exit__(*exc)

    def interleaved(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(sqlite3, "connect", connect)  # the first worker connects as usual
        return Interleaved(connect(*args, **kwargs))

    monkeypatch.setattr(sqlite3, "connect", interleaved)
    second = NonceStore(path)
    second._db = second._db.db  # type: ignore[attr-defined]
    worker.join(10)
    assert first, "the first worker failed to start"
    second.issue("second", "a", "d", expires)
    now = int(time.time())
    assert second.consume("first", "a", "d", now)
    assert first[0].consume("second", "a", "d", now)


def test_clearing_expired_nonces_does_not_scan_them_all(tmp_path: Path) -> None:
    """Anyone may ask for nonces, and each request clears the expired ones: by an index, not by
    reading every outstanding nonce (16 ms a request at 200,000, a review measured)."""
    store = NonceStore(tmp_path / "auth.sqlite")
    with sqlite3.connect(tmp_path / "auth.sqlite") as db:
        plan = " ".join(
            str(row[-1]) for row in db.execute("EXPLAIN QUERY PLAN DELETE FROM login_nonce WHERE expires < 1")
        )
    db.close()
    assert "login_nonce_expires" in plan and "SCAN" not in plan, plan
    store.issue("old", "a", "d", int(time.time()) - 1)
    store.issue("new", "a", "d", int(time.time()) + 60)
    assert store.issued("old", "a", 0) is None and store.issued("new", "a", int(time.time())) == "d"


def test_strangers_looked_up_are_not_remembered(api: Api, world: World) -> None:
    """Every signed request looks its sender up (`IndexReader.participant`). A registered
    participant's record is kept a moment (roles change rarely); a stranger's absence is not, or
    fresh keys, which cost nothing, would grow the cache without end."""
    reader = api.service.reader
    strangers = [Account.create().address for _ in range(20)]
    for address in strangers:
        assert reader.participant(address, max_age=60.0) is None
    assert reader.participant(world.cast.supplier1.address, max_age=60.0) is not None
    assert set(reader._participants) == {world.cast.supplier1.address}


def test_a_token_signed_for_another_chain_is_refused(api: Api, world: World) -> None:
    """Services of one consortium may share a secret across networks (a test net and the real
    one): a token the other network's service issued must not sign in here."""
    mine = api.service.auth
    other = Authenticator(SECRET.encode(), mine.domain, mine.chain_id + 1, 300, 900, NonceStore(None))
    token, _ = other.issue_token(world.cast.supplier1.address)
    r = api.client.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert (r.status_code, r.json()["code"]) == (401, "InvalidToken")
    assert "another chain" in r.json()["message"]
    own, _ = mine.issue_token(world.cast.supplier1.address)
    assert api.client.get("/v1/auth/me", headers={"Authorization": f"Bearer {own}"}).status_code == 200
