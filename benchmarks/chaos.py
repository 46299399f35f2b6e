"""Chaos run: one run on the embedded stack and PostgreSQL while faults are injected, then checks.

For at least ``--minutes``, a seeded schedule SIGKILLs a random service every 30-90 s (the
embedded supervisor restarts it, as compose's restart policy would), and two of its slots restart
the broker (an in-memory broker: every queued message is lost) and two cut the database (a TCP
proxy in front of PostgreSQL drops every connection for 10-20 s). Faults stop early if the run
completes. Then it waits for the run to complete and checks that the database is consistent
(``check_run``: every problem in exactly one final state, no sample stored twice, every accepted
sample in its shard, counts matching what was produced, nothing dead-lettered).

    python benchmarks/chaos.py --minutes 20 --phase1 50 --phase2 50 --seed 1

Its evaluation and decontamination read GSM8K by the project's data settings: the cache, the hub,
or local copies (DUALPHASE_DATA__LOCAL_DIR, docs/data.md).

tests/test_faults.py uses the same proxy, service environment and checks on smaller runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
from kafka import KafkaConsumer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dualphase.broker import EmbeddedBroker, free_port
from dualphase.embedded import Supervisor, start_service, stop_service, wait_ready
from sampler_svc.balance import build_phase1_set
from sampler_svc.sealing import contaminated, kept_solutions
from shared.core import migrations, shards
from shared.core.bus import Publisher
from shared.core.db import (
    AttemptCount,
    CheckpointRow,
    EvalResult,
    GenerationRow,
    Problem,
    Run,
    ShardRow,
    VerdictRow,
    make_engine,
    make_sessionmaker,
)
from shared.core.messages import ALL_TOPICS, SERVICES
from shared.core.runs import run_progress, submit_run
from shared.core.settings import CONFIG_ENV, CommonSettings, Settings
from shared.datasets.problems import demo_problems

POSTGRES = os.environ.get("DUALPHASE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")


class TcpProxy:
    """Forwards 127.0.0.1:port to a target; ``cut()`` drops every connection and refuses new
    ones (the database is gone), ``restore()`` accepts again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._up = threading.Event()
        self.restore()

    def restore(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: same port
        server.settimeout(0.2)
        self._up.set()
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        self._up.clear()  # the accept loop closes the listening socket
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._sockets.clear()
        time.sleep(0.5)  # let the accept loop notice

    def _accept(self, server: socket.socket) -> None:
        with server:
            while self._up.is_set():
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection(self.target)
                with self._lock:
                    self._sockets += [client, upstream]
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def stack_env(settings: Settings, db_url: str) -> dict[str, str]:
    """The services' environment: ``settings`` as DUALPHASE_* variables, the database at
    ``db_url`` (the proxy), no config file of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALPHASE_")}
    env.pop(CONFIG_ENV, None)
    common = settings.common
    values = {
        "COMMON__KAFKA_BOOTSTRAP": common.kafka_bootstrap,
        "COMMON__DATA_DIR": str(common.data_dir),
        "COMMON__DATABASE_URL": db_url,
        "COMMON__TOPIC_PREFIX": common.topic_prefix,
        "COMMON__PARTITIONS": str(common.partitions),
        "COMMON__SESSION_TIMEOUT_MS": str(common.session_timeout_ms),
        "COMMON__RETRY_BACKOFF_S": str(common.retry_backoff_s),
        "CONTROL__RECONCILE_INTERVAL_S": str(settings.control.reconcile_interval_s),
        "CONTROL__ADMIN_TOKEN": settings.control.admin_token,
        "INFERENCE__BATCH_SIZE": str(settings.inference.batch_size),
        "INFERENCE__THREADS": str(settings.inference.threads),
        "GENERATOR__MAX_NEW_TOKENS": str(settings.generator.max_new_tokens),
        "SAMPLER__SCHEDULE": json.dumps(settings.sampler.schedule),
        "TRAINER__PRESET": settings.trainer.preset,
        "TRAINER__SFT": json.dumps(settings.trainer.sft),
        "TRAINER__THREADS": str(settings.trainer.threads),
        "EVAL__BENCHMARKS": json.dumps(settings.eval.benchmarks),
        "EVAL__LIMIT": str(settings.eval.limit),
        "EVAL__SAMPLES": str(settings.eval.samples),
        "EVAL__MAX_NEW_TOKENS": str(settings.eval.max_new_tokens),
        "EVAL__BASELINE_MODES": "[]",
        "DATA__CACHE_DIR": str(settings.data.cache_dir),
        "DATA__LOCAL_DIR": str(settings.data.local_dir or ""),
    }
    for name in SERVICES:
        values[f"{name.upper()}__PORT"] = str(getattr(settings, name).port)
    env.update({f"DUALPHASE_{k}": v for k, v in values.items()})
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def check_run(
    sessions: sessionmaker[Session], settings: Settings, run_id: str
) -> list[tuple[str, str]]:
    """Each consistency check of a finished run (joint mode, no oracle arm) as (name, failure);
    the failure is "" when the check passed."""
    checks: list[tuple[str, str]] = []

    def check(name: str, ok: bool, detail: object = "") -> None:
        checks.append((name, "" if ok else f"failed: {detail}"))

    schedule = settings.sampler.schedule
    counts = run_progress(sessions, run_id)
    check("every stage done", all(d == t for d, t in counts.values()), counts)
    with sessions() as s:
        run = s.get_one(Run, run_id)
        check("run marked complete", run.status == "complete", run.status)
        problems = {
            p.problem_id: p.phase
            for p in s.scalars(select(Problem).where(Problem.run_id == run_id))
        }
        gens = s.scalars(select(GenerationRow).where(GenerationRow.run_id == run_id)).all()
        verdicts = s.scalars(select(VerdictRow).where(VerdictRow.run_id == run_id)).all()
        check(
            "one verdict per sample",
            sorted(g.sample_id for g in gens) == sorted(v.sample_id for v in verdicts),
            (len(gens), len(verdicts)),
        )
        check("no sample stored twice", len({g.sample_id for g in gens}) == len(gens), len(gens))
        phase1 = [g for g in gens if g.phase == 1]
        check(
            "one three-turn dialogue per phase-1 problem",
            sorted(g.problem_id for g in phase1)
            == sorted(p for p, ph in problems.items() if ph == 1)
            and all(len(g.turns) == 3 for g in phase1),
            len(phase1),
        )
        attempts = s.scalars(select(AttemptCount).where(AttemptCount.run_id == run_id)).all()
        check(
            "every phase-2 problem in exactly one final state",
            sorted(a.problem_id for a in attempts)
            == sorted(p for p, ph in problems.items() if ph == 2)
            and all(a.state == ("solved" if a.corrects else "exhausted") for a in attempts)
            and all(a.state == "solved" or a.round == len(schedule) - 1 for a in attempts),
            Counter(a.state for a in attempts),
        )
        wrong = [
            a.problem_id
            for a in attempts
            if not (
                a.attempts
                == len(mine := [v for v in verdicts if v.problem_id == a.problem_id])
                == sum(schedule[: a.round + 1])
                and a.corrects == sum(v.accepted for v in mine)
            )
        ]
        check("attempt counts match the samples produced", not wrong, wrong)
        drop = contaminated(s, run_id, settings)
        phase1_ids = [v.sample_id for v in build_phase1_set(s, run_id, run.seed, drop).kept]
        solved = sorted(a.problem_id for a in attempts if a.state == "solved")
        kept = [
            g.sample_id
            for p in solved
            if p not in drop
            for g in kept_solutions(s, run_id, p, settings.sampler.keep_k)
        ]
        expected = {"phase1": phase1_ids, "joint": phase1_ids + kept}
        rows = s.scalars(select(ShardRow).where(ShardRow.run_id == run_id)).all()
        stages = sorted(r.stage for r in rows)
        check("one phase-1 and one joint shard", stages == ["joint", "phase1"], stages)
        for row in rows:
            intact = shards.sha256_file(Path(row.path)) == row.sha256
            lines = Path(row.path).read_text().splitlines()
            ids = [json.loads(line)["sample_id"] for line in lines]
            check(f"{row.stage} shard intact", intact, row.path)
            check(
                f"{row.stage} shard holds exactly its accepted samples",
                ids == expected[row.stage],
                (len(ids), len(expected[row.stage])),
            )
        ckpts = s.scalars(select(CheckpointRow).where(CheckpointRow.run_id == run_id)).all()
        found = sorted((c.stage, c.status) for c in ckpts)
        check("M1 and M2 ready, once each", found == [("M1", "ready"), ("M2", "ready")], found)
        evals = s.scalars(select(EvalResult.checkpoint_id).where(EvalResult.run_id == run_id))
        expected_evals = sorted(["base", *(c.id for c in ckpts)] * len(settings.eval.benchmarks))
        check("each model evaluated once", sorted(evals) == expected_evals, expected_evals)
    letters = dead_letters(settings.common)
    check("nothing dead-lettered", not letters, letters[:3])
    return checks


def dead_letters(common: CommonSettings) -> list[str]:
    """Every message on the stack's dead-letter topics."""
    consumer = KafkaConsumer(
        bootstrap_servers=common.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    try:
        consumer.subscribe([common.topic_prefix + t + ".dlq" for t in ALL_TOPICS])
        return [r.value.decode(errors="replace") for r in consumer]
    finally:
        consumer.close()


def fault_schedule(rng: random.Random, minutes: float) -> list[tuple[float, str]]:
    """(seconds from the start, fault): a kill every 30-90 s for ``minutes``; two of the slots
    in the first 60% (never the first slot) restart the broker and two cut the database."""
    times, t = [], 0.0
    while t < minutes * 60:
        t += rng.uniform(30, 90)
        times.append(t)
    kinds = ["kill"] * len(times)
    slots = rng.sample(range(1, max(int(len(times) * 0.6), 5)), 4)
    for slot, kind in zip(slots, ["broker", "broker", "database", "database"], strict=True):
        kinds[slot] = kind
    return list(zip(times, kinds, strict=True))


def chaos_settings(data_dir: Path, args: argparse.Namespace) -> Settings:
    settings = Settings(
        common=CommonSettings(
            data_dir=data_dir,
            topic_prefix=f"chaos{uuid.uuid4().hex[:6]}-",
            session_timeout_ms=6000,
            retry_backoff_s=0.2,
        ),
        control={"reconcile_interval_s": 10.0},
    )
    settings.inference.batch_size = 16
    settings.inference.threads = 1
    settings.generator.max_new_tokens = args.max_new_tokens
    settings.sampler.schedule = [4, 4]
    settings.trainer = settings.trainer.model_validate(
        {"preset": "cpu-tiny", "sft": {"max_steps": 4}, "threads": 1}
    )
    settings.eval = settings.eval.model_validate(
        {
            "benchmarks": ["gsm8k"],
            "limit": 10,
            "samples": 1,
            "max_new_tokens": args.max_new_tokens,
            "baseline_modes": [],
        }
    )
    for service in SERVICES:
        getattr(settings, service).port = free_port()
    return settings


class Chaos:
    """The stack under test and the faults it can suffer."""

    def __init__(self, settings: Settings, db_name: str, rng: random.Random) -> None:
        pg_host, pg_port = POSTGRES.rsplit("@", 1)[1].split(":")
        self.proxy = TcpProxy((pg_host, int(pg_port)))
        self.broker = EmbeddedBroker().start()
        settings.common.kafka_bootstrap = self.broker.bootstrap
        proxied = f"{POSTGRES.rsplit('@', 1)[0]}@127.0.0.1:{self.proxy.port}/{db_name}"
        env = stack_env(settings, proxied)
        # Chaos kills count as restarts too: a higher bound than `dualphase run`'s.
        self.supervisor = Supervisor(env, settings.common.data_dir / "logs", {}, max_restarts=10)
        self.rng = rng
        self.injected: Counter[str] = Counter()

    def start(self, settings: Settings) -> None:
        for name in SERVICES:
            self.supervisor.procs[name] = start_service(
                name, self.supervisor.env, self.supervisor.log_dir
            )
        wait_ready(settings, SERVICES, self.supervisor.procs)

    def inject(self, kind: str) -> str:
        self.injected[kind] += 1
        if kind == "kill":
            name = self.rng.choice(SERVICES)
            self.supervisor.procs[name].send_signal(signal.SIGKILL)
            return f"SIGKILL {name}-svc"
        if kind == "broker":
            port, down = self.broker.port, self.rng.uniform(2, 8)
            self.broker.stop()
            self.wait(down)
            self.broker = EmbeddedBroker(port).start()
            return f"broker restarted after {down:.0f} s down (queued messages lost)"
        down = self.rng.uniform(10, 20)
        self.proxy.cut()
        self.wait(down)
        self.proxy.restore()
        return f"database cut for {down:.0f} s"

    def wait(self, seconds: float, done: Callable[[], bool] = lambda: False) -> bool:
        """Sleep ``seconds`` while the supervisor restarts what dies; True once ``done()``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for notice in self.supervisor.check():
                print(f"  {notice}", flush=True)
            if done():
                return True
            time.sleep(0.5)
        return done()

    def stop(self) -> None:
        for proc in reversed(self.supervisor.procs.values()):
            stop_service(proc)
        self.broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20, help="how long faults go on")
    parser.add_argument("--phase1", type=int, default=50)
    parser.add_argument("--phase2", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=Path(".chaos"))
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    schedule = fault_schedule(rng, args.minutes)
    db_name = f"dualphase_chaos_{uuid.uuid4().hex[:8]}"
    admin = POSTGRES.replace("postgresql+psycopg", "postgresql") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    migrations.upgrade(f"{POSTGRES}/{db_name}")
    settings = chaos_settings(args.data_dir.resolve() / db_name, args)
    sessions = make_sessionmaker(make_engine(f"{POSTGRES}/{db_name}"))
    chaos = Chaos(settings, db_name, rng)
    events: list[dict[str, object]] = []
    try:
        chaos.start(settings)
        publisher = Publisher(settings.common)
        specs = demo_problems(args.phase1 + args.phase2, args.seed, (1, 2))
        run_id = submit_run(
            settings, sessions, publisher, specs[: args.phase1], specs[args.phase1 :], args.seed
        )
        publisher.close()
        print(f"run {run_id}: {len(schedule)} faults over {args.minutes:.0f} min", flush=True)

        def complete() -> bool:
            with sessions() as s:
                return s.get_one(Run, run_id).status == "complete"

        start = last_fault = time.monotonic()
        for at, kind in schedule:
            if chaos.wait(at - (time.monotonic() - start), complete):
                print("run complete: faults stop early", flush=True)
                break
            what = chaos.inject(kind)
            last_fault = time.monotonic()
            progress = {k: f"{d}/{t}" for k, (d, t) in run_progress(sessions, run_id).items()}
            events.append({"t_s": round(time.monotonic() - start), "fault": what})
            print(f"{time.monotonic() - start:6.0f} s  {what}; {progress}", flush=True)
        finished = chaos.wait(3600, complete)
        after = time.monotonic() - last_fault
        checks = check_run(sessions, settings, run_id) if finished else []
        # The broker restarts lose the dead-letter topics too: the services' logs keep each one.
        letters = [
            line
            for log in sorted(chaos.supervisor.log_dir.glob("*.log"))
            for line in log.read_text(errors="replace").splitlines()
            if ".dlq: " in line
        ]
        checks.append(
            ("no dead letter in any service log", f"failed: {letters[:3]}" if letters else "")
        )
    finally:
        chaos.stop()
    failures = [(name, why) for name, why in checks if why]
    figures = {
        "run_id": run_id,
        "problems": [args.phase1, args.phase2],
        "fault_minutes": round((last_fault - start) / 60, 1),
        "faults": dict(chaos.injected),
        "restarts": {n: len(t) for n, t in chaos.supervisor.restarts.items()},
        "complete": finished,
        "complete_after_last_fault_s": round(after),
        "checks_passed": sum(not why for _, why in checks),
        "checks": len(checks),
        "failures": failures,
        "events": events,
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "events"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1) + "\n")
    raise SystemExit(0 if finished and not failures else 1)


if __name__ == "__main__":
    main()
