"""Index records as public bodies, and who may see which record."""

from __future__ import annotations

from api.deps import HOLDERS, Caller
from api.errors import ApiError, forbidden, not_found
from api.index import IndexReader, OfferTerms
from api.schemas import (
    CertificateOut,
    ChangeOut,
    LineageOut,
    MergeOut,
    OfferOut,
    OrderOut,
    ParticipantOut,
    PaymentOut,
)
from api.service import role_names
from chain_client.index.books import CREATED
from chain_client.index.models import (
    CertificateRecord,
    ChangeRecord,
    OfferRecord,
    OrderRecord,
    ParticipantRecord,
    PaymentRecord,
)
from chain_client.models import CertificateStatus, OrderStatus, Role
from chain_client.pricing import implied_annual_rate_bps

ZERO_ADDRESS = "0x" + "0" * 40


def sees_books_of(caller: Caller, address: str) -> bool:
    """A participant's books in the directory (issuer limit, outstanding, certificate count) are
    for itself, auditors and regulators: the directory says who may hold, not what anyone holds."""
    return caller.sees_all or caller.address == address


def participant_out(r: ParticipantRecord, books: bool) -> ParticipantOut:
    return ParticipantOut(
        address=r.address,
        entityId=r.entity_id,
        roles=role_names(r.roles),
        active=r.active,
        issuerLimit=int(r.issuer_limit) if books else None,
        outstanding=int(r.outstanding) if books else None,
        certificateCount=int(r.certificate_count) if books else None,
    )


def order_out(r: OrderRecord) -> OrderOut:
    escrowed, paid, refunded = int(r.escrowed), int(r.paid), int(r.refunded)
    return OrderOut(
        orderId=int(r.order_id),
        issuer=r.issuer,
        payee=r.payee,
        status=OrderStatus(r.status).name,
        maturity=r.maturity,
        deadline=r.deadline,
        escrowed=escrowed,
        paid=paid,
        refunded=refunded,
        inEscrow=escrowed - paid - refunded,
        expectedQuantity=int(r.expected_quantity),
        deliveredQuantity=int(r.delivered_quantity),
        rootCertificateId=int(r.root_certificate_id),
        invoiceHash=r.invoice_hash,
        warehouse=r.warehouse,
        goodsHash=r.goods_hash,
    )


def certificate_out(r: CertificateRecord) -> CertificateOut:
    return CertificateOut(
        certificateId=int(r.certificate_id),
        orderId=int(r.order_id),
        holder=r.holder,
        value=int(r.value),
        parentId=int(r.parent_id),
        depth=r.depth,
        maturity=r.maturity,
        status=CertificateStatus(r.status).name,
        frozen=r.frozen,
    )


def offer_out(r: OfferRecord, terms: OfferTerms, now: int, buyable: bool) -> OfferOut:
    """`now`: the chain's time as the index has it (IndexReader.head_time); `terms` and
    `buyable`: as IndexReader.offer_terms and IndexReader.buyable found them."""
    value, price, left = int(r.value), int(r.price), terms.maturity - now
    buyable_now = bool(r.open) and r.expiry > now and left > 0
    return OfferOut(
        offerId=int(r.offer_id),
        certificateId=int(r.certificate_id),
        seller=r.seller,
        buyer=None if int(r.buyer, 16) == 0 else r.buyer,
        value=value,
        price=price,
        expiry=r.expiry,
        orderId=terms.order_id,
        issuer=terms.issuer,
        maturity=terms.maturity,
        annualRateBps=implied_annual_rate_bps(value, price, left) if buyable_now else None,
        open=r.open,
        expired=r.expiry <= now,
        buyable=buyable,
    )


def change_out(r: ChangeRecord) -> ChangeOut:
    return ChangeOut(
        blockNumber=r.block_number, txHash=r.tx_hash, event=r.event, field=r.field, old=r.old, new=r.new
    )


def payment_out(r: PaymentRecord, credited: bool) -> PaymentOut:
    return PaymentOut(
        blockNumber=r.block_number,
        txHash=r.tx_hash,
        kind=r.kind,
        orderId=None if r.order_id is None else int(r.order_id),
        certificateId=None if r.certificate_id is None else int(r.certificate_id),
        payer=r.payer,
        payee=r.payee,
        amount=int(r.amount),
        credited=credited,
    )


# ---------------------------------------------------------------------- scope


def require_reader(caller: Caller) -> None:
    """Reading certificates and orders is for the parties to them and for the all-seeing roles."""
    if not (caller.sees_all or caller.has(HOLDERS | Role.ISSUER)):
        raise forbidden("this role reads no certificates or orders", roles=role_names(caller.roles))


def visible_certificates(reader: IndexReader, caller: Caller) -> set[int] | None:
    """Ids the caller may read; None means all. A holder sees what it holds or held, the
    certificates they came from, and those split from them while it held them: what it split off
    or sold a part of, not what a later holder did with the certificate once it was passed on. An
    issuer sees every certificate of its orders."""
    require_reader(caller)
    if caller.sees_all:
        return None
    ids: set[int] = set()
    if caller.has(Role.ISSUER):
        ids |= {
            int(c.certificate_id)
            for c in reader.certificates_of_orders(reader.order_ids_of_issuer(caller.address))
        }
    if caller.has(HOLDERS):
        held = reader.held_ids(caller.address)
        if held:
            orders = {int(c.order_id) for c in reader.certificates(held).values()}
            family = {int(c.certificate_id): c for c in reader.certificates_of_orders(orders)}
            ids |= held
            for cid in held:
                up = int(family[cid].parent_id) if cid in family else 0
                while up and up not in ids:
                    ids.add(up)
                    up = int(family[up].parent_id) if up in family else 0
            ids |= _split_off_while_held(reader, caller.address, held, family)
    return ids


Position = tuple[int, int, int, int]  # block, transaction index, log index, change seq
_END: Position = (2**63, 0, 0, 0)


def _split_off_while_held(
    reader: IndexReader, address: str, held: set[int], family: dict[int, CertificateRecord]
) -> set[int]:
    """Children of the certificates `address` held, created while it held their parent."""
    children = {cid for cid, c in family.items() if int(c.parent_id) in held}
    if not children:
        return set()
    born: dict[int, Position] = {}
    moves: dict[int, list[tuple[Position, object, object]]] = {}
    for cid, field, at, old, new in reader.holdings_and_births(held | children):
        if field == CREATED:
            born[cid] = at
        else:
            moves.setdefault(cid, []).append((at, old, new))
    spans = {
        cid: _holding_spans(address, born.get(cid), moves.get(cid, []), family[cid].holder)
        for cid in held
        if cid in family
    }
    return {
        child
        for child in children
        if child in born
        and any(begin <= born[child] < end for begin, end in spans.get(int(family[child].parent_id), []))
    }


def _holding_spans(
    address: str, born: Position | None, moves: list[tuple[Position, object, object]], holder_now: str
) -> list[tuple[Position, Position]]:
    """When `address` held a certificate, as [from, until) positions in chain order. Its first
    holder is the one the first change of holder moved it from (or, never moved, its holder now)."""
    first = moves[0][1] if moves else holder_now
    start = born if born is not None and first == address else None
    spans: list[tuple[Position, Position]] = []
    for at, old, new in moves:
        if old == address and start is not None:
            spans.append((start, at))
            start = None
        if new == address:
            start = at
    if start is not None:
        spans.append((start, _END))
    return spans


def _visible_at_once(reader: IndexReader, caller: Caller, record: CertificateRecord) -> bool:
    """Whether `visible_certificates` would hold `record`, where the index says so in one read or
    none: the caller (a supplier or factor) holds it now, or (an issuer) issued its order. Every
    write names certificates of these; the full set is computed only for the rest."""
    if caller.sees_all:
        return True
    if caller.has(HOLDERS) and record.holder == caller.address:
        return True
    if caller.has(Role.ISSUER):
        order = reader.get(OrderRecord, order_id=int(record.order_id))
        return order is not None and order.issuer == caller.address
    return False


def certificate_for(reader: IndexReader, caller: Caller, certificate_id: int) -> CertificateRecord:
    record = reader.get(CertificateRecord, certificate_id=certificate_id)
    if record is None:
        raise not_found("certificate", certificate_id)
    if _visible_at_once(reader, caller, record):
        return record
    visible = visible_certificates(reader, caller)
    if visible is not None and certificate_id not in visible:
        raise forbidden("not a certificate of yours or of your lineage", certificateId=certificate_id)
    return record


def order_ids_held(reader: IndexReader, caller: Caller) -> set[int]:
    """Orders of the certificates the caller (a supplier or factor) holds or held."""
    if not caller.has(HOLDERS):
        return set()
    return {int(c.order_id) for c in reader.certificates(reader.held_ids(caller.address)).values()}


def order_visible(reader: IndexReader, caller: Caller, order: OrderRecord) -> bool:
    if caller.sees_all or caller.address in (order.issuer, order.payee):
        return True
    return int(order.order_id) in order_ids_held(reader, caller)


def order_for(reader: IndexReader, caller: Caller, order_id: int) -> OrderRecord:
    require_reader(caller)
    record = reader.get(OrderRecord, order_id=order_id)
    if record is None:
        raise not_found("order", order_id)
    if not order_visible(reader, caller, record):
        raise forbidden("not an order of yours", orderId=order_id)
    return record


def certificates_for(reader: IndexReader, caller: Caller, certificate_ids: list[int]) -> None:
    """`certificate_for` for several ids at once (one scope computation): every id must be indexed
    (404, the first unknown one) and one the caller may read (403, the first it may not)."""
    known = reader.certificates(set(certificate_ids))
    for cid in certificate_ids:
        if cid not in known:
            raise not_found("certificate", cid)
    if all(_visible_at_once(reader, caller, known[cid]) for cid in set(certificate_ids)):
        return
    visible = visible_certificates(reader, caller)
    for cid in certificate_ids:
        if visible is not None and cid not in visible:
            raise forbidden("not a certificate of yours or of your lineage", certificateId=cid)


def offered_to(caller: Caller, record: OfferRecord) -> bool:
    """A factor sees the offers reserved for it, and those open to any buyer while they are open: a
    closed one was bought (by whom, the offer does not say) or withdrawn, and is the seller's and
    its buyer's business (the buyer has the certificate and the payment)."""
    if not caller.has(Role.FACTOR):
        return False
    return record.buyer == caller.address or (record.buyer == ZERO_ADDRESS and bool(record.open))


def offer_for(reader: IndexReader, caller: Caller, offer_id: int) -> OfferRecord:
    record = reader.get(OfferRecord, offer_id=offer_id)
    if record is None:
        raise not_found("offer", offer_id)
    if not (caller.sees_all or record.seller == caller.address or offered_to(caller, record)):
        raise forbidden("not an offer to or from you", offerId=offer_id)
    return record


def participant_for(reader: IndexReader, address: str) -> ParticipantRecord:
    # Read afresh, not through `reader.participant`: that one's cache is the callers' (a record
    # stored here would be what the caller check reuses, for up to a second, when it signs in).
    record = reader.get(ParticipantRecord, address=address)
    if record is None:
        raise not_found("participant", address)
    return record


def lineage_out(reader: IndexReader, root: CertificateRecord, visible: set[int] | None) -> LineageOut:
    family = reader.certificates_of_orders({int(root.order_id)})
    by_id = {int(c.certificate_id): c for c in family}
    top = int(root.certificate_id)
    while int(by_id[top].parent_id) and int(by_id[top].parent_id) in by_id:
        parent = int(by_id[top].parent_id)
        if visible is not None and parent not in visible:
            break
        top = parent
    children: dict[int, list[int]] = {}
    for cid, c in by_id.items():
        children.setdefault(int(c.parent_id), []).append(cid)
    merged: dict[int, list[MergeOut]] = {}
    for m in reader.merges(set(by_id)):
        if visible is not None and m.target not in visible:
            continue  # into a certificate the caller may not read: its id and what it took are not told
        merged.setdefault(m.source, []).append(
            MergeOut(certificateId=m.target, value=m.value, blockNumber=m.block, txHash=m.tx)
        )

    def build(cid: int) -> LineageOut:
        kids = [k for k in sorted(children.get(cid, [])) if visible is None or k in visible]
        return LineageOut(
            certificate=certificate_out(by_id[cid]),
            children=[build(k) for k in kids],
            mergedInto=merged.get(cid, []),
        )

    if top not in by_id:
        raise ApiError(404, "NotFound", "lineage not indexed yet")
    return build(top)
