"""Reads from the event index, scoped to the caller: participants, orders, certificates, offers,
settlement."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy import and_, or_
from sqlmodel import col

from api.deps import Caller, CallerDep, PagingDep, ServiceDep
from api.errors import ApiError, forbidden
from api.index import IndexReader, OfferTerms
from api.schemas import (
    UINT64,
    UINT128,
    AccountSettlementOut,
    Address,
    CertificateOut,
    ChangeOut,
    LineageOut,
    OfferOut,
    OrderOut,
    OrderSettlementOut,
    Page,
    ParticipantOut,
    PaymentOut,
    QuoteOut,
)
from api.views import (
    ZERO_ADDRESS,
    certificate_for,
    certificate_out,
    change_out,
    lineage_out,
    offer_for,
    offer_out,
    order_for,
    order_ids_held,
    order_out,
    participant_for,
    participant_out,
    payment_out,
    require_reader,
    sees_books_of,
    visible_certificates,
)
from chain_client import pricing
from chain_client.index.models import CertificateRecord, OfferRecord, OrderRecord, ParticipantRecord
from chain_client.models import CertificateStatus, Role

router = APIRouter(prefix="/v1")

IdPath = Annotated[int, Path(ge=1, le=UINT64)]


# ---------------------------------------------------------------------- participants


@router.get("/participants", response_model=Page[ParticipantOut], tags=["participants"])
def participants(service: ServiceDep, caller: CallerDep, paging: PagingDep) -> Page[ParticipantOut]:
    """The consortium's directory (every signed-in participant may read it: it names who may hold).
    A participant's books (issuer limit, outstanding, certificate count) are null but for itself,
    auditors and regulators."""
    rows, total = service.reader.page(
        ParticipantRecord, [], [col(ParticipantRecord.address)], paging.limit, paging.offset
    )
    items = [participant_out(r, sees_books_of(caller, r.address)) for r in rows]
    return Page(items=items, total=total, limit=paging.limit, offset=paging.offset)


@router.get("/participants/{address}", response_model=ParticipantOut, tags=["participants"])
def participant(address: Address, service: ServiceDep, caller: CallerDep) -> ParticipantOut:
    record = participant_for(service.reader, address)
    return participant_out(record, sees_books_of(caller, record.address))


# ---------------------------------------------------------------------- orders


@router.get("/orders", response_model=Page[OrderOut], tags=["orders"])
def orders(service: ServiceDep, caller: CallerDep, paging: PagingDep) -> Page[OrderOut]:
    """Orders the caller issued, is payee of, or holds or held a certificate of (all of them for
    auditors and regulators): the orders GET /v1/orders/{id} answers it, in one query, by id."""
    require_reader(caller)
    where: list[object] = []
    if not caller.sees_all:
        mine = [col(OrderRecord.issuer) == caller.address, col(OrderRecord.payee) == caller.address]
        held = order_ids_held(service.reader, caller)
        if held:
            mine.append(col(OrderRecord.order_id).in_(held))
        where.append(or_(*mine))
    rows, total = service.reader.page(
        OrderRecord, where, [col(OrderRecord.order_id)], paging.limit, paging.offset
    )
    return Page(items=[order_out(r) for r in rows], total=total, limit=paging.limit, offset=paging.offset)


@router.get("/orders/{order_id}", response_model=OrderOut, tags=["orders"])
def order(order_id: IdPath, service: ServiceDep, caller: CallerDep) -> OrderOut:
    return order_out(order_for(service.reader, caller, order_id))


# ---------------------------------------------------------------------- certificates


@router.get("/certificates", response_model=Page[CertificateOut], tags=["certificates"])
async def certificates(
    service: ServiceDep,
    caller: CallerDep,
    paging: PagingDep,
    holder: Annotated[
        Address | None,
        Query(
            description="Default: the caller (its holdings), but with `orderId` alone every certificate of "
            "the order the caller may see. Another holder's: auditors and regulators, and an issuer "
            "within its own order (`orderId`)."
        ),
    ] = None,
    order_id: Annotated[int | None, Query(alias="orderId", ge=1, le=UINT64)] = None,
    live_only: Annotated[bool, Query(alias="liveOnly")] = True,
    held: Annotated[
        bool,
        Query(description="Also certificates the holder held before (holdings, with or without orderId)."),
    ] = False,
) -> Page[CertificateOut]:
    """Holdings: the certificates a holder holds (live ones by default; `held`: or held before),
    within one order with `orderId`; or, with `orderId` alone, all of the order's certificates the
    caller may see."""
    # A coroutine although it queries the index: the busiest read, and a local SQLite query is
    # shorter than the hop to the thread pool it would otherwise take. It never calls the node.
    reader = service.reader
    require_reader(caller)
    where: list[object] = []
    if order_id is not None and holder is None and not held:
        order_for(reader, caller, order_id)
        where.append(CertificateRecord.order_id == order_id)
        visible = visible_certificates(reader, caller)
        if visible is not None:
            where.append(col(CertificateRecord.certificate_id).in_(visible))
    else:
        who = holder or caller.address
        # An issuer reads every certificate of its orders, so also who holds what within one.
        if who != caller.address and not caller.sees_all and not _issuer_of(reader, caller, order_id):
            raise forbidden(
                "only auditors and regulators read another participant's holdings (an issuer: within "
                "its own order, with orderId)",
                holder=who,
            )
        if held:
            where.append(col(CertificateRecord.certificate_id).in_(reader.held_ids(who)))
        else:
            where.append(CertificateRecord.holder == who)
        if order_id is not None:
            where.append(CertificateRecord.order_id == order_id)
    if live_only:
        where.append(CertificateRecord.status == int(CertificateStatus.LIVE))
    rows, total = reader.page(
        CertificateRecord, where, [col(CertificateRecord.certificate_id)], paging.limit, paging.offset
    )
    return Page(
        items=[certificate_out(r) for r in rows], total=total, limit=paging.limit, offset=paging.offset
    )


def _issuer_of(reader: IndexReader, caller: Caller, order_id: int | None) -> bool:
    """Whether the caller issued order `order_id` (404 if there is none, 403 if it may not read it)."""
    return order_id is not None and order_for(reader, caller, order_id).issuer == caller.address


@router.get("/certificates/{certificate_id}", response_model=CertificateOut, tags=["certificates"])
def certificate(certificate_id: IdPath, service: ServiceDep, caller: CallerDep) -> CertificateOut:
    return certificate_out(certificate_for(service.reader, caller, certificate_id))


@router.get("/certificates/{certificate_id}/lineage", response_model=LineageOut, tags=["certificates"])
def lineage(certificate_id: IdPath, service: ServiceDep, caller: CallerDep) -> LineageOut:
    """The tree the certificate belongs to, from its furthest visible ancestor; branches the caller
    has no part in are left out."""
    record = certificate_for(service.reader, caller, certificate_id)
    return lineage_out(service.reader, record, visible_certificates(service.reader, caller))


@router.get("/certificates/{certificate_id}/history", response_model=Page[ChangeOut], tags=["certificates"])
def history(
    certificate_id: IdPath, service: ServiceDep, caller: CallerDep, paging: PagingDep
) -> Page[ChangeOut]:
    """Every change the chain made to the certificate, oldest first: for those who hold or held it
    (and its order's issuer, auditors, regulators). The certificates a holder's came from, or that
    were split off from it, are visible as they stand, but their history would show what their
    other holders did."""
    record = certificate_for(service.reader, caller, certificate_id)
    reader = service.reader
    issuer = caller.has(Role.ISSUER) and int(record.order_id) in reader.order_ids_of_issuer(caller.address)
    if not (caller.sees_all or issuer or certificate_id in reader.held_ids(caller.address)):
        raise forbidden("the history of a certificate is for those who held it", certificateId=certificate_id)
    changes = service.reader.history(certificate_id)
    items = [change_out(c) for c in changes[paging.offset : paging.offset + paging.limit]]
    return Page(items=items, total=len(changes), limit=paging.limit, offset=paging.offset)


# ---------------------------------------------------------------------- discount


@router.get("/offers", response_model=Page[OfferOut], tags=["discount"])
def offers(
    service: ServiceDep,
    caller: CallerDep,
    paging: PagingDep,
    open_only: Annotated[bool, Query(alias="openOnly")] = True,
    buyable_only: Annotated[bool, Query(alias="buyableOnly")] = False,
) -> Page[OfferOut]:
    """Discount offers: a seller sees its own, a factor those open to any buyer or reserved for it.
    `openOnly`: neither bought, cancelled nor expired (by the timestamp of the index's last block,
    the chain's clock): what a seller may still cancel. `buyableOnly`: those the ledger would also
    sell now (`buyable`): the certificate still the seller's since the offer, live, unfrozen, not
    matured, with the value offered."""
    require_reader(caller)
    reader = service.reader
    now = reader.head_time()
    where: list[object] = []
    if not caller.sees_all:
        mine = [col(OfferRecord.seller) == caller.address]
        if caller.has(Role.FACTOR):
            mine.append(col(OfferRecord.buyer) == caller.address)
            mine.append(and_(col(OfferRecord.buyer) == ZERO_ADDRESS, col(OfferRecord.open).is_(True)))
        where.append(or_(*mine))
    if open_only:
        where.append(col(OfferRecord.open).is_(True))
        where.append(col(OfferRecord.expiry) > now)
    if buyable_only:
        rows, total = reader.buyable_offers(where, now, paging.limit, paging.offset)
        buyable = {int(r.offer_id) for r in rows}  # each one found buyable already
    else:
        rows, total = reader.offers(where, paging.limit, paging.offset)
        buyable = reader.buyable_ids(now, [int(r.offer_id) for r in rows])
    terms = _terms(reader, rows)
    items = [offer_out(r, terms[int(r.offer_id)], now, int(r.offer_id) in buyable) for r in rows]
    return Page(items=items, total=total, limit=paging.limit, offset=paging.offset)


@router.get("/offers/{offer_id}", response_model=OfferOut, tags=["discount"])
def offer(offer_id: IdPath, service: ServiceDep, caller: CallerDep) -> OfferOut:
    reader = service.reader
    record = offer_for(reader, caller, offer_id)
    now = reader.head_time()
    terms = _terms(reader, [record])[offer_id]
    return offer_out(record, terms, now, offer_id in reader.buyable_ids(now, [offer_id]))


def _terms(reader: IndexReader, offers: list[OfferRecord]) -> dict[int, OfferTerms]:
    """Each offer's terms; an offer whose certificate or order the index lacks (never, as they are
    written in one range with it, but not worth a 500) is answered as lineage answers it."""
    terms = reader.offer_terms(offers)
    missing = [int(o.offer_id) for o in offers if int(o.offer_id) not in terms]
    if missing:
        first = missing[0]
        raise ApiError(404, "NotFound", f"offer {first}'s certificate is not indexed yet", offerId=first)
    return terms


@router.get("/quote", response_model=QuoteOut, tags=["discount"])
def quote(
    face: Annotated[int, Query(ge=0, le=UINT128, description="Face value in token units.")],
    days: Annotated[int, Query(ge=0, le=36_500, description="Whole days to maturity.")],
    annual_rate_bps: Annotated[
        int, Query(alias="annualRateBps", ge=0, le=100_000, description="Simple annual rate.")
    ],
) -> QuoteOut:
    """The discount price in the contract's own arithmetic: face / (1 + rate * days / 365), rounded
    down (a simple-interest present value, the convention of the sale event's `annualRateBps`; not
    the bank-discount face * (1 - rate * days / 365), which is a little lower)."""
    price = pricing.discount_price(face, days, annual_rate_bps)
    return QuoteOut(face=face, days=days, annualRateBps=annual_rate_bps, price=price, discount=face - price)


# ---------------------------------------------------------------------- settlement


@router.get("/settlement/account", response_model=AccountSettlementOut, tags=["settlement"])
def account_settlement(service: ServiceDep, caller: CallerDep, paging: PagingDep) -> AccountSettlementOut:
    """What the caller may withdraw (payments the token refused to push) and its payments, each
    once: one the token refused is marked `credited`, and a withdrawal is an entry of its own."""
    rows, total = service.reader.payments_of(caller.address, paging.limit, paging.offset)
    page = Page[PaymentOut](
        items=[payment_out(r, credited) for r, credited in rows],
        total=total,
        limit=paging.limit,
        offset=paging.offset,
    )
    return AccountSettlementOut(
        address=caller.address, credit=service.reader.credit(caller.address), payments=page
    )


@router.get("/settlement/orders/{order_id}", response_model=OrderSettlementOut, tags=["settlement"])
def order_settlement(order_id: IdPath, service: ServiceDep, caller: CallerDep) -> OrderSettlementOut:
    record = order_for(service.reader, caller, order_id)
    visible = visible_certificates(service.reader, caller)
    certs = [
        c
        for c in service.reader.certificates_of_orders({order_id})
        if visible is None or int(c.certificate_id) in visible
    ]
    out = order_out(record)
    return OrderSettlementOut(
        orderId=order_id,
        status=out.status,
        maturity=record.maturity,
        matured=service.reader.head_time() >= record.maturity,
        escrowed=out.escrowed,
        paid=out.paid,
        refunded=out.refunded,
        inEscrow=out.inEscrow,
        liveCertificates=sorted(int(c.certificate_id) for c in certs if c.status == CertificateStatus.LIVE),
        settledCertificates=sorted(
            int(c.certificate_id) for c in certs if c.status == CertificateStatus.SETTLED
        ),
    )
