"""A throwaway PostgreSQL cluster for the index tests and scripts/bench_replay.py.

`initdb` into a temporary directory, `pg_ctl start` on a free port of 127.0.0.1 with its unix
socket in that directory too, `pg_ctl stop` and removal at the end. PostgreSQL refuses to run as
root, so as root every server command runs as the `postgres` system user (`runuser -u postgres`),
which owns the directory. The binaries come from $CERTLEDGER_PG_BIN, the Debian location of
PostgreSQL 15, or PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from oracle.broker import free_port

_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")
SUPERUSER = "certledger"
#: A throwaway cluster need not survive a power cut.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def pg_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, None if PostgreSQL is not installed."""
    configured = os.environ.get("CERTLEDGER_PG_BIN")
    for candidate in (configured, *_CANDIDATES):
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass(frozen=True)
class PgCluster:
    directory: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres") as conn:
            conn.autocommit = True
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_server_user(command: Sequence[str]) -> list[str]:
    if os.geteuid() != 0:
        return list(command)
    return ["runuser", "-u", "postgres", "--", *command]


def _run(command: Sequence[str]) -> None:
    result = subprocess.run(_as_server_user(command), capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}): {result.stderr or result.stdout}"
        )


@contextmanager
def pg_cluster(settings: dict[str, str] | None = None) -> Iterator[PgCluster]:
    """A running throwaway cluster; stopped and deleted afterwards."""
    binaries = pg_bin()
    if binaries is None:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql-15)")
    root = Path(tempfile.mkdtemp(prefix="certledger-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    options = " ".join(
        f"-c {k}={v}"
        for k, v in {
            "listen_addresses": "127.0.0.1",
            **(FAST_SETTINGS if settings is None else settings),
        }.items()
    )
    try:
        _run(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        _run(
            [
                str(binaries / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                f"-p {port} -k {root} {options}",
                "-l",
                str(root / "server.log"),
                "-w",
                "start",
            ]
        )
        try:
            yield PgCluster(root, port)
        finally:
            _run([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
