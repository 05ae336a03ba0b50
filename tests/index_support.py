"""Helpers shared by the node-backed tests and scripts/bench_replay.py: a throwaway anvil node,
and the comparison of rebuilt books with the contracts' own views."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chain_client.chain import Chain, connect
from chain_client.settings import Settings
from oracle.broker import free_port

ROOT = Path(__file__).resolve().parent.parent


def anvil_binary() -> str | None:
    """The npm-pinned anvil (or $ANVIL), None if neither exists."""
    candidates = [
        os.environ.get("ANVIL"),
        str(ROOT / "node_modules" / ".bin" / "anvil"),
        shutil.which("anvil"),
    ]
    return next((c for c in candidates if c and Path(c).exists()), None)


@contextmanager
def anvil_node(*extra: str) -> Iterator[str]:
    """Starts anvil on a free local port; yields its URL; stops it afterwards."""
    binary = anvil_binary()
    if binary is None:
        raise RuntimeError("anvil not found: run `make node`")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--silent", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, so anvil goes too if started via the npm launcher
    )
    try:
        _wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM first, then SIGKILL to the whole process group, should anything linger."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"anvil exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("anvil did not start listening in 30 s")


def connect_node(url: str) -> Chain:
    return connect(Settings(rpc_url=url, poll_interval=0.01))


# ---------------------------------------------------------------------- scenarios shared by tests


def matured_workload(chain: Chain, seed: int) -> Any:
    """A deployed workload with several confirmed orders, some split, all matured (ready to pay)."""
    from chain_client.index.workload import DAY, Workload

    work = Workload.deploy(chain, seed=seed)
    for _ in range(5):
        work.open_order()
    for _ in range(5):
        work.confirm()
    for _ in range(4):
        work.split_to()
    chain.advance_time(13 * DAY)
    return work


def settle(work: Any, ids: list[int]) -> None:
    """Pays these matured certificates (a payment for every holder)."""
    assert ids, "nothing to settle"
    work.send(work.system.ledger.settle(work.relayer, ids))


def forget_nonces(chain: Chain) -> None:
    """After a reorg the node's nonces went back; the client's counters must too."""
    from chain_client.transactions import NonceManager

    chain.nonces = NonceManager()


def rpc(chain: Chain, method: str, *params: Any) -> Any:
    response = chain.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    assert "error" not in response, response
    return response["result"]
