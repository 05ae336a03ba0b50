"""Where the indexer's range writes run: in the syncing thread, in a thread, or in a child process.

Each range is still one transaction with its cursor, committed in order, and the indexer waits for
a range's commit before it reports it (and before it hands over the range after the next), so a
killed sync resumes exactly as with inline writes. What differs is what runs while a range commits:

- inline (SQLite sync): nothing; SQLite works inside this process and a thread would only add GIL
  hand-offs (the sqlite3 module gives up the GIL around every row it steps);
- a thread (PostgreSQL): the next range is applied while the server does the write. A child
  process measured no faster: the server is the bottleneck, and pickling costs this thread;
- a child process (SQLite replay): the next range is applied while another process inserts and
  commits this one, on another core. A replay writes tens of megabytes and this was a third of
  its time. The child is forked, so it starts at once and needs nothing but the batches; it
  opens its own connection to the database file.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import pickle
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Protocol

from chain_client.index.db import IndexDatabase, IndexDatabaseError, RangeWrite

Job = Callable[[RangeWrite], None]


class Pending(Protocol):
    def result(self) -> None: ...


class Writer(Protocol):
    def submit(self, batch: RangeWrite) -> Pending: ...

    def close(self) -> None: ...


class _Done:
    def result(self) -> None:
        return None


class InlineWriter:
    """Writes each range at once, in the caller's thread (a failure raises from `submit`)."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def submit(self, batch: RangeWrite) -> Pending:
        self._job(batch)
        return _Done()

    def close(self) -> None:
        pass


class ThreadWriter:
    def __init__(self, job: Job) -> None:
        self._job = job
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-write")

    def submit(self, batch: RangeWrite) -> Pending:
        future: Future[None] = self._pool.submit(self._job, batch)
        return future

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def can_fork() -> bool:
    # fork is the default and safe on Linux for this use (the child touches only its own objects);
    # macOS forks badly with some system libraries loaded, Windows cannot.
    return sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()


class ProcessWriter:
    """Writes ranges in a forked child with its own connection to `url`, one at a time, in order.

    `submit` hands a range over; its `result()` waits for the child's commit and raises what the
    write raised. `on_written(seconds)` gets the child's time for each range (for the stage
    timings). Only one range may be outstanding: the indexer waits before submitting the next."""

    def __init__(self, url: str, on_written: Callable[[float], None]) -> None:
        context = multiprocessing.get_context("fork")
        self._conn, child_end = context.Pipe()
        self._on_written = on_written
        self._outstanding = False
        self._process = context.Process(
            target=_serve, args=(url, child_end, self._conn), name="index-write", daemon=True
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

    def _wait(self) -> None:
        if not self._outstanding:
            return
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
        self._on_written(value)

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

    def result(self) -> None:
        self._writer._wait()


def _serve(url: str, conn: Connection, parent_end: Connection) -> None:
    """The child: write each range it is sent; an empty message or a closed pipe ends it."""
    parent_end.close()
    db = IndexDatabase(url)
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
                db.write_range(pickle.loads(message))
            except BaseException as exc:
                conn.send(("error", _portable(exc)))
                return
            conn.send(("ok", time.perf_counter() - started))
    finally:
        db.close()


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling, else an IndexDatabaseError naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return IndexDatabaseError(f"index write failed: {type(exc).__name__}: {exc}")
    return exc
