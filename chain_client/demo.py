"""The whole lifecycle on the embedded chain, told as a story with balances that reconcile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from rich.console import Console
from rich.table import Table

from chain_client import errors
from chain_client.chain import Chain, connect
from chain_client.models import CertificateStatus, Role
from chain_client.pricing import discount_price
from chain_client.receipts import DeviceEnrolment, ReadingKind, delivery_ranges, label_hash
from chain_client.settings import Settings
from chain_client.system import System

DAY = 86_400
YUAN = 100  # the demo token has 2 decimals: amounts are in fen


def yuan(amount: int) -> str:
    sign = "-" if amount < 0 else ""
    whole, fen = divmod(abs(amount), YUAN)
    return f"{sign}¥{whole:,}.{fen:02d}"


@dataclass(frozen=True)
class Cast:
    operator: LocalAccount
    core: LocalAccount
    tier1: LocalAccount
    tier2: LocalAccount
    factor: LocalAccount
    regulator: LocalAccount
    relayer: LocalAccount
    devices: tuple[LocalAccount, ...]

    def names(self) -> dict[ChecksumAddress, str]:
        return {
            self.operator.address: "Consortium operator",
            self.core.address: "Huaxin Motors (core enterprise)",
            self.tier1.address: "Dongfang Brake Parts (tier-1 supplier)",
            self.tier2.address: "Jiangnan Castings (tier-2 supplier)",
            self.factor.address: "Pudong Factoring (factor)",
            self.regulator.address: "Regulator",
        }


@dataclass(frozen=True)
class DemoReceipt:
    """What the demo hands a receipt path: the order, what arrived, and the warehouse's devices."""

    order_id: int
    warehouse: bytes
    goods_hash: bytes
    expected_quantity: int
    delivered_quantity: int
    carton_grams: int
    devices: tuple[LocalAccount, ...]
    kinds: tuple[int, ...]
    relayer: LocalAccount


class ReceiptPath(Protocol):
    """How the delivery reaches the chain; returns the root certificate id."""

    description: str

    def __call__(self, system: System, receipt: DemoReceipt) -> int: ...


class DirectSigning:
    """The devices sign in this process and the relayer submits at once: no broker, no gateway."""

    description = "devices signed in-process and the relayer submitted directly (no MQTT pipeline)"

    def __call__(self, system: System, receipt: DemoReceipt) -> int:
        now = system.chain.now()
        # One portal and the weighbridge: the smallest quorum with every required kind.
        observations, signatures = system.oracle.observe_delivery(
            list(zip(receipt.devices, receipt.kinds, strict=True))[:2],
            order_id=receipt.order_id,
            warehouse=receipt.warehouse,
            goods_hash=receipt.goods_hash,
            cartons=receipt.delivered_quantity,
            carton_grams=receipt.carton_grams,
            observed_at=now - 60,
            sequences=(1, 1),
            deadline=now + 3_600,
        )
        root_id, _ = system.oracle.confirm_receipt(receipt.relayer, observations, signatures)
        return root_id


CARTON_GRAMS = 12_500  # one boxed brake disc
DEVICE_KINDS = (ReadingKind.CARTON_COUNT, ReadingKind.NET_WEIGHT_GRAMS, ReadingKind.CARTON_COUNT)


def run_demo(
    chain: Chain | None = None,
    console: Console | None = None,
    receipt_path: ReceiptPath | None = None,
    manifest: Path | None = None,
) -> System:
    """Runs the story; returns the system so tests can check the end state. Raises if the books
    do not reconcile. `receipt_path` carries the delivery to the chain (direct signing if None).
    `manifest`: where to write the deployment manifest as soon as the system is deployed, so an
    auditor can replay the demo's history from the node (a node only: the embedded chain ends
    with the process)."""
    console = console or Console()
    chain = chain or connect(Settings())
    if manifest is not None and chain.embedded:
        raise ValueError("the embedded chain ends with the demo: a manifest needs a node (--rpc-url)")
    say = console.print
    cast = Cast(
        operator=chain.new_account(),
        core=chain.new_account(),
        tier1=chain.new_account(),
        tier2=chain.new_account(),
        factor=chain.new_account(),
        regulator=chain.new_account(),
        relayer=chain.new_account(),
        devices=tuple(chain.new_account(0) for _ in range(3)),
    )
    names = cast.names()
    say(
        f"[bold]certledger demo[/] on the {'embedded py-evm' if chain.embedded else 'node'} "
        f"chain {chain.chain_id}"
    )

    system = System.deploy(chain, cast.operator, admin_entity_id=label_hash("USCC:91310000CONSORTIUM"))
    ledger, oracle, token = system.ledger, system.oracle, system.token
    d = system.deployment
    say(
        f"Deployed ledger {d.ledger}, oracle {d.oracle}, token tCNY {d.token} (block {d.deployment_block}), "
        f"operator {cast.operator.address}"
    )
    if manifest is not None:
        d.save(manifest)
        say(
            f"Manifest written to {manifest}: `certledger audit replay --manifest {manifest}` "
            "rebuilds this story."
        )

    op = cast.operator
    ledger.register_participant(
        op, cast.core.address, label_hash("USCC:913100001111"), Role.ISSUER, 5_000_000 * YUAN
    )
    ledger.register_participant(op, cast.tier1.address, label_hash("USCC:913200002222"), Role.SUPPLIER)
    ledger.register_participant(op, cast.tier2.address, label_hash("USCC:913300003333"), Role.SUPPLIER)
    ledger.register_participant(op, cast.factor.address, label_hash("USCC:913100004444"), Role.FACTOR)
    ledger.register_participant(op, cast.regulator.address, label_hash("GOV:PBOC-SH"), Role.REGULATOR)
    warehouse = label_hash("WH-SH-PUDONG-07")
    oracle.register_warehouse(
        op,
        warehouse,
        [DeviceEnrolment(dev.address, kind) for dev, kind in zip(cast.devices, DEVICE_KINDS, strict=True)],
        2,
        3_600,
        delivery_ranges(100_000, CARTON_GRAMS),
    )
    oracle.set_relayer(op, cast.relayer.address, True)
    say(
        "Registered the core enterprise, two suppliers, a factor, a regulator and warehouse "
        "WH-SH-PUDONG-07 with two RFID portals and a weighbridge (2 must agree, a count and a weight "
        "among them), and allow-listed the gateway's relayer."
    )

    token.mint(op, cast.core.address, 2_000_000 * YUAN)
    token.mint(op, cast.factor.address, 1_000_000 * YUAN)
    parties = [cast.core, cast.tier1, cast.tier2, cast.factor]
    start = {p.address: token.balance_of(p.address) for p in parties}

    # 1. The core enterprise orders 1,000 brake discs for ¥1,000,000.00, payable in 90 days.
    amount, expected = 1_000_000 * YUAN, 1_000
    now = chain.now()
    terms: dict[str, Any] = {
        "payee": cast.tier1.address,
        "amount": amount,
        "maturity": now + 90 * DAY,
        "invoice_hash": label_hash("INV-2026-HX-000817"),
        "warehouse": warehouse,
        "goods_hash": label_hash("brake disc BD-330, 1000 pcs"),
        "expected_quantity": expected,
        "deadline": now + 14 * DAY,
    }
    goods = terms["goods_hash"]

    def check_order() -> None:
        ledger.check_open_order(cast.core.address, **terms)

    token.ensure_allowance(cast.core, ledger.address, amount, check=check_order)
    order_id, _ = ledger.open_order(cast.core, **terms)
    say(
        f"1. Huaxin Motors opened order #{order_id}: {expected} brake discs, {yuan(amount)} escrowed, "
        "due in 90 days."
    )
    try:
        # Refused by the simulation before any approval is sent.
        token.ensure_allowance(cast.core, ledger.address, amount, check=check_order)
        ledger.open_order(cast.core, **terms)
        raise AssertionError("a duplicate invoice was accepted")
    except errors.DuplicateInvoice as exc:
        say(f"   Financing the same invoice twice is refused: {exc}")

    # 2. Two days later 980 discs arrive; the portal counts them, the weighbridge weighs them.
    chain.advance_time(2 * DAY)
    delivered = 980
    path = receipt_path or DirectSigning()
    say(f"2. Receipt path: {path.description}.")
    root_id = path(
        system,
        DemoReceipt(
            order_id=order_id,
            warehouse=warehouse,
            goods_hash=goods,
            expected_quantity=expected,
            delivered_quantity=delivered,
            carton_grams=CARTON_GRAMS,
            devices=cast.devices,
            kinds=DEVICE_KINDS,
            relayer=cast.relayer,
        ),
    )
    root = ledger.certificate(root_id)
    say(
        f"   Warehouse devices observed {delivered} of {expected} discs. Certificate #{root_id} for "
        f"{yuan(root.value)} minted to Dongfang; the short delivery's {yuan(amount - root.value)} "
        "went back to Huaxin."
    )

    # 3. Dongfang passes ¥300,000.00 down to its own supplier.
    tier2_id, _ = ledger.split_to(cast.tier1, root_id, cast.tier2.address, 300_000 * YUAN)
    say(f"3. Dongfang split {yuan(300_000 * YUAN)} off #{root_id} into #{tier2_id} to pay Jiangnan Castings.")

    # 4. Dongfang sells ¥400,000.00 to the factor at 6% a year for the days left.
    days_left = (root.maturity - chain.now()) // DAY
    face = 400_000 * YUAN
    price = discount_price(face, days_left, 600)
    offer_id, _ = ledger.offer_discount(
        cast.tier1, root_id, value=face, price=price, expiry=chain.now() + DAY, buyer=cast.factor.address
    )
    buyer = cast.factor.address
    token.ensure_allowance(
        cast.factor, ledger.address, price, check=lambda: ledger.check_buy_discounted(buyer, offer_id)
    )
    factor_id, sale = ledger.buy_discounted(cast.factor, offer_id)
    rate = sale.event("DiscountSold")["annualRateBps"]
    say(
        f"4. Pudong Factoring bought {yuan(face)} of #{root_id} for {yuan(price)} ({days_left} days at "
        f"{rate / 100:.2f}% a year), as #{factor_id}, delivery against payment in one transaction."
    )

    # 5. Jiangnan splits its part in two, keeping both; the regulator briefly freezes one.
    (part_id,), _ = ledger.split(cast.tier2, tier2_id, [200_000 * YUAN, 100_000 * YUAN])
    ledger.freeze(cast.regulator, part_id, label_hash("KYC refresh"))
    try:
        ledger.transfer(cast.tier2, part_id, cast.tier1.address)
        raise AssertionError("a frozen certificate moved")
    except errors.CertificateFrozen as exc:
        say(
            f"5. Jiangnan split #{tier2_id}, keeping #{part_id}; while the regulator froze it, "
            f"a move was refused: {exc}"
        )
    ledger.unfreeze(cast.regulator, part_id)

    # 6. Maturity: anyone settles; each holder is paid from escrow.
    chain.advance_time(root.maturity - chain.now() + 1)
    live = [c for c in ledger.certificates_of_order(order_id) if c.status == CertificateStatus.LIVE]
    ledger.settle(cast.relayer, [c.certificate_id for c in live])
    say(f"6. At maturity a keeper settled {len(live)} live certificates of order #{order_id}.")

    _story(console, system, order_id, names)
    _reconcile(console, system, order_id, start, parties, names)
    return system


def _story(console: Console, system: System, order_id: int, names: dict[ChecksumAddress, str]) -> None:
    table = Table(title=f"Certificates of order #{order_id}")
    for col in ("id", "parent", "depth", "holder at settlement", "value", "status"):
        table.add_column(col, justify="right" if col in ("id", "parent", "depth", "value") else "left")
    for c in sorted(system.ledger.certificates_of_order(order_id), key=lambda c: c.certificate_id):
        table.add_row(
            str(c.certificate_id),
            str(c.parent_id or "-"),
            str(c.depth),
            names.get(c.holder, c.holder),
            yuan(c.value),
            c.status.name.lower(),
        )
    console.print(table)


def _reconcile(
    console: Console,
    system: System,
    order_id: int,
    start: dict[ChecksumAddress, int],
    parties: list[LocalAccount],
    names: dict[ChecksumAddress, str],
) -> None:
    ledger, token = system.ledger, system.token
    order = ledger.order(order_id)
    table = Table(title="Who was paid (tCNY)")
    table.add_column("participant")
    for col in ("start", "end", "change"):
        table.add_column(col, justify="right")
    total_change = 0
    for p in parties:
        end = token.balance_of(p.address)
        total_change += end - start[p.address]
        table.add_row(names[p.address], yuan(start[p.address]), yuan(end), yuan(end - start[p.address]))
    held = token.balance_of(ledger.address)
    table.add_row("Ledger escrow", "", yuan(held), "")
    console.print(table)

    live_value = sum(
        c.value for c in ledger.certificates_of_order(order_id) if c.status == CertificateStatus.LIVE
    )
    checks = {
        "escrowed == paid + refunded + live certificates": order.escrowed
        == order.paid + order.refunded + live_value,
        "nothing left in escrow": held == 0 and order.in_escrow == 0,
        "participants' balances net to zero (money only moved between them)": total_change == 0,
    }
    console.print(
        f"Order #{order_id}: escrowed {yuan(order.escrowed)} = paid {yuan(order.paid)} "
        f"+ refunded {yuan(order.refunded)} + live {yuan(live_value)}"
    )
    for label, ok in checks.items():
        console.print(f"  [{'green' if ok else 'red'}]{'ok' if ok else 'FAILED'}[/] {label}")
    if not all(checks.values()):
        raise AssertionError("the books do not reconcile")
    console.print("[bold green]Every fen is accounted for.[/]")
