"""`certledger audit ...`: rebuild, verify and export the whole history from a node and a manifest.

    replay    empty the index and rebuild it from the deployment block (prints the digest); a --db
              holding another deployment's index is replaced only with --replace
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
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import psycopg
import typer
from pydantic import ValidationError
from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import DatabaseError, DBAPIError, OperationalError

from chain_client import audit
from chain_client.chain import Chain, connect
from chain_client.deploy import Deployment
from chain_client.errors import CertledgerError
from chain_client.events import UndecodableLog
from chain_client.index.books import Books
from chain_client.index.db import (
    DEFAULT_URL,
    AnotherDeploymentsIndex,
    IndexDatabase,
    check_index_of,
    check_replaceable,
    shown_url,
)
from chain_client.index.state import BlockOutOfRange, LineageNode, books_at, lineage, merges
from chain_client.index.svg import lineage_svg
from chain_client.index.sync import AnotherDeployment, Indexer, SyncOptions, SyncStatus
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


def _block_number(value: int | None) -> int | None:
    """A --block or --until as given, refused (exit 2, as click refuses any bad option) below 0."""
    if value is not None and value < 0:
        raise typer.BadParameter(f"{value} is not a block number")
    return value


Block = Annotated[
    int | None,
    typer.Option("--block", help="Block to answer for (default: the index's last).", callback=_block_number),
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


class _Refused(Exception):
    """What was asked cannot be done as given (a setting, a file to write): said in one line."""


#: What a database raises when it cannot be used as named (no such file or directory, no server,
#: no such database, locked), as against a bug in the code: OperationalError, SQLAlchemy's or the
#: drivers' own (the bulk writes use the driver's cursor, see db._bulk).
_UNUSABLE_DATABASE = (OperationalError, sqlite3.OperationalError, psycopg.OperationalError)
#: Exactly these classes, not their subclasses (IntegrityError, ProgrammingError, ... are bugs):
#: SQLite raises them for a file that is not a database or is damaged.
_NOT_A_DATABASE = (DatabaseError, sqlite3.DatabaseError)
#: user:password@ in any URL, and a ?password= parameter (psycopg takes both)
_PASSWORD = re.compile(r"(?<=://)([^:/@\s]*):\S*@|(?<=[?&]password=)[^&;\s]+")


@contextmanager
def _errors(db: str) -> Iterator[None]:
    """Prints our errors, and a database that cannot be used (`db`, the --db given), as one line
    and exits 1 (2 for a --db holding another deployment's index, or a block it cannot answer for)."""
    try:
        yield
    except (AnotherDeploymentsIndex, AnotherDeployment, BlockOutOfRange) as exc:
        # A --db and a manifest that do not go together, or a block the index cannot answer for,
        # are the user's to fix, as a bad option is (D90, D93).
        _fail(str(exc), 2)
    except (CertledgerError, UndecodableLog, LookupError, _Refused) as exc:
        _fail(str(exc))
    except (*_UNUSABLE_DATABASE, *_NOT_A_DATABASE) as exc:
        if not isinstance(exc, _UNUSABLE_DATABASE) and type(exc) not in _NOT_A_DATABASE:
            raise
        _fail(f"cannot use the index database {_shown_db(db)}: {_reason(exc)}")


def _fail(message: str, code: int = 1) -> NoReturn:
    # Escaped: a path or a driver's message may hold [brackets] that rich would take for markup.
    console.print(f"[red]error:[/] {escape(_redacted(message))}", soft_wrap=True)
    raise typer.Exit(code)


def _redacted(text: str) -> str:
    """`text` with the password of any URL in it masked (messages made elsewhere may hold one)."""
    return _PASSWORD.sub(lambda m: f"{m[1]}:***@" if m[1] is not None else "***", text)


def _shown_db(db: str) -> str:
    """The --db as given (a file's path), or its URL with the password masked."""
    return shown_url(db) if "://" in db else db


def _reason(exc: Exception) -> str:
    """The driver's own words on one line, without SQLAlchemy's statement and background link."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return " ".join(str(cause).split())


def _node(rpc_url: str | None, manifest: Path) -> tuple[Chain, Deployment]:
    if rpc_url is None:
        raise typer.BadParameter(
            "a node is needed: give --rpc-url or set CERTLEDGER_RPC_URL", param_hint="--rpc-url"
        )
    return connect(_settings(rpc_url)), Deployment.load(manifest)


def _settings(rpc_url: str) -> Settings:
    """The settings, or _Refused naming each refused value (pydantic's own report spans a screen)."""
    try:
        return Settings(rpc_url=rpc_url)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_setting_name(e['loc'])} {_userinfo_masked(e['input'])}: "
            f"{str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise _Refused(problems) from None


def _userinfo_masked(value: Any) -> Any:
    """A value echoed back with any user:key@ before its host masked (a URL without its scheme
    escapes `_redacted`, which looks for ://)."""
    return re.sub(r"^[^@/\s]*@", "***@", value) if isinstance(value, str) else value


def _setting_name(loc: tuple[int | str, ...]) -> str:
    # Only the node's URL comes from an option; the other settings come from the environment.
    name = str(loc[0]) if loc else "settings"
    return "--rpc-url" if name == "rpc_url" else f"CERTLEDGER_{name.upper()}"


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
        TextColumn("{task.fields[blocks]}"),
        TextColumn("{task.fields[events]} events"),
        TimeElapsedColumn(),
    )
    # Refreshed on each status, not by rich's refresh thread: a replay forks its writer only from a
    # process with no other thread (see writer.can_fork).
    with Progress(*columns, console=console, transient=False, auto_refresh=False) as progress:
        task = progress.add_task(label, total=1, events=0, blocks="")

        def update(status: SyncStatus) -> None:
            first = status.deployment_block
            progress.update(
                task,
                total=max(1, status.target_block - first + 1),
                completed=max(0, status.synced_block - first + 1),
                events=status.events,
                blocks=_blocks(status),
                refresh=True,
            )

        yield update


def _blocks(status: SyncStatus) -> str:
    """Where a sync is, in block numbers ("block 230 of 162..257"); the bar shows the fraction, and
    a count ("69/96") would match no block an auditor can look up."""
    span = f"{status.deployment_block}..{status.target_block}"
    if status.synced_block < status.deployment_block:
        return f"blocks {span}"
    return f"block {status.synced_block} of {span}"


def _summary(status: SyncStatus) -> None:
    console.print(
        f"indexed blocks {status.deployment_block}..{status.synced_block} of chain {status.chain_id}: "
        f"{status.events} events" + (f", {status.reorgs} reorgs rolled back" if status.reorgs else "")
    )
    console.print(
        _digest_line(status.digest, status.deployment_block, status.synced_block),
        highlight=False,
        soft_wrap=True,
    )


@dataclass
class FollowLines:
    """What `sync --follow` prints after each round: the block reached when it moved, and every
    reorg the round rolled back. A reorg is said in so many words: the follower may come back to
    the very block it showed before, under another hash and digest, and a line for a moved block
    alone would leave an auditor watching with no sign the history it saw was replaced."""

    shown_block: int = -1
    reorgs: int = 0

    def after(self, status: SyncStatus, rolled_back_to: int | None) -> list[str]:
        out: list[str] = []
        if status.reorgs > self.reorgs:
            count = status.reorgs - self.reorgs
            self.reorgs = status.reorgs
            self.shown_block = -1  # the block line follows, even at the same number
            what = "a reorg" if count == 1 else f"{count} reorgs"
            out.append(
                f"[yellow]{what}: the node replaced blocks the index held; it rolled back to block "
                f"{rolled_back_to} (the newest it recorded that the node still has) and synced "
                f"again[/] ({status.reorgs} since following began)"
            )
        if status.synced_block != self.shown_block:
            self.shown_block = status.synced_block
            digest = _digest_line(status.digest, status.deployment_block, status.synced_block)
            out.append(f"block {status.synced_block}: {status.events} events, {digest}")
        return out


def _digest_line(digest: str, first: int, last: int) -> str:
    """A digest with the blocks it covers: it starts from the manifest's deployment block, so the
    same history replayed from another start gives another digest (D89)."""
    return f"digest {digest} (blocks {first}..{last})"


@app.command()
def replay(
    rpc_url: RpcUrl = None,
    manifest: Manifest = Path("deployment.json"),
    db: Db = DEFAULT_DB,
    until: Annotated[int | None, typer.Option(help="Stop at this block.", callback=_block_number)] = None,
    max_range: MaxRange = SyncOptions.max_range,
    confirmations: Confirmations = 0,
    all_headers: AllHeaders = False,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Replace the index of another deployment (chain, ledger or oracle) that --db holds.",
        ),
    ] = False,
) -> None:
    """Rebuild the index from the deployment block (a SQLite file is replaced only when the rebuild
    is complete); print the digest. Refuses a --db holding another deployment's index unless
    --replace."""
    with _errors(db):
        chain, deployment = _node(rpc_url, manifest)
        if until is not None and until < deployment.deployment_block:
            raise typer.BadParameter(
                f"block {until} is before the deployment (block {deployment.deployment_block})",
                param_hint="--until",
            )
        database = IndexDatabase(db)
        # Before the progress bar starts, so a refusal is the one line printed.
        check_replaceable(database)
        if not replace:
            check_index_of(database, deployment, "replay")
        options = _options(max_range, confirmations, all_headers)
        with _progress("replay") as progress:
            status = audit.replay(chain, deployment, database, options, progress, until, replace=replace)
        _summary(status)
        if until is not None and status.synced_block < until:
            behind = f" less {confirmations} confirmations" if confirmations else ""
            console.print(
                f"[yellow]note:[/] block {until} not reached: the index stops at block "
                f"{status.synced_block}, the node's head{behind}",
                highlight=False,
            )


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
    with _errors(db):
        chain, deployment = _node(rpc_url, manifest)
        deployment.check(chain)
        database = IndexDatabase(db)
        # The indexer refuses such a database as it opens it; asked here first, so the refusal is
        # the one line printed, not after the follower's own first line.
        check_index_of(database, deployment, "sync")
        options = _options(max_range, confirmations, all_headers)
        indexer = Indexer(chain, deployment, database, options)
        if not follow:
            _summary(indexer.sync())
            return
        console.print(f"following chain {deployment.chain_id} ({confirmations} confirmations); Ctrl-C stops")
        lines = FollowLines()

        def show(status: SyncStatus) -> None:
            for line in lines.after(status, indexer.rolled_back_to):
                console.print(line, highlight=False)

        def trouble(exc: Exception) -> None:
            reason = escape(_redacted(str(exc)))
            console.print(
                f"[yellow]sync failed, trying again (later each time):[/] {reason}", highlight=False
            )

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
    with _errors(db):
        chain, deployment = _node(rpc_url, manifest)
        report = audit.verify(chain, deployment, IndexDatabase(db, must_exist=True), block)
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
                    "details": report.details(),
                    "notes": report.notes,
                }
            )
        )
    else:
        checked = ", ".join(_counted(n, k) for k, n in report.checked.items())
        console.print(f"verified at block {report.block}: {checked}", soft_wrap=True)
        first = deployment.deployment_block
        console.print(_digest_line(report.digest, first, report.block), highlight=False, soft_wrap=True)
        if report.recomputed_digest != report.digest:
            # Not a finding of its own (the digest finding below says where): the hash to compare.
            console.print(
                f"[red]the stored events give digest {report.recomputed_digest}[/]", highlight=False
            )
        for finding in findings:
            console.print(f"[red]FAIL[/] {finding}", highlight=False, soft_wrap=True)
        for note in report.notes:
            console.print(f"[yellow]NOTE[/] {note}", highlight=False, soft_wrap=True)
        if report.ok:
            console.print("[bold green]the index equals the chain and every invariant holds[/]")
        else:
            console.print(f"[bold red]{_counted(len(findings), 'findings')}[/]")
    if not report.ok:
        raise typer.Exit(1)


def _amount(value: int) -> str:
    return f"{value:,}"


def _state_json(books: Books, first: int, block: int, digest: str) -> dict[str, Any]:
    def clean(record: dict[str, Any]) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in record.items()}

    return {
        "block": block,
        "digest": digest,
        "blocks": {"from": first, "to": block},
        "orders": [{"order_id": str(k), **clean(v)} for k, v in sorted(books.all("order").items())],
        "certificates": [
            {"certificate_id": str(k), **clean(v)} for k, v in sorted(books.all("certificate").items())
        ],
    }


@app.command()
def state(db: Db = DEFAULT_DB, block: Block = None, as_json: Json = False) -> None:
    """Print every order and certificate as of a block (from the index; run sync first)."""
    with _errors(db):
        database = IndexDatabase(db, must_exist=True)
        index, books, digest = audit.checked_books_at(database, block)
        at = index.synced_block if block is None else block
    if as_json:
        console.print_json(json.dumps(_state_json(books, index.deployment_block, at, digest)))
        return
    console.print(f"state at block {at} (chain {index.chain_id}, ledger {index.ledger})")
    console.print(_digest_line(digest, index.deployment_block, at), highlight=False, soft_wrap=True)
    orders = Table(title=f"Orders ({len(books.all('order'))})")
    for col in ("id", "status", "issuer", "payee", "escrowed", "paid", "refunded", "root"):
        _column(orders, col, left=col in ("status", "issuer", "payee"), address=col in ("issuer", "payee"))
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
        _column(certs, col, left=col in ("holder", "status"), address=col == "holder")
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


def _column(table: Table, name: str, *, left: bool, address: bool) -> None:
    """A column that never cuts a value short. Rich narrows a table to the terminal by cutting
    cells ("4,266,6…"); an audit printout must show every digit. Addresses wrap onto more lines
    (they are long, and a piece of one is plainly a piece); other cells stay on one line, as a
    number split over two lines reads as two numbers, and rich narrows them only when the
    addresses cannot give way enough, then folding them too."""
    justify: JustifyMethod = "left" if left else "right"
    table.add_column(name, justify=justify, overflow="fold", no_wrap=not address)


def _tree_json(node: LineageNode) -> dict[str, Any]:
    r = node.record
    return {
        "certificate_id": str(node.certificate_id),
        "holder": r["holder"],
        "value": str(r["value"]),
        "status": CertificateStatus(r["status"]).name.lower(),
        "frozen": r["frozen"],
        "depth": r["depth"],
        "merged_into": [
            {"certificate_id": str(m.target), "value": str(m.value), "block": m.block, "tx": m.tx}
            for m in node.merged_into
        ],
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
    """Print a certificate's tree, from the root certificate to every descendant, with each merge of
    value into another certificate of the order under the certificate that gave it."""
    with _errors(db):
        database = IndexDatabase(db, must_exist=True)
        # One snapshot: the books and the merges of one state of an index a sync may be writing.
        with database.snapshot():
            index, books = books_at(database, block)
            if certificate_id not in books.all("certificate"):
                # No such id is the user's to fix, as `order show` and `cert lineage` say (exit 2).
                where = "in the index" if block is None else f"at block {block}"
                _fail(f"no certificate {certificate_id} {where}", 2)
            at = index.synced_block if block is None else block
            tree = lineage(books, certificate_id, block, merges(database, index, at))
        if svg is not None:
            title = f"Order {tree.record['order_id']}: certificates at block {at}"
            _write(svg, "the SVG", lineage_svg(tree, certificate_id, title))
    if as_json:
        console.print_json(json.dumps(_tree_json(tree)))
        return
    console.print(f"lineage of certificate {certificate_id} (order {tree.record['order_id']}) at block {at}")
    for depth, node in tree.walk():
        r = node.record
        status = CertificateStatus(r["status"]).name.lower() + (" frozen" if r["frozen"] else "")
        marker = " <" if node.certificate_id == certificate_id else ""
        # One line per certificate whatever the terminal's width (rich would wrap it into the
        # next level's indentation), and the holder and value whole.
        console.print(
            f"{'  ' * depth}#{node.certificate_id} {r['holder']} {_amount(r['value'])} {status}{marker}",
            highlight=False,
            soft_wrap=True,
        )
        for m in node.merged_into:
            console.print(
                f"{'  ' * (depth + 1)}merged {_amount(m.value)} into #{m.target} at block {m.block}",
                highlight=False,
                soft_wrap=True,
            )
    if svg is not None:
        console.print(f"drawn to {svg}")


def _write(path: Path, what: str, text: str) -> None:
    try:
        path.write_text(text, "utf-8")
    except OSError as exc:
        raise _Refused(f"cannot write {what} to {path}: {exc.strerror or exc}") from None


@app.command("export")
def export_command(
    out: Annotated[Path, typer.Option(help="Directory for the CSV files and report.json.")] = Path(
        "audit-export"
    ),
    db: Db = DEFAULT_DB,
    block: Block = None,
) -> None:
    """Write CSV files of every table and a JSON report (block range, digest, totals)."""
    with _errors(db):
        database = IndexDatabase(db, must_exist=True)
        if out.exists() and not out.is_dir():
            raise _Refused(f"--out {out} is a file: name a directory for the CSV files and report.json")
        try:
            result = audit.export(database, out, block)
        except OSError as exc:
            # The index's own troubles are not OSErrors (see _errors): this is the export's files.
            where = exc.filename or out
            raise _Refused(f"cannot write the export to {where}: {exc.strerror or exc}") from None
    console.print(f"exported block {result.block} to {result.directory}: {', '.join(result.files)}")
    console.print(
        _digest_line(result.digest, result.first_block, result.block), highlight=False, soft_wrap=True
    )


@app.command()
def digest(db: Db = DEFAULT_DB, block: Block = None) -> None:
    """Print the audit digest after a block."""
    with _errors(db):
        index, _, found = audit.checked_books_at(IndexDatabase(db, must_exist=True), block)
        at = index.synced_block if block is None else block
        console.print(f"{found} (blocks {index.deployment_block}..{at})", highlight=False, soft_wrap=True)


def _counted(count: int, noun: str) -> str:
    """ "1 warehouse", "3 warehouses" (a noun given in the plural stays as it is)."""
    singular = noun.removesuffix("s")
    return f"{count} {singular if count == 1 else singular + 's'}"
