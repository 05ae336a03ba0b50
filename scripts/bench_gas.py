"""Gas per ledger operation (receipt gasUsed), written to bench/gas.json with a short table.

    python scripts/bench_gas.py [--rpc-url URL] [--out bench/gas.json]

Runs on the embedded chain unless a node URL is given. Each operation is measured in the state a
user meets it in: "to a fresh holder" means a registered participant that has never held a
certificate (its first certificate costs a new storage slot on an ERC-721 balance elsewhere).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eth_account.signers.local import LocalAccount
from rich.console import Console
from rich.table import Table

from chain_client.chain import Chain, connect
from chain_client.models import Role
from chain_client.receipts import DeviceEnrolment, ReadingKind, delivery_ranges, label_hash
from chain_client.settings import Settings
from chain_client.system import System

CARTON_GRAMS = 10_000

DAY = 86_400
BUILD_INFO = Path(__file__).resolve().parent.parent / "chain_client" / "artifacts" / "build-info.json"
#: Upper bounds from the issue; the reference figures are in README.md.
TARGETS = {"transfer_whole": 65_000, "split_to_new_holder": 125_000, "merge": 50_000}


# Calldata and signatures contain timestamps; starting every run at the same chain time (ahead of
# the wall clock, so blocks then tick by one second) keeps the figures identical run after run.
START_TIME = 4_000_000_000


class Bench:
    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        if chain.now() < START_TIME:
            chain.advance_time(START_TIME - chain.now())
        self.admin = chain.new_account(seed="bench-admin")
        self.accounts = 0
        self.system = System.deploy(chain, self.admin, admin_entity_id=label_hash("bench-operator"))
        self.issuer = self._participant(Role.ISSUER, limit=10**15)
        self.supplier = self._participant(Role.SUPPLIER)
        self.factor = self._participant(Role.FACTOR)
        self.devices = [chain.new_account(0, seed=f"bench-device-{i}") for i in range(5)]
        self.invoices = 0
        self.sequence = 0
        self.system.token.mint(self.admin, self.issuer.address, 10**14)
        self.system.token.mint(self.admin, self.factor.address, 10**14)
        self.system.token.approve(self.issuer, self.system.ledger.address, 2**256 - 1)
        self.system.token.approve(self.factor, self.system.ledger.address, 2**256 - 1)

    def _participant(self, roles: Role, limit: int = 0) -> LocalAccount:
        self.accounts += 1
        account = self.chain.new_account(seed=f"bench-participant-{self.accounts}")
        self.system.ledger.register_participant(
            self.admin, account.address, label_hash(account.address), roles, limit
        )
        return account

    def warehouse(self, threshold: int) -> bytes:
        wid = label_hash(f"wh-{threshold}")
        if not self.system.oracle.warehouse(wid).active:
            oracle = self.system.oracle
            oracle.register_warehouse(
                self.admin,
                wid,
                self._enrolment(threshold),
                threshold,
                3_600,
                delivery_ranges(10**6, CARTON_GRAMS),
            )
            if not oracle.is_relayer(self.admin.address):
                oracle.set_relayer(self.admin, self.admin.address, True)
        return wid

    def _kinds(self, count: int) -> list[tuple[LocalAccount, int]]:
        """The first device weighs, the others count cartons."""
        return [
            (d, ReadingKind.NET_WEIGHT_GRAMS if i == 0 else ReadingKind.CARTON_COUNT)
            for i, d in enumerate(self.devices[:count])
        ]

    def _enrolment(self, threshold: int) -> list[DeviceEnrolment]:
        return [DeviceEnrolment(d.address, k) for d, k in self._kinds(max(threshold + 1, 3))]

    def open_order(
        self, amount: int = 1_000_000_00, threshold: int = 2, maturity_days: int = 90
    ) -> tuple[int, int]:
        self.invoices += 1
        now = self.chain.now()
        order_id, result = self.system.ledger.open_order(
            self.issuer,
            payee=self.supplier.address,
            amount=amount,
            maturity=now + maturity_days * DAY,
            invoice_hash=label_hash(f"invoice-{self.invoices}"),
            warehouse=self.warehouse(threshold),
            goods_hash=label_hash("goods"),
            expected_quantity=1_000,
            deadline=now + 7 * DAY,
        )
        return order_id, result.gas_used

    def confirm(self, order_id: int, threshold: int = 2) -> tuple[int, int]:
        wid = self.warehouse(threshold)
        oracle = self.system.oracle
        now = self.chain.now()
        self.sequence += 1
        observations, signatures = oracle.observe_delivery(
            self._kinds(threshold),
            order_id=order_id,
            warehouse=wid,
            goods_hash=label_hash("goods"),
            cartons=1_000,
            carton_grams=CARTON_GRAMS,
            observed_at=now - 1,
            sequences=[self.sequence] * threshold,
            deadline=now + 3_600,
        )
        root, result = oracle.confirm_receipt(self.admin, observations, signatures)
        return root, result.gas_used


def measure(chain: Chain) -> dict[str, int]:
    b = Bench(chain)
    ledger = b.system.ledger
    gas: dict[str, int] = {}

    order_id, gas["open_order"] = b.open_order()
    root, gas["confirm_receipt_2_of_3"] = b.confirm(order_id)
    for m in (3, 5):
        oid, _ = b.open_order(threshold=m)
        _, gas[f"confirm_receipt_{m}_of_{max(m + 1, 3)}"] = b.confirm(oid, threshold=m)

    fresh = b._participant(Role.SUPPLIER)
    new_id, r = ledger.split_to(b.supplier, root, fresh.address, 100_000_00)
    gas["split_to_new_holder"] = r.gas_used
    gas["split_to_existing_holder"] = ledger.split_to(b.supplier, root, fresh.address, 100_000_00)[1].gas_used
    # The target applies to the dearer case: value into a certificate another participant holds.
    gas["merge"] = ledger.merge(b.supplier, root, new_id, 50_000_00).gas_used
    parts, r = ledger.split(b.supplier, root, [400_000_00, ledger.certificate(root).value - 400_000_00])
    gas["split_into_2_parts"] = r.gas_used
    gas["merge_own"] = ledger.merge(b.supplier, parts[0], root, 10_000_00).gas_used

    fresh2 = b._participant(Role.SUPPLIER)
    gas["transfer_whole"] = ledger.transfer(fresh, new_id, fresh2.address).gas_used
    gas["approve_value"] = ledger.approve_value(b.supplier, root, b.factor.address, 10_000_00).gas_used

    now = chain.now()
    offer_id, r = ledger.offer_discount(b.supplier, root, value=100_000_00, price=98_000_00, expiry=now + DAY)
    gas["offer_discount"] = r.gas_used
    gas["buy_discounted_partial"] = ledger.buy_discounted(b.factor, offer_id)[1].gas_used

    # Settlement: one certificate, then a batch of 10 of another order.
    chain.advance_time(91 * DAY)
    gas["settle_one"] = ledger.settle(b.admin, [root]).gas_used
    oid, _ = b.open_order(maturity_days=30)
    batch_root, _ = b.confirm(oid)
    per_part = ledger.certificate(batch_root).value // 10
    ids, _ = ledger.split(
        b.supplier, batch_root, [per_part] * 9 + [ledger.certificate(batch_root).value - 9 * per_part]
    )
    chain.advance_time(31 * DAY)
    gas["settle_batch_10"] = ledger.settle(b.admin, [batch_root, *ids]).gas_used

    oid, _ = b.open_order()
    chain.advance_time(8 * DAY)
    gas["cancel_order"] = ledger.cancel_order(b.issuer, oid).gas_used
    return gas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpc-url", default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/gas.json"))
    args = parser.parse_args()
    chain = connect(Settings(rpc_url=args.rpc_url))
    gas = measure(chain)
    over = {op: (gas[op], limit) for op, limit in TARGETS.items() if gas[op] > limit}
    report = {
        "chain": "embedded py-evm" if chain.embedded else args.rpc_url,
        "compiler": json.loads(BUILD_INFO.read_text(encoding="utf-8"))["solcLongVersion"],
        "settings": "optimizer on, 200 runs, evm cancun",
        "gas": gas,
        "targets": TARGETS,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    table = Table(title="Gas per operation (receipt gasUsed)")
    table.add_column("operation")
    table.add_column("gas", justify="right")
    table.add_column("target", justify="right")
    for op, used in gas.items():
        limit = TARGETS.get(op)
        mark = "" if limit is None else (f"<= {limit:,} ok" if used <= limit else f"<= {limit:,} OVER")
        table.add_row(op, f"{used:,}", mark)
    Console().print(table)
    print(f"wrote {args.out}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
