"""The audit digest: one hash over every change the index applied, chained block by block.

    genesis   = sha256(canonical_json({"scheme": SCHEME, "chain_id", "ledger", "oracle",
                                       "deployment_block"}))
    digest(B) = sha256(digest(previous block with events) || canonical_json(block document of B))

The block document is {"number", "hash", "events": [...]} with, per event in log order,
{"tx", "log", "address", "event", "args", "changes": [[entity, key, field, new], ...]}. Canonical
JSON: keys sorted, no spaces, ASCII only, every integer as a decimal string (so no tool loses
precision on uint256), bools as true/false, byte strings as 0x lower-case hex, addresses in
checksum form. Blocks without events of the ledger or oracle do not enter the chain, so the digest
depends only on the chain's content, not on how a sync split it into ranges or which database held
it: two auditors compare one hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any

from chain_client.index.books import CREATED, ENCODERS, ENTITIES, Applied, Key, encode_record
from chain_client.index.decode import Event

_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii

SCHEME = "certledger/audit-digest/v1"


def canonical(value: Any) -> Any:
    """`value` with integers as decimal strings and tuples as lists, for canonical JSON."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def args_json(args: dict[str, Any]) -> str:
    """The stored form of an event's arguments."""
    return canonical_json(canonical(args))


def genesis(chain_id: int, ledger: str, oracle: str, deployment_block: int) -> str:
    document = {
        "scheme": SCHEME,
        "chain_id": str(chain_id),
        "ledger": ledger,
        "oracle": oracle,
        "deployment_block": str(deployment_block),
    }
    return "0x" + hashlib.sha256(canonical_json(document).encode("ascii")).hexdigest()


ChangeText = tuple[str, str, str, str | None, str]  # entity, key, field, old, new as canonical text


def change_texts(applied: Applied) -> list[ChangeText]:
    """The canonical texts of an event's changes, as stored in the change log and hashed."""
    return [change_text(entity, key, name, old, new) for entity, key, name, old, new in applied.changes]


def change_text(entity: str, key: Key, name: str, old: Any, new: Any) -> ChangeText:
    """The canonical texts of one change (a record's creation has no old text)."""
    if name == CREATED:
        return (entity, str(key), name, None, encode_record(entity, new))
    encode = FIELD_ENCODERS[entity, name]
    return (entity, str(key), name, encode(old), encode(new))


def change_json(entity: str, key: str, name: str, new: str) -> str:
    """One change in an event document: [entity, key, field, new], `new` as a JSON string, or for a
    record's creation the record's canonical JSON object."""
    return f'["{entity}",{_json_string(key)},"{name}",{new if name == CREATED else _json_string(new)}]'


#: the canonical text encoder of each (entity, field)
FIELD_ENCODERS = {
    (entity, name): ENCODERS[kind] for entity, spec in ENTITIES.items() for name, kind in spec.fields.items()
}


def event_document(event: Event, args: str, changes: list[ChangeText]) -> str:
    """Canonical JSON of one applied event, from its canonical args and change texts.

    A change is [entity, key, field, new]: `new` is the field's canonical text as a JSON string,
    or for the creation of a record (field "@created") the record's canonical JSON object.
    Built by hand with keys in sorted order, so it equals canonical_json of the same document:
    this runs once per event in a replay.
    """
    parts = [change_json(entity, key, name, new) for entity, key, name, _, new in changes]
    return document(event.address, args, parts, event.name, event.log_index, event.tx_hash)


def document(address: str, args: str, changes: list[str], name: str, log_index: int, tx: str) -> str:
    """`event_document` from the event's fields and its changes already written as JSON arrays."""
    return (
        '{"address":"'
        + address
        + '","args":'
        + args
        + ',"changes":['
        + ",".join(changes)
        + '],"event":"'
        + name
        + '","log":"'
        + str(log_index)
        + '","tx":"'
        + tx
        + '"}'
    )


def block_digest(previous: str, number: int, block_hash: str, events: Iterable[str]) -> str:
    """The next digest after a block whose events' documents (from `event_document`) are given."""
    body = (
        '{"events":['
        + ",".join(events)
        + '],"hash":'
        + json.dumps(block_hash)
        + ',"number":"'
        + str(number)
        + '"}'
    )
    h = hashlib.sha256(bytes.fromhex(previous[2:]))
    h.update(body.encode("ascii"))
    return "0x" + h.hexdigest()
