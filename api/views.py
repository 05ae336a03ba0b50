"""Index records as public bodies, and who may see which record."""

from __future__ import annotations

from api.deps import HOLDERS, Caller
from api.errors import ApiError, forbidden, not_found
from api.index import IndexReader
from api.schemas import (
    CertificateOut,
    ChangeOut,
    LineageOut,
    OfferOut,
    OrderOut,
    ParticipantOut,
    PaymentOut,
)
from api.service import role_names
from chain_client.index.models import (
    CertificateRecord,
    ChangeRecord,
    OfferRecord,
    OrderRecord,
    ParticipantRecord,
    PaymentRecord,
)
from chain_client.models import CertificateStatus, OrderStatus, Role

ZERO_ADDRESS = "0x" + "0" * 40


def participant_out(r: ParticipantRecord) -> ParticipantOut:
    return ParticipantOut(
        address=r.address,
        entityId=r.entity_id,
        roles=role_names(r.roles),
        active=r.active,
        issuerLimit=int(r.issuer_limit),
        outstanding=int(r.outstanding),
        certificateCount=int(r.certificate_count),
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


def offer_out(r: OfferRecord) -> OfferOut:
    return OfferOut(
        offerId=int(r.offer_id),
        certificateId=int(r.certificate_id),
        seller=r.seller,
        buyer=None if int(r.buyer, 16) == 0 else r.buyer,
        value=int(r.value),
        price=int(r.price),
        expiry=r.expiry,
        open=r.open,
    )


def change_out(r: ChangeRecord) -> ChangeOut:
    return ChangeOut(
        blockNumber=r.block_number, txHash=r.tx_hash, event=r.event, field=r.field, old=r.old, new=r.new
    )


def payment_out(r: PaymentRecord) -> PaymentOut:
    return PaymentOut(
        blockNumber=r.block_number,
        txHash=r.tx_hash,
        kind=r.kind,
        orderId=None if r.order_id is None else int(r.order_id),
        certificateId=None if r.certificate_id is None else int(r.certificate_id),
        payer=r.payer,
        payee=r.payee,
        amount=int(r.amount),
    )


# ---------------------------------------------------------------------- scope


def require_reader(caller: Caller) -> None:
    """Reading certificates and orders is for the parties to them and for the all-seeing roles."""
    if not (caller.sees_all or caller.has(HOLDERS | Role.ISSUER)):
        raise forbidden("this role reads no certificates or orders", roles=role_names(caller.roles))


def visible_certificates(reader: IndexReader, caller: Caller) -> set[int] | None:
    """Ids the caller may read; None means all. A holder sees what it holds or held, the
    certificates they came from and those split from them (its lineage, not its siblings'); an
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
            family = reader.certificates_of_orders(orders)
            parent = {int(c.certificate_id): int(c.parent_id) for c in family}
            children: dict[int, list[int]] = {}
            for child, par in parent.items():
                children.setdefault(par, []).append(child)
            for cid in held:
                ids.add(cid)
                up = parent.get(cid, 0)
                while up and up not in ids:
                    ids.add(up)
                    up = parent.get(up, 0)
                stack = list(children.get(cid, []))
                while stack:
                    down = stack.pop()
                    if down not in ids:
                        ids.add(down)
                        stack.extend(children.get(down, []))
    return ids


def certificate_for(reader: IndexReader, caller: Caller, certificate_id: int) -> CertificateRecord:
    record = reader.get(CertificateRecord, certificate_id=certificate_id)
    if record is None:
        raise not_found("certificate", certificate_id)
    visible = visible_certificates(reader, caller)
    if visible is not None and certificate_id not in visible:
        raise forbidden("not a certificate of yours or of your lineage", certificateId=certificate_id)
    return record


def order_visible(reader: IndexReader, caller: Caller, order: OrderRecord) -> bool:
    if caller.sees_all or caller.address in (order.issuer, order.payee):
        return True
    if caller.has(HOLDERS):
        held = reader.certificates(reader.held_ids(caller.address))
        return any(int(c.order_id) == int(order.order_id) for c in held.values())
    return False


def order_for(reader: IndexReader, caller: Caller, order_id: int) -> OrderRecord:
    require_reader(caller)
    record = reader.get(OrderRecord, order_id=order_id)
    if record is None:
        raise not_found("order", order_id)
    if not order_visible(reader, caller, record):
        raise forbidden("not an order of yours", orderId=order_id)
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

    def build(cid: int) -> LineageOut:
        kids = [k for k in sorted(children.get(cid, [])) if visible is None or k in visible]
        return LineageOut(certificate=certificate_out(by_id[cid]), children=[build(k) for k in kids])

    if top not in by_id:
        raise ApiError(404, "NotFound", "lineage not indexed yet")
    return build(top)
