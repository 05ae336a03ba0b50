"""The oracle's configuration, read from the environment (CERTLEDGER_ORACLE_*). Bad values are
refused at start-up, never discovered half-way through a receipt."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlparse

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class OracleSettings(BaseSettings):
    """Where readings come from, where they are kept, and the agreement rules they must meet."""

    model_config = SettingsConfigDict(env_prefix="CERTLEDGER_ORACLE_", extra="forbid")

    broker_url: str = Field(
        default="mqtt://127.0.0.1:1883", description="MQTT broker the devices publish to (mqtt://host:port)."
    )
    topic_prefix: str = Field(default="certledger/readings", description="Readings arrive under PREFIX/#.")
    # Before client_id, whose default is made from it.
    db: Path = Field(default=Path("oracle.db"), description="SQLite file of readings, orders and alerts.")
    client_id: str = Field(
        default_factory=lambda data: default_client_id(data.get("db", Path("oracle.db"))),
        min_length=1,
        description="MQTT client id. Stable, so the broker keeps this gateway's session and queued "
        "QoS 1 readings while it is away; by default certledger-gateway-<hash of the db's absolute "
        "path>, so oracles with their own stores on one broker do not take each other's session.",
    )
    mqtt_timeout: float = Field(default=10.0, gt=0, description="Seconds to connect to the broker.")
    http_host: str = Field(default="127.0.0.1", description="Address of the HTTP intake.")
    http_port: int = Field(default=8088, ge=0, le=65_535, description="Port of the HTTP intake (0: off).")
    operator_token: SecretStr | None = Field(
        default=None,
        description="If set, every HTTP route but POST /readings (orders' expectations, their states "
        "and the alerts) needs it as a bearer token, and the intake serves no /docs or /openapi.json. "
        "Set it whenever the HTTP intake is reachable beyond this machine.",
    )

    # Agreement rules, defaults for orders registered without their own.
    count_tolerance: int = Field(
        default=0, ge=0, description="Cartons by which two RFID counts of one delivery may differ."
    )
    weight_tolerance_pct: float = Field(
        default=2.0,
        gt=0,
        le=50,
        description="How far (percent) net weight may be from counted cartons x carton weight.",
    )
    carton_weight_grams: int | None = Field(
        default=None,
        gt=0,
        description="Expected net weight of one carton. Orders without one (here or registered per "
        "order) wait: weight is never accepted unchecked.",
    )
    clock_skew: int = Field(
        default=30,
        ge=0,
        le=600,
        description="Seconds a reading may be ahead of the chain's clock at intake (device clocks and "
        "block times are not in step; the contract checks again at inclusion).",
    )

    clock_margin: int = Field(
        default=5,
        ge=0,
        le=600,
        description="Seconds a node's clock may be behind this machine's. A reading is submitted (and a "
        "certificate settled) only once the latest block's time, or the wall clock less this margin, "
        "has reached its time: a block stamped earlier would revert it.",
    )

    # Relayer and keeper.
    submit_margin: int = Field(
        default=30,
        ge=0,
        le=600,
        description="Seconds of validity a reading must have left to be submitted: the contract checks "
        "freshness and deadline at inclusion, a little after the relayer looks.",
    )
    poll_interval: float = Field(default=0.1, gt=0, le=10, description="Seconds between pipeline steps.")
    retry_base: float = Field(default=0.5, gt=0, description="First retry delay after a node error, s.")
    retry_max: float = Field(default=30.0, gt=0, description="Longest retry delay after node errors, s.")
    retry_attempts: int = Field(
        default=8,
        ge=1,
        description="Errors in a row before an alert (repeated every as many more); refusals of a "
        "transaction's bytes before its order fails; failed checks before an inbox item is quarantined.",
    )
    keeper_interval: float = Field(
        default=60.0, gt=0, description="Seconds between settlement runs of the keeper."
    )
    keeper_logs_budget: int = Field(
        default=100,
        ge=1,
        description="getLogs windows one keeper run may spend listing certificates (the rest on the "
        "next runs): the keeper shares the pipeline's thread with the relayer and the inbox.",
    )
    keeper_batch: int = Field(default=64, ge=1, le=64, description="Certificates per settle transaction.")
    keeper_logs_range: int = Field(
        default=1_000,
        ge=1,
        description="Most blocks one log query of the keeper spans (a node refuses larger ranges: "
        "Besu's --rpc-max-logs-range).",
    )
    relayer_key_env: str = Field(
        default="CERTLEDGER_RELAYER_KEY", description="Environment variable holding the relayer's key."
    )

    @field_validator("broker_url")
    @classmethod
    def _mqtt_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme != "mqtt" or not parsed.hostname:
            raise ValueError("broker_url must look like mqtt://host:port")
        return value

    @property
    def broker_host(self) -> str:
        return urlparse(self.broker_url).hostname or "127.0.0.1"

    @property
    def broker_port(self) -> int:
        return urlparse(self.broker_url).port or 1883


def default_client_id(db: Path) -> str:
    """certledger-gateway-<12 hex digits of the SHA-256 of the store's absolute path>.

    One broker session per oracle store: two gateways under one id take the session from each
    other on every reconnect (the broker closes the older connection), and a random id per run
    would leave the readings queued while a gateway was away in a session nobody resumes. The
    host name is left out: a container's changes when it is re-created, and its store (and so
    its session) with it would be lost; two hosts with a store at the same path configure an id.
    """
    digest = hashlib.sha256(str(db.resolve()).encode()).hexdigest()
    return f"certledger-gateway-{digest[:12]}"
