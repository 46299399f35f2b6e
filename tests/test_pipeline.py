"""The walking skeleton: problems -> generator-svc -> dialogues -> verifier-svc -> verified-samples,
over the real broker, with the real embedded model, rows in the real database."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer
from sqlalchemy import func, select

from dualphase.broker import free_port
from dualphase.embedded import service_env, start_service, stop_service, wait_ready
from shared.core.bus import Publisher, ensure_topics, topic_name
from shared.core.db import GenerationRow, VerdictRow, make_engine, make_sessionmaker
from shared.core.messages import ALL_TOPICS, VERIFIED_SAMPLES, VerifiedSamples
from shared.core.runs import ProblemSpec, submit_run
from shared.core.settings import CommonSettings, Settings
from shared.datasets.synthetic import make_problems


def stack_settings(common: CommonSettings, db_url: str) -> Settings:
    settings = Settings(common=common.model_copy(update={"database_url": db_url}))
    settings.generator.max_new_tokens = 24  # a real dialogue, kept short for the suite
    settings.generator.port = free_port()
    settings.verifier.port = free_port()
    settings.inference.batch_size = 4
    return settings


def test_problem_flows_through_generator_and_verifier_to_verified_samples(
    common: CommonSettings, db_url: str, tmp_path: Path
) -> None:
    settings = stack_settings(common, db_url)
    env = service_env(settings, common.kafka_bootstrap)
    env["DUALPHASE_COMMON__TOPIC_PREFIX"] = common.topic_prefix
    env["DUALPHASE_COMMON__PARTITIONS"] = str(common.partitions)
    env["DUALPHASE_COMMON__SESSION_TIMEOUT_MS"] = str(common.session_timeout_ms)
    env["DUALPHASE_GENERATOR__MAX_NEW_TOKENS"] = "24"
    env["DUALPHASE_GENERATOR__PORT"] = str(settings.generator.port)
    env["DUALPHASE_VERIFIER__PORT"] = str(settings.verifier.port)
    env["DUALPHASE_INFERENCE__BATCH_SIZE"] = "4"
    env["DUALPHASE_INFERENCE__THREADS"] = "1"  # the services share two cores
    ensure_topics(common, ALL_TOPICS)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in ("generator", "verifier"):
            procs[name] = start_service(name, env, tmp_path / "logs")
        wait_ready(settings, list(procs), procs)

        sessions = make_sessionmaker(make_engine(db_url))
        problems = [
            ProblemSpec(p.id, p.question, str(p.answer), "synthetic")
            for p in make_problems(3, seed=7)
        ]
        publisher = Publisher(common)
        run_id = submit_run(settings, sessions, publisher, problems, [], seed=1)

        verified = _read_verified(common, run_id, expected=3, timeout_s=240)
        assert sorted(v.problem_id for v in verified) == sorted(p.id for p in problems)

        with sessions() as s:
            gens = s.scalars(select(GenerationRow).where(GenerationRow.run_id == run_id)).all()
            verdicts = s.scalar(
                select(func.count()).select_from(VerdictRow).where(VerdictRow.run_id == run_id)
            )
        assert len(gens) == 3 and verdicts == 3
        for gen in gens:
            assert len(gen.turns) == 3 and all(t > 0 for t in gen.tokens)
            assert gen.prompt_version == "v1" and "sha256:" in gen.model
            assert gen.params["max_new_tokens"] == 24 and gen.seed == 1

        status = httpx.get(f"http://127.0.0.1:{settings.generator.port}/status").json()
        assert status["jobs_done"] >= 3
        metrics = httpx.get(f"http://127.0.0.1:{settings.verifier.port}/metrics").text
        assert "dualphase_messages_in_total" in metrics
    finally:
        for proc in procs.values():
            stop_service(proc)
    assert all(proc.returncode == 0 for proc in procs.values()), "SIGTERM must stop cleanly"


def _read_verified(
    common: CommonSettings, run_id: str, expected: int, timeout_s: float
) -> list[VerifiedSamples]:
    consumer = KafkaConsumer(
        topic_name(common, VERIFIED_SAMPLES),
        bootstrap_servers=common.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
    )
    found: dict[str, VerifiedSamples] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    msg = VerifiedSamples.model_validate_json(record.value)
                    if msg.run_id == run_id:
                        found[msg.job_id] = msg
    finally:
        consumer.close()
    if len(found) < expected:
        pytest.fail(f"only {len(found)} of {expected} verified-samples after {timeout_s} s")
    return list(found.values())
