"""The oracle's commands: `certledger oracle run|status|expect` and `certledger devices
create|list|simulate`.

As in chain_client's CLI, keys and passwords come from environment variables named by an option,
never from the command line (shell history and `ps` would keep them).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from eth_account import Account
from eth_account.signers.local import LocalAccount
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from chain_client.errors import CertledgerError
from chain_client.models import OrderStatus
from chain_client.receipts import ReadingKind
from chain_client.settings import Settings, settings_errors
from chain_client.system import System
from oracle.devices import (
    DeviceError,
    DeviceFiles,
    DeviceSigner,
    FileSequence,
    ReadingContext,
    create_device,
    device_address,
    load_device,
    next_sequence,
)
from oracle.mqtt import BrokerUnavailable, MqttPublisher
from oracle.settings import OracleSettings
from oracle.simulator import Delivery, Fault, SimulatedDevice, publish_all, readings_for
from oracle.store import NotResolvable, OrderState, Store, StoreUnusable

oracle_app = typer.Typer(
    help="Run the receipt oracle (gateway, relayer, keeper) and see its state.", no_args_is_help=True
)
devices_app = typer.Typer(help="Warehouse device keys and a device simulator.", no_args_is_help=True)

console = Console()

RpcUrl = Annotated[str | None, typer.Option(envvar="CERTLEDGER_RPC_URL", help="JSON-RPC URL of the node.")]
Manifest = Annotated[Path, typer.Option(envvar="CERTLEDGER_MANIFEST", help="Deployment manifest.")]
BrokerUrl = Annotated[
    str, typer.Option(envvar="CERTLEDGER_ORACLE_BROKER_URL", help="MQTT broker, mqtt://host:port.")
]
Db = Annotated[Path, typer.Option(envvar="CERTLEDGER_ORACLE_DB", help="The oracle's SQLite database.")]
KeyEnv = Annotated[str, typer.Option(help="Environment variable holding the relayer's hex private key.")]
PasswordEnv = Annotated[
    str, typer.Option(help="Environment variable holding the device keystores' password.")
]
DeviceDir = Annotated[Path, typer.Option("--dir", help="Directory of device keystores.")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
#: The largest id the store keeps (a SQLite integer): a larger one is a usage error, not an
#: OverflowError from the driver.
MAX_ID = 2**63 - 1

KIND_NAMES = {"count": ReadingKind.CARTON_COUNT, "weight": ReadingKind.NET_WEIGHT_GRAMS}


def _system(rpc_url: str | None, manifest: Path) -> System:
    if rpc_url is None:
        raise typer.BadParameter(
            "a node is needed: give --rpc-url or set CERTLEDGER_RPC_URL", param_hint="--rpc-url"
        )
    return System.from_manifest(Settings(rpc_url=rpc_url, manifest=manifest))


def _secret(env: str, what: str, hint: str) -> str:
    value = os.environ.get(env)
    if not value:
        raise typer.BadParameter(f"environment variable {env} ({what}) is not set", param_hint=hint)
    return value


def _relayer_account(key_env: str) -> LocalAccount:
    key = _secret(key_env, "the relayer's key", "--key-env")
    try:
        account: LocalAccount = Account.from_key(key)
    except Exception:
        # from None: the parser's own words, or a traceback's locals, could show the key.
        raise typer.BadParameter(
            f"environment variable {key_env} does not hold a private key (32 bytes, hex)",
            param_hint="--key-env",
        ) from None
    return account


def _existing_db(db: Path) -> Path:
    """The oracle's database, which `oracle run` makes: any other command given a path with none
    there has a wrong path, and must not start an empty database there."""
    if not db.is_file():
        raise typer.BadParameter(f"no oracle database at {db}", param_hint="--db")
    return db


def _store(db: Path) -> Store:
    """Opens the oracle's database at `db` (see `_existing_db`), or says in one line why the file
    there is not one."""
    try:
        return Store(db)
    except StoreUnusable as exc:
        _fail(exc)


def _fail(exc: Exception) -> NoReturn:
    # escape: messages carry file and device names, which rich would read as markup; soft_wrap:
    # one line however long the path, for grep.
    console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(1) from None


def _run(job: Any) -> None:
    try:
        job()
    except (CertledgerError, DeviceError, BrokerUnavailable, StoreUnusable) as exc:
        _fail(exc)


# ---------------------------------------------------------------------- oracle


@oracle_app.command("run")
def oracle_run(
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    broker_url: BrokerUrl = "mqtt://127.0.0.1:1883",
    db: Db = Path("oracle.db"),
    http_port: Annotated[int, typer.Option(min=0, max=65_535, help="HTTP intake port (0: none).")] = 8088,
    key_env: KeyEnv = "CERTLEDGER_RELAYER_KEY",
    carton_weight: Annotated[
        int | None, typer.Option(min=1, help="Default expected carton weight, grams.")
    ] = None,
    count_tolerance: Annotated[int, typer.Option(min=0, help="Cartons two RFID counts may differ by.")] = 0,
    weight_tolerance: Annotated[
        float, typer.Option(min=0.01, max=50, help="Weight vs count, percent.")
    ] = 2.0,
    keeper_interval: Annotated[float, typer.Option(min=1, help="Seconds between settlement runs.")] = 60.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the gateway (MQTT + HTTP intake), the relayer and the keeper until interrupted."""
    from oracle.service import HttpUnavailable, OracleService

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )

    def job() -> None:
        try:
            settings = OracleSettings(
                broker_url=broker_url,
                db=db,
                http_port=http_port,
                carton_weight_grams=carton_weight,
                count_tolerance=count_tolerance,
                weight_tolerance_pct=weight_tolerance,
                keeper_interval=keeper_interval,
                relayer_key_env=key_env,
            )
        except ValidationError as exc:  # a CERTLEDGER_ORACLE_* setting it cannot use
            _fail(ValueError(settings_errors(exc, str(OracleSettings.model_config["env_prefix"]))))
        relayer = _relayer_account(key_env)
        system = _system(rpc_url, manifest)
        service = OracleService.build(settings, system, relayer)
        try:
            if not system.oracle.is_relayer(relayer.address):
                # Readings are still collected; the receipts fail until it is allowed.
                console.print(
                    f"[yellow]warning:[/] relayer {relayer.address} is not on the oracle's allow-list: "
                    "receipts fail RelayerNotAllowed until `certledger warehouse relayer "
                    f"{relayer.address}`, and an order failed so collects again after `oracle resolve "
                    "--keep-readings`",
                    soft_wrap=True,
                )
            # The HTTP port first: one in use is refused before the broker is even reached. Either
            # failing, `close` stops what did start (the other intake, its thread, the store).
            if http_port:
                service.start_http()
            service.start_mqtt()
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            console.print(
                f"oracle running: relayer {relayer.address}, broker {broker_url}, db {db}"
                + (f", http://{settings.http_host}:{http_port}" if http_port else "")
            )
            service.run(stop)
        except HttpUnavailable as exc:
            _fail(exc)
        finally:
            service.close()
        console.print("oracle stopped")

    _run(job)


@oracle_app.command("status")
def oracle_status(
    db: Db = Path("oracle.db"),
    as_json: Json = False,
    # At least 1: the table shows `orders[-limit:]`, where 0 meant all and -1 all but the first.
    limit: Annotated[
        int, typer.Option(min=1, max=2**31, help="Most orders, alerts and refusals shown.")
    ] = 20,
) -> None:
    """Orders (collecting, submitting, confirmed, disputed, failed, cancelled), alerts, refused readings."""
    _existing_db(db)
    store = _store(db)
    orders, alerts, refused = store.orders(), store.alerts(limit), store.rejections(limit)
    counts = {s.value: sum(1 for o in orders if o.state == s) for s in OrderState}
    if as_json:
        data = {
            "counts": counts,
            "orders": [
                {
                    "order_id": o.order_id,
                    "state": o.state.value,
                    "detail": o.detail,
                    "tx_hash": o.tx_hash,
                    "replaced_tx_hashes": list(o.replaced),
                    "root_certificate_id": o.root_certificate_id,
                    "error_name": o.error_name,
                }
                for o in orders
            ],
            "alerts": [
                {"at": a.at, "order_id": a.order_id, "kind": a.kind, "message": a.message} for a in alerts
            ],
            "refused": [
                {"at": r.at, "device": r.device, "reason": r.reason, "detail": r.detail} for r in refused
            ],
            "inbox_unchecked": store.inbox_count(processed=False),
            "inbox_quarantined": [
                {
                    "id": q.id,
                    "received_at": q.received_at,
                    "source": q.source,
                    "attempts": q.attempts,
                    "last_error": q.last_error,
                    "order_hint": q.order_hint,
                }
                for q in store.quarantined(limit)
            ],  # fmt: skip
            "settled_certificates": store.settled_count(),
        }
        console.print_json(json.dumps(data))
        return
    console.print(
        f"orders: {counts['collecting'] + counts['submitting']} pending ("
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + ")"
        + f"; inbox unchecked {store.inbox_count(processed=False)}"
        + f", quarantined {store.inbox_count(processed=True)}"
        + f"; settled certificates {store.settled_count()}",
        soft_wrap=True,  # one line, for grep
    )
    table = Table(title="Orders")
    for col in ("order", "state", "detail", "tx / error"):
        table.add_column(col)
    for o in orders[-limit:]:
        style = {"disputed": "red", "failed": "red", "confirmed": "green"}.get(o.state.value, "")
        table.add_row(str(o.order_id), f"[{style}]{o.state.value}[/]" if style else o.state.value, o.detail,
                      o.error_name or o.tx_hash or "")  # fmt: skip
    console.print(table)
    if alerts:
        console.print("[bold red]Alerts[/]")
        for a in alerts:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a.at))
            console.print(f"  {stamp} order {a.order_id} [red]{a.kind}[/]: {a.message}")
    quarantined = store.quarantined(limit)
    if quarantined:
        console.print(
            "[bold red]Quarantined inbox items[/] (could not be checked; kept, holding the order they "
            "claim): `certledger oracle requeue ITEM|--all` checks them again, "
            "`--drop --reason TEXT` gives one up"
        )
        for q in quarantined:
            claims = f" claims order {q.order_hint}," if q.order_hint is not None else ""
            console.print(
                f"  item {q.id} from {q.source}:{claims} {q.attempts} failures, last: {q.last_error}"
            )
    if refused:
        console.print("[bold]Refused readings[/] (latest first)")
        for r in refused:
            console.print(f"  order {r.order_id} device {r.device}: {r.reason} {r.detail}")


EXPECTATIONS = {
    "carton-weight": "carton_weight_grams",
    "count-tolerance": "count_tolerance",
    "weight-tolerance": "weight_tolerance_pct",
}


@oracle_app.command("expect")
def oracle_expect(
    order_id: Annotated[int, typer.Argument(min=1, max=MAX_ID)],
    carton_weight: Annotated[
        int | None, typer.Option(min=1, max=MAX_ID, help="Expected carton net weight, grams.")
    ] = None,
    count_tolerance: Annotated[
        int | None, typer.Option(min=0, max=MAX_ID, help="Cartons two RFID counts may differ by.")
    ] = None,
    weight_tolerance: Annotated[
        float | None, typer.Option(min=0.01, max=50, help="Weight vs count, percent.")
    ] = None,
    reset: Annotated[
        list[str] | None,
        typer.Option(
            "--reset",
            metavar="FIELD",
            help="Back to the configured default for carton-weight, count-tolerance or "
            "weight-tolerance (repeatable).",
        ),
    ] = None,
    db: Db = Path("oracle.db"),
) -> None:
    """Record an order's expectations (what the readings must agree with). Only the values given
    change; the order need not be open on chain yet."""
    _existing_db(db)
    given: dict[str, int | float | None] = {
        field: value
        for field, value in (
            ("carton_weight_grams", carton_weight),
            ("count_tolerance", count_tolerance),
            ("weight_tolerance_pct", weight_tolerance),
        )
        if value is not None
    }
    for name in reset or []:
        field = EXPECTATIONS.get(name)
        if field is None:
            raise typer.BadParameter(f"{name}: one of {', '.join(EXPECTATIONS)}", param_hint="--reset")
        if field in given:
            raise typer.BadParameter(f"{name} is both given and reset", param_hint="--reset")
        given[field] = None
    if not given:
        raise typer.BadParameter("give an expectation to change, or --reset", param_hint="--carton-weight")
    store = _store(db)
    try:
        record = store.register_order(order_id, **given)  # type: ignore[arg-type]
    finally:
        store.close()

    def shown(value: object, unit: str = "") -> str:
        return "default" if value is None else f"{value}{unit}"

    console.print(
        f"order {order_id}: {record.state.value}, carton weight {shown(record.carton_weight_grams, ' g')}, "
        f"count tolerance {shown(record.count_tolerance)}, "
        f"weight tolerance {shown(record.weight_tolerance_pct, '%')}",
        soft_wrap=True,
    )


# ---------------------------------------------------------------------- devices


@oracle_app.command("resolve")
def oracle_resolve(
    order_id: Annotated[int, typer.Argument(min=1, max=MAX_ID)],
    reason: Annotated[str, typer.Option(help="Why, in words: kept with the order and in the alerts.")],
    keep_readings: Annotated[
        bool,
        typer.Option(
            "--keep-readings",
            help="Judge the same readings again (after correcting the order's expectations with "
            "`oracle expect`, or the cause of a failure) instead of setting them aside for a recount.",
        ),
    ] = False,
    db: Db = Path("oracle.db"),
) -> None:
    """Resolve a disputed or failed order: it collects readings again (a recount, by default)."""
    _existing_db(db)
    store = _store(db)
    try:
        aside = store.resolve(order_id, reason, recount=not keep_readings)
    except NotResolvable as exc:
        raise typer.BadParameter(str(exc), param_hint="ORDER_ID") from exc
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--reason") from exc
    finally:
        store.close()
    if keep_readings:
        console.print(f"order {order_id}: collecting; its readings will be judged again")
    else:
        console.print(f"order {order_id}: collecting; {aside} readings set aside, devices must read again")


@oracle_app.command("requeue")
def oracle_requeue(
    item: Annotated[
        int | None,
        typer.Argument(min=1, max=MAX_ID, help="The quarantined inbox item (see `oracle status`)."),
    ] = None,
    all_items: Annotated[bool, typer.Option("--all", help="Every quarantined item.")] = False,
    drop: Annotated[
        bool, typer.Option("--drop", help="Give ITEM up instead: its order no longer waits for it.")
    ] = False,
    reason: Annotated[str, typer.Option(help="Why ITEM is dropped (with --drop).")] = "",
    db: Db = Path("oracle.db"),
) -> None:
    """Check quarantined inbox items again (after the cause is fixed), or drop one."""
    _existing_db(db)
    if (item is None) == (not all_items):
        raise typer.BadParameter("give one ITEM or --all", param_hint="ITEM")
    store = _store(db)
    try:
        if drop:
            if item is None:
                raise typer.BadParameter("--drop takes one ITEM", param_hint="ITEM")
            try:
                dropped = store.drop(item, reason)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--reason") from exc
            if not dropped:
                raise typer.BadParameter(f"no quarantined inbox item {item}", param_hint="ITEM")
            console.print(f"item {item} dropped")
            return
        ids = store.requeue(item)
        if item is not None and not ids:
            raise typer.BadParameter(f"no quarantined inbox item {item}", param_hint="ITEM")
        console.print(f"{len(ids)} items requeued" + (f": {', '.join(map(str, ids))}" if ids else ""))
    finally:
        store.close()


@devices_app.command("create")
def devices_create(
    name: str,
    kind: Annotated[str, typer.Option(help="count (RFID portal) or weight (weighbridge).")],
    directory: DeviceDir = Path("devices"),
    password_env: PasswordEnv = "CERTLEDGER_DEVICE_PASSWORD",
    weak_kdf_for_tests: Annotated[
        bool, typer.Option("--weak-kdf-for-tests", hidden=True, help="pbkdf2 with 2 rounds: tests only.")
    ] = False,
) -> None:
    """Make a device key in an encrypted keystore (scrypt); prints its address to enrol on chain."""
    if kind not in KIND_NAMES:
        raise typer.BadParameter("kind is count or weight", param_hint="--kind")
    try:
        files = DeviceFiles(directory, name)  # refuses a name that is a path, before anything is made
    except DeviceError as exc:
        _fail(exc)
    password = _secret(password_env, "the keystore password", "--password-env")
    if weak_kdf_for_tests:
        _run(
            lambda: console.print(
                create_device(files, KIND_NAMES[kind], password, kdf="pbkdf2", iterations=2)
            )
        )
    else:
        _run(lambda: console.print(create_device(files, KIND_NAMES[kind], password)))


def _device_names(directory: Path) -> list[str]:
    """The devices in `directory`, by name; hidden files (which pathlib's glob matches, and which
    no device name can be) are an editor's or a copy's, not devices."""
    found = (m.name.removesuffix(".device.json") for m in directory.glob("*.device.json"))
    return sorted(name for name in found if not name.startswith("."))


@devices_app.command("list")
def devices_list(directory: DeviceDir = Path("devices"), as_json: Json = False) -> None:
    """Devices in a directory: name, address, kind, next sequence number."""
    rows: list[dict[str, Any]] = []

    def job() -> None:
        for name in _device_names(directory):
            files = DeviceFiles(directory, name)
            address, kind = device_address(files)
            rows.append({"name": files.name, "address": address, "kind": kind.name,
                         "next_sequence": next_sequence(files)})  # fmt: skip

    _run(job)
    if as_json:
        console.print_json(json.dumps(rows))
        return
    for r in rows:
        console.print(
            f"{r['name']:<16} {r['address']} {r['kind']:<17} next sequence {r['next_sequence']}",
            soft_wrap=True,  # one line per device in a pipe too (rich wraps at 80 columns there)
            highlight=False,
        )


@devices_app.command("simulate")
def devices_simulate(
    order: Annotated[int, typer.Option("--order", help="The order whose delivery the devices read.")],
    directory: DeviceDir = Path("devices"),
    password_env: PasswordEnv = "CERTLEDGER_DEVICE_PASSWORD",
    cartons: Annotated[
        int | None, typer.Option(min=0, help="Cartons delivered (default: as ordered).")
    ] = None,
    carton_weight: Annotated[int, typer.Option(min=1, help="Net grams per carton.")] = 12_000,
    faults: Annotated[
        list[str] | None,
        typer.Option(
            "--fault",
            help="NAME=FAULT for one device: out-of-range, disagree (faulty); "
            "wrong-key, replay, high-s (malicious).",
        ),
    ] = None,
    valid_for: Annotated[int, typer.Option(min=1, help="Seconds each signature stays valid.")] = 3_600,
    seed: Annotated[int | None, typer.Option(help="Seed for the scale's noise.")] = None,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    broker_url: BrokerUrl = "mqtt://127.0.0.1:1883",
) -> None:
    """Every device in --dir reads order ORDER's delivery and publishes its signed reading over MQTT."""
    fault_of: dict[str, Fault] = {}
    for item in faults or []:
        name, _, value = item.partition("=")
        try:
            fault_of[name] = Fault(value)
        except ValueError:
            raise typer.BadParameter(
                f"{item}: faults are {[f.value for f in Fault]}", param_hint="--fault"
            ) from None
    names = _device_names(directory)
    unknown = sorted(set(fault_of) - set(names))
    if unknown:
        # A misspelt name would quietly send an honest reading where a fault was asked for.
        raise typer.BadParameter(
            f"no device named {', '.join(unknown)} in {directory} (devices: {', '.join(names) or 'none'})",
            param_hint="--fault",
        )
    password = _secret(password_env, "the keystore password", "--password-env")

    def job() -> None:
        if not names:
            raise DeviceError(f"no devices in {directory}")
        for n in names:
            # A malformed device file is reported before a node is needed or any key is unlocked.
            device_address(DeviceFiles(directory, n))
        system = _system(rpc_url, manifest)
        o = system.ledger.order(order)
        if o.status != OrderStatus.OPEN:
            # Checked before a device signs: each signature spends a sequence number for good.
            seen = "does not exist" if o.status == OrderStatus.NONE else f"is {o.status.name.lower()}"
            raise typer.BadParameter(
                f"order {order} {seen}: only an open order is delivered", param_hint="--order"
            )
        wh = system.oracle.warehouse(o.warehouse)
        settings = OracleSettings(broker_url=broker_url)
        chain_id, oracle = system.chain.chain_id, system.oracle.address
        loaded: list[tuple[DeviceSigner, FileSequence]] = []
        try:
            for n in names:
                # One at a time inside the try: a device that fails to load unlocks those before it.
                loaded.append(
                    load_device(DeviceFiles(directory, n), password, chain_id=chain_id, oracle=oracle)
                )
            devices = [
                SimulatedDevice(signer, fault_of.get(n, Fault.NONE))
                for n, (signer, _) in zip(names, loaded, strict=True)
            ]
            context = ReadingContext(o.order_id, o.warehouse, o.goods_hash, wh.device_set_version)
            delivery = Delivery(cartons if cartons is not None else o.expected_quantity, carton_weight)
            observed_at = max(system.chain.now(), int(time.time())) - 5
            publications = readings_for(
                devices, context, delivery, observed_at=observed_at, valid_for=valid_for,
                topic_prefix=settings.topic_prefix, rng=random.Random(seed),
            )  # fmt: skip
            publisher = MqttPublisher(settings, f"certledger-sim-{os.getpid()}")
            publisher.start()
            try:
                publish_all(publisher, publications)
            finally:
                publisher.stop()
            for p in publications:
                console.print(f"published {p.device} {p.note}")
        finally:
            for _, seq in loaded:
                seq.close()

    _run(job)
