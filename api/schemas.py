"""Request and response bodies. Public shapes only: index rows and web3 types never leave the service.

Amounts are integers in token units (the demo token has 2 decimals: 12345 is 123.45).
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from eth_utils import is_address, to_checksum_address
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

T = TypeVar("T")

UINT64 = 2**64 - 1
UINT128 = 2**128 - 1
UINT256 = 2**256 - 1

_EXAMPLE_ADDRESS = "0x1972D67892bbd3151A8595B86A5d1931A713c5D3"
_EXAMPLE_HASH = "0x80066d42cb1d1876d3f91ddfce739f4649eb223e815f12756f733eb185548803"


def _address(value: str) -> str:
    if not is_address(value):
        raise ValueError("not a 20-byte hex address")
    return to_checksum_address(value)


def _bytes32(value: str) -> str:
    text = value.removeprefix("0x")
    if len(text) != 64:
        raise ValueError("not 32 bytes of hex")
    try:
        bytes.fromhex(text)
    except ValueError:
        raise ValueError("not hex") from None
    return "0x" + text.lower()


def _hexdata(value: str) -> str:
    if not value.startswith("0x"):
        raise ValueError("hex data starts with 0x")
    try:
        bytes.fromhex(value[2:])
    except ValueError:
        raise ValueError("not hex") from None
    return value


Address = Annotated[
    str, Field(examples=[_EXAMPLE_ADDRESS], pattern=r"^0x[0-9a-fA-F]{40}$"), AfterValidator(_address)
]
Bytes32 = Annotated[
    str, Field(examples=[_EXAMPLE_HASH], pattern=r"^0x[0-9a-fA-F]{64}$"), AfterValidator(_bytes32)
]
HexData = Annotated[
    str,
    Field(examples=["0x02f8d5"], pattern=r"^0x([0-9a-fA-F]{2})*$", max_length=200_000),
    AfterValidator(_hexdata),
]
Signature = Annotated[str, Field(description="65 bytes: r, s, v.", pattern=r"^0x[0-9a-fA-F]{130}$")]
Id = Annotated[int, Field(ge=1, le=UINT64, examples=[1])]
Amount = Annotated[int, Field(ge=1, le=UINT128, examples=[30_000_000])]


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class Problem(BaseModel):
    """Every error answer."""

    code: str = Field(examples=["CertificateFrozen"])
    message: str = Field(examples=["CertificateFrozen(certificateId=7)"])
    fields: dict[str, Any] = Field(examples=[{"certificateId": 7}])


# ---------------------------------------------------------------------- auth


class NonceRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"address": _EXAMPLE_ADDRESS}]})
    address: Address


class NonceResponse(BaseModel):
    message: str
    nonce: str
    expiresAt: int


class LoginRequest(BaseModel):
    message: str = Field(max_length=2_000)
    signature: HexData


class LoginResponse(BaseModel):
    accessToken: str
    tokenType: str = "bearer"
    expiresAt: int
    address: str
    roles: list[str]


# ---------------------------------------------------------------------- records


_BOOKS = "null unless the caller is this participant, an auditor or a regulator"


class ParticipantOut(BaseModel):
    """A directory entry. Its books (issuer limit, amount outstanding, certificates held) are shown
    to the participant itself, auditors and regulators; null for everyone else."""

    address: str
    entityId: str
    roles: list[str]
    active: bool
    issuerLimit: int | None = Field(description=_BOOKS)
    outstanding: int | None = Field(description=_BOOKS)
    certificateCount: int | None = Field(description=_BOOKS)


class OrderOut(BaseModel):
    orderId: int
    issuer: str
    payee: str
    status: str
    maturity: int
    deadline: int
    escrowed: int
    paid: int
    refunded: int
    inEscrow: int
    expectedQuantity: int
    deliveredQuantity: int
    rootCertificateId: int
    invoiceHash: str
    warehouse: str
    goodsHash: str


class CertificateOut(BaseModel):
    certificateId: int
    orderId: int
    holder: str
    value: int
    parentId: int
    depth: int
    maturity: int
    status: str
    frozen: bool


class LineageOut(BaseModel):
    certificate: CertificateOut
    children: list[LineageOut]


class ChangeOut(BaseModel):
    blockNumber: int
    txHash: str
    event: str
    field: str
    old: str | None
    new: str | None


class OfferOut(BaseModel):
    offerId: int
    certificateId: int
    seller: str
    buyer: str | None
    value: int
    price: int
    expiry: int
    open: bool


class QuoteOut(BaseModel):
    face: int
    days: int
    annualRateBps: int
    price: int
    discount: int


class PaymentOut(BaseModel):
    blockNumber: int
    txHash: str
    kind: str
    orderId: int | None
    certificateId: int | None
    payer: str
    payee: str
    amount: int


class AccountSettlementOut(BaseModel):
    address: str
    credit: int
    payments: Page[PaymentOut]


class OrderSettlementOut(BaseModel):
    orderId: int
    status: str
    maturity: int
    matured: bool
    escrowed: int
    paid: int
    refunded: int
    inEscrow: int
    liveCertificates: list[int]
    settledCertificates: list[int]


# ---------------------------------------------------------------------- writes


class UnsignedTx(BaseModel):
    """What to sign (eth-account `sign_transaction` takes it as it is)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "chainId": 31337,
                    "to": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
                    "data": "0x23b872dd...",
                    "nonce": 0,
                    "gas": 61424,
                    "maxFeePerGas": 2000000000,
                    "maxPriorityFeePerGas": 1000000000,
                    "value": 0,
                }
            ]
        }
    )
    chainId: int
    to: str
    data: str
    nonce: int
    gas: int
    value: int = 0
    maxFeePerGas: int | None = None
    maxPriorityFeePerGas: int | None = None
    gasPrice: int | None = None
    type: int | None = None


class SignedTx(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"raw": "0x02f8d5..."}]})
    raw: HexData


class EventOut(BaseModel):
    name: str
    address: str
    logIndex: int
    args: dict[str, Any]


class TxOut(BaseModel):
    txHash: str
    status: str
    blockNumber: int
    gasUsed: int
    contract: str
    function: str
    sender: str
    events: list[EventOut]
    #: whether the index already includes the block (reads show the write); false when the index
    #: could not catch up in time: the transaction is mined all the same, do not send it again
    indexed: bool = True


class OpenOrderIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "payee": _EXAMPLE_ADDRESS,
                    "amount": 100_000_000,
                    "maturity": 1_800_000_000,
                    "invoice": "INV-2026-0001",
                    "warehouse": "WH-1",
                    "goods": "brake discs BD-330",
                    "expectedQuantity": 1000,
                    "deadline": 1_790_000_000,
                }
            ]
        }
    )
    payee: Address
    amount: Amount
    maturity: int = Field(ge=0, le=2**40 - 1)
    invoice: str = Field(
        min_length=1, max_length=200, description="Invoice number; hashed (keccak) on chain."
    )
    warehouse: str = Field(min_length=1, max_length=200, description="Warehouse label; hashed on chain.")
    goods: str = Field(min_length=1, max_length=200, description="Goods description; hashed on chain.")
    expectedQuantity: int = Field(ge=1, le=UINT64)
    deadline: int = Field(ge=0, le=2**40 - 1)


class RegisterIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"account": _EXAMPLE_ADDRESS, "entity": "USCC:91310000MA1FL0001X", "roles": ["SUPPLIER"]}
            ]
        }
    )
    account: Address
    entity: str = Field(min_length=1, max_length=200, description="Legal identifier; hashed on chain.")
    roles: list[Literal["ADMIN", "ISSUER", "SUPPLIER", "FACTOR", "REGULATOR", "AUDITOR"]] = Field(
        min_length=1, max_length=6
    )
    issuerLimit: int = Field(default=0, ge=0, le=UINT128)


class AccountIn(BaseModel):
    account: Address


class OrderIdIn(BaseModel):
    orderId: Id


class TransferIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"certificateId": 1, "to": _EXAMPLE_ADDRESS}]})
    certificateId: Id
    to: Address


class SplitIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"certificateId": 1, "values": [700, 300]}]})
    certificateId: Id
    values: list[Amount] = Field(min_length=2, max_length=16)


class SplitToIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"certificateId": 1, "to": _EXAMPLE_ADDRESS, "value": 30_000_000}]}
    )
    certificateId: Id
    to: Address
    value: Amount


class MergeIn(BaseModel):
    fromId: Id
    toId: Id
    value: Amount


class OfferIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "certificateId": 3,
                    "value": 40_000_000,
                    "price": 39_400_000,
                    "expiry": 1_790_000_000,
                    "buyer": None,
                }
            ]
        }
    )
    certificateId: Id
    value: Amount
    price: Amount
    expiry: int = Field(ge=0, le=2**40 - 1)
    buyer: Address | None = None


class OfferIdIn(BaseModel):
    offerId: Id


class SettleIn(BaseModel):
    certificateIds: list[Id] = Field(min_length=1, max_length=64)


class ApproveTokenIn(BaseModel):
    amount: int = Field(ge=0, le=UINT256, examples=[100_000_000])


class FreezeIn(BaseModel):
    certificateId: Id
    reason: str = Field(default="", max_length=200, description="Reason; hashed on chain.")


class ConfirmReceiptIn(BaseModel):
    """A gateway's submission: it signs and sends the transaction itself (no participant role; the
    oracle's relayer allow-list decides). Each observation is in chain_client's JSON form
    (`Observation.to_json`), so a change to the observation's fields needs no change here."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sender": _EXAMPLE_ADDRESS,
                    "observations": [
                        {
                            "order_id": 1,
                            "warehouse": _EXAMPLE_HASH,
                            "goods_hash": _EXAMPLE_HASH,
                            "device": _EXAMPLE_ADDRESS,
                            "kind": 1,
                            "value": 1000,
                            "observed_at": 1_790_000_000,
                            "sequence": 7,
                            "device_set_version": 1,
                            "deadline": 1_790_003_600,
                        }
                    ],
                    "signatures": ["0x" + "ab" * 65],
                }
            ]
        }
    )
    sender: Address
    observations: list[dict[str, Any]] = Field(min_length=1, max_length=32)
    signatures: list[Signature] = Field(min_length=1, max_length=32)
