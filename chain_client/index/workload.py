"""A seeded random lifecycle for tests and benchmarks: orders, receipts, splits, merges, transfers,
discount sales, freezes, settlement, refused payments and withdrawals, suspensions, pauses, key
rotations and time passing, every kind of event the ledger and the oracle emit.

Choices are made from what the workload learned from its own transactions' events plus a view
read where the current holder or value matters; an operation the contract would refuse is caught
in simulation (nothing is sent) and counted as refused. Needs a development chain (time travel).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils import to_checksum_address

from chain_client.chain import Chain
from chain_client.errors import ContractError
from chain_client.models import Certificate, CertificateStatus, Role
from chain_client.pricing import discount_price
from chain_client.receipts import DeviceEnrolment, ReadingKind, delivery_ranges, label_hash
from chain_client.system import System
from chain_client.transactions import TxResult

DAY = 86_400
MIN_SPLIT_UNIT = 100
MAX_SPLIT_DEPTH = 6
FRESHNESS = 3_600
CARTON_GRAMS = 1_000
MAX_CARTONS = 10**6
# Two RFID portals and a weighbridge; every receipt needs a count and a weight.
DEVICE_KINDS = (ReadingKind.CARTON_COUNT, ReadingKind.NET_WEIGHT_GRAMS, ReadingKind.CARTON_COUNT)
RANGES = delivery_ranges(MAX_CARTONS, CARTON_GRAMS)
_FUNDS = 10**15


@dataclass
class _CertInfo:
    order_id: int
    maturity: int


@dataclass
class Workload:
    system: System
    rng: random.Random
    admin: LocalAccount
    issuers: list[LocalAccount]
    holders: list[LocalAccount]
    factors: list[LocalAccount]
    regulator: LocalAccount
    relayer: LocalAccount
    devices: list[LocalAccount]
    warehouse: bytes
    goods: bytes
    #: Most parts one split makes (the contract allows 16); more parts, more events per transaction.
    max_split_parts: int = 4
    stats: Counter[str] = field(default_factory=Counter)
    events: int = 0
    _orders: dict[int, tuple[int, int, ChecksumAddress]] = field(
        default_factory=dict
    )  # open: deadline, qty, issuer
    _live: dict[int, _CertInfo] = field(default_factory=dict)
    _sequence: int = 0  # the devices' shared next sequence number (each device's own is enough)
    _frozen: set[int] = field(default_factory=set)
    _offers: dict[int, tuple[ChecksumAddress, ChecksumAddress]] = field(
        default_factory=dict
    )  # open: buyer, seller
    _credits: set[ChecksumAddress] = field(default_factory=set)
    _blocked: set[ChecksumAddress] = field(default_factory=set)
    _suspended: set[ChecksumAddress] = field(default_factory=set)
    _invoices: int = 0

    @property
    def chain(self) -> Chain:
        return self.system.chain

    # ------------------------------------------------------------------ setting up

    @classmethod
    def deploy(cls, chain: Chain, seed: int = 0, *, holders: int = 4) -> Workload:
        """Deploys a fresh system and registers, funds and approves a cast."""
        rng = random.Random(seed)
        admin = chain.new_account()
        system = System.deploy(
            chain,
            admin,
            admin_entity_id=label_hash("workload-operator"),
            min_split_unit=MIN_SPLIT_UNIT,
            max_split_depth=MAX_SPLIT_DEPTH,
        )
        w = cls(
            system=system,
            rng=rng,
            admin=admin,
            issuers=[chain.new_account() for _ in range(2)],
            holders=[chain.new_account() for _ in range(holders)],
            factors=[chain.new_account() for _ in range(2)],
            regulator=chain.new_account(),
            relayer=chain.new_account(),
            devices=[chain.new_account(0) for _ in range(3)],
            warehouse=label_hash(f"WH-{seed}"),
            goods=label_hash("goods"),
        )
        w._register_cast()
        return w

    def _register_cast(self) -> None:
        ledger, token, admin = self.system.ledger, self.system.token, self.admin
        for i, issuer in enumerate(self.issuers):
            self.send(
                ledger.register_participant(admin, issuer.address, label_hash(f"I{i}"), Role.ISSUER, 2**127)
            )
            self.send(token.mint(admin, issuer.address, _FUNDS))
            self.send(token.approve(issuer, ledger.address, 2**256 - 1))
        for i, holder in enumerate(self.holders):
            self.send(ledger.register_participant(admin, holder.address, label_hash(f"S{i}"), Role.SUPPLIER))
        for i, factor in enumerate(self.factors):
            self.send(ledger.register_participant(admin, factor.address, label_hash(f"F{i}"), Role.FACTOR))
            self.send(token.mint(admin, factor.address, _FUNDS))
            self.send(token.approve(factor, ledger.address, 2**256 - 1))
        self.send(ledger.register_participant(admin, self.regulator.address, label_hash("R"), Role.REGULATOR))
        self.send(
            self.system.oracle.register_warehouse(
                admin, self.warehouse, self._enrolment(), 2, FRESHNESS, RANGES
            )
        )
        self.send(self.system.oracle.set_relayer(admin, self.relayer.address, True))

    def _enrolment(self) -> list[DeviceEnrolment]:
        return [DeviceEnrolment(d.address, kind) for d, kind in zip(self.devices, DEVICE_KINDS, strict=True)]

    # ------------------------------------------------------------------ running

    def run(self, operations: int) -> Counter[str]:
        """Performs `operations` random operations (refused ones included)."""
        for _ in range(operations):
            self.step()
        return self.stats

    def run_until_events(self, events: int, progress: Callable[[int], None] | None = None) -> Counter[str]:
        while self.events < events:
            self.step()
            if progress is not None:
                progress(self.events)
        return self.stats

    def step(self) -> str:
        """One random operation; returns its name (with ":refused" if the contract said no).

        An operation with nothing to act on (no open order to confirm, say) is not counted: another
        is drawn instead, so `run(n)` performs or attempts n real operations."""
        names = list(_OPERATIONS)
        weights = [_OPERATIONS[n][1] for n in names]
        for _ in range(20):
            name = self.rng.choices(names, weights=weights)[0]
            try:
                done = _OPERATIONS[name][0](self)
            except ContractError as exc:
                self.stats[f"{name}:refused:{exc.error_name}"] += 1
                return f"{name}:refused"
            if done:
                self.stats[name] += 1
                return name
            self.stats[f"{name}:skipped"] += 1
        return "idle"

    # ------------------------------------------------------------------ learning from events

    def send(self, result: TxResult) -> TxResult:
        """Counts and learns from a transaction's events (every transaction of the workload goes here)."""
        tracked = (self.system.deployment.ledger, self.system.deployment.oracle)
        for e in result.events:
            if e.address in tracked:
                self.events += 1
                self._learn(e.name, e.args)
        return result

    def _learn(self, name: str, a: dict[str, object]) -> None:
        if name == "OrderOpened":
            issuer = to_checksum_address(str(a["issuer"]))
            self._orders[int(str(a["orderId"]))] = (
                int(str(a["deadline"])),
                int(str(a["expectedQuantity"])),
                issuer,
            )
        elif name in ("OrderConfirmed", "OrderCancelled"):
            self._orders.pop(int(str(a["orderId"])), None)
        elif name == "CertificateIssued":
            self._live[int(str(a["certificateId"]))] = _CertInfo(
                int(str(a["orderId"])), int(str(a["maturity"]))
            )
        elif name == "CertificateSettled":
            self._live.pop(int(str(a["certificateId"])), None)
        elif name == "FreezeImposed":
            self._frozen.add(int(str(a["certificateId"])))
        elif name == "FreezeLifted":
            self._frozen.discard(int(str(a["certificateId"])))
        elif name == "DiscountOffered":
            buyer, seller = (to_checksum_address(str(a[k])) for k in ("buyer", "seller"))
            self._offers[int(str(a["offerId"]))] = (buyer, seller)
        elif name in ("DiscountSold", "DiscountOfferCancelled"):
            self._offers.pop(int(str(a["offerId"])), None)
        elif name == "PaymentCredited":
            self._credits.add(to_checksum_address(str(a["account"])))
        elif name == "Withdrawn":
            self._credits.discard(to_checksum_address(str(a["account"])))

    # ------------------------------------------------------------------ helpers

    def _now(self) -> int:
        return self.chain.now()

    def _key(self, address: ChecksumAddress) -> LocalAccount | None:
        for account in (*self.holders, *self.factors):
            if account.address == address:
                return account
        return None

    def _active_holders(self, but: ChecksumAddress | None = None) -> list[LocalAccount]:
        return [
            h for h in (*self.holders, *self.factors) if h.address not in self._suspended and h.address != but
        ]

    def _movable(self) -> tuple[Certificate, LocalAccount] | None:
        """A random live, unfrozen, unmatured certificate whose holder is active."""
        now = self._now()
        candidates = [i for i, c in self._live.items() if i not in self._frozen and c.maturity > now + 60]
        self.rng.shuffle(candidates)
        for cert_id in candidates[:8]:
            cert = self.system.ledger.certificate(cert_id)
            key = self._key(cert.holder)
            if (
                cert.status == CertificateStatus.LIVE
                and key is not None
                and cert.holder not in self._suspended
            ):
                return cert, key
        return None

    def _part(self, value: int) -> int | None:
        """A value to split off `value` leaving at least the minimum unit (or nothing)."""
        if value < 2 * MIN_SPLIT_UNIT:
            return None
        return self.rng.randint(MIN_SPLIT_UNIT, value - MIN_SPLIT_UNIT)

    # ------------------------------------------------------------------ operations

    def open_order(self) -> bool:
        issuer = self.rng.choice(self.issuers)
        payees = self._active_holders()
        if not payees:
            return False
        now = self._now()
        pay_on_receipt = self.rng.random() < 0.1
        self._invoices += 1
        self.send(
            self.system.ledger.open_order(
                issuer,
                payee=self.rng.choice(payees).address,
                amount=self.rng.randint(10_000, 5_000_000),
                maturity=now if pay_on_receipt else now + self.rng.randint(2 * DAY, 12 * DAY),
                invoice_hash=label_hash(f"invoice-{self.warehouse.hex()}-{self._invoices}"),
                warehouse=self.warehouse,
                goods_hash=self.goods,
                expected_quantity=self.rng.randint(100, 1_000),
                deadline=now + self.rng.randint(DAY, 5 * DAY),
            )[1]
        )
        return True

    def confirm(self) -> bool:
        now = self._now()
        waiting = [(o, exp) for o, (deadline, exp, _) in self._orders.items() if deadline > now]
        if not waiting:
            return False
        order_id, expected = self.rng.choice(waiting)
        roll = self.rng.random()
        quantity = expected if roll < 0.7 else self.rng.randint(1, expected) if roll < 0.9 else expected + 5
        self.confirm_order(order_id, quantity)
        return True

    def confirm_order(self, order_id: int, quantity: int) -> int:
        """The weighbridge and one of the two portals observe `quantity` cartons of the order, read
        half a minute ago; returns the root certificate id."""
        oracle, now = self.system.oracle, self._now()
        portal = self.rng.choice((0, 2))
        self._sequence += 1
        observations, signatures = oracle.observe_delivery(
            [(self.devices[i], DEVICE_KINDS[i]) for i in (portal, 1)],
            order_id=order_id,
            warehouse=self.warehouse,
            goods_hash=self.goods,
            cartons=quantity,
            carton_grams=CARTON_GRAMS,
            observed_at=now - 30,
            sequences=(self._sequence, self._sequence),
            deadline=now + FRESHNESS,
        )
        root_id, result = oracle.confirm_receipt(self.relayer, observations, signatures)
        self.send(result)
        return root_id

    def cancel(self) -> bool:
        now = self._now()
        # Cancellable once a receipt made by the deadline can no longer be confirmed.
        expired = [o for o, (deadline, _, _) in self._orders.items() if deadline + FRESHNESS < now]
        if not expired:
            return False
        order_id = self.rng.choice(expired)
        issuer = next(i for i in self.issuers if i.address == self._orders[order_id][2])
        self.send(self.system.ledger.cancel_order(issuer, order_id))
        return True

    def split_to(self) -> bool:
        found = self._movable()
        if found is None:
            return False
        cert, key = found
        part = self._part(cert.value)
        receivers = self._active_holders(but=cert.holder)
        if part is None or not receivers or cert.depth >= MAX_SPLIT_DEPTH:
            return False
        to = self.rng.choice(receivers).address
        self.send(self.system.ledger.split_to(key, cert.certificate_id, to, part)[1])
        return True

    def split(self) -> bool:
        found = self._movable()
        if found is None:
            return False
        cert, key = found
        parts = self.rng.randint(2, self.max_split_parts)
        if cert.value < parts * MIN_SPLIT_UNIT or cert.depth >= MAX_SPLIT_DEPTH:
            return False
        units = cert.value // MIN_SPLIT_UNIT
        # randint, not sample(range(...)): values can exceed what a range may hold.
        cuts = sorted({self.rng.randint(1, units - 1) for _ in range(parts - 1)})
        bounds = [0, *cuts, units]
        values = [(b - a) * MIN_SPLIT_UNIT for a, b in zip(bounds, bounds[1:], strict=False)]
        values[0] += cert.value - sum(values)
        self.send(self.system.ledger.split(key, cert.certificate_id, values)[1])
        return True

    def merge(self) -> bool:
        found = self._movable()
        if found is None:
            return False
        cert, key = found
        now = self._now()
        siblings = [
            i
            for i, c in self._live.items()
            if c.order_id == cert.order_id
            and i != cert.certificate_id
            and i not in self._frozen
            and c.maturity > now
        ]
        if not siblings or cert.value == 0:
            return False
        target = self.rng.choice(siblings)
        value = cert.value if self.rng.random() < 0.5 else self.rng.randint(1, cert.value)
        self.send(self.system.ledger.merge(key, cert.certificate_id, target, value))
        return True

    def transfer(self) -> bool:
        found = self._movable()
        if found is None:
            return False
        cert, key = found
        receivers = self._active_holders(but=cert.holder)
        if not receivers:
            return False
        self.send(self.system.ledger.transfer(key, cert.certificate_id, self.rng.choice(receivers).address))
        return True

    def operator_split(self) -> bool:
        """A holder lets another participant move part of a certificate (ERC-3525 value allowance)."""
        found = self._movable()
        if found is None:
            return False
        cert, key = found
        part = self._part(cert.value)
        operators = [h for h in self._active_holders(but=cert.holder)]
        if part is None or not operators or cert.depth >= MAX_SPLIT_DEPTH:
            return False
        operator = self.rng.choice(operators)
        ledger = self.system.ledger
        self.send(ledger.approve_value(key, cert.certificate_id, operator.address, part))
        self.send(ledger.split_to(operator, cert.certificate_id, operator.address, part)[1])
        return True

    def offer(self) -> bool:
        found = self._movable()
        if found is None:
            return False
        cert, key = found
        part = cert.value if self.rng.random() < 0.4 else self._part(cert.value)
        if part is None or (part < cert.value and cert.depth >= MAX_SPLIT_DEPTH):
            return False
        now = self._now()
        price = discount_price(part, max(1, (cert.maturity - now) // DAY), self.rng.randint(200, 1_200))
        buyer = self.rng.choice([None, *[f.address for f in self.factors]])
        self.send(
            self.system.ledger.offer_discount(
                key, cert.certificate_id, value=part, price=max(1, price), expiry=now + DAY, buyer=buyer
            )[1]
        )
        return True

    def buy(self) -> bool:
        if not self._offers:
            return False
        offer_id = self.rng.choice(sorted(self._offers))
        reserved = self._offers[offer_id][0]
        factors = [f for f in self.factors if reserved in (f.address, "0x" + "00" * 20)]
        factors = [f for f in factors if f.address not in self._suspended]
        if not factors:
            return False
        self.send(self.system.ledger.buy_discounted(self.rng.choice(factors), offer_id)[1])
        return True

    def cancel_offer(self) -> bool:
        if not self._offers:
            return False
        offer_id = self.rng.choice(sorted(self._offers))
        seller = self._key(self._offers[offer_id][1])
        if seller is None:
            return False
        self.send(self.system.ledger.cancel_offer(seller, offer_id))
        return True

    def freeze(self) -> bool:
        candidates = [i for i in self._live if i not in self._frozen]
        if not candidates:
            return False
        self.send(
            self.system.ledger.freeze(self.regulator, self.rng.choice(candidates), label_hash("review"))
        )
        return True

    def unfreeze(self) -> bool:
        if not self._frozen:
            return False
        self.send(self.system.ledger.unfreeze(self.regulator, self.rng.choice(sorted(self._frozen))))
        return True

    def due(self) -> list[int]:
        """Live, unfrozen certificates that have matured, by id."""
        now = self._now()
        return sorted(i for i, c in self._live.items() if c.maturity <= now and i not in self._frozen)

    def settle(self) -> bool:
        due = self.due()
        if not due:
            return False
        batch = self.rng.sample(due, min(len(due), self.rng.randint(1, 64)))
        self.send(self.system.ledger.settle(self.relayer, sorted(batch)))
        return True

    def advance(self) -> bool:
        self.chain.advance_time(self.rng.randint(DAY // 4, 3 * DAY))
        return True

    def block(self) -> bool:
        """The bank blocks or unblocks a holder: settlements to it are then credited, not pushed."""
        holder = self.rng.choice(self.holders).address
        blocked = holder not in self._blocked
        self.send(self.system.token.set_blocked(self.admin, holder, blocked))
        (self._blocked.add if blocked else self._blocked.discard)(holder)
        return True

    def withdraw(self) -> bool:
        ready = [a for a in self._credits if a not in self._blocked and a not in self._suspended]
        key = self._key(self.rng.choice(ready)) if ready else None
        if key is None:
            return False
        self.send(self.system.ledger.withdraw(key))
        return True

    def suspend(self) -> bool:
        holder = self.rng.choice(self.holders).address
        ledger = self.system.ledger
        if holder in self._suspended:
            self.send(ledger.reinstate(self.admin, holder))
            self._suspended.discard(holder)
        elif len(self._suspended) < len(self.holders) - 1:
            self.send(ledger.suspend(self.admin, holder))
            self._suspended.add(holder)
        return True

    def admin_chores(self) -> bool:
        """Rarer administration: pause and resume, split rules, key rotation, limits, roles."""
        ledger, roll = self.system.ledger, self.rng.random()
        if roll < 0.25:
            self.send(ledger.pause(self.admin))
            self.send(ledger.unpause(self.admin))
        elif roll < 0.5:
            self.send(ledger.set_split_rules(self.admin, MIN_SPLIT_UNIT, MAX_SPLIT_DEPTH))
        elif roll < 0.7:
            self.send(
                self.system.oracle.rotate_devices(
                    self.admin, self.warehouse, self._enrolment(), 2, FRESHNESS, RANGES
                )
            )
        elif roll < 0.85:
            issuer = self.rng.choice(self.issuers).address
            self.send(ledger.set_issuer_limit(self.admin, issuer, 2**127 - self.rng.randint(0, 10**6)))
        else:
            factor = self.rng.choice(self.factors).address
            self.send(ledger.set_roles(self.admin, factor, Role.FACTOR | Role.SUPPLIER))
        return True


_OPERATIONS: dict[str, tuple[Callable[[Workload], bool], float]] = {
    "open_order": (Workload.open_order, 3.0),
    "confirm": (Workload.confirm, 3.0),
    "cancel": (Workload.cancel, 0.4),
    "split_to": (Workload.split_to, 3.0),
    "split": (Workload.split, 2.0),
    "merge": (Workload.merge, 1.5),
    "transfer": (Workload.transfer, 2.0),
    "operator_split": (Workload.operator_split, 0.5),
    "offer": (Workload.offer, 1.5),
    "buy": (Workload.buy, 1.2),
    "cancel_offer": (Workload.cancel_offer, 0.3),
    "freeze": (Workload.freeze, 0.4),
    "unfreeze": (Workload.unfreeze, 0.4),
    "settle": (Workload.settle, 1.5),
    "advance": (Workload.advance, 1.0),
    "block": (Workload.block, 0.2),
    "withdraw": (Workload.withdraw, 0.4),
    "suspend": (Workload.suspend, 0.2),
    "admin_chores": (Workload.admin_chores, 0.15),
}
