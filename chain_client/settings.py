"""The one configuration object for the chain client, read from the environment (CERTLEDGER_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where the chain is and how long to wait for it. Bad values are refused at start-up."""

    model_config = SettingsConfigDict(env_prefix="CERTLEDGER_", extra="forbid")

    rpc_url: str | None = Field(
        default=None,
        description="JSON-RPC endpoint (anvil, Besu, ...). None runs the embedded py-evm chain in process.",
    )
    manifest: Path = Field(default=Path("deployment.json"), description="Deployment manifest path.")
    rpc_timeout: float = Field(default=10.0, gt=0, description="Seconds for one JSON-RPC request.")
    receipt_timeout: float = Field(
        default=60.0, gt=0, description="Seconds to wait for a transaction receipt."
    )
    poll_interval: float = Field(default=0.05, gt=0, description="Seconds between receipt polls on a node.")
    max_fee_per_gas: int = Field(
        default=1_000 * 10**9,
        gt=0,
        description=(
            "Most wei per gas any transaction offers (maxFeePerGas, or gasPrice on a legacy network),"
            " repriced ones included: a transaction priced out beyond it waits for the fee to fall."
        ),
    )
    reprice_interval: float = Field(
        default=3.0,
        gt=0,
        description="Seconds between looks at whether a transaction awaiting its receipt is priced out.",
    )
    gas_limit_margin: float = Field(
        default=1.2,
        ge=1.0,
        le=3.0,
        description="Multiplier on estimated gas, for state that moves between estimate and inclusion.",
    )

    @field_validator("rpc_url")
    @classmethod
    def _http_only(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("rpc_url must be an http(s) URL")
        return value


def settings_errors(exc: ValidationError, env_prefix: str) -> str:
    """pydantic's errors on a settings class, on one line, each named as the environment variable
    (`env_prefix` + field) that set it."""
    return "; ".join(
        f"{env_prefix}{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
        for error in exc.errors()
    )
