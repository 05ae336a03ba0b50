"""chain_client's commands: deploy, demo, and the everyday jobs against a deployed system.

Write commands sign with a key read from an environment variable (`--key-env`, never a key on the
command line, where shell history and `ps` would keep it). Everything but `demo` needs a node
(`--rpc-url` or CERTLEDGER_RPC_URL): the embedded chain lives only as long as one process.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils import to_checksum_address
from pydantic import ValidationError
from rich.console import Console
from web3.exceptions import MismatchedABI, Web3ValidationError

from chain_client.audit_cli import app as audit_app
from chain_client.chain import connect
from chain_client.errors import CertledgerError, ContractError, InvalidArgument
from chain_client.ledger import ZERO_ADDRESS, LineageNode
from chain_client.models import CertificateStatus, DiscountOffer, OrderStatus, Role
from chain_client.pricing import discount_price, implied_annual_rate_bps
from chain_client.receipts import MAX_FRESHNESS, DeviceEnrolment, ReadingKind, ReadingRange, bytes32_of
from chain_client.settings import Settings
from chain_client.system import System
from chain_client.transactions import TxResult

app = typer.Typer(no_args_is_help=True)
order_app = typer.Typer(help="Open, cancel and show orders.", no_args_is_help=True)
cert_app = typer.Typer(help="Show, split, transfer, merge, freeze certificates.", no_args_is_help=True)
discount_app = typer.Typer(help="Quote, offer and buy discount sales.", no_args_is_help=True)
participant_app = typer.Typer(
    help="Register, suspend, reinstate, set roles and limits of, and show participants.", no_args_is_help=True
)
admin_app = typer.Typer(
    help="Emergency pause, split rules and the system's status (ADMIN).", no_args_is_help=True
)
app.add_typer(order_app, name="order")
app.add_typer(cert_app, name="cert")
app.add_typer(discount_app, name="discount")
warehouse_app = typer.Typer(
    help="Register, rotate, deactivate and show warehouses; allow relayers.", no_args_is_help=True
)
app.add_typer(participant_app, name="participant")
app.add_typer(admin_app, name="admin")
app.add_typer(warehouse_app, name="warehouse")
app.add_typer(audit_app, name="audit")
token_app = typer.Typer(help="Settlement token balances; minting on the demo token.", no_args_is_help=True)
app.add_typer(token_app, name="token")

console = Console(soft_wrap=True)  # hashes and addresses stay whole, for copying

RpcUrl = Annotated[str | None, typer.Option(envvar="CERTLEDGER_RPC_URL", help="JSON-RPC URL of the node.")]
Manifest = Annotated[Path, typer.Option(envvar="CERTLEDGER_MANIFEST", help="Deployment manifest.")]
KeyEnv = Annotated[str, typer.Option(help="Environment variable holding the signer's hex private key.")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _settings(rpc_url: str | None, manifest: Path) -> Settings:
    try:
        return Settings(rpc_url=rpc_url, manifest=manifest)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise typer.BadParameter(problems) from None


def _system(rpc_url: str | None, manifest: Path) -> System:
    if rpc_url is None:
        raise typer.BadParameter(
            "a node is needed: give --rpc-url or set CERTLEDGER_RPC_URL", param_hint="--rpc-url"
        )
    return System.from_manifest(_settings(rpc_url, manifest))


def _signer(key_env: str) -> LocalAccount:
    key = os.environ.get(key_env)
    if not key:
        raise typer.BadParameter(f"environment variable {key_env} is not set", param_hint="--key-env")
    try:
        account: LocalAccount = Account.from_key(key)
    except (ValueError, TypeError):
        # Never echo the value: it is (meant to be) a private key.
        problem = f"{key_env} does not hold a hex private key"
        raise typer.BadParameter(problem, param_hint="--key-env") from None
    return account


def _address(value: str) -> ChecksumAddress:
    try:
        return to_checksum_address(value)
    except ValueError:
        raise typer.BadParameter(f"not an address: {value}") from None


def _id32(value: str) -> bytes:
    """A bytes32 given as 0x-hex, or a label (see receipts.bytes32_of)."""
    try:
        return bytes32_of(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _emit(data: Any, as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(data, default=_jsonable))
    else:
        items = data if isinstance(data, list) else [data]
        console.print("\n\n".join(_lines(item) for item in items) if items else "none", highlight=False)


def _lines(record: Any) -> str:
    """A record as `field: value` lines, for people: bytes32 as 0x hex, enums and roles by name."""
    return "\n".join(f"{name}: {_field(name, value)}" for name, value in vars(record).items())


#: Fields holding a unix time (records' and contract errors'), shown with their UTC date too.
_TIMES = frozenset(
    {"maturity", "deadline", "expiry", "cancellableAfter", "receivedAt", "nowTs", "observedAt"}
)
#: Contract errors' fields holding an enum, by (error, field).
_ENUMS: dict[tuple[str, str], type[enum.IntEnum]] = {("OrderNotOpen", "status"): OrderStatus}


def _field(name: str, value: Any, error: str = "") -> str:
    """A record's or an error's field for people: times with their UTC date, enums by name."""
    kind = _ENUMS.get((error, name))
    if kind is not None and isinstance(value, int):
        try:
            return kind(value).name.lower()
        except ValueError:
            return str(value)
    if name == "buyer" and value is None:
        return "anyone"
    if name in _TIMES and isinstance(value, int) and 0 < value < 2**40:
        stamp = datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"{value} ({stamp})"
    return _shown(value)


def _shown(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, Role):
        return ", ".join(r.name for r in Role if r in value and r.name) or "none"
    if isinstance(value, enum.Enum):
        return value.name.lower()
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)


def _run(job: Any) -> None:
    """Runs `job`, printing a contract error as its name and fields and exiting 1. A job that
    returns a mined transaction says so."""
    try:
        result = job()
        if isinstance(result, TxResult):
            console.print(f"done in {result.tx_hash} (block {result.block_number})", highlight=False)
    except ContractError as exc:
        fields = ", ".join(
            f"{name}={_field(name, value, exc.error_name)}" for name, value in exc.fields.items()
        )
        console.print(f"[red]refused by the contract:[/] {exc.error_name}({fields})", highlight=False)
        raise typer.Exit(1) from None
    except InvalidArgument as exc:  # the user's input, refused before anything was sent
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    except CertledgerError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    except (Web3ValidationError, MismatchedABI, ValueError, LookupError) as exc:
        # Input the chain's types refuse (a uint256 out of range, a negative amount), a value out
        # of a calculator's range, or an id nothing has: the user's to fix, said in one line.
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


def _say_approval(approval: TxResult | None, amount: int) -> None:
    """Says so when the ledger had to be approved first: a transaction of its own, paid for."""
    if approval is not None:
        console.print(
            f"approved the ledger to take {amount} in {approval.tx_hash} (block {approval.block_number})",
            highlight=False,
        )


# ---------------------------------------------------------------------- deploy, demo


def check_new_manifest(manifest: Path, force: bool = False) -> None:
    """Refuses, before anything is deployed, a manifest path that would overwrite another
    system's manifest (unless `force`) or that has no directory to go in."""
    if manifest.exists() and not force:
        raise typer.BadParameter(
            f"{manifest} exists (a deployed system's?): give another path, or --force to replace it",
            param_hint="--manifest",
        )
    if not manifest.parent.is_dir():
        raise typer.BadParameter(f"no directory {manifest.parent} for the manifest", param_hint="--manifest")


#: `demo --manifest`: where the demo's deployment manifest goes (a node only).
DemoManifest = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        help="Write the demo's deployment manifest here, for `certledger audit` (needs --rpc-url).",
    ),
]


def check_demo_manifest(manifest: Path | None, rpc_url: str | None) -> None:
    if manifest is None:
        return
    if rpc_url is None:
        raise typer.BadParameter(
            "the embedded chain ends with the demo: a manifest needs a node (--rpc-url)",
            param_hint="--manifest",
        )
    check_new_manifest(manifest)


@app.command()
def deploy(
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_ADMIN_KEY",
    entity_id: Annotated[
        str, typer.Option(help="Operator's legal identifier (hashed) or 0x bytes32.")
    ] = "operator",
    min_split_unit: Annotated[int, typer.Option(min=1)] = 100,
    max_split_depth: Annotated[int, typer.Option(min=1, max=255)] = 8,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing manifest file.")] = False,
) -> None:
    """Deploy token, oracle and ledger to a node and write the deployment manifest."""

    check_new_manifest(manifest, force)

    def job() -> None:
        chain = connect(_settings(rpc_url, manifest))
        if chain.embedded:
            raise typer.BadParameter("deploy needs a node: give --rpc-url", param_hint="--rpc-url")
        system = System.deploy(
            chain,
            _signer(key_env),
            admin_entity_id=_id32(entity_id),
            min_split_unit=min_split_unit,
            max_split_depth=max_split_depth,
        )
        # Printed before it is saved: should the write fail, the addresses are not lost.
        console.print_json(json.dumps(asdict(system.deployment)))
        system.deployment.save(manifest)
        console.print(f"deployed; manifest written to {manifest}")

    _run(job)


@app.command()
def demo(rpc_url: RpcUrl = None, manifest: DemoManifest = None) -> None:
    """Run the whole lifecycle (order, receipt, split, discount, maturity, settlement) and tell it."""
    from chain_client.demo import run_demo

    check_demo_manifest(manifest, rpc_url)
    _run(lambda: run_demo(connect(Settings(rpc_url=rpc_url)), console, manifest=manifest))


# ---------------------------------------------------------------------- participants


@participant_app.command("register")
def participant_register(
    account: str,
    entity: Annotated[str, typer.Option(help="Legal identifier (hashed) or 0x bytes32.")],
    roles: Annotated[
        list[str], typer.Option("--role", help="ISSUER, SUPPLIER, FACTOR, REGULATOR, AUDITOR, ADMIN")
    ],
    issuer_limit: int = 0,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_ADMIN_KEY",
) -> None:
    """Register a participant (ADMIN)."""
    mask = _roles(roles)
    _run(
        lambda: _system(rpc_url, manifest).ledger.register_participant(
            _signer(key_env), _address(account), _id32(entity), mask, issuer_limit
        )
    )


def _roles(names: list[str]) -> Role:
    try:
        mask = Role(0)
        for name in names:
            mask |= Role[name.upper()]
    except KeyError as exc:
        raise typer.BadParameter(f"unknown role {exc}", param_hint="--role") from None
    return mask


@participant_app.command("roles")
def participant_roles(
    account: str,
    roles: Annotated[
        list[str], typer.Option("--role", help="ISSUER, SUPPLIER, FACTOR, REGULATOR, AUDITOR, ADMIN; repeat")
    ],
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_ADMIN_KEY",
) -> None:
    """Replace a participant's roles (ADMIN); its certificates stay where they are."""
    mask = _roles(roles)
    _run(lambda: _system(rpc_url, manifest).ledger.set_roles(_signer(key_env), _address(account), mask))


@participant_app.command("limit")
def participant_limit(
    account: str,
    limit: Annotated[int, typer.Argument(min=0, help="The most escrow the issuer may have open at once.")],
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_ADMIN_KEY",
) -> None:
    """Set an issuer's outstanding limit (ADMIN); orders already open stay open."""
    _run(
        lambda: _system(rpc_url, manifest).ledger.set_issuer_limit(_signer(key_env), _address(account), limit)
    )


@admin_app.command("pause")
def admin_pause(
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_ADMIN_KEY",
) -> None:
    """Stop every order, certificate and payment operation: an emergency (ADMIN). Receipts wait."""
    _run(lambda: _system(rpc_url, manifest).ledger.pause(_signer(key_env)))


@admin_app.command("unpause")
def admin_unpause(
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_ADMIN_KEY",
) -> None:
    """Resume operation after a pause (ADMIN)."""
    _run(lambda: _system(rpc_url, manifest).ledger.unpause(_signer(key_env)))


@admin_app.command("split-rules")
def admin_split_rules(
    min_unit: Annotated[int, typer.Option(min=1, help="The smallest part a split may create.")],
    max_depth: Annotated[int, typer.Option(min=1, max=255, help="The deepest a split may go.")],
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_ADMIN_KEY",
) -> None:
    """Set the split rules (ADMIN); open offers the new rules forbid can no longer be bought."""
    _run(lambda: _system(rpc_url, manifest).ledger.set_split_rules(_signer(key_env), min_unit, max_depth))


@admin_app.command("status")
def admin_status(
    rpc_url: RpcUrl = None, manifest: Manifest = Path("deployment.json"), as_json: Json = False
) -> None:
    """Whether the ledger is paused, its split rules, how many orders, certificates and offers it
    has issued, and the credits waiting for withdrawal."""

    def job() -> None:
        ledger = _system(rpc_url, manifest).ledger
        orders, certificates, offers = ledger.counts()
        unit, depth = ledger.split_rules()
        _emit(
            SystemStatus(ledger.paused(), unit, depth, orders, certificates, offers, ledger.total_credits()),
            as_json,
        )

    _run(job)


@dataclass(frozen=True)
class SystemStatus:
    paused: bool
    min_split_unit: int
    max_split_depth: int
    orders: int
    certificates: int
    offers: int
    total_credits: int


@participant_app.command("suspend")
def participant_suspend(
    account: str,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_ADMIN_KEY",
) -> None:
    """Suspend a participant (ADMIN)."""
    _run(lambda: _system(rpc_url, manifest).ledger.suspend(_signer(key_env), _address(account)))


@participant_app.command("reinstate")
def participant_reinstate(
    account: str,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_ADMIN_KEY",
) -> None:
    """Reinstate a suspended participant (ADMIN)."""
    _run(lambda: _system(rpc_url, manifest).ledger.reinstate(_signer(key_env), _address(account)))


_KINDS = {"count": ReadingKind.CARTON_COUNT, "weight": ReadingKind.NET_WEIGHT_GRAMS}


def _kind(text: str) -> int:
    if text.isdigit():
        return int(text)
    if text not in _KINDS:
        raise typer.BadParameter(f"reading kind {text!r}: use {', '.join(_KINDS)} or a number 1..7")
    return int(_KINDS[text])


def _enrolment(text: str) -> DeviceEnrolment:
    address, _, kind = text.rpartition(":")
    if not address:
        raise typer.BadParameter(f"device {text!r}: expected ADDRESS:KIND, e.g. 0xabc...:count")
    return DeviceEnrolment(_address(address), _kind(kind))


def _range(text: str) -> ReadingRange:
    parts = text.split(":")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise typer.BadParameter(f"range {text!r}: expected KIND:MIN:MAX, e.g. count:1:5000")
    return ReadingRange(_kind(parts[0]), int(parts[1]), int(parts[2]))


@warehouse_app.command("register")
def warehouse_register(
    warehouse: Annotated[str, typer.Argument(help="Warehouse label (hashed) or 0x bytes32.")],
    devices: Annotated[
        list[str], typer.Option("--device", help="ADDRESS:KIND (kind count, weight or 1..7); repeat.")
    ],
    ranges: Annotated[
        list[str], typer.Option("--range", help="KIND:MIN:MAX of plausible readings; repeat per kind.")
    ],
    threshold: Annotated[int, typer.Option(min=1, help="Observations needed (m of n).")],
    freshness: Annotated[
        int, typer.Option(min=1, max=MAX_FRESHNESS, help="Oldest acceptable reading, s (a week at most).")
    ] = 3_600,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_ADMIN_KEY",
) -> None:
    """Register a warehouse with its device keys, their kinds and the reading ranges (ADMIN)."""
    enrolments = [_enrolment(d) for d in devices]
    bounds = [_range(r) for r in ranges]
    _run(
        lambda: _system(rpc_url, manifest).oracle.register_warehouse(
            _signer(key_env), _id32(warehouse), enrolments, threshold, freshness, bounds
        )
    )


@warehouse_app.command("rotate")
def warehouse_rotate(
    warehouse: Annotated[str, typer.Argument(help="Warehouse label (hashed) or 0x bytes32.")],
    devices: Annotated[
        list[str], typer.Option("--device", help="ADDRESS:KIND (kind count, weight or 1..7); repeat.")
    ],
    ranges: Annotated[
        list[str], typer.Option("--range", help="KIND:MIN:MAX of plausible readings; repeat per kind.")
    ],
    threshold: Annotated[int, typer.Option(min=1, help="Observations needed (m of n).")],
    freshness: Annotated[
        int | None,
        typer.Option(min=1, max=MAX_FRESHNESS, help="Oldest acceptable reading, s (default: as it is)."),
    ] = None,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_ADMIN_KEY",
) -> None:
    """Replace a warehouse's device set and rules (ADMIN): readings signed under the old set stop
    counting, so rotate when no order of the warehouse is between its deadline and its
    cancellation time (decisions D54)."""
    enrolments = [_enrolment(d) for d in devices]
    bounds = [_range(r) for r in ranges]

    def job() -> TxResult:
        oracle, label = _system(rpc_url, manifest).oracle, _id32(warehouse)
        window = oracle.warehouse(label).freshness if freshness is None else freshness
        return oracle.rotate_devices(_signer(key_env), label, enrolments, threshold, window, bounds)

    _run(job)


@warehouse_app.command("deactivate")
def warehouse_deactivate(
    warehouse: Annotated[str, typer.Argument(help="Warehouse label (hashed) or 0x bytes32.")],
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_ADMIN_KEY",
) -> None:
    """Deactivate a warehouse for good (ADMIN): no receipt of it confirms any more, and its label
    cannot be registered again; its open orders can only be cancelled."""
    _run(lambda: _system(rpc_url, manifest).oracle.deactivate_warehouse(_signer(key_env), _id32(warehouse)))


@warehouse_app.command("show")
def warehouse_show(
    warehouse: Annotated[str, typer.Argument(help="Warehouse label (hashed) or 0x bytes32.")],
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    as_json: Json = False,
) -> None:
    """Show a warehouse: active, threshold, device count, device-set version, freshness window."""

    def job() -> None:
        found = _system(rpc_url, manifest).oracle.warehouse(_id32(warehouse))
        if found.device_set_version == 0:
            raise LookupError(f"no warehouse {warehouse}")
        _emit(found, as_json)

    _run(job)


@warehouse_app.command("relayer")
def warehouse_relayer(
    relayer: Annotated[str, typer.Argument(help="The gateway relayer's address.")],
    revoke: Annotated[bool, typer.Option("--revoke", help="Take it off the allow-list instead.")] = False,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_ADMIN_KEY",
) -> None:
    """Allow (or revoke) a relayer to submit receipts to the oracle (ADMIN)."""
    _run(
        lambda: _system(rpc_url, manifest).oracle.set_relayer(_signer(key_env), _address(relayer), not revoke)
    )


@participant_app.command("show")
def participant_show(
    account: str, rpc_url: RpcUrl = None, manifest: Manifest = Path("deployment.json"), as_json: Json = False
) -> None:
    """Show a participant's record."""

    def job() -> None:
        participant = _system(rpc_url, manifest).ledger.participant(_address(account))
        if not participant.registered:
            raise LookupError(f"{participant.address} is not a registered participant")
        _emit(participant, as_json)

    _run(job)


# ---------------------------------------------------------------------- the settlement token


@token_app.command("mint")
def token_mint(
    to: str,
    amount: Annotated[int, typer.Option(help="Token units (fen for tCNY).", min=1)],
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_ADMIN_KEY",
) -> None:
    """Issue demo deposit tokens to an account (the demo token's bank: the key that deployed it).
    A deployment settling in a real token funds issuers there instead."""
    _run(lambda: _system(rpc_url, manifest).token.mint(_signer(key_env), _address(to), amount))


@token_app.command("balance")
def token_balance(
    account: str, rpc_url: RpcUrl = None, manifest: Manifest = Path("deployment.json"), as_json: Json = False
) -> None:
    """An account's settlement token balance, in token units."""

    def job() -> None:
        address = _address(account)
        balance = _system(rpc_url, manifest).token.balance_of(address)
        if as_json:
            _emit({"account": address, "balance": balance}, True)
        else:
            console.print(str(balance))

    _run(job)


# ---------------------------------------------------------------------- orders


@order_app.command("open")
def order_open(
    payee: str,
    amount: Annotated[int, typer.Option(help="Amount in token units (fen for tCNY).", min=1)],
    maturity_days: Annotated[int, typer.Option(min=0)],
    invoice: Annotated[str, typer.Option(help="Invoice number (hashed) or 0x bytes32.")],
    warehouse: Annotated[str, typer.Option(help="Warehouse label or 0x bytes32.")],
    goods: Annotated[str, typer.Option(help="Goods description (hashed) or 0x bytes32.")],
    quantity: Annotated[int, typer.Option(min=1)],
    deadline_days: Annotated[int, typer.Option(min=1)] = 14,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_KEY",
) -> None:
    """Open an order escrowing AMOUNT (ISSUER); approves the ledger for it first if needed."""

    def job() -> TxResult:
        system = _system(rpc_url, manifest)
        issuer = _signer(key_env)
        now = system.chain.now()
        terms: dict[str, Any] = {
            "payee": _address(payee),
            "amount": amount,
            "maturity": now + maturity_days * 86_400,
            "invoice_hash": _id32(invoice),
            "warehouse": _id32(warehouse),
            "goods_hash": _id32(goods),
            "expected_quantity": quantity,
            "deadline": now + deadline_days * 86_400,
        }
        _say_approval(
            system.token.ensure_allowance(
                issuer,
                system.ledger.address,
                amount,
                check=lambda: system.ledger.check_open_order(issuer.address, **terms),
            ),
            amount,
        )
        order_id, result = system.ledger.open_order(issuer, **terms)
        console.print(f"order {order_id} opened")
        return result

    _run(job)


@order_app.command("cancel")
def order_cancel(
    order_id: int,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_KEY",
) -> None:
    """Cancel an unconfirmed order after its deadline (its ISSUER)."""
    _run(lambda: _system(rpc_url, manifest).ledger.cancel_order(_signer(key_env), order_id))


@order_app.command("show")
def order_show(
    order_id: int, rpc_url: RpcUrl = None, manifest: Manifest = Path("deployment.json"), as_json: Json = False
) -> None:
    """Show an order."""

    def job() -> None:
        order = _system(rpc_url, manifest).ledger.order(order_id)
        if order.status == OrderStatus.NONE:
            raise LookupError(f"no order {order_id}")
        _emit(order, as_json)

    _run(job)


# ---------------------------------------------------------------------- certificates


@cert_app.command("show")
def cert_show(
    certificate_id: int,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    as_json: Json = False,
) -> None:
    """Show a certificate."""

    def job() -> None:
        certificate = _system(rpc_url, manifest).ledger.certificate(certificate_id)
        if certificate.status == CertificateStatus.NONE:
            raise LookupError(_no_certificate(certificate_id))
        _emit(certificate, as_json)

    _run(job)


def _no_certificate(certificate_id: int) -> str:
    return (
        f"no certificate {certificate_id} (an order's root certificate exists once its receipt is confirmed)"
    )


@cert_app.command("holdings")
def cert_holdings(
    holder: str, rpc_url: RpcUrl = None, manifest: Manifest = Path("deployment.json"), as_json: Json = False
) -> None:
    """List the live certificates a holder has."""

    def job() -> None:
        system = _system(rpc_url, manifest)
        held = system.ledger.holdings(_address(holder), from_block=system.deployment.deployment_block)
        _emit(held, as_json)

    _run(job)


@cert_app.command("lineage")
def cert_lineage(
    certificate_id: int,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    as_json: Json = False,
) -> None:
    """Print the tree of a certificate's order, from the root to every split."""

    def job() -> None:
        system = _system(rpc_url, manifest)
        if system.ledger.certificate(certificate_id).status == CertificateStatus.NONE:
            raise LookupError(_no_certificate(certificate_id))
        tree = system.ledger.lineage(certificate_id, from_block=system.deployment.deployment_block)
        if as_json:
            _emit(_tree_dict(tree), True)
            return
        for node in tree.walk():
            c = node.certificate
            console.print(
                f"{'  ' * c.depth}#{c.certificate_id} {c.holder} {c.value} {c.status.name.lower()}"
                + (" frozen" if c.frozen else ""),
                highlight=False,
            )
            for target, value in node.merged_into:
                console.print(f"{'  ' * c.depth}  merged {value} into #{target}", highlight=False)

    _run(job)


def _tree_dict(node: LineageNode) -> dict[str, Any]:
    return {
        **asdict(node.certificate),
        "children": [_tree_dict(k) for k in node.children],
        "merged_into": [{"certificate_id": t, "value": v} for t, v in node.merged_into],
    }


@cert_app.command("split")
def cert_split(
    certificate_id: int,
    values: Annotated[list[int], typer.Argument(help="The parts; the certificate keeps the first.")],
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_KEY",
) -> None:
    """Split a certificate into parts you keep."""

    def job() -> TxResult:
        if len(values) < 2:
            raise typer.BadParameter("a split needs at least two parts: the value kept, then each new part")
        new_ids, result = _system(rpc_url, manifest).ledger.split(_signer(key_env), certificate_id, values)
        console.print(f"new certificates: {new_ids}")
        return result

    _run(job)


@cert_app.command("transfer")
def cert_transfer(
    certificate_id: int,
    to: str,
    value: Annotated[int | None, typer.Option(help="Move only this much, as a new certificate.")] = None,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_KEY",
) -> None:
    """Transfer a whole certificate, or split VALUE off to a new holder."""

    def job() -> TxResult:
        ledger, receiver = _system(rpc_url, manifest).ledger, _address(to)
        if value is None:
            result = ledger.transfer(_signer(key_env), certificate_id, receiver)
            console.print(f"certificate {certificate_id} now held by {receiver}", highlight=False)
        else:
            new_id, result = ledger.split_to(_signer(key_env), certificate_id, receiver, value)
            console.print(f"certificate {new_id} of {value} now held by {receiver}", highlight=False)
        return result

    _run(job)


@cert_app.command("merge")
def cert_merge(
    from_id: int,
    to_id: int,
    value: Annotated[int | None, typer.Option()] = None,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_KEY",
) -> None:
    """Move value (default all) from one certificate into another of the same order."""

    def job() -> TxResult:
        result = _system(rpc_url, manifest).ledger.merge(_signer(key_env), from_id, to_id, value)
        moved = result.event("TransferValue")["_value"]
        console.print(f"merged {moved} of certificate {from_id} into {to_id}", highlight=False)
        return result

    _run(job)


@cert_app.command("approve")
def cert_approve(
    certificate_id: int,
    operator: str,
    value: Annotated[
        int | None,
        typer.Option(min=0, help="Only this much of its value (ERC-3525 allowance; 0 withdraws it)."),
    ] = None,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_KEY",
) -> None:
    """Let OPERATOR move your certificate: all of it (void once it moves), or up to --value of it."""

    def job() -> TxResult:
        ledger, holder = _system(rpc_url, manifest).ledger, _signer(key_env)
        if value is None:
            return ledger.approve(holder, _address(operator), certificate_id)
        return ledger.approve_value(holder, certificate_id, _address(operator), value)

    _run(job)


@cert_app.command("approve-all")
def cert_approve_all(
    operator: str,
    revoke: Annotated[bool, typer.Option(help="Take the approval back.")] = False,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_KEY",
) -> None:
    """Let OPERATOR move every certificate you hold, until --revoke."""
    _run(
        lambda: _system(rpc_url, manifest).ledger.set_approval_for_all(
            _signer(key_env), _address(operator), not revoke
        )
    )


@cert_app.command("approvals")
def cert_approvals(
    certificate_id: int,
    operator: str,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    as_json: Json = False,
) -> None:
    """What OPERATOR may move of a certificate: the whole of it, everything its holder holds, or
    the value left in its allowance."""

    def job() -> None:
        ledger = _system(rpc_url, manifest).ledger
        certificate = ledger.certificate(certificate_id)
        if certificate.status == CertificateStatus.NONE:
            raise LookupError(_no_certificate(certificate_id))
        who = _address(operator)
        _emit(
            Approvals(
                certificate_id=certificate_id,
                holder=certificate.holder,
                operator=who,
                approved=ledger.approved(certificate_id) == who,
                approved_for_all=ledger.approved_for_all(certificate.holder, who),
                allowance=ledger.allowance(certificate_id, who),
            ),
            as_json,
        )

    _run(job)


@dataclass(frozen=True)
class Approvals:
    certificate_id: int
    holder: ChecksumAddress
    operator: ChecksumAddress
    approved: bool
    approved_for_all: bool
    allowance: int


@cert_app.command("freeze")
def cert_freeze(
    certificate_id: int,
    reason: str,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_KEY",
) -> None:
    """Freeze a certificate (REGULATOR)."""
    _run(lambda: _system(rpc_url, manifest).ledger.freeze(_signer(key_env), certificate_id, _id32(reason)))


@cert_app.command("unfreeze")
def cert_unfreeze(
    certificate_id: int,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_KEY",
) -> None:
    """Lift a freeze (REGULATOR)."""
    _run(lambda: _system(rpc_url, manifest).ledger.unfreeze(_signer(key_env), certificate_id))


# ---------------------------------------------------------------------- discount, settlement


@discount_app.command("quote")
def discount_quote(
    face: Annotated[int, typer.Argument(min=0)],
    days: Annotated[int, typer.Argument(min=0)],
    rate_bps: Annotated[int, typer.Argument(min=0, help="Annual rate in basis points (600 = 6%).")],
) -> None:
    """Price of FACE due in DAYS at an annual RATE_BPS: FACE / (1 + RATE * DAYS / 365), rounded
    down (a simple-interest present value, as the ledger computes it and reports a sale's rate;
    not the bank-discount FACE * (1 - RATE * DAYS / 365), which is a little lower)."""
    _run(lambda: console.print(discount_price(face, days, rate_bps)))


@discount_app.command("offer")
def discount_offer(
    certificate_id: int,
    value: Annotated[int, typer.Option(min=1)],
    price: Annotated[int, typer.Option(min=1)],
    buyer: Annotated[str | None, typer.Option(help="Reserve for this factor.")] = None,
    valid_hours: Annotated[int, typer.Option(min=1)] = 24,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_KEY",
) -> None:
    """Offer VALUE of a certificate for PRICE to a factor."""

    def job() -> TxResult:
        system = _system(rpc_url, manifest)
        offer_id, result = system.ledger.offer_discount(
            _signer(key_env),
            certificate_id,
            value=value,
            price=price,
            expiry=system.chain.now() + valid_hours * 3_600,
            buyer=_address(buyer) if buyer else None,
        )
        console.print(f"offer {offer_id} open")
        return result

    _run(job)


@discount_app.command("buy")
def discount_buy(
    offer_id: int,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_KEY",
) -> None:
    """Buy an offer (FACTOR): pays its price and receives the certificate value atomically."""

    def job() -> TxResult:
        system = _system(rpc_url, manifest)
        factor = _signer(key_env)
        offer = system.ledger.offer(offer_id)
        if offer.seller == ZERO_ADDRESS:
            raise LookupError(f"no offer {offer_id}")
        _say_approval(
            system.token.ensure_allowance(
                factor,
                system.ledger.address,
                offer.price,
                check=lambda: system.ledger.check_buy_discounted(factor.address, offer_id),
            ),
            offer.price,
        )
        bought, result = system.ledger.buy_discounted(factor, offer_id)
        sale = result.event("DiscountSold")
        console.print(
            f"bought {sale['value']} of certificate {sale['certificateId']} for {sale['price']} "
            f"(implied {sale['annualRateBps'] / 100:.2f}% a year) as certificate {bought}",
            highlight=False,
        )
        return result

    _run(job)


@discount_app.command("show")
def discount_show(
    offer_id: int,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    as_json: Json = False,
) -> None:
    """Show an offer with what its price buys: the order, its debtor (issuer), the maturity and the
    annual rate a purchase now would earn."""

    def job() -> None:
        system = _system(rpc_url, manifest)
        offer = system.ledger.offer(offer_id)
        if offer.seller == ZERO_ADDRESS:
            raise LookupError(f"no offer {offer_id}")
        _emit(_offer_shown(system, offer, system.chain.now()), as_json)

    _run(job)


@discount_app.command("offers")
def discount_offers(
    seller: Annotated[str | None, typer.Option(help="Only this seller's offers.")] = None,
    buyer: Annotated[
        str | None, typer.Option(help="Only offers this factor may buy (reserved for it or open to anyone).")
    ] = None,
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    as_json: Json = False,
) -> None:
    """List the open offers not yet expired (from the chain's events; the API lists them from its
    index), each with what its price buys."""

    def job() -> None:
        system = _system(rpc_url, manifest)
        now = system.chain.now()
        offers = system.ledger.open_offers(
            system.deployment.deployment_block,
            expiring_after=now,
            seller=None if seller is None else _address(seller),
            buyer=None if buyer is None else _address(buyer),
        )
        _emit([_offer_shown(system, o, now) for o in offers], as_json)

    _run(job)


@dataclass(frozen=True)
class OfferShown:
    """An offer as a buyer weighs it: the chain's offer, the certificate's order, debtor and
    maturity, and the rate a purchase at `now` would earn (None unless it can be bought now:
    open, unexpired, unmatured)."""

    offer_id: int
    certificate_id: int
    seller: ChecksumAddress
    buyer: ChecksumAddress | None  # None: anyone may buy it
    value: int
    price: int
    expiry: int
    open: bool
    expired: bool
    order_id: int
    issuer: ChecksumAddress
    maturity: int
    annual_rate_bps: int | None


def _offer_shown(system: System, offer: DiscountOffer, now: int) -> OfferShown:
    certificate = system.ledger.certificate(offer.certificate_id)
    order = system.ledger.order(certificate.order_id)
    left = certificate.maturity - now
    buyable_now = offer.open and offer.expiry > now and left > 0
    return OfferShown(
        offer_id=offer.offer_id,
        certificate_id=offer.certificate_id,
        seller=offer.seller,
        buyer=None if offer.buyer == ZERO_ADDRESS else offer.buyer,
        value=offer.value,
        price=offer.price,
        expiry=offer.expiry,
        open=offer.open,
        expired=offer.expiry <= now,
        order_id=certificate.order_id,
        issuer=order.issuer,
        maturity=certificate.maturity,
        annual_rate_bps=implied_annual_rate_bps(offer.value, offer.price, left) if buyable_now else None,
    )


@app.command()
def settle(
    certificate_ids: list[int],
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    key_env: KeyEnv = "CERTLEDGER_KEY",
) -> None:
    """Settle matured certificates: pay each holder from escrow (anyone may). A payment the token
    refuses is credited to the holder instead, to withdraw later."""

    def job() -> TxResult:
        result = _system(rpc_url, manifest).ledger.settle(_signer(key_env), certificate_ids)
        for settled in result.all("CertificateSettled"):
            console.print(
                f"certificate {settled['certificateId']}: {settled['value']} due to {settled['holder']}",
                highlight=False,
            )
        for credited in result.all("PaymentCredited"):
            console.print(
                f"credited {credited['amount']} to {credited['account']}: the token refused the "
                "payment; `certledger withdraw` with that account's key collects it",
                highlight=False,
            )
        return result

    _run(job)


@app.command()
def credit(account: str, rpc_url: RpcUrl = None, manifest: Manifest = Path("deployment.json")) -> None:
    """What the ledger holds for ACCOUNT after a payment the token refused (`withdraw` collects it)."""
    _run(lambda: console.print(_system(rpc_url, manifest).ledger.credit(_address(account))))


@app.command()
def withdraw(
    rpc_url: RpcUrl = None, manifest: Manifest = Path("deployment.json"), key_env: KeyEnv = "CERTLEDGER_KEY"
) -> None:
    """Withdraw payments credited to you when a push failed."""

    def job() -> TxResult:
        result = _system(rpc_url, manifest).ledger.withdraw(_signer(key_env))
        for withdrawn in result.all("Withdrawn"):
            console.print(f"withdrew {withdrawn['amount']} to {withdrawn['account']}", highlight=False)
        return result

    _run(job)
