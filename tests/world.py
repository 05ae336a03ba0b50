"""A deployed certledger system with a cast of participants, shared by the embedded-chain tests.

Building a chain, deploying and registering the cast takes over a second, so it is done once per
session; each test starts from the same state by reverting the embedded chain to a snapshot taken
right after the setup (a few milliseconds). The nonce manager is reset at every revert, since the
nonces it counted belong to the discarded blocks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils import collapse_if_tuple, function_abi_to_4byte_selector, to_checksum_address
from web3.contract import Contract

from chain_client.chain import Chain, connect
from chain_client.ledger import LedgerClient
from chain_client.models import CertificateStatus, OrderStatus, Role
from chain_client.pricing import discount_price, implied_annual_rate_bps
from chain_client.receipts import (
    DeviceEnrolment,
    Observation,
    ReadingKind,
    ReceiptOracleClient,
    delivery_ranges,
    label_hash,
)
from chain_client.settings import Settings
from chain_client.system import System
from chain_client.token import SettlementTokenClient
from chain_client.transactions import NonceManager

DAY = 86_400
YUAN = 100  # the settlement token has 2 decimals
MIN_SPLIT_UNIT = 100
MAX_SPLIT_DEPTH = 3
ISSUER_LIMIT = 5_000_000 * YUAN
ISSUER_FUNDS = 10_000_000 * YUAN
FACTOR_FUNDS = 5_000_000 * YUAN
THRESHOLD = 2
FRESHNESS = 3_600
MAX_UINT256 = 2**256 - 1
DEFAULT_AMOUNT = 100_000 * YUAN
DEFAULT_QUANTITY = 1_000
CARTON_GRAMS = 10_000
MAX_CARTONS = 1_000_000
# The warehouse's devices: two RFID portals around a weighbridge. A receipt needs a count and a weight.
DEVICE_KINDS = (ReadingKind.CARTON_COUNT, ReadingKind.NET_WEIGHT_GRAMS, ReadingKind.CARTON_COUNT)
DEFAULT_DEVICES = (0, 1)
RANGES = delivery_ranges(MAX_CARTONS, CARTON_GRAMS)


@dataclass(frozen=True)
class Cast:
    admin: LocalAccount
    issuer: LocalAccount  # approved the ledger for everything it has
    issuer2: LocalAccount  # a second core enterprise that has approved nothing
    supplier1: LocalAccount
    supplier2: LocalAccount
    factor: LocalAccount  # approved the ledger for everything it has
    regulator: LocalAccount
    relayer: LocalAccount  # on the oracle's relayer allow-list, registered nowhere in the ledger
    outsider: LocalAccount  # registered nowhere, funded with gas
    devices: tuple[LocalAccount, ...]

    def parties(self) -> dict[str, ChecksumAddress]:
        return {
            "admin": self.admin.address,
            "issuer": self.issuer.address,
            "issuer2": self.issuer2.address,
            "supplier1": self.supplier1.address,
            "supplier2": self.supplier2.address,
            "factor": self.factor.address,
            "regulator": self.regulator.address,
            "relayer": self.relayer.address,
            "outsider": self.outsider.address,
        }


@dataclass(frozen=True)
class OrderBook:
    status: OrderStatus
    escrowed: int
    paid: int
    refunded: int
    delivered_quantity: int
    root_certificate_id: int


@dataclass(frozen=True)
class CertBook:
    holder: ChecksumAddress
    value: int
    status: CertificateStatus
    frozen: bool
    depth: int
    parent_id: int
    order_id: int


@dataclass(frozen=True)
class OfferBook:
    open: bool
    seller: ChecksumAddress
    buyer: ChecksumAddress
    value: int
    price: int


@dataclass(frozen=True)
class State:
    """Everything a refused operation must leave untouched."""

    tokens: dict[str, int]
    credits: dict[str, int]
    total_credits: int
    counts: tuple[int, int, int]
    orders: dict[int, OrderBook]
    certificates: dict[int, CertBook]
    offers: dict[int, OfferBook]
    outstanding: dict[str, int]
    paused: bool


class Views:
    """Calls a contract's view functions straight on the embedded backend.

    For the state snapshots only, which read a few dozen values around every refused request:
    going past web3's request formatting makes a read about three times cheaper. The tests' own
    reads go through the client. A struct comes back as a dict keyed by its field names, so the
    snapshot does not depend on the order of a struct's fields."""

    def __init__(self, chain: Chain, contract: Contract) -> None:
        self._tester: Any = chain._tester
        self._address = contract.address
        self._caller = chain.w3.eth.accounts[0]
        self._abi: dict[str, tuple[bytes, list[str], list[dict[str, Any]]]] = {}
        entries = cast(list[dict[str, Any]], contract.abi)
        for entry in entries:
            if entry.get("type") == "function" and entry.get("stateMutability") == "view":
                inputs = [collapse_if_tuple(dict(i)) for i in entry.get("inputs", [])]
                selector = function_abi_to_4byte_selector(cast(Any, entry))
                self._abi.setdefault(entry["name"], (selector, inputs, list(entry.get("outputs", []))))

    def __call__(self, name: str, *args: Any) -> Any:
        selector, inputs, outputs = self._abi[name]
        data = "0x" + (selector + abi_encode(inputs, list(args))).hex()
        raw = self._tester.call({"from": self._caller, "to": self._address, "data": data}, "latest")
        types = [collapse_if_tuple(dict(o)) for o in outputs]
        values = abi_decode(types, bytes.fromhex(raw[2:]) if isinstance(raw, str) else bytes(raw))
        named = [_named(o, v) for o, v in zip(outputs, values, strict=True)]
        return named[0] if len(named) == 1 else tuple(named)


def _named(entry: dict[str, Any], value: Any) -> Any:
    if entry["type"] == "tuple":
        return {c["name"]: _named(c, v) for c, v in zip(entry["components"], value, strict=True)}
    return value


@dataclass
class World:
    chain: Chain
    system: System
    cast: Cast
    warehouse: bytes
    goods: bytes
    base_snapshot: int
    _labels: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _memo: tuple[tuple[bytes, tuple[str, ...], bool], State] | None = field(default=None, repr=False)
    _ledger_views: Views | None = field(default=None, repr=False)
    _token_views: Views | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ shortcuts

    @property
    def ledger(self) -> LedgerClient:
        return self.system.ledger

    @property
    def oracle(self) -> ReceiptOracleClient:
        return self.system.oracle

    @property
    def token(self) -> SettlementTokenClient:
        return self.system.token

    def reset(self) -> None:
        """Back to the state right after the cast was set up."""
        self.chain._tester.revert_to_snapshot(self.base_snapshot)
        self.chain.nonces = NonceManager()

    def fresh_label(self, prefix: str) -> bytes:
        """A bytes32 never used before in this session (invoices, goods)."""
        return label_hash(f"{prefix}-{next(self._labels)}")

    # ------------------------------------------------------------------ orders and receipts

    def open_order(
        self,
        *,
        amount: int = DEFAULT_AMOUNT,
        expected_quantity: int = DEFAULT_QUANTITY,
        maturity_in: int = 90 * DAY,
        deadline_in: int = 14 * DAY,
        payee: ChecksumAddress | None = None,
        issuer: LocalAccount | None = None,
        invoice: bytes | None = None,
        warehouse: bytes | None = None,
        goods: bytes | None = None,
    ) -> int:
        """Opens an order, maturity and deadline counted from the time it opens at; returns its id."""
        now = self.pending_time()
        order_id, _ = self.ledger.open_order(
            issuer or self.cast.issuer,
            payee=payee or self.cast.supplier1.address,
            amount=amount,
            maturity=now + maturity_in,
            invoice_hash=invoice or self.fresh_label("INV"),
            warehouse=warehouse or self.warehouse,
            goods_hash=goods or self.goods,
            expected_quantity=expected_quantity,
            deadline=now + deadline_in,
        )
        return order_id

    def device(self, address: str) -> LocalAccount:
        """The account (a device, or the outsider posing as one) behind `address`."""
        for account in (*self.cast.devices, self.cast.outsider):
            if account.address.lower() == address.lower():
                return account
        raise KeyError(address)

    def observation(
        self,
        order_id: int,
        device: int,
        quantity: int,
        *,
        observed_at: int | None = None,
        deadline: int | None = None,
        warehouse: bytes | None = None,
        goods: bytes | None = None,
        device_set_version: int | None = None,
        sequence: int | None = None,
        signer: LocalAccount | None = None,
    ) -> Observation:
        """Device `device` (an index into the cast's devices: 0 and 2 count, 1 weighs) observing
        `quantity` cartons of an order, an hour to submit, a fresh sequence number."""
        wh = warehouse or self.warehouse
        kind = DEVICE_KINDS[device]
        now = self.pending_time()
        return Observation(
            order_id=order_id,
            warehouse=wh,
            goods_hash=goods or self.goods,
            device=(signer or self.cast.devices[device]).address,
            kind=kind,
            value=quantity * CARTON_GRAMS if kind == ReadingKind.NET_WEIGHT_GRAMS else quantity,
            observed_at=now - 60 if observed_at is None else observed_at,
            sequence=next(self._labels) if sequence is None else sequence,
            device_set_version=(
                self.oracle.warehouse(wh).device_set_version
                if device_set_version is None
                else device_set_version
            ),
            deadline=now + FRESHNESS if deadline is None else deadline,
        )

    def sign(self, observations: Sequence[Observation]) -> list[bytes]:
        """Each observation signed by the key of the device it names."""
        return [self.oracle.sign(self.device(obs.device), obs) for obs in observations]

    def receipt(
        self, order_id: int, quantity: int, devices: Sequence[int] = DEFAULT_DEVICES, **overrides: Any
    ) -> tuple[list[Observation], list[bytes]]:
        """Signed observations of one delivery by `devices` (by default a portal and the weighbridge)."""
        observations = [self.observation(order_id, d, quantity, **overrides) for d in devices]
        return observations, self.sign(observations)

    def confirm(self, order_id: int, quantity: int, devices: Sequence[int] = DEFAULT_DEVICES) -> int:
        """Confirms receipt of `quantity` through the allow-listed relayer; returns the root id."""
        root_id, _ = self.oracle.confirm_receipt(
            self.cast.relayer, *self.receipt(order_id, quantity, devices)
        )
        return root_id

    def certificate_for(
        self,
        amount: int = DEFAULT_AMOUNT,
        *,
        payee: ChecksumAddress | None = None,
        maturity_in: int = 90 * DAY,
    ) -> tuple[int, int]:
        """An order confirmed in full: (order id, root certificate id) held by `payee`."""
        order_id = self.open_order(amount=amount, payee=payee, maturity_in=maturity_in)
        return order_id, self.confirm(order_id, DEFAULT_QUANTITY)

    # ------------------------------------------------------------------ the books

    def view(self, name: str, *args: Any) -> Any:
        """A ledger view read straight from the backend (see Views): for checks run after every step."""
        if self._ledger_views is None:
            self._ledger_views = Views(self.chain, self.ledger.contract)
        return self._ledger_views(name, *args)

    def pending_time(self) -> int:
        """The timestamp the next transaction (and its simulation) runs at on the embedded chain.

        Not always the last block's plus one: eth-tester stamps a block with the wall clock once
        that is ahead, and after a revert to the session's snapshot it usually is."""
        return int(self.chain.w3.eth.get_block("pending")["timestamp"])

    def balances(self, parties: Iterable[str] | None = None, credits: bool = True) -> State:
        """A snapshot of the books: token balances and credits of every party and of the ledger,
        every order's escrow, paid and refunded, every certificate's holder, value and status,
        every offer, the issuers' outstanding amounts and the pause flag.

        `parties` narrows the token balances and credits to some of the cast (by name; the ledger
        is always included), and `credits=False` leaves out the per-party credits (the total
        stays): for the state machine, which checks after every step and touches only a few
        parties. Reads are pure functions of the chain state, so a snapshot is reused while the
        latest block is the same one it was taken at."""
        names = tuple(parties) if parties is not None else tuple(self.cast.parties())
        head = bytes(self.chain.w3.eth.get_block("latest")["hash"])
        key = (head, names, credits)
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        if self._token_views is None:
            self._token_views = Views(self.chain, self.token.contract)
        view, token = self.view, self._token_views
        known = self.cast.parties()
        accounts = {**{n: known[n] for n in names}, "ledger": self.ledger.address}
        counts = tuple(int(x) for x in view("counts"))
        orders: dict[int, OrderBook] = {}
        for i in range(1, counts[0] + 1):
            o = view("order", i)
            orders[i] = OrderBook(
                OrderStatus(o["status"]),
                int(o["escrowed"]),
                int(o["paid"]),
                int(o["refunded"]),
                int(o["deliveredQuantity"]),
                int(o["rootCertificateId"]),
            )
        certificates: dict[int, CertBook] = {}
        for i in range(1, counts[1] + 1):
            c = view("certificate", i)
            certificates[i] = CertBook(
                holder=to_checksum_address(c["holder"]),
                value=int(c["value"]),
                status=CertificateStatus(c["status"]),
                frozen=bool(c["frozen"]),
                depth=int(c["depth"]),
                parent_id=int(c["parentId"]),
                order_id=int(c["orderId"]),
            )
        offers: dict[int, OfferBook] = {}
        for i in range(1, counts[2] + 1):
            f = view("discountOffer", i)
            offers[i] = OfferBook(
                open=bool(f["open"]),
                seller=to_checksum_address(f["seller"]),
                buyer=to_checksum_address(f["buyer"]),
                value=int(f["value"]),
                price=int(f["price"]),
            )
        state = State(
            tokens={name: int(token("balanceOf", a)) for name, a in accounts.items()},
            credits={name: int(view("credit", a)) for name, a in accounts.items()} if credits else {},
            total_credits=int(view("totalCredits")),
            counts=(counts[0], counts[1], counts[2]),
            orders=orders,
            certificates=certificates,
            offers=offers,
            outstanding={
                "issuer": int(view("participant", self.cast.issuer.address)["outstanding"]),
                "issuer2": int(view("participant", self.cast.issuer2.address)["outstanding"]),
            },
            paused=bool(view("paused")),
        )
        self._memo = (key, state)
        return state


def enrolment(devices: Sequence[LocalAccount]) -> list[DeviceEnrolment]:
    """Three keys as the warehouse's portal, weighbridge and portal."""
    return [DeviceEnrolment(d.address, kind) for d, kind in zip(devices, DEVICE_KINDS, strict=True)]


def build_world(settings: Settings | None = None) -> World:
    """A fresh embedded chain with the system deployed and the cast registered and funded."""
    chain = connect(settings or Settings())
    cast = Cast(
        admin=chain.new_account(),
        issuer=chain.new_account(),
        issuer2=chain.new_account(),
        supplier1=chain.new_account(),
        supplier2=chain.new_account(),
        factor=chain.new_account(),
        regulator=chain.new_account(),
        relayer=chain.new_account(),
        outsider=chain.new_account(),
        devices=tuple(chain.new_account(0) for _ in range(3)),
    )
    system = System.deploy(
        chain,
        cast.admin,
        admin_entity_id=label_hash("USCC:OPERATOR"),
        min_split_unit=MIN_SPLIT_UNIT,
        max_split_depth=MAX_SPLIT_DEPTH,
    )
    ledger, token, admin = system.ledger, system.token, cast.admin
    ledger.register_participant(
        admin, cast.issuer.address, label_hash("USCC:ISSUER"), Role.ISSUER, ISSUER_LIMIT
    )
    ledger.register_participant(
        admin, cast.issuer2.address, label_hash("USCC:ISSUER2"), Role.ISSUER, ISSUER_LIMIT
    )
    ledger.register_participant(admin, cast.supplier1.address, label_hash("USCC:SUPPLIER1"), Role.SUPPLIER)
    ledger.register_participant(admin, cast.supplier2.address, label_hash("USCC:SUPPLIER2"), Role.SUPPLIER)
    ledger.register_participant(admin, cast.factor.address, label_hash("USCC:FACTOR"), Role.FACTOR)
    ledger.register_participant(admin, cast.regulator.address, label_hash("GOV:REGULATOR"), Role.REGULATOR)
    warehouse = label_hash("WH-TEST-01")
    system.oracle.register_warehouse(admin, warehouse, enrolment(cast.devices), THRESHOLD, FRESHNESS, RANGES)
    system.oracle.set_relayer(admin, cast.relayer.address, True)
    token.mint(admin, cast.issuer.address, ISSUER_FUNDS)
    token.mint(admin, cast.issuer2.address, ISSUER_FUNDS)
    token.mint(admin, cast.factor.address, FACTOR_FUNDS)
    token.approve(cast.issuer, ledger.address, MAX_UINT256)
    token.approve(cast.factor, ledger.address, MAX_UINT256)
    snapshot = int(chain._tester.take_snapshot())
    return World(
        chain=chain,
        system=system,
        cast=cast,
        warehouse=warehouse,
        goods=label_hash("brake disc BD-330"),
        base_snapshot=snapshot,
    )


_WORLD: World | None = None


def shared_world() -> World:
    """The session's world, reset to its starting state."""
    global _WORLD
    if _WORLD is None:
        _WORLD = build_world()
    else:
        _WORLD.reset()
    return _WORLD


def check_demo_end_state(system: System, told: str) -> None:
    """What `chain_client.demo.run_demo` must leave behind, on any chain: the story's numbers."""
    ledger, token, w3 = system.ledger, system.token, system.chain.w3
    assert "Every fen is accounted for." in told
    assert "FAILED" not in told

    assert ledger.counts()[0] == 1  # the duplicate invoice was refused
    order = ledger.order(1)
    core, tier1 = order.issuer, order.payee
    certs = {c.certificate_id: c for c in ledger.certificates_of_order(1)}
    assert sorted(certs) == [1, 2, 3, 4]
    assert all(c.status == CertificateStatus.SETTLED for c in certs.values())
    tier2, factor = certs[2].holder, certs[3].holder
    assert len({core, tier1, tier2, factor}) == 4
    assert certs[1].holder == tier1 and certs[4].holder == tier2
    assert [certs[i].value for i in sorted(certs)] == [
        280_000 * YUAN,
        200_000 * YUAN,
        400_000 * YUAN,
        100_000 * YUAN,
    ]
    assert (order.escrowed, order.refunded, order.paid) == (1_000_000 * YUAN, 20_000 * YUAN, 980_000 * YUAN)
    assert order.in_escrow == 0
    assert token.balance_of(ledger.address) == 0
    assert ledger.total_credits() == 0
    assert ledger.participant(core).outstanding == 0

    offered = ledger.contract.events.DiscountOffered.get_logs(from_block=system.deployment.deployment_block)
    sold = ledger.contract.events.DiscountSold.get_logs(from_block=system.deployment.deployment_block)
    assert len(offered) == len(sold) == 1
    price = int(sold[0]["args"]["price"])
    # The demo quoted at the time of the block before its offer, for whole days left, at 6%.
    quoted_at = int(w3.eth.get_block(offered[0]["blockNumber"] - 1)["timestamp"])
    assert price == discount_price(400_000 * YUAN, (order.maturity - quoted_at) // DAY, 600)
    sold_at = int(w3.eth.get_block(sold[0]["blockNumber"])["timestamp"])
    assert sold[0]["args"]["annualRateBps"] == implied_annual_rate_bps(
        400_000 * YUAN, price, order.maturity - sold_at
    )

    # Start: the core enterprise had 2,000,000.00 and the factor 1,000,000.00; the suppliers nothing.
    assert token.balance_of(core) == 2_000_000 * YUAN - 980_000 * YUAN
    assert token.balance_of(tier1) == 280_000 * YUAN + price
    assert token.balance_of(tier2) == 300_000 * YUAN
    assert token.balance_of(factor) == 1_000_000 * YUAN - price + 400_000 * YUAN
