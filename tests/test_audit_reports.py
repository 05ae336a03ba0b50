"""What `certledger audit export` and `audit lineage` show an auditor of one small, fixed history on
anvil: orders confirmed, open and cancelled, certificates split, merged and settled, a participant
with two roles. The export names every status and role beside its code; the lineage shows where a
merged-away certificate's value went, in text, JSON and SVG.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from eth_typing import ChecksumAddress
from index_support import anvil_node, connect_node
from typer.testing import CliRunner, Result

from certledger_main import build_app
from chain_client import audit
from chain_client.index.db import IndexDatabase
from chain_client.index.workload import DAY, Workload
from chain_client.models import Role
from chain_client.receipts import label_hash

pytestmark = pytest.mark.anvil

SVG = "{http://www.w3.org/2000/svg}"


@dataclass
class History:
    db: str
    confirmed: int
    open: int
    cancelled: int
    root: int
    #: root split to two holders: a, b; a split again: c
    a: int
    b: int
    c: int
    #: (source, target, value, block) of each merge, in chain order
    merges: list[tuple[int, int, int, int]]
    #: the block before the first merge
    before_merges: int
    two_roles: str


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    with anvil_node() as url:
        chain = connect_node(url)
        work = Workload.deploy(chain, seed=3)
        ledger = work.system.ledger
        s0, s1, s2 = work.holders[:3]

        def order(n: int, payee: ChecksumAddress) -> int:
            now = chain.now()
            return ledger.open_order(
                work.issuers[0],
                payee=payee,
                amount=1_000_000,
                maturity=now + 3 * DAY,
                invoice_hash=label_hash(f"reports-invoice-{n}"),
                warehouse=work.warehouse,
                goods_hash=work.goods,
                expected_quantity=100,
                deadline=now + DAY,
            )[0]

        confirmed, cancelled = order(1, s0.address), order(2, s0.address)
        root = work.confirm_order(confirmed, 100)
        a = ledger.split_to(s0, root, s1.address, 300_000)[0]
        b = ledger.split_to(s0, root, s2.address, 200_000)[0]
        c, split = ledger.split_to(s1, a, s0.address, 100_000)
        merges = []
        for sender, source, target, value in (
            (s1, a, b, 150_000),
            (s2, b, root, 50_000),
            (s0, c, root, 100_000),
        ):
            merges.append((source, target, value, ledger.merge(sender, source, target, value).block_number))
        factor = work.factors[0].address
        ledger.set_roles(work.admin, factor, Role.SUPPLIER | Role.FACTOR)
        chain.advance_time(4 * DAY)
        ledger.settle(work.relayer, [root])
        ledger.cancel_order(work.issuers[0], cancelled)
        still_open = order(3, s1.address)
        db = tmp_path_factory.mktemp("reports") / "index.sqlite"
        audit.replay(chain, work.system.deployment, IndexDatabase(db))
        yield History(
            str(db),
            confirmed,
            still_open,
            cancelled,
            root,
            a,
            b,
            c,
            merges,
            split.block_number,
            factor,
        )


def _audit(*args: str) -> Result:
    return CliRunner().invoke(build_app(), ["audit", *args])


def _csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


# ---------------------------------------------------------------------- export


def test_the_export_names_each_status_and_role_beside_its_code(history: History, tmp_path: Path) -> None:
    result = _audit("export", "--db", history.db, "--out", str(tmp_path))
    assert result.exit_code == 0, result.output

    header, orders = _csv(tmp_path / "orders.csv")
    # The documented order: key, fields, each code's name right after it, then the last event.
    assert header[:7] == ["order_id", "issuer", "payee", "maturity", "deadline", "status", "status_name"]
    assert header[-4:] == ["last_block", "last_tx", "last_log_index", "last_event"]
    by_id = {int(r["order_id"]): (r["status"], r["status_name"]) for r in orders}
    assert by_id == {
        history.confirmed: ("2", "confirmed"),
        history.cancelled: ("3", "cancelled"),
        history.open: ("1", "open"),
    }
    # As report.json spells them.
    report = json.loads((tmp_path / "report.json").read_text("utf-8"))
    assert {int(k): v["status"] for k, v in report["orders"].items()} == {k: v[1] for k, v in by_id.items()}

    header, certificates = _csv(tmp_path / "certificates.csv")
    assert header[header.index("status") + 1] == "status_name"
    statuses = {int(r["certificate_id"]): (r["status"], r["status_name"]) for r in certificates}
    assert statuses == {
        history.root: ("2", "settled"),
        **{cid: ("1", "live") for cid in (history.a, history.b, history.c)},
    }

    header, participants = _csv(tmp_path / "participants.csv")
    assert header[header.index("roles") + 1] == "role_names"
    roles = {r["address"]: (r["roles"], r["role_names"]) for r in participants}
    assert roles[history.two_roles] == (str(int(Role.SUPPLIER | Role.FACTOR)), "SUPPLIER|FACTOR")
    assert {name for _, name in roles.values()} == {
        "ADMIN",
        "ISSUER",
        "SUPPLIER",
        "FACTOR",
        "REGULATOR",
        "SUPPLIER|FACTOR",
    }

    header, changes = _csv(tmp_path / "changes.csv")
    assert header[header.index("old") + 1] == "old_name" and header[header.index("new") + 1] == "new_name"
    named = {
        (r["entity"], r["key"], r["field"], r["old_name"], r["new_name"])
        for r in changes
        if r["old_name"] or r["new_name"]
    }
    assert ("order", str(history.cancelled), "status", "open", "cancelled") in named
    assert ("certificate", str(history.root), "status", "live", "settled") in named
    assert ("participant", history.two_roles, "roles", "FACTOR", "SUPPLIER|FACTOR") in named
    # Only coded fields are named.
    assert {field for _, _, field, _, _ in named} == {"status", "roles"}


# ---------------------------------------------------------------------- lineage


def test_the_lineage_text_shows_each_merge_under_the_certificate_that_gave_it(history: History) -> None:
    result = _audit("lineage", str(history.b), "--db", history.db)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for source, target, value, block in history.merges:
        at = next(i for i, line in enumerate(lines) if re.match(rf"\s*#{source} ", line))
        depth = len(lines[at]) - len(lines[at].lstrip())
        said = f"{' ' * (depth + 2)}merged {value:,} into #{target} at block {block}"
        assert said in lines[at + 1 : at + 3], (said, lines[at : at + 3])
    assert sum("merged" in line for line in lines) == len(history.merges)
    # The tree as of a block before the merges shows none.
    early = _audit("lineage", str(history.b), "--db", history.db, "--block", str(history.before_merges))
    assert early.exit_code == 0, early.output
    assert "merged" not in early.output and f"#{history.c} " in early.output


def test_the_lineage_json_and_svg_show_the_merges(history: History, tmp_path: Path) -> None:
    svg = tmp_path / "lineage.svg"
    result = _audit("lineage", str(history.a), "--db", history.db, "--json", "--svg", str(svg))
    assert result.exit_code == 0, result.output
    tree = json.loads(result.output)
    given: dict[int, list[tuple[int, int, int]]] = {}

    def walk(node: dict[str, Any]) -> None:
        if node["merged_into"]:
            given[int(node["certificate_id"])] = [
                (int(m["certificate_id"]), int(m["value"]), m["block"]) for m in node["merged_into"]
            ]
        for child in node["children"]:
            walk(child)

    walk(tree)
    assert given == {source: [(target, value, block)] for source, target, value, block in history.merges}

    root = ElementTree.parse(svg).getroot()
    boxes = {
        g.findtext(f"{SVG}title", "").split()[1]: " ".join(t.text or "" for t in g.iter(f"{SVG}text"))
        for g in root.iter(f"{SVG}g")
    }
    assert set(boxes) == {str(c) for c in (history.root, history.a, history.b, history.c)}
    arrows = [p for p in root.iter(f"{SVG}path") if p.get("class") == "merge"]
    assert all(a.get("stroke-dasharray") and a.get("marker-end") == "url(#merged)" for a in arrows)
    # Each arrow's title names the merge (and its transaction, after the block).
    titles = {a.findtext(f"{SVG}title", "").split(" (tx 0x")[0] for a in arrows}
    assert titles == {
        f"certificate {source} merged {value:,} into certificate {target} at block {block}"
        for source, target, value, block in history.merges
    }
    for source, target, value, _ in history.merges:
        assert f"merged {value:,} into #{target}" in boxes[str(source)]
