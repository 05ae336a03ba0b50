"""The oracle's parts without a chain: device keys and sequences, the wire format, signature form,
the gateway's checks against a fake chain view, the agreement rules, the store and the relayer's
state machine against a fake submitter."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import pytest
from eth_typing import ChecksumAddress
from oracle_support import CARTON_G, CHAIN_ID, GOODS, ORACLE, WAREHOUSE, FakeChain, account

from chain_client import errors, transactions
from chain_client.errors import NodeUnavailable, TransactionRejected
from chain_client.models import Certificate, CertificateStatus, Order, OrderStatus
from chain_client.receipts import Observation, ReadingKind, sign_observation
from chain_client.transactions import TxResult
from oracle.agreement import Disputed, Expectations, Ready, Waiting, decide
from oracle.devices import (
    DeviceError,
    DeviceFiles,
    DeviceSigner,
    FileSequence,
    MemorySequence,
    ReadingContext,
    create_device,
    load_device,
)
from oracle.gateway import Gateway
from oracle.keeper import Keeper
from oracle.relayer import Mined, NonceTooLow, PreparedTx, Relayer, observation_expectations
from oracle.retry import backoff_delay
from oracle.settings import OracleSettings
from oracle.simulator import malleate
from oracle.store import APPLICATION_ID, NotAnOracleStore, NotResolvable, OrderState, Store, StoreCannotOpen
from oracle.validation import Reason, check_signature_form
from oracle.wire import (
    MAX_PAYLOAD,
    MalformedReading,
    PayloadTooLarge,
    SignedReading,
    decode_reading,
    too_deep,
)

RFID_A, RFID_B, SCALE = account("rfid-a"), account("rfid-b"), account("scale")
KINDS = {
    RFID_A.address: ReadingKind.CARTON_COUNT,
    RFID_B.address: ReadingKind.CARTON_COUNT,
    SCALE.address: ReadingKind.NET_WEIGHT_GRAMS,
}
FAST_KDF = {"kdf": "pbkdf2", "iterations": 2}  # tests only: a real device keeps the default work


def signer(acct: object, seq_start: int = 1, chain_id: int = CHAIN_ID, oracle: str = ORACLE) -> DeviceSigner:
    from eth_account.signers.local import LocalAccount

    assert isinstance(acct, LocalAccount)
    return DeviceSigner(
        acct,
        KINDS[acct.address],
        MemorySequence(seq_start),
        chain_id=chain_id,
        oracle=oracle,  # type: ignore[arg-type]
    )


CONTEXT = ReadingContext(order_id=1, warehouse=WAREHOUSE, goods_hash=GOODS, device_set_version=1)


def fake_chain() -> FakeChain:
    chain = FakeChain()
    chain.devices = {a: int(k) for a, k in KINDS.items()}
    chain.orders[1] = OrderStatus.OPEN
    return chain


def reading(
    dev: DeviceSigner, value: int, chain: FakeChain, *, age: int = 60, valid_for: int = 3_600, **changes: int
) -> SignedReading:
    context = ReadingContext(**{**CONTEXT.__dict__, **changes})
    obs, sig = dev.observe(context, value, observed_at=chain.now_value - age, valid_for=valid_for)
    return SignedReading(obs, sig)


# ---------------------------------------------------------------------- devices


def test_keystore_is_encrypted_and_sequences_survive_a_restart(tmp_path: Path) -> None:
    files = DeviceFiles(tmp_path, "rfid-1")
    address = create_device(files, ReadingKind.CARTON_COUNT, "pw", **FAST_KDF)  # type: ignore[arg-type]
    text = files.keystore.read_text()
    assert "crypto" in json.loads(text) and RFID_A.key.hex() not in text
    assert oct(files.keystore.stat().st_mode & 0o777) == "0o600"

    dev, seq = load_device(files, "pw", chain_id=CHAIN_ID, oracle=ORACLE)
    assert dev.address == address and dev.kind == ReadingKind.CARTON_COUNT
    first = [dev.observe(CONTEXT, 10, observed_at=1, valid_for=10)[0].sequence for _ in range(3)]
    seq.close()
    dev, seq = load_device(files, "pw", chain_id=CHAIN_ID, oracle=ORACLE)
    again = dev.observe(CONTEXT, 10, observed_at=1, valid_for=10)[0].sequence
    seq.close()
    assert first == [1, 2, 3] and again == 4


def test_wrong_password_and_overwrite_are_refused(tmp_path: Path) -> None:
    files = DeviceFiles(tmp_path, "scale")
    create_device(files, ReadingKind.NET_WEIGHT_GRAMS, "pw", **FAST_KDF)  # type: ignore[arg-type]
    with pytest.raises(DeviceError, match=r"decrypt.*wrong CERTLEDGER_DEVICE_PASSWORD\?"):
        load_device(files, "not-pw", chain_id=CHAIN_ID, oracle=ORACLE)
    with pytest.raises(DeviceError, match="exists"):
        create_device(files, ReadingKind.NET_WEIGHT_GRAMS, "pw", **FAST_KDF)  # type: ignore[arg-type]


def test_two_processes_cannot_share_a_device_sequence(tmp_path: Path) -> None:
    path = tmp_path / "d.sequence"
    held = FileSequence(path)
    code = (
        "import sys; from pathlib import Path; from oracle.devices import FileSequence, DeviceError\n"
        "try:\n    FileSequence(Path(sys.argv[1]))\nexcept DeviceError:\n    sys.exit(3)\n"
    )
    other = subprocess.run([sys.executable, "-c", code, str(path)], timeout=60, env=os.environ.copy())
    held.close()
    assert other.returncode == 3


def test_sequence_is_on_disk_before_the_signature_is_returned(tmp_path: Path) -> None:
    seq = FileSequence(tmp_path / "d.sequence")
    dev = DeviceSigner(RFID_A, ReadingKind.CARTON_COUNT, seq, chain_id=CHAIN_ID, oracle=ORACLE)
    obs, _ = dev.observe(CONTEXT, 5, observed_at=1, valid_for=1)
    assert (tmp_path / "d.sequence").read_text().strip() == str(obs.sequence + 1)
    seq.close()


# ---------------------------------------------------------------------- wire and signature form


def test_wire_round_trip_and_malformed_payloads() -> None:
    chain = fake_chain()
    r = reading(signer(RFID_A), 1000, chain)
    assert decode_reading(r.encode()) == r
    body = r.to_json()
    bad_fields: list[dict[str, object]] = [
        {"value": -1},
        {"value": True},
        {"warehouse": "0x12"},
        {"device": "nobody"},
        {"sequence": 2**64},
    ]
    payloads = [b"not json", b"[]", b"{" + b" " * 5000 + b"}"]
    payloads += [json.dumps({**body, **change}).encode() for change in bad_fields]
    for bad in payloads:
        with pytest.raises(MalformedReading):
            decode_reading(bad)


def test_signature_form() -> None:
    chain = fake_chain()
    sig = reading(signer(RFID_A), 1000, chain).signature
    assert check_signature_form(sig) is None
    high = malleate(sig)
    assert check_signature_form(high).reason == Reason.HIGH_S  # type: ignore[union-attr]
    for v in (0, 1):
        refused = check_signature_form(sig[:64] + bytes([v]))
        assert refused is not None and refused.reason == Reason.BAD_V
    assert check_signature_form(sig[:64]).reason == Reason.BAD_SIGNATURE_LENGTH  # type: ignore[union-attr]
    assert check_signature_form(b"\x00" * 64 + b"\x1b").reason == Reason.INVALID_SIGNATURE  # type: ignore[union-attr]


# ---------------------------------------------------------------------- the gateway's checks


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "oracle.db")


def ingest(gateway: Gateway, r: SignedReading | bytes) -> Reason | None:
    payload = r if isinstance(r, bytes) else r.encode()
    verdict = gateway.ingest(payload, "test")
    assert not verdict.pending
    return verdict.reason


def test_gateway_refuses_each_bad_reading_with_its_reason(store: Store) -> None:
    chain = fake_chain()
    gw = Gateway(store, chain, clock_skew=30)
    a = signer(RFID_A)
    good = reading(a, 1000, chain)
    assert ingest(gw, good) is None
    twin = reading(signer(RFID_A, seq_start=good.observation.sequence), 999, chain)
    assert ingest(gw, twin) == Reason.SEQUENCE_REUSED
    assert ingest(gw, SignedReading(good.observation, malleate(good.signature))) == Reason.HIGH_S
    assert ingest(gw, SignedReading(good.observation, good.signature[:64] + b"\x00")) == Reason.BAD_V
    garbage = (1).to_bytes(32, "big") + (12345).to_bytes(32, "big") + b"\x1b"  # well-formed, meaningless
    assert ingest(gw, SignedReading(good.observation, garbage)) in (
        Reason.INVALID_SIGNATURE,
        Reason.SIGNER_MISMATCH,
    )
    assert ingest(gw, b"garbage") == Reason.MALFORMED
    # bytes.fromhex skips whitespace: 66 characters of it held 31 bytes, which the signature
    # check took and the chain's encoder did not (an unclassified failure, a security finding).
    spaced = {**good.to_json(), "warehouse": "0x" + "ab" * 15 + " " + "ab" * 16 + " "}
    assert ingest(gw, json.dumps(spaced).encode()) == Reason.MALFORMED
    spaced_signature = {**good.to_json(), "signature": "0x " + good.signature.hex()}
    assert ingest(gw, json.dumps(spaced_signature).encode()) == Reason.MALFORMED

    other_chain = signer(RFID_A, 100, chain_id=CHAIN_ID + 1)
    assert ingest(gw, reading(other_chain, 1000, chain)) == Reason.SIGNER_MISMATCH
    other_oracle = signer(RFID_A, 200, oracle="0x" + "0d" * 20)
    assert ingest(gw, reading(other_oracle, 1000, chain)) == Reason.SIGNER_MISMATCH
    impostor = account("impostor")
    obs = reading(signer(RFID_A, 300), 1000, chain).observation
    forged = SignedReading(obs, sign_observation(impostor, obs, CHAIN_ID, ORACLE))
    assert ingest(gw, forged) == Reason.SIGNER_MISMATCH

    b = signer(RFID_B, 10)
    assert ingest(gw, reading(b, 1000, chain, age=3_601, valid_for=7_200)) == Reason.STALE
    assert ingest(gw, reading(b, 1000, chain, age=-31)) == Reason.FROM_FUTURE
    assert ingest(gw, reading(b, 1000, chain, age=-29)) is None  # within the clock skew
    assert ingest(gw, reading(b, 1000, chain, age=100, valid_for=99)) == Reason.EXPIRED
    assert ingest(gw, reading(b, 0, chain)) == Reason.OUT_OF_RANGE
    assert ingest(gw, reading(b, 100_001, chain)) == Reason.OUT_OF_RANGE
    assert ingest(gw, reading(b, 1000, chain, device_set_version=0)) == Reason.STALE_DEVICE_SET
    assert ingest(gw, reading(b, 1000, chain, order_id=2)) == Reason.UNKNOWN_ORDER
    chain.orders[3] = OrderStatus.CONFIRMED
    assert ingest(gw, reading(b, 1000, chain, order_id=3)) == Reason.ORDER_NOT_OPEN
    assert ingest(gw, reading(b, 1000, chain, goods_hash=b"\x01" * 32)) == Reason.ORDER_MISMATCH  # type: ignore[arg-type]
    chain.used.add((RFID_B.address, 50))
    assert ingest(gw, reading(signer(RFID_B, 50), 1000, chain)) == Reason.REPLAYED
    chain.devices.pop(RFID_B.address)  # rotated out
    assert ingest(gw, reading(b, 1000, chain)) == Reason.UNKNOWN_DEVICE
    wrong_kind = DeviceSigner(
        SCALE, ReadingKind.CARTON_COUNT, MemorySequence(1), chain_id=CHAIN_ID, oracle=ORACLE
    )
    assert ingest(gw, reading(wrong_kind, 1000, chain)) == Reason.DEVICE_KIND_MISMATCH

    assert len(store.observations(1)) == 2
    assert store.inbox_count(processed=False) == 0


def test_a_reading_waits_in_the_inbox_while_the_node_is_down(store: Store) -> None:
    chain = fake_chain()
    gw = Gateway(store, chain, clock_skew=30)

    def down() -> None:
        raise NodeUnavailable("http://node", "connection refused")

    chain.fail = down
    verdict = gw.ingest(reading(signer(RFID_A), 1000, chain).encode(), "test")
    assert verdict.pending and store.inbox_count(processed=False) == 1
    chain.fail = None
    [verdict] = gw.process_pending()
    assert verdict.accepted and store.inbox_count(processed=False) == 0


# ---------------------------------------------------------------------- agreement


EXPECT = Expectations(carton_weight_grams=CARTON_G, count_tolerance=0, weight_tolerance_pct=2.0)
BOTH = frozenset({1, 2})


def readings(values: dict[object, int]) -> list[SignedReading]:
    chain = fake_chain()
    return [reading(signer(acct), v, chain) for acct, v in values.items()]


def test_agreeing_readings_are_ready_in_device_order() -> None:
    rs = readings({RFID_A: 1000, SCALE: 1000 * CARTON_G + 1000})
    decision = decide(rs, threshold=2, required_kinds=BOTH, expectations=EXPECT)
    assert isinstance(decision, Ready) and decision.delivered == 1000
    devices = [int(r.observation.device, 16) for r in decision.readings]
    assert devices == sorted(devices)


def test_rfid_and_weight_disagreeing_is_a_dispute() -> None:
    rs = readings({RFID_A: 1000, SCALE: 1000 * CARTON_G * 110 // 100})
    decision = decide(rs, threshold=2, required_kinds=BOTH, expectations=EXPECT)
    assert isinstance(decision, Disputed) and "weight" in decision.reason


def test_rfid_counts_disagreeing_is_a_dispute_unless_within_tolerance() -> None:
    rs = readings({RFID_A: 1000, RFID_B: 998, SCALE: 998 * CARTON_G})
    assert isinstance(decide(rs, threshold=2, required_kinds=BOTH, expectations=EXPECT), Disputed)
    lenient = Expectations(CARTON_G, 2, 2.0)
    decision = decide(rs, threshold=2, required_kinds=BOTH, expectations=lenient)
    assert isinstance(decision, Ready) and decision.delivered == 998


def test_one_kind_only_or_too_few_devices_waits() -> None:
    rs = readings({RFID_A: 1000, RFID_B: 1000})
    decision = decide(rs, threshold=2, required_kinds=BOTH, expectations=EXPECT)
    assert isinstance(decision, Waiting) and "NET_WEIGHT_GRAMS" in decision.reason
    rs = readings({RFID_A: 1000})
    assert isinstance(decide(rs, threshold=2, required_kinds=BOTH, expectations=EXPECT), Waiting)


def test_one_device_twice_does_not_make_a_quorum() -> None:
    chain = fake_chain()
    a = signer(RFID_A)
    rs = [reading(a, 1000, chain), reading(a, 1000, chain), reading(signer(SCALE), 1000 * CARTON_G, chain)]
    rs = [rs[0], rs[1]]
    decision = decide(rs, threshold=2, required_kinds=frozenset({1}), expectations=EXPECT)
    assert isinstance(decision, Waiting) and "1 of 2" in decision.reason


def test_weight_without_an_expected_carton_weight_waits() -> None:
    rs = readings({RFID_A: 1000, SCALE: 1000 * CARTON_G})
    unknown = Expectations(None, 0, 2.0)
    assert isinstance(decide(rs, threshold=2, required_kinds=BOTH, expectations=unknown), Waiting)


# ---------------------------------------------------------------------- the relayer's state machine


class Crash(BaseException):
    """Stands for the process dying: no handler in the relayer catches a BaseException."""


class FakeSubmitter:
    def __init__(self, chain: FakeChain) -> None:
        self.chain = chain
        self.prepared = 0
        self.broadcasts: list[str] = []
        self.mined: dict[str, Mined] = {}
        self.mempool: set[str] = set()
        self.revert: Exception | None = None
        self.transient = 0
        self.nonce_too_low = False
        self.rejected: str | None = None  # the node refuses the bytes in its own words
        self.mine = True  # False: broadcasts are accepted but never mined
        self.priced_out = False  # True: every reprice answers a replacement at a higher fee
        self.repriced: list[tuple[str, str]] = []  # (replaced, replacement)
        self.discarded: list[str] = []
        self.submitted: list[tuple[SignedReading, ...]] = []

    def prepare(self, rs: Sequence[SignedReading]) -> PreparedTx:
        if self.transient:
            self.transient -= 1
            raise NodeUnavailable("http://node", "timeout")
        if self.revert is not None:
            raise self.revert
        self.prepared += 1
        self.submitted.append(tuple(rs))
        return PreparedTx(f"0x{self.prepared:064x}", b"raw%d" % self.prepared)

    def broadcast(self, prepared: PreparedTx) -> None:
        if self.nonce_too_low:
            raise NonceTooLow("nonce too low")
        if self.rejected is not None:
            raise TransactionRejected(prepared.tx_hash, self.rejected)
        self.broadcasts.append(prepared.tx_hash)
        if self.mine and prepared.tx_hash not in self.mined:
            # The contract lets each order confirm once: a second inclusion is impossible for the
            # same bytes; count what was mined.
            self.mined[prepared.tx_hash] = Mined(prepared.tx_hash, True, 7, 100_000, root_certificate_id=1)
            self.chain.orders[1] = OrderStatus.CONFIRMED

    def wait(self, tx_hashes: Sequence[str], timeout: float) -> Mined | None:
        found = [self.mined[h] for h in tx_hashes if h in self.mined]
        assert len(found) <= 1, "two transactions at one nonce mined"
        return found[0] if found else None

    def reprice(self, prepared: PreparedTx) -> PreparedTx | None:
        if not self.priced_out:
            return None
        self.prepared += 1
        replacement = PreparedTx(f"0x{self.prepared:064x}", b"raw%d" % self.prepared)
        self.repriced.append((prepared.tx_hash, replacement.tx_hash))
        return replacement

    def discard(self, prepared: PreparedTx) -> None:
        self.discarded.append(prepared.tx_hash)


def ready_order(store: Store, chain: FakeChain) -> None:
    gw = Gateway(store, chain, clock_skew=30)
    store.register_order(1, carton_weight_grams=CARTON_G, count_tolerance=None, weight_tolerance_pct=None)
    for r in (reading(signer(RFID_A), 1000, chain), reading(signer(SCALE), 1000 * CARTON_G, chain)):
        assert gw.ingest(r.encode(), "test").accepted


def relayer(store: Store, chain: FakeChain, sub: FakeSubmitter, **kw: object) -> Relayer:
    settings = OracleSettings(retry_base=0.001, retry_max=0.002)
    return Relayer(store, chain, sub, settings, receipt_timeout=1, **kw)  # type: ignore[arg-type]


def test_relayer_submits_once_and_confirms(store: Store) -> None:
    chain, sub = fake_chain(), None
    sub = FakeSubmitter(chain)
    ready_order(store, chain)
    r = relayer(store, chain, sub)
    r.step()
    r.step()
    rec = store.order(1)
    assert rec is not None and rec.state == OrderState.CONFIRMED and rec.root_certificate_id == 1
    assert sub.prepared == 1 and len(sub.broadcasts) == 1


@pytest.mark.parametrize("moment", ["recorded", "broadcast"])
def test_relayer_killed_mid_submission_submits_once_after_restart(store: Store, moment: str) -> None:
    chain = fake_chain()
    sub = FakeSubmitter(chain)
    ready_order(store, chain)

    def crash(at: str, order_id: int) -> None:
        if at == moment:
            raise Crash

    with pytest.raises(Crash):
        relayer(store, chain, sub, crash_hook=crash).step()
    rec = store.order(1)
    assert rec is not None and rec.state == OrderState.SUBMITTING and rec.tx_hash == "0x" + "0" * 63 + "1"
    relayer(store, chain, sub).step()  # the restarted process
    rec = store.order(1)
    assert rec is not None and rec.state == OrderState.CONFIRMED
    assert sub.prepared == 1  # never signed a second transaction
    assert len(set(sub.broadcasts)) == 1


def test_a_revert_is_final(store: Store) -> None:
    chain = fake_chain()
    sub = FakeSubmitter(chain)
    sub.revert = errors.ERRORS["DuplicateInvoice"](b"", invoiceHash=b"\x00" * 32)
    ready_order(store, chain)
    r = relayer(store, chain, sub)
    r.step()
    rec = store.order(1)
    assert rec is not None and rec.state == OrderState.FAILED and rec.error_name == "DuplicateInvoice"
    sub.revert = None
    store.mark_dirty(1)
    r.step()
    assert sub.prepared == 0 and store.order(1).state == OrderState.FAILED  # type: ignore[union-attr]
    assert any(a.kind == "failed" for a in store.alerts())


def test_node_errors_are_retried_with_backoff(store: Store) -> None:
    import time

    chain = fake_chain()
    sub = FakeSubmitter(chain)
    sub.transient = 2
    ready_order(store, chain)
    r = relayer(store, chain, sub)
    r.step()
    rec = store.order(1)
    assert rec is not None and rec.state == OrderState.COLLECTING and rec.attempts == 1
    for _ in range(20):
        time.sleep(0.005)
        r.step()
    assert store.order(1).state == OrderState.CONFIRMED  # type: ignore[union-attr]
    assert sub.prepared == 1


def test_superseded_transaction_is_replaced_after_checking_the_chain(store: Store) -> None:
    chain = fake_chain()
    sub = FakeSubmitter(chain)
    ready_order(store, chain)
    with pytest.raises(Crash):
        relayer(store, chain, sub, crash_hook=lambda at, o: (_ for _ in ()).throw(Crash)).step()
    sub.nonce_too_low = True  # meanwhile the keeper used that nonce
    r = relayer(store, chain, sub)
    r.step()
    assert store.order(1).state != OrderState.CONFIRMED  # type: ignore[union-attr]
    sub.nonce_too_low = False
    r.step()
    assert store.order(1).state == OrderState.CONFIRMED  # type: ignore[union-attr]
    # New transactions were signed, but only one was ever accepted by the node.
    assert sub.prepared >= 2 and len(sub.broadcasts) == len(sub.mined) == 1


def test_disputed_orders_alert_and_never_submit(store: Store) -> None:
    chain = fake_chain()
    sub = FakeSubmitter(chain)
    gw = Gateway(store, chain, clock_skew=30)
    store.register_order(1, carton_weight_grams=CARTON_G, count_tolerance=None, weight_tolerance_pct=None)
    for rr in (reading(signer(RFID_A), 1000, chain), reading(signer(SCALE), 800 * CARTON_G, chain)):
        assert gw.ingest(rr.encode(), "test").accepted
    r = relayer(store, chain, sub)
    r.step()
    assert store.order(1).state == OrderState.DISPUTED  # type: ignore[union-attr]
    assert gw.ingest(reading(signer(RFID_B), 1000, chain).encode(), "test").accepted
    r.step()
    assert store.order(1).state == OrderState.DISPUTED and sub.prepared == 0  # type: ignore[union-attr]
    assert [a.kind for a in store.alerts()] == ["disputed"]


def test_backoff_is_bounded() -> None:
    assert [backoff_delay(n, 0.5, 4) for n in range(6)] == [0, 0.5, 1, 2, 4, 4]
    assert backoff_delay(10_000, 0.5, 30) == 30


def test_store_survives_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "o.db")
    store.receive("mqtt:x", b"payload")
    store.close()
    again = Store(tmp_path / "o.db")
    assert [i.payload for i in again.unprocessed()] == [b"payload"]


def _application_id(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA application_id").fetchone()[0])
    finally:
        conn.close()


def test_a_new_store_is_marked_as_the_oracles(tmp_path: Path) -> None:
    """A path with nothing there, or an empty file (`oracle run` makes its database either way)."""
    empty = tmp_path / "empty.db"
    empty.touch()
    for path in (tmp_path / "new.db", empty):
        Store(path).close()
        assert _application_id(path) == APPLICATION_ID
        Store(path).close()  # and opens again


def test_a_store_in_a_missing_directory_says_so_in_one_message(tmp_path: Path) -> None:
    """`oracle run --db missing/oracle.db` ended in sqlite3's traceback."""
    path = tmp_path / "missing" / "oracle.db"
    with pytest.raises(StoreCannotOpen) as refused:
        Store(path)
    assert str(refused.value) == f"the oracle database {path} cannot be opened: unable to open database file"
    assert not path.parent.exists()


def test_a_store_refuses_what_is_not_an_oracle_database(tmp_path: Path) -> None:
    text = tmp_path / "deployment.json"
    text.write_text("{}")
    with pytest.raises(NotAnOracleStore, match="not a SQLite database") as refused:
        Store(text)
    assert refused.value.path == text and text.read_text() == "{}"
    marked = tmp_path / "other-app.db"
    conn = sqlite3.connect(marked)
    conn.execute("PRAGMA application_id = 7")  # another application's mark, and no table yet
    conn.close()
    with pytest.raises(NotAnOracleStore, match="application_id 0x7"):
        Store(marked)
    foreign = tmp_path / "index.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE orders (id INTEGER)")  # one name in common is not enough
    conn.execute("CREATE VIEW totals AS SELECT count(*) FROM orders")
    conn.close()
    before = foreign.read_bytes()
    with pytest.raises(NotAnOracleStore, match=r"tables totals\)"):
        Store(foreign)
    assert foreign.read_bytes() == before


def test_store_made_before_recounts_gains_the_set_aside_column(tmp_path: Path) -> None:
    """A database from before dispute resolution existed opens with its readings counted."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE observations (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL, device TEXT NOT NULL, "
        "sequence TEXT NOT NULL, kind INTEGER NOT NULL, reading TEXT NOT NULL, source TEXT NOT NULL, "
        "received_at REAL NOT NULL, UNIQUE (device, sequence))"
    )
    r = reading(signer(RFID_A), 1_000, fake_chain())
    old.execute(
        "INSERT INTO observations (order_id, device, sequence, kind, reading, source, received_at) "
        "VALUES (?, ?, ?, ?, ?, 'test', 0)",
        (r.observation.order_id, r.observation.device, str(r.observation.sequence), r.observation.kind,
         json.dumps(r.to_json())),
    )  # fmt: skip
    old.commit()
    old.close()
    store = Store(path)
    assert [o.reading for o in store.observations(r.observation.order_id)] == [r]
    assert _application_id(path) == APPLICATION_ID  # marked from now on


def test_observation_type_is_the_chain_clients() -> None:
    # The wire format carries exactly chain_client's Observation: one definition for all.
    chain = fake_chain()
    assert isinstance(reading(signer(RFID_A), 1, chain).observation, Observation)


def test_readings_about_to_lapse_are_not_submitted(store: Store) -> None:
    """A reading whose deadline falls within the submit margin is kept but not sent: it could lapse
    before its block, and the contract's refusal would be final for the whole order."""
    chain = fake_chain()
    sub = FakeSubmitter(chain)
    gw = Gateway(store, chain, clock_skew=30)
    store.register_order(1, carton_weight_grams=CARTON_G, count_tolerance=None, weight_tolerance_pct=None)
    assert gw.ingest(reading(signer(RFID_A), 1000, chain, age=60, valid_for=70).encode(), "t").accepted
    assert gw.ingest(reading(signer(SCALE), 1000 * CARTON_G, chain).encode(), "t").accepted
    relayer(store, chain, sub).step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.COLLECTING and sub.prepared == 0
    assert "1 of 2" in record.detail


def _collecting(
    tmp_path: Path, threshold: int | None = None
) -> tuple[Store, FakeChain, Gateway, FakeSubmitter, Relayer]:
    """Order 1 registered with the carton weight, a gateway and a relayer over a fake chain."""
    store = Store(tmp_path / "o.db")
    chain = fake_chain()
    if threshold is not None:
        chain.threshold = threshold
    gateway = Gateway(store, chain, clock_skew=30)
    store.register_order(1, carton_weight_grams=CARTON_G, count_tolerance=None, weight_tolerance_pct=None)
    sub = FakeSubmitter(chain)
    return store, chain, gateway, sub, relayer(store, chain, sub)


def test_a_devices_early_correction_is_judged_at_once_not_bypassed(tmp_path: Path) -> None:
    """Portal A reads 1000, then corrects itself to 900 with its clock 10 s ahead of the chain (the
    gateway takes readings up to 30 s early). Its latest reading is the one that counts, early or
    not: 900 against B's 1000 is a dispute at once; it is never judged by the 1000 it replaced."""
    store, chain, gateway, sub, r = _collecting(tmp_path, threshold=3)
    a = signer(RFID_A)
    assert gateway.ingest(reading(a, 1_000, chain).encode(), "t").accepted
    r.step()
    assert gateway.ingest(reading(a, 900, chain, age=-10).encode(), "t").accepted
    assert gateway.ingest(reading(signer(RFID_B), 1_000, chain).encode(), "t").accepted
    assert gateway.ingest(reading(signer(SCALE), 1_000 * CARTON_G, chain).encode(), "t").accepted
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.DISPUTED and sub.prepared == 0


def test_a_corrected_reading_that_agrees_is_not_disputed_by_the_one_it_replaced(tmp_path: Path) -> None:
    store, chain, gateway, sub, r = _collecting(tmp_path)
    a = signer(RFID_A)
    assert gateway.ingest(reading(a, 1_000, chain).encode(), "t").accepted
    r.step()
    assert gateway.ingest(reading(a, 900, chain, age=-10).encode(), "t").accepted
    assert gateway.ingest(reading(signer(SCALE), 900 * CARTON_G, chain).encode(), "t").accepted
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.COLLECTING, record
    chain.now_value += 11
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.CONFIRMED and sub.prepared == 1, record


def test_a_reading_stored_while_its_order_is_evaluated_is_evaluated_too(tmp_path: Path) -> None:
    """The HTTP intake stores readings on its own thread; one that lands while the relayer is
    judging the order (between reading the observations and recording the verdict) must not be
    forgotten when the verdict clears the order's `dirty` mark."""
    store, chain, gateway, sub, r = _collecting(tmp_path)  # threshold 2: portal A and the scale
    assert gateway.ingest(reading(signer(RFID_A), 1_000, chain).encode(), "t").accepted
    scale = reading(signer(SCALE), 1_000 * CARTON_G, chain).encode()
    landed: list[bool] = []
    busy: list[bool] = []

    def meanwhile() -> None:  # runs inside the relayer's first chain call of the evaluation
        if not landed and not busy:  # (and not again inside the gateway's own chain calls)
            busy.append(True)
            landed.append(gateway.ingest(scale, "http").accepted)

    chain.fail = meanwhile
    r.step()
    chain.fail = None
    assert landed == [True]
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.CONFIRMED and sub.prepared == 1, record


def test_a_reading_the_pipeline_checked_first_gets_that_verdict_over_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTTP intake keeps a reading, then checks it; the pipeline thread may check it in between.
    The device must hear that verdict, not "kept" (it would send the reading again, and hear it
    only then)."""
    store = Store(tmp_path / "o.db")
    chain = fake_chain()
    gateway = Gateway(store, chain, clock_skew=30)
    real = gateway.receive

    def pipeline_first(payload: bytes, source: str) -> int:
        item = real(payload, source)
        gateway.process_pending()  # the pipeline thread, between the keeping and the checking
        return item

    monkeypatch.setattr(gateway, "receive", pipeline_first)
    good = reading(signer(RFID_A), 1_000, chain)
    verdict = gateway.ingest(good.encode(), "http")
    assert verdict.accepted and verdict.observation_id == store.observations(1)[0].id
    high_s = reading(signer(RFID_B), 1_000, chain)
    verdict = gateway.ingest(SignedReading(high_s.observation, malleate(high_s.signature)).encode(), "http")
    assert (verdict.accepted, verdict.reason) == (False, Reason.HIGH_S)


# ---------------------------------------------------------------------- review, session 6


def test_nesting_within_the_size_cap_is_refused_without_parsing() -> None:
    """A payload of nested brackets up to the size cap is malformed, found by a linear scan: the
    process runs with py_ecc's recursion limit of 100,000, deep enough for the C parser to overflow
    the thread's stack."""
    for payload in (b"[" * MAX_PAYLOAD, b"{" * MAX_PAYLOAD, b'{"a":' * 500 + b"1" + b"}" * 500):
        with pytest.raises(MalformedReading, match="nested"):
            decode_reading(payload)
    # Brackets inside strings are not nesting: a reading with them is judged on its fields.
    with pytest.raises(MalformedReading, match="missing field"):
        decode_reading(json.dumps({"note": "[" * 100}).encode())


def test_a_payload_not_in_utf8_is_refused_before_the_nesting_scan() -> None:
    """json.loads also takes UTF-16: a character whose encoding holds a 0x22 byte (U+2200 is
    00 22) would make the byte scan believe the rest was one string and let deep nesting through."""
    sneaky = ('["\u2200",' + "[" * 1_000).encode("utf-16-le")
    assert not too_deep(sneaky)  # the scan alone is fooled
    for payload in (sneaky, json.dumps({"order": 1}).encode("utf-16"), b"\xef\xbb\xbf{}"):
        with pytest.raises(MalformedReading, match="not UTF-8"):
            decode_reading(payload)


def test_an_early_conflicting_count_of_another_device_is_a_dispute(tmp_path: Path) -> None:
    """Portal B counted 900 with its clock 10 s ahead (the gateway takes it: 30 s skew); portal A
    counted 1000 and the scale agrees with A. B's stored count is a conflict whatever its timing:
    disputed, nothing submitted (it used to be left out as early and 1000 confirmed)."""
    store, chain, gateway, sub, r = _collecting(tmp_path)
    assert gateway.ingest(reading(signer(RFID_B), 900, chain, age=-10).encode(), "t").accepted
    assert gateway.ingest(reading(signer(RFID_A), 1000, chain).encode(), "t").accepted
    assert gateway.ingest(reading(signer(SCALE), 1000 * CARTON_G, chain).encode(), "t").accepted
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.DISPUTED and sub.prepared == 0
    assert [a.kind for a in store.alerts()] == ["disputed"]


@pytest.mark.parametrize("age, valid_for", [(60, 80), (4_000, 5_000)], ids=["about-to-lapse", "stale"])
def test_a_conflicting_count_that_cannot_be_submitted_is_still_a_dispute(
    tmp_path: Path, age: int, valid_for: int
) -> None:
    store, chain, gateway, sub, r = _collecting(tmp_path)
    b = reading(signer(RFID_B), 900, chain, age=age, valid_for=valid_for)
    gateway.store.accept(None, b, "t")  # stored while it was still fresh
    assert gateway.ingest(reading(signer(RFID_A), 1000, chain).encode(), "t").accepted
    assert gateway.ingest(reading(signer(SCALE), 1000 * CARTON_G, chain).encode(), "t").accepted
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.DISPUTED and sub.prepared == 0


def test_an_early_reading_that_agrees_is_waited_for_then_submitted_with_the_rest(tmp_path: Path) -> None:
    store, chain, gateway, sub, r = _collecting(tmp_path)
    assert gateway.ingest(reading(signer(RFID_B), 1000, chain, age=-10).encode(), "t").accepted
    assert gateway.ingest(reading(signer(RFID_A), 1000, chain).encode(), "t").accepted
    assert gateway.ingest(reading(signer(SCALE), 1000 * CARTON_G, chain).encode(), "t").accepted
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.COLLECTING and sub.prepared == 0
    assert "ahead of the chain's clock" in record.detail
    chain.now_value += 11
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.CONFIRMED
    assert len(sub.submitted[0]) == 3  # every agreeing current device


def test_nothing_is_submitted_while_a_reading_of_the_order_waits_in_the_inbox(tmp_path: Path) -> None:
    store, chain, gateway, sub, r = _collecting(tmp_path)
    assert gateway.ingest(reading(signer(RFID_A), 1000, chain).encode(), "t").accepted
    assert gateway.ingest(reading(signer(SCALE), 1000 * CARTON_G, chain).encode(), "t").accepted
    gateway.receive(reading(signer(RFID_B), 900, chain).encode(), "mqtt")  # not checked yet
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.COLLECTING and sub.prepared == 0
    assert "not checked yet" in record.detail
    gateway.process_pending()
    r.step()
    assert store.order(1).state == OrderState.DISPUTED and sub.prepared == 0  # type: ignore[union-attr]


def _poisoned(tmp_path: Path) -> tuple[Store, FakeChain, Gateway]:
    """Order 2's reads fail with a node's answer in words of its own (web3 raises ValueError)."""
    store = Store(tmp_path / "o.db")
    chain = fake_chain()
    chain.orders[2] = OrderStatus.OPEN
    real_order = chain.order

    def order(order_id: int) -> object:
        if order_id == 2:
            raise ValueError({"code": -32000, "message": "execution aborted (timeout = 5s)"})
        return real_order(order_id)

    chain.order = order  # type: ignore[method-assign, assignment]
    return (
        store,
        chain,
        Gateway(store, chain, clock_skew=30, max_attempts=3, retry_base=0.001, retry_max=0.001),
    )


def test_a_poison_inbox_item_neither_blocks_the_others_nor_stays_for_ever(tmp_path: Path) -> None:
    import time

    store, chain, gw = _poisoned(tmp_path)
    gw.receive(reading(signer(RFID_B, 50), 1000, chain, order_id=2).encode(), "mqtt")  # the poison
    gw.receive(reading(signer(RFID_A), 1000, chain).encode(), "mqtt")
    gw.receive(reading(signer(SCALE), 1000 * CARTON_G, chain).encode(), "mqtt")
    verdicts = gw.process_pending()
    assert [v.accepted for v in verdicts] == [False, True, True] and len(store.observations(1)) == 2
    assert store.inbox_count(processed=False) == 1
    item = store.unprocessed(now=time.time() + 60)[0]
    assert item.attempts == 1 and "execution aborted" in (item.last_error or "")
    for _ in range(5):
        time.sleep(0.005)
        gw.process_pending()
    assert store.inbox_count(processed=False) == 0 and store.inbox_count(processed=True) == 1
    assert store.rejections(1)[0].reason == Reason.INTERNAL_ERROR
    assert store.quarantined()[0].attempts == 2  # the third failure quarantined it


def test_a_locked_database_is_transient_and_ends_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "o.db")
    chain = fake_chain()
    gw = Gateway(store, chain, clock_skew=30, retry_base=0.05, retry_max=0.05)
    gw.receive(reading(signer(RFID_A), 1000, chain).encode(), "mqtt")
    gw.receive(reading(signer(SCALE), 1000 * CARTON_G, chain).encode(), "mqtt")

    def locked(*args: object, **kw: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store, "accept", locked)
    verdicts = gw.process_pending()
    assert len(verdicts) == 1 and verdicts[0].unavailable and verdicts[0].pending
    assert [i.attempts for i in store.unprocessed()] == [0, 0]  # not counted against the items
    monkeypatch.undo()
    assert gw.process_pending() == []  # the next look backs off rather than ask again at once
    time.sleep(0.06)
    verdicts = gw.process_pending()
    assert len(verdicts) == 2 and all(v.accepted for v in verdicts)


def test_node_trouble_in_the_inbox_backs_off_and_is_alerted_while_it_lasts(tmp_path: Path) -> None:
    """With the node away, the inbox was asked again at every poll (a warning every 100 ms) and
    nothing was alerted: a new order's readings waited unseen in `oracle status`."""
    store = Store(tmp_path / "o.db")
    chain = fake_chain()
    gw = Gateway(store, chain, clock_skew=30, max_attempts=3, retry_base=0.01, retry_max=0.02)
    gw.receive(reading(signer(RFID_A), 1000, chain).encode(), "mqtt")

    def down() -> None:
        raise NodeUnavailable("http://node", "connection refused")

    chain.fail = down
    looks = 0
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        looks += bool(gw.process_pending())
        time.sleep(0.001)
    assert 3 <= looks <= 20  # about one look per backoff (0.01, then 0.02 s), not one per poll (~170)
    alerts = [a for a in store.alerts() if a.kind == "node"]
    assert alerts and "inbox checks in a row failed, 1 readings wait unchecked" in alerts[0].message
    assert "connection refused" in alerts[0].message
    chain.fail = None
    time.sleep(0.03)
    assert [v.accepted for v in gw.process_pending()] == [True]
    # Over: the next trouble starts from the first, short, backoff again.
    chain.fail = down
    gw.receive(reading(signer(SCALE), 1000 * CARTON_G, chain).encode(), "mqtt")
    assert gw.process_pending()[0].unavailable
    time.sleep(0.011)
    assert gw.process_pending()  # looked at again after retry_base, not after retry_max


def test_payload_cap_and_what_the_inbox_keeps(tmp_path: Path) -> None:
    """Nothing over the cap is kept; a reading that got its verdict leaves the inbox (its
    observation or rejection stays); rejections are a bounded ring."""
    store = Store(tmp_path / "o.db", max_rejections=3)
    chain = fake_chain()
    gw = Gateway(store, chain, clock_skew=30)
    with pytest.raises(PayloadTooLarge):
        gw.receive(b"x" * (MAX_PAYLOAD + 1), "mqtt")
    with pytest.raises(PayloadTooLarge):
        store.receive("mqtt", b"x" * (MAX_PAYLOAD + 1))
    assert store.inbox_count() == 0
    good = reading(signer(RFID_A), 1000, chain)
    assert gw.ingest(good.encode(), "t").accepted
    for n in range(5):
        assert ingest(gw, b"garbage %d" % n) == Reason.MALFORMED
    assert gw.ingest(good.encode(), "t").duplicate  # the observation remembers it
    assert store.inbox_count() == 0
    assert [r.reason for r in store.rejections()] == ["malformed", "malformed", "malformed"]


def test_a_migrated_inbox_drops_rows_already_checked(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE inbox (id INTEGER PRIMARY KEY, received_at REAL NOT NULL, source TEXT NOT NULL, "
        "payload BLOB NOT NULL, processed INTEGER NOT NULL DEFAULT 0)"
    )
    old.execute("INSERT INTO inbox (received_at, source, payload, processed) VALUES (0, 'm', x'01', 1)")
    old.execute("INSERT INTO inbox (received_at, source, payload, processed) VALUES (0, 'm', x'02', 0)")
    old.commit()
    old.close()
    store = Store(path)
    assert [i.payload for i in store.unprocessed()] == [b"\x02"] and store.inbox_count() == 1


class _FailingCommit:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db, self.failed = db, False

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT" and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)


def test_a_failed_commit_is_rolled_back_and_the_store_goes_on(tmp_path: Path) -> None:
    store = Store(tmp_path / "o.db")
    store._db = _FailingCommit(store._db)  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        store.receive("mqtt", b"first")
    store.receive("mqtt", b"second")
    assert [i.payload for i in store.unprocessed()] == [b"second"]


def test_a_state_change_and_its_alert_are_one_transaction(store: Store) -> None:
    store.register_order(1, carton_weight_grams=None, count_tolerance=None, weight_tolerance_pct=None)
    with store.transaction() as db:
        db.execute("DROP TABLE alerts")
    with pytest.raises(sqlite3.OperationalError):
        store.set_state(1, OrderState.DISPUTED, "counts disagree", alert=("disputed", "counts disagree"))
    assert store.order(1).state == OrderState.COLLECTING  # type: ignore[union-attr]


def test_readings_not_yet_behind_the_latest_block_wait(store: Store) -> None:
    """The node's latest block (here 2 s behind the wall clock, which the next block may be
    stamped by) has not reached the scale's reading: submitted, it could revert
    ObservationFromFuture. The order waits until it has."""
    chain = fake_chain()
    sub = FakeSubmitter(chain)
    gw = Gateway(store, chain, clock_skew=30)
    store.register_order(1, carton_weight_grams=CARTON_G, count_tolerance=None, weight_tolerance_pct=None)
    assert gw.ingest(reading(signer(RFID_A), 1000, chain).encode(), "t").accepted
    assert gw.ingest(reading(signer(SCALE), 1000 * CARTON_G, chain, age=1).encode(), "t").accepted
    chain.block_time = chain.now_value - 2
    r = relayer(store, chain, sub)
    r.step()
    assert store.order(1).state == OrderState.COLLECTING and sub.prepared == 0  # type: ignore[union-attr]
    chain.block_time = chain.now_value
    r.step()
    assert store.order(1).state == OrderState.CONFIRMED  # type: ignore[union-attr]


def test_a_paused_ledger_is_told_as_a_pause_not_as_node_trouble(store: Store) -> None:
    """An operator's emergency pause held every receipt back as "node trouble", alerted as the
    node's: the order's detail and its alert say the ledger is paused, and what that costs."""
    chain = fake_chain()
    sub = FakeSubmitter(chain)
    sub.revert = errors.ERRORS["SystemPaused"](b"")
    ready_order(store, chain)
    settings = OracleSettings(retry_base=0.0001, retry_max=0.0001, retry_attempts=2)
    r = Relayer(store, chain, sub, settings, receipt_timeout=1)
    for _ in range(2):
        r.step()
        time.sleep(0.001)
    record = store.order(1)
    assert record is not None and record.state == OrderState.COLLECTING
    assert record.detail.startswith("the ledger is paused") and "node trouble" not in record.detail
    [alert] = store.alerts()
    assert alert.kind == "paused" and "2 tries in a row: the ledger is paused" in alert.message


@pytest.mark.parametrize("name", ["ObservationFromFuture", "SystemPaused"])
@pytest.mark.parametrize("where", ["simulation", "mined"])
def test_a_revert_that_depends_on_timing_backs_off_and_collects_again(
    store: Store, name: str, where: str
) -> None:
    import time

    chain = fake_chain()
    sub = FakeSubmitter(chain)
    fields = {"index": 0, "observedAt": chain.now_value, "nowTs": chain.now_value - 1}
    error = errors.ERRORS[name](b"", **(fields if name == "ObservationFromFuture" else {}))
    ready_order(store, chain)
    r = relayer(store, chain, sub)
    if where == "simulation":
        sub.revert = error
    else:
        sub.mine = False
        r.step()
        tx = store.order(1).tx_hash  # type: ignore[union-attr]
        assert tx is not None
        sub.mined[tx] = Mined(tx, False, None, None, error_name=name, detail=str(error))
        time.sleep(0.01)  # past the backoff of "not mined yet"
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.COLLECTING and record.attempts >= 1
    assert not [a for a in store.alerts() if a.kind == "failed"]
    sub.revert, sub.mine = None, True
    time.sleep(0.01)
    r.step()
    assert store.order(1).state == OrderState.CONFIRMED  # type: ignore[union-attr]


def test_node_trouble_alerts_at_the_limit_and_every_as_many_after(store: Store) -> None:
    import time

    chain = fake_chain()
    sub = FakeSubmitter(chain)
    sub.transient = 10**6
    ready_order(store, chain)
    settings = OracleSettings(retry_base=0.0001, retry_max=0.0001, retry_attempts=3)
    r = Relayer(store, chain, sub, settings, receipt_timeout=1)
    for _ in range(10):
        r.step()
        time.sleep(0.001)
    assert store.order(1).attempts == 10  # type: ignore[union-attr]
    assert [a.message.split()[0] for a in store.alerts() if a.kind == "node"] == ["9", "6", "3"]


def test_a_transaction_the_node_keeps_refusing_fails_with_an_alert(store: Store) -> None:
    import time

    chain = fake_chain()
    sub = FakeSubmitter(chain)
    sub.rejected = "max fee per gas less than block base fee"
    ready_order(store, chain)
    settings = OracleSettings(retry_base=0.0001, retry_max=0.0001, retry_attempts=3)
    r = Relayer(store, chain, sub, settings, receipt_timeout=1)
    for _ in range(6):
        r.step()
        time.sleep(0.001)
    record = store.order(1)
    assert record is not None and record.state == OrderState.FAILED
    assert record.error_name == "TransactionRejected" and sub.prepared == 1
    assert [a.kind for a in store.alerts()] == ["failed"]


def test_a_transaction_whose_readings_lapsed_unmined_is_abandoned(store: Store) -> None:
    """Sent but never mined (a fee the chain never reaches): once the chain is past a reading's
    deadline the transaction can only revert, so the order collects again (fresh readings, a new
    transaction) instead of rebroadcasting it for ever."""
    import time

    chain, sub, r, _ = sent_unmined(store)
    chain.now_value += 4_000  # past both readings' deadlines
    time.sleep(0.01)  # past the backoff of "not mined yet"
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.COLLECTING, record
    assert [a.kind for a in store.alerts()] == ["abandoned"]
    sub.mine = True
    gw = Gateway(store, chain, clock_skew=30)
    for rr in (reading(signer(RFID_A, 10), 1000, chain), reading(signer(SCALE, 10), 1000 * CARTON_G, chain)):
        assert gw.ingest(rr.encode(), "t").accepted
    r.step()
    assert store.order(1).state == OrderState.CONFIRMED and sub.prepared == 2  # type: ignore[union-attr]


# ---------------------------------------------------------------------- review 2 (D57 amended)


def _node_answers_in_its_own_words() -> None:
    raise ValueError({"code": -32000, "message": "header not found"})


def test_the_same_unclassified_error_on_two_items_is_node_trouble_not_counted(tmp_path: Path) -> None:
    """A restarted node answering 0x, or -32000 on every call, fails every item alike: the batch
    ends and no item is counted, so none is ever quarantined for the node's sake."""
    store = Store(tmp_path / "o.db")
    chain = fake_chain()
    gw = Gateway(store, chain, clock_skew=30, max_attempts=2, retry_base=0.0001, retry_max=0.0001)
    for r in (reading(signer(RFID_A), 1000, chain), reading(signer(SCALE), 1000 * CARTON_G, chain)):
        gw.receive(r.encode(), "mqtt")
    chain.fail = _node_answers_in_its_own_words
    for _ in range(10):
        time.sleep(0.001)  # past the look's backoff
        verdicts = gw.process_pending()
        assert verdicts and all(v.pending and v.unavailable for v in verdicts)
    assert [i.attempts for i in store.unprocessed()] == [0, 0] and store.inbox_count(processed=True) == 0
    chain.fail = None
    time.sleep(0.001)
    verdicts = gw.process_pending()
    assert len(verdicts) == 2 and all(v.accepted for v in verdicts)


def test_two_readings_failing_alike_while_the_node_answers_are_counted_not_blamed_on_it(
    tmp_path: Path,
) -> None:
    """Two bad readings at the head of the inbox fail alike. Taken for node trouble, they ended
    every look uncounted, never quarantined, and no later reading was ever checked (a security
    review's finding: any sender could stall the intake). The node still answers a plain call, so
    the failures are the items' own: counted, backed off, quarantined; the rest goes on."""
    store = Store(tmp_path / "o.db")
    chain = fake_chain()
    gw = Gateway(store, chain, clock_skew=30, max_attempts=2, retry_base=0.0001, retry_max=0.0001)
    bad = signer(RFID_B)
    for r in (reading(bad, 1000, chain), reading(bad, 1000, chain)):
        gw.receive(r.encode(), "mqtt")
    good = reading(signer(RFID_A), 1000, chain)
    gw.receive(good.encode(), "mqtt")
    answers = chain.device_kind

    def device_kind(warehouse: bytes, device: ChecksumAddress) -> int:
        if device == bad.account.address:
            raise ValueError("a check that fails for this reading only")
        return answers(warehouse, device)

    chain.device_kind = device_kind  # type: ignore[method-assign]
    for _ in range(4):
        time.sleep(0.001)  # past the items' backoff
        gw.process_pending()
    assert store.inbox_count(processed=True) == 2 and store.inbox_count(processed=False) == 0
    assert [o.reading for o in store.observations(1)] == [good]


def test_two_readings_failing_alike_in_the_store_are_not_counted_against_them(tmp_path: Path) -> None:
    """The node answers, but the store fails the same way for both (a damaged file): no item's
    fault, so neither is counted or quarantined; the look ends and the readings wait."""
    store = Store(tmp_path / "o.db")
    chain = fake_chain()
    gw = Gateway(store, chain, clock_skew=30, max_attempts=2, retry_base=0.0001, retry_max=0.0001)
    for r in (reading(signer(RFID_A), 1000, chain), reading(signer(SCALE), 1000 * CARTON_G, chain)):
        gw.receive(r.encode(), "mqtt")

    def damaged(warehouse: bytes, device: ChecksumAddress) -> int:
        raise sqlite3.DatabaseError("database disk image is malformed")

    chain.device_kind = damaged  # type: ignore[method-assign]
    for _ in range(4):
        time.sleep(0.001)
        assert all(v.unavailable for v in gw.process_pending())
    assert [i.attempts for i in store.unprocessed()] == [0, 0] and store.inbox_count(processed=True) == 0


def test_a_quarantined_reading_holds_its_order_is_alerted_and_can_be_requeued(tmp_path: Path) -> None:
    """s2b: a conflicting count alone in the inbox while the node misbehaves is quarantined; the
    order must not be confirmed without it: it waits, with an alert, until a person requeues it."""
    import time

    store, chain, gateway, sub, r = _collecting(tmp_path)
    gw = Gateway(store, chain, clock_skew=30, max_attempts=3, retry_base=0.0001, retry_max=0.0001)
    assert gw.ingest(reading(signer(RFID_A), 1000, chain).encode(), "t").accepted
    assert gw.ingest(reading(signer(SCALE), 1000 * CARTON_G, chain).encode(), "t").accepted
    item = gw.receive(reading(signer(RFID_B), 900, chain).encode(), "mqtt")
    chain.fail = _node_answers_in_its_own_words
    for _ in range(6):
        gw.process_pending()
        time.sleep(0.002)
    assert store.inbox_count(processed=True) == 1
    alerts = [a for a in store.alerts() if a.kind == "quarantined"]
    assert len(alerts) == 1 and alerts[0].order_id == 1 and f"item {item}" in alerts[0].message
    chain.fail = None
    for _ in range(3):
        time.sleep(0.002)
        gw.process_pending()
        r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.COLLECTING and sub.prepared == 0
    assert "quarantined" in record.detail
    assert store.requeue() == [item] and store.inbox_count(processed=True) == 0
    r.step()  # still waits: the requeued item has no verdict yet
    assert sub.prepared == 0
    gw.process_pending()
    r.step()
    assert store.order(1).state == OrderState.DISPUTED and sub.prepared == 0  # type: ignore[union-attr]


def test_a_dropped_quarantined_item_no_longer_holds_its_order(tmp_path: Path) -> None:
    store, chain, gw, sub, r = _collecting(tmp_path)
    assert gw.ingest(reading(signer(RFID_A), 1000, chain).encode(), "t").accepted
    assert gw.ingest(reading(signer(SCALE), 1000 * CARTON_G, chain).encode(), "t").accepted
    item = gw.receive(reading(signer(RFID_B), 1000, chain).encode(), "mqtt")
    store.quarantine(item, "mqtt", Reason.INTERNAL_ERROR, "checking failed 8 times")
    r.step()
    assert sub.prepared == 0
    with pytest.raises(ValueError):
        store.drop(item, " ")
    assert store.drop(item, "the device was replaced") and not store.drop(item, "again")
    r.step()
    assert store.order(1).state == OrderState.CONFIRMED  # type: ignore[union-attr]
    assert [a.kind for a in store.alerts()] == ["dropped", "quarantined"]


def test_only_a_reading_signed_by_its_device_holds_an_order_and_not_for_ever(tmp_path: Path) -> None:
    """s4: a payload anyone can make (a bad signature) holds nothing; a correctly signed one holds
    the order only if it came before the order began to wait, so a stream of fresh ones (a flood,
    from keys of the flooder's own) cannot hold it for ever."""
    store, chain, gw, sub, r = _collecting(tmp_path)
    assert gw.ingest(reading(signer(RFID_A), 1000, chain).encode(), "t").accepted
    assert gw.ingest(reading(signer(SCALE), 1000 * CARTON_G, chain).encode(), "t").accepted
    forged = reading(signer(RFID_B), 900, chain).to_json()
    forged["signature"] = "0x" + "11" * 65
    gw.receive(json.dumps(forged).encode(), "mqtt")
    assert store.unchecked_for_order(1) == (0, 0)
    stranger = account("stranger")
    KINDS[stranger.address] = ReadingKind.CARTON_COUNT  # signs validly; not enrolled on chain
    try:
        first = gw.receive(reading(signer(stranger), 900, chain).encode(), "mqtt")
        assert store.unchecked_for_order(1) == (1, 0)
        r.step()
        assert sub.prepared == 0  # held: it came before the order began to wait
        gw.receive(reading(signer(stranger, 2), 900, chain).encode(), "mqtt")  # after
        first_item = store.inbox_item(first)
        assert first_item is not None and gw.process(first_item).reason == Reason.UNKNOWN_DEVICE
        r.step()
    finally:
        del KINDS[stranger.address]
    assert store.order(1).state == OrderState.CONFIRMED  # type: ignore[union-attr]
    assert store.inbox_count(processed=False) == 2  # the forged one and the later one


def test_a_migrated_inbox_gets_the_order_hints_of_its_readings(tmp_path: Path) -> None:
    chain = fake_chain()
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE inbox (id INTEGER PRIMARY KEY, received_at REAL NOT NULL, source TEXT NOT NULL, "
        "payload BLOB NOT NULL, processed INTEGER NOT NULL DEFAULT 0)"
    )
    payload = reading(signer(RFID_B), 900, chain).encode()
    old.execute("INSERT INTO inbox (received_at, source, payload) VALUES (0, 'm', ?)", (payload,))
    old.execute("INSERT INTO inbox (received_at, source, payload) VALUES (0, 'm', x'02')")
    old.commit()
    old.close()
    store = Store(path)
    assert store.unchecked_for_order(1) == (1, 0)
    assert [i.order_hint for i in store.unprocessed()] == [1, None]


def test_a_reading_kept_but_not_checkable_now_is_answered_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /readings answered "nothing kept" when the check failed after the row was committed."""
    store = Store(tmp_path / "o.db")
    chain = fake_chain()
    gw = Gateway(store, chain, clock_skew=30)

    def broken(item_id: int) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "inbox_item", broken)
    verdict = gw.ingest(reading(signer(RFID_A), 1000, chain).encode(), "http")
    assert verdict.pending and "kept" in verdict.detail and store.inbox_count(processed=False) == 1


def test_refusals_are_counted_apart_from_waits(store: Store) -> None:
    """s1: a transaction that waited unmined N times is not failed by the node's first refusal."""
    import time

    chain = fake_chain()
    sub = FakeSubmitter(chain)
    sub.mine = False
    ready_order(store, chain)
    settings = OracleSettings(retry_base=0.0001, retry_max=0.0001, retry_attempts=3)
    r = Relayer(store, chain, sub, settings, receipt_timeout=0)
    for _ in range(5):
        r.step()
        time.sleep(0.002)
    sub.rejected = "txpool is full"
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.SUBMITTING and record.refusals == 1
    for _ in range(3):
        time.sleep(0.002)
        r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.FAILED and record.refusals == 2
    assert "3 times in a row" in record.detail
    assert sub.discarded == [record.tx_hash]  # the node holds none of it: its nonce is free


def test_an_abandoned_transaction_frees_its_nonce(store: Store) -> None:
    """s5: the next transaction takes its nonce from the node, not behind a gap for ever."""
    import time

    chain, sub, r, tx = sent_unmined(store)
    chain.now_value += 4_000
    time.sleep(0.01)
    r.step()
    assert store.order(1).state == OrderState.COLLECTING and sub.discarded == [tx]  # type: ignore[union-attr]


def sent_unmined(store: Store) -> tuple[FakeChain, FakeSubmitter, Relayer, str]:
    """An order whose receipt was recorded and broadcast, and is not mined: the chain, the
    submitter, the relayer that sent it and the transaction's hash."""
    chain = fake_chain()
    sub = FakeSubmitter(chain)
    sub.mine = False
    ready_order(store, chain)
    r = relayer(store, chain, sub)
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.SUBMITTING and record.tx_hash is not None
    assert sub.broadcasts == [record.tx_hash]
    return chain, sub, r, record.tx_hash


def test_a_priced_out_transaction_is_replaced_recorded_first_and_sent_once_after_a_crash(
    store: Store,
) -> None:
    """The base fee rose past the recorded transaction's fee: the relayer signs the same call at
    the same nonce at a higher fee, records it (keeping the old hash) before broadcasting it, and
    a relayer killed right there sends that replacement after its restart, not a third one."""
    import time

    chain, sub, _, first = sent_unmined(store)

    def crash(moment: str, order_id: int) -> None:
        if moment == "repriced":
            raise Crash(moment)

    sub.priced_out = True
    time.sleep(0.01)  # past the backoff of "not mined yet"
    with pytest.raises(Crash):
        relayer(store, chain, sub, crash_hook=crash).step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.SUBMITTING
    [(replaced, replacement)] = sub.repriced
    assert replaced == first and record.tx_hash == replacement and record.replaced == (first,)
    assert record.raw_tx == b"raw2" and sub.broadcasts == [first]  # recorded, not yet sent

    sub.priced_out, sub.mine = False, True
    time.sleep(0.01)
    restarted = relayer(store, chain, sub)
    restarted.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.CONFIRMED, record
    assert record.tx_hash == replacement and sub.broadcasts == [first, replacement]
    assert len(sub.submitted) == 1  # the readings were signed into one call, never prepared again
    restarted.step()
    assert sub.broadcasts == [first, replacement]


def test_a_replaced_transaction_mined_after_all_confirms_the_order(store: Store) -> None:
    """Either transaction at the nonce may be the one included: the relayer looks for both and
    records the one that was."""
    import time

    chain, sub, r, first = sent_unmined(store)
    sub.priced_out = True
    time.sleep(0.01)
    r.step()  # replaced and broadcast, still not mined
    record = store.order(1)
    assert record is not None and record.state == OrderState.SUBMITTING and record.replaced == (first,)
    sub.priced_out = False
    sub.mined[first] = Mined(first, True, 9, 100_000, root_certificate_id=5)
    chain.orders[1] = OrderStatus.CONFIRMED
    time.sleep(0.01)
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.CONFIRMED, record
    assert record.tx_hash == first and record.raw_tx is None and record.confirmed_block == 9
    assert record.root_certificate_id == 5 and len(sub.submitted) == 1


def test_a_transaction_whose_price_stands_is_sent_again_as_it_was(store: Store) -> None:
    import time

    _, sub, r, first = sent_unmined(store)
    time.sleep(0.01)
    r.step()
    assert sub.broadcasts == [first, first] and sub.repriced == []
    assert store.order(1).replaced == ()  # type: ignore[union-attr]


def test_a_receipt_mined_after_its_readings_lapsed_collects_again(store: Store) -> None:
    """Mined too late, it reverted ObservationStale: the order needs fresh readings, not a person,
    so it collects again with an alert instead of failing."""
    import time

    chain, sub, r, tx = sent_unmined(store)
    sub.mined[tx] = Mined(
        tx, False, None, None, error_name="ObservationStale", detail="ObservationStale(0, 1, 2)"
    )
    chain.now_value += 4_000  # the readings lapsed: judged again, they are left out
    time.sleep(0.01)
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.COLLECTING and record.error_name is None, record
    assert "stale or about to lapse" in record.detail and sub.prepared == 1
    [alert] = store.alerts()
    assert alert.kind == "abandoned" and "ObservationStale" in alert.message


def test_a_receipt_simulated_after_a_reading_lapsed_backs_off_and_collects(store: Store) -> None:
    chain = fake_chain()
    sub = FakeSubmitter(chain)
    ready_order(store, chain)
    sub.revert = errors.ERRORS["ObservationExpired"](b"", index=0, deadline=1, nowTs=2)
    relayer(store, chain, sub).step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.COLLECTING and record.attempts == 1, record
    assert "a reading lapsed" in record.detail and store.alerts() == [] and sub.broadcasts == []


def test_a_revert_of_an_order_the_chain_confirmed_records_it_confirmed(store: Store) -> None:
    """An abandoned transaction can still be mined and confirm the order: a later revert
    OrderNotOpen must not mark the order failed."""
    import time

    chain, sub, r, tx = sent_unmined(store)
    sub.mined[tx] = Mined(tx, False, None, None, error_name="OrderNotOpen", detail="OrderNotOpen(1)")
    chain.orders[1] = OrderStatus.CONFIRMED
    time.sleep(0.01)
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.CONFIRMED, record
    assert not [a for a in store.alerts() if a.kind == "failed"]


def test_a_prepare_refused_because_the_chain_confirmed_the_order_records_it_confirmed(
    store: Store,
) -> None:
    chain = fake_chain()
    sub = FakeSubmitter(chain)
    ready_order(store, chain)
    sub.revert = errors.ERRORS["OrderNotOpen"](b"", orderId=1)
    real_prepare = sub.prepare

    def prepare(rs: Sequence[SignedReading]) -> PreparedTx:
        chain.orders[1] = OrderStatus.CONFIRMED  # mined meanwhile: our old transaction
        return real_prepare(rs)

    sub.prepare = prepare  # type: ignore[method-assign]
    relayer(store, chain, sub).step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.CONFIRMED and record.error_name is None


def test_an_ever_early_device_does_not_hold_a_ready_order_for_ever(tmp_path: Path) -> None:
    """A device that reads more often than its clock leads always has an early latest reading:
    once the others make a quorum, the order waits for it at most clock_skew + clock_margin."""
    import time

    store, chain, gw, sub, _ = _collecting(tmp_path)
    assert gw.ingest(reading(signer(RFID_B), 1000, chain, age=-10).encode(), "t").accepted
    assert gw.ingest(reading(signer(RFID_A), 1000, chain).encode(), "t").accepted
    assert gw.ingest(reading(signer(SCALE), 1000 * CARTON_G, chain).encode(), "t").accepted
    settings = OracleSettings(retry_base=0.001, retry_max=0.002, clock_skew=0, clock_margin=0)
    r = Relayer(store, chain, sub, settings, receipt_timeout=1)
    r.step()
    time.sleep(0.01)
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.CONFIRMED
    assert len(sub.submitted[0]) == 2  # the quorum, without the early reading


def test_an_early_reading_is_waited_for_while_the_rest_is_no_quorum(tmp_path: Path) -> None:
    store, chain, gw, sub, _ = _collecting(tmp_path)
    assert gw.ingest(reading(signer(SCALE), 1000 * CARTON_G, chain, age=-10).encode(), "t").accepted
    assert gw.ingest(reading(signer(RFID_A), 1000, chain).encode(), "t").accepted
    settings = OracleSettings(retry_base=0.001, retry_max=0.002, clock_skew=0, clock_margin=0)
    r = Relayer(store, chain, sub, settings, receipt_timeout=1)
    r.step()
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.COLLECTING and sub.prepared == 0
    chain.now_value += 11
    r.step()
    assert store.order(1).state == OrderState.CONFIRMED  # type: ignore[union-attr]


# ---------------------------------------------------------------------- review 3


def test_a_reading_observed_after_the_orders_deadline_is_refused(store: Store) -> None:
    """The ledger takes a receipt's time from its latest reading and refuses one after the order's
    deadline (ReceiptAfterDeadline): such a reading is refused at intake, not stored to spoil a
    quorum made in time."""
    chain = fake_chain()
    chain.order_deadline = chain.now_value - 100
    gw = Gateway(store, chain, clock_skew=30)
    late = gw.ingest(reading(signer(RFID_A), 1_000, chain, age=60).encode(), "t")
    assert (late.accepted, late.reason) == (False, Reason.AFTER_ORDER_DEADLINE)
    assert "deadline" in late.detail
    assert gw.ingest(reading(signer(RFID_B), 1_000, chain, age=200).encode(), "t").accepted


def test_a_late_reading_stored_before_the_intake_refused_it_is_not_submitted(store: Store) -> None:
    chain = fake_chain()
    sub = FakeSubmitter(chain)
    ready_order(store, chain)  # portal A and the weighbridge, 60 s ago
    chain.order_deadline = chain.now_value - 30
    late = reading(signer(RFID_B), 1_000, chain, age=10)
    assert isinstance(store.accept(None, late, "t"), int)  # kept by an older release
    relayer(store, chain, sub).step()
    assert store.order(1).state == OrderState.CONFIRMED  # type: ignore[union-attr]
    [submitted] = sub.submitted
    assert late not in submitted and len(submitted) == 2


def test_expectations_registered_before_the_order_opens_wait_for_it(store: Store) -> None:
    """A warehouse system registers what order 2 expects before the issuer's openOrder is mined:
    the order waits for it (no failure, no alert) and confirms once it is open and read."""
    chain = fake_chain()
    sub = FakeSubmitter(chain)
    store.register_order(2, carton_weight_grams=CARTON_G, count_tolerance=None, weight_tolerance_pct=None)
    r = relayer(store, chain, sub)
    r.step()
    record = store.order(2)
    assert record is not None and record.state == OrderState.COLLECTING and record.error_name is None
    assert "waiting for order 2 to be opened" in record.detail and store.alerts() == []
    chain.orders[2] = OrderStatus.OPEN
    gw = Gateway(store, chain, clock_skew=30)
    for dev, value in ((RFID_A, 1_000), (SCALE, 1_000 * CARTON_G)):
        assert gw.ingest(reading(signer(dev), value, chain, order_id=2).encode(), "t").accepted
    r.step()
    assert store.order(2).state == OrderState.CONFIRMED  # type: ignore[union-attr]


def test_a_reading_stored_while_the_order_is_being_signed_is_judged_before_anything_is_sent(
    store: Store,
) -> None:
    """The HTTP intake stores portal B's conflicting count while the pipeline prepares the receipt
    of A and the weighbridge: that transaction is not recorded (its nonce goes back), and the
    order is judged again with B's count: a dispute, nothing sent."""
    chain = fake_chain()
    gw = Gateway(store, chain, clock_skew=30)

    class Racing(FakeSubmitter):
        def prepare(self, rs: Sequence[SignedReading]) -> PreparedTx:
            if not self.submitted:
                assert gw.ingest(reading(signer(RFID_B), 700, chain).encode(), "http").accepted
            return super().prepare(rs)

    sub = Racing(chain)
    ready_order(store, chain)
    r = relayer(store, chain, sub)
    r.step()
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.DISPUTED, record
    assert sub.broadcasts == [] and sub.discarded == ["0x" + "0" * 63 + "1"]
    assert [a.kind for a in store.alerts()] == ["disputed"]


def test_a_reading_for_an_order_being_submitted_is_refused(store: Store) -> None:
    chain = fake_chain()
    sub = FakeSubmitter(chain)
    sub.mine = False
    ready_order(store, chain)
    relayer(store, chain, sub).step()
    assert store.order(1).state == OrderState.SUBMITTING  # type: ignore[union-attr]
    gw = Gateway(store, chain, clock_skew=30)
    verdict = gw.ingest(reading(signer(RFID_B), 700, chain).encode(), "http")
    assert (verdict.accepted, verdict.reason) == (False, Reason.ORDER_SUBMITTING)
    assert "being confirmed" in verdict.detail and len(store.observations(1)) == 2


def test_a_device_reading_on_while_the_receipt_is_signed_does_not_hold_the_order(store: Store) -> None:
    """The weighbridge weighs again, the same goods, every time the receipt is being signed: each
    new reading moves the order's revision, but the order still agrees, so the receipt is recorded
    and sent (before, every signed transaction was dropped and the order never confirmed)."""
    chain = fake_chain()
    gw = Gateway(store, chain, clock_skew=30)
    scale = signer(SCALE, seq_start=100)

    class Chatty(FakeSubmitter):
        def prepare(self, rs: Sequence[SignedReading]) -> PreparedTx:
            assert gw.ingest(reading(scale, 1000 * CARTON_G, chain, age=1).encode(), "http").accepted
            return super().prepare(rs)

    sub = Chatty(chain)
    ready_order(store, chain)
    relayer(store, chain, sub).step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.CONFIRMED, record
    assert sub.prepared == 1 and sub.discarded == []


def test_a_receipt_signed_while_a_recount_set_its_readings_aside_is_dropped(store: Store) -> None:
    """A person resolves the order with a recount while its receipt is signed: the readings in it
    no longer count, so it is not recorded, however the rest agrees."""
    chain = fake_chain()

    class Recounted(FakeSubmitter):
        def prepare(self, rs: Sequence[SignedReading]) -> PreparedTx:
            store.set_state(1, OrderState.DISPUTED, "counted twice")
            store.resolve(1, "recount ordered")
            return super().prepare(rs)

    sub = Recounted(chain)
    ready_order(store, chain)
    relayer(store, chain, sub).step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.COLLECTING, record
    assert sub.broadcasts == [] and len(sub.discarded) == 1 and store.observations(1) == []


def test_a_disagreeing_reading_held_back_during_submission_is_alerted(store: Store) -> None:
    """While the receipt is in flight the intake stores no reading of the order; one that disagrees
    with the receipt's readings (portal B counts 700 of the 1,000 cartons sent) is an alert for an
    operator, one that agrees is not."""
    chain = fake_chain()
    sub = FakeSubmitter(chain)
    sub.mine = False
    ready_order(store, chain)
    r = relayer(store, chain, sub)
    r.step()
    settings = r.settings
    gw = Gateway(
        store, chain, clock_skew=30, expectations=lambda rec: observation_expectations(rec, settings)
    )
    agreeing = gw.ingest(reading(signer(RFID_B), 1000, chain).encode(), "http")
    assert agreeing.reason == Reason.ORDER_SUBMITTING and store.alerts() == []
    short = gw.ingest(reading(signer(RFID_B, seq_start=50), 700, chain).encode(), "http")
    assert short.reason == Reason.ORDER_SUBMITTING
    alerts = store.alerts()
    assert [a.kind for a in alerts] == ["late-disagreement"]
    assert "RFID counts disagree: [700, 1000]" in alerts[0].message and alerts[0].order_id == 1


def test_a_short_freshness_window_still_submits(store: Store) -> None:
    """A warehouse whose freshness (25 s) is within the relayer's 30 s margin: the margin shrinks
    to half the window, so a fresh reading is sent at once, as the contract would take it."""
    chain = fake_chain()
    chain.freshness = 25
    sub = FakeSubmitter(chain)
    gw = Gateway(store, chain, clock_skew=30)
    store.register_order(1, carton_weight_grams=CARTON_G, count_tolerance=None, weight_tolerance_pct=None)
    for dev, value in ((RFID_A, 1_000), (SCALE, 1_000 * CARTON_G)):
        assert gw.ingest(reading(signer(dev), value, chain, age=1).encode(), "t").accepted
    relayer(store, chain, sub).step()
    assert store.order(1).state == OrderState.CONFIRMED  # type: ignore[union-attr]


def test_the_detail_counts_readings_left_out_as_lapsing(store: Store) -> None:
    chain = fake_chain()
    sub = FakeSubmitter(chain)
    gw = Gateway(store, chain, clock_skew=30)
    store.register_order(1, carton_weight_grams=CARTON_G, count_tolerance=None, weight_tolerance_pct=None)
    assert gw.ingest(reading(signer(RFID_A), 1_000, chain, age=3_590).encode(), "t").accepted
    assert gw.ingest(reading(signer(SCALE), 1_000 * CARTON_G, chain).encode(), "t").accepted
    relayer(store, chain, sub).step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.COLLECTING and sub.prepared == 0
    assert record.detail == "1 of 2 devices (1 stale or about to lapse left out)"


def test_a_transaction_whose_readings_went_stale_unmined_is_abandoned(store: Store) -> None:
    """Deadlines an hour later than the freshness window: once the chain is past a reading's
    freshness the transaction could only revert ObservationStale, a final failure; it is abandoned
    and the order collects again."""
    import time

    chain = fake_chain()
    sub = FakeSubmitter(chain)
    sub.mine = False
    gw = Gateway(store, chain, clock_skew=30)
    store.register_order(1, carton_weight_grams=CARTON_G, count_tolerance=None, weight_tolerance_pct=None)
    for dev, value in ((RFID_A, 1_000), (SCALE, 1_000 * CARTON_G)):
        assert gw.ingest(reading(signer(dev), value, chain, valid_for=7_200).encode(), "t").accepted
    r = relayer(store, chain, sub)
    r.step()
    assert store.order(1).state == OrderState.SUBMITTING  # type: ignore[union-attr]
    chain.now_value += 3_600  # observed 3,660 s ago: stale; deadlines still 3,540 s away
    time.sleep(0.01)  # past the backoff of "not mined yet"
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.COLLECTING, record
    [alert] = store.alerts()
    assert alert.kind == "abandoned" and "stale" in alert.message


def test_a_restart_with_a_new_default_judges_waiting_orders_again(store: Store) -> None:
    """Order 1 waits for a carton weight; the oracle restarts with one as its default: the order is
    judged again by it without waiting for another reading."""
    chain = fake_chain()
    sub = FakeSubmitter(chain)
    gw = Gateway(store, chain, clock_skew=30)
    for dev, value in ((RFID_A, 1_000), (SCALE, 1_000 * CARTON_G)):
        assert gw.ingest(reading(signer(dev), value, chain).encode(), "t").accepted
    Relayer(store, chain, sub, OracleSettings(carton_weight_grams=None)).step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.COLLECTING
    assert "no expected carton weight" in record.detail and store.dirty_collecting() == []
    Relayer(store, chain, sub, OracleSettings(carton_weight_grams=CARTON_G)).step()
    assert store.order(1).state == OrderState.CONFIRMED  # type: ignore[union-attr]


def test_the_same_reading_sent_again_is_answered_as_the_first_time(store: Store) -> None:
    """A device that lost the answer (or a broker that lost the PUBACK) sends the very same reading
    again: accepted, the same observation, stored once, no refusal recorded, over HTTP and through
    the inbox alike. Another reading under the same sequence is still refused."""
    chain = fake_chain()
    gw = Gateway(store, chain, clock_skew=30)
    good = reading(signer(RFID_A), 1_000, chain)
    first = gw.ingest(good.encode(), "http")
    again = gw.ingest(good.encode(), "http")
    assert first.accepted and not first.duplicate
    assert again.accepted and again.duplicate and again.observation_id == first.observation_id
    store.receive("mqtt:x", good.encode(), 1)  # redelivered by the broker
    [redelivered] = gw.process_pending()
    assert redelivered.accepted and redelivered.observation_id == first.observation_id
    assert store.inbox_count() == 0 and store.rejections() == [] and len(store.observations(1)) == 1
    twin = reading(signer(RFID_A, seq_start=good.observation.sequence), 999, chain)
    assert ingest(gw, twin) == Reason.SEQUENCE_REUSED


def test_a_reading_set_aside_by_a_recount_is_refused_when_sent_again(store: Store) -> None:
    chain = fake_chain()
    gw = Gateway(store, chain, clock_skew=30)
    good = reading(signer(RFID_A), 1_000, chain)
    assert gw.ingest(good.encode(), "t").accepted
    store.set_state(1, OrderState.DISPUTED, "weight does not match")
    store.resolve(1, "recount")
    assert ingest(gw, good) == Reason.REPLAYED
    assert store.observations(1) == []


def test_a_reading_received_before_a_recount_does_not_count_in_it(store: Store) -> None:
    """A reading waits in the inbox (the gateway is behind, or backing off after node trouble)
    while a person resolves the order's dispute with a recount. Checked only afterwards, it was
    counted in the recount as if the devices had read the goods again. It is kept, set aside, like
    the readings the recount set aside, and refused when sent again."""
    chain = fake_chain()
    gw = Gateway(store, chain, clock_skew=30)
    assert gw.ingest(reading(signer(RFID_A), 1_000, chain).encode(), "t").accepted
    late = reading(signer(RFID_B), 1_000, chain)
    store.receive("mqtt:x", late.encode(), 1)
    store.set_state(1, OrderState.DISPUTED, "weight does not match")
    store.resolve(1, "recount")
    [verdict] = gw.process_pending()
    assert (verdict.accepted, verdict.reason) == (False, Reason.REPLAYED)
    assert "before the recount" in verdict.detail
    assert store.observations(1) == [] and store.inbox_count() == 0
    stored = store.stored_reading(late.observation.device, late.observation.sequence)
    assert stored is not None and stored.set_aside
    assert ingest(gw, late) == Reason.REPLAYED
    fresh = reading(signer(RFID_B, seq_start=late.observation.sequence + 1), 1_000, chain)
    assert gw.ingest(fresh.encode(), "t").accepted and len(store.observations(1)) == 1


def test_a_store_made_before_recount_times_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    Store(path).close()
    with closing(sqlite3.connect(path)) as old:
        old.execute("ALTER TABLE orders DROP COLUMN recounted_at")
        old.commit()
    store = Store(path)
    chain = fake_chain()
    gw = Gateway(store, chain, clock_skew=30)
    assert gw.ingest(reading(signer(RFID_A), 1_000, chain).encode(), "t").accepted
    store.set_state(1, OrderState.DISPUTED, "weight does not match")
    waiting = reading(signer(RFID_B), 1_000, chain)
    store.receive("mqtt:x", waiting.encode(), 1)
    assert store.resolve(1, "recount") == 1
    assert [v.reason for v in gw.process_pending()] == [Reason.REPLAYED]


def test_expectations_change_only_where_given(store: Store) -> None:
    store.register_order(1, carton_weight_grams=CARTON_G, weight_tolerance_pct=1.5)
    record = store.register_order(1, count_tolerance=2)
    assert (record.carton_weight_grams, record.count_tolerance, record.weight_tolerance_pct) == (
        CARTON_G,
        2,
        1.5,
    )
    record = store.register_order(1, carton_weight_grams=None)  # back to the configured default
    assert (record.carton_weight_grams, record.count_tolerance) == (None, 2)


# ---------------------------------------------------------------------- orders closed under the relayer


def test_an_order_cancelled_on_chain_while_collecting_is_seen_without_a_new_reading(tmp_path: Path) -> None:
    """One portal's reading, then the issuer cancels on chain: no reading dirties the order again,
    so it showed `collecting` and pending for ever, with no alert, until a restart called it failed
    (which `oracle resolve` cannot put right). It is now looked at every `recheck_interval`."""
    store, chain, gateway, sub, _ = _collecting(tmp_path)
    r = relayer(store, chain, sub, recheck_interval=3_600.0)
    assert gateway.ingest(reading(signer(RFID_A), 1_000, chain).encode(), "t").accepted
    r.step()
    assert store.order(1).state == OrderState.COLLECTING  # type: ignore[union-attr]
    chain.orders[1] = OrderStatus.CANCELLED
    r.step()
    assert store.order(1).state == OrderState.COLLECTING  # type: ignore[union-attr]  # not due yet
    r.recheck_interval = 0.0
    r.step()
    record = store.order(1)
    assert record is not None and record.state == OrderState.CANCELLED and record.state.final
    assert "cancelled on chain by its issuer" in record.detail
    assert [a.kind for a in store.alerts()] == ["cancelled"]
    with pytest.raises(NotResolvable):
        store.resolve(1, "recount")
    assert sub.prepared == 0


def test_an_order_past_its_deadline_and_freshness_fails_with_an_alert(tmp_path: Path) -> None:
    """No reading can confirm an order once its deadline and the warehouse's freshness window have
    passed (readings must be observed by the deadline and be fresh): it fails, alerted, whether a
    reading or the periodic look finds it."""
    store, chain, gateway, sub, _ = _collecting(tmp_path)
    r = relayer(store, chain, sub, recheck_interval=0.0)
    chain.order_deadline = chain.now_value + 100
    assert gateway.ingest(reading(signer(RFID_A), 1_000, chain).encode(), "t").accepted
    r.step()
    assert store.order(1).state == OrderState.COLLECTING  # type: ignore[union-attr]
    chain.now_value = chain.order_deadline + chain.freshness  # the last second a reading may be fresh
    r.step()
    assert store.order(1).state == OrderState.COLLECTING  # type: ignore[union-attr]
    chain.now_value += 1
    r.step()
    record = store.order(1)
    assert record is not None and (record.state, record.error_name) == (OrderState.FAILED, "DeadlinePassed")
    assert "no reading can confirm it now; its issuer may cancel it" in record.detail
    assert [a.kind for a in store.alerts()] == ["failed"]
    assert sub.prepared == 0


# ---------------------------------------------------------------------- rule boundaries (mutation review)


def test_weight_is_judged_against_the_lowest_count_not_the_highest() -> None:
    """The contract pays for the lowest count, so the weight must match lowest count x carton
    weight: with counts 1000 and 980 (within a tolerance of 20), 1000 cartons' weight is 2% over
    what is paid for (more than the 1% allowed), and 980 cartons' weight is what is paid for."""
    lenient_count = Expectations(CARTON_G, count_tolerance=20, weight_tolerance_pct=1.0)
    heavy = readings({RFID_A: 1000, RFID_B: 980, SCALE: 1000 * CARTON_G})
    decision = decide(heavy, threshold=3, required_kinds=BOTH, expectations=lenient_count)
    assert isinstance(decision, Disputed) and "weight" in decision.reason
    assert "980 cartons" in decision.reason
    paid_for = readings({RFID_A: 1000, RFID_B: 980, SCALE: 980 * CARTON_G})
    decision = decide(paid_for, threshold=3, required_kinds=BOTH, expectations=lenient_count)
    assert isinstance(decision, Ready) and decision.delivered == 980


@pytest.mark.parametrize(
    "low, tolerance, agree",
    [(999, 0, False), (999, 1, True), (998, 1, False), (980, 20, True), (979, 20, False)],
)
def test_counts_differing_by_exactly_the_tolerance_agree_and_by_one_more_are_disputed(
    low: int, tolerance: int, agree: bool
) -> None:
    """RFID counts must be within `count_tolerance` cartons of each other: a difference equal to
    the tolerance agrees, one carton more is a dispute (a tolerance of 0: the counts must match)."""
    expect = Expectations(CARTON_G, count_tolerance=tolerance, weight_tolerance_pct=2.0)
    rs = readings({RFID_A: 1000, RFID_B: low, SCALE: low * CARTON_G})
    decision = decide(rs, threshold=3, required_kinds=BOTH, expectations=expect)
    if agree:
        assert isinstance(decision, Ready) and decision.delivered == low
    else:
        assert isinstance(decision, Disputed) and "RFID counts disagree" in decision.reason


PORTAL_LOW, PORTAL_HIGH = account("portal-6"), account("portal-24")  # 0xc8F4... < 0xD56d...


def test_readings_go_out_in_numeric_device_order_not_checksum_string_order(store: Store) -> None:
    """The contract requires readings in ascending device address order, as numbers. Checksummed
    addresses mix cases, so their strings sort differently: 0xD56d... sorts before 0xc8F4... as
    text, after it as a number. Both what the agreement hands on and what the relayer signs must
    follow the numbers."""
    low, high = PORTAL_LOW.address, PORTAL_HIGH.address
    assert int(low, 16) < int(high, 16) and sorted([low, high]) == [high, low]  # the case in point
    chain = fake_chain()
    chain.devices.update({low: int(ReadingKind.CARTON_COUNT), high: int(ReadingKind.CARTON_COUNT)})

    def portal(acct: object) -> DeviceSigner:
        from eth_account.signers.local import LocalAccount

        assert isinstance(acct, LocalAccount)
        return DeviceSigner(
            acct, ReadingKind.CARTON_COUNT, MemorySequence(1), chain_id=CHAIN_ID, oracle=ORACLE
        )

    # Given highest first, so neither arrival order nor text order gives the numeric one.
    rs = [
        reading(portal(PORTAL_HIGH), 1000, chain),
        reading(portal(PORTAL_LOW), 1000, chain),
        reading(signer(SCALE), 1000 * CARTON_G, chain),
    ]
    numeric = sorted([low, high, SCALE.address], key=lambda a: int(a, 16))
    decision = decide(rs, threshold=3, required_kinds=BOTH, expectations=EXPECT)
    assert isinstance(decision, Ready)
    assert [r.observation.device for r in decision.readings] == numeric

    sub = FakeSubmitter(chain)
    chain.threshold = 3
    gw = Gateway(store, chain, clock_skew=30)
    store.register_order(1, carton_weight_grams=CARTON_G, count_tolerance=None, weight_tolerance_pct=None)
    for r in rs:
        assert gw.ingest(r.encode(), "t").accepted
    relayer(store, chain, sub).step()
    assert store.order(1).state == OrderState.CONFIRMED  # type: ignore[union-attr]
    [submitted] = sub.submitted
    assert [r.observation.device for r in submitted] == numeric


def test_a_reading_observed_at_the_orders_deadline_is_taken_one_second_later_is_not(store: Store) -> None:
    """The ledger refuses a receipt whose time (its latest reading's) is after the order's
    deadline: observed at the deadline itself is in time, a second later is not."""
    chain = fake_chain()
    chain.order_deadline = chain.now_value - 100
    gw = Gateway(store, chain, clock_skew=30)
    at_deadline = reading(signer(RFID_A), 1_000, chain, age=100)
    assert at_deadline.observation.observed_at == chain.order_deadline
    assert ingest(gw, at_deadline) is None
    just_after = reading(signer(RFID_B), 1_000, chain, age=99)
    assert just_after.observation.observed_at == chain.order_deadline + 1
    assert ingest(gw, just_after) == Reason.AFTER_ORDER_DEADLINE


def test_a_reading_of_a_kind_the_warehouse_has_no_range_for_is_refused_even_at_zero(store: Store) -> None:
    """A kind without a range reads back as [0, 0]; the contract takes no reading of it, so even
    the value 0, which [0, 0] would contain, is out of range (and a kind that has one still
    passes)."""
    chain = fake_chain()
    del chain.ranges[int(ReadingKind.NET_WEIGHT_GRAMS)]
    gw = Gateway(store, chain, clock_skew=30)
    scale = signer(SCALE)
    assert ingest(gw, reading(scale, 0, chain)) == Reason.OUT_OF_RANGE
    assert ingest(gw, reading(scale, 1000 * CARTON_G, chain)) == Reason.OUT_OF_RANGE
    assert ingest(gw, reading(signer(RFID_A), 1_000, chain)) is None
    assert store.observations(1)[0].reading.observation.device == RFID_A.address


# ---------------------------------------------------------------------- the keeper's listing


class _SettlingChain:
    """Just enough of a System for the keeper: blocks (number -> timestamp), one confirmed order and
    its certificates (each issued in some block), and settle transactions that, like the ledger,
    pay only certificates matured at the head's timestamp (else CertificateNotMatured)."""

    def __init__(self, maturity: int) -> None:
        self.maturity = maturity
        self.stamps = [maturity - 86_400]  # block 0: the deployment
        self.certificates: dict[int, Certificate] = {}
        self.issued: dict[int, int] = {}  # certificate -> the block it was issued in
        self.receipts: dict[str, TxResult] = {}
        self.settling: list[int] = []  # the batch last prepared
        self.settings = SimpleNamespace(receipt_timeout=1, poll_interval=0.001)
        self.deployment_block = 0
        self.chain_id = CHAIN_ID
        self.contract = SimpleNamespace(functions=SimpleNamespace(settle=lambda ids: list(ids)))
        self.system = SimpleNamespace(chain=self, ledger=self, tx=self, deployment=self)

    # the chain
    def mine(self, stamp: int) -> int:
        self.stamps.append(stamp)
        return len(self.stamps) - 1

    def head(self) -> int:
        return len(self.stamps) - 1

    def latest_block(self) -> tuple[int, int]:
        return self.head(), self.stamps[-1]

    def now(self) -> int:
        return self.stamps[-1]

    def issue(self, stamp: int) -> int:
        """A certificate of order 1 (the root, or one split off) in a new block stamped `stamp`."""
        certificate_id = len(self.certificates) + 1
        self.certificates[certificate_id] = Certificate(
            certificate_id, ORACLE, self.maturity, 0, CertificateStatus.LIVE, False, 1_000, 1, 0
        )
        self.issued[certificate_id] = self.mine(stamp)
        return certificate_id

    # the ledger's views
    def counts(self) -> tuple[int, int, int]:
        return 1, len(self.certificates), 0

    def order(self, order_id: int) -> Order:
        return Order(
            order_id, ORACLE, self.maturity, self.maturity - 3_600, OrderStatus.CONFIRMED, ORACLE,
            1_000, 10**9, 0, 0, 1_000, 1, b"\x00" * 32, WAREHOUSE, GOODS,
        )  # fmt: skip

    def certificate(self, certificate_id: int) -> Certificate:
        return self.certificates[certificate_id]

    def certificate_ids_of_order(self, order_id: int, from_block: int, to_block: int) -> list[int]:
        return [c for c, block in self.issued.items() if order_id == 1 and from_block <= block <= to_block]

    # transactions
    def prepare(self, acct: object, ids: list[int]) -> transactions.PreparedTx:
        for c in ids:
            if self.certificates[c].maturity > self.stamps[-1]:
                raise errors.ERRORS["CertificateNotMatured"](b"", certificateId=c, maturity=self.maturity)
        n = len(self.receipts) + 1
        self.settling = ids
        return transactions.PreparedTx(f"0x{n:064x}", b"", ORACLE, n)

    def broadcast(self, prepared: transactions.PreparedTx) -> None:
        for c in self.settling:
            old = self.certificates[c]
            self.certificates[c] = Certificate(
                c, old.holder, old.maturity, old.depth, CertificateStatus.SETTLED, False, old.value, 1, 0
            )
        self.receipts[prepared.tx_hash] = TxResult(prepared.tx_hash, self.mine(self.stamps[-1]), 60_000)

    def receipt(self, tx_hash: str) -> TxResult | None:
        return self.receipts.get(tx_hash)


def test_the_keeper_lists_past_a_head_stamped_a_second_before_maturity_and_stops_at_maturity() -> None:
    """The keeper's clock is at maturity, the chain's head a second short of it: a certificate may
    still be split off (the ledger allows a split while block.timestamp < maturity), so that head
    must not end the listing; the split made in the next block, stamped before maturity too, is
    found and paid. The first head stamped at maturity ends it: no more log queries after that."""
    maturity = 1_800_000_000
    node = _SettlingChain(maturity)
    root = node.issue(maturity - 3_600)
    node.mine(maturity - 1)
    keeper = Keeper(node.system, account("keeper"), clock=lambda: maturity)  # type: ignore[arg-type]
    first = keeper.run_once()
    assert first.settled == [] and first.refused  # not matured on chain yet: tried again
    split = node.issue(maturity - 1)  # a holder splits the root, in a block still before maturity
    node.mine(maturity)
    second = keeper.run_once()
    assert sorted(second.settled) == [root, split]
    assert keeper.reads.listings == 1
    queries = keeper.reads.log_queries
    node.mine(maturity + 1)
    assert keeper.run_once().settled == [] and keeper.reads.log_queries == queries
