"""Export of the index at one block: CSV files of every table and a JSON report (block range,
digest, totals per order, per holder and per kind of payment) for another tool to load.

Amounts are written as decimal strings everywhere (CSV is text anyway; in JSON a number above
2**53 would lose digits in many readers).

A field that holds a contract enum's code (an order's or a certificate's `status`, a participant's
`roles`, and such a field's `old` and `new` in changes.csv) is followed in its CSV by a column with
the code's name: `status_name` (lowercase, as report.json and `audit state` spell statuses),
`role_names` (the contract's role names, "SUPPLIER|FACTOR"), `old_name` and `new_name`. The codes
stay, for tools that compare the files with the index or the chain.

Payments are what the ledger's events record, by kind: a settlement or a refund is recorded when it
is due, and if the token refused to push it, also as a credit (then a withdrawal when taken). The
kinds' totals therefore overlap; the per-holder totals separate what was owed from what moved.
"""

from __future__ import annotations

import csv
import enum
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chain_client.index.books import ENTITIES, Books, Key
from chain_client.index.db import IndexDatabase, table_of
from chain_client.index.models import BlockRecord, ChangeRecord, EventRecord, IndexState, PaymentRecord
from chain_client.models import CertificateStatus, OrderStatus, Role

#: v2: per holder `settled` (was `settled_received`, which counted credited settlements as received),
#: `refunded`, `credited`, `withdrawn`, `credit_outstanding` and `received_from_ledger`.
REPORT_SCHEMA = "certledger-audit-report/v2"


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    block: int
    digest: str
    files: tuple[str, ...]
    #: the deployment block, where the digest chain starts (the digest covers first_block..block)
    first_block: int = 0


def digest_at(db: IndexDatabase, state: IndexState, block: int) -> str:
    """The digest chain's value after `block` (blocks without events leave it unchanged)."""
    for record in db.blocks(state.chain_id, descending=True):
        if record.number <= block:
            return record.digest
    raise LookupError(f"block {block} is before the index starts")


#: The index's books and digest as of a block (None: its last): (its state, the books, the digest)
Fold = Callable[[IndexDatabase, int | None], tuple[IndexState, Books, str]]


def export(db: IndexDatabase, directory: Path, block: int | None, fold: Fold) -> ExportResult:
    """Writes the CSV files and report.json of the index as of `block` (None: its last), all read
    in one snapshot of the index (a sync committing meanwhile is not half seen). `fold` gives the
    books and the digest: `audit.export` passes `audit.checked_books_at`, which refuses an index
    whose stored digests its stored events do not give."""
    with db.snapshot():
        return _export(db, directory, block, fold)


def _export(db: IndexDatabase, directory: Path, block: int | None, fold: Fold) -> ExportResult:
    state, books, digest = fold(db, block)
    at = state.synced_block if block is None else block
    directory.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    for entity in ("order", "certificate", "participant", "offer", "credit", "warehouse", "attestation"):
        name = f"{entity}s.csv"
        _write_records(directory / name, entity, books)
        files.append(name)
    for model, name in ((PaymentRecord, "payments.csv"), (EventRecord, "events.csv")):
        _write_rows(directory / name, _rows_up_to(db, model, state.chain_id, at))
        files.append(name)
    _write_changes(directory / "changes.csv", _rows_up_to(db, ChangeRecord, state.chain_id, at))
    files.append("changes.csv")
    payments = _rows_up_to(db, PaymentRecord, state.chain_id, at)
    report = build_report(state, books, at, digest, payments, files)
    (directory / "report.json").write_text(
        json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return ExportResult(directory, at, digest, (*files, "report.json"), state.deployment_block)


def _rows_up_to(db: IndexDatabase, model: Any, chain_id: int, block: int) -> list[dict[str, Any]]:
    """The table's rows up to `block`, in chain order (events are keyed by transaction hash: a tool
    folding events.csv in file order must meet them as the chain made them)."""
    column = "number" if model is BlockRecord else "block_number"
    rows = [r for r in db.rows(model, chain_id) if r[column] <= block]
    if model is EventRecord:
        rows.sort(key=lambda r: (r["block_number"], r["tx_index"], r["log_index"]))
    return rows


def _status_name(kind: type[enum.IntEnum]) -> Callable[[int], str]:
    def name(code: int) -> str:
        try:
            return kind(code).name.lower()
        except ValueError:  # no such member: the code column says what was stored
            return "unknown"

    return name


def _role_names(code: int) -> str:
    """The role bits' names joined by "|" ("" for none; "unknown" for a bit no role has)."""
    names = [r.name for r in Role if r.name is not None and r & code]
    if code & ~sum(Role):
        names.append("unknown")
    return "|".join(names)


#: Per entity, the fields holding an enum's code: (the column of its name, the name of a code).
_NAMED: dict[str, dict[str, tuple[str, Callable[[int], str]]]] = {
    "order": {"status": ("status_name", _status_name(OrderStatus))},
    "certificate": {"status": ("status_name", _status_name(CertificateStatus))},
    "participant": {"roles": ("role_names", _role_names)},
}


def _write_records(path: Path, entity: str, books: Books) -> None:
    spec = ENTITIES[entity]
    named = _NAMED.get(entity, {})
    header: list[str] = [spec.key]
    for name in spec.fields:
        header += [name, named[name][0]] if name in named else [name]
    header += ["last_block", "last_tx", "last_log_index", "last_event"]
    rows = []
    for key, record in sorted(books.all(entity).items(), key=_key_order):
        touch = books.touch_of(entity, key)
        row = [key]
        for name in spec.fields:
            row.append(_cell(record[name]))
            if name in named:
                row.append(named[name][1](int(record[name])))
        rows.append([*row, *(touch if touch else ("", "", "", ""))])
    _write_csv(path, header, rows)


def _write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    header = list(rows[0]) if rows else []
    _write_csv(path, header, [[_cell(r[h]) for h in header] for r in rows])


def _write_changes(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """changes.csv: the stored change rows, with `old_name` after `old` and `new_name` after `new`,
    filled where the changed field holds an enum's code (a record's creation, whose `new` is the
    whole record as JSON, is left to the record files)."""
    columns = [c.name for c in table_of(ChangeRecord).columns]
    header: list[str] = []
    for column in columns:
        header += [column, f"{column}_name"] if column in ("old", "new") else [column]
    out = []
    for r in rows:
        named = _NAMED.get(r["entity"], {}).get(r["field"])
        row = []
        for column in columns:
            row.append(_cell(r[column]))
            if column in ("old", "new"):
                text = r[column]
                row.append(named[1](int(text)) if named is not None and text not in (None, "") else "")
        out.append(row)
    _write_csv(path, header, out)


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return json.dumps(list(value))
    if value is None:
        return ""
    return value


def _key_order(item: tuple[Key, Any]) -> tuple[int, int | str]:
    key = item[0]
    return (0, key) if isinstance(key, int) else (1, key)


def build_report(
    state: IndexState,
    books: Books,
    block: int,
    digest: str,
    payments: Sequence[dict[str, Any]],
    files: Sequence[str],
) -> dict[str, Any]:
    orders = _order_totals(books)
    return {
        "schema": REPORT_SCHEMA,
        "chain_id": state.chain_id,
        "ledger": state.ledger,
        "oracle": state.oracle,
        "blocks": {"from": state.deployment_block, "to": block},
        "digest": digest,
        "counts": {entity: len(books.all(entity)) for entity in ENTITIES if entity != "system"},
        "totals": {
            "escrowed": str(sum(int(o["escrowed"]) for o in orders.values())),
            "paid": str(sum(int(o["paid"]) for o in orders.values())),
            "refunded": str(sum(int(o["refunded"]) for o in orders.values())),
            "live": str(sum(int(o["live"]) for o in orders.values())),
            "credits_outstanding": str(sum(c["amount"] for c in books.all("credit").values())),
        },
        "orders": orders,
        "holders": _holder_totals(books, payments),
        "payments": _payment_totals(payments),
        "files": list(files),
    }


def _order_totals(books: Books) -> dict[str, dict[str, Any]]:
    totals: dict[str, dict[str, Any]] = {}
    live: dict[int, int] = {}
    certificates: dict[int, int] = {}
    for cert in books.all("certificate").values():
        order_id = int(cert["order_id"])
        certificates[order_id] = certificates.get(order_id, 0) + 1
        if cert["status"] == CertificateStatus.LIVE:
            live[order_id] = live.get(order_id, 0) + int(cert["value"])
    for key, o in sorted(books.all("order").items(), key=_key_order):
        oid = int(key)
        totals[str(oid)] = {
            "status": OrderStatus(o["status"]).name.lower(),
            "issuer": o["issuer"],
            "payee": o["payee"],
            "escrowed": str(o["escrowed"]),
            "paid": str(o["paid"]),
            "refunded": str(o["refunded"]),
            "live": str(live.get(oid, 0)),
            "certificates": certificates.get(oid, 0),
            "maturity": o["maturity"],
        }
    return totals


#: Per account: what the ledger owed it (settlements of its certificates, refunds of its orders),
#: the part the token refused to push (credited, for `withdraw`), what it withdrew, and so what the
#: ledger's token actually moved to it; discount prices move between the parties directly.
_ACCOUNT_FIELDS = (
    "live_certificates",
    "live_value",
    "settled",
    "refunded",
    "credited",
    "withdrawn",
    "credit_outstanding",
    "received_from_ledger",
    "discount_paid",
    "discount_received",
)


def _holder_totals(books: Books, payments: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per account. A settlement or refund the token refused counts in `settled` or `refunded`
    (it is owed) and in `credited` (it was not moved): `received_from_ledger` is settled + refunded
    - credited + withdrawn, the ledger's token transfers to the account."""
    holders: dict[str, dict[str, int]] = {}

    def entry(address: str) -> dict[str, int]:
        return holders.setdefault(address, dict.fromkeys(_ACCOUNT_FIELDS, 0))

    for cert in books.all("certificate").values():
        if cert["status"] == CertificateStatus.LIVE:
            e = entry(cert["holder"])
            e["live_certificates"] += 1
            e["live_value"] += int(cert["value"])
    owed = {"settlement": "settled", "refund": "refunded", "credit": "credited", "withdrawal": "withdrawn"}
    for p in payments:
        if p["kind"] in owed:
            entry(p["payee"])[owed[p["kind"]]] += int(p["amount"])
        elif p["kind"] == "discount":
            entry(p["payer"])["discount_paid"] += int(p["amount"])
            entry(p["payee"])["discount_received"] += int(p["amount"])
    for e in holders.values():
        e["credit_outstanding"] = e["credited"] - e["withdrawn"]
        e["received_from_ledger"] = e["settled"] + e["refunded"] - e["credited"] + e["withdrawn"]
    return {
        address: {k: v if k == "live_certificates" else str(v) for k, v in values.items()}
        for address, values in sorted(holders.items())
    }


def _payment_totals(payments: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    totals: dict[str, dict[str, int]] = {}
    for p in payments:
        t = totals.setdefault(p["kind"], {"count": 0, "amount": 0})
        t["count"] += 1
        t["amount"] += int(p["amount"])
    return {kind: {"count": t["count"], "amount": str(t["amount"])} for kind, t in sorted(totals.items())}
