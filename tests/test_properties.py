"""Random sequences of operations through the client, against a model of the books, and the pricing
function against the contract's own.

The state machine drives the client on the embedded chain. Before each operation the model
predicts its outcome: success, or the specific contract error that must refuse it (checks in the
order the contract makes them). A refused operation must raise exactly that typed error; a
successful one updates the model. After every step the chain is compared with the model and the
invariants of DESIGN.md are checked on the chain's own books.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from world import (
    DAY,
    FACTOR_FUNDS,
    FRESHNESS,
    ISSUER_FUNDS,
    ISSUER_LIMIT,
    MAX_SPLIT_DEPTH,
    MIN_SPLIT_UNIT,
    YUAN,
    World,
    shared_world,
)

from chain_client import errors
from chain_client.ledger import LedgerClient
from chain_client.models import CertificateStatus, OrderStatus, Role
from chain_client.pricing import SECONDS_PER_YEAR, discount_price, implied_annual_rate_bps

# Something below hypothesis (py-evm's import, it seems) raises the recursion limit during the first
# example; hypothesis then only warns that it will not restore it.
pytestmark = pytest.mark.filterwarnings("ignore:The recursion limit will not be reset")

T = TypeVar("T")
Refusal = type[errors.ContractError] | None

HOLDERS = ("supplier1", "supplier2", "factor")
EXPECTED_QUANTITY = 100
MAX_SETTLE_BATCH = 64

indices = st.integers(min_value=0, max_value=10**6)
holders = st.sampled_from(HOLDERS)
# How much to move, relative to what the certificate holds: a few units (often below the minimum
# split unit), a share of it, all of it, or more than it has.
value_specs = st.one_of(
    st.tuples(st.just("units"), st.integers(0, 250)),
    st.tuples(st.just("share"), st.integers(1, 999)),
    st.tuples(st.just("all"), st.just(0)),
    st.tuples(st.just("over"), st.integers(1, 100)),
)


def resolve(spec: tuple[str, int], value: int) -> int:
    kind, n = spec
    if kind == "units":
        return n
    if kind == "share":
        return value * n // 1000
    if kind == "all":
        return value
    return value + n


@dataclass
class ModelOrder:
    escrowed: int
    maturity: int
    deadline: int
    payee: str
    status: OrderStatus = OrderStatus.OPEN
    paid: int = 0
    refunded: int = 0


@dataclass
class ModelCert:
    order_id: int
    holder: str
    value: int
    depth: int
    maturity: int
    frozen: bool = False
    settled: bool = False


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world: World = shared_world()
        cast = self.world.cast
        self.accounts: dict[str, LocalAccount] = {
            "issuer": cast.issuer,
            "supplier1": cast.supplier1,
            "supplier2": cast.supplier2,
            "factor": cast.factor,
        }
        self.names = {a.address: name for name, a in self.accounts.items()}
        self.orders: dict[int, ModelOrder] = {}
        self.certs: dict[int, ModelCert] = {}
        self.tokens: dict[str, int] = {
            "issuer": ISSUER_FUNDS,
            "supplier1": 0,
            "supplier2": 0,
            "factor": FACTOR_FUNDS,
            "ledger": 0,
        }
        self.confirmations: Counter[int] = Counter()
        self.logs_checked_to = self.world.chain.w3.eth.block_number

    # ------------------------------------------------------------------ helpers

    def attempt(self, label: str, expected: Refusal, action: Callable[[], T]) -> T | None:
        """Runs `action`; the chain must refuse it with exactly `expected`, or accept it if None."""
        event(f"{label}: {'ok' if expected is None else expected.__name__}")
        if expected is None:
            try:
                return action()
            except errors.ContractError as exc:
                raise AssertionError(f"the model expected success; the chain refused: {exc}") from exc
        with pytest.raises(errors.ContractError) as info:
            action()
        assert type(info.value) is expected, (
            f"the model expected {expected.__name__}; the chain said {info.value}"
        )
        return None

    def pick(self, i: int) -> int:
        ids = sorted(self.certs)
        return ids[i % len(ids)]

    def pick_order(self, i: int) -> int:
        ids = sorted(self.orders)
        return ids[i % len(ids)]

    def address(self, name: str) -> ChecksumAddress:
        return self.accounts[name].address

    def next_certificate_id(self) -> int:
        return len(self.certs) + 1

    def movable(self, c: ModelCert, ts: int) -> Refusal:
        if c.settled:
            return errors.CertificateAlreadySettled
        if c.frozen:
            return errors.CertificateFrozen
        if ts >= c.maturity:
            return errors.CertificateMatured
        return None

    @staticmethod
    def split_rules(balance: int, value: int, depth: int) -> Refusal:
        if balance < value:
            return errors.InsufficientValue
        if value < MIN_SPLIT_UNIT:
            return errors.SplitBelowMinimumUnit
        remainder = balance - value
        if remainder != 0 and remainder < MIN_SPLIT_UNIT:
            return errors.SplitBelowMinimumUnit
        if depth >= MAX_SPLIT_DEPTH:
            return errors.SplitDepthExceeded
        return None

    def pay(self, holder: str, amount: int) -> None:
        self.tokens[holder] += amount
        self.tokens["ledger"] -= amount

    def settled(self, cid: int) -> None:
        c = self.certs[cid]
        c.settled = True
        self.orders[c.order_id].paid += c.value
        self.pay(c.holder, c.value)

    def outstanding(self) -> int:
        return sum(o.escrowed - o.paid - o.refunded for o in self.orders.values())

    # ------------------------------------------------------------------ orders

    @initialize(
        payee=holders,
        maturity_in=st.sampled_from([2 * DAY, 20 * DAY, 60 * DAY]),
        quantity=st.integers(50, 150),
    )
    def a_first_certificate(self, payee: str, maturity_in: int, quantity: int) -> None:
        """Every run starts with one confirmed order, so that certificate rules apply at once."""
        self.open_order(amount=100_000, fen=0, payee=payee, maturity_in=maturity_in, deadline_in=10 * DAY)
        self.confirm(0, quantity)
        assert len(self.certs) == 1

    @rule(
        amount=st.one_of(st.integers(1_000, 300_000), st.sampled_from([2_000_000, 4_000_000])),
        fen=st.integers(0, 99),
        payee=holders,
        maturity_in=st.sampled_from([0, 2 * DAY, 20 * DAY, 60 * DAY]),
        deadline_in=st.sampled_from([DAY, 10 * DAY]),
    )
    def open_order(self, amount: int, fen: int, payee: str, maturity_in: int, deadline_in: int) -> None:
        w = self.world
        value = amount * YUAN + fen
        expected: Refusal = None
        if self.outstanding() + value > ISSUER_LIMIT:
            expected = errors.IssuerLimitExceeded
        elif self.tokens["issuer"] < value:  # what was paid out is gone for good
            expected = errors.ERC20InsufficientBalance
        now = w.pending_time()
        opened = self.attempt(
            "open",
            expected,
            lambda: w.open_order(
                amount=value,
                expected_quantity=EXPECTED_QUANTITY,
                payee=self.address(payee),
                maturity_in=maturity_in,
                deadline_in=deadline_in,
            ),
        )
        if opened is None:
            return
        assert opened == len(self.orders) + 1
        self.orders[opened] = ModelOrder(value, now + maturity_in, now + deadline_in, payee)
        self.tokens["issuer"] -= value
        self.tokens["ledger"] += value

    @precondition(lambda self: bool(self.orders))
    @rule(i=indices, quantity=st.integers(1, 150))
    def confirm(self, i: int, quantity: int) -> None:
        w = self.world
        order_id = self.pick_order(i)
        o = self.orders[order_id]
        observations, signatures = w.receipt(order_id, quantity)
        ts = w.pending_time()
        expected: Refusal = None
        if o.status != OrderStatus.OPEN:
            expected = errors.OrderNotOpen
        elif observations[0].observed_at > o.deadline:
            expected = errors.ReceiptAfterDeadline
        confirmed = self.attempt(
            "confirm",
            expected,
            lambda: w.oracle.confirm_receipt(w.cast.relayer, observations, signatures),
        )
        if confirmed is None:
            return
        root_id, _ = confirmed
        assert root_id == self.next_certificate_id()
        face = o.escrowed * min(quantity, EXPECTED_QUANTITY) // EXPECTED_QUANTITY
        o.status = OrderStatus.CONFIRMED
        o.refunded = o.escrowed - face
        self.pay("issuer", o.refunded)
        self.certs[root_id] = ModelCert(order_id, o.payee, face, 0, o.maturity)
        if o.maturity <= ts:  # pay on receipt
            self.settled(root_id)

    @precondition(lambda self: bool(self.orders))
    @rule(i=indices)
    def cancel(self, i: int) -> None:
        w = self.world
        order_id = self.pick_order(i)
        o = self.orders[order_id]
        expected: Refusal = None
        if o.status != OrderStatus.OPEN:
            expected = errors.OrderNotOpen
        elif w.pending_time() <= o.deadline + FRESHNESS:
            expected = errors.DeadlineNotPassed
        if self.attempt("cancel", expected, lambda: w.ledger.cancel_order(w.cast.issuer, order_id)) is None:
            return
        o.status = OrderStatus.CANCELLED
        o.refunded = o.escrowed
        self.pay("issuer", o.escrowed)

    # ------------------------------------------------------------------ certificates

    @precondition(lambda self: bool(self.certs))
    @rule(i=indices, to=holders, spec=value_specs)
    def split_to(self, i: int, to: str, spec: tuple[str, int]) -> None:
        w = self.world
        cid = self.pick(i)
        c = self.certs[cid]
        value = resolve(spec, c.value)
        expected = (
            errors.ZeroAmount
            if value == 0
            else (self.movable(c, w.pending_time()) or self.split_rules(c.value, value, c.depth))
        )
        done = self.attempt(
            "split_to",
            expected,
            lambda: w.ledger.split_to(self.accounts[c.holder], cid, self.address(to), value),
        )
        if done is None:
            return
        new_id, _ = done
        assert new_id == self.next_certificate_id()
        c.value -= value
        self.certs[new_id] = ModelCert(c.order_id, to, value, c.depth + 1, c.maturity)

    @precondition(lambda self: bool(self.certs))
    @rule(
        i=indices,
        weights=st.lists(st.integers(0, 100), min_size=2, max_size=4),
        off=st.sampled_from([0, 0, 0, 1]),
    )
    def split(self, i: int, weights: list[int], off: int) -> None:
        w = self.world
        cid = self.pick(i)
        c = self.certs[cid]
        total = sum(weights) or 1
        parts = [c.value * x // total for x in weights]
        parts[0] += c.value - sum(parts) + off
        expected = self.movable(c, w.pending_time())
        if expected is None and sum(parts) != c.value:
            expected = errors.SplitPartsMismatch
        if expected is None and parts[0] < MIN_SPLIT_UNIT:  # the part the certificate keeps
            expected = errors.SplitBelowMinimumUnit
        balance = c.value
        for part in parts[1:]:
            if expected is not None:
                break
            expected = self.split_rules(balance, part, c.depth)
            balance -= part
        done = self.attempt("split", expected, lambda: w.ledger.split(self.accounts[c.holder], cid, parts))
        if done is None:
            return
        new_ids, _ = done
        assert new_ids == list(range(self.next_certificate_id(), self.next_certificate_id() + len(parts) - 1))
        c.value = parts[0]
        for new_id, part in zip(new_ids, parts[1:], strict=True):
            self.certs[new_id] = ModelCert(c.order_id, c.holder, part, c.depth + 1, c.maturity)

    @precondition(lambda self: bool(self.certs))
    @rule(i=indices, j=indices, spec=value_specs, anywhere=st.booleans())
    def merge(self, i: int, j: int, spec: tuple[str, int], anywhere: bool) -> None:
        w = self.world
        from_id = self.pick(i)
        # Mostly into another certificate of the same order (when there is one), sometimes anywhere.
        siblings = sorted(
            cid
            for cid, c in self.certs.items()
            if c.order_id == self.certs[from_id].order_id and cid != from_id
        )
        to_id = siblings[j % len(siblings)] if siblings and not anywhere else self.pick(j)
        src, dst = self.certs[from_id], self.certs[to_id]
        value = resolve(spec, src.value)
        ts = w.pending_time()
        expected: Refusal
        if from_id == to_id:
            expected = errors.SelfTransfer
        elif value == 0:
            expected = errors.ZeroAmount
        else:
            expected = self.movable(src, ts) or self.movable(dst, ts)
            if expected is None and src.order_id != dst.order_id:
                expected = errors.SlotMismatch
            if expected is None and src.value < value:
                expected = errors.InsufficientValue
        if (
            self.attempt(
                "merge", expected, lambda: w.ledger.merge(self.accounts[src.holder], from_id, to_id, value)
            )
            is None
        ):
            return
        src.value -= value
        dst.value += value

    @precondition(lambda self: bool(self.certs))
    @rule(i=indices, to=holders)
    def transfer(self, i: int, to: str) -> None:
        w = self.world
        cid = self.pick(i)
        c = self.certs[cid]
        expected = self.movable(c, w.pending_time())
        if (
            self.attempt(
                "transfer",
                expected,
                lambda: w.ledger.transfer(self.accounts[c.holder], cid, self.address(to)),
            )
            is None
        ):
            return
        c.holder = to

    @precondition(lambda self: bool(self.certs))
    @rule(i=indices, spec=value_specs, rate=st.sampled_from([0, 300, 600, 1_200]))
    def offer_and_buy(self, i: int, spec: tuple[str, int], rate: int) -> None:
        w = self.world
        cid = self.pick(i)
        c = self.certs[cid]
        value = resolve(spec, c.value)
        ts = w.pending_time()
        price = discount_price(value, max(0, c.maturity - ts) // DAY, rate)
        expected = self.movable(c, ts)
        if expected is None:
            if value == 0 or price == 0:
                expected = errors.ZeroAmount
            elif c.value < value:
                expected = errors.InsufficientValue
            elif value < c.value:
                expected = self.split_rules(c.value, value, c.depth)
        seller = c.holder
        offered = self.attempt(
            "offer",
            expected,
            lambda: w.ledger.offer_discount(
                self.accounts[seller], cid, value=value, price=price, expiry=ts + DAY
            ),
        )
        if offered is None:
            return
        offer_id, _ = offered
        expected = self.movable(c, w.pending_time())
        if expected is None and w.token.balance_of(w.cast.factor.address) < price:
            expected = errors.ERC20InsufficientBalance
        bought = self.attempt("buy", expected, lambda: w.ledger.buy_discounted(w.cast.factor, offer_id))
        if bought is None:
            return
        bought_id, _ = bought
        if value == c.value:
            assert bought_id == cid
            c.holder = "factor"
        else:
            assert bought_id == self.next_certificate_id()
            c.value -= value
            self.certs[bought_id] = ModelCert(c.order_id, "factor", value, c.depth + 1, c.maturity)
        self.tokens["factor"] -= price
        self.tokens[seller] += price

    # ------------------------------------------------------------------ regulator, time, settlement

    @precondition(lambda self: bool(self.certs))
    @rule(i=indices, action=st.sampled_from(["toggle", "toggle", "freeze", "unfreeze"]))
    def regulate(self, i: int, action: str) -> None:
        """The regulator freezes or unfreezes: "toggle" does whichever applies, the others insist."""
        w = self.world
        cid = self.pick(i)
        c = self.certs[cid]
        freeze = not c.frozen if action == "toggle" else action == "freeze"
        expected: Refusal = None
        if freeze:
            if c.settled:
                expected = errors.CertificateAlreadySettled
            elif c.frozen:
                expected = errors.CertificateFrozen
            act: Callable[[], object] = lambda: w.ledger.freeze(w.cast.regulator, cid, b"\x01" * 32)  # noqa: E731
        else:
            if not c.frozen:
                expected = errors.CertificateNotFrozen
            act = lambda: w.ledger.unfreeze(w.cast.regulator, cid)  # noqa: E731
        if self.attempt("freeze" if freeze else "unfreeze", expected, act) is None:
            return
        c.frozen = freeze

    @rule(seconds=st.sampled_from([3_600, 3_600, DAY, 3 * DAY, 30 * DAY]), then_settle=st.booleans())
    def advance_time(self, seconds: int, then_settle: bool) -> None:
        """Time passes; half the time a keeper then settles whatever fell due."""
        event("advance_time")
        self.world.chain.advance_time(seconds)
        if then_settle:
            self.settle_matured()

    @precondition(lambda self: bool(self.certs))
    @rule()
    def settle_matured(self) -> None:
        w = self.world
        ts = w.pending_time()
        due = [
            cid
            for cid, c in sorted(self.certs.items())
            if not c.settled and not c.frozen and c.maturity <= ts
        ]
        if not due:
            return
        due = due[:MAX_SETTLE_BATCH]
        self.attempt("settle_matured", None, lambda: w.ledger.settle(w.cast.outsider, due))
        for cid in due:
            self.settled(cid)

    @precondition(lambda self: bool(self.certs))
    @rule(i=indices)
    def settle_one(self, i: int) -> None:
        w = self.world
        cid = self.pick(i)
        c = self.certs[cid]
        expected: Refusal = None
        if c.settled:
            expected = errors.CertificateAlreadySettled
        elif c.frozen:
            expected = errors.CertificateFrozen
        elif w.pending_time() < c.maturity:
            expected = errors.CertificateNotMatured
        if self.attempt("settle_one", expected, lambda: w.ledger.settle(w.cast.relayer, [cid])) is None:
            return
        self.settled(cid)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def the_books_balance(self) -> None:
        w = self.world
        state = w.balances(parties=("issuer", "supplier1", "supplier2", "factor"), credits=False)
        orders, certs = state.orders, state.certificates

        # The chain agrees with the model.
        assert state.counts[:2] == (len(self.orders), len(self.certs))
        for oid, o in self.orders.items():
            chain = orders[oid]
            assert (chain.status, chain.escrowed, chain.paid, chain.refunded) == (
                o.status,
                o.escrowed,
                o.paid,
                o.refunded,
            )
        for cid, c in self.certs.items():
            chain_cert = certs[cid]
            status = CertificateStatus.SETTLED if c.settled else CertificateStatus.LIVE
            assert (
                self.names[chain_cert.holder],
                chain_cert.value,
                chain_cert.status,
                chain_cert.frozen,
                chain_cert.order_id,
                chain_cert.depth,
            ) == (c.holder, c.value, status, c.frozen, c.order_id, c.depth), cid
        for name, amount in self.tokens.items():
            assert state.tokens[name] == amount, name

        # 1. For every order: live certificate values + paid + refunded == escrowed.
        live: Counter[int] = Counter()
        issued: Counter[int] = Counter()
        for cb in certs.values():
            issued[cb.order_id] += 1
            if cb.status == CertificateStatus.LIVE:
                live[cb.order_id] += cb.value
        for oid, ob in orders.items():
            if ob.status == OrderStatus.OPEN:
                assert (ob.paid, ob.refunded, issued[oid]) == (0, 0, 0)
            else:
                assert live[oid] + ob.paid + ob.refunded == ob.escrowed, oid

        # 3. The ledger holds exactly the open escrow plus the credits not yet withdrawn.
        in_escrow = sum(ob.escrowed - ob.paid - ob.refunded for ob in orders.values())
        assert state.tokens["ledger"] == in_escrow + state.total_credits
        assert state.outstanding["issuer"] == in_escrow

        # 4. Every live certificate is held by a registered, active participant with a holder role.
        holders_now = {cb.holder for cb in certs.values() if cb.status == CertificateStatus.LIVE}
        for holder in holders_now:
            record = w.view("participant", holder)
            roles, active = Role(record["roles"]), bool(record["active"])
            assert roles & (Role.SUPPLIER | Role.FACTOR) and active, holder

        # 5. Each order is confirmed at most once.
        head = w.chain.w3.eth.block_number
        if head > self.logs_checked_to:
            for log in w.ledger.contract.events.OrderConfirmed.get_logs(
                from_block=self.logs_checked_to + 1, to_block=head
            ):
                self.confirmations[int(log["args"]["orderId"])] += 1
            self.logs_checked_to = head
        for oid, ob in orders.items():
            assert self.confirmations[oid] == (1 if ob.status == OrderStatus.CONFIRMED else 0), oid


# Fixed examples (derandomize), so a run is reproducible: 15 runs of up to 25 steps.
MACHINE_SETTINGS = settings(
    max_examples=15,
    stateful_step_count=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_random_operations_keep_the_books() -> None:
    """LedgerMachine under MACHINE_SETTINGS, run in a worker thread.

    Why a thread: CPython 3.11 keeps its frame stack in 16 KiB chunks and unmaps a chunk as soon as
    the frame at its start returns. Under pytest's and hypothesis's frames, py-evm's interpreter
    loop happens to sit on a chunk boundary, so every opcode call maps and unmaps a chunk: over two
    million mmap/munmap pairs, twice the run time. A thread starts on a fresh frame stack."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            run_state_machine_as_test(LedgerMachine, settings=MACHINE_SETTINGS)
        except BaseException as exc:  # handed to the test's own thread below
            failures.append(exc)

    worker = threading.Thread(target=run, name="ledger-machine")
    worker.start()
    worker.join()
    if failures:
        raise failures[0]


# ====================================================================== pricing


@pytest.fixture(scope="module")
def quote_ledger() -> LedgerClient:
    """A deployed ledger for the pure discountPrice view (its state does not matter)."""
    return shared_world().ledger


faces = st.integers(min_value=0, max_value=2**128 - 1)
days = st.integers(min_value=0, max_value=36_500)
rates = st.integers(min_value=0, max_value=100_000)
pricing_settings = settings(max_examples=50, deadline=None, derandomize=True, database=None)


@pricing_settings
@given(face=faces, days_left=days, rate=rates)
def test_contract_quote_equals_python_pricing(
    quote_ledger: LedgerClient, face: int, days_left: int, rate: int
) -> None:
    assert quote_ledger.quote(face, days_left, rate) == discount_price(face, days_left, rate)


@pricing_settings
@given(face=faces, face2=faces, days_pair=st.tuples(days, days), rate_pair=st.tuples(rates, rates))
def test_price_is_monotone_and_never_above_face(
    quote_ledger: LedgerClient, face: int, face2: int, days_pair: tuple[int, int], rate_pair: tuple[int, int]
) -> None:
    d_lo, d_hi = sorted(days_pair)
    r_lo, r_hi = sorted(rate_pair)
    f_lo, f_hi = sorted((face, face2))
    price = discount_price(f_hi, d_lo, r_lo)
    assert 0 <= price <= f_hi
    # Longer to wait or a higher rate: never dearer. More face: never cheaper.
    assert discount_price(f_hi, d_hi, r_lo) <= price
    assert discount_price(f_hi, d_lo, r_hi) <= price
    assert discount_price(f_lo, d_lo, r_lo) <= price
    # No time or no interest: the face itself.
    assert discount_price(f_hi, 0, r_hi) == f_hi == discount_price(f_hi, d_hi, 0)
    for point in ((f_hi, d_hi, r_lo), (f_hi, d_lo, r_hi), (f_lo, d_lo, r_lo)):
        assert quote_ledger.quote(*point) == discount_price(*point)


@pricing_settings
@given(face=st.integers(1, 2**128 - 1), days_left=st.integers(1, 36_500), rate=rates)
def test_rounding_never_favours_the_seller(face: int, days_left: int, rate: int) -> None:
    """The price is rounded down, so the rate a sale at the quoted price implies (as DiscountSold
    reports it) is never below the quoted rate."""
    price = discount_price(face, days_left, rate)
    assume(price > 0)
    assert implied_annual_rate_bps(face, price, days_left * DAY) >= min(rate, 2**32 - 1)


def test_an_implied_rate_beyond_uint32_is_capped_as_the_event_caps_it() -> None:
    """DiscountSold carries the rate as a uint32: a sale at a token price (1 for 10^30 due in a
    second) implies more, and the ledger reports 2^32 - 1; the index and the API must agree."""
    assert implied_annual_rate_bps(10**30, 1, 1) == 2**32 - 1
    assert implied_annual_rate_bps(2, 1, SECONDS_PER_YEAR) == 10_000  # 100% a year, under the cap


def test_pricing_refuses_negative_inputs() -> None:
    for bad in ((-1, 1, 1), (1, -1, 1), (1, 1, -1)):
        with pytest.raises(ValueError):
            discount_price(*bad)
    for bad_rate in ((100, 0, DAY), (100, 101, DAY), (100, 90, 0)):
        with pytest.raises(ValueError):
            implied_annual_rate_bps(*bad_rate)
