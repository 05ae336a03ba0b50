"""The HTTP intake (FastAPI) over a fake chain view: verdicts as status codes, order expectations,
alerts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from oracle_support import CHAIN_ID, GOODS, ORACLE, WAREHOUSE, FakeChain, account

from chain_client.errors import NodeUnavailable
from chain_client.models import OrderStatus
from chain_client.receipts import ReadingKind
from oracle.devices import DeviceSigner, MemorySequence, ReadingContext
from oracle.gateway import Gateway
from oracle.http import create_app
from oracle.simulator import malleate
from oracle.store import Store
from oracle.wire import MAX_PAYLOAD, SignedReading

RFID = account("http-rfid")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[TestClient, FakeChain, Store, DeviceSigner]:
    chain = FakeChain()
    chain.devices[RFID.address] = int(ReadingKind.CARTON_COUNT)
    chain.orders[1] = OrderStatus.OPEN
    store = Store(tmp_path / "oracle.db")
    client = TestClient(create_app(Gateway(store, chain, clock_skew=30), store))
    signer = DeviceSigner(RFID, ReadingKind.CARTON_COUNT, MemorySequence(1), chain_id=CHAIN_ID, oracle=ORACLE)
    return client, chain, store, signer


def signed(signer: DeviceSigner, chain: FakeChain, value: int = 1_000) -> SignedReading:
    obs, sig = signer.observe(
        ReadingContext(1, WAREHOUSE, GOODS, 1), value, observed_at=chain.now_value - 5, valid_for=600
    )
    return SignedReading(obs, sig)


def test_post_reading_answers_with_the_verdict(
    setup: tuple[TestClient, FakeChain, Store, DeviceSigner],
) -> None:
    client, chain, store, signer = setup
    r = signed(signer, chain)
    ok = client.post("/readings", json=r.to_json())
    assert ok.status_code == 202 and ok.json()["status"] == "accepted"
    high = SignedReading(r.observation, malleate(r.signature)).to_json()
    assert client.post("/readings", json=high).json()["reason"] == "high-s"
    assert client.post("/readings", json={"orderId": "x"}).json()["reason"] == "malformed"
    assert len(store.observations(1)) == 1


def test_a_reading_is_kept_when_the_node_is_down(
    setup: tuple[TestClient, FakeChain, Store, DeviceSigner],
) -> None:
    client, chain, store, signer = setup

    def down() -> None:
        raise NodeUnavailable("http://node", "refused")

    chain.fail = down
    kept = client.post("/readings", json=signed(signer, chain).to_json())
    assert kept.status_code == 503 and kept.json()["status"] == "kept"
    assert store.inbox_count(processed=False) == 1


def test_order_expectations_and_alerts(setup: tuple[TestClient, FakeChain, Store, DeviceSigner]) -> None:
    client, _, store, _ = setup
    put = client.put("/orders/7", json={"carton_weight_grams": 12_000, "count_tolerance": 1})
    assert put.status_code == 200 and put.json()["state"] == "collecting"
    assert client.get("/orders/7").json()["carton_weight_grams"] == 12_000
    assert client.put("/orders/7", json={"carton_weight_grams": 0}).status_code == 422
    assert client.get("/orders/8").status_code == 404
    store.alert(7, "disputed", "weight does not match")
    assert client.get("/alerts").json()[0]["kind"] == "disputed"
    assert [o["order_id"] for o in client.get("/orders").json()] == [7]


@pytest.mark.parametrize("order_id", ["0", "-5", str(2**63), "99999999999999999999"])
def test_order_ids_out_of_range_are_validation_errors(
    setup: tuple[TestClient, FakeChain, Store, DeviceSigner], order_id: str
) -> None:
    client, _, store, _ = setup
    put = client.put(f"/orders/{order_id}", json={"carton_weight_grams": 12_000})
    get = client.get(f"/orders/{order_id}")
    assert (put.status_code, get.status_code) == (422, 422), (put.text, get.text)
    assert store.orders() == []


def test_with_an_operator_token_only_the_operator_changes_or_reads_orders(tmp_path: Path) -> None:
    store = Store(tmp_path / "oracle.db")
    client = TestClient(create_app(Gateway(store, FakeChain(), clock_skew=30), store, "operator-secret"))
    body = {"carton_weight_grams": 12_000}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {b"Authorization": b"Bearer op\xe9rator"}):
        assert client.put("/orders/1", json=body, headers=headers).status_code == 401
    assert store.orders() == []
    ok = client.put("/orders/1", json=body, headers={"Authorization": "Bearer operator-secret"})
    assert ok.status_code == 200 and ok.json()["carton_weight_grams"] == 12_000
    # Expectations, disputes and transactions of every order are the operator's to read too.
    for path in ("/orders", "/orders/1", "/alerts"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer operator-secret"}).status_code == 200
    for path in ("/docs", "/redoc", "/openapi.json"):  # the API's description is the operator's too
        assert client.get(path).status_code == 404


def test_a_body_over_the_cap_is_refused_unread_and_not_kept(
    setup: tuple[TestClient, FakeChain, Store, DeviceSigner],
) -> None:
    client, _, store, _ = setup
    big = client.post("/readings", content=b"{" + b" " * MAX_PAYLOAD + b"}")
    assert big.status_code == 413 and big.json()["reason"] == "too-large"
    declared = client.post("/readings", content=b"{}", headers={"content-length": str(10**9)})
    assert declared.status_code == 413
    assert store.inbox_count() == 0 and store.rejections() == []


def test_the_raw_bytes_are_what_is_judged(setup: tuple[TestClient, FakeChain, Store, DeviceSigner]) -> None:
    """No framework parse, no re-encoding: the gateway gets the bytes the device sent (with or
    without a content type)."""
    client, chain, store, signer = setup
    body = signed(signer, chain).encode()
    ok = client.post("/readings", content=body, headers={"content-type": "text/plain"})
    assert ok.status_code == 202
    assert client.post("/readings", content=b"[1, 2]").json()["reason"] == "malformed"


def test_deep_nesting_within_the_cap_does_not_kill_the_process(tmp_path: Path) -> None:
    """In a process with py_ecc's recursion limit (the service imports it), a body of '[' up to the
    cap is refused as malformed, and a larger one before it is read; the process lives on."""
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import oracle.service  # raises the recursion limit
assert sys.getrecursionlimit() >= 100_000, sys.getrecursionlimit()
from fastapi.testclient import TestClient
from oracle.gateway import Gateway
from oracle.http import create_app
from oracle.store import Store
from oracle_support import FakeChain
store = Store({str(tmp_path / "o.db")!r})
client = TestClient(create_app(Gateway(store, FakeChain(), clock_skew=30), store))
for size in ({MAX_PAYLOAD}, 200_000):
    r = client.post("/readings", content=b"[" * size, headers={{"content-type": "application/json"}})
    print(size, r.status_code, r.json().get("reason"), flush=True)
print("alive")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:3] == [f"{MAX_PAYLOAD} 422 malformed", "200000 413 too-large", "alive"]


def test_a_reading_whose_check_fails_unexpectedly_is_kept_not_a_500(
    setup: tuple[TestClient, FakeChain, Store, DeviceSigner],
) -> None:
    client, chain, store, signer = setup

    def odd() -> None:
        raise ValueError({"code": -32000, "message": "execution aborted (timeout = 5s)"})

    chain.fail = odd
    kept = client.post("/readings", content=signed(signer, chain).encode())
    assert kept.status_code == 503 and kept.json()["status"] == "kept"
    assert store.inbox_count(processed=False) == 1
    assert "execution aborted" in kept.json()["detail"]
    # Counted against the item only by the pipeline, which can tell the item's own failure from
    # the node's (the same error on the next item).
    assert store.unprocessed(now=10**12)[0].attempts == 0


def test_the_same_reading_posted_again_is_answered_as_the_first_time(
    setup: tuple[TestClient, FakeChain, Store, DeviceSigner],
) -> None:
    """A device that lost the answer posts the same reading again: 202 accepted with the same
    observation, stored once and no refusal; another reading under that sequence is refused."""
    client, chain, store, signer = setup
    r = signed(signer, chain)
    first = client.post("/readings", content=r.encode())
    again = client.post("/readings", content=r.encode())
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json() == {"status": "accepted", "observation_id": 1}
    assert len(store.observations(1)) == 1 and store.rejections() == []
    reused = SignedReading(
        *DeviceSigner(
            RFID, ReadingKind.CARTON_COUNT, MemorySequence(r.observation.sequence), chain_id=CHAIN_ID,
            oracle=ORACLE,
        ).observe(ReadingContext(1, WAREHOUSE, GOODS, 1), 999, observed_at=chain.now_value - 5, valid_for=600)
    )  # fmt: skip
    refused = client.post("/readings", content=reused.encode())
    assert refused.status_code == 422 and refused.json()["reason"] == "sequence-reused"


def test_expectations_change_only_where_given_and_null_means_the_default(
    setup: tuple[TestClient, FakeChain, Store, DeviceSigner],
) -> None:
    client, _, _, _ = setup
    assert client.put("/orders/7", json={"carton_weight_grams": 12_000}).status_code == 200
    put = client.put("/orders/7", json={"count_tolerance": 1})
    assert put.status_code == 200
    assert (put.json()["carton_weight_grams"], put.json()["count_tolerance"]) == (12_000, 1)
    reset = client.put("/orders/7", json={"carton_weight_grams": None})
    assert (reset.json()["carton_weight_grams"], reset.json()["count_tolerance"]) == (None, 1)
    misspelt = client.put("/orders/7", json={"carton_weight": 13_000})
    assert misspelt.status_code == 422


@pytest.mark.parametrize(
    "body", [{"count_tolerance": 10**20}, {"carton_weight_grams": 2**63}, {"count_tolerance": 2**63}]
)
def test_expectations_beyond_what_the_store_keeps_are_validation_errors(
    setup: tuple[TestClient, FakeChain, Store, DeviceSigner], body: dict[str, int]
) -> None:
    client, _, store, _ = setup
    put = client.put("/orders/3", json=body)
    assert put.status_code == 422, put.text
    assert store.orders() == []


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (b'{"weight_tolerance_pct": NaN}', "weight_tolerance_pct", "finite number"),
        (b'{"weight_tolerance_pct": Infinity}', "weight_tolerance_pct", "finite number"),
        (b'{"weight_tolerance_pct": -Infinity}', "weight_tolerance_pct", "finite number"),
        (b'{"weight_tolerance_pct": 1e400}', "weight_tolerance_pct", "finite number"),
        (b'{"carton_weight_grams": 1e400}', "carton_weight_grams", "valid integer"),
        (b'{"count_tolerance": NaN}', "count_tolerance", "valid integer"),
    ],
)
def test_non_finite_numbers_are_validation_errors_not_500(
    setup: tuple[TestClient, FakeChain, Store, DeviceSigner], body: bytes, field: str, message: str
) -> None:
    """Python's JSON parser reads NaN, Infinity and 1e400; FastAPI's 422 echoed them back, and the
    answer itself failed to encode (a 500)."""
    client, _, store, _ = setup
    put = client.put("/orders/3", content=body, headers={"content-type": "application/json"})
    assert put.status_code == 422, put.text
    [error] = put.json()["detail"]
    assert error["loc"] == ["body", field] and message in error["msg"] and "input" not in error
    assert store.orders() == []


@pytest.mark.parametrize(
    "body",
    [
        {"carton_weight_grams": True},
        {"carton_weight_grams": "12000"},
        {"carton_weight_grams": 12_000.0},
        {"count_tolerance": False},
        {"count_tolerance": "1"},
        {"weight_tolerance_pct": True},
        {"weight_tolerance_pct": "2.5"},
    ],
)
def test_expectations_are_taken_as_json_types_not_coerced(
    setup: tuple[TestClient, FakeChain, Store, DeviceSigner], body: dict[str, object]
) -> None:
    """`true` was stored as a 1 g carton, "12000" and 12000.0 as integers (D84's rule for the API)."""
    client, _, store, _ = setup
    put = client.put("/orders/3", json=body)
    assert put.status_code == 422, put.text
    assert put.json()["detail"][0]["loc"] == ["body", *body]
    assert store.orders() == []


def test_a_percentage_takes_any_finite_json_number(
    setup: tuple[TestClient, FakeChain, Store, DeviceSigner],
) -> None:
    client, _, _, _ = setup
    for given, kept in ((2, 2.0), (2.5, 2.5), (50, 50.0)):
        put = client.put("/orders/3", json={"weight_tolerance_pct": given})
        assert put.status_code == 200 and put.json()["weight_tolerance_pct"] == kept, put.text


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e400", "true", "1.0", '"5"'])
def test_a_reading_with_a_non_finite_or_mistyped_number_is_refused_as_malformed(
    setup: tuple[TestClient, FakeChain, Store, DeviceSigner], value: str
) -> None:
    """The reading intake parses its own bytes (oracle.wire), integers strictly: a 422 with the
    reason, never a 500, whichever integer field carries it."""
    client, chain, store, signer = setup
    reading = signed(signer, chain).to_json()
    for field in ("order_id", "value", "sequence"):
        text = json.dumps({**reading, field: "@"}).replace('"@"', value)
        refused = client.post("/readings", content=text.encode())
        assert refused.status_code == 422 and refused.json()["reason"] == "malformed", refused.text
    assert store.observations(1) == []
