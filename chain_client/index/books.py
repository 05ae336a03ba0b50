"""The books: every record the ledger and the oracle keep, rebuilt from their events alone.

`Books.apply(event)` changes the records as the contract did and returns what changed (the state
changes the index stores and the digest covers), the payments the event booked, and any breach of
the invariants in DESIGN.md it reveals. The same code folds events during sync, during verify and
for the state at a past block, so there is one definition of what an event means.

A record is a dict of field -> value; `ENTITIES` names each record's fields and their kinds, which
fix how a value is written as canonical text (`encode_value`) for the change log and the digest.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from chain_client.index.decode import Event
from chain_client.models import CertificateStatus, OrderStatus, Role

Kind = Literal["uint", "int", "bool", "str", "json"]
Key = int | str
Record = dict[str, Any]

ZERO_ADDRESS = "0x" + "0" * 40
SYSTEM_KEY = "system"
#: The pseudo-field of the change that creates a record; its `new` is the whole initial record.
CREATED = "@created"
HOLDER_ROLES = int(Role.SUPPLIER | Role.FACTOR)


@dataclass(frozen=True)
class EntitySpec:
    key: str
    key_kind: Kind
    fields: dict[str, Kind]


ENTITIES: dict[str, EntitySpec] = {
    "order": EntitySpec(
        "order_id",
        "uint",
        {
            "issuer": "str",
            "payee": "str",
            "maturity": "int",
            "deadline": "int",
            "status": "int",
            "expected_quantity": "uint",
            "escrowed": "uint",
            "paid": "uint",
            "refunded": "uint",
            "delivered_quantity": "uint",
            "root_certificate_id": "uint",
            "invoice_hash": "str",
            "warehouse": "str",
            "goods_hash": "str",
        },
    ),
    "certificate": EntitySpec(
        "certificate_id",
        "uint",
        {
            "order_id": "uint",
            "holder": "str",
            "value": "uint",
            "parent_id": "uint",
            "depth": "int",
            "maturity": "int",
            "status": "int",
            "frozen": "bool",
        },
    ),
    "participant": EntitySpec(
        "address",
        "str",
        {
            "entity_id": "str",
            "roles": "int",
            "active": "bool",
            "issuer_limit": "uint",
            "certificate_count": "uint",
            "outstanding": "uint",
        },
    ),
    "offer": EntitySpec(
        "offer_id",
        "uint",
        {
            "certificate_id": "uint",
            "seller": "str",
            "buyer": "str",
            "value": "uint",
            "price": "uint",
            "expiry": "int",
            "open": "bool",
        },
    ),
    "credit": EntitySpec("account", "str", {"amount": "uint"}),
    "warehouse": EntitySpec(
        "warehouse_id",
        "str",
        {
            "active": "bool",
            "threshold": "int",
            "device_count": "int",
            "device_set_version": "int",
            "freshness": "int",
            "devices": "json",
        },
    ),
    "attestation": EntitySpec(
        "digest",
        "str",
        {"order_id": "uint", "warehouse": "str", "quantity": "uint", "received_at": "int", "signers": "json"},
    ),
    "system": EntitySpec(
        "key",
        "str",
        {"paused": "bool", "min_split_unit": "uint", "max_split_depth": "int", "ledger_bound": "str"},
    ),
}

_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii

_ZERO: dict[Kind, Any] = {"uint": 0, "int": 0, "bool": False, "str": "", "json": ()}


def blank(entity: str) -> Record:
    """A record with every field at the contract's zero value."""
    return {name: _ZERO[kind] for name, kind in ENTITIES[entity].fields.items()}


def encode_value(kind: Kind, value: Any) -> str:
    """Canonical text of a field value: decimal integers, true/false, JSON lists."""
    return ENCODERS[kind](value)


def _bool_text(value: Any) -> str:
    return "true" if value else "false"


def _json_text(value: Any) -> str:
    return json.dumps(list(value), separators=(",", ":"))


#: `encode_value` by kind, as plain functions (a replay encodes a few values per event).
ENCODERS: dict[Kind, Callable[[Any], str]] = {
    "uint": str,
    "int": str,
    "str": str,
    "bool": _bool_text,
    "json": _json_text,
}


def decode_value(kind: Kind, text: str) -> Any:
    if kind in ("uint", "int"):
        return int(text)
    if kind == "bool":
        return text == "true"
    if kind == "json":
        return tuple(json.loads(text))
    return text


#: per entity, its fields in name order as ('"name":', name, encoder)
_SORTED_FIELDS = {
    entity: [(f'"{name}":', name, ENCODERS[kind]) for name, kind in sorted(spec.fields.items())]
    for entity, spec in ENTITIES.items()
}


def encode_record(entity: str, record: Record) -> str:
    """Canonical JSON of a whole record: an object of its fields' canonical texts, keys sorted."""
    return (
        "{"
        + ",".join(
            [prefix + _json_string(encode(record[name])) for prefix, name, encode in _SORTED_FIELDS[entity]]
        )
        + "}"
    )


def encode_key(entity: str, key: Key) -> str:
    return str(key)


def decode_key(entity: str, text: str) -> Key:
    return int(text) if ENTITIES[entity].key_kind == "uint" else text


class Touch(NamedTuple):
    """Where a change came from: the event's block, transaction, log index and name."""

    block: int
    tx: str
    log_index: int
    event: str

    def __str__(self) -> str:
        return f"{self.event} (block {self.block}, tx {self.tx}, log {self.log_index})"


class Change(NamedTuple):
    """One field of one record changed (NamedTuples here: a replay makes one per change)."""

    entity: str
    key: Key
    field: str
    old: Any
    new: Any

    def canonical_new(self) -> str:
        if self.field == CREATED:
            return encode_record(self.entity, self.new)
        return encode_value(ENTITIES[self.entity].fields[self.field], self.new)

    def canonical_old(self) -> str | None:
        if self.field == CREATED or self.old is None:
            return None
        return encode_value(ENTITIES[self.entity].fields[self.field], self.old)


class Payment(NamedTuple):
    kind: str
    order_id: int | None
    certificate_id: int | None
    payer: str
    payee: str
    amount: int


@dataclass(frozen=True)
class Violation:
    """A breach of a DESIGN.md invariant (I1..I5), or an event the books cannot place (I0)."""

    invariant: str
    message: str
    entity: str = ""
    key: Key = ""
    touch: Touch | None = None

    def __str__(self) -> str:
        where = f" at {self.touch}" if self.touch else ""
        return f"{self.invariant}: {self.message}{where}"


@dataclass
class Applied:
    """What one event did to the books."""

    event: Event
    changes: list[Change] = field(default_factory=list)
    payments: list[Payment] = field(default_factory=list)


class UnhandledEvent(Exception):
    """An event of our ABIs that the books do not know how to apply (a new contract event)."""


#: Events that change no record the books keep: approvals live and die with the holder epoch; the
#: oracle's reading rules, relayer allow-list and single readings are kept in the event table (the
#: receipt they add up to is the attestation record), since no ledger balance depends on them.
NO_BOOK_EVENTS = frozenset(
    {
        "Approval",
        "ApprovalForAll",
        "ApprovalValue",
        "EIP712DomainChanged",
        "ReadingRulesChanged",
        "RelayerChanged",
        "ObservationAccepted",
    }
)


class Books:
    """The records of one deployment, and the rules that change them."""

    def __init__(self, ledger: str, oracle: str) -> None:
        self.ledger = ledger
        self.oracle = oracle
        self.records: dict[str, dict[Key, Record]] = {name: {} for name in ENTITIES}
        self.touched: dict[tuple[str, Key], Touch] = {}
        self.violations: list[Violation] = []
        self._invoices: set[str] = set()
        self._current: Applied | None = None
        self._touch = Touch(0, "", 0, "")

    # ------------------------------------------------------------------ reading

    def get(self, entity: str, key: Key) -> Record | None:
        return self.records[entity].get(key)

    def all(self, entity: str) -> dict[Key, Record]:
        return self.records[entity]

    def touch_of(self, entity: str, key: Key) -> Touch | None:
        return self.touched.get((entity, key))

    def copy(self) -> Books:
        """An independent copy (verify keeps the books at one block while folding on)."""
        other = Books(self.ledger, self.oracle)
        other.records = {name: {k: dict(r) for k, r in recs.items()} for name, recs in self.records.items()}
        other.touched = dict(self.touched)
        other.violations = list(self.violations)
        other._invoices = set(self._invoices)
        return other

    # ------------------------------------------------------------------ loading and undo

    def load(self, entity: str, key: Key, record: Record, touch: Touch | None) -> None:
        """Puts a stored record back (when the index resumes from its database)."""
        self.records[entity][key] = record
        if touch is not None:
            self.touched[(entity, key)] = touch
        if entity == "order" and record["status"] != OrderStatus.CANCELLED:
            self._invoices.add(record["invoice_hash"])

    def undo(self, change: Change) -> None:
        """Reverses one change (changes are undone newest first when a reorg is rolled back)."""
        records = self.records[change.entity]
        if change.field == CREATED:
            record = records.pop(change.key, None)
            self.touched.pop((change.entity, change.key), None)
            if change.entity == "order" and record is not None:
                self._invoices.discard(record["invoice_hash"])
            return
        records[change.key][change.field] = change.old
        if change.entity == "order" and change.field == "status" and change.old != OrderStatus.CANCELLED:
            # an undone cancellation: the order holds its invoice again
            self._invoices.add(records[change.key]["invoice_hash"])

    def set_touch(self, entity: str, key: Key, touch: Touch | None) -> None:
        if touch is None:
            self.touched.pop((entity, key), None)
        else:
            self.touched[(entity, key)] = touch

    # ------------------------------------------------------------------ applying

    def apply(self, event: Event) -> Applied:
        applied = Applied(event)
        self._current = applied
        self._touch = Touch(event.block_number, event.tx_hash, event.log_index, event.name)
        handler = _HANDLERS.get(event.name)
        if handler is None:
            if event.name not in NO_BOOK_EVENTS:
                raise UnhandledEvent(f"no rule for event {event.name}")
        else:
            handler(self, event.args)
        self._current = None
        return applied

    def _record(self, entity: str, key: Key) -> Record:
        """The record, or a blank one (with an I0 finding) if no earlier event created it."""
        record = self.records[entity].get(key)
        if record is None:
            self._violate("I0", f"{self._touch.event} refers to {entity} {key}, which no event created")
            record = self._create(entity, key, {})
        return record

    def _create(self, entity: str, key: Key, values: Record) -> Record:
        record = blank(entity)
        record.update(values)
        self.records[entity][key] = record
        self._changed(Change(entity, key, CREATED, None, dict(record)))
        return record

    def _set(self, entity: str, key: Key, name: str, value: Any) -> None:
        # The most frequent step of a replay: `_record` and `_changed` inlined for the common case.
        record = self.records[entity].get(key)
        if record is None:
            record = self._record(entity, key)
        old = record[name]
        if old == value:
            return
        record[name] = value
        current = self._current
        assert current is not None
        current.changes.append(Change(entity, key, name, old, value))
        self.touched[(entity, key)] = self._touch

    def _add(self, entity: str, key: Key, name: str, delta: int) -> None:
        self._set(entity, key, name, self._record(entity, key)[name] + delta)

    def _changed(self, change: Change) -> None:
        assert self._current is not None
        self._current.changes.append(change)
        self.touched[(change.entity, change.key)] = self._touch

    def _pay(
        self, kind: str, payer: str, payee: str, amount: int, order: int | None, cert: int | None
    ) -> None:
        assert self._current is not None
        self._current.payments.append(Payment(kind, order, cert, payer, payee, amount))

    def _violate(self, invariant: str, message: str, entity: str = "", key: Key = "") -> None:
        self.violations.append(Violation(invariant, message, entity, key, self._touch))

    # ------------------------------------------------------------------ participants, system

    def _participant_registered(self, a: dict[str, Any]) -> None:
        values = {
            "entity_id": a["entityId"],
            "roles": a["roles"],
            "active": True,
            "issuer_limit": a["issuerLimit"],
        }
        if a["account"] in self.records["participant"]:
            for name, value in values.items():
                self._set("participant", a["account"], name, value)
        else:
            self._create("participant", a["account"], values)

    def _roles_changed(self, a: dict[str, Any]) -> None:
        self._set("participant", a["account"], "roles", a["roles"])

    def _limit_changed(self, a: dict[str, Any]) -> None:
        self._set("participant", a["account"], "issuer_limit", a["limit"])

    def _suspended(self, a: dict[str, Any]) -> None:
        self._set("participant", a["account"], "active", False)

    def _reinstated(self, a: dict[str, Any]) -> None:
        self._set("participant", a["account"], "active", True)

    def _system(self) -> None:
        if SYSTEM_KEY not in self.records["system"]:
            self._create("system", SYSTEM_KEY, {})

    def _split_rules(self, a: dict[str, Any]) -> None:
        self._system()
        self._set("system", SYSTEM_KEY, "min_split_unit", a["minSplitUnit"])
        self._set("system", SYSTEM_KEY, "max_split_depth", a["maxSplitDepth"])

    def _paused(self, a: dict[str, Any]) -> None:
        self._system()
        self._set("system", SYSTEM_KEY, "paused", True)

    def _unpaused(self, a: dict[str, Any]) -> None:
        self._system()
        self._set("system", SYSTEM_KEY, "paused", False)

    def _ledger_bound(self, a: dict[str, Any]) -> None:
        self._system()
        self._set("system", SYSTEM_KEY, "ledger_bound", a["ledger"])

    # ------------------------------------------------------------------ orders

    def _order_opened(self, a: dict[str, Any]) -> None:
        order_id, invoice = a["orderId"], a["invoiceHash"]
        if invoice in self._invoices:
            self._violate("I5", f"invoice {invoice} financed twice (order {order_id})", "order", order_id)
        self._invoices.add(invoice)
        if order_id in self.records["order"]:
            self._violate("I5", f"order {order_id} opened twice", "order", order_id)
        self._create(
            "order",
            order_id,
            {
                "issuer": a["issuer"],
                "payee": a["payee"],
                "maturity": a["maturity"],
                "deadline": a["deadline"],
                "status": int(OrderStatus.OPEN),
                "expected_quantity": a["expectedQuantity"],
                "escrowed": a["escrowed"],
                "invoice_hash": invoice,
                "warehouse": a["warehouse"],
                "goods_hash": a["goodsHash"],
            },
        )
        self._add("participant", a["issuer"], "outstanding", a["escrowed"])
        self._pay("escrow", a["issuer"], self.ledger, a["escrowed"], order_id, None)

    def _order_confirmed(self, a: dict[str, Any]) -> None:
        order_id = a["orderId"]
        order = self._record("order", order_id)
        if order["status"] != OrderStatus.OPEN:
            self._violate(
                "I5",
                f"order {order_id} confirmed while {OrderStatus(order['status']).name}",
                "order",
                order_id,
            )
        if a["face"] + a["refunded"] != order["escrowed"]:
            self._violate(
                "I1",
                f"order {order_id}: face {a['face']} + refund {a['refunded']} "
                f"!= escrowed {order['escrowed']}",
                "order",
                order_id,
            )
        self._set("order", order_id, "status", int(OrderStatus.CONFIRMED))
        self._set("order", order_id, "delivered_quantity", a["deliveredQuantity"])
        self._set("order", order_id, "root_certificate_id", a["rootCertificateId"])
        self._set("order", order_id, "refunded", a["refunded"])
        self._add("participant", order["issuer"], "outstanding", -a["refunded"])
        if a["refunded"]:
            self._pay("refund", self.ledger, order["issuer"], a["refunded"], order_id, None)

    def _order_cancelled(self, a: dict[str, Any]) -> None:
        order_id = a["orderId"]
        order = self._record("order", order_id)
        if order["status"] != OrderStatus.OPEN:
            self._violate(
                "I5",
                f"order {order_id} cancelled while {OrderStatus(order['status']).name}",
                "order",
                order_id,
            )
        self._set("order", order_id, "status", int(OrderStatus.CANCELLED))
        self._set("order", order_id, "refunded", a["refunded"])
        # a cancelled order financed nothing: its invoice may be used again (D54)
        self._invoices.discard(order["invoice_hash"])
        self._add("participant", a["issuer"], "outstanding", -a["refunded"])
        self._pay("refund", self.ledger, a["issuer"], a["refunded"], order_id, None)

    # ------------------------------------------------------------------ certificates

    def _may_hold(self, account: str) -> bool:
        p = self.records["participant"].get(account)
        return p is not None and bool(p["roles"] & HOLDER_ROLES) and bool(p["active"])

    def _check_receiver(self, cert_id: int, to: str) -> None:
        if not self._may_hold(to):
            self._violate(
                "I4", f"certificate {cert_id} went to {to}, not an active holder", "certificate", cert_id
            )

    def _check_sender(self, cert_id: int, holder: str, what: str) -> None:
        """The ledger moves a certificate or its value out only while its holder may hold: a
        suspended holder (D16) or one without a holder role keeps it where it is."""
        if not self._may_hold(holder):
            self._violate(
                "I4",
                f"certificate {cert_id} {what} while {holder} was not an active holder",
                "certificate",
                cert_id,
            )

    def _check_movable(self, cert_id: int, cert: Record, what: str) -> None:
        if cert["frozen"]:
            self._violate("I4", f"frozen certificate {cert_id} {what}", "certificate", cert_id)
        if cert["status"] == CertificateStatus.SETTLED:
            self._violate("I5", f"settled certificate {cert_id} {what}", "certificate", cert_id)

    def _transfer(self, a: dict[str, Any]) -> None:
        cert_id, sender, to = a["tokenId"], a["from"], a["to"]
        if sender == ZERO_ADDRESS:
            if cert_id in self.records["certificate"]:
                self._violate("I2", f"certificate {cert_id} minted twice", "certificate", cert_id)
            self._create("certificate", cert_id, {"holder": to, "status": int(CertificateStatus.LIVE)})
        else:
            cert = self._record("certificate", cert_id)
            self._check_movable(cert_id, cert, "moved")
            if cert["holder"] != sender:
                self._violate("I4", f"certificate {cert_id} moved from {sender}, held by {cert['holder']}")
            self._check_sender(cert_id, sender, "moved")
            self._set("certificate", cert_id, "holder", to)
            self._add("participant", sender, "certificate_count", -1)
        self._check_receiver(cert_id, to)
        self._add("participant", to, "certificate_count", 1)

    def _slot_changed(self, a: dict[str, Any]) -> None:
        self._set("certificate", a["_tokenId"], "order_id", a["_newSlot"])

    def _transfer_value(self, a: dict[str, Any]) -> None:
        source, target, value = a["_fromTokenId"], a["_toTokenId"], a["_value"]
        if source == 0:
            cert = self._record("certificate", target)
            if cert["value"] != 0 or cert["parent_id"] != 0:
                self._violate(
                    "I2", f"value {value} minted into existing certificate {target}", "certificate", target
                )
        else:
            cert = self._record("certificate", source)
            self._check_movable(source, cert, f"gave {value}")
            self._check_sender(source, cert["holder"], f"gave {value}")
            if cert["value"] < value:
                self._violate(
                    "I2",
                    f"certificate {source} gave {value} holding only {cert['value']}",
                    "certificate",
                    source,
                )
            self._set("certificate", source, "value", cert["value"] - value)
        if target == 0:
            self._violate("I2", f"value {value} of certificate {source} destroyed", "certificate", source)
            return
        receiver = self._record("certificate", target)
        if source != 0:
            self._check_movable(target, receiver, f"took {value}")
        self._set("certificate", target, "value", receiver["value"] + value)

    def _certificate_issued(self, a: dict[str, Any]) -> None:
        cert_id = a["certificateId"]
        cert = self._record("certificate", cert_id)
        if cert["holder"] != a["holder"]:
            self._violate("I0", f"certificate {cert_id} issued to {a['holder']}, minted to {cert['holder']}")
        if a["parentId"] == 0 and cert["value"] != a["value"]:
            self._violate("I2", f"root {cert_id} issued with {a['value']}, minted {cert['value']}")
        for name, value in (
            ("order_id", a["orderId"]),
            ("parent_id", a["parentId"]),
            ("depth", a["depth"]),
            ("maturity", a["maturity"]),
            ("holder", a["holder"]),
        ):
            self._set("certificate", cert_id, name, value)

    def _certificate_settled(self, a: dict[str, Any]) -> None:
        cert_id, order_id, value = a["certificateId"], a["orderId"], a["value"]
        cert = self._record("certificate", cert_id)
        if cert["status"] != CertificateStatus.LIVE:
            self._violate("I5", f"certificate {cert_id} settled twice", "certificate", cert_id)
        if cert["frozen"]:
            self._violate("I4", f"frozen certificate {cert_id} settled", "certificate", cert_id)
        if cert["value"] != value:
            self._violate(
                "I2", f"certificate {cert_id} of {cert['value']} settled for {value}", "certificate", cert_id
            )
        if cert["holder"] != a["holder"]:
            self._violate(
                "I0",
                f"certificate {cert_id} settled to {a['holder']}, held by {cert['holder']}",
                "certificate",
                cert_id,
            )
        if cert["order_id"] != order_id:
            self._violate(
                "I0",
                f"certificate {cert_id} of order {cert['order_id']} settled as order {order_id}",
                "certificate",
                cert_id,
            )
        self._set("certificate", cert_id, "status", int(CertificateStatus.SETTLED))
        order = self._record("order", order_id)
        self._add("order", order_id, "paid", value)
        self._add("participant", order["issuer"], "outstanding", -value)
        self._pay("settlement", self.ledger, a["holder"], value, order_id, cert_id)

    def _frozen(self, a: dict[str, Any]) -> None:
        self._set("certificate", a["certificateId"], "frozen", True)

    def _unfrozen(self, a: dict[str, Any]) -> None:
        self._set("certificate", a["certificateId"], "frozen", False)

    # ------------------------------------------------------------------ discount, credits

    def _offered(self, a: dict[str, Any]) -> None:
        self._create(
            "offer",
            a["offerId"],
            {
                "certificate_id": a["certificateId"],
                "seller": a["seller"],
                "buyer": a["buyer"],
                "value": a["value"],
                "price": a["price"],
                "expiry": a["expiry"],
                "open": True,
            },
        )

    def _offer_cancelled(self, a: dict[str, Any]) -> None:
        self._set("offer", a["offerId"], "open", False)

    def _sold(self, a: dict[str, Any]) -> None:
        offer = self._record("offer", a["offerId"])
        if not offer["open"]:
            self._violate("I5", f"offer {a['offerId']} sold while closed", "offer", a["offerId"])
        # A sale is on its offer's terms; nothing but the event shows a sale's price.
        terms = (offer["certificate_id"], offer["seller"], offer["value"], offer["price"])
        sold = (a["certificateId"], a["seller"], a["value"], a["price"])
        if terms != sold or offer["buyer"] not in (ZERO_ADDRESS, a["buyer"]):
            self._violate(
                "I0",
                f"offer {a['offerId']} (certificate, seller, value, price: {terms}; buyer {offer['buyer']}) "
                f"sold as {sold} to {a['buyer']}",
                "offer",
                a["offerId"],
            )
        self._set("offer", a["offerId"], "open", False)
        cert = self.records["certificate"].get(a["certificateId"])
        order_id = cert["order_id"] if cert else None
        self._pay("discount", a["buyer"], a["seller"], a["price"], order_id, a["boughtCertificateId"])

    def _credited(self, a: dict[str, Any]) -> None:
        account = a["account"]
        if account not in self.records["credit"]:
            self._create("credit", account, {})
        self._add("credit", account, "amount", a["amount"])
        self._pay("credit", self.ledger, account, a["amount"], a["orderId"], None)

    def _withdrawn(self, a: dict[str, Any]) -> None:
        account = a["account"]
        credit = self._record("credit", account)
        if credit["amount"] < a["amount"]:
            self._violate(
                "I3", f"{account} withdrew {a['amount']} of a {credit['amount']} credit", "credit", account
            )
        self._add("credit", account, "amount", -a["amount"])
        self._pay("withdrawal", self.ledger, account, a["amount"], None, None)

    # ------------------------------------------------------------------ oracle

    def _device_set(self, a: dict[str, Any]) -> None:
        values = {
            "active": True,
            "threshold": a["threshold"],
            "device_count": len(a["devices"]),
            "device_set_version": a["deviceSetVersion"],
            "freshness": a["freshness"],
            "devices": tuple(a["devices"]),
        }
        if a["warehouse"] in self.records["warehouse"]:
            for name, value in values.items():
                self._set("warehouse", a["warehouse"], name, value)
        else:
            self._create("warehouse", a["warehouse"], values)

    def _warehouse_deactivated(self, a: dict[str, Any]) -> None:
        self._set("warehouse", a["warehouse"], "active", False)

    def _attested(self, a: dict[str, Any]) -> None:
        digest = a["digest"]
        if digest in self.records["attestation"]:
            self._violate("I5", f"attestation {digest} used twice", "attestation", digest)
            return
        self._create(
            "attestation",
            digest,
            {
                "order_id": a["orderId"],
                "warehouse": a["warehouse"],
                "quantity": a["quantity"],
                "received_at": a["receivedAt"],
                "signers": tuple(a["signers"]),
            },
        )


_HANDLERS: dict[str, Callable[[Books, dict[str, Any]], None]] = {
    "ParticipantRegistered": Books._participant_registered,
    "ParticipantRolesChanged": Books._roles_changed,
    "IssuerLimitChanged": Books._limit_changed,
    "ParticipantSuspended": Books._suspended,
    "ParticipantReinstated": Books._reinstated,
    "SplitRulesChanged": Books._split_rules,
    "Paused": Books._paused,
    "Unpaused": Books._unpaused,
    "OrderOpened": Books._order_opened,
    "OrderConfirmed": Books._order_confirmed,
    "OrderCancelled": Books._order_cancelled,
    "Transfer": Books._transfer,
    "SlotChanged": Books._slot_changed,
    "TransferValue": Books._transfer_value,
    "CertificateIssued": Books._certificate_issued,
    "CertificateSettled": Books._certificate_settled,
    "FreezeImposed": Books._frozen,
    "FreezeLifted": Books._unfrozen,
    "DiscountOffered": Books._offered,
    "DiscountOfferCancelled": Books._offer_cancelled,
    "DiscountSold": Books._sold,
    "PaymentCredited": Books._credited,
    "Withdrawn": Books._withdrawn,
    "LedgerBound": Books._ledger_bound,
    "DeviceSetChanged": Books._device_set,
    "WarehouseDeactivated": Books._warehouse_deactivated,
    "ReceiptAttested": Books._attested,
}

HANDLED_EVENTS = frozenset(_HANDLERS) | NO_BOOK_EVENTS


# ---------------------------------------------------------------------- whole-book invariants


def live_value(books: Books) -> dict[int, int]:
    """Order id -> sum of its live certificates' values."""
    totals: dict[int, int] = {}
    for cert in books.all("certificate").values():
        if cert["status"] == CertificateStatus.LIVE:
            totals[cert["order_id"]] = totals.get(cert["order_id"], 0) + cert["value"]
    return totals


def escrow_expected(books: Books) -> int:
    """What the ledger must hold: open escrow of every order plus unwithdrawn credits (D7)."""
    escrow: int = sum(o["escrowed"] - o["paid"] - o["refunded"] for o in books.all("order").values())
    credits: int = sum(c["amount"] for c in books.all("credit").values())
    return escrow + credits


def check_invariants(books: Books) -> list[Violation]:
    """Invariants 1 and 2 over the final books (3 needs the token balance, 4 and 5 are checked as
    each event is applied and collected in `books.violations`)."""
    found: list[Violation] = []
    live = live_value(books)
    all_value: dict[int, int] = {}
    settled_value: dict[int, int] = {}
    for cert in books.all("certificate").values():
        all_value[cert["order_id"]] = all_value.get(cert["order_id"], 0) + cert["value"]
        if cert["status"] == CertificateStatus.SETTLED:
            settled_value[cert["order_id"]] = settled_value.get(cert["order_id"], 0) + cert["value"]
    for order_id, o in sorted(books.all("order").items(), key=_by_key):
        touch = books.touch_of("order", order_id)
        pending = o["escrowed"] if o["status"] == OrderStatus.OPEN else 0
        total = live.get(int(order_id), 0) + o["paid"] + o["refunded"] + pending
        if total != o["escrowed"]:
            found.append(
                Violation(
                    "I1",
                    f"order {order_id}: live {live.get(int(order_id), 0)} + paid {o['paid']} + refunded "
                    f"{o['refunded']} + unconfirmed {pending} = {total} != escrowed {o['escrowed']}",
                    "order",
                    order_id,
                    touch,
                )
            )
        face = o["escrowed"] - o["refunded"] if o["status"] == OrderStatus.CONFIRMED else 0
        if all_value.get(int(order_id), 0) != face:
            found.append(
                Violation(
                    "I2",
                    f"order {order_id}: its certificates hold {all_value.get(int(order_id), 0)}, "
                    f"face is {face}",
                    "order",
                    order_id,
                    touch,
                )
            )
        if settled_value.get(int(order_id), 0) != o["paid"]:
            found.append(
                Violation(
                    "I2",
                    f"order {order_id}: settled certificates hold {settled_value.get(int(order_id), 0)}, "
                    f"paid is {o['paid']}",
                    "order",
                    order_id,
                    touch,
                )
            )
    return found


def _by_key(item: tuple[Key, Record]) -> Key:
    return item[0]
