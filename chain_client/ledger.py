"""Client of CertificateLedger: participants, orders, certificates, discount sales, settlement."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils import to_checksum_address
from web3.exceptions import Web3RPCError
from web3.types import EventData

from chain_client.artifacts import load_artifact
from chain_client.chain import Chain
from chain_client.functions import CheckedFunctions
from chain_client.models import (
    Certificate,
    CertificateStatus,
    DiscountOffer,
    Order,
    OrderStatus,
    Participant,
    Role,
)
from chain_client.transactions import Transactor, TxResult, call_checked, node_failure, unavailable

ZERO_ADDRESS = to_checksum_address("0x" + "00" * 20)


@dataclass(frozen=True)
class LineageNode:
    """A certificate, the certificates split from it, and the merges of its value into others of
    its order: (the certificate that took it, the value), in chain order."""

    certificate: Certificate
    children: list[LineageNode] = field(default_factory=list)
    merged_into: list[tuple[int, int]] = field(default_factory=list)

    def walk(self) -> Iterable[LineageNode]:
        yield self
        for child in self.children:
            yield from child.walk()


class LedgerClient:
    """Typed methods for every job on the ledger. Each write takes the signing account first."""

    def __init__(self, chain: Chain, address: ChecksumAddress, tx: Transactor) -> None:
        self.chain = chain
        self.address = address
        self.contract = chain.w3.eth.contract(
            address=address, abi=list(load_artifact("CertificateLedger").abi)
        )
        self._tx = tx
        self._fn = CheckedFunctions(self.contract)

    # ------------------------------------------------------------------ registry (ADMIN)

    def register_participant(
        self,
        admin: LocalAccount,
        account: ChecksumAddress,
        entity_id: bytes,
        roles: Role,
        issuer_limit: int = 0,
    ) -> TxResult:
        return self._tx.send(
            admin, self._fn.registerParticipant(account, entity_id, int(roles), issuer_limit)
        )

    def set_roles(self, admin: LocalAccount, account: ChecksumAddress, roles: Role) -> TxResult:
        return self._tx.send(admin, self._fn.setRoles(account, int(roles)))

    def set_issuer_limit(self, admin: LocalAccount, account: ChecksumAddress, limit: int) -> TxResult:
        return self._tx.send(admin, self._fn.setIssuerLimit(account, limit))

    def suspend(self, admin: LocalAccount, account: ChecksumAddress) -> TxResult:
        return self._tx.send(admin, self._fn.suspendParticipant(account))

    def reinstate(self, admin: LocalAccount, account: ChecksumAddress) -> TxResult:
        return self._tx.send(admin, self._fn.reinstateParticipant(account))

    def set_split_rules(self, admin: LocalAccount, min_split_unit: int, max_split_depth: int) -> TxResult:
        return self._tx.send(admin, self._fn.setSplitRules(min_split_unit, max_split_depth))

    def pause(self, admin: LocalAccount) -> TxResult:
        return self._tx.send(admin, self._fn.pause())

    def unpause(self, admin: LocalAccount) -> TxResult:
        return self._tx.send(admin, self._fn.unpause())

    # ------------------------------------------------------------------ orders (ISSUER)

    def open_order(
        self,
        issuer: LocalAccount,
        *,
        payee: ChecksumAddress,
        amount: int,
        maturity: int,
        invoice_hash: bytes,
        warehouse: bytes,
        goods_hash: bytes,
        expected_quantity: int,
        deadline: int,
    ) -> tuple[int, TxResult]:
        """Opens an order escrowing `amount`; the issuer must have approved the ledger for it
        (see SettlementTokenClient.ensure_allowance and `check_open_order`). Returns the order id."""
        fn = self._fn.openOrder(
            payee, amount, maturity, invoice_hash, warehouse, goods_hash, expected_quantity, deadline
        )
        result = self._tx.send(issuer, fn)
        return int(result.event("OrderOpened")["orderId"]), result

    def check_open_order(
        self,
        issuer: ChecksumAddress,
        *,
        payee: ChecksumAddress,
        amount: int,
        maturity: int,
        invoice_hash: bytes,
        warehouse: bytes,
        goods_hash: bytes,
        expected_quantity: int,
        deadline: int,
    ) -> None:
        """Simulates `open_order` by `issuer` (nothing is sent); raises what it would revert with.
        The ledger takes the escrow last, so without an allowance every other rule is checked
        first: a refusal other than ERC20InsufficientAllowance is the order's own."""
        fn = self._fn.openOrder(
            payee, amount, maturity, invoice_hash, warehouse, goods_hash, expected_quantity, deadline
        )
        self._tx.estimate(issuer, fn)

    def cancel_order(self, issuer: LocalAccount, order_id: int) -> TxResult:
        return self._tx.send(issuer, self._fn.cancelOrder(order_id))

    # ------------------------------------------------------------------ certificates (holders)

    def transfer(self, sender: LocalAccount, certificate_id: int, to: ChecksumAddress) -> TxResult:
        """Moves the whole certificate to `to` (ERC-721 transferFrom); `sender` is its holder or approved."""
        holder = self.certificate(certificate_id).holder
        fn = self._fn.by_signature("transferFrom(address,address,uint256)")(holder, to, certificate_id)
        return self._tx.send(sender, fn)

    def split(
        self, holder: LocalAccount, certificate_id: int, values: list[int]
    ) -> tuple[list[int], TxResult]:
        """Splits into parts kept by the holder; the certificate keeps values[0]. Returns new ids."""
        result = self._tx.send(holder, self._fn.split(certificate_id, values))
        return [int(e["certificateId"]) for e in result.all("CertificateIssued")], result

    def split_to(
        self, sender: LocalAccount, certificate_id: int, to: ChecksumAddress, value: int
    ) -> tuple[int, TxResult]:
        """Moves `value` into a new certificate held by `to` (ERC-3525 transferFrom to an address)."""
        fn = self._fn.by_signature("transferFrom(uint256,address,uint256)")(certificate_id, to, value)
        result = self._tx.send(sender, fn)
        return int(result.event("CertificateIssued")["certificateId"]), result

    def merge(self, sender: LocalAccount, from_id: int, to_id: int, value: int | None = None) -> TxResult:
        """Moves `value` (default: all) from one certificate into another of the same order."""
        if value is None:
            value = self.certificate(from_id).value
        fn = self._fn.by_signature("transferFrom(uint256,uint256,uint256)")(from_id, to_id, value)
        return self._tx.send(sender, fn)

    def approve_value(
        self, holder: LocalAccount, certificate_id: int, operator: ChecksumAddress, value: int
    ) -> TxResult:
        """Lets `operator` move up to `value` out of the certificate (ERC-3525 value approval)."""
        fn = self._fn.by_signature("approve(uint256,address,uint256)")(certificate_id, operator, value)
        return self._tx.send(holder, fn)

    def approve(self, holder: LocalAccount, operator: ChecksumAddress, certificate_id: int) -> TxResult:
        """Lets `operator` move the whole certificate (ERC-721 approval; void after any transfer)."""
        fn = self._fn.by_signature("approve(address,uint256)")(operator, certificate_id)
        return self._tx.send(holder, fn)

    def set_approval_for_all(
        self, holder: LocalAccount, operator: ChecksumAddress, approved: bool
    ) -> TxResult:
        return self._tx.send(holder, self._fn.setApprovalForAll(operator, approved))

    # ------------------------------------------------------------------ discount (holder -> FACTOR)

    def offer_discount(
        self,
        seller: LocalAccount,
        certificate_id: int,
        *,
        value: int,
        price: int,
        expiry: int,
        buyer: ChecksumAddress | None = None,
    ) -> tuple[int, TxResult]:
        fn = self._fn.offerDiscount(certificate_id, value, price, buyer or ZERO_ADDRESS, expiry)
        result = self._tx.send(seller, fn)
        return int(result.event("DiscountOffered")["offerId"]), result

    def cancel_offer(self, seller: LocalAccount, offer_id: int) -> TxResult:
        return self._tx.send(seller, self._fn.cancelDiscountOffer(offer_id))

    def buy_discounted(self, factor: LocalAccount, offer_id: int) -> tuple[int, TxResult]:
        """Buys an offer (delivery versus payment); the factor must have approved the ledger for the
        price. Returns the id of the certificate the factor now holds."""
        result = self._tx.send(factor, self._fn.buyDiscounted(offer_id))
        return int(result.event("DiscountSold")["boughtCertificateId"]), result

    def check_buy_discounted(self, factor: ChecksumAddress, offer_id: int) -> None:
        """Simulates `buy_discounted` (nothing is sent), as `check_open_order` does an order: the
        price is taken last, after every rule of the sale."""
        self._tx.estimate(factor, self._fn.buyDiscounted(offer_id))

    def quote(self, face: int, days_to_maturity: int, annual_rate_bps: int) -> int:
        """The contract's own discount price for `face` (a view; the same as pricing.discount_price)."""
        return int(call_checked(self._fn.discountPrice(face, days_to_maturity, annual_rate_bps).call))

    # ------------------------------------------------------------------ regulator, settlement

    def freeze(self, regulator: LocalAccount, certificate_id: int, reason: bytes) -> TxResult:
        return self._tx.send(regulator, self._fn.freeze(certificate_id, reason))

    def unfreeze(self, regulator: LocalAccount, certificate_id: int) -> TxResult:
        return self._tx.send(regulator, self._fn.unfreeze(certificate_id))

    def settle(self, caller: LocalAccount, certificate_ids: list[int]) -> TxResult:
        """Pays each (matured, live, unfrozen) certificate's holder. Anyone may call."""
        return self._tx.send(caller, self._fn.settle(certificate_ids))

    def withdraw(self, account: LocalAccount) -> TxResult:
        return self._tx.send(account, self._fn.withdraw())

    # ------------------------------------------------------------------ reads

    def participant(self, account: ChecksumAddress) -> Participant:
        entity, roles, active, count, limit, outstanding = call_checked(self._fn.participant(account).call)
        return Participant(
            account, bytes(entity), Role(roles), bool(active), int(count), int(limit), int(outstanding)
        )

    def order(self, order_id: int) -> Order:
        r = call_checked(self._fn.order(order_id).call)
        return Order(
            order_id=order_id,
            issuer=to_checksum_address(r[0]),
            maturity=int(r[1]),
            deadline=int(r[2]),
            status=OrderStatus(r[3]),
            payee=to_checksum_address(r[4]),
            expected_quantity=int(r[5]),
            escrowed=int(r[6]),
            paid=int(r[7]),
            refunded=int(r[8]),
            delivered_quantity=int(r[9]),
            root_certificate_id=int(r[10]),
            invoice_hash=bytes(r[11]),
            warehouse=bytes(r[12]),
            goods_hash=bytes(r[13]),
        )

    def certificate(self, certificate_id: int) -> Certificate:
        r = call_checked(self._fn.certificate(certificate_id).call)
        return Certificate(
            certificate_id=certificate_id,
            holder=to_checksum_address(r[0]),
            maturity=int(r[1]),
            depth=int(r[2]),
            status=CertificateStatus(r[3]),
            frozen=bool(r[4]),
            value=int(r[5]),
            order_id=int(r[6]),
            parent_id=int(r[7]),
        )

    def offer(self, offer_id: int) -> DiscountOffer:
        r = call_checked(self._fn.discountOffer(offer_id).call)
        return DiscountOffer(
            offer_id=offer_id,
            certificate_id=int(r[0]),
            seller=to_checksum_address(r[1]),
            holder_epoch=int(r[2]),
            buyer=to_checksum_address(r[3]),
            expiry=int(r[4]),
            open=bool(r[5]),
            value=int(r[6]),
            price=int(r[7]),
        )

    def approved(self, certificate_id: int) -> ChecksumAddress:
        """The account approved for the whole certificate (ERC-721 getApproved; zero if none)."""
        return to_checksum_address(call_checked(self._fn.getApproved(certificate_id).call))

    def approved_for_all(self, holder: ChecksumAddress, operator: ChecksumAddress) -> bool:
        return bool(call_checked(self._fn.isApprovedForAll(holder, operator).call))

    def allowance(self, certificate_id: int, operator: ChecksumAddress) -> int:
        """The value `operator` may still move out of the certificate (ERC-3525 value allowance)."""
        fn = self._fn.by_signature("allowance(uint256,address)")(certificate_id, operator)
        return int(call_checked(fn.call))

    def credit(self, account: ChecksumAddress) -> int:
        return int(call_checked(self._fn.credit(account).call))

    def total_credits(self) -> int:
        return int(call_checked(self._fn.totalCredits().call))

    def counts(self) -> tuple[int, int, int]:
        """(orders, certificates, offers) issued so far; ids run from 1."""
        orders, certificates, offers = call_checked(self._fn.counts().call)
        return int(orders), int(certificates), int(offers)

    def split_rules(self) -> tuple[int, int]:
        unit, depth = call_checked(self._fn.splitRules().call)
        return int(unit), int(depth)

    def paused(self) -> bool:
        return bool(call_checked(self._fn.paused().call))

    def invoice_used(self, invoice_hash: bytes) -> bool:
        return bool(call_checked(self._fn.invoiceUsed(invoice_hash).call))

    def certificate_ids_of_order(
        self, order_id: int, from_block: int = 0, to_block: int | None = None
    ) -> list[int]:
        """Ids of the certificates of an order issued in blocks from_block..to_block (the head if
        None), from its CertificateIssued events (the orderId topic)."""
        logs = self._logs(self.contract.events.CertificateIssued, from_block, to_block, {"orderId": order_id})
        return [int(log["args"]["certificateId"]) for log in logs]

    def open_offers(
        self,
        from_block: int = 0,
        *,
        expiring_after: int | None = None,
        seller: ChecksumAddress | None = None,
        buyer: ChecksumAddress | None = None,
    ) -> list[DiscountOffer]:
        """The offers still open on chain (neither bought nor cancelled), found from the
        DiscountOffered, DiscountSold and DiscountOfferCancelled events since `from_block` and
        read afresh. Expired offers stay open on chain for ever (their sellers may cancel them):
        `expiring_after` keeps only those whose expiry is later; `seller` only that seller's;
        `buyer` only those that account may buy (reserved for it or for anyone). The filters apply
        to the events before any offer is read, so the reads do not grow with every offer made."""
        events = self.contract.events
        offered = self._logs(
            events.DiscountOffered, from_block, None, {} if seller is None else {"seller": seller}
        )
        closed = {
            int(log["args"]["offerId"])
            for event in (events.DiscountSold, events.DiscountOfferCancelled)
            for log in self._logs(event, from_block, None, {})
        }
        ids = sorted(
            int(log["args"]["offerId"])
            for log in offered
            if int(log["args"]["offerId"]) not in closed
            and (expiring_after is None or int(log["args"]["expiry"]) > expiring_after)
            and (buyer is None or log["args"]["buyer"] in (ZERO_ADDRESS, buyer))
        )
        return [o for o in (self.offer(i) for i in ids) if o.open]

    def certificates_of_order(self, order_id: int, from_block: int = 0) -> list[Certificate]:
        """Every certificate of an order (see `certificate_ids_of_order`)."""
        return [self.certificate(i) for i in self.certificate_ids_of_order(order_id, from_block)]

    def holdings(
        self, holder: ChecksumAddress, from_block: int = 0, live_only: bool = True
    ) -> list[Certificate]:
        """Certificates `holder` holds now, found from the Transfer events that reached it."""
        logs = self._logs(self.contract.events.Transfer, from_block, None, {"to": holder})
        ids = sorted({int(log["args"]["tokenId"]) for log in logs})
        held = [c for c in (self.certificate(i) for i in ids) if c.holder == holder]
        return [c for c in held if c.status == CertificateStatus.LIVE] if live_only else held

    def _logs(
        self, event: Any, from_block: int, to_block: int | None, filters: dict[str, Any]
    ) -> list[EventData]:
        """`event`'s logs matching `filters` in blocks from_block..to_block (the head if None).
        Nodes bound the range one query may span (Besu's --rpc-max-logs-range, hosted providers'
        caps) and answer a wider one with an error: the rest of the range is then asked for in
        halves, down to single blocks, which a node that serves logs at all does not refuse."""
        last = call_checked(self.chain.head) if to_block is None else to_block
        found: list[EventData] = []
        start, size = from_block, max(1, last - from_block + 1)
        while start <= last:
            end = min(start + size - 1, last)
            try:
                found += event.get_logs(from_block=start, to_block=end, argument_filters=filters)
            except Web3RPCError as exc:  # the node's error answer: a range cap, or a rate limit
                if end == start:
                    raise unavailable(self.chain.settings.rpc_url, exc) from exc
                size = max(1, (end - start + 1) // 2)
                continue
            except Exception as exc:
                if node_failure(exc):
                    raise unavailable(self.chain.settings.rpc_url, exc) from exc
                raise
            start = end + 1
        return found

    def lineage(self, certificate_id: int, from_block: int = 0) -> LineageNode:
        """The tree from the root of `certificate_id`'s order down to every descendant."""
        order_id = self.certificate(certificate_id).order_id
        certs = self.certificates_of_order(order_id, from_block)
        children: dict[int, list[Certificate]] = {}
        for c in certs:
            children.setdefault(c.parent_id, []).append(c)
        merged = self._merges([c.certificate_id for c in certs], from_block)

        def build(c: Certificate) -> LineageNode:
            kids = [build(k) for k in sorted(children.get(c.certificate_id, []), key=_cid)]
            return LineageNode(c, kids, merged.get(c.certificate_id, []))

        roots = children.get(0, [])
        if len(roots) != 1:
            raise LookupError(f"order {order_id} has {len(roots)} root certificates")
        return build(roots[0])

    def _merges(self, certificate_ids: list[int], from_block: int) -> dict[int, list[tuple[int, int]]]:
        """Merges among one order's certificates, by giver: (taker, value). Every certificate's
        first TransferValue in funds it as it is minted (from 0 for a root, from its parent for a
        split); any later one into it from another certificate is a merge."""
        event = self.contract.events.TransferValue
        logs: list[EventData] = []
        for at in range(0, len(certificate_ids), _TOPICS_PER_QUERY):
            chunk = certificate_ids[at : at + _TOPICS_PER_QUERY]
            logs += self._logs(event, from_block, None, {"_toTokenId": chunk})
        funded: set[int] = set()
        merged: dict[int, list[tuple[int, int]]] = {}
        for log in sorted(logs, key=lambda entry: (entry["blockNumber"], entry["logIndex"])):
            source, target = int(log["args"]["_fromTokenId"]), int(log["args"]["_toTokenId"])
            if source and target in funded:
                merged.setdefault(source, []).append((target, int(log["args"]["_value"])))
            funded.add(target)
        return merged


#: Ids asked for in one getLogs topic filter (nodes bound a filter's size).
_TOPICS_PER_QUERY = 100


def _cid(c: Certificate) -> int:
    return c.certificate_id
