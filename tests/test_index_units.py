"""The index's parts without a node: lossless uint columns, strict decoding, canonical encodings,
and that every event of the ABIs has a rule in the books."""

from __future__ import annotations

import errno
import json
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_abi.exceptions import DecodingError
from eth_utils import event_abi_to_log_topic, to_checksum_address

from chain_client.artifacts import load_artifact
from chain_client.deploy import Deployment
from chain_client.events import UndecodableLog
from chain_client.index import db as db_module
from chain_client.index import source
from chain_client.index.books import HANDLED_EVENTS, ZERO_ADDRESS, Books, encode_record
from chain_client.index.db import AnotherDeploymentsIndex, IndexDatabase, check_index_of
from chain_client.index.decode import Event, LogDecoder, RawLog
from chain_client.index.digest import (
    args_json,
    block_digest,
    canonical,
    canonical_json,
    change_texts,
    event_document,
    genesis,
)
from chain_client.index.models import UINT256_MAX, CertificateRecord, IndexState
from chain_client.index.state import merges_in
from chain_client.index.sync import FOLLOW_BACKOFF_MAX, follow_backoff
from chain_client.models import OrderStatus, Role

LEDGER = to_checksum_address("0x" + "11" * 20)
ORACLE = to_checksum_address("0x" + "22" * 20)
STRANGER = to_checksum_address("0x" + "33" * 20)
ISSUER = to_checksum_address("0x" + "44" * 20)
PAYEE = to_checksum_address("0x" + "55" * 20)
BIG_VALUES = [0, 1, 2**63 - 1, 2**63, 2**64 + 1, 2**128 - 1, UINT256_MAX]


def _abi(contract: str, name: str) -> dict[str, Any]:
    return next(e for e in load_artifact(contract).abi if e.get("type") == "event" and e["name"] == name)


def _log(entry: dict[str, Any], values: dict[str, Any], address: str = LEDGER, log_index: int = 0) -> RawLog:
    """A log as a node would return it for event `entry` with argument `values`."""
    topics = ["0x" + event_abi_to_log_topic(entry).hex()]  # type: ignore[arg-type]
    data_types, data_values = [], []
    for i in entry["inputs"]:
        if i["indexed"]:
            topics.append("0x" + abi_encode([i["type"]], [values[i["name"]]]).hex())
        else:
            data_types.append(i["type"])
            data_values.append(values[i["name"]])
    return RawLog(
        address.lower(),
        tuple(topics),
        "0x" + abi_encode(data_types, data_values).hex(),
        7,
        "0x" + "ab" * 32,
        "0x" + "cd" * 32,
        0,
        log_index,
    )


def _order_opened(**overrides: Any) -> dict[str, Any]:
    values = {
        "orderId": 1,
        "issuer": ISSUER,
        "payee": PAYEE,
        "escrowed": 2**100,
        "maturity": 1_900_000_000,
        "deadline": 1_800_000_000,
        "invoiceHash": b"\x01" * 32,
        "warehouse": b"\x02" * 32,
        "goodsHash": b"\x03" * 32,
        "expectedQuantity": 1_000,
    }
    values.update(overrides)
    return values


@pytest.fixture
def decoder() -> LogDecoder:
    return LogDecoder.for_contracts(((LEDGER, "CertificateLedger"), (ORACLE, "ReceiptOracle")))


# ---------------------------------------------------------------------- uint columns


def test_uint_columns_keep_values_above_2_pow_63_in_sqlite(tmp_path: Path) -> None:
    db = IndexDatabase(tmp_path / "index.sqlite")
    db.create()
    rows = [
        (1, i + 1, 1, ISSUER, value, 0, 0, 0, 1, False, 0, "", 0, "")
        for i, value in enumerate(reversed(BIG_VALUES))
    ]
    columns: tuple[str, ...] = (
        "chain_id",
        "certificate_id",
        "order_id",
        "holder",
        "value",
        "parent_id",
        "depth",
        "maturity",
    )
    columns += ("status", "frozen", "last_block", "last_tx", "last_log_index", "last_event")
    with db.engine.begin() as conn:
        db._bulk(conn, CertificateRecord, columns, rows, upsert=True)
    stored = sorted(r["value"] for r in db.rows(CertificateRecord, 1))
    assert stored == sorted(BIG_VALUES)
    # Stored as text, never as SQLite's 64-bit integer, and ordered numerically.
    raw = sqlite3.connect(tmp_path / "index.sqlite")
    kinds = {t for (t,) in raw.execute("SELECT typeof(value) FROM certificate")}
    ordered = [int(v) for (v,) in raw.execute("SELECT value FROM certificate ORDER BY value")]
    assert kinds == {"text"}
    assert ordered == sorted(BIG_VALUES)


def test_uint_columns_refuse_values_outside_uint256(tmp_path: Path) -> None:
    db = IndexDatabase(tmp_path / "index.sqlite")
    db.create()
    record = CertificateRecord(
        chain_id=1,
        certificate_id=1,
        order_id=1,
        holder=ISSUER,
        value=UINT256_MAX + 1,
        parent_id=0,
        depth=0,
        maturity=0,
        status=1,
        frozen=False,
    )
    from sqlmodel import Session

    with Session(db.engine) as session, pytest.raises(Exception, match="not a uint256"):
        session.add(record)
        session.commit()


# ---------------------------------------------------------------------- decoding


def test_decoder_reads_every_word_of_a_static_event(decoder: LogDecoder) -> None:
    event = decoder.decode(_log(_abi("CertificateLedger", "OrderOpened"), _order_opened()))
    assert event is not None
    assert event.name == "OrderOpened"
    assert event.args == {
        "orderId": 1,
        "issuer": ISSUER,
        "payee": PAYEE,
        "escrowed": 2**100,
        "maturity": 1_900_000_000,
        "deadline": 1_800_000_000,
        "invoiceHash": "0x" + "01" * 32,
        "warehouse": "0x" + "02" * 32,
        "goodsHash": "0x" + "03" * 32,
        "expectedQuantity": 1_000,
    }


def _device_set_log() -> RawLog:
    values = {
        "warehouse": b"\x09" * 32,
        "deviceSetVersion": 3,
        "devices": [ISSUER, PAYEE],
        "threshold": 2,
        "freshness": 3_600,
    }
    return _log(_abi("ReceiptOracle", "DeviceSetChanged"), values, address=ORACLE)


def test_decoder_reads_dynamic_arrays(decoder: LogDecoder) -> None:
    event = decoder.decode(_device_set_log())
    assert event is not None
    assert event.args["devices"] == (ISSUER, PAYEE)
    assert event.args["deviceSetVersion"] == 3


def test_decoder_ignores_logs_of_other_addresses(decoder: LogDecoder) -> None:
    log = _log(_abi("CertificateLedger", "OrderOpened"), _order_opened(), address=STRANGER)
    assert decoder.decode(log) is None


@pytest.mark.parametrize(
    "damage",
    [
        "unknown topic",
        "missing topic",
        "extra topic",
        "short data",
        "long data",
        "address padding",
        "uint overflow",
    ],
)
def test_decoder_refuses_a_damaged_log_of_a_tracked_address(decoder: LogDecoder, damage: str) -> None:
    log = _log(_abi("CertificateLedger", "OrderOpened"), _order_opened())
    topics, data = list(log.topics), log.data
    if damage == "unknown topic":
        topics[0] = "0x" + "ee" * 32
    elif damage == "missing topic":
        topics.pop()
    elif damage == "extra topic":
        topics.append("0x" + "00" * 32)
    elif damage == "short data":
        data = data[:-64]
    elif damage == "long data":
        data += "00" * 32
    elif damage == "address padding":
        topics[2] = "0x" + "01" + topics[2][4:]
    elif damage == "uint overflow":
        data = "0x" + "ff" * 32 + data[66:]  # escrowed is a uint128
    with pytest.raises(UndecodableLog):
        decoder.decode(log._replace(topics=tuple(topics), data=data))


@pytest.mark.parametrize(
    "damage",
    [
        "array offset moved",
        "array longer than the data",
        "array shorter than the data",
        "trailing word",
        "array item padding",
        "uint8 overflow in the head",
        "cut inside the head",
    ],
)
def test_decoder_refuses_a_damaged_dynamic_array(decoder: LogDecoder, damage: str) -> None:
    """The compiled array decoding is at least as strict as eth_abi's strict mode."""
    log = _device_set_log()
    words = [log.data[i : i + 64] for i in range(2, len(log.data), 64)]
    # head: devices offset, threshold, freshness; then devices: length, two addresses
    if damage == "array offset moved":
        words[0] = f"{0x80:064x}"
    elif damage == "array longer than the data":
        words[3] = f"{3:064x}"
    elif damage == "array shorter than the data":
        words[3] = f"{1:064x}"
    elif damage == "trailing word":
        words.append("00" * 32)
    elif damage == "array item padding":
        words[4] = "01" + words[4][2:]
    elif damage == "uint8 overflow in the head":
        words[1] = f"{256:064x}"
    elif damage == "cut inside the head":
        words = words[:2]
    data = "0x" + "".join(words)
    if damage not in ("array shorter than the data", "trailing word"):
        # eth_abi, even strict, ignores bytes after the last array; this decoder wants the one
        # canonical encoding the contracts emit
        with pytest.raises(DecodingError):
            abi_decode(["address[]", "uint8", "uint32"], bytes.fromhex(data[2:]), strict=True)
    with pytest.raises(UndecodableLog):
        decoder.decode(log._replace(data=data))


def test_compiled_and_generic_decoding_agree(decoder: LogDecoder) -> None:
    for log in (_log(_abi("CertificateLedger", "OrderOpened"), _order_opened()), _device_set_log()):
        spec = decoder._specs[log.address][log.topics[0]]
        assert spec.fast is not None
        assert spec.fast(log.topics, log.data) == spec.decode_generic(log.topics, log.data)


def test_every_event_of_the_abis_has_a_rule_in_the_books(decoder: LogDecoder) -> None:
    assert decoder.event_names() <= HANDLED_EVENTS


def test_stored_arguments_restore_to_the_decoded_form(decoder: LogDecoder) -> None:
    event = decoder.decode(_log(_abi("CertificateLedger", "OrderOpened"), _order_opened()))
    assert event is not None
    stored = json.loads(args_json(event.args))
    assert stored["escrowed"] == str(2**100)
    assert decoder.restore(LEDGER, "OrderOpened", stored) == event.args


# ---------------------------------------------------------------------- canonical encodings


def test_fast_encodings_equal_plain_canonical_json(decoder: LogDecoder) -> None:
    event = decoder.decode(_log(_abi("CertificateLedger", "OrderOpened"), _order_opened()))
    assert event is not None
    assert decoder.args_json(event) == args_json(event.args)
    books = Books(LEDGER, ORACLE)
    applied = books.apply(event)
    texts = change_texts(applied)
    document = json.loads(event_document(event, args_json(event.args), texts))
    expected = {
        "address": event.address,
        "args": canonical(event.args),
        "changes": [[e, k, f, json.loads(new) if f == "@created" else new] for e, k, f, _, new in texts],
        "event": event.name,
        "log": str(event.log_index),
        "tx": event.tx_hash,
    }
    assert document == expected
    assert event_document(event, args_json(event.args), texts) == canonical_json(expected)
    order = books.get("order", 1)
    assert order is not None
    assert json.loads(encode_record("order", order))["escrowed"] == str(2**100)


def test_the_genesis_digest_commits_to_every_field_of_the_deployment() -> None:
    """Two indexes of one chain's contracts that start from different deployment blocks (one
    missing the first events) must not share a digest chain from its first link."""
    start = genesis(31337, LEDGER, ORACLE, 5)
    assert genesis(31337, LEDGER, ORACLE, 6) != start
    assert genesis(1, LEDGER, ORACLE, 5) != start
    assert genesis(31337, STRANGER, ORACLE, 5) != start
    assert genesis(31337, LEDGER, STRANGER, 5) != start


def test_the_digest_of_one_block_is_a_fixed_vector(decoder: LogDecoder) -> None:
    """Pins the digest's format (the genesis document, an event's canonical document with its
    changes, the block chaining): two auditors with different builds compare these hashes, so any
    change to them is a new scheme, never a silent one. Both hashes were computed once, by the code
    of scheme certledger/audit-digest/v1, and written down here."""
    start = genesis(31337, LEDGER, ORACLE, 5)
    assert start == "0x3c745ded7cf150d12cbf2a11414792cc3ace6305cad525f57931c8efeae4215c"
    event = decoder.decode(_log(_abi("CertificateLedger", "OrderOpened"), _order_opened()))
    assert isinstance(event, Event)
    document = event_document(event, args_json(event.args), change_texts(Books(LEDGER, ORACLE).apply(event)))
    after = block_digest(start, event.block_number, event.block_hash, [document])
    assert after == "0x415b3e3dbc4bed8e4ab2593bb27c8ae99ab019f35569815a922da70c95f16da3"


def test_books_flag_an_invoice_financed_twice(decoder: LogDecoder) -> None:
    books = Books(LEDGER, ORACLE)
    entry = _abi("CertificateLedger", "OrderOpened")
    for order_id in (1, 2):
        event = decoder.decode(_log(entry, _order_opened(orderId=order_id), log_index=order_id))
        assert isinstance(event, Event)
        books.apply(event)
    # (I0 too: no ParticipantRegistered created the issuer these made-up orders name.)
    financed_twice = [v for v in books.violations if v.invariant == "I5"]
    assert len(financed_twice) == 1
    assert "financed twice (order 2)" in financed_twice[0].message


HOLDER_A = to_checksum_address("0x" + "66" * 20)
HOLDER_B = to_checksum_address("0x" + "77" * 20)


def _fold(books: Books, decoder: LogDecoder, steps: list[tuple[str, str, dict[str, Any]]]) -> None:
    for log_index, (contract, name, values) in enumerate(steps):
        event = decoder.decode(_log(_abi(contract, name), values, log_index=log_index))
        assert isinstance(event, Event)
        books.apply(event)


def _two_holders_and_a_certificate() -> list[tuple[str, str, dict[str, Any]]]:
    supplier = int(Role.SUPPLIER)
    return [
        (
            "CertificateLedger",
            "ParticipantRegistered",
            {"account": a, "entityId": a_id, "roles": supplier, "issuerLimit": 0},
        )
        for a, a_id in ((HOLDER_A, b"\x0a" * 32), (HOLDER_B, b"\x0b" * 32))
    ] + [("CertificateLedger", "Transfer", {"from": ZERO_ADDRESS, "to": HOLDER_A, "tokenId": 1})]


@pytest.mark.parametrize(
    ("change", "values"),
    [
        ("ParticipantRolesChanged", {"account": HOLDER_A, "roles": int(Role.AUDITOR)}),
        ("ParticipantSuspended", {"account": HOLDER_A, "by": STRANGER}),
    ],
)
def test_books_flag_a_certificate_moved_out_by_a_holder_that_may_not_hold(
    decoder: LogDecoder, change: str, values: dict[str, Any]
) -> None:
    """The ledger refuses a whole move out of a holder without a holder role or suspended (D16);
    the books, rebuilding from events alone, flag one if the chain ever shows it."""
    books = Books(LEDGER, ORACLE)
    _fold(books, decoder, _two_holders_and_a_certificate())
    assert not books.violations
    _fold(
        books,
        decoder,
        [
            ("CertificateLedger", change, values),
            ("CertificateLedger", "Transfer", {"from": HOLDER_A, "to": HOLDER_B, "tokenId": 1}),
        ],
    )
    moved = [v for v in books.violations if v.invariant == "I4"]
    assert len(moved) == 1
    assert f"certificate 1 moved while {HOLDER_A} was not an active holder" in moved[0].message


def test_books_flag_value_given_by_a_holder_that_may_not_hold(decoder: LogDecoder) -> None:
    books = Books(LEDGER, ORACLE)
    _fold(books, decoder, _two_holders_and_a_certificate())
    _fold(
        books,
        decoder,
        [
            ("CertificateLedger", "TransferValue", {"_fromTokenId": 0, "_toTokenId": 1, "_value": 1_000}),
            (
                "CertificateLedger",
                "ParticipantRolesChanged",
                {"account": HOLDER_A, "roles": int(Role.ISSUER)},
            ),
            ("CertificateLedger", "Transfer", {"from": ZERO_ADDRESS, "to": HOLDER_B, "tokenId": 2}),
            ("CertificateLedger", "TransferValue", {"_fromTokenId": 1, "_toTokenId": 2, "_value": 400}),
        ],
    )
    gave = [v for v in books.violations if v.invariant == "I4"]
    assert len(gave) == 1
    assert f"certificate 1 gave 400 while {HOLDER_A} was not an active holder" in gave[0].message


def test_books_accept_moves_once_the_holder_role_is_back(decoder: LogDecoder) -> None:
    books = Books(LEDGER, ORACLE)
    _fold(books, decoder, _two_holders_and_a_certificate())
    _fold(
        books,
        decoder,
        [
            (
                "CertificateLedger",
                "ParticipantRolesChanged",
                {"account": HOLDER_A, "roles": int(Role.AUDITOR)},
            ),
            (
                "CertificateLedger",
                "ParticipantRolesChanged",
                {"account": HOLDER_A, "roles": int(Role.FACTOR)},
            ),
            ("CertificateLedger", "Transfer", {"from": HOLDER_A, "to": HOLDER_B, "tokenId": 1}),
        ],
    )
    assert not books.violations


def test_getlogs_answers_parse_the_same_typed_or_as_dicts_lowered_and_without_removed_logs() -> None:
    """The fetch path parses getLogs answers into typed structs; the dict path (nodes reached
    through web3's provider) must give the same logs: hex in lower case (a node may answer in mixed
    case, as checksum addresses), numbers as ints, chain order, removed logs left out."""
    log = {
        "address": "0xAbCdEf0000000000000000000000000000000001",
        "topics": ["0x" + "DE" * 32, "0x" + "0a" * 32],
        "data": "0x" + "fF" * 32,
        "blockNumber": "0x1a",
        "blockHash": "0x" + "Bb" * 32,
        "transactionHash": "0x" + "cC" * 32,
        "transactionIndex": "0x2",
        "logIndex": "0x3",
        "removed": False,
        "blockTimestamp": "0x5",  # a key some nodes add: skipped
    }
    earlier = {**log, "logIndex": "0x1"}
    removed = {**log, "logIndex": "0x4", "removed": True}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": [log, removed, earlier]}).encode()
    assert not source._all_lower_case(body)
    answer = source._LOGS_ANSWER.decode(body)
    assert answer.result is not None
    typed = source._typed_logs(answer.result, lower_case=False)
    as_dicts = source._rpc_logs(json.loads(body)["result"])
    expected = [
        RawLog(
            "0xabcdef0000000000000000000000000000000001",
            ("0x" + "de" * 32, "0x" + "0a" * 32),
            "0x" + "ff" * 32,
            26,
            "0x" + "bb" * 32,
            "0x" + "cc" * 32,
            2,
            index,
        )
        for index in (1, 3)
    ]
    assert typed == as_dicts == expected
    lower = json.dumps({"jsonrpc": "2.0", "id": 1, "result": [_lowered(e) for e in (log, earlier)]}).encode()
    assert source._all_lower_case(lower)
    lowered = source._LOGS_ANSWER.decode(lower).result
    assert lowered is not None and source._typed_logs(lowered, lower_case=True) == expected


def _lowered(log: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v.lower() if isinstance(v, str) else [t.lower() for t in v] if isinstance(v, list) else v
        for k, v in log.items()
    }


def test_a_getlogs_answer_that_is_an_error_or_misshapen_does_not_parse_as_logs() -> None:
    error = b'{"jsonrpc":"2.0","id":1,"error":{"code":-32005,"message":"more than 10000 results"}}'
    parsed = source._LOGS_ANSWER.decode(error)
    assert parsed.result is None and parsed.error["code"] == -32005
    with pytest.raises(msgspec.ValidationError):
        source._LOGS_ANSWER.decode(b'{"jsonrpc":"2.0","id":1,"result":[{"address":"0x01"}]}')


def test_a_follower_outlives_an_error_answer_from_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider answers one request with a JSON-RPC error (rate limited): the round fails, is
    reported, and the next one indexes as if nothing happened."""
    from chain_client.chain import connect
    from chain_client.index.sync import Indexer
    from chain_client.index.workload import Workload

    chain = connect()
    work = Workload.deploy(chain, seed=3)
    indexer = Indexer(chain, work.system.deployment, IndexDatabase(tmp_path / "follow.sqlite"))
    real_head = indexer.source.head
    answers: list[str] = []

    def rate_limited_once() -> int:
        if not answers:
            answers.append("error")
            raise source.RpcRequestError("eth_blockNumber: {'code': -32005, 'message': 'limit exceeded'}")
        return real_head()

    monkeypatch.setattr(indexer.source, "head", rate_limited_once)
    errors: list[Exception] = []
    rounds: list[object] = []
    last = indexer.follow(poll_seconds=0.01, stop=lambda: bool(errors and rounds),
                          on_status=rounds.append, on_error=errors.append)  # fmt: skip
    assert [type(e) for e in errors] == [source.RpcRequestError]
    assert last is not None and last.synced_block == chain.w3.eth.block_number


# ---------------------------------------------------------------------- strict hex (review, session 6)


def _transfer_value_log(word: str) -> RawLog:
    one = "0x" + f"{1:064x}"
    return RawLog(
        LEDGER.lower(),
        ("0x" + event_abi_to_log_topic(_abi("CertificateLedger", "TransferValue")).hex(), one, one),  # type: ignore[arg-type]
        "0x" + word,
        7,
        "0x" + "ab" * 32,
        "0x" + "cd" * 32,
        0,
        0,
    )


@pytest.mark.parametrize(
    "word",
    [
        "-" + "0" * 62 + "1",  # int() takes a sign: -1 as a uint256
        "+" + "0" * 62 + "1",
        "0" * 30 + "_" + "0" * 32 + "1",  # and underscores
        " " * 63 + "5",  # and spaces
        "0" * 63 + "A",  # upper case: logs are lower-cased where they are read
        "0" * 63 + "g",
    ],
)
def test_compiled_and_generic_decoders_refuse_a_word_that_is_not_plain_hex(
    decoder: LogDecoder, word: str
) -> None:
    log = _transfer_value_log(word)
    spec = decoder._specs[log.address][log.topics[0]]
    assert spec.fast is not None
    with pytest.raises(UndecodableLog, match="lower-case hex"):
        decoder.decode(log)
    with pytest.raises(ValueError, match="lower-case hex"):
        spec.decode_generic(log.topics, log.data)


@pytest.mark.parametrize("where", ["bytes32 in the data", "topic", "data without 0x", "array item"])
def test_decoders_refuse_non_hex_where_a_value_is_copied_as_it_is(decoder: LogDecoder, where: str) -> None:
    """bytes32 values (an invoice hash) and indexed hashes were copied from the log unchecked."""
    log = _log(_abi("CertificateLedger", "OrderOpened"), _order_opened())
    topics, data = list(log.topics), log.data
    if where == "bytes32 in the data":
        data = data[: 2 + 3 * 64] + "zz" * 32 + data[2 + 4 * 64 :]  # invoiceHash
    elif where == "topic":
        topics[1] = "0x" + "zz" * 32
    elif where == "data without 0x":
        data = "00" + data[2:]
    else:
        log = _device_set_log()
        topics, data = list(log.topics), log.data[:-64] + "xx" * 32
    damaged = log._replace(topics=tuple(topics), data=data)
    spec = decoder._specs[damaged.address][damaged.topics[0]]
    with pytest.raises(UndecodableLog):
        decoder.decode(damaged)
    with pytest.raises(ValueError):
        spec.decode_generic(damaged.topics, damaged.data)


# ---------------------------------------------------------------------- getLogs answers


def _at(block: int, tx_index: int, log_index: int) -> RawLog:
    return RawLog(LEDGER.lower(), (), "0x", block, "0x" + "ab" * 32, "0x" + "cd" * 32, tx_index, log_index)


def test_a_getlogs_answer_with_a_log_outside_the_range_or_twice_is_refused() -> None:
    good = [_at(10, 0, 0), _at(10, 0, 1), _at(10, 1, 2), _at(12, 0, 0)]
    assert source.misplaced_log(good, 10, 12) is None
    assert source.misplaced_log([], 10, 12) is None
    assert "twice" in (source.misplaced_log([*good[:2], good[1], *good[2:]], 10, 12) or "")
    assert "out of order" in (source.misplaced_log([good[1], good[0]], 10, 12) or "")
    assert "block 9, outside" in (source.misplaced_log([_at(9, 0, 0), *good], 10, 12) or "")
    assert "block 13, outside" in (source.misplaced_log([*good, _at(13, 0, 0)], 10, 12) or "")


# ---------------------------------------------------------------------- events against their records


FACTOR = to_checksum_address("0x" + "88" * 20)


def _offer_and_sale(reserved_for: str = ZERO_ADDRESS, **sale: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """An offer of certificate 1 (to any factor, or only to `reserved_for`) bought by FACTOR on its
    terms, but for the sale's fields given in `sale`."""
    terms = {"certificateId": 1, "seller": HOLDER_A, "value": 1_000, "price": 900}
    return [
        (
            "CertificateLedger",
            "DiscountOffered",
            {"offerId": 1, **terms, "buyer": reserved_for, "expiry": 1_900_000_000},
        ),
        (
            "CertificateLedger",
            "DiscountSold",
            {
                "offerId": 1,
                "boughtCertificateId": 1,
                "buyer": FACTOR,
                "annualRateBps": 100,
                **terms,
                **sale,
            },
        ),
    ]


@pytest.mark.parametrize("sale", [{}, {"price": 450}, {"value": 999}, {"seller": HOLDER_B}])
def test_books_flag_a_sale_on_other_terms_than_its_offer(decoder: LogDecoder, sale: dict[str, Any]) -> None:
    """A sale's price is in no record and no view: a rewritten price is only visible against the
    offer the sale closes."""
    books = Books(LEDGER, ORACLE)
    _fold(books, decoder, _two_holders_and_a_certificate() + _offer_and_sale(**sale))
    differing = [v for v in books.violations if v.invariant == "I0" and v.entity == "offer"]
    assert len(differing) == (1 if sale else 0), books.violations
    if sale:
        assert "offer 1" in differing[0].message and "sold as" in differing[0].message


@pytest.mark.parametrize(("buyer", "flagged"), [(FACTOR, False), (HOLDER_B, True)])
def test_books_flag_a_sale_to_another_buyer_than_the_one_the_offer_is_reserved_for(
    decoder: LogDecoder, buyer: str, flagged: bool
) -> None:
    """An offer made to one factor may be bought by that factor only: a sale of it to any other
    account is not on the offer's terms, even at its price and value."""
    books = Books(LEDGER, ORACLE)
    _fold(
        books, decoder, _two_holders_and_a_certificate() + _offer_and_sale(reserved_for=FACTOR, buyer=buyer)
    )
    differing = [v for v in books.violations if v.invariant == "I0" and v.entity == "offer"]
    assert len(differing) == (1 if flagged else 0), books.violations
    if flagged:
        assert f"buyer {FACTOR}) sold as" in differing[0].message
        assert differing[0].message.endswith(f"to {HOLDER_B}")


def test_books_flag_a_settlement_to_another_than_the_holder(decoder: LogDecoder) -> None:
    books = Books(LEDGER, ORACLE)
    _fold(books, decoder, _two_holders_and_a_certificate())
    _fold(
        books,
        decoder,
        [
            (
                "CertificateLedger",
                "CertificateSettled",
                {"certificateId": 1, "orderId": 0, "holder": HOLDER_B, "value": 0},
            )
        ],
    )
    wrong = [v for v in books.violations if v.invariant == "I0" and v.entity == "certificate"]
    assert [v.message for v in wrong] == [f"certificate 1 settled to {HOLDER_B}, held by {HOLDER_A}"]


# ---------------------------------------------------------------------- invoices given back (D54)


def _opened(order_id: int) -> tuple[str, str, dict[str, Any]]:
    return ("CertificateLedger", "OrderOpened", _order_opened(orderId=order_id))


def _cancelled(order_id: int) -> tuple[str, str, dict[str, Any]]:
    return (
        "CertificateLedger",
        "OrderCancelled",
        {"orderId": order_id, "issuer": ISSUER, "refunded": 2**100},
    )


def _financed_twice(books: Books) -> list[str]:
    return [v.message for v in books.violations if v.invariant == "I5"]


def test_books_let_a_cancelled_orders_invoice_be_used_again(decoder: LogDecoder) -> None:
    books = Books(LEDGER, ORACLE)
    _fold(books, decoder, [_opened(1), _cancelled(1), _opened(2)])
    assert _financed_twice(books) == []
    # Held again by order 2: a third order with it is flagged.
    _fold(books, decoder, [_opened(3)])
    assert _financed_twice(books) == ["invoice 0x" + "01" * 32 + " financed twice (order 3)"]


def test_books_undoing_a_cancellation_hold_the_invoice_again(decoder: LogDecoder) -> None:
    """A reorg undoes changes newest first: the reopening order, then the cancellation. The
    invoice is then the first order's again, and an order opening with it is flagged."""
    from chain_client.index.books import Change

    books = Books(LEDGER, ORACLE)
    changes: list[Change] = []
    for log_index, (contract, name, values) in enumerate([_opened(1), _cancelled(1), _opened(2)]):
        event = decoder.decode(_log(_abi(contract, name), values, log_index=log_index))
        assert isinstance(event, Event)
        changes += books.apply(event).changes
    for change in reversed([c for c in changes if c.entity == "order"]):
        if change.key == 2 or change.field != "@created":
            books.undo(change)
    assert books.get("order", 2) is None
    order = books.get("order", 1)
    assert order is not None and order["status"] == OrderStatus.OPEN
    _fold(books, decoder, [_opened(4)])
    assert _financed_twice(books) == ["invoice 0x" + "01" * 32 + " financed twice (order 4)"]


@pytest.mark.parametrize(
    ("status", "flagged"),
    [(OrderStatus.OPEN, True), (OrderStatus.CONFIRMED, True), (OrderStatus.CANCELLED, False)],
)
def test_books_loaded_from_the_database_keep_the_invoice_rule(
    decoder: LogDecoder, status: int, flagged: bool
) -> None:
    """A sync resuming from the database loads the orders back: an open or confirmed order holds
    its invoice, a cancelled one does not."""
    fold = Books(LEDGER, ORACLE)
    _fold(fold, decoder, [_opened(1)])
    record = dict(fold.get("order", 1) or {})
    record["status"] = status
    books = Books(LEDGER, ORACLE)
    books.load("order", 1, record, None)
    _fold(books, decoder, [_opened(2)])
    assert bool(_financed_twice(books)) is flagged


# ---------------------------------------------------------------------- I3: deficit and surplus


@pytest.mark.parametrize(("balance", "violated", "noted"), [(2**100, False, False), (2**100 - 1, True, False),
                                                             (2**100 + 7, False, True)])  # fmt: skip
def test_i3_is_a_finding_for_a_deficit_and_a_note_for_a_surplus(
    decoder: LogDecoder, balance: int, violated: bool, noted: bool
) -> None:
    """Anyone may transfer settlement tokens straight to the ledger: more than escrow plus credits
    must not fail an audit for good; less is a breach."""
    from chain_client import audit
    from chain_client.index.views import ChainView

    books = Books(LEDGER, ORACLE)
    _fold(books, decoder, [_opened(1)])
    violations, notes = audit._violations(books, ChainView(block=9, escrow_balance=balance))
    assert any(v.invariant == "I3" for v in violations) is violated
    assert bool(notes) is noted
    if noted:
        assert "7 more than open escrow plus credits" in notes[0]


# ---------------------------------------------------------------------- I1, I2, I3 as events are folded


ESCROWED, FACE = 1_000, 900


def _registered_issuer_and_holder() -> list[tuple[str, str, dict[str, Any]]]:
    cast = ((ISSUER, b"\x0c" * 32, Role.ISSUER), (HOLDER_A, b"\x0a" * 32, Role.SUPPLIER))
    return [
        (
            "CertificateLedger",
            "ParticipantRegistered",
            {"account": account, "entityId": entity_id, "roles": int(roles), "issuerLimit": 10**6},
        )
        for account, entity_id, roles in cast
    ]


def _a_confirmed_order(settled: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """Order 1 escrows 1,000, is confirmed for 900 (100 refunded) as root certificate 1 held by
    HOLDER_A, and, if `settled`, paid: every invariant holds."""
    steps = [
        *_registered_issuer_and_holder(),
        ("CertificateLedger", "OrderOpened", _order_opened(escrowed=ESCROWED, payee=HOLDER_A)),
        ("CertificateLedger", "Transfer", {"from": ZERO_ADDRESS, "to": HOLDER_A, "tokenId": 1}),
        ("CertificateLedger", "TransferValue", {"_fromTokenId": 0, "_toTokenId": 1, "_value": FACE}),
        (
            "CertificateLedger",
            "CertificateIssued",
            {
                "certificateId": 1,
                "orderId": 1,
                "parentId": 0,
                "holder": HOLDER_A,
                "value": FACE,
                "depth": 0,
                "maturity": 1_900_000_000,
            },
        ),
        (
            "CertificateLedger",
            "OrderConfirmed",
            {
                "orderId": 1,
                "rootCertificateId": 1,
                "deliveredQuantity": 900,
                "receivedAt": 1_700_000_000,
                "face": FACE,
                "refunded": ESCROWED - FACE,
            },
        ),
    ]
    if settled:
        steps.append(
            (
                "CertificateLedger",
                "CertificateSettled",
                {"certificateId": 1, "orderId": 1, "holder": HOLDER_A, "value": FACE},
            )
        )
    return steps


@pytest.mark.parametrize("settled", [False, True])
def test_the_invariants_hold_over_an_honest_order_confirmed_and_paid(
    decoder: LogDecoder, settled: bool
) -> None:
    """The ground for the tests below: the same order, untouched, breaks nothing."""
    from chain_client.index.books import check_invariants

    books = Books(LEDGER, ORACLE)
    _fold(books, decoder, _a_confirmed_order(settled))
    assert books.violations == []
    assert check_invariants(books) == []


def test_books_flag_a_confirmation_whose_face_and_refund_are_not_the_escrow(decoder: LogDecoder) -> None:
    """I1 as the receipt is confirmed: what becomes certificates plus what goes back to the issuer
    is exactly what was escrowed, not a unit more or less."""
    books = Books(LEDGER, ORACLE)
    steps = _a_confirmed_order(settled=False)
    confirmed = steps[-1][2]
    steps[-1] = ("CertificateLedger", "OrderConfirmed", {**confirmed, "refunded": ESCROWED - FACE + 1})
    _fold(books, decoder, steps)
    assert [(v.invariant, v.entity, v.key, v.message) for v in books.violations] == [
        ("I1", "order", 1, f"order 1: face {FACE} + refund {ESCROWED - FACE + 1} != escrowed {ESCROWED}")
    ]


def test_check_invariants_flag_a_cancelled_order_that_refunded_less_than_it_escrowed(
    decoder: LogDecoder,
) -> None:
    """I1 over the final books: a cancelled order's refund must return the whole escrow (its unit
    left in the ledger is owed to nobody)."""
    from chain_client.index.books import check_invariants

    books = Books(LEDGER, ORACLE)
    _fold(
        books,
        decoder,
        [
            *_registered_issuer_and_holder(),
            ("CertificateLedger", "OrderOpened", _order_opened(escrowed=ESCROWED, payee=HOLDER_A)),
            (
                "CertificateLedger",
                "OrderCancelled",
                {"orderId": 1, "issuer": ISSUER, "refunded": ESCROWED - 1},
            ),
        ],
    )
    assert books.violations == []
    found = check_invariants(books)
    assert [(v.invariant, v.entity, v.key) for v in found] == [("I1", "order", 1)]
    assert found[0].message == (
        f"order 1: live 0 + paid 0 + refunded {ESCROWED - 1} + unconfirmed 0 = {ESCROWED - 1} "
        f"!= escrowed {ESCROWED}"
    )


@pytest.mark.parametrize(
    ("settled", "entity", "name", "delta", "expected"),
    [
        # value gone from a live certificate: the order no longer adds up, nor do its certificates
        (False, "certificate", "value", -1, [
            ("I1", f"order 1: live {FACE - 1} + paid 0 + refunded 100 + unconfirmed 0 = {ESCROWED - 1} "
                   f"!= escrowed {ESCROWED}"),
            ("I2", f"order 1: its certificates hold {FACE - 1}, face is {FACE}"),
        ]),
        # paid more than its settled certificates hold
        (True, "order", "paid", 1, [
            ("I1", f"order 1: live 0 + paid {FACE + 1} + refunded 100 + unconfirmed 0 = {ESCROWED + 1} "
                   f"!= escrowed {ESCROWED}"),
            ("I2", f"order 1: settled certificates hold {FACE}, paid is {FACE + 1}"),
        ]),
        # a settled certificate holding more than was paid for it, and than the face
        (True, "certificate", "value", 1, [
            ("I2", f"order 1: its certificates hold {FACE + 1}, face is {FACE}"),
            ("I2", f"order 1: settled certificates hold {FACE + 1}, paid is {FACE}"),
        ]),
    ],
)  # fmt: skip
def test_check_invariants_flag_an_order_whose_certificates_or_payments_do_not_add_up(
    decoder: LogDecoder, settled: bool, entity: str, name: str, delta: int, expected: list[tuple[str, str]]
) -> None:
    """I1 (live + paid + refunded = escrowed) and both halves of I2 (the certificates hold the face;
    the settled ones hold what was paid) over the final books, each named for the order."""
    from chain_client.index.books import check_invariants

    books = Books(LEDGER, ORACLE)
    _fold(books, decoder, _a_confirmed_order(settled))
    record = books.get(entity, 1)
    assert record is not None
    record[name] += delta
    found = check_invariants(books)
    assert [(v.invariant, v.message) for v in found] == expected
    assert {(v.entity, v.key) for v in found} == {("order", 1)}


def test_books_flag_a_certificate_moved_by_an_account_that_does_not_hold_it(decoder: LogDecoder) -> None:
    """A Transfer names who it moves the certificate from: an active holder who is not its holder
    cannot have moved it, whoever it went to."""
    books = Books(LEDGER, ORACLE)
    _fold(books, decoder, _two_holders_and_a_certificate())
    _fold(
        books, decoder, [("CertificateLedger", "Transfer", {"from": HOLDER_B, "to": HOLDER_B, "tokenId": 1})]
    )
    assert [(v.invariant, v.message) for v in books.violations] == [
        ("I4", f"certificate 1 moved from {HOLDER_B}, held by {HOLDER_A}")
    ]


@pytest.mark.parametrize(("withdrawn", "flagged"), [(500, False), (499, False), (501, True)])
def test_books_flag_a_withdrawal_of_more_than_the_credit(
    decoder: LogDecoder, withdrawn: int, flagged: bool
) -> None:
    """I3 per account: a holder withdraws at most what was credited to it; the whole credit, to the
    unit, is an honest withdrawal."""
    books = Books(LEDGER, ORACLE)
    _fold(
        books,
        decoder,
        [
            ("CertificateLedger", "PaymentCredited", {"account": HOLDER_A, "orderId": 1, "amount": 500}),
            ("CertificateLedger", "Withdrawn", {"account": HOLDER_A, "amount": withdrawn}),
        ],
    )
    expected = [("I3", "credit", HOLDER_A, f"{HOLDER_A} withdrew {withdrawn} of a 500 credit")]
    assert [(v.invariant, v.entity, v.key, v.message) for v in books.violations] == (
        expected if flagged else []
    )


@pytest.mark.parametrize(("balance", "ok"), [(ESCROWED, True), (ESCROWED - 1, False)])
def test_a_report_whose_only_findings_are_violations_is_not_ok(
    decoder: LogDecoder, balance: int, ok: bool
) -> None:
    """Verify's verdict counts the invariants' breaches: a ledger a unit short of its escrow fails
    the audit though every record, event, row and digest agrees."""
    from chain_client import audit
    from chain_client.index.views import ChainView

    books = Books(LEDGER, ORACLE)
    opened = ("CertificateLedger", "OrderOpened", _order_opened(escrowed=ESCROWED, payee=HOLDER_A))
    _fold(books, decoder, [*_registered_issuer_and_holder(), opened])
    violations, notes = audit._violations(books, ChainView(block=9, escrow_balance=balance))
    report = audit.VerifyReport(9, "0x" + "00" * 32, "0x" + "00" * 32, violations=violations, notes=notes)
    assert [v.invariant for v in report.violations] == ([] if ok else ["I3"])
    assert report.ok is ok
    assert [f.endswith("1 missing") for f in report.findings()] == ([] if ok else [True])


# ---------------------------------------------------------------------- merges and whose index


def test_a_transfer_value_is_a_merge_only_into_a_certificate_already_funded(decoder: LogDecoder) -> None:
    """Every certificate's first TransferValue funds it as it is minted (a root's from 0, a split's
    from its parent); only a later one between two certificates is a merge, whichever way it runs
    along the tree."""
    entry = _abi("CertificateLedger", "TransferValue")
    moves = [(0, 1, 1_000), (1, 2, 400), (1, 3, 300), (2, 3, 150), (3, 1, 50), (1, 2, 20)]
    events = []
    for log_index, (giver, taker, value) in enumerate(moves):
        values = {"_fromTokenId": giver, "_toTokenId": taker, "_value": value}
        event = decoder.decode(_log(entry, values, log_index=log_index))
        assert isinstance(event, Event)
        events.append(event)
    found = merges_in(events)
    assert [(m.source, m.target, m.value, m.block) for m in found] == [
        (2, 3, 150, 7),
        (3, 1, 50, 7),
        (1, 2, 20, 7),
    ]


def _index_of(path: Path, ledger: str, oracle: str = ORACLE, chain_id: int = 31337) -> IndexDatabase:
    db = IndexDatabase(path)
    db.create()
    db.initialise(
        IndexState(
            chain_id=chain_id,
            ledger=ledger,
            oracle=oracle,
            deployment_block=5,
            synced_block=4,
            synced_hash="0x" + "00" * 32,
            digest="0x" + "00" * 32,
        ),
        {"chain_id": chain_id, "number": 4, "hash": "0x" + "00" * 32, "digest": "0x" + "00" * 32},
    )
    return db


def _manifest(ledger: str = LEDGER, oracle: str = ORACLE, chain_id: int = 31337) -> Deployment:
    return Deployment(chain_id, ledger, oracle, STRANGER, ISSUER, 5, {})  # type: ignore[arg-type]


def test_an_index_is_of_the_manifests_deployment_by_chain_and_addresses(tmp_path: Path) -> None:
    """The same contracts (their addresses however spelt) pass, for a replay or a sync; another
    chain, ledger or oracle is refused naming both, the oracle only where it is what differs."""
    db = _index_of(tmp_path / "index.sqlite", LEDGER.lower())
    for doing in ("replay", "sync"):
        check_index_of(db, _manifest(), doing)
    check_index_of(IndexDatabase(tmp_path / "new.sqlite"), _manifest(), "sync")
    assert not (tmp_path / "new.sqlite").exists()
    with pytest.raises(AnotherDeploymentsIndex) as refused:
        check_index_of(db, _manifest(chain_id=1), "replay")
    assert f"chain 31337, ledger {LEDGER.lower()} (the manifest's: chain 1, ledger {LEDGER})" in str(
        refused.value
    )
    assert "give --replace" in str(refused.value)
    with pytest.raises(AnotherDeploymentsIndex) as refused:
        check_index_of(db, _manifest(oracle=STRANGER), "sync")
    said = str(refused.value)
    assert f"oracle {ORACLE} (the manifest's: chain 31337, ledger {LEDGER}, oracle {STRANGER})" in said
    assert "a sync would mix two deployments" in said


def test_a_rebuild_on_a_read_only_file_system_does_not_fail_removing_files_that_are_not_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a read-only mount, unlinking a missing file is EROFS, not ENOENT: `unlink(missing_ok=True)`
    raised it, and `audit replay` there ended in OSError's traceback before SQLite could say why."""
    present = tmp_path / "index.sqlite"
    present.write_bytes(b"")

    def read_only(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", read_only)
    db_module._remove_sqlite_file(tmp_path / "missing.sqlite")  # nothing there: nothing to remove
    with pytest.raises(OSError, match="Read-only file system"):
        db_module._remove_sqlite_file(present)  # one that is there really cannot be removed


def test_a_db_that_is_a_directory_or_cannot_be_read_is_told_so_without_advice_to_delete_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both were "is not a SQLite database (...): ... move or delete this one if it is not needed",
    for a directory (disk I/O error) and for an index SQLite could not open on read-only media."""
    with pytest.raises(
        db_module.IndexDatabaseError, match=r"is a directory: give the index's file with --db"
    ):
        db_module._check_index_file(tmp_path, "a replay would replace it")
    index = tmp_path / "index.sqlite"
    IndexDatabase(index).reset()
    real = sqlite3.connect

    def cannot_open(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        # What SQLite answers for a WAL index on read-only media without its -shm file.
        real(":memory:").execute("ATTACH DATABASE ? AS x", (str(tmp_path / "no" / "such.db"),))
        raise AssertionError("unreachable")

    monkeypatch.setattr(sqlite3, "connect", cannot_open)
    with pytest.raises(db_module.IndexDatabaseError) as refused:
        db_module._check_index_file(index, "a sync would add the index's tables to it")
    message = str(refused.value)
    assert message.startswith(f"{index} cannot be read (unable to open database"), message
    assert "delete" not in message
    # A damaged file keeps the advice: it is no index to keep.
    monkeypatch.undo()
    damaged = tmp_path / "damaged.sqlite"
    damaged.write_bytes(index.read_bytes()[:100] + b"\xff" * 8_000)
    with pytest.raises(db_module.IndexDatabaseError, match="move or delete this one"):
        db_module._check_index_file(damaged, "a replay would replace it")


def test_a_failing_follower_waits_longer_each_round_up_to_a_bound() -> None:
    """A follower (the API's, `serve --workers`'s, `audit sync --follow`) asked a node that was away
    twice a second for as long as it was away. Its wait doubles with each failed round in a row, to
    a bound, and is the poll interval again once a round succeeds; a poll of 0 still backs off."""
    waits = [follow_backoff(0.5, failures) for failures in range(8)]
    assert waits[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, FOLLOW_BACKOFF_MAX]
    assert max(waits) == FOLLOW_BACKOFF_MAX
    assert follow_backoff(60.0, 5) == 60.0  # a poll longer than the bound is kept
    assert follow_backoff(0.0, 0) == 0.0 and follow_backoff(0.0, 3) == 0.4
