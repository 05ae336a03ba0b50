"""The contracts' own view of every record, read at one block, in the shape of the books' records.

Verify compares these with the books rebuilt from events. Calls go out in JSON-RPC batches (one
eth_call per record), so checking thousands of certificates costs a few round trips.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils.abi import function_abi_to_4byte_selector, get_abi_input_types, get_abi_output_types

from chain_client.artifacts import load_artifact
from chain_client.deploy import Deployment
from chain_client.index.books import SYSTEM_KEY, Books, Key, Record
from chain_client.index.decode import checksum
from chain_client.index.source import NodeSource

_CallMany = Callable[[Sequence[tuple[str, bytes]]], list[bytes]]


@dataclass
class ChainView:
    """Records as the contracts report them at `block`, keyed like `Books.records`."""

    block: int
    records: dict[str, dict[Key, Record]] = field(default_factory=dict)
    counts: tuple[int, int, int] = (0, 0, 0)
    total_credits: int = 0
    escrow_balance: int = 0
    invoices_used: dict[str, bool] = field(default_factory=dict)


class _Caller:
    """Encodes calls to one contract and decodes their results.

    Calls are encoded from the selector and input types worked out once per function: web3's
    `encode_abi` validates the whole ABI and hashes every function's signature on each call, which
    made verify of 20,000 events spend 5 of its 8 seconds encoding 4,700 calls."""

    def __init__(self, address: str, artifact: str) -> None:
        abi = list(load_artifact(artifact).abi)
        self.address = address
        functions = [e for e in abi if e.get("type") == "function"]
        names = [e["name"] for e in functions]
        overloaded = {n for n in names if names.count(n) > 1}
        # Overloads would need choosing by argument; the views read here have none.
        self._inputs = {
            e["name"]: (function_abi_to_4byte_selector(e), get_abi_input_types(e))  # type: ignore[arg-type]
            for e in functions
            if e["name"] not in overloaded
        }
        self._outputs = {e["name"]: get_abi_output_types(e) for e in functions}  # type: ignore[arg-type]
        # Struct results are read by field name, so a field added to a struct moves nothing here.
        self._fields = {
            e["name"]: [c["name"] for c in e["outputs"][0]["components"]]
            for e in functions
            if len(e["outputs"]) == 1 and "components" in e["outputs"][0]
        }

    def encode(self, name: str, *args: Any) -> tuple[str, bytes]:
        selector, types = self._inputs[name]
        return self.address, selector + abi_encode(types, args)

    def decode(self, name: str, data: bytes) -> tuple[Any, ...]:
        return tuple(abi_decode(self._outputs[name], data))

    def struct(self, name: str, data: bytes) -> dict[str, Any]:
        (values,) = abi_decode(self._outputs[name], data)
        return dict(zip(self._fields[name], values, strict=True))


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def _order(r: dict[str, Any]) -> Record:
    return {
        "issuer": checksum(r["issuer"]),
        "maturity": r["maturity"],
        "deadline": r["deadline"],
        "status": r["status"],
        "payee": checksum(r["payee"]),
        "expected_quantity": r["expectedQuantity"],
        "escrowed": r["escrowed"],
        "paid": r["paid"],
        "refunded": r["refunded"],
        "delivered_quantity": r["deliveredQuantity"],
        "root_certificate_id": r["rootCertificateId"],
        "invoice_hash": _hex(r["invoiceHash"]),
        "warehouse": _hex(r["warehouse"]),
        "goods_hash": _hex(r["goodsHash"]),
    }


def _certificate(r: dict[str, Any]) -> Record:
    return {
        "holder": checksum(r["holder"]),
        "maturity": r["maturity"],
        "depth": r["depth"],
        "status": r["status"],
        "frozen": bool(r["frozen"]),
        "value": r["value"],
        "order_id": r["orderId"],
        "parent_id": r["parentId"],
    }


def _offer(r: dict[str, Any]) -> Record:
    return {
        "certificate_id": r["certificateId"],
        "seller": checksum(r["seller"]),
        "buyer": checksum(r["buyer"]),
        "expiry": r["expiry"],
        "open": bool(r["open"]),
        "value": r["value"],
        "price": r["price"],
    }


def _participant(r: dict[str, Any]) -> Record:
    return {
        "entity_id": _hex(r["entityId"]),
        "roles": r["roles"],
        "active": bool(r["active"]),
        "certificate_count": r["certificateCount"],
        "issuer_limit": r["issuerLimit"],
        "outstanding": r["outstanding"],
    }


def _warehouse(r: dict[str, Any]) -> Record:
    return {
        "active": bool(r["active"]),
        "threshold": r["threshold"],
        "device_count": r["deviceCount"],
        "device_set_version": r["deviceSetVersion"],
        "freshness": r["freshness"],
    }


def read_chain_view(source: NodeSource, deployment: Deployment, books: Books, block: int) -> ChainView:
    """Every record the books know of (and every id the ledger has issued), as the chain has it."""
    ledger = _Caller(deployment.ledger, "CertificateLedger")
    oracle = _Caller(deployment.oracle, "ReceiptOracle")
    token = _Caller(deployment.token, "SettlementToken")
    view = ChainView(block)
    call_many = _calls_at(source, deployment, block)

    scalars = call_many(
        [
            ledger.encode("counts"),
            ledger.encode("totalCredits"),
            token.encode("balanceOf", deployment.ledger),
            ledger.encode("paused"),
            ledger.encode("splitRules"),
            oracle.encode("ledger"),
        ]
    )
    counts = ledger.decode("counts", scalars[0])
    view.counts = (int(counts[0]), int(counts[1]), int(counts[2]))
    view.total_credits = int(ledger.decode("totalCredits", scalars[1])[0])
    view.escrow_balance = int(token.decode("balanceOf", scalars[2])[0])
    rules = ledger.decode("splitRules", scalars[4])
    view.records["system"] = {
        SYSTEM_KEY: {
            "paused": bool(ledger.decode("paused", scalars[3])[0]),
            "min_split_unit": int(rules[0]),
            "max_split_depth": int(rules[1]),
            # Unbound is the zero address on chain and no address at all in the books.
            "ledger_bound": _address_or_none(oracle.decode("ledger", scalars[5])[0]),
        }
    }

    def ids(entity: str, issued: int) -> list[int]:
        # The ids past the ledger's count were never issued: absent on chain, not zero records.
        return list(range(1, issued + 1))

    def results(caller: _Caller, fn: str, keys: Sequence[Key]) -> list[bytes]:
        # bytes32 keys (warehouse ids, digests) are kept as 0x-hex text; the ABI wants bytes.
        args = [bytes.fromhex(k[2:]) if isinstance(k, str) and len(k) == 66 else k for k in keys]
        return call_many([caller.encode(fn, a) for a in args])

    def read(entity: str, caller: _Caller, fn: str, keys: Sequence[Key], shape: Any) -> None:
        valid = _by_form(entity, keys)
        found = results(caller, fn, valid)
        view.records[entity] = {k: shape(caller.struct(fn, r)) for k, r in zip(valid, found, strict=True)}

    def read_scalar(entity: str, caller: _Caller, fn: str, keys: Sequence[Key], field: str) -> None:
        valid = _by_form(entity, keys)
        found = results(caller, fn, valid)
        view.records[entity] = {
            k: {field: caller.decode(fn, r)[0]} for k, r in zip(valid, found, strict=True)
        }

    read("order", ledger, "order", ids("order", view.counts[0]), _order)
    read("certificate", ledger, "certificate", ids("certificate", view.counts[1]), _certificate)
    read("offer", ledger, "discountOffer", ids("offer", view.counts[2]), _offer)
    read("participant", ledger, "participant", sorted(books.all("participant"), key=str), _participant)
    warehouses = sorted(books.all("warehouse"), key=str)
    read("warehouse", oracle, "warehouse", warehouses, _warehouse)
    _read_devices(call_many, oracle, books, view, [w for w in warehouses if _is_hex(w, 32)])
    read_scalar("credit", ledger, "credit", sorted(books.all("credit"), key=str), "amount")
    invoices = sorted(
        {o["invoice_hash"] for o in books.all("order").values() if _is_hex(o["invoice_hash"], 32)}
    )
    used = call_many([ledger.encode("invoiceUsed", bytes.fromhex(i[2:])) for i in invoices])
    view.invoices_used = {
        i: bool(ledger.decode("invoiceUsed", r)[0]) for i, r in zip(invoices, used, strict=True)
    }
    return view


def _read_devices(
    call_many: _CallMany, oracle: _Caller, books: Books, view: ChainView, warehouses: list[Key]
) -> None:
    """An active warehouse's devices as the chain has them: those of the books' list that the
    oracle counts as current devices (with the device count, also compared, the two sets are then
    equal). The oracle has no view listing them; an inactive warehouse has none current."""
    listed = [(w, d) for w in warehouses for d in books.all("warehouse")[w]["devices"]]
    calls = [oracle.encode("isDevice", bytes.fromhex(str(w)[2:]), d) for w, d in listed]
    found = call_many(calls)
    current = {pair for pair, r in zip(listed, found, strict=True) if oracle.decode("isDevice", r)[0]}
    for w in warehouses:
        record = view.records["warehouse"][w]
        if record["active"]:
            record["devices"] = tuple(d for d in books.all("warehouse")[w]["devices"] if (w, d) in current)


#: What a call to an address without code returns in the books' terms: every output zero (the
#: views' outputs are static, so zero words decode as zero values whatever their number).
_NO_CONTRACT = bytes(32 * 128)


def _calls_at(source: NodeSource, deployment: Deployment, block: int) -> _CallMany:
    """`source.call_many` at `block`, answering for a contract not yet deployed there (verify of the
    blocks before the ledger's) as its views would answer for records never made: all zero. An
    eth_call to an address without code returns nothing, which no output decodes from."""
    addresses = [deployment.ledger, deployment.oracle, deployment.token]
    present = source.has_code(addresses, block)

    def call_many(calls: Sequence[tuple[str, bytes]]) -> list[bytes]:
        live = [i for i, (to, _) in enumerate(calls) if present.get(to, True)]
        answers = source.call_many([calls[i] for i in live], block) if live else []
        out = [_NO_CONTRACT] * len(calls)
        for i, answer in zip(live, answers, strict=True):
            out[i] = answer
        return out

    return call_many


def _address_or_none(address: str) -> str:
    return "" if int(address, 16) == 0 else checksum(address)


def _is_hex(key: Key, size: int) -> bool:
    """Whether `key` is 0x-hex of `size` bytes, as an address or a bytes32 key must be."""
    if not isinstance(key, str) or len(key) != 2 + 2 * size or not key.startswith("0x"):
        return False
    try:
        int(key[2:], 16)
    except ValueError:
        return False
    return True


#: The form of each entity's key where it is not an id: a record the books made under a key of
#: another form (from a field no event set, with an I0 finding) cannot be asked of a contract.
_KEY_BYTES = {"participant": 20, "credit": 20, "warehouse": 32}


def _by_form(entity: str, keys: Sequence[Key]) -> list[Key]:
    """The keys a contract can be asked about. The chain has no record under any other: left out of
    the view, the books' record under it is reported as missing from the chain."""
    size = _KEY_BYTES.get(entity)
    return list(keys) if size is None else [k for k in keys if _is_hex(k, size)]
