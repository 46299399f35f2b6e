"""The admin endpoints (submit a run, cancel a run) on control-svc's app: token required, the
status endpoints read-only, cancelled runs skipped. The app runs in-process (FastAPI's test
client) on the real broker and the real databases."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from dotenv import dotenv_values
from fastapi.testclient import TestClient
from kafka import KafkaConsumer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from control_svc.admin import admin_router
from dualphase.broker import free_port
from dualphase.cli import SECRETS, app
from generator_svc.handler import GeneratorStats, handle_jobs
from shared.core.bus import Publisher, ensure_topics, topic_name
from shared.core.db import GenerationRow, Problem, Run, make_engine, make_sessionmaker
from shared.core.messages import (
    ALL_TOPICS,
    BASE_CHECKPOINT_ID,
    CHECKPOINTS,
    PROBLEMS,
    CheckpointReady,
    Message,
    ProblemJob,
)
from shared.core.runs import problem_job
from shared.core.service import make_app, serve_http
from shared.core.settings import CommonSettings, ControlSettings, Settings
from shared.method.prompts import load_prompts
from trainer_svc.app import gpu_check

M = TypeVar("M", bound=Message)
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEMS_JSON = [
    {"id": "a", "question": "Ann has 2 apples and gets 3 more. How many now?", "answer": "5"},
    {"id": "b", "question": "Ben has 7 cards and gives away 4. How many now?", "answer": "3"},
    {"id": "c", "question": "Cy has 3 boxes of 4 pens. How many pens?", "answer": "12"},
]


class Admin:
    def __init__(self, token: str, common: CommonSettings, db_url: str) -> None:
        self.settings = Settings(
            common=common.model_copy(update={"database_url": db_url}),
            control=ControlSettings(admin_token=token),
        )
        self.engine = make_engine(db_url)
        self.sessions: sessionmaker[Session] = make_sessionmaker(self.engine)
        self.publisher = Publisher(self.settings.common)
        router = admin_router(self.settings, self.sessions, self.publisher)
        app = make_app("control-svc", self.engine, self.publisher, [], routers=[router])
        self.client = TestClient(app)

    def run(self, run_id: str) -> Run | None:
        with self.sessions() as s:
            return s.get(Run, run_id)

    def close(self) -> None:
        self.publisher.close()
        self.engine.dispose()


@pytest.fixture
def admin(common: CommonSettings, db_url: str) -> Iterator[Admin]:
    ensure_topics(common, ALL_TOPICS)
    admin = Admin(TOKEN, common, db_url)
    yield admin
    admin.close()


def published(
    common: CommonSettings, topic: str, model: type[M], run_id: str, expected: int
) -> list[M]:
    """The run's messages on ``topic``, read without a consumer group until ``expected``."""
    consumer = KafkaConsumer(
        topic_name(common, topic),
        bootstrap_servers=common.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    found: list[M] = []
    try:
        for record in consumer:
            message = model.model_validate_json(record.value)
            found += [message] if message.run_id == run_id else []
            if len(found) == expected:
                break
    finally:
        consumer.close()
    return found


def test_submit_run_records_problems_publishes_phase1_jobs_and_the_base_model(
    admin: Admin, common: CommonSettings
) -> None:
    reply = admin.client.post(
        "/runs", json={"problems": PROBLEMS_JSON, "phase1": 2, "seed": 5}, headers=AUTH
    )
    assert reply.status_code == 201, reply.text
    run_id = reply.json()["run_id"]
    run = admin.run(run_id)
    assert run is not None and run.status == "running" and run.seed == 5
    with admin.sessions() as s:
        phases = dict(
            s.execute(
                select(Problem.problem_id, Problem.phase).where(Problem.run_id == run_id)
            ).all()
        )
    assert phases == {"a": 1, "b": 1, "c": 2}
    jobs = published(common, PROBLEMS, ProblemJob, run_id, 2)
    assert sorted(j.problem_id for j in jobs) == ["a", "b"]
    assert all(j.kind == "dialogue" and j.seed == 5 for j in jobs)
    # The base model is announced for evaluation at once, under the base checkpoint id.
    [base] = published(common, CHECKPOINTS, CheckpointReady, run_id, 1)
    assert (base.checkpoint_id, base.stage, base.path) == (BASE_CHECKPOINT_ID, "M0", "embedded")


def test_submit_run_accepts_jsonl_text(admin: Admin) -> None:
    text = "\n".join(
        f'{{"id": "{p["id"]}", "problem": "{p["question"]}", "gold": "{p["answer"]}"}}'
        for p in PROBLEMS_JSON
    )
    reply = admin.client.post("/runs", json={"problems": text}, headers=AUTH)
    assert reply.status_code == 201, reply.text
    with admin.sessions() as s:
        rows = s.scalars(select(Problem).where(Problem.run_id == reply.json()["run_id"])).all()
    assert sorted((p.problem_id, p.phase, p.gold) for p in rows) == [
        ("a", 1, "5"),
        ("b", 2, "3"),
        ("c", 2, "12"),
    ]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}]
)
def test_admin_endpoints_refuse_a_missing_or_wrong_token_with_401(
    admin: Admin, headers: dict[str, str]
) -> None:
    with admin.sessions() as s:
        before = s.query(Run).count()
    reply = admin.client.post("/runs", json={"problems": PROBLEMS_JSON}, headers=headers)
    assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
    assert admin.client.post("/runs/any/cancel", headers=headers).status_code == 401
    with admin.sessions() as s:
        assert s.query(Run).count() == before


def test_admin_endpoints_are_disabled_with_403_when_no_token_is_configured(
    common: CommonSettings, sqlite_url: str
) -> None:
    admin = Admin("", common, sqlite_url)
    try:
        for headers in ({}, AUTH, {"Authorization": "Bearer "}):
            reply = admin.client.post("/runs", json={"problems": PROBLEMS_JSON}, headers=headers)
            assert reply.status_code == 403, reply.text
            assert "disabled" in reply.json()["detail"]
            assert admin.client.post("/runs/x/cancel", headers=headers).status_code == 403
        with admin.sessions() as s:
            assert s.query(Run).count() == 0
    finally:
        admin.close()


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/status", "/metrics"])
def test_status_endpoints_are_read_only(admin: Admin, path: str) -> None:
    assert admin.client.get(path).status_code == 200
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert admin.client.request(method, path, headers=AUTH).status_code == 405


def test_cancel_marks_the_run_cancelled_and_the_generator_skips_its_jobs(admin: Admin) -> None:
    reply = admin.client.post("/runs", json={"problems": PROBLEMS_JSON}, headers=AUTH)
    run_id = reply.json()["run_id"]
    cancel = admin.client.post(f"/runs/{run_id}/cancel", headers=AUTH)
    assert cancel.status_code == 200
    assert cancel.json() == {"run_id": run_id, "status": "cancelled"}
    assert admin.run(run_id).status == "cancelled"  # type: ignore[union-attr]
    assert admin.client.post("/runs/no-such-run/cancel", headers=AUTH).status_code == 404

    with admin.sessions() as s:
        problem = s.scalars(select(Problem).where(Problem.run_id == run_id)).first()
    assert problem is not None
    job = problem_job(run_id, 0, problem)

    def no_model(model: str) -> None:
        raise AssertionError("a job of a cancelled run reached the model")

    stats, published = GeneratorStats(), []
    handle_jobs(
        [job],
        admin.sessions,
        no_model,
        load_prompts("v1"),  # type: ignore[arg-type]
        lambda topic, d: published.append(d),
        stats,
        admin.settings.generator,
    )
    assert stats.cancelled_skipped == 1 and published == []
    with admin.sessions() as s:
        assert s.query(GenerationRow).filter(GenerationRow.run_id == run_id).count() == 0


def test_cancel_leaves_a_complete_run_complete(admin: Admin) -> None:
    run_id = admin.client.post("/runs", json={"problems": PROBLEMS_JSON}, headers=AUTH).json()[
        "run_id"
    ]
    with admin.sessions.begin() as s:
        s.get_one(Run, run_id).status = "complete"
    reply = admin.client.post(f"/runs/{run_id}/cancel", headers=AUTH)
    assert reply.json()["status"] == "complete"


def test_readyz_fails_when_the_configured_gpus_are_not_usable(
    admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    app = make_app(
        "trainer-svc", admin.engine, admin.publisher, [], ready_checks=lambda: gpu_check(1)
    )
    reply = TestClient(app).get("/readyz")
    assert reply.status_code == 503
    assert "trainer.num_gpus is 1" in reply.json()["checks"]["gpu"]
    assert reply.json()["checks"]["database"] == "ok"
    assert gpu_check(0) == {}, "a CPU trainer has no GPU check"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert gpu_check(2) == {"gpu": "ok"}


def test_cli_submit_starts_a_run_on_a_running_stack_with_the_env_token(
    admin: Admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DUALPHASE_CONTROL__ADMIN_TOKEN", raising=False)
    port = free_port()
    router = admin_router(admin.settings, admin.sessions, admin.publisher)
    server = serve_http(
        make_app("control-svc", admin.engine, admin.publisher, [], routers=[router]),
        "127.0.0.1",
        port,
    )
    try:
        while not server.started:
            time.sleep(0.05)
        problems = tmp_path / "problems.jsonl"
        problems.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS_JSON))
        env = tmp_path / ".env"
        env.write_text(f"ADMIN_TOKEN={TOKEN}\n")
        args = ["submit", "--problems", str(problems), "--phase1", "1", "--phase2", "1"]
        args += ["--url", f"http://127.0.0.1:{port}", "--env-file", str(env)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        run_id = result.output.strip()
        with admin.sessions() as s:
            rows = s.execute(
                select(Problem.problem_id, Problem.phase).where(Problem.run_id == run_id)
            )
            assert dict(rows.all()) == {"a": 1, "b": 2}, "the first 1 + 1 problems of the file"

        with admin.sessions() as s:
            before = s.query(Run).count()
        env.write_text("ADMIN_TOKEN=wrong\n")
        refused = CliRunner().invoke(app, args)
        assert refused.exit_code == 1
        assert refused.output.strip().splitlines() == [
            f"error: POST http://127.0.0.1:{port}/runs answered 401: missing or wrong bearer token"
        ]
        too_many = CliRunner().invoke(app, [*args[:3], "--phase1", "3", "--phase2", "1", *args[7:]])
        assert too_many.exit_code == 2 and "the file has 3" in too_many.output
        with admin.sessions() as s:
            assert s.query(Run).count() == before, "no run was created"
    finally:
        server.should_exit = True


def test_init_env_writes_random_secrets_and_never_overwrites(tmp_path: Path) -> None:
    first, second = tmp_path / "a.env", tmp_path / "b.env"
    for path in (first, second):
        assert CliRunner().invoke(app, ["init-env", "--path", str(path)]).exit_code == 0
    values = [dotenv_values(p) for p in (first, second)]
    assert len(SECRETS) == 5
    for key in SECRETS:
        assert len(values[0][key]) >= 24 and values[0][key] != values[1][key]
    assert values[0]["POSTGRES_USER"] == "dualphase", "the rest is the example's"
    assert first.stat().st_mode & 0o077 == 0, "readable by its owner only"
    again = CliRunner().invoke(app, ["init-env", "--path", str(first)])
    assert again.exit_code == 2 and dotenv_values(first) == values[0]
