"""`certledger oracle run`: the gateway's intakes, the relayer and the keeper in one process.

Threads: paho's network thread (MQTT intake: only writes the inbox), uvicorn's (HTTP intake:
checks a reading at once under the chain lock), and the pipeline thread, which repeatedly checks
the inbox, advances every order's state machine and, now and then, runs the keeper. All chain
calls go through one lock (see oracle.chainview).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from eth_account.signers.local import LocalAccount
from pydantic import SecretStr

from chain_client.system import System
from chain_client.transactions import call_checked
from oracle.chainview import SystemView
from oracle.gateway import Gateway
from oracle.keeper import Keeper
from oracle.mqtt import MqttIntake
from oracle.relayer import CrashHook, Relayer, observation_expectations
from oracle.retry import is_transient
from oracle.settings import OracleSettings
from oracle.store import DeploymentMark, Store
from oracle.submitter import ChainSubmitter

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)

#: Seconds uvicorn may take from a bound socket to serving on it.
HTTP_START_TIMEOUT = 10.0


class HttpUnavailable(Exception):
    """The HTTP intake could not listen on its address (a port in use, an address not this host's)."""


@dataclass
class OracleService:
    settings: OracleSettings
    system: System
    relayer_account: LocalAccount
    store: Store
    view: SystemView
    gateway: Gateway
    relayer: Relayer
    keeper: Keeper
    mqtt: MqttIntake | None = None
    _http_server: uvicorn.Server | None = field(default=None, repr=False)
    _http_thread: threading.Thread | None = field(default=None, repr=False)
    _http_socket: socket.socket | None = field(default=None, repr=False)
    _last_keeper: float = field(default=0.0, repr=False)
    #: Set when a reading arrives, so the pipeline checks it at once instead of at its next poll.
    wake: threading.Event = field(default_factory=threading.Event, repr=False)

    @classmethod
    def build(
        cls,
        settings: OracleSettings,
        system: System,
        relayer_account: LocalAccount,
        *,
        crash_hook: CrashHook | None = None,
        keeper: bool = True,
    ) -> OracleService:
        store = Store(settings.db)
        try:
            store.bind(deployment_mark(system))
        except BaseException:
            store.close()
            raise
        lock = threading.RLock()
        view = SystemView(system, lock, clock_margin=settings.clock_margin)
        gateway = Gateway(
            store,
            view,
            clock_skew=settings.clock_skew,
            max_attempts=settings.retry_attempts,
            retry_base=settings.retry_base,
            retry_max=settings.retry_max,
            expectations=lambda record: observation_expectations(record, settings),
        )
        submitter = ChainSubmitter(system, relayer_account, lock)
        relayer = Relayer(
            store,
            view,
            submitter,
            settings,
            receipt_timeout=system.chain.settings.receipt_timeout,
            crash_hook=crash_hook,
        )
        keeper_ = Keeper(
            system,
            relayer_account,
            store,
            batch=settings.keeper_batch,
            lock=lock,
            clock=view.passed,
            logs_range=settings.keeper_logs_range,
            logs_budget=settings.keeper_logs_budget,
            retry_attempts=settings.retry_attempts,
        )
        service = cls(settings, system, relayer_account, store, view, gateway, relayer, keeper_)
        if not keeper:
            service._last_keeper = float("inf")
        return service

    # ------------------------------------------------------------------ intakes

    def start_mqtt(self) -> None:
        def receive(payload: bytes, source: str) -> int:
            item_id = self.gateway.receive(payload, source)
            self.wake.set()
            return item_id

        self.mqtt = MqttIntake(self.settings, receive)
        self.mqtt.start()

    def start_http(self) -> None:
        """Serves the HTTP intake on its own thread; raises HttpUnavailable unless it is serving.

        The socket is bound here, not by uvicorn: uvicorn binds on its thread and, failing, only
        logs it and ends that thread, so `oracle run` went on without its HTTP intake."""
        import uvicorn

        from oracle.http import create_app

        config = uvicorn.Config(
            create_app(self.gateway, self.store, _secret(self.settings.operator_token)),
            host=self.settings.http_host,
            port=self.settings.http_port,
            log_level="warning",
            timeout_keep_alive=5,
        )
        loopback = self.settings.http_host in ("127.0.0.1", "::1", "localhost")
        if self.settings.operator_token is None and not loopback:
            log.warning(
                "HTTP intake on %s without an operator token: anyone who reaches it can read and change "
                "every order's expectations and read its alerts (set CERTLEDGER_ORACLE_OPERATOR_TOKEN)",
                self.settings.http_host,
            )
        sock = _listen(self.settings.http_host, self.settings.http_port, config.backlog)
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="oracle-http", daemon=True
        )
        self._http_server, self._http_thread, self._http_socket = server, thread, sock
        thread.start()
        _await_serving(server, thread, f"{self.settings.http_host}:{self.settings.http_port}")

    # ------------------------------------------------------------------ the pipeline

    def step(self) -> None:
        """Checks the inbox, advances the orders, and runs the keeper when it is due."""
        # Each stage on its own: one's trouble (logged) must not hold back the others.
        for stage in (self._retry_unstored, self.gateway.process_pending, self.relayer.step):
            try:
                stage()
            except Exception:
                log.exception("pipeline stage %s failed; continuing", getattr(stage, "__name__", stage))
        if time.monotonic() - self._last_keeper >= self.settings.keeper_interval:
            self._last_keeper = time.monotonic()
            try:
                self.keeper.run_once()
            except Exception as exc:
                # The keeper is a convenience (anyone may settle); its trouble must not stop receipts.
                # The node away is said in a line (each run while it is away would repeat it); a
                # failure of another kind keeps its traceback.
                interval = self.settings.keeper_interval
                if is_transient(exc):
                    log.warning(
                        "keeper run failed (node or store unavailable; trying again in %ss): %s",
                        interval,
                        exc,
                    )
                else:
                    log.exception("keeper run failed; trying again in %ss", interval)

    def _retry_unstored(self) -> None:
        if self.mqtt is not None:
            self.mqtt.retry_unstored()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            # Cleared before the step: a reading arriving during it wakes the next one at once.
            self.wake.clear()
            try:
                self.step()
            except Exception:
                log.exception("pipeline step failed; continuing")
            if stop.is_set():
                break
            self.wake.wait(self.settings.poll_interval)

    def stop_and_wake(self, stop: threading.Event) -> None:
        stop.set()
        self.wake.set()

    def close(self) -> None:
        if self.mqtt is not None:
            self.mqtt.stop()
        if self._http_server is not None:
            self._http_server.should_exit = True
        if self._http_thread is not None:
            self._http_thread.join(timeout=10)
        if self._http_socket is not None:  # uvicorn closes it when it ran; not if it never did
            self._http_socket.close()
        self.store.close()


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    """A socket listening on host:port, or HttpUnavailable naming them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # A restarted oracle need not wait out its last connections' TIME_WAIT; a port another
        # process listens on is still refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Listening at once: Linux lets two SO_REUSEADDR sockets bind a port nobody listens on.
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise HttpUnavailable(
            f"the HTTP intake cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    return sock


def _await_serving(server: uvicorn.Server, thread: threading.Thread, where: str) -> None:
    """Waits until uvicorn serves on the bound socket; raises HttpUnavailable if it ended first."""
    deadline = time.monotonic() + HTTP_START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise HttpUnavailable(f"the HTTP intake on {where} did not start (see the log above)")
        time.sleep(0.01)


def deployment_mark(system: System) -> DeploymentMark:
    """The deployment `system` runs on, as the oracle's store records it (`Store.bind`)."""
    d = system.deployment
    found = call_checked(lambda: system.chain.block_hash(d.deployment_block))
    return DeploymentMark(d.chain_id, d.ledger, d.oracle, d.deployment_block, found or "")
