"""The embedded stack on one machine: broker, database, the five services as processes.

``dualphase run`` (``dualphase.cli``) enters ``embedded_stack`` (the broker, the schema, every
service of ``messages.SERVICES`` as a process, each ready), submits a run, follows it with
``follow_run`` (a progress bar per stage of ``runs.run_progress``), and leaves the block, which
stops everything in reverse order. Each service logs to ``<data_dir>/logs/<name>.log``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
            raise RuntimeError(f"{name}-svc exited with {procs[name].returncode}; see its log")
        port = getattr(settings, name).port
        try:
            if httpx.get(f"http://{settings.common.http_host}:{port}/readyz", timeout=2).is_success:
                pending.pop(0)
                continue
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}-svc not ready after {READY_TIMEOUT_S:.0f} s")
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


@contextmanager
def embedded_stack(
    settings: Settings, names: list[str] = SERVICES
) -> Iterator[tuple[EmbeddedBroker, dict[str, subprocess.Popen[bytes]]]]:
    """Broker and services up for the duration of the block; stopped in reverse order after."""
    settings.common.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.common.resolved_database_url())
    with EmbeddedBroker() as broker:
        settings.common.kafka_bootstrap = broker.bootstrap
        env = service_env(settings, broker.bootstrap)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name in names:
                procs[name] = start_service(name, env, settings.common.data_dir / "logs")
            wait_ready(settings, names, procs)
            yield broker, procs
        finally:
            for proc in reversed(procs.values()):
                stop_service(proc)


def follow_run(
    sessions: sessionmaker[Session],
    run_id: str,
    procs: dict[str, subprocess.Popen],
    timeout_s: float,
) -> bool:
    """Show a progress bar per stage until the run is complete; False on timeout."""
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
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name}-svc exited with {proc.returncode}; see its log")
            time.sleep(2)
    return False
