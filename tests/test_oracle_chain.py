"""The oracle against the embedded chain: readings go through the gateway's checks and the relayer,
and every story ends on chain (confirmed once, or nothing paid).

Each test enrols its own warehouse (two RFID portals, one weighbridge, 2 of 3) in the shared world
and allow-lists the world's relayer: about four transactions per test (py-evm is slow).
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from oracle_support import chain_ranges, confirmations, enrol_warehouse
from world import DAY, DEFAULT_QUANTITY, World

from chain_client.errors import NodeUnavailable
from chain_client.models import CertificateStatus, OrderStatus
from chain_client.receipts import DeviceEnrolment, ReadingKind, sign_observation
from oracle.chainview import SystemView
from oracle.devices import DeviceSigner, MemorySequence, ReadingContext
from oracle.gateway import Gateway, Verdict
from oracle.keeper import Keeper
from oracle.relayer import PreparedTx, Relayer
from oracle.service import OracleService, deployment_mark
from oracle.settings import OracleSettings
from oracle.simulator import malleate
from oracle.store import NotResolvable, OrderState, Store, StoreOfAnotherChain
from oracle.submitter import ChainSubmitter
from oracle.validation import Reason
from oracle.wire import SignedReading

CARTON_G = 12_000
COUNT, WEIGHT = ReadingKind.CARTON_COUNT, ReadingKind.NET_WEIGHT_GRAMS


class Crash(BaseException):
    """The relayer process dying at a chosen moment."""


@dataclass
class Rig:
    world: World
    warehouse: bytes
    order_id: int
    rfid1: DeviceSigner
    rfid2: DeviceSigner
    scale: DeviceSigner
    store: Store
    view: SystemView
    gateway: Gateway
    settings: OracleSettings

    def enrol(self, devices: list[DeviceSigner], threshold: int = 2) -> None:
        self.world.oracle.rotate_devices(
            self.world.cast.admin,
            self.warehouse,
            [DeviceEnrolment(d.address, int(d.kind)) for d in devices],
            threshold,
            3_600,
            chain_ranges(),
        )

    def context(self, **changes: int) -> ReadingContext:
        version = self.world.oracle.warehouse(self.warehouse).device_set_version
        fields = {
            "order_id": self.order_id,
            "warehouse": self.warehouse,
            "goods_hash": self.world.goods,
            "device_set_version": version,
        }
        return ReadingContext(**{**fields, **changes})  # type: ignore[arg-type]

    def reading(
        self, device: DeviceSigner, value: int, *, age: int = 60, valid_for: int = 3_600, **changes: int
    ) -> SignedReading:
        observation, signature = device.observe(
            self.context(**changes), value, observed_at=self.view.now() - age, valid_for=valid_for
        )
        return SignedReading(observation, signature)

    def send(self, reading: SignedReading | bytes) -> Verdict:
        payload = reading if isinstance(reading, bytes) else reading.encode()
        return self.gateway.ingest(payload, "test")

    def relayer(self, **kw: object) -> Relayer:
        submitter = ChainSubmitter(self.world.system, self.world.cast.relayer, self.view.lock)
        return Relayer(self.store, self.view, submitter, self.settings, receipt_timeout=10, **kw)  # type: ignore[arg-type]

    def state(self) -> OrderState | None:
        record = self.store.order(self.order_id)
        return record.state if record else None

    def confirmations(self) -> int:
        return confirmations(self.world, self.order_id)


@pytest.fixture
def rig(world: World, tmp_path: Path) -> Rig:
    warehouse, (rfid1, rfid2, scale) = enrol_warehouse(world, [COUNT, COUNT, WEIGHT])
    order_id = world.open_order(warehouse=warehouse, expected_quantity=1_000)
    store = Store(tmp_path / "oracle.db")
    view = SystemView(world.system)
    settings = OracleSettings(
        carton_weight_grams=CARTON_G, retry_base=0.01, retry_max=0.05, db=tmp_path / "o.db"
    )
    return Rig(world, warehouse, order_id, rfid1, rfid2, scale, store, view,
               Gateway(store, view, clock_skew=30), settings)  # fmt: skip


# ---------------------------------------------------------------------- the good path


def test_agreeing_readings_confirm_on_chain_once(rig: Rig) -> None:
    assert rig.send(rig.reading(rig.rfid1, 980)).accepted
    assert rig.send(rig.reading(rig.scale, 980 * CARTON_G + 3_000)).accepted
    relayer = rig.relayer()
    relayer.step()
    record = rig.store.order(rig.order_id)
    assert record is not None and record.state == OrderState.CONFIRMED, record
    order = rig.world.ledger.order(rig.order_id)
    assert order.status == OrderStatus.CONFIRMED and order.delivered_quantity == 980
    assert record.root_certificate_id == order.root_certificate_id
    relayer.step()
    assert rig.confirmations() == 1


# ---------------------------------------------------------------------- refused at the gateway


def test_replay_of_the_same_observation(rig: Rig, tmp_path: Path) -> None:
    first, weight = rig.reading(rig.rfid1, 1_000), rig.reading(rig.scale, 1_000 * CARTON_G)
    verdict = rig.send(first)
    assert verdict.accepted and rig.send(weight).accepted
    # The store has it: sent again it is answered as the first time, and stored once.
    again = rig.send(first)
    assert again.accepted and again.duplicate and again.observation_id == verdict.observation_id
    assert len(rig.store.observations(rig.order_id)) == 2
    rig.relayer().step()
    assert rig.state() == OrderState.CONFIRMED
    # A gateway with an empty database still refuses it: the chain has used the sequence.
    fresh = Gateway(Store(tmp_path / "other.db"), rig.view, clock_skew=30)
    assert fresh.ingest(first.encode(), "test").reason in (Reason.REPLAYED, Reason.ORDER_NOT_OPEN)
    assert rig.confirmations() == 1


def test_signatures_for_another_chain_or_deployment(rig: Rig) -> None:
    w = rig.world
    for chain_id, oracle in ((w.chain.chain_id + 1, w.oracle.address), (w.chain.chain_id, w.ledger.address)):
        other = DeviceSigner(rig.rfid1.account, COUNT, MemorySequence(500), chain_id=chain_id, oracle=oracle)
        assert rig.send(rig.reading(other, 1_000)).reason == Reason.SIGNER_MISMATCH


def test_expired_stale_and_future_readings(rig: Rig) -> None:
    assert rig.send(rig.reading(rig.rfid1, 1_000, age=120, valid_for=60)).reason == Reason.EXPIRED
    assert rig.send(rig.reading(rig.rfid1, 1_000, age=3_700, valid_for=7_200)).reason == Reason.STALE
    assert rig.send(rig.reading(rig.rfid1, 1_000, age=-600)).reason == Reason.FROM_FUTURE


def test_malleated_and_garbage_signatures(rig: Rig) -> None:
    good = rig.reading(rig.rfid1, 1_000)
    assert rig.send(SignedReading(good.observation, malleate(good.signature))).reason == Reason.HIGH_S
    for v in (0, 1):
        assert (
            rig.send(SignedReading(good.observation, good.signature[:64] + bytes([v]))).reason == Reason.BAD_V
        )
    garbage = SignedReading(good.observation, os.urandom(64) + b"\x1b")
    assert rig.send(garbage).reason in (Reason.INVALID_SIGNATURE, Reason.SIGNER_MISMATCH, Reason.HIGH_S)
    impostor: LocalAccount = Account.create()
    forged = SignedReading(
        good.observation,
        sign_observation(impostor, good.observation, rig.view.chain_id, rig.view.oracle_address),
    )
    assert rig.send(forged).reason == Reason.SIGNER_MISMATCH
    assert rig.send(b'{"orderId": 1}').reason == Reason.MALFORMED
    assert rig.send(good).accepted  # the honest original is still good


def test_out_of_range_values(rig: Rig) -> None:
    assert rig.send(rig.reading(rig.rfid1, 100_001)).reason == Reason.OUT_OF_RANGE
    assert rig.send(rig.reading(rig.scale, 999)).reason == Reason.OUT_OF_RANGE


def test_revoked_device_and_old_device_set(rig: Rig) -> None:
    old = rig.reading(rig.rfid2, 1_000)  # signed under version 1
    rig.enrol([rig.rfid1, rig.scale])  # rfid2 rotated out; version 2
    assert rig.send(old).reason == Reason.STALE_DEVICE_SET
    assert rig.send(rig.reading(rig.rfid2, 1_000)).reason == Reason.UNKNOWN_DEVICE
    assert rig.send(rig.reading(rig.rfid1, 1_000)).accepted


def test_readings_accepted_before_a_rotation_are_not_submitted(rig: Rig) -> None:
    assert rig.send(rig.reading(rig.rfid1, 1_000)).accepted
    assert rig.send(rig.reading(rig.scale, 1_000 * CARTON_G)).accepted
    rig.enrol([rig.rfid1, rig.rfid2, rig.scale])  # same devices, new version
    rig.relayer().step()
    assert rig.state() == OrderState.COLLECTING
    assert rig.world.ledger.order(rig.order_id).status == OrderStatus.OPEN


# ---------------------------------------------------------------------- agreement


def test_duplicate_device_cannot_pad_the_quorum(rig: Rig) -> None:
    rig.enrol([rig.rfid1, rig.rfid2, rig.scale], threshold=3)
    for _ in range(3):
        assert rig.send(rig.reading(rig.rfid1, 1_000)).accepted  # three readings, one device
    assert rig.send(rig.reading(rig.scale, 1_000 * CARTON_G)).accepted
    rig.relayer().step()
    record = rig.store.order(rig.order_id)
    assert record is not None and record.state == OrderState.COLLECTING and "2 of 3" in record.detail
    assert rig.world.ledger.order(rig.order_id).status == OrderStatus.OPEN


def test_a_quorum_of_one_sensor_kind_only_waits(rig: Rig) -> None:
    assert rig.send(rig.reading(rig.rfid1, 1_000)).accepted
    assert rig.send(rig.reading(rig.rfid2, 1_000)).accepted
    rig.relayer().step()
    record = rig.store.order(rig.order_id)
    assert record is not None and record.state == OrderState.COLLECTING
    assert "NET_WEIGHT_GRAMS" in record.detail
    assert rig.world.ledger.order(rig.order_id).status == OrderStatus.OPEN


def test_rfid_and_weight_disagreeing_is_disputed_and_nothing_is_paid(rig: Rig) -> None:
    payee = rig.world.cast.supplier1.address
    before = rig.world.token.balance_of(payee), rig.world.token.balance_of(rig.world.ledger.address)
    assert rig.send(rig.reading(rig.rfid1, 1_000)).accepted
    assert rig.send(rig.reading(rig.scale, 700 * CARTON_G)).accepted  # 30% light
    relayer = rig.relayer()
    relayer.step()
    assert rig.state() == OrderState.DISPUTED
    assert [a.kind for a in rig.store.alerts()] == ["disputed"]
    assert rig.send(rig.reading(rig.rfid2, 1_000)).accepted  # more readings change nothing
    relayer.step()
    assert rig.state() == OrderState.DISPUTED
    assert rig.world.ledger.order(rig.order_id).status == OrderStatus.OPEN
    after = rig.world.token.balance_of(payee), rig.world.token.balance_of(rig.world.ledger.address)
    assert after == before


def test_a_recount_resolves_a_dispute_with_new_readings_only(rig: Rig) -> None:
    count, light = rig.reading(rig.rfid1, 1_000), rig.reading(rig.scale, 700 * CARTON_G)
    assert rig.send(count).accepted and rig.send(light).accepted
    relayer = rig.relayer()
    relayer.step()
    assert rig.state() == OrderState.DISPUTED
    with pytest.raises(ValueError, match="say why"):
        rig.store.resolve(rig.order_id, "  ")

    assert rig.store.resolve(rig.order_id, "scale recalibrated, goods weighed again") == 2
    record = rig.store.order(rig.order_id)
    assert record is not None and record.state == OrderState.COLLECTING
    assert "recount, 2 readings set aside" in record.detail
    assert [a.kind for a in rig.store.alerts()] == ["resolved", "disputed"]
    assert rig.store.observations(rig.order_id) == []
    # The disputed readings stay refused: sent again they are replays, and set aside they don't count.
    assert [rig.send(r).reason for r in (count, light)] == [Reason.REPLAYED, Reason.REPLAYED]
    relayer.step()
    assert rig.state() == OrderState.COLLECTING and rig.confirmations() == 0
    # A reading observed a minute before the recount (queued in the broker while the oracle was
    # down, say) is no new reading either, whenever it arrives.
    stale = rig.send(rig.reading(rig.rfid2, 1_000, age=60))
    assert (stale.accepted, stale.reason) == (False, Reason.REPLAYED) and "before the recount" in stale.detail
    assert rig.send(rig.reading(rig.scale, 1_000 * CARTON_G, age=0)).accepted  # the new weighing
    relayer.step()
    assert rig.state() == OrderState.COLLECTING  # one device is no quorum: the old count is gone
    assert rig.send(rig.reading(rig.rfid2, 1_000, age=0)).accepted
    relayer.step()
    assert rig.state() == OrderState.CONFIRMED and rig.confirmations() == 1
    assert rig.world.ledger.order(rig.order_id).delivered_quantity == 1_000


def test_a_dispute_from_wrong_expectations_is_judged_again_with_the_same_readings(rig: Rig) -> None:
    # The order's cartons are heavier than configured: the truthful scale looks 25% heavy.
    assert rig.send(rig.reading(rig.rfid1, 1_000)).accepted
    assert rig.send(rig.reading(rig.scale, 1_000 * 15_000)).accepted
    relayer = rig.relayer()
    relayer.step()
    assert rig.state() == OrderState.DISPUTED
    rig.store.register_order(
        rig.order_id, carton_weight_grams=15_000, count_tolerance=None, weight_tolerance_pct=None
    )
    relayer.step()
    assert rig.state() == OrderState.DISPUTED  # corrected expectations alone reopen nothing
    assert rig.store.resolve(rig.order_id, "cartons are 15 kg", recount=False) == 0
    relayer.step()
    assert rig.state() == OrderState.CONFIRMED and rig.confirmations() == 1


def test_only_a_disputed_order_can_be_resolved(rig: Rig) -> None:
    with pytest.raises(NotResolvable, match="unknown to this oracle"):
        rig.store.resolve(rig.order_id, "no readings yet")
    assert rig.send(rig.reading(rig.rfid1, 1_000)).accepted
    with pytest.raises(NotResolvable, match=r"neither disputed nor failed \(collecting\)"):
        rig.store.resolve(rig.order_id, "not disputed")
    assert rig.store.alerts() == [] and len(rig.store.observations(rig.order_id)) == 1


# ---------------------------------------------------------------------- the relayer


@pytest.mark.parametrize("moment", ["recorded", "broadcast"])
def test_relayer_killed_between_signing_and_submitting(rig: Rig, moment: str) -> None:
    assert rig.send(rig.reading(rig.rfid1, 1_000)).accepted
    assert rig.send(rig.reading(rig.scale, 1_000 * CARTON_G)).accepted

    def die(at: str, order_id: int) -> None:
        if at == moment:
            raise Crash

    with pytest.raises(Crash):
        rig.relayer(crash_hook=die).step()
    record = rig.store.order(rig.order_id)
    assert record is not None and record.state == OrderState.SUBMITTING and record.tx_hash
    # Restarted (new objects, same database); the nonce counter of the dead process is gone too.
    from chain_client.transactions import NonceManager

    rig.world.chain.nonces = NonceManager()
    restarted = rig.relayer()
    restarted.step()
    restarted.step()
    final = rig.store.order(rig.order_id)
    assert final is not None and final.state == OrderState.CONFIRMED and final.tx_hash == record.tx_hash
    assert rig.confirmations() == 1


def test_a_signed_receipt_the_store_could_not_record_gives_its_nonce_back(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relayer records each transaction before sending it; when that record fails, the signed
    transaction is never sent, and the next one must reuse its nonce, not wait behind a gap."""
    assert rig.send(rig.reading(rig.rfid1, 1_000)).accepted
    assert rig.send(rig.reading(rig.scale, 1_000 * CARTON_G)).accepted
    real = rig.store.set_state
    failures: list[str] = []

    def disk_full_once(order_id: int, state: OrderState, detail: str, **fields: Any) -> None:
        if state == OrderState.SUBMITTING and not failures:
            failures.append(detail)
            raise sqlite3.OperationalError("database or disk is full")
        real(order_id, state, detail, **fields)

    monkeypatch.setattr(rig.store, "set_state", disk_full_once)
    relayer = rig.relayer()
    relayer.step()  # the order's failure is logged and backed off; nothing was sent
    assert failures and rig.confirmations() == 0
    monkeypatch.setattr(rig.store, "set_state", real)
    rig.store.set_state(rig.order_id, OrderState.COLLECTING, "disk freed", dirty=True)
    relayer.step()
    assert rig.state() == OrderState.CONFIRMED and rig.confirmations() == 1


def test_a_contract_refusal_is_final(rig: Rig) -> None:
    rig.world.oracle.set_relayer(rig.world.cast.admin, rig.world.cast.relayer.address, False)
    assert rig.send(rig.reading(rig.rfid1, 1_000)).accepted
    assert rig.send(rig.reading(rig.scale, 1_000 * CARTON_G)).accepted
    relayer = rig.relayer()
    relayer.step()
    record = rig.store.order(rig.order_id)
    assert record is not None and record.state == OrderState.FAILED
    assert record.error_name == "RelayerNotAllowed"
    rig.world.oracle.set_relayer(rig.world.cast.admin, rig.world.cast.relayer.address, True)
    rig.store.mark_dirty(rig.order_id)
    relayer.step()
    assert rig.state() == OrderState.FAILED and rig.confirmations() == 0
    # Once the cause is put right, a person reopens the order; the same readings then confirm it.
    assert rig.store.resolve(rig.order_id, "relayer back on the allow-list", recount=False) == 0
    reopened = rig.store.order(rig.order_id)
    assert reopened is not None and reopened.error_name is None and "failed order resolved" in reopened.detail
    relayer.step()
    assert rig.state() == OrderState.CONFIRMED and rig.confirmations() == 1


def test_gateway_and_relayer_restart_submit_nothing_twice(rig: Rig, tmp_path: Path) -> None:
    readings = [rig.reading(rig.rfid1, 1_000), rig.reading(rig.scale, 1_000 * CARTON_G)]
    for r in readings:
        assert rig.send(r).accepted
    rig.relayer().step()
    assert rig.state() == OrderState.CONFIRMED
    rig.store.close()
    # The restarted gateway: same database, devices (or the broker) send everything again.
    rig.store = Store(rig.store.path)
    rig.gateway = Gateway(rig.store, rig.view, clock_skew=30)
    again = [rig.send(r) for r in readings]
    assert all(v.accepted and v.duplicate for v in again) and rig.store.rejections() == []
    rig.relayer().step()
    assert rig.state() == OrderState.CONFIRMED and rig.confirmations() == 1


def test_a_reading_after_the_orders_deadline_neither_enters_nor_spoils_an_on_time_receipt(rig: Rig) -> None:
    """The goods were counted and weighed before the order's deadline; the second portal reads
    them after it. The ledger would refuse the whole receipt (ReceiptAfterDeadline, its time being
    the latest reading's): the late reading is refused at intake, and one kept by an older
    release is left out of the receipt, which confirms."""
    rig.order_id = rig.world.open_order(warehouse=rig.warehouse, expected_quantity=1_000, deadline_in=600)
    assert rig.send(rig.reading(rig.rfid1, 1_000, age=30)).accepted
    assert rig.send(rig.reading(rig.scale, 1_000 * CARTON_G, age=30)).accepted
    rig.world.chain.advance_time(700)
    late = rig.reading(rig.rfid2, 1_000, age=5)
    assert rig.send(late).reason == Reason.AFTER_ORDER_DEADLINE
    assert isinstance(rig.store.accept(None, late, "older release"), int)
    rig.relayer().step()
    assert rig.state() == OrderState.CONFIRMED and rig.confirmations() == 1
    assert rig.world.ledger.order(rig.order_id).delivered_quantity == 1_000


def test_an_order_that_times_out_and_is_cancelled_on_chain_is_not_left_collecting(rig: Rig) -> None:
    """The portals counted, the weighbridge never read: the order waited in `collecting` (pending
    in `oracle status`, no alert) past the point no reading could confirm it, and after its issuer
    cancelled it on chain, until the oracle was restarted."""
    rig.order_id = rig.world.open_order(warehouse=rig.warehouse, expected_quantity=1_000, deadline_in=600)
    assert rig.send(rig.reading(rig.rfid1, 1_000, age=30)).accepted
    assert rig.send(rig.reading(rig.rfid2, 1_000, age=30)).accepted
    relayer = rig.relayer(recheck_interval=0.0)
    relayer.step()
    assert rig.state() == OrderState.COLLECTING
    rig.world.chain.advance_time(600 + 3_600 + 1)  # past the deadline and the freshness window
    relayer.step()
    record = rig.store.order(rig.order_id)
    assert record is not None and (record.state, record.error_name) == (OrderState.FAILED, "DeadlinePassed")
    assert [a.kind for a in rig.store.alerts() if a.order_id == rig.order_id] == ["failed"]
    # Its issuer may cancel it from this very moment (refunded), and does: the failure the oracle
    # recorded becomes what the chain says, cancelled, with nothing left for a person to do.
    rig.world.ledger.cancel_order(rig.world.cast.issuer, rig.order_id)
    relayer.step()
    record = rig.store.order(rig.order_id)
    assert record is not None and record.state == OrderState.CANCELLED, record
    assert [a.kind for a in rig.store.alerts() if a.order_id == rig.order_id] == [
        "cancelled",
        "failed",
    ]  # newest first
    assert rig.confirmations() == 0


def test_a_conflicting_count_stored_while_the_receipt_is_signed_is_disputed(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Portal B's short count reaches the HTTP intake while the pipeline signs the receipt of A
    and the weighbridge: that transaction is never sent, and the order is judged with B's count."""
    assert rig.send(rig.reading(rig.rfid1, 1_000)).accepted
    assert rig.send(rig.reading(rig.scale, 1_000 * CARTON_G)).accepted
    relayer = rig.relayer()
    real = relayer.submitter.prepare
    during: list[Verdict] = []

    def prepare(readings: Any) -> Any:
        if not during:
            during.append(rig.send(rig.reading(rig.rfid2, 700)))
        return real(readings)

    monkeypatch.setattr(relayer.submitter, "prepare", prepare)
    relayer.step()
    relayer.step()
    assert during[0].accepted
    assert rig.state() == OrderState.DISPUTED and rig.confirmations() == 0
    assert rig.world.ledger.order(rig.order_id).status == OrderStatus.OPEN


# ---------------------------------------------------------------------- the keeper


def test_keeper_run_twice_pays_each_certificate_once(world: World, tmp_path: Path) -> None:
    cast, ledger, token = world.cast, world.ledger, world.token
    _, root_a = world.certificate_for(maturity_in=10 * DAY)
    _, root_b = world.certificate_for(maturity_in=10 * DAY)
    split_id, _ = ledger.split_to(cast.supplier1, root_b, cast.supplier2.address, 10_000_00)
    _, later = world.certificate_for(maturity_in=100 * DAY)  # not mature: untouched
    frozen_order, frozen = world.certificate_for(maturity_in=10 * DAY)
    ledger.freeze(cast.regulator, frozen, b"\x01" * 32)
    world.chain.advance_time(11 * DAY)
    before = {a: token.balance_of(a) for a in (cast.supplier1.address, cast.supplier2.address)}

    store = Store(tmp_path / "keeper.db")
    keeper = Keeper(world.system, cast.relayer, store, batch=2)  # small batches: two transactions
    first = keeper.run_once()
    assert sorted(first.settled) == sorted([root_a, root_b, split_id]) and len(first.transactions) == 2
    second = Keeper(world.system, cast.relayer, store).run_once()  # a second keeper, or a restart
    assert second.settled == [] and second.transactions == []

    paid = {a: token.balance_of(a) - before[a] for a in before}
    value = {i: ledger.certificate(i).value for i in (root_a, root_b, split_id)}
    assert paid[cast.supplier1.address] == value[root_a] + value[root_b]
    assert paid[cast.supplier2.address] == value[split_id]
    assert ledger.certificate(later).status == CertificateStatus.LIVE
    assert ledger.certificate(frozen).status == CertificateStatus.LIVE
    assert store.settled_count() == 3
    assert frozen_order


def test_a_keeper_whose_listing_fails_once_pays_on_its_next_run(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, root = world.certificate_for(maturity_in=10 * DAY)
    keeper = Keeper(world.system, world.cast.relayer)
    assert keeper.run_once().settled == []
    world.chain.advance_time(11 * DAY)
    real = keeper._certificate_ids
    calls: list[int] = []

    def flaky(order_id: int, from_block: int, to_block: int) -> list[int]:
        calls.append(order_id)
        if len(calls) == 1:
            raise NodeUnavailable("http://node", "getLogs timed out")
        return real(order_id, from_block, to_block)

    monkeypatch.setattr(keeper, "_certificate_ids", flaky)
    first = keeper.run_once()  # logged, kept scheduled
    assert first.settled == [] and len(first.failed_orders) == 1
    assert keeper.run_once().settled == [root]
    assert world.ledger.certificate(root).status == CertificateStatus.SETTLED


def test_one_order_whose_listing_keeps_failing_holds_up_no_other(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Order A's listing fails for ever (a node refusing the range); B matured later and is paid
    all the same. A backs off (skipping 0, 1, 3... runs), alerts, and is paid once it lists."""
    order_a, root_a = world.certificate_for(maturity_in=10 * DAY)
    order_b, root_b = world.certificate_for(maturity_in=11 * DAY)
    store = Store(tmp_path / "k.db")
    keeper = Keeper(world.system, world.cast.relayer, store, retry_attempts=2)
    keeper.run_once()
    world.chain.advance_time(12 * DAY)
    real = keeper._certificate_ids
    tries: list[int] = []

    def listing(order_id: int, from_block: int, to_block: int) -> list[int]:
        if order_id == order_a:
            tries.append(order_id)
            raise ValueError({"code": -32005, "message": "Requested range exceeds maximum range limit"})
        return real(order_id, from_block, to_block)

    monkeypatch.setattr(keeper, "_certificate_ids", listing)
    runs = [keeper.run_once() for _ in range(4)]
    assert runs[0].settled == [root_b] and all(r.failed_orders == [order_a] for r in (runs[0], runs[1]))
    assert world.ledger.certificate(root_a).status == CertificateStatus.LIVE
    assert len(tries) == 3  # runs 1 and 2, then run 3 skipped, run 4 tried
    assert [a.kind for a in store.alerts()] == ["keeper"]  # at the 2nd failure
    monkeypatch.undo()
    for _ in range(4):
        keeper.run_once()
    assert world.ledger.certificate(root_a).status == CertificateStatus.SETTLED


def test_the_keeper_lists_in_bounded_windows_from_the_confirmation(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen open, then confirmed: its certificates are searched for from a block it was open at,
    never from the deployment block, and no query spans more than `logs_range` blocks."""
    order_id = world.open_order(maturity_in=10 * DAY)
    keeper = Keeper(world.system, world.cast.relayer, logs_range=3)
    keeper.run_once()
    open_at = keeper._open[order_id]
    for _ in range(4):  # a few blocks between the keeper's look and the confirmation
        world.chain.advance_time(1)
    root = world.confirm(order_id, DEFAULT_QUANTITY)
    split_id, _ = world.ledger.split_to(world.cast.supplier1, root, world.cast.supplier2.address, 10_000_00)
    world.chain.advance_time(11 * DAY)
    real = keeper._certificate_ids
    ranges: list[tuple[int, int]] = []

    def spy(order: int, from_block: int, to_block: int) -> list[int]:
        ranges.append((from_block, to_block))
        return real(order, from_block, to_block)

    monkeypatch.setattr(keeper, "_certificate_ids", spy)
    assert sorted(keeper.run_once().settled) == sorted([root, split_id])
    assert ranges[0][0] == open_at > world.system.deployment.deployment_block
    assert all(b - a < 3 for a, b in ranges) and len(ranges) >= 2
    assert all(ranges[i + 1][0] == ranges[i][1] + 1 for i in range(len(ranges) - 1))


def test_a_keeper_run_spends_at_most_its_budget_of_log_windows(world: World) -> None:
    """After a restart, orders first seen confirmed are listed from the deployment block: one run
    takes at most `logs_budget` getLogs windows (the pipeline's other stages get their turn), and
    the listing goes on from there on the next runs."""
    _, root = world.certificate_for(maturity_in=10 * DAY)
    world.chain.advance_time(11 * DAY)
    span = world.system.chain.w3.eth.block_number - world.system.deployment.deployment_block + 1
    keeper = Keeper(world.system, world.cast.relayer, logs_range=max(1, span // 3), logs_budget=2)
    runs = 0
    while world.ledger.certificate(root).status != CertificateStatus.SETTLED:
        before = keeper.reads.log_queries
        keeper.run_once()
        assert keeper.reads.log_queries - before <= 2
        runs += 1
        assert runs < 500
    assert runs > 1


def test_the_keeper_lists_until_a_block_is_stamped_at_maturity(world: World) -> None:
    """The keeper's clock (`passed()`) may reach maturity before the producer's does: a split is
    allowed while block.timestamp < maturity, so the listing is not closed before a block stamped
    at or after maturity, and a split mined meanwhile is still found and paid."""
    cast = world.cast
    order_id, root = world.certificate_for(maturity_in=10 * DAY)
    maturity = world.ledger.order(order_id).maturity
    now = {"t": maturity}  # the keeper thinks maturity has passed; the chain is 10 days behind
    keeper = Keeper(world.system, cast.relayer, clock=lambda: now["t"])
    keeper.run_once()  # the root's settlement is refused (not matured on chain): tried again
    assert order_id in keeper._listing and keeper._listing[order_id].end_block is None
    split_id, _ = world.ledger.split_to(cast.supplier1, root, cast.supplier2.address, 10_000_00)
    keeper.run_once()
    assert split_id in keeper._due[order_id]
    world.chain.advance_time(11 * DAY)
    now["t"] = world.system.chain.now()
    keeper.run_once()
    assert order_id not in keeper._listing
    for certificate in (root, split_id):
        assert world.ledger.certificate(certificate).status == CertificateStatus.SETTLED


def test_the_keeper_does_not_hold_the_chain_lock_while_it_waits_for_a_receipt(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    _, root = world.certificate_for(maturity_in=10 * DAY)
    world.chain.advance_time(11 * DAY)
    lock = threading.RLock()
    keeper = Keeper(world.system, world.cast.relayer, lock=lock)
    real = world.system.tx.receipt
    looks: list[int] = []
    others: list[bool] = []

    def slow(tx_hash: str, timeout: float = 0.0) -> object:
        looks.append(1)
        if len(looks) == 1:
            return None  # not mined at the first look: the keeper waits
        return real(tx_hash, timeout)

    def waiting(seconds: float) -> None:  # while the keeper waits, another thread wants the lock
        got: list[bool] = []

        def other() -> None:
            got.append(lock.acquire(timeout=2))
            if got[-1]:
                lock.release()

        t = threading.Thread(target=other)
        t.start()
        t.join()
        others.extend(got)

    monkeypatch.setattr(world.system.tx, "receipt", slow)
    monkeypatch.setattr("oracle.keeper.time.sleep", waiting)
    assert keeper.run_once().settled == [root]
    assert others == [True]


@pytest.mark.parametrize("failure", ["broadcast-reached-the-node", "broadcast-lost", "receipt-wait"])
def test_a_settle_whose_send_failed_is_looked_for_then_sent_again_and_pays_once(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """The node went away during the broadcast (the batch may or may not have reached it) or while
    its receipt was awaited. The next run looks for it first, records it if it was mined and sends
    the same bytes again if it is not there; it never signs a second batch for the same
    certificates."""
    _, root = world.certificate_for(maturity_in=10 * DAY)
    world.chain.advance_time(11 * DAY)
    supplier = world.cast.supplier1.address
    before = world.token.balance_of(supplier)
    store = Store(tmp_path / "keeper.db")
    keeper = Keeper(world.system, world.cast.relayer, store)
    tx = world.system.tx
    real_broadcast, real_receipt = tx.broadcast, tx.receipt
    sent: list[str] = []

    def broadcast(prepared: Any) -> None:
        sent.append(prepared.tx_hash)
        if failure != "broadcast-lost":
            real_broadcast(prepared)
        if failure.startswith("broadcast"):
            raise NodeUnavailable("http://node", "connection reset")

    def receipt(tx_hash: str, timeout: float = 0.0) -> Any:
        raise NodeUnavailable("http://node", "connection reset")

    monkeypatch.setattr(tx, "broadcast", broadcast)
    if failure == "receipt-wait":
        monkeypatch.setattr(tx, "receipt", receipt)
    with pytest.raises(NodeUnavailable):
        keeper.run_once()

    def working(prepared: Any) -> None:
        sent.append(prepared.tx_hash)
        real_broadcast(prepared)

    monkeypatch.setattr(tx, "broadcast", working)
    monkeypatch.setattr(tx, "receipt", real_receipt)
    second = keeper.run_once()
    assert second.settled == [root] and second.transactions == sent[:1]
    # The same bytes again if they were lost, nothing if the node has them.
    assert sent == ([sent[0], sent[0]] if failure == "broadcast-lost" else [sent[0]])
    assert store.settled_count() == 1
    assert keeper.run_once().settled == []
    assert world.token.balance_of(supplier) - before == world.ledger.certificate(root).value


def test_a_receipt_signed_by_a_rotated_relayer_key_is_not_repriced(world: World) -> None:
    """After a restart with another key, the recorded bytes of the old one can still be sent as
    they are; signing a replacement for them is not this key's to do."""
    old = world.cast.relayer
    fn = world.token.contract.functions.approve(world.ledger.address, 1)
    prepared = world.system.tx.prepare(old, fn)
    world.chain.nonces.forget(old.address)
    submitter = ChainSubmitter(world.system, world.cast.outsider)
    assert submitter.reprice(PreparedTx(prepared.tx_hash, prepared.raw)) is None


def test_keeper_reads_an_order_once_until_it_is_due(world: World) -> None:
    """The keeper's schedule: a confirmed order is not read again before its maturity, an open one
    is read each run until it is confirmed, and a certificate split off before maturity, after the
    keeper first saw the order, is still paid."""
    cast, ledger = world.cast, world.ledger
    _, root = world.certificate_for(maturity_in=10 * DAY)
    waiting = world.open_order(maturity_in=10 * DAY)
    keeper = Keeper(world.system, cast.relayer)

    assert keeper.run_once().settled == []
    assert (keeper.reads.orders, keeper.reads.listings, keeper.reads.certificates) == (2, 0, 0)
    for _ in range(3):
        assert keeper.run_once().settled == []
    # Only the open order was read again, once per run; nothing was listed before maturity.
    assert (keeper.reads.orders, keeper.reads.listings, keeper.reads.certificates) == (5, 0, 0)

    split_id, _ = ledger.split_to(cast.supplier1, root, cast.supplier2.address, 10_000_00)
    waiting_root = world.confirm(waiting, DEFAULT_QUANTITY)
    world.chain.advance_time(11 * DAY)
    first = keeper.run_once()
    assert sorted(first.settled) == sorted([root, split_id, waiting_root])
    assert keeper.reads.listings == 2  # each order's certificates listed once, at maturity
    reads = (keeper.reads.orders, keeper.reads.listings, keeper.reads.certificates)
    assert keeper.run_once().settled == []  # reads the three once more, finds them settled
    assert keeper.reads.certificates == reads[2] + 3
    quiet = (keeper.reads.orders, keeper.reads.listings, keeper.reads.certificates)
    assert quiet == (reads[0], 2, reads[2] + 3)
    assert keeper.run_once().settled == []
    assert (keeper.reads.orders, keeper.reads.listings, keeper.reads.certificates) == quiet


def test_unknown_devices_are_not_cached(world: World, tmp_path: Path) -> None:
    """Anyone can sign a reading with a fresh key naming itself as a device of an open order: each
    is refused unknown-device, leaves no cache entry and no inbox row."""
    warehouse, (rfid, _) = enrol_warehouse(world, [COUNT, WEIGHT])
    order_id = world.open_order(warehouse=warehouse)
    store = Store(tmp_path / "o.db")
    view = SystemView(world.system)
    gateway = Gateway(store, view, clock_skew=30)
    version = world.oracle.warehouse(warehouse).device_set_version
    context = ReadingContext(order_id, warehouse, world.goods, version)
    for _ in range(20):
        device = DeviceSigner(Account.create(), COUNT, MemorySequence(1), chain_id=world.chain.chain_id,
                              oracle=world.oracle.address)  # fmt: skip
        observation, signature = device.observe(context, 10, observed_at=view.now() - 10, valid_for=600)
        assert (
            gateway.ingest(SignedReading(observation, signature).encode(), "http").reason
            == Reason.UNKNOWN_DEVICE
        )
    stranger = DeviceSigner(Account.create(), COUNT, MemorySequence(1), chain_id=world.chain.chain_id,
                            oracle=world.oracle.address)  # fmt: skip
    observation, signature = stranger.observe(
        ReadingContext(order_id, b"\x07" * 32, world.goods, 1), 10, observed_at=view.now() - 10, valid_for=600
    )
    assert (
        gateway.ingest(SignedReading(observation, signature).encode(), "http").reason
        == Reason.WAREHOUSE_INACTIVE
    )
    assert gateway.ingest(rig_reading(rfid, context, view).encode(), "http").accepted
    assert len(view._kinds) == 1 and b"\x07" * 32 not in view._version
    assert store.inbox_count() == 0


def rig_reading(device: DeviceSigner, context: ReadingContext, view: SystemView) -> SignedReading:
    observation, signature = device.observe(context, 10, observed_at=view.now() - 10, valid_for=600)
    return SignedReading(observation, signature)


def test_a_confirmation_records_its_block_for_the_keeper(rig: Rig) -> None:
    assert rig.send(rig.reading(rig.rfid1, 1_000)).accepted
    assert rig.send(rig.reading(rig.scale, 1_000 * CARTON_G)).accepted
    rig.relayer().step()
    record = rig.store.order(rig.order_id)
    assert record is not None and record.state == OrderState.CONFIRMED and record.confirmed_block
    keeper = Keeper(rig.world.system, rig.world.cast.relayer, rig.store)
    keeper.run_once()
    assert [m[2] for m in keeper._maturing if m[1] == rig.order_id] == [record.confirmed_block]


# ---------------------------------------------------------------------- the store's deployment


def test_an_oracle_store_of_another_chain_or_deployment_is_refused(rig: Rig, tmp_path: Path) -> None:
    """Order ids are per deployment: a store kept across a reset development chain (redeployed to
    the same addresses) refused its readings with the old chain's states, `order 1 is confirmed`,
    with no word of why. The store records the deployment it first ran on, and an oracle on
    another is refused at start, in one line, before anything is judged."""
    settings = rig.settings.model_copy(update={"db": tmp_path / "bound.db"})
    relayer = rig.world.cast.relayer
    OracleService.build(settings, rig.world.system, relayer, keeper=False).close()
    OracleService.build(settings, rig.world.system, relayer, keeper=False).close()  # the same: fine
    with closing(sqlite3.connect(settings.db)) as db, db:
        db.execute("UPDATE deployment SET block_hash = ?", ("0x" + "ab" * 32,))  # another chain's
    with pytest.raises(StoreOfAnotherChain, match="belongs to another chain or deployment") as refused:
        OracleService.build(settings, rig.world.system, relayer, keeper=False)
    assert "move it aside" in str(refused.value)
    fresh = deployment_mark(rig.world.system)
    assert fresh.block_hash.startswith("0x") and fresh.block_hash != "0x" + "ab" * 32
