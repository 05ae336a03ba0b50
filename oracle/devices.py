"""Warehouse devices: an RFID portal counting tagged cartons and a weighbridge weighing the net load.

Each device holds its own key in an encrypted eth-account keystore file (the Web3 Secret Storage
format) and signs each reading as an EIP-712 `Observation` (chain_client.receipts). Every reading
carries a per-device sequence number; the contract accepts each (device, sequence) once, so a
device that reused one after a restart would have its honest reading refused. The next unused
sequence lives in a file next to the keystore and is advanced on disk *before* the signature
leaves the device: a crash can waste a number, never reuse one.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol, cast

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils import is_checksum_address

from chain_client.receipts import Observation, ReadingKind, sign_observation

KEYSTORE_SUFFIX = ".keystore.json"
SEQUENCE_SUFFIX = ".sequence"


class DeviceError(Exception):
    """A device's name is not a plain file name, or its keystore, metadata or sequence file is
    missing, locked by another process, or corrupt."""


class SequenceSource(Protocol):
    def reserve(self) -> int:
        """The next unused sequence number, already recorded as used."""
        ...


class FileSequence:
    """The next unused sequence number, kept in a file and advanced durably before each use.

    The file is locked (flock) for the object's lifetime, so two processes cannot run the same
    device and hand out the same numbers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_file: IO[str] | None = open(path.with_suffix(path.suffix + ".lock"), "a")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise DeviceError(f"{path} is in use by another process") from None
        if not path.exists():
            _write_atomically(path, "1\n")

    def peek(self) -> int:
        return _read_sequence(self.path)

    def reserve(self) -> int:
        value = self.peek()
        _write_atomically(self.path, f"{value + 1}\n")
        return value

    def close(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None


class MemorySequence:
    """Sequence numbers for a key that lives only as long as this process (the demo's devices).

    Starts at a random 48-bit offset, so two runs that happened to share a key would not collide."""

    def __init__(self, start: int | None = None) -> None:
        self._next = start if start is not None else secrets.randbits(48) + 1

    def reserve(self) -> int:
        value = self._next
        self._next += 1
        return value


def _read_sequence(path: Path) -> int:
    try:
        value = int(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError) as exc:
        raise DeviceError(f"unreadable sequence file {path}: {exc}") from exc
    if value < 1:
        raise DeviceError(f"sequence file {path} holds {value}")
    return value


def _write_atomically(path: Path, text: str) -> None:
    """Write, fsync, rename over, fsync the directory: after a crash the file holds either the old
    or the new text, never a torn one, and the rename itself is on disk."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class ReadingContext:
    """What a device is told about the delivery it is reading (by the warehouse system)."""

    order_id: int
    warehouse: bytes
    goods_hash: bytes
    device_set_version: int


class DeviceSigner:
    """One device: its key, its kind of reading and its sequence numbers."""

    def __init__(
        self,
        account: LocalAccount,
        kind: ReadingKind,
        sequence: SequenceSource,
        *,
        chain_id: int,
        oracle: ChecksumAddress,
    ) -> None:
        self.account = account
        self.kind = kind
        self.sequence = sequence
        self.chain_id = chain_id
        self.oracle = oracle

    @property
    def address(self) -> ChecksumAddress:
        return self.account.address

    def observe(
        self, context: ReadingContext, value: int, *, observed_at: int, valid_for: int
    ) -> tuple[Observation, bytes]:
        """Signs one reading; `valid_for` seconds later its signature stops being accepted."""
        observation = Observation(
            order_id=context.order_id,
            warehouse=context.warehouse,
            goods_hash=context.goods_hash,
            device=self.account.address,
            kind=int(self.kind),
            value=value,
            observed_at=observed_at,
            sequence=self.sequence.reserve(),
            device_set_version=context.device_set_version,
            deadline=observed_at + valid_for,
        )
        return observation, sign_observation(self.account, observation, self.chain_id, self.oracle)


@dataclass(frozen=True)
class DeviceFiles:
    """Where a device's key and sequence live: DIR/NAME.keystore.json and DIR/NAME.sequence."""

    directory: Path
    name: str

    def __post_init__(self) -> None:
        # The name is joined to `directory`: a path in it ("../x", "a/b") would put a device's key
        # somewhere else, and ".", ".." or a leading dot name a directory or a hidden file.
        if not self.name or self.name.startswith(".") or any(c in self.name for c in "/\\\0"):
            raise DeviceError(
                f"device name {self.name!r} is not a plain file name (one without / or \\, not starting "
                "with a dot, not empty)"
            )

    @property
    def keystore(self) -> Path:
        return self.directory / f"{self.name}{KEYSTORE_SUFFIX}"

    @property
    def sequence(self) -> Path:
        return self.directory / f"{self.name}{SEQUENCE_SUFFIX}"

    @property
    def meta(self) -> Path:
        return self.directory / f"{self.name}.device.json"


KdfName = Literal["scrypt", "pbkdf2"]


def create_device(
    files: DeviceFiles,
    kind: ReadingKind,
    password: str,
    *,
    kdf: KdfName = "scrypt",
    iterations: int | None = None,
    key: bytes | None = None,
) -> ChecksumAddress:
    """Makes a new device key (or imports `key`), encrypted under `password`. `iterations` lowers
    the KDF's work factor: for tests only, a real device keeps eth-account's default."""
    if files.keystore.exists():
        raise DeviceError(f"{files.keystore} exists; refusing to overwrite a device key")
    files.directory.mkdir(parents=True, exist_ok=True)
    account: LocalAccount = Account.from_key(key) if key is not None else Account.create()
    keystore = Account.encrypt(account.key, password, kdf=kdf, iterations=iterations)
    _write_atomically(files.keystore, json.dumps(keystore))
    os.chmod(files.keystore, 0o600)
    _write_atomically(files.meta, json.dumps({"address": account.address, "kind": int(kind)}))
    return account.address


def load_device(
    files: DeviceFiles, password: str, *, chain_id: int, oracle: ChecksumAddress
) -> tuple[DeviceSigner, FileSequence]:
    """Decrypts a device's key and locks its sequence file. Close the FileSequence when done."""
    address, kind = device_address(files)
    try:
        keystore: dict[str, Any] = json.loads(files.keystore.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DeviceError(f"cannot read device {files.name}: {exc}") from exc
    try:
        account: LocalAccount = Account.from_key(Account.decrypt(keystore, password))
    except ValueError as exc:  # eth-account raises ValueError("MAC mismatch") for a wrong password
        hint = " (wrong CERTLEDGER_DEVICE_PASSWORD?)" if "MAC mismatch" in str(exc) else ""
        raise DeviceError(f"cannot decrypt device {files.name}: {exc}{hint}") from None
    if account.address != address:
        raise DeviceError(f"device {files.name}: key is {account.address}, metadata says {address}")
    sequence = FileSequence(files.sequence)
    signer = DeviceSigner(account, kind, sequence, chain_id=chain_id, oracle=oracle)
    return signer, sequence


def device_address(files: DeviceFiles) -> tuple[ChecksumAddress, ReadingKind]:
    """A device's address and kind without its password (from the metadata file), checked: a file
    edited by hand or cut short says which file and what is wrong with it."""
    path = files.meta
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DeviceError(f"cannot read device file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise DeviceError(f"device file {path} is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise DeviceError(f"device file {path} holds a JSON {type(meta).__name__}, not an object")
    for key in ("address", "kind"):
        if key not in meta:
            raise DeviceError(f"device file {path} has no {key}")
    address, kind = meta["address"], meta["kind"]
    if not isinstance(address, str) or not is_checksum_address(address):
        raise DeviceError(f"device file {path}: address {address!r} is not a checksummed address")
    # type(...) is int: JSON's true would pass as 1 otherwise
    if type(kind) is not int or kind not in set(ReadingKind):
        kinds = ", ".join(f"{k.value} ({k.name})" for k in ReadingKind)
        raise DeviceError(f"device file {path}: kind {kind!r} is none of {kinds}")
    return cast(ChecksumAddress, address), ReadingKind(kind)


def next_sequence(files: DeviceFiles) -> int:
    """The device's next unused sequence number, read without locking it (for a listing)."""
    return _read_sequence(files.sequence) if files.sequence.exists() else 1
