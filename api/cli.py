"""`certledger serve`: the HTTP service under uvicorn, against the embedded chain or a node."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Annotated, NoReturn

import typer
import uvicorn
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from api.app import create_app
from api.service import Service
from api.settings import ApiSettings
from chain_client.chain import Chain, connect
from chain_client.errors import CertledgerError
from chain_client.index.db import IndexDatabase, database_url, shown_url
from chain_client.index.sync import FINAL_FAILURES, Indexer
from chain_client.models import Role
from chain_client.receipts import DeviceEnrolment, ReadingKind, ReadingRange, label_hash
from chain_client.settings import settings_errors
from chain_client.system import System

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True)

#: The embedded demo's cast: keys derived from public seeds, so they are for a throwaway chain only.
DEMO_ROLES: dict[str, Role] = {
    "issuer": Role.ISSUER,
    "supplier1": Role.SUPPLIER,
    "supplier2": Role.SUPPLIER,
    "factor": Role.FACTOR,
    "auditor": Role.AUDITOR,
    "regulator": Role.REGULATOR,
}
DEMO_WAREHOUSE = "WH-DEMO-1"
DEFAULT_INDEX_DB = "certledger-index.sqlite"


def demo_key(name: str) -> LocalAccount:
    account: LocalAccount = Account.from_key(keccak(text=f"certledger-demo-{name}"))
    return account


def deploy_demo(chain: Chain) -> System:
    """A fresh system with the demo cast registered and funded, one warehouse with 3 devices (2
    needed) and an allow-listed gateway: what `serve` offers on the embedded chain."""
    admin = demo_key("admin")
    chain.fund(admin.address, 10**21)
    system = System.deploy(chain, admin, admin_entity_id=label_hash("USCC:OPERATOR"))
    for name, role in DEMO_ROLES.items():
        account = demo_key(name)
        chain.fund(account.address, 10**20)
        limit = 10_000_000_00 if role == Role.ISSUER else 0
        system.ledger.register_participant(admin, account.address, label_hash(f"USCC:{name}"), role, limit)
    # Two RFID portals around a weighbridge; a receipt needs a count and a weight (2 of 3 devices).
    kinds = (ReadingKind.CARTON_COUNT, ReadingKind.NET_WEIGHT_GRAMS, ReadingKind.CARTON_COUNT)
    devices = [DeviceEnrolment(demo_key(f"device{i}").address, kind) for i, kind in enumerate(kinds)]
    ranges = [
        ReadingRange(ReadingKind.CARTON_COUNT, 1, 10**6),
        ReadingRange(ReadingKind.NET_WEIGHT_GRAMS, 1, 10**10),
    ]
    system.oracle.register_warehouse(admin, label_hash(DEMO_WAREHOUSE), devices, 2, 3_600, ranges)
    gateway = demo_key("gateway")
    chain.fund(gateway.address, 10**20)
    system.oracle.set_relayer(admin, gateway.address, True)
    system.token.mint(admin, demo_key("issuer").address, 20_000_000_00)
    system.token.mint(admin, demo_key("factor").address, 10_000_000_00)
    return system


def follow_index(settings: ApiSettings, stop: threading.Event) -> None:
    """Keeps the index synced for worker processes that only read it, until `stop` is set."""
    system = System.from_manifest(settings)
    indexer = Indexer(system.chain, system.deployment, IndexDatabase(settings.index_db))
    try:
        indexer.follow(poll_seconds=max(settings.index_sync_interval, 0.05), stop=stop.is_set)
    except FINAL_FAILURES as exc:  # the manifest and the index do not belong together
        log.error("index follower stopped: %s", exc)


def _serve_one(system: System, settings: ApiSettings, host: str, port: int, access_log: bool) -> None:
    """The API in this process, one worker."""
    try:
        service = Service.build(system, settings)
    except CertledgerError as exc:  # an index of another chain or deployment
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except SQLAlchemyError as exc:
        _unusable_index(settings.index_db, exc)
    uvicorn.run(create_app(service), host=host, port=port, workers=1, access_log=access_log)


def _unusable_index(index_db: str, exc: SQLAlchemyError) -> NoReturn:
    """An index the database refuses (a file that is no database, a directory that is not there,
    a server that refuses): one line naming it as the user gave it, its password masked."""
    reason = getattr(exc, "orig", None) or exc
    typer.echo(
        f"error: the event index {shown_url(database_url(index_db))} cannot be used: {reason}", err=True
    )
    raise typer.Exit(1) from None


@app.command()
def serve(
    rpc_url: Annotated[
        str | None, typer.Option(envvar="CERTLEDGER_RPC_URL", help="Node URL; none: embedded demo chain.")
    ] = None,
    manifest: Annotated[Path, typer.Option(envvar="CERTLEDGER_MANIFEST", help="Deployment manifest.")] = Path(
        "deployment.json"
    ),
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65_535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="uvicorn worker processes (node only).")] = 1,
    index_db: Annotated[
        str | None,
        typer.Option(
            envvar="CERTLEDGER_INDEX_DB",
            help="Event index (SQLite path or URL). Default: certledger-index.sqlite with a node, a "
            "throwaway file with the embedded chain (a new chain each run).",
        ),
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request (costs ~10% of a read).")] = False,
) -> None:
    """Serve the HTTP API (OpenAPI at /docs)."""
    try:
        _serve(rpc_url, manifest, host, port, workers, index_db, access_log)
    except (CertledgerError, ValidationError) as exc:  # a manifest, a node or a setting it cannot use
        typer.echo(f"error: {_one_line(exc)}", err=True)
        raise typer.Exit(1) from None


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return settings_errors(exc, str(ApiSettings.model_config["env_prefix"]))
    return str(exc)


def _serve(
    rpc_url: str | None,
    manifest: Path,
    host: str,
    port: int,
    workers: int,
    index_db: str | None,
    access_log: bool,
) -> None:
    if rpc_url is None:
        if workers != 1:
            raise typer.BadParameter(
                "the embedded chain lives in one process: use --workers 1", param_hint="--workers"
            )
        # The embedded chain is new on every run, with the same chain id and addresses: an index
        # kept from an earlier run records blocks this chain never had.
        # uvicorn raises the signal that stopped it again once it has shut down; SIGTERM's default
        # would end the process before the throwaway directory is removed.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with tempfile.TemporaryDirectory(prefix="certledger-serve-") as scratch:
            settings = ApiSettings(index_db=index_db or str(Path(scratch) / "index.sqlite"))
            system = deploy_demo(connect(settings))
            typer.echo("embedded demo chain; throwaway keys (never use them elsewhere):")
            for name in ("admin", *DEMO_ROLES, "gateway", "device0", "device1", "device2"):
                account = demo_key(name)
                typer.echo(f"  {name:10} {account.address} 0x{bytes(account.key).hex()}")
            d = system.deployment
            typer.echo(
                f"chain {d.chain_id}: ledger {d.ledger}, oracle {d.oracle}, token {d.token} "
                f"(GET /v1/deployment); warehouse {DEMO_WAREHOUSE} (devices 0-2, 2 needed); no orders yet"
            )
            _serve_one(system, settings, host, port, access_log)
        return
    os.environ["CERTLEDGER_RPC_URL"] = rpc_url
    os.environ["CERTLEDGER_MANIFEST"] = str(manifest)
    os.environ["CERTLEDGER_INDEX_DB"] = index_db or DEFAULT_INDEX_DB
    if workers == 1:
        settings = ApiSettings()
        system = System.from_manifest(settings)
        _serve_one(system, settings, host, port, access_log)
        return
    # Several workers: they share the token secret and the login nonces, and this process keeps
    # the index synced for all of them (see api.index).
    os.environ.setdefault("CERTLEDGER_AUTH_SECRET", secrets.token_hex(32))
    auth_dir = tempfile.mkdtemp(prefix="certledger-auth-")
    os.environ.setdefault("CERTLEDGER_AUTH_DB", str(Path(auth_dir) / "nonces.sqlite"))
    os.environ["CERTLEDGER_INDEX_FOLLOWER"] = "true"
    settings = ApiSettings()
    system = System.from_manifest(settings)
    try:
        Indexer(system.chain, system.deployment, IndexDatabase(settings.index_db)).sync()
    except SQLAlchemyError as exc:
        _unusable_index(settings.index_db, exc)
    stop = threading.Event()
    follower = threading.Thread(
        target=follow_index, args=(settings, stop), name="index-follower", daemon=True
    )
    follower.start()
    try:
        uvicorn.run(
            "api.app:from_env", factory=True, host=host, port=port, workers=workers, access_log=access_log
        )
    finally:
        stop.set()
        follower.join(timeout=10)
