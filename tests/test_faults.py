"""Faults during a real run: every service SIGKILLed and restarted, the broker restarted (all
messages lost), the database unreachable for a while. Each disturbed run must end complete and
consistent: every problem in one final state, nothing stored twice, the counts in the database
matching what was produced, the shards holding exactly the samples they should.

One stack for the module (a broker of its own, so it can be restarted; PostgreSQL behind a TCP
proxy, so it can be cut; the five services with the real embedded model and tiny settings), one
run per test, submitted through the admin endpoint. The runs are small: 3 phase-1 and 3 phase-2
problems, 16 tokens per turn, one training step, gsm8k with 2 problems for evaluation.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from benchmarks.chaos import POSTGRES, TcpProxy, check_run, stack_env
from dualphase.broker import EmbeddedBroker, free_port
from dualphase.embedded import Supervisor, start_service, stop_service, wait_ready
from shared.core import migrations
from shared.core.bus import topic_name
from shared.core.db import (
    AttemptCount,
    GenerationRow,
    Run,
    VerdictRow,
    make_engine,
    make_sessionmaker,
)
from shared.core.messages import PROBLEMS, SERVICES
from shared.core.runs import run_progress
from shared.core.settings import CommonSettings, DataSettings, Settings
from shared.datasets.problems import demo_problems

log = logging.getLogger(__name__)

TOKEN = "test-admin-token"
RUN_TIMEOUT_S = 600.0  # generous: the CPU is shared with other test runs
SEED = int(os.environ.get("DUALPHASE_FAULT_SEED", "20240611"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@dataclass
class Stack:
    """The services of the module, and what a test needs to disturb and inspect them."""

    settings: Settings
    env: dict[str, str]
    broker: EmbeddedBroker
    proxy: TcpProxy
    sessions: sessionmaker[Session]
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def url(self, name: str, path: str) -> str:
        return f"http://127.0.0.1:{getattr(self.settings, name).port}{path}"

    def start(self, name: str) -> None:
        self.procs[name] = start_service(name, self.env, self.log_dir)

    def submit(self, seed: int) -> str:
        """A run of 3 + 3 synthetic problems, through the admin endpoint."""
        specs = demo_problems(6, seed)
        problems = [
            {"id": f"{s.id}-{seed}", "question": s.question, "answer": s.gold} for s in specs
        ]
        reply = httpx.post(
            self.url("control", "/runs"),
            json={"problems": problems, "phase1": 3, "seed": seed},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert reply.status_code == 201, reply.text
        return reply.json()["run_id"]

    def wait_for(
        self,
        what: str,
        check: object,
        timeout_s: float = RUN_TIMEOUT_S,
        supervisor: Supervisor | None = None,
    ) -> float:
        """Poll ``check()`` until true; returns the seconds it took. A service that exits fails
        the test, unless a ``supervisor`` restarts it."""
        start = time.monotonic()
        while not check():  # type: ignore[operator]
            if supervisor is not None:
                for notice in supervisor.check():
                    print(notice)
            for name, proc in self.procs.items():
                if supervisor is None or name not in supervisor.due:
                    assert proc.poll() is None, f"{name}-svc exited: {self.log_tail(name)}"
            if time.monotonic() - start > timeout_s:
                logs = "\n".join(self.log_tail(n) for n in SERVICES)
                pytest.fail(f"{what}: not after {timeout_s:.0f} s\n{logs}")
            time.sleep(0.5)
        return time.monotonic() - start

    def wait_complete(
        self, run_id: str, timeout_s: float = RUN_TIMEOUT_S, supervisor: Supervisor | None = None
    ) -> float:
        """Until the reconciler marks the run complete; returns the seconds waited."""

        def complete() -> bool:
            with self.sessions() as s:
                return s.get_one(Run, run_id).status == "complete"

        return self.wait_for(f"run {run_id} complete", complete, timeout_s, supervisor)

    def count(self, model: type, run_id: str) -> int:
        with self.sessions() as s:
            return s.scalar(select(func.count()).where(model.run_id == run_id)) or 0

    def records(self, base_topic: str) -> list[dict]:
        """The records a group-less consumer reads from a topic's start. Not the end offsets:
        Tansu reports a partition's end as the base offset of its last record batch + 1, so a
        batch of three jobs counts as one."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.settings.common.kafka_bootstrap, consumer_timeout_ms=1000
        )
        try:
            topic = topic_name(self.settings.common, base_topic)
            partitions = consumer.partitions_for_topic(topic) or set()
            consumer.assign([TopicPartition(topic, p) for p in partitions])
            consumer.seek_to_beginning()
            return [json.loads(record.value) for record in consumer]
        finally:
            consumer.close()

    def republished(self) -> float:
        """The control plane's reconciler counter, all kinds."""
        text = httpx.get(self.url("control", "/metrics"), timeout=10).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("dualphase_reconciler_republished_total{")
        )

    def log_tail(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {name}-svc log (tail) ---\n{text[-3000:]}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, data_settings: DataSettings) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("faults")
    name = f"dualphase_faults_{uuid.uuid4().hex[:10]}"
    admin_url = POSTGRES.replace("postgresql+psycopg", "postgresql") + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    direct_url = f"{POSTGRES}/{name}"
    migrations.upgrade(direct_url)
    pg_host, pg_port = POSTGRES.rsplit("@", 1)[1].split(":")
    proxy = TcpProxy((pg_host, int(pg_port)))
    proxied_url = f"{POSTGRES.rsplit('@', 1)[0]}@127.0.0.1:{proxy.port}/{name}"
    broker = EmbeddedBroker().start()
    common = CommonSettings(
        data_dir=data_dir,
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=f"f{uuid.uuid4().hex[:8]}-",
        partitions=2,
        session_timeout_ms=6000,
        retry_backoff_s=0.2,
    )
    settings = Settings(common=common, control={"reconcile_interval_s": 4.0, "admin_token": TOKEN})
    settings.inference.batch_size = 8
    settings.generator.max_new_tokens = 16
    settings.sampler.schedule = [1, 2]
    settings.trainer = settings.trainer.model_validate(
        {"preset": "cpu-tiny", "sft": {"max_steps": 1}}
    )
    settings.eval = settings.eval.model_validate(
        {
            "benchmarks": ["gsm8k"],
            "limit": 2,
            "samples": 1,
            "max_new_tokens": 32,
            "baseline_modes": [],
        }
    )
    settings.data = data_settings  # GSM8K from the local copies
    for service in SERVICES:
        getattr(settings, service).port = free_port()
    engine = make_engine(direct_url)  # the test itself reads the database directly
    stack = Stack(
        settings,
        stack_env(settings, proxied_url),
        broker,
        proxy,
        make_sessionmaker(engine),
        data_dir / "logs",
    )
    try:
        for service in SERVICES:
            stack.start(service)
        wait_ready(settings, SERVICES, stack.procs)
        yield stack
    finally:
        for proc in reversed(stack.procs.values()):
            stop_service(proc)
        stack.broker.stop()
        engine.dispose()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_control_started_while_the_database_is_down_waits_for_it(
    common: CommonSettings, pg_url: str, tmp_path: Path
) -> None:
    host, rest = pg_url.rsplit("@", 1)[1].split(":", 1)
    port, name = rest.split("/", 1)
    proxy = TcpProxy((host, int(port)))
    proxy.cut()  # down before the service starts
    settings = Settings(common=common)
    settings.control.port = free_port()
    env = stack_env(settings, f"{pg_url.rsplit('@', 1)[0]}@127.0.0.1:{proxy.port}/{name}")
    control = start_service("control", env, tmp_path / "logs")
    url = f"http://127.0.0.1:{settings.control.port}"
    log = tmp_path / "logs" / "control.log"

    def ready() -> int:
        assert control.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"{url}/readyz", timeout=5).status_code
        except httpx.HTTPError:
            return 0

    try:
        deadline = time.monotonic() + 60
        while ready() != 503:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(3)
        assert ready() == 503  # still alive, still waiting
        proxy.restore()
        while ready() != 200:
            assert time.monotonic() < deadline + 60, log.read_text()[-3000:]
            time.sleep(0.5)
        reconciler = httpx.get(f"{url}/status", timeout=5).json()["reconciler"]
        assert reconciler["failed_passes"] >= 1
    finally:
        stop_service(control)


def assert_consistent(stack: Stack, run_id: str) -> None:
    """Complete and consistent: what the database says was produced is there exactly once."""
    checks = check_run(stack.sessions, stack.settings, run_id)
    assert [(name, why) for name, why in checks if why] == []


def services_alive(stack: Stack) -> dict[str, int]:
    for name, proc in stack.procs.items():
        assert proc.poll() is None, stack.log_tail(name)
    return {name: proc.pid for name, proc in stack.procs.items()}


def test_run_completes_consistent_when_each_service_is_sigkilled_and_restarted_by_the_supervisor(
    stack: Stack,
) -> None:
    # As in `dualphase run`: nobody restarts a killed service but the embedded supervisor.
    supervisor = Supervisor(stack.env, stack.log_dir, stack.procs)
    rng = random.Random(SEED)
    run_id = stack.submit(seed=11)
    order = rng.sample(SERVICES, len(SERVICES))
    for name in order:
        delay = rng.uniform(0.5, 6.0)
        end = time.monotonic() + delay
        while time.monotonic() < end:
            for notice in supervisor.check():
                print(notice)
            time.sleep(0.1)
        counts = run_progress(stack.sessions, run_id)
        print(f"seed {SEED}: SIGKILL {name}-svc after {delay:.1f} s; progress {counts}")
        stack.procs[name].send_signal(signal.SIGKILL)
        stack.procs[name].wait()
    waited = stack.wait_complete(run_id, supervisor=supervisor)
    print(f"run {run_id} complete {waited:.0f} s after the last kill")
    assert {name: len(times) for name, times in supervisor.restarts.items()} == {
        name: 1 for name in SERVICES
    }
    assert_consistent(stack, run_id)
    wait_ready(stack.settings, SERVICES, stack.procs)  # every restarted one, for what follows


def test_run_completes_consistent_when_the_database_is_unreachable_for_ten_seconds(
    stack: Stack,
) -> None:
    pids = services_alive(stack)
    run_id = stack.submit(seed=13)
    delay = random.Random(SEED + 1).uniform(0.0, 5.0)
    stack.wait_for("phase-1 verdicts", lambda: stack.count(VerdictRow, run_id) >= 1)
    time.sleep(delay)
    print(
        f"cutting the database {delay:.1f} s after the first verdict; progress "
        f"{run_progress(stack.sessions, run_id)}"
    )
    stack.proxy.cut()
    try:
        time.sleep(3)
        ready = httpx.get(stack.url("sampler", "/readyz"), timeout=15)
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("error")
        time.sleep(7)
    finally:
        stack.proxy.restore()
    stack.wait_complete(run_id)
    statuses = {n: httpx.get(stack.url(n, "/status"), timeout=10).json() for n in SERVICES}
    retries = {n: sum(c["retries"] for c in st["consumers"]) for n, st in statuses.items()}
    print(
        f"retries after the database outage: {retries}; "
        f"reconciler: {statuses['control']['reconciler']}"
    )
    assert statuses["control"]["reconciler"]["failed_passes"] >= 1
    assert services_alive(stack) == pids
    assert_consistent(stack, run_id)


def test_run_completes_when_the_broker_restarts_and_loses_queued_jobs(stack: Stack) -> None:
    """The phase-2 jobs are queued on the broker when it restarts on the same port: they are
    gone, and only the reconciler can bring them back. The generator is paused (SIGSTOP) while
    they are queued and resumed once the broker is down, so it cannot take them. No service is
    restarted."""
    pids = services_alive(stack)
    run_id = stack.submit(seed=12)
    generator = stack.procs["generator"]
    # Verdicts, not generations: the generator publishes its dialogues after writing the rows.
    stack.wait_for("phase-1 verdicts", lambda: stack.count(VerdictRow, run_id) >= 3)
    generator.send_signal(signal.SIGSTOP)
    try:
        # Round 0 of phase 2 is published when M1 is ready; the paused generator cannot take it.
        stack.wait_for("phase 2 started", lambda: stack.count(AttemptCount, run_id) == 3)

        # The sampler writes the attempt counts before it publishes the jobs; a publish still in
        # its producer when the broker stops would be retried to the new broker, not lost. So
        # the broker must hold this run's phase-2 jobs themselves. A count of all records on the
        # topic could be met by a phase-1 job re-sent early (once here the jobs then reached the
        # new broker without the reconciler: "re-published 0 messages").
        def phase2_jobs_on_broker() -> bool:
            jobs = [r for r in stack.records(PROBLEMS) if r["run_id"] == run_id]
            return sum(job["kind"] == "sample" for job in jobs) >= 3

        stack.wait_for("the 3 phase-2 jobs on the broker", phase2_jobs_on_broker, timeout_s=60)
        before = stack.republished()
        port = stack.broker.port
        stack.broker.stop()
    finally:
        generator.send_signal(signal.SIGCONT)
    stack.broker = EmbeddedBroker(port).start()
    restarted = time.monotonic()
    print(f"broker restarted on port {port}")
    # Shorter limits: a consumer whose re-join never completes must join afresh within them
    # (common.rejoin_after_s; shared/core/bus.py).
    first = stack.wait_for(
        "a phase-2 generation after the restart",
        lambda: stack.count(GenerationRow, run_id) > 3,
        150,
    )
    stack.wait_complete(run_id, 300)
    total = time.monotonic() - restarted
    republished = stack.republished() - before
    print(
        f"broker restart: first phase-2 generation {first:.1f} s after the restart, run complete "
        f"{total:.1f} s after it; reconciler re-published {republished:.0f} messages"
    )
    # The jobs come back directly, or through the M1 announcement (the sampler answers it with
    # the pending jobs), whichever the reconciler finds first.
    assert republished >= 1, "\n".join(stack.log_tail(n) for n in ("control", "generator"))
    assert services_alive(stack) == pids  # nobody was restarted
    assert_consistent(stack, run_id)
