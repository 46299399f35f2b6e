"""The embedded stack on one machine: broker, database, the five services and control-svc as
processes.

``dualphase run`` (``dualphase.cli``) enters ``embedded_stack`` (the broker, the schema, every
service of ``messages.SERVICES`` as a process, each ready), submits a run, follows it with
``follow_run`` (a progress bar per stage of ``runs.run_progress``), and leaves the block, which
stops everything in reverse order. Each service logs to ``<data_dir>/logs/<name>.log``.

While the run goes on, a ``Supervisor`` restarts a service that dies, as compose's restart
policy would: the pipeline is restart-safe, so a crash costs time, not the run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from sqlalchemy.orm import Session, sessionmaker

from dualphase.broker import EmbeddedBroker
from shared.core.messages import SERVICES
from shared.core.migrations import upgrade
from shared.core.runs import is_complete, run_progress
from shared.core.settings import CONFIG_ENV, Settings

READY_TIMEOUT_S = 180.0


def service_env(settings: Settings, bootstrap: str) -> dict[str, str]:
    """The environment of a service process: the parent's, pointed at this stack."""
    env = dict(os.environ)
    env["DUALPHASE_COMMON__KAFKA_BOOTSTRAP"] = bootstrap
    env["DUALPHASE_COMMON__DATA_DIR"] = str(settings.common.data_dir.resolve())
    env["DUALPHASE_COMMON__DATABASE_URL"] = settings.common.resolved_database_url()
    env.setdefault("HF_HUB_OFFLINE", "1")
    if os.environ.get(CONFIG_ENV):
        env[CONFIG_ENV] = os.environ[CONFIG_ENV]
    return env


class StackError(RuntimeError):
    """The embedded stack cannot start or go on; the message is the one line to print."""


def busy_ports(settings: Settings, names: list[str]) -> list[str]:
    """The services' ports that something already listens on, as "generator.port 8101"."""
    busy = []
    for name in names:
        port = getattr(settings, name).port
        with socket.socket() as sock:
            if sock.connect_ex((settings.common.http_host, port)) == 0:
                busy.append(f"{name}.port {port}")
    return busy


def start_service(name: str, env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it from here
    return subprocess.Popen(
        [sys.executable, "-m", f"{name}_svc"], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def wait_ready(settings: Settings, names: list[str], procs: dict[str, subprocess.Popen]) -> None:
    """Block until every service answers /readyz, or fail naming the one that did not."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = list(names)
    while pending:
        name = pending[0]
        if procs[name].poll() is not None:
            log = settings.common.data_dir / "logs" / f"{name}.log"
            raise StackError(f"{name}-svc exited with {procs[name].returncode}; see {log}")
        port = getattr(settings, name).port
        try:
            if httpx.get(f"http://{settings.common.http_host}:{port}/readyz", timeout=2).is_success:
                pending.pop(0)
                continue
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise StackError(f"{name}-svc not ready after {READY_TIMEOUT_S:.0f} s; see its log")
        time.sleep(0.5)


def stop_service(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM (the service finishes the message in hand), then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ServiceDied(StackError):
    """A service that kept dying: one more restart would not help, the run stops."""


@dataclass
class Supervisor:
    """Restarts each service that died, after a back-off that doubles with every restart of it
    in the last ``window_s`` (``backoff_s``, 2x, 4x ..., at most a minute). A service that dies
    again after ``max_restarts`` restarts in that window raises ``ServiceDied`` naming it and its
    log."""

    env: dict[str, str]
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]]
    max_restarts: int = 5
    window_s: float = 600.0
    backoff_s: float = 1.0
    restarts: dict[str, list[float]] = field(default_factory=dict)  # monotonic times
    due: dict[str, float] = field(default_factory=dict)  # a dead service's restart time

    def check(self) -> list[str]:
        """Restart what is due; returns a line for each death noticed and each restart."""
        notices = []
        now = time.monotonic()
        for name, proc in self.procs.items():
            if proc.poll() is None:
                continue
            recent = [t for t in self.restarts.get(name, []) if now - t < self.window_s]
            log = self.log_dir / f"{name}.log"
            if len(recent) >= self.max_restarts:
                raise ServiceDied(
                    f"{name}-svc exited with {proc.returncode} after {len(recent)} restarts in "
                    f"{self.window_s / 60:.0f} min; see {log}"
                )
            if name not in self.due:
                delay = min(self.backoff_s * 2 ** len(recent), 60.0)
                self.due[name] = now + delay
                notices.append(f"{name}-svc exited with {proc.returncode}; restart in {delay:g} s")
            elif now >= self.due[name]:
                del self.due[name]
                self.restarts[name] = [*recent, now]
                self.procs[name] = start_service(name, self.env, self.log_dir)
                notices.append(f"{name}-svc restarted ({len(recent) + 1} in the window); see {log}")
        return notices


@contextmanager
def embedded_stack(settings: Settings, names: list[str] = SERVICES) -> Iterator[Supervisor]:
    """Broker and services up for the duration of the block; stopped in reverse order after.
    Ports already held (another `dualphase run`) fail first, before anything is written."""
    if busy := busy_ports(settings, names):
        raise StackError(
            f"ports in use: {', '.join(busy)}; another `dualphase run` may be running (stop it, "
            "or set other ports in the config)"
        )
    settings.common.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.common.resolved_database_url())
    with EmbeddedBroker() as broker:
        settings.common.kafka_bootstrap = broker.bootstrap
        env = service_env(settings, broker.bootstrap)
        log_dir = settings.common.data_dir / "logs"
        supervisor = Supervisor(env, log_dir, {})
        try:
            for name in names:
                supervisor.procs[name] = start_service(name, env, log_dir)
            wait_ready(settings, names, supervisor.procs)  # a service failing at start: no restart
            yield supervisor
        finally:
            for proc in reversed(supervisor.procs.values()):
                stop_service(proc)


def follow_run(
    sessions: sessionmaker[Session], run_id: str, supervisor: Supervisor, timeout_s: float
) -> bool:
    """Show a progress bar per stage until the run is complete, restarting services that die;
    False on timeout."""
    deadline = time.monotonic() + timeout_s
    with Progress(
        TextColumn("{task.description:<42}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as bars:
        tasks: dict[str, TaskID] = {}
        while time.monotonic() < deadline:
            counts = run_progress(sessions, run_id)
            for stage, (done, total) in counts.items():
                if stage not in tasks:
                    tasks[stage] = bars.add_task(stage, total=total)
                bars.update(tasks[stage], completed=done, total=total)
            if is_complete(counts):
                return True
            for notice in supervisor.check():
                bars.console.print(notice)
            time.sleep(2)
    return False
