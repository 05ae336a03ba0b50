"""Where the indexer's range writes run: in the syncing thread, in a thread, or in a child process.

Ranges are written in order, each in one transaction with its cursor (a replay's all in one, see
`db.RangeLoader`), and the indexer waits for a range's write before it reports it (and before it
hands over the range after the next), so a killed sync resumes exactly as with inline writes. The
writer also seals each range (change texts, digest chain, see `db.RangeWrite.seal`) and answers
with the digest after it. What differs is what runs while a range is sealed and written:

- inline (SQLite sync): nothing; SQLite works inside this process and a thread would only add GIL
  hand-offs (the sqlite3 module gives up the GIL around every row it steps);
- a thread (PostgreSQL sync): the next range is applied while the server does the write;
- a child process (a replay, where `can_fork`): the next range is applied while another process seals, inserts
  and commits this one, on another core. Sealing and writing were half of a replay's work. The
  child is forked, so it starts at once and needs nothing but the batches (plain tuples, cheap to
  pickle); it opens its own connection to the database. Measured on a 20,000-event replay into
  PostgreSQL it was also faster than the thread, now that the seal moved to the writer.
"""

from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import pickle
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Protocol

from chain_client.index.db import IndexDatabase, IndexDatabaseError, RangeLoader, RangeWrite

Job = Callable[[RangeWrite], str]


class Pending(Protocol):
    def result(self) -> str:
        """The digest after the range, once it is committed (raises what the write raised)."""
        ...


class Writer(Protocol):
    def submit(self, batch: RangeWrite) -> Pending: ...

    def close(self) -> None: ...


class _Done:
    def __init__(self, digest: str) -> None:
        self._digest = digest

    def result(self) -> str:
        return self._digest


class InlineWriter:
    """Writes each range at once, in the caller's thread (a failure raises from `submit`)."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def submit(self, batch: RangeWrite) -> Pending:
        return _Done(self._job(batch))

    def close(self) -> None:
        pass


class ThreadWriter:
    def __init__(self, job: Job) -> None:
        self._job = job
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-write")

    def submit(self, batch: RangeWrite) -> Pending:
        future: Future[str] = self._pool.submit(self._job, batch)
        return future

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def can_fork() -> bool:
    """Whether a replay may fork its writer: on Linux (macOS forks badly with some system libraries
    loaded, Windows cannot) and only from a process with no other thread. A child forked while
    another thread holds a lock (a progress bar's console, stdout's buffer, which the child flushes
    as it exits) inherits the lock held by nobody and hangs on it. Otherwise the replay writes as a
    sync does (a server replaying from a request's thread, say)."""
    return (
        sys.platform == "linux"
        and "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
    )


class ProcessWriter:
    """Writes ranges in a forked child with its own connection to `db`, one at a time, in order.

    `submit` hands a range over; its `result()` waits for the child's commit and raises what the
    write raised. `on_written(seconds)` gets the child's time for each range (for the stage
    timings). Only one range may be outstanding: the indexer waits before submitting the next."""

    def __init__(self, db: IndexDatabase, on_written: Callable[[float], None]) -> None:
        context = multiprocessing.get_context("fork")
        self._conn, child_end = context.Pipe()
        self._on_written = on_written
        self._outstanding = False
        self._process = context.Process(
            target=_serve,
            args=(db.url, db.scratch, child_end, self._conn),
            name="index-write",
            daemon=True,
        )
        self._process.start()
        child_end.close()

    def submit(self, batch: RangeWrite) -> Pending:
        if self._outstanding:
            raise RuntimeError("the previous range has not been waited for")
        # `touched` only served to pick the records to write; the child needs the rows alone.
        rows = dataclasses.replace(batch, touched=set())
        self._conn.send_bytes(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))
        self._outstanding = True
        return _Acknowledgement(self)

    def _wait(self) -> str:
        if not self._outstanding:
            raise RuntimeError("no range is outstanding")
        try:
            answer = self._conn.recv()
        except EOFError:
            raise IndexDatabaseError(
                f"the index writer process stopped (exit code {self._process.exitcode})"
            ) from None
        finally:
            self._outstanding = False
        kind, value = answer
        if kind == "error":
            raise value
        seconds, digest = value
        self._on_written(seconds)
        return str(digest)

    def close(self) -> None:
        """Stops the child; a range still outstanding is committed first if it can be."""
        try:
            if self._process.is_alive():
                self._conn.send_bytes(b"")
        except OSError:
            pass
        self._conn.close()
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


class _Acknowledgement:
    def __init__(self, writer: ProcessWriter) -> None:
        self._writer = writer

    def result(self) -> str:
        return self._writer._wait()


def _serve(url: str, scratch: bool, conn: Connection, parent_end: Connection) -> None:
    """The child: write each range it is sent; an empty message or a closed pipe ends it."""
    parent_end.close()
    # Every object the child makes lives for one range and none refers back to another: the cyclic
    # collector would only rescan the rows of a range while they are unpickled and written.
    gc.disable()
    db = IndexDatabase(url, scratch=scratch)
    loader = RangeLoader(db)
    try:
        while True:
            try:
                message = conn.recv_bytes()
            except EOFError:
                return
            if not message:
                return
            started = time.perf_counter()
            try:
                digest = loader.write(pickle.loads(message))
            except BaseException as exc:
                conn.send(("error", _portable(exc)))
                return
            conn.send(("ok", (time.perf_counter() - started, digest)))
    finally:
        # A transaction still open was not closed by the indexer (it stopped early): roll it back.
        loader.abandon()
        db.close()


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling, else an IndexDatabaseError naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return IndexDatabaseError(f"index write failed: {type(exc).__name__}: {exc}")
    return exc
