"""Which failures are worth retrying, and how long to wait before the next try.

A node that does not answer, times out or drops a connection may answer next time: those are
transient, and so is the oracle's SQLite database being locked or busy. A contract revert is an
answer and is never retried (the relayer records it as final).
"""

from __future__ import annotations

import sqlite3

from requests.exceptions import RequestException

from chain_client.errors import NodeUnavailable, TransactionTimeout

TRANSIENT: tuple[type[BaseException], ...] = (
    NodeUnavailable,
    TransactionTimeout,
    RequestException,
    ConnectionError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """Node trouble, or the oracle's own database busy with another writer (which passes)."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "locked" in text or "busy" in text
    return isinstance(exc, TRANSIENT)


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after `attempts` failures in a row: base, 2 base, 4 base, ... at most cap."""
    if attempts <= 0:
        return 0.0
    return float(min(cap, base * 2 ** min(attempts - 1, 30)))
