"""Replay speed: a full audit replay into SQLite and into PostgreSQL against the bare download.

    python scripts/bench_replay.py [--events 20000] [--out bench/replay.json] [--fresh]

Starts anvil, generates at least `--events` ledger and oracle events with the seeded random
workload (the chain is kept in bench/tmp/ and reused on the next run unless --fresh), then times,
each as the best of `--runs`:

- the bare download: the logs a replay downloads (same address filter, same block range) in
  ranges of 2,000 blocks, raw JSON-RPC parsed into dicts and nothing else; and the same through
  the index's own fetch path (its HTTP connection and typed parse, no decoding). The faster of the
  two is the ceiling. Also web3's own `w3.eth.get_logs` over the range, for reference;
- a full replay into a new SQLite file;
- a full replay into a new database of a throwaway PostgreSQL cluster (tests/pg.py).

Reports events per second and the ratio of each replay to the bare download (target >= 0.5), and
the time of a full `audit verify` of the replayed SQLite index (for reference; it also reads every
record from the contracts). Writes everything to bench/replay.json. Needs anvil (make node) and
PostgreSQL server binaries.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the anvil and PostgreSQL helpers the tests use

from index_support import anvil_node, connect_node  # noqa: E402
from pg import pg_cluster  # noqa: E402

from chain_client import audit  # noqa: E402
from chain_client.chain import Chain  # noqa: E402
from chain_client.deploy import Deployment, artifact_hash  # noqa: E402
from chain_client.index.db import IndexDatabase  # noqa: E402
from chain_client.index.source import NodeSource  # noqa: E402
from chain_client.index.sync import SyncStatus  # noqa: E402
from chain_client.index.workload import Workload  # noqa: E402

TARGET_RATIO = 0.5
BARE_RANGE = 2_000
SEED = 2026
#: Durable like the SQLite index (WAL, no flush wait at commit), not the tests' fsync=off.
PG_SETTINGS = {"synchronous_commit": "off"}


def generate(chain: Chain, events: int, console: Console) -> Deployment:
    work = Workload.deploy(chain, seed=SEED)
    work.max_split_parts = 8
    started = time.monotonic()
    last = 0.0
    while work.events < events:
        work.step()
        if time.monotonic() - last > 10:
            last = time.monotonic()
            console.print(f"  {work.events} events after {last - started:.0f} s")
    console.print(f"generated {work.events} events in {time.monotonic() - started:.0f} s")
    return work.system.deployment


def _rpc(chain: Chain, method: str, params: list[Any]) -> Any:
    answer = chain.w3.provider.make_request(method, params)  # type: ignore[arg-type]
    if "error" in answer:
        raise SystemExit(f"{method}: {answer['error']}")
    return answer["result"]


def bare_download(chain: Chain, deployment: Deployment, head: int) -> int:
    source = NodeSource(chain)
    count = 0
    for first in range(deployment.deployment_block, head + 1, BARE_RANGE):
        params = {
            "fromBlock": hex(first),
            "toBlock": hex(min(head, first + BARE_RANGE - 1)),
            "address": [deployment.ledger, deployment.oracle],
        }
        count += len(source._request("eth_getLogs", [params]))
    return count


def source_download(chain: Chain, deployment: Deployment, head: int) -> int:
    source = NodeSource(chain)
    addresses = [deployment.ledger, deployment.oracle]
    count = 0
    for first in range(deployment.deployment_block, head + 1, BARE_RANGE):
        count += len(source.logs(first, min(head, first + BARE_RANGE - 1), addresses))
    return count


def web3_download(chain: Chain, deployment: Deployment, head: int) -> int:
    count = 0
    for first in range(deployment.deployment_block, head + 1, BARE_RANGE):
        logs = chain.w3.eth.get_logs(
            {
                "fromBlock": first,
                "toBlock": min(head, first + BARE_RANGE - 1),
                "address": [deployment.ledger, deployment.oracle],
            }
        )
        count += len(logs)
    return count


def timed(runs: int, job: Callable[[], Any]) -> tuple[list[float], Any]:
    seconds, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = job()
        seconds.append(time.perf_counter() - started)
    return seconds, result


def _once() -> Callable[[logging.LogRecord], bool]:
    """A log filter that lets each message through the first time only."""
    seen: set[str] = set()

    def first(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in seen:
            return False
        seen.add(message)
        return True

    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "replay.json")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "tmp", help="where the chain is kept")
    parser.add_argument("--fresh", action="store_true", help="generate a new chain even if one is kept")
    args = parser.parse_args()
    console = Console()
    # Anvil keeps the state of recent blocks only (and none before a --load-state), so every
    # replay would warn that it cannot check for code before the deployment block: once is enough.
    logging.getLogger("chain_client.index.sync").addFilter(_once())
    args.work.mkdir(parents=True, exist_ok=True)
    state, manifest = args.work / "replay-chain.json", args.work / "replay-deployment.json"
    reuse = state.exists() and manifest.exists() and not args.fresh and _same_contracts(manifest, console)

    with anvil_node(*(("--load-state", str(state)) if reuse else ())) as url:
        chain = connect_node(url)
        if reuse:
            deployment = Deployment.load(manifest)
            console.print(f"reusing the chain in {state}")
        else:
            deployment = generate(chain, args.events, console)
            # Asked for, not --dump-state: anvil dumps on exit only if given the time, and a large
            # chain stopped mid-dump left an older, shorter state behind. The answer is the state
            # file's JSON, gzipped and hex-encoded.
            dump = str(_rpc(chain, "anvil_dumpState", []))
            state.write_bytes(gzip.decompress(bytes.fromhex(dump.removeprefix("0x"))))
            deployment.save(manifest)
        head = chain.w3.eth.block_number
        results = measure(chain, deployment, head, args.runs, console)
    if not reuse:
        console.print(f"chain kept in {state} for the next run (--fresh to regenerate)")
    if results["events"] < args.events:
        raise SystemExit(f"the kept chain has only {results['events']} events; run with --fresh")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    show(results, console)
    console.print(f"written to {args.out}")


def _same_contracts(manifest: Path, console: Console) -> bool:
    """Whether the kept chain's contracts are this checkout's (a replay refuses others, D53)."""
    recorded = Deployment.load(manifest).artifact_hashes
    if all(recorded.get(name) == artifact_hash(name) for name in ("CertificateLedger", "ReceiptOracle")):
        return True
    console.print("the kept chain was deployed from other contract sources: generating a new one")
    return False


def measure(chain: Chain, deployment: Deployment, head: int, runs: int, console: Console) -> dict[str, Any]:
    console.print(f"timing over blocks {deployment.deployment_block}..{head}, best of {runs}")
    bare, events = timed(runs, lambda: bare_download(chain, deployment, head))
    fetched, same = timed(runs, lambda: source_download(chain, deployment, head))
    if same != events:
        raise SystemExit(f"the index's fetch path found {same} logs, the bare download {events}")
    web3, _ = timed(runs, lambda: web3_download(chain, deployment, head))

    scratch = Path(tempfile.mkdtemp(prefix="certledger-bench-"))
    try:
        counter = iter(range(1_000))

        stages: dict[str, dict[str, float]] = {}

        replayed: list[IndexDatabase] = []

        def sqlite_replay() -> SyncStatus:
            db = IndexDatabase(scratch / f"replay-{next(counter)}.sqlite")
            replayed.append(db)
            status, indexer = audit.replay_with(chain, deployment, db)
            stages["sqlite"] = {k: round(v, 3) for k, v in indexer.timings.items()}
            return status

        sqlite, on_sqlite = timed(runs, sqlite_replay)

        def verify() -> bool:
            return audit.verify(chain, deployment, replayed[-1]).ok

        checks, verified = timed(min(runs, 3), verify)
        for db in replayed:
            db.close()
        if not verified:
            raise SystemExit("verify found differences in the replayed index")
        with pg_cluster(PG_SETTINGS) as cluster:

            def pg_replay() -> SyncStatus:
                db = IndexDatabase(cluster.create_database(f"replay_{next(counter)}"))
                try:
                    status, indexer = audit.replay_with(chain, deployment, db)
                    stages["postgres"] = {k: round(v, 3) for k, v in indexer.timings.items()}
                    return status
                finally:
                    db.close()

            postgres, on_postgres = timed(runs, pg_replay)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if on_sqlite.digest != on_postgres.digest or on_sqlite.events != events:
        raise SystemExit("SQLite and PostgreSQL replays disagree")

    def rate(seconds: list[float]) -> dict[str, Any]:
        best = min(seconds)
        return {
            "seconds_best": round(best, 4),
            "seconds_median": round(statistics.median(seconds), 4),
            "events_per_second": round(events / best),
        }

    ceiling = events / min(*bare, *fetched)
    return {
        "events": events,
        "blocks": head - deployment.deployment_block + 1,
        "runs": runs,
        "digest": on_sqlite.digest,
        "bare_getlogs_raw": rate(bare),
        "bare_getlogs_index_fetch": rate(fetched),
        "bare_getlogs_web3": rate(web3),
        "replay_sqlite": {
            **rate(sqlite),
            "ratio_to_bare": round(events / min(sqlite) / ceiling, 3),
            "ratio_to_web3_get_logs": round(min(web3) / min(sqlite), 3),
            "stage_seconds_last_run": stages["sqlite"],
        },
        "replay_postgres": {
            **rate(postgres),
            "ratio_to_bare": round(events / min(postgres) / ceiling, 3),
            "ratio_to_web3_get_logs": round(min(web3) / min(postgres), 3),
            "stage_seconds_last_run": stages["postgres"],
            "settings": PG_SETTINGS,
        },
        "verify_sqlite": rate(checks),
        "target_ratio": TARGET_RATIO,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
    }


def show(results: dict[str, Any], console: Console) -> None:
    table = Table(title=f"Replay of {results['events']} events over {results['blocks']} blocks")
    for column in ("", "best s", "events/s", "ratio to bare"):
        table.add_column(column, justify="left" if not column else "right")
    for key, label in (
        ("bare_getlogs_raw", "bare eth_getLogs (raw JSON-RPC)"),
        ("bare_getlogs_index_fetch", "bare eth_getLogs (index's fetch path)"),
        ("bare_getlogs_web3", "w3.eth.get_logs (formatted)"),
        ("replay_sqlite", "replay into SQLite"),
        ("replay_postgres", "replay into PostgreSQL"),
        ("verify_sqlite", "verify of the SQLite index"),
    ):
        r = results[key]
        table.add_row(
            label, f"{r['seconds_best']:.3f}", f"{r['events_per_second']:,}", str(r.get("ratio_to_bare", ""))
        )
    console.print(table)
    console.print(
        f"digest {results['digest']} (SQLite and PostgreSQL agree); target ratio {results['target_ratio']}"
    )


if __name__ == "__main__":
    main()
