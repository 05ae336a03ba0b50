"""The service's configuration: the chain client's Settings plus what only the API needs."""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from chain_client.settings import Settings


class ApiSettings(Settings):
    """Read from CERTLEDGER_* like the chain client's; bad values are refused at start-up."""

    auth_secret: SecretStr = Field(
        default_factory=lambda: SecretStr(secrets.token_hex(32)),
        description="HMAC key of bearer tokens. Every worker of one service must share it.",
    )
    auth_domain: str = Field(default="certledger.local", min_length=1, description="EIP-4361 domain.")
    token_ttl: int = Field(default=900, gt=0, le=86_400, description="Seconds a bearer token is valid.")
    login_ttl: int = Field(default=300, gt=0, le=3_600, description="Seconds a login message is valid.")
    index_db: str = Field(
        default="certledger-index.sqlite", description="Event index database (SQLite path or URL)."
    )
    auth_db: Path | None = Field(
        default=None,
        description="SQLite file of issued login nonces, shared by workers; None keeps them in memory.",
    )
    index_sync_interval: float = Field(
        default=0.5, ge=0, le=60, description="Reads sync the index first when it is older than this."
    )
    index_follower: bool = Field(
        default=False,
        description="Another process keeps the index synced (several workers); reads never sync.",
    )
    index_wait: float = Field(
        default=10.0, gt=0, description="Seconds a write waits for the index to reach its block."
    )
    node_retry_after: int = Field(default=5, gt=0, description="Retry-After seconds when the node is down.")
    cors_origins: list[str] = Field(
        default_factory=list,
        description=(
            "Browser origins allowed to call the API from their pages (CORS), as a JSON list like"
            ' ["https://wallet.example"]; empty: none, and no CORS headers are sent.'
        ),
    )

    @field_validator("auth_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 32:
            raise ValueError("auth_secret needs at least 32 characters")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _bare_origins(cls, value: list[str]) -> list[str]:
        # Browsers send the Origin header as scheme://host[:port] in lower case and CORS compares it
        # exactly: anything else (a path, a trailing slash, "*") would never match, or match everyone.
        # A browser also leaves the scheme's default port out (https://wallet.example, never :443).
        for origin in value:
            parts = urlsplit(origin)
            try:
                port = parts.port
            except ValueError:  # not a number, or out of range
                port = -1
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or parts.username is not None
                or origin != f"{parts.scheme}://{parts.netloc.lower()}"
                or origin.endswith(":")
                or port == -1
                or (parts.scheme, port) in (("http", 80), ("https", 443))
                or port == 0
            ):
                raise ValueError(
                    f"cors_origins: {origin!r} is not an origin as a browser sends it, like "
                    "https://wallet.example (scheme, host and a port other than the default, in lower case)"
                )
        return value
