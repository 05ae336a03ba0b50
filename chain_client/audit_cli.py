"""`certledger audit ...`: rebuild, verify and export the whole history from a node and a manifest.

    replay    empty the index and rebuild it from the deployment block (prints the digest)
    sync      bring the index up to date (or keep following the head with --follow)
    verify    check the index against itself, the contracts' views and DESIGN.md's invariants
    state     every order and certificate as of a block (from the index; no node needed)
    lineage   a certificate's tree from its root, as text, JSON or an SVG picture
    export    CSV files of every table and a JSON report
    digest    the audit digest after a block, for two auditors to compare

The index is a SQLite file by default (--db or CERTLEDGER_INDEX_DB) or any PostgreSQL URL.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from chain_client import audit
from chain_client.chain import Chain, connect
from chain_client.deploy import Deployment
from chain_client.errors import CertledgerError
from chain_client.events import UndecodableLog
from chain_client.index.books import Books
from chain_client.index.db import DEFAULT_URL, IndexDatabase
from chain_client.index.export import digest_at, export
from chain_client.index.state import LineageNode, books_at, lineage
from chain_client.index.svg import lineage_svg
from chain_client.index.sync import Indexer, SyncOptions, SyncStatus
from chain_client.models import CertificateStatus, OrderStatus
from chain_client.settings import Settings

app = typer.Typer(help="Rebuild, verify and export the whole history from the chain.", no_args_is_help=True)
console = Console()

RpcUrl = Annotated[str | None, typer.Option(envvar="CERTLEDGER_RPC_URL", help="JSON-RPC URL of the node.")]
Manifest = Annotated[Path, typer.Option(envvar="CERTLEDGER_MANIFEST", help="Deployment manifest.")]
Db = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="CERTLEDGER_INDEX_DB",
        help="Index database: a SQLite file, or a URL (postgresql://...).",
    ),
]
Block = Annotated[
    int | None, typer.Option("--block", help="Block to answer for (default: the index's last).")
]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
MaxRange = Annotated[int, typer.Option(min=1, help="Most blocks per eth_getLogs request.")]
Confirmations = Annotated[int, typer.Option(min=0, help="Blocks to stay behind the head.")]
AllHeaders = Annotated[
    bool,
    typer.Option(
        "--all-headers",
        help="Record the parent hash of every block with events, not only of the last 128 (one more "
        "request per block).",
    ),
]
DEFAULT_DB = DEFAULT_URL.removeprefix("sqlite:///")


@contextmanager
def _errors() -> Iterator[None]:
    """Prints our errors as one line and exits 1 (a traceback helps no auditor)."""
    try:
        yield
    except (CertledgerError, UndecodableLog, LookupError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None


def _node(rpc_url: str | None, manifest: Path) -> tuple[Chain, Deployment]:
    if rpc_url is None:
        raise typer.BadParameter(
            "a node is needed: give --rpc-url or set CERTLEDGER_RPC_URL", param_hint="--rpc-url"
        )
    return connect(Settings(rpc_url=rpc_url)), Deployment.load(manifest)


def _options(max_range: int, confirmations: int = 0, all_headers: bool = False) -> SyncOptions:
    return SyncOptions(
        confirmations=confirmations,
        initial_range=min(SyncOptions.initial_range, max_range),
        max_range=max_range,
        header_window=None if all_headers else SyncOptions.header_window,
    )


@contextmanager
def _progress(label: str) -> Iterator[Callable[[SyncStatus], None]]:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("block {task.completed:.0f}/{task.total:.0f}"),
        TextColumn("{task.fields[events]} events"),
        TimeElapsedColumn(),
    )
    # Refreshed on each status, not by rich's refresh thread: a replay forks its writer only from a
    # process with no other thread (see writer.can_fork).
    with Progress(*columns, console=console, transient=False, auto_refresh=False) as progress:
        task = progress.add_task(label, total=1, events=0)

        def update(status: SyncStatus) -> None:
            first = status.deployment_block
            progress.update(
                task,
                total=max(1, status.target_block - first + 1),
                completed=max(0, status.synced_block - first + 1),
                events=status.events,
                refresh=True,
            )

        yield update


def _summary(status: SyncStatus) -> None:
    console.print(
        f"indexed blocks {status.deployment_block}..{status.synced_block} of chain {status.chain_id}: "
        f"{status.events} events" + (f", {status.reorgs} reorgs rolled back" if status.reorgs else "")
    )
    console.print(f"digest {status.digest}")


@app.command()
def replay(
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    db: Db = DEFAULT_DB,
    until: Annotated[int | None, typer.Option(help="Stop at this block.")] = None,
    max_range: MaxRange = SyncOptions.max_range,
    confirmations: Confirmations = 0,
    all_headers: AllHeaders = False,
) -> None:
    """Rebuild the index from the deployment block (a SQLite file is replaced only when the rebuild
    is complete); print the digest."""
    with _errors():
        chain, deployment = _node(rpc_url, manifest)
        database = IndexDatabase(db)
        options = _options(max_range, confirmations, all_headers)
        with _progress("replay") as progress:
            status = audit.replay(chain, deployment, database, options, progress, until)
        _summary(status)


@app.command()
def sync(
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    db: Db = DEFAULT_DB,
    confirmations: Confirmations = 0,
    follow: Annotated[bool, typer.Option(help="Keep following the head until interrupted.")] = False,
    poll: Annotated[float, typer.Option(min=0.05, help="Seconds between polls with --follow.")] = 2.0,
    max_range: MaxRange = SyncOptions.max_range,
    all_headers: AllHeaders = False,
) -> None:
    """Bring the index up to date from where it stopped (safe to interrupt and rerun)."""
    with _errors():
        chain, deployment = _node(rpc_url, manifest)
        deployment.check(chain)
        options = _options(max_range, confirmations, all_headers)
        indexer = Indexer(chain, deployment, IndexDatabase(db), options)
        if not follow:
            _summary(indexer.sync())
            return
        console.print(f"following chain {deployment.chain_id} ({confirmations} confirmations); Ctrl-C stops")
        seen = -1

        def show(status: SyncStatus) -> None:
            nonlocal seen
            if status.synced_block != seen:
                seen = status.synced_block
                line = f"block {seen}: {status.events} events, digest {status.digest}"
                console.print(line, highlight=False)

        def trouble(exc: Exception) -> None:
            console.print(f"[yellow]sync failed, trying again in {poll:g} s:[/] {exc}", highlight=False)

        try:
            indexer.follow(poll, on_status=show, on_error=trouble)
        except KeyboardInterrupt:
            _summary(indexer.status())


@app.command()
def verify(
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    db: Db = DEFAULT_DB,
    block: Block = None,
    as_json: Json = False,
) -> None:
    """Check every invariant and every record against the contracts at one block; exit 1 on any
    difference."""
    with _errors():
        chain, deployment = _node(rpc_url, manifest)
        report = audit.verify(chain, deployment, IndexDatabase(db), block)
    findings = list(report.findings())
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "block": report.block,
                    "digest": report.digest,
                    "recomputed_digest": report.recomputed_digest,
                    "checked": report.checked,
                    "ok": report.ok,
                    "findings": findings,
                    "notes": report.notes,
                }
            )
        )
    else:
        checked = ", ".join(_counted(n, k) for k, n in report.checked.items())
        console.print(f"verified at block {report.block}: {checked}", soft_wrap=True)
        console.print(f"digest {report.digest}")
        for finding in findings:
            console.print(f"[red]FAIL[/] {finding}", highlight=False, soft_wrap=True)
        for note in report.notes:
            console.print(f"[yellow]NOTE[/] {note}", highlight=False, soft_wrap=True)
        if report.ok:
            console.print("[bold green]the index equals the chain and every invariant holds[/]")
        else:
            console.print(f"[bold red]{len(findings)} findings[/]")
    if not report.ok:
        raise typer.Exit(1)


def _amount(value: int) -> str:
    return f"{value:,}"


def _state_json(books: Books, block: int, digest: str) -> dict[str, Any]:
    def clean(record: dict[str, Any]) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in record.items()}

    return {
        "block": block,
        "digest": digest,
        "orders": [{"order_id": str(k), **clean(v)} for k, v in sorted(books.all("order").items())],
        "certificates": [
            {"certificate_id": str(k), **clean(v)} for k, v in sorted(books.all("certificate").items())
        ],
    }


@app.command()
def state(db: Db = DEFAULT_DB, block: Block = None, as_json: Json = False) -> None:
    """Print every order and certificate as of a block (from the index; run sync first)."""
    with _errors():
        database = IndexDatabase(db)
        index, books = books_at(database, block)
        at = index.synced_block if block is None else block
        digest = digest_at(database, index, at)
    if as_json:
        console.print_json(json.dumps(_state_json(books, at, digest)))
        return
    console.print(f"state at block {at} (chain {index.chain_id}, ledger {index.ledger})")
    console.print(f"digest {digest}")
    orders = Table(title=f"Orders ({len(books.all('order'))})")
    for col in ("id", "status", "issuer", "payee", "escrowed", "paid", "refunded", "root"):
        orders.add_column(col, justify="right" if col not in ("status", "issuer", "payee") else "left")
    for order_id, o in sorted(books.all("order").items()):
        orders.add_row(
            str(order_id),
            OrderStatus(o["status"]).name.lower(),
            o["issuer"],
            o["payee"],
            _amount(o["escrowed"]),
            _amount(o["paid"]),
            _amount(o["refunded"]),
            str(o["root_certificate_id"] or "-"),
        )
    console.print(orders)
    certs = Table(title=f"Certificates ({len(books.all('certificate'))})")
    for col in ("id", "order", "parent", "depth", "holder", "value", "status"):
        certs.add_column(col, justify="left" if col in ("holder", "status") else "right")
    for cert_id, c in sorted(books.all("certificate").items()):
        status = CertificateStatus(c["status"]).name.lower() + (" frozen" if c["frozen"] else "")
        certs.add_row(
            str(cert_id),
            str(c["order_id"]),
            str(c["parent_id"] or "-"),
            str(c["depth"]),
            c["holder"],
            _amount(c["value"]),
            status,
        )
    console.print(certs)


def _tree_json(node: LineageNode) -> dict[str, Any]:
    r = node.record
    return {
        "certificate_id": str(node.certificate_id),
        "holder": r["holder"],
        "value": str(r["value"]),
        "status": CertificateStatus(r["status"]).name.lower(),
        "frozen": r["frozen"],
        "depth": r["depth"],
        "children": [_tree_json(c) for c in node.children],
    }


@app.command("lineage")
def lineage_command(
    certificate_id: int,
    db: Db = DEFAULT_DB,
    block: Block = None,
    svg: Annotated[Path | None, typer.Option(help="Also draw the tree into this SVG file.")] = None,
    as_json: Json = False,
) -> None:
    """Print a certificate's tree, from the root certificate to every descendant."""
    with _errors():
        index, books = books_at(IndexDatabase(db), block)
        tree = lineage(books, certificate_id)
    at = index.synced_block if block is None else block
    if svg is not None:
        order = tree.record["order_id"]
        svg.write_text(
            lineage_svg(tree, certificate_id, f"Order {order}: certificates at block {at}"), "utf-8"
        )
    if as_json:
        console.print_json(json.dumps(_tree_json(tree)))
        return
    console.print(f"lineage of certificate {certificate_id} (order {tree.record['order_id']}) at block {at}")
    for depth, node in tree.walk():
        r = node.record
        status = CertificateStatus(r["status"]).name.lower() + (" frozen" if r["frozen"] else "")
        marker = " <" if node.certificate_id == certificate_id else ""
        console.print(
            f"{'  ' * depth}#{node.certificate_id} {r['holder']} {_amount(r['value'])} {status}{marker}",
            highlight=False,
        )
    if svg is not None:
        console.print(f"drawn to {svg}")


@app.command("export")
def export_command(
    out: Annotated[Path, typer.Option(help="Directory for the CSV files and report.json.")] = Path(
        "audit-export"
    ),
    db: Db = DEFAULT_DB,
    block: Block = None,
) -> None:
    """Write CSV files of every table and a JSON report (block range, digest, totals)."""
    with _errors():
        result = export(IndexDatabase(db), out, block)
    console.print(f"exported block {result.block} to {result.directory}: {', '.join(result.files)}")
    console.print(f"digest {result.digest}")


@app.command()
def digest(db: Db = DEFAULT_DB, block: Block = None) -> None:
    """Print the audit digest after a block."""
    with _errors():
        database = IndexDatabase(db)
        index = database.require_state()
        at = index.synced_block if block is None else block
        if at > index.synced_block:
            raise LookupError(f"the index reaches block {index.synced_block}, not {at}")
        console.print(f"{digest_at(database, index, at)} block {at}", highlight=False)


def _counted(count: int, noun: str) -> str:
    """ "1 warehouse", "3 warehouses" (a noun given in the plural stays as it is)."""
    singular = noun.removesuffix("s")
    return f"{count} {singular if count == 1 else singular + 's'}"
