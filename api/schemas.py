"""Request and response bodies. Public shapes only: index rows and web3 types never leave the service.

Amounts are integers in token units (the demo token has 2 decimals: 12345 is 123.45).
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from eth_utils import is_address, is_checksum_address, to_checksum_address
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from chain_client.receipts import MAX_FRESHNESS, bytes32_of

T = TypeVar("T")

UINT64 = 2**64 - 1
UINT128 = 2**128 - 1
UINT256 = 2**256 - 1

_EXAMPLE_ADDRESS = "0x1972D67892bbd3151A8595B86A5d1931A713c5D3"
_EXAMPLE_HASH = "0x80066d42cb1d1876d3f91ddfce739f4649eb223e815f12756f733eb185548803"
#: transferFrom(0x1a64...14F1, 0x1972...c5D3, 1), and the same signed (type 2, chain 31337, nonce 0)
#: by a throwaway key (0x0101...01).
_EXAMPLE_CALL = (
    "0x23b872dd0000000000000000000000001a642f0e3c3af545e7acbd38b07251b3990914f1"
    "0000000000000000000000001972d67892bbd3151a8595b86a5d1931a713c5d3"
    "0000000000000000000000000000000000000000000000000000000000000001"
)
_EXAMPLE_RAW = (
    "0x02f8d1827a6980843b9aca00847735940082eff0945fbdb2315678afecb367f032d93f642f64180aa380b864"
    + _EXAMPLE_CALL[2:]
    + "c001a0d25d5c5495cd223e761239d639f55be9e864088416bf9295b98b3eb8b6e4b72aa0427c0ade4fd5403cbc8a"
    "002835b52c696cebac8d5d3fb0acf9894f74d3d75bea"
)
#: Times in the examples: far enough ahead to be accepted as deadlines and maturities for years.
_EXAMPLE_DEADLINE = 2_000_000_000  # 2033-05-18
_EXAMPLE_MATURITY = 2_010_000_000  # 2033-09-11


def _address(value: str) -> str:
    if not is_address(value):
        raise ValueError("not a 20-byte hex address")
    digits = value[2:]
    if digits != digits.lower() and digits != digits.upper() and not is_checksum_address(value):
        # Mixed case is an EIP-55 checksum: a wrong one is a mistyped address, not one to normalise.
        raise ValueError("mixed-case address with a wrong EIP-55 checksum")
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


def _label(value: str) -> str:
    bytes32_of(value)  # hex-like text of the wrong length is refused, not hashed as a label
    return value


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
    Field(examples=[_EXAMPLE_CALL], pattern=r"^0x([0-9a-fA-F]{2})*$", max_length=200_000),
    AfterValidator(_hexdata),
]
#: A bytes32 on chain given as a label (hashed with keccak256) or as the 0x-prefixed 32-byte hash
#: itself (as the reads show it); hex-like text of another length is refused (the CLI's rule).
Label = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_label)]
RoleName = Literal["ADMIN", "ISSUER", "SUPPLIER", "FACTOR", "REGULATOR", "AUDITOR"]
Signature = Annotated[str, Field(description="65 bytes: r, s, v.", pattern=r"^0x[0-9a-fA-F]{130}$")]
Id = Annotated[int, Field(ge=1, le=UINT64, examples=[1])]
Amount = Annotated[int, Field(ge=1, le=UINT128, examples=[30_000_000])]


class Body(BaseModel):
    """A request body: a field it does not define is refused (a misspelt optional field would
    otherwise be dropped and its default taken), and numbers are taken as JSON gives them: an
    integer field refuses booleans, floats (1e7, 1.0) and strings of digits."""

    model_config = ConfigDict(extra="forbid", strict=True)


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


class DeploymentOut(BaseModel):
    """Where the system lives: what a client needs to sign for it (EIP-712 domains name the chain
    and the contract) and an auditor to replay it."""

    chainId: int
    ledger: str
    oracle: str
    token: str
    deploymentBlock: int


# ---------------------------------------------------------------------- auth


class NonceRequest(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"address": _EXAMPLE_ADDRESS}]})
    address: Address


class NonceResponse(BaseModel):
    message: str
    nonce: str
    expiresAt: int


class LoginRequest(Body):
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


class MergeOut(BaseModel):
    """Value this certificate gave another certificate of its order (ERC-3525's
    transferFrom(fromId, toId, value)), which parent links do not show."""

    certificateId: int = Field(description="The certificate that took the value.")
    value: int
    blockNumber: int
    txHash: str


class LineageOut(BaseModel):
    certificate: CertificateOut
    children: list[LineageOut]
    mergedInto: list[MergeOut] = Field(
        description="Merges of this certificate's value into others the caller may read."
    )


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
    orderId: int = Field(description="The order the certificate is a claim on.")
    issuer: str = Field(description="The order's issuer: the debtor, who pays the holder at maturity.")
    maturity: int = Field(description="When the certificate is paid (unix seconds).")
    annualRateBps: int | None = Field(
        description="The simple annual rate a purchase now would earn, as the ledger's DiscountSold "
        "event reports it: (value - price) / price per year, by the timestamp of the index's last "
        "block; null unless the offer is open and neither it has expired nor its certificate matured "
        "(a sold offer's rate is in its DiscountSold event)."
    )
    open: bool = Field(description="Not bought or cancelled yet (the chain's flag; see `expired`).")
    expired: bool = Field(
        description="The expiry is at or before the timestamp of the index's last block: the offer "
        "can no longer be bought (its seller may still cancel it)."
    )
    buyable: bool = Field(
        description="The ledger would sell it now, as of the index's last block: open, not expired, "
        "the ledger not paused, its certificate still the seller's since the offer, live, unfrozen, "
        "not matured, with the value offered and a sale the split rules allow (else buying is "
        "refused: IncorrectHolder, OfferStale, InsufficientValue, SplitBelowMinimumUnit, ...)."
    )


class QuoteOut(BaseModel):
    face: int
    days: int
    annualRateBps: int
    price: int
    discount: int


class PaymentOut(BaseModel):
    blockNumber: int
    txHash: str
    kind: str = Field(
        description="What the money was for: `escrow` or `refund` of an order, `settlement` of a "
        "certificate, `discount` (a sale's price) or `withdrawal` (of credited payments).",
        examples=["settlement"],
    )
    orderId: int | None
    certificateId: int | None
    payer: str
    payee: str
    amount: int
    credited: bool = Field(
        description="The token refused to push this refund or settlement, so the ledger credited it "
        "to the payee instead: it counts in `credit` until a `withdrawal` pays it out."
    )


class AccountSettlementOut(BaseModel):
    address: str
    credit: int
    payments: Page[PaymentOut]


class OrderSettlementOut(BaseModel):
    orderId: int
    status: str
    maturity: int
    matured: bool = Field(
        description="The maturity is at or before the timestamp of the index's last block (the chain's "
        "clock as of what the rest of the answer shows): its live certificates can be settled."
    )
    escrowed: int
    paid: int
    refunded: int
    inEscrow: int
    liveCertificates: list[int]
    settledCertificates: list[int]


# ---------------------------------------------------------------------- writes


def _omitted_when_none() -> Any:
    """A field left out of the JSON when it has no value: eth-account refuses a null `type` or fee."""
    return Field(default=None, exclude_if=lambda v: v is None)


class UnsignedTx(BaseModel):
    """What to sign: eth-account's `Account.sign_transaction` takes it as it is. The fee fields of
    the other kind of transaction are left out, not null (an EIP-1559 transaction has
    maxFeePerGas and maxPriorityFeePerGas, a legacy one on a zero-fee network gasPrice); with no
    `type`, eth-account infers it from them."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "chainId": 31337,
                    "to": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
                    "data": _EXAMPLE_CALL,
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
    maxFeePerGas: int | None = _omitted_when_none()
    maxPriorityFeePerGas: int | None = _omitted_when_none()
    gasPrice: int | None = _omitted_when_none()
    type: int | None = _omitted_when_none()


class SignedTx(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"raw": _EXAMPLE_RAW}]})
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


class OpenOrderIn(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "payee": _EXAMPLE_ADDRESS,
                    "amount": 100_000_000,
                    "maturity": _EXAMPLE_MATURITY,
                    "invoice": "INV-2026-0001",
                    "warehouse": "WH-1",
                    "goods": "brake discs BD-330",
                    "expectedQuantity": 1000,
                    "deadline": _EXAMPLE_DEADLINE,
                }
            ]
        }
    )
    payee: Address
    amount: Amount
    maturity: int = Field(ge=0, le=2**40 - 1)
    invoice: Label = Field(description="Invoice number (hashed with keccak256 on chain) or its 0x hash.")
    warehouse: Label = Field(description="Warehouse label (hashed on chain) or its 0x hash.")
    goods: Label = Field(description="Goods description (hashed on chain) or its 0x hash.")
    expectedQuantity: int = Field(ge=1, le=UINT64)
    deadline: int = Field(ge=0, le=2**40 - 1)


class RegisterIn(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"account": _EXAMPLE_ADDRESS, "entity": "USCC:91310000MA1FL0001X", "roles": ["SUPPLIER"]}
            ]
        }
    )
    account: Address
    entity: Label = Field(description="Legal identifier (hashed on chain) or its 0x hash.")
    roles: list[RoleName] = Field(min_length=1, max_length=6)
    issuerLimit: int = Field(default=0, ge=0, le=UINT128)


class SetRolesIn(Body):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"account": _EXAMPLE_ADDRESS, "roles": ["SUPPLIER", "FACTOR"]}]}
    )
    account: Address
    roles: list[RoleName] = Field(
        min_length=1,
        max_length=6,
        description="The account's roles from now on (at least one: to stop an account, suspend it).",
    )


class IssuerLimitIn(Body):
    account: Address
    limit: int = Field(ge=0, le=UINT128, description="Most escrow the issuer may have open at once.")


class SplitRulesIn(Body):
    minSplitUnit: int = Field(ge=1, le=2**96 - 1, examples=[100_00])
    maxSplitDepth: int = Field(ge=1, le=255, examples=[8])


class DeviceIn(Body):
    address: Address
    kind: int = Field(ge=1, le=255, description="1 carton count (RFID portal), 2 net weight in grams.")


class ReadingRangeIn(Body):
    kind: int = Field(ge=1, le=255)
    min: int = Field(ge=0, le=UINT64)
    max: int = Field(ge=0, le=UINT64)


class WarehouseIn(Body):
    """A warehouse's enrolment (register) or its new one (rotate: signatures in flight stop verifying)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "warehouse": "WH-1",
                    "devices": [{"address": _EXAMPLE_ADDRESS, "kind": 1}],
                    "threshold": 1,
                    "freshness": 3_600,
                    "ranges": [{"kind": 1, "min": 1, "max": 100_000}],
                }
            ]
        }
    )
    warehouse: Label
    devices: list[DeviceIn] = Field(min_length=1, max_length=16)
    threshold: int = Field(ge=1, le=255)
    freshness: int = Field(
        ge=1, le=MAX_FRESHNESS, description="Oldest a reading may be, in seconds (at most a week)."
    )
    ranges: list[ReadingRangeIn] = Field(min_length=1, max_length=16)


class WarehouseIdIn(Body):
    warehouse: Label


class RelayerIn(Body):
    relayer: Address
    allowed: bool


class AccountIn(Body):
    account: Address


class OrderIdIn(Body):
    orderId: Id


class TransferIn(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"certificateId": 1, "to": _EXAMPLE_ADDRESS}]})
    certificateId: Id
    to: Address
    holder: Address | None = Field(
        default=None,
        description="The holder, when the caller moves it as an approved operator (default: the caller).",
    )


class ApproveIn(Body):
    certificateId: Id
    operator: Address = Field(
        description="May move the whole certificate until it changes hands (zero: revoke)."
    )


class ApproveValueIn(Body):
    certificateId: Id
    operator: Address
    value: int = Field(ge=0, le=UINT256, description="Most value the operator may move out (0: revoke).")


class ApprovalForAllIn(Body):
    operator: Address
    approved: bool


class SplitIn(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"certificateId": 1, "values": [700, 300]}]})
    certificateId: Id
    values: list[Amount] = Field(min_length=2, max_length=16)


class SplitToIn(Body):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"certificateId": 1, "to": _EXAMPLE_ADDRESS, "value": 30_000_000}]}
    )
    certificateId: Id
    to: Address
    value: Amount


class MergeIn(Body):
    fromId: Id
    toId: Id
    value: Amount


class OfferIn(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "certificateId": 3,
                    "value": 40_000_000,
                    "price": 39_400_000,
                    "expiry": _EXAMPLE_DEADLINE,
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


class OfferIdIn(Body):
    offerId: Id


class SettleIn(Body):
    certificateIds: list[Id] = Field(min_length=1, max_length=64)


class ApproveTokenIn(Body):
    amount: int = Field(ge=0, le=UINT256, examples=[100_000_000])


class FreezeIn(Body):
    certificateId: Id
    reason: Annotated[str, Field(max_length=200), AfterValidator(_label)] = Field(
        default="", description="Reason (hashed on chain) or its 0x hash."
    )


class ConfirmReceiptIn(Body):
    """A gateway's submission: it signs and sends the transaction itself (no participant role; the
    oracle's relayer allow-list decides). Each observation is in chain_client's JSON form
    (`Observation.to_json`), so a change to the observation's fields needs no change here. The
    example shows the shape only: real observations are signed by the devices, observed within the
    warehouse's freshness window of the chain's time."""

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
                            "observed_at": _EXAMPLE_DEADLINE - 3_600,
                            "sequence": 7,
                            "device_set_version": 1,
                            "deadline": _EXAMPLE_DEADLINE,
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
