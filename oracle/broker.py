"""A throwaway mosquitto broker on a free loopback port, for the demo, tests and benchmarks.

It runs with persistence in its own directory, so it can be restarted (same port, same data) and
keep the queued QoS 1 readings of persistent sessions, as a production broker would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def mosquitto_binary() -> str | None:
    """$MOSQUITTO, then mosquitto on PATH, then Debian's /usr/sbin/mosquitto; None if none exists."""
    for candidate in (os.environ.get("MOSQUITTO"), shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _user_name() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


class Mosquitto:
    """`with Mosquitto(dir) as broker:` starts it; `broker.url` is mqtt://127.0.0.1:PORT."""

    def __init__(self, directory: Path, port: int | None = None, binary: str | None = None) -> None:
        found = binary or mosquitto_binary()
        if found is None:
            raise FileNotFoundError("mosquitto not found: install it (make mosquitto) or set $MOSQUITTO")
        self.binary = found
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        self.config.write_text(
            "\n".join(
                [
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous true",
                    "persistence true",
                    f"persistence_location {directory}/",
                    # Saved to disk every second as well as at shutdown: a killed broker loses at
                    # most the last second of queued readings.
                    "autosave_interval 1",
                    "max_queued_messages 100000",
                    "max_inflight_messages 100",
                    f"log_dest file {self.log}",
                    # Started as root, mosquitto would switch to the `mosquitto` user and then be
                    # unable to write its persistence file in our directory: keep the current user.
                    *([f"user {_user_name()}"] if os.geteuid() == 0 else []),
                    "",
                ]
            ),
            encoding="utf-8",
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}; see {self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {START_TIMEOUT}s")

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (the broker saves its persistence file) or SIGKILL; waits for it to go."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
