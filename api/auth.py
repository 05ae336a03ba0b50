"""Sign-in with an Ethereum key (EIP-4361 message, EIP-191 signature) and short-lived bearer tokens.

1. `POST /v1/auth/nonce {address}`: the service issues a one-time nonce and the message to sign
   (domain, address, chain id, nonce, issued-at, expiry).
2. `POST /v1/auth/login {message, signature}`: the message must be exactly one this service issued
   (its SHA-256 is kept with the nonce), still valid, for this domain and chain, signed by its
   address; the registry is read on chain, then the nonce is consumed (a second login with it
   fails; a node failure before that leaves it, so the same signed message may be sent again), and
   the address must be a registered, active participant.
3. The token is `base64url(json payload).base64url(HMAC-SHA256)`: no server state, so any worker
   sharing the secret accepts it until it expires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_typing import ChecksumAddress
from eth_utils import is_address, to_checksum_address

from api.errors import ApiError

_STATEMENT = "Sign in to certledger. This request costs nothing and moves no funds."
_FIELD = re.compile(r"^(URI|Version|Chain ID|Nonce|Issued At|Expiration Time): (.+)$", re.MULTILINE)


def unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message)


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


def login_message(domain: str, address: str, chain_id: int, nonce: str, issued: int, expires: int) -> str:
    return (
        f"{domain} wants you to sign in with your Ethereum account:\n{address}\n\n{_STATEMENT}\n\n"
        f"URI: https://{domain}\nVersion: 1\nChain ID: {chain_id}\nNonce: {nonce}\n"
        f"Issued At: {_iso(issued)}\nExpiration Time: {_iso(expires)}"
    )


@dataclass(frozen=True)
class Challenge:
    message: str
    nonce: str
    expires_at: int


@dataclass(frozen=True)
class LoginAttempt:
    """A login message that checked out, its nonce not yet consumed (`Authenticator.consume`)."""

    address: ChecksumAddress
    nonce: str
    digest: str


def message_digest(message: str) -> str:
    return hashlib.sha256(message.encode()).hexdigest()


class NonceStore:
    """Issued login nonces, each with the SHA-256 of the message it was issued in; each can be
    consumed once before it expires. SQLite so that several worker processes share one file (a
    nonce issued by one worker is used at another)."""

    _COLUMNS = ("nonce", "address", "digest", "expires")

    def __init__(self, path: Path | None) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, timeout=5.0)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # Workers start together on one file: the columns are read, and the table dropped and
            # made, in one write transaction, so one worker's migration never drops the table
            # another worker has just made (and the nonces it issued), nor fails on one it dropped.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                columns = tuple(row[1] for row in self._db.execute("PRAGMA table_info(login_nonce)"))
                if columns and columns != self._COLUMNS:
                    # A file from before messages were bound to their nonces: its nonces live
                    # minutes, and a login in flight asks for a new one.
                    self._db.execute("DROP TABLE IF EXISTS login_nonce")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS login_nonce (nonce TEXT PRIMARY KEY,"
                    " address TEXT NOT NULL, digest TEXT NOT NULL, expires INTEGER NOT NULL)"
                )
                # Anyone may ask for nonces: every issue clears the expired ones, and without an
                # index it did so by scanning them all (16 ms a request at 200,000 outstanding).
                self._db.execute("CREATE INDEX IF NOT EXISTS login_nonce_expires ON login_nonce(expires)")
            except BaseException:
                self._db.rollback()
                raise
            self._db.commit()

    def issue(self, nonce: str, address: str, digest: str, expires: int) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM login_nonce WHERE expires < ?", (int(time.time()),))
            self._db.execute("INSERT INTO login_nonce VALUES (?, ?, ?, ?)", (nonce, address, digest, expires))

    def issued(self, nonce: str, address: str, now: int) -> str | None:
        """The digest of the message `nonce` was issued in, while it is unused and unexpired and
        was issued to `address`; None otherwise."""
        with self._lock:
            row = self._db.execute(
                "SELECT digest FROM login_nonce WHERE nonce = ? AND address = ? AND expires >= ?",
                (nonce, address, now),
            ).fetchone()
        return None if row is None else str(row[0])

    def consume(self, nonce: str, address: str, digest: str, now: int) -> bool:
        """True once for an issued, unexpired nonce of `address` issued in the message of `digest`
        (deleting it is the atomic step)."""
        with self._lock, self._db:
            cursor = self._db.execute(
                "DELETE FROM login_nonce WHERE nonce = ? AND address = ? AND digest = ? AND expires >= ?",
                (nonce, address, digest, now),
            )
            return cursor.rowcount == 1


@dataclass(frozen=True)
class TokenClaims:
    address: ChecksumAddress
    chain_id: int
    issued_at: int
    expires_at: int


class Authenticator:
    def __init__(
        self, secret: bytes, domain: str, chain_id: int, login_ttl: int, token_ttl: int, nonces: NonceStore
    ) -> None:
        self._secret = secret
        self.domain = domain
        self.chain_id = chain_id
        self.login_ttl = login_ttl
        self.token_ttl = token_ttl
        self._nonces = nonces

    def challenge(self, address: str) -> Challenge:
        account = to_checksum_address(address)
        now = int(time.time())
        expires = now + self.login_ttl
        nonce = secrets.token_hex(16)
        message = login_message(self.domain, account, self.chain_id, nonce, now, expires)
        self._nonces.issue(nonce, account, message_digest(message), expires)
        return Challenge(message, nonce, expires)

    def verify_login(self, message: str, signature: str) -> LoginAttempt:
        """A login message this service issued, unexpired, signed by its address, with its nonce
        unused; raises 401 ApiError otherwise. The nonce is consumed by `consume`, once the caller
        has done what could fail for reasons of its own (reading the registry on chain): a node
        failure then leaves the signed message good for another try."""
        lines = message.split("\n")
        if len(lines) < 2 or lines[0] != f"{self.domain} wants you to sign in with your Ethereum account:":
            raise unauthorized("InvalidMessage", "not a login message for this service")
        if not is_address(lines[1]):
            raise unauthorized("InvalidMessage", "the message names no address")
        address = to_checksum_address(lines[1])
        fields = dict(_FIELD.findall(message))
        try:
            chain_id = int(fields["Chain ID"])
            nonce = fields["Nonce"]
            issued = _parse_iso(fields["Issued At"])
            expires = _parse_iso(fields["Expiration Time"])
        except (KeyError, ValueError):
            raise unauthorized("InvalidMessage", "the message lacks a chain id, nonce or times") from None
        if message != login_message(self.domain, address, chain_id, nonce, issued, expires):
            raise unauthorized("InvalidMessage", "the message is not as issued")
        if chain_id != self.chain_id:
            raise unauthorized("InvalidMessage", "the message is for another chain")
        now = int(time.time())
        if expires < now:
            raise unauthorized("MessageExpired", "the login message has expired; ask for a new nonce")
        try:
            signer = Account.recover_message(encode_defunct(text=message), signature=signature)
        except Exception:  # malformed signatures raise several unrelated types
            raise unauthorized("InvalidSignature", "the signature is malformed") from None
        if to_checksum_address(signer) != address:
            raise unauthorized("InvalidSignature", "the message was not signed by its address")
        # The nonce alone does not bind the rest: an edited issued-at or expiry would parse, be
        # signed by its address and name a live nonce. Only the very message issued is accepted.
        digest = self._nonces.issued(nonce, address, now)
        if digest is None:
            raise unauthorized("NonceInvalid", "the nonce is unknown, used or expired")
        if not hmac.compare_digest(digest, message_digest(message)):
            raise unauthorized("InvalidMessage", "the message is not as issued")
        return LoginAttempt(address, nonce, digest)

    def consume(self, attempt: LoginAttempt) -> None:
        """Uses up the attempt's nonce (only after the signature checked out, so a forged attempt
        cannot burn it); 401 if another login with the same message consumed it meanwhile."""
        if not self._nonces.consume(attempt.nonce, attempt.address, attempt.digest, int(time.time())):
            raise unauthorized("NonceInvalid", "the nonce is unknown, used or expired")

    # ------------------------------------------------------------------ tokens

    def issue_token(self, address: ChecksumAddress) -> tuple[str, int]:
        now = int(time.time())
        expires = now + self.token_ttl
        payload = {"sub": address, "chain": self.chain_id, "iat": now, "exp": expires}
        body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{_b64(self._sign(body))}", expires

    def verify_token(self, token: str) -> TokenClaims:
        body, _, tag = token.partition(".")
        # Tokens are base64url text: anything else is refused before compare_digest, which takes
        # ASCII strings only (a header decodes as latin-1, so a client can send any byte).
        if not token.isascii() or not body or not tag or not hmac.compare_digest(_b64(self._sign(body)), tag):
            raise unauthorized("InvalidToken", "the bearer token is not valid")
        try:
            payload = json.loads(_unb64(body))
            claims = TokenClaims(
                to_checksum_address(payload["sub"]),
                int(payload["chain"]),
                int(payload["iat"]),
                int(payload["exp"]),
            )
        except (ValueError, KeyError, TypeError):
            raise unauthorized("InvalidToken", "the bearer token is not valid") from None
        if claims.chain_id != self.chain_id:
            raise unauthorized("InvalidToken", "the token is for another chain")
        if claims.expires_at < time.time():
            raise unauthorized("TokenExpired", "the bearer token has expired; sign in again")
        return claims

    def _sign(self, body: str) -> bytes:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
