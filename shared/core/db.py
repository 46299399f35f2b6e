"""Database models (SQLAlchemy 2) and sessions. The schema itself is made by Alembic migrations.

Every table that a consumer writes has a unique key made of (run, problem, sample or job), and
writes go through ``insert_ignore``, so a redelivered message changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from shared.core.messages import VerifiedSamples


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(comment="Settings snapshot at submission.")
    status: Mapped[str] = mapped_column(String(32), default="running")
    seed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Problem(Base):
    __tablename__ = "problems"
    __table_args__ = (UniqueConstraint("run_id", "problem_id", name="uq_problem"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    problem_id: Mapped[str] = mapped_column(String(128))
    phase: Mapped[int] = mapped_column(Integer)
    question: Mapped[str] = mapped_column(Text)
    gold: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(256), default="", comment="file:line or dataset")
    dataset: Mapped[str] = mapped_column(String(64), default="")
    solution: Mapped[str] = mapped_column(
        Text, default="", comment="Reference solution, if the problem has one (the oracle arm)."
    )


class GenerationRow(Base):
    __tablename__ = "generations"
    __table_args__ = (UniqueConstraint("run_id", "problem_id", "sample_id", name="uq_generation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    problem_id: Mapped[str] = mapped_column(String(128))
    sample_id: Mapped[str] = mapped_column(String(192))
    job_id: Mapped[str] = mapped_column(String(160), index=True)
    phase: Mapped[int] = mapped_column(Integer)
    round: Mapped[int] = mapped_column(Integer, default=0)
    turns: Mapped[list[Any]] = mapped_column(comment="Assistant texts per turn.")
    tokens: Mapped[list[Any]] = mapped_column(comment="Generated tokens per turn.")
    finish_reasons: Mapped[list[Any]] = mapped_column(
        default=list, comment="Why each turn stopped: stop or length (cut at the token budget)."
    )
    model: Mapped[str] = mapped_column(Text)
    prompt_version: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(comment="Sampling parameters.")
    seed: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class VerdictRow(Base):
    __tablename__ = "verdicts"
    __table_args__ = (UniqueConstraint("run_id", "problem_id", "sample_id", name="uq_verdict"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    problem_id: Mapped[str] = mapped_column(String(128))
    sample_id: Mapped[str] = mapped_column(String(192))
    phase: Mapped[int] = mapped_column(Integer)
    round: Mapped[int] = mapped_column(Integer, default=0)
    category: Mapped[str] = mapped_column(String(4))
    initial_correct: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    final_correct: Mapped[bool] = mapped_column(Boolean)
    accepted: Mapped[bool] = mapped_column(Boolean)
    failed_rules: Mapped[list[Any]] = mapped_column(comment="Names of the rules that failed.")
    extracted: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class AttemptCount(Base):
    __tablename__ = "attempt_counts"
    __table_args__ = (UniqueConstraint("run_id", "problem_id", name="uq_attempts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    problem_id: Mapped[str] = mapped_column(String(128))
    round: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    corrects: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(
        String(16), default="pending", comment="pending/solved/exhausted"
    )


class ShardRow(Base):
    __tablename__ = "shards"
    __table_args__ = (UniqueConstraint("shard_id", "path", name="uq_shard_file"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    shard_id: Mapped[str] = mapped_column(String(128))
    stage: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    rows: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    stage: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    parent_id: Mapped[str] = mapped_column(String(128), default="")
    shard_id: Mapped[str] = mapped_column(String(128), default="")
    status: Mapped[str] = mapped_column(
        String(16), default="ready", comment="training/ready/failed"
    )
    error: Mapped[str] = mapped_column(Text, default="")
    training_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class EvalResult(Base):
    __tablename__ = "eval_results"
    __table_args__ = (
        UniqueConstraint("run_id", "checkpoint_id", "benchmark", "mode", name="uq_eval"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    checkpoint_id: Mapped[str] = mapped_column(String(128))
    benchmark: Mapped[str] = mapped_column(String(32))
    mode: Mapped[str] = mapped_column(String(32), default="base", comment="base/think-twice/...")
    problems: Mapped[int] = mapped_column(Integer)
    samples: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float] = mapped_column(Float)
    ci95: Mapped[float] = mapped_column(Float, default=0.0)
    mean_tokens: Mapped[float] = mapped_column(Float)
    median_tokens: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class EvalSampleRow(Base):
    """One graded evaluation sample: the per-problem results behind an ``eval_results`` row."""

    __tablename__ = "eval_samples"
    __table_args__ = (
        UniqueConstraint(
            "run_id",
            "checkpoint_id",
            "benchmark",
            "mode",
            "problem_id",
            "sample",
            name="uq_eval_sample",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    checkpoint_id: Mapped[str] = mapped_column(String(128))
    benchmark: Mapped[str] = mapped_column(String(32))
    mode: Mapped[str] = mapped_column(String(32), default="base")
    problem_id: Mapped[str] = mapped_column(String(128))
    sample: Mapped[int] = mapped_column(Integer, comment="Sample index, 0..k-1.")
    turns: Mapped[list[Any]] = mapped_column(comment="Assistant texts per turn.")
    tokens: Mapped[int] = mapped_column(Integer, comment="Generated tokens, all turns.")
    extracted: Mapped[str] = mapped_column(Text, default="")
    correct: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class RuleCount(Base):
    __tablename__ = "rule_counts"
    __table_args__ = (UniqueConstraint("run_id", "rule", name="uq_rule_count"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    rule: Mapped[str] = mapped_column(String(64))
    failed: Mapped[int] = mapped_column(Integer, default=0)
    passed: Mapped[int] = mapped_column(Integer, default=0)


def make_engine(url: str) -> Engine:
    """An engine; SQLite gets WAL and a busy timeout so several processes can share the file."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")

        return engine
    return create_engine(url, pool_pre_ping=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on error."""
    with factory.begin() as session:
        yield session


def insert_ignore(session: Session, model: type[Base], rows: list[dict[str, Any]]) -> int:
    """Insert rows, silently skipping those whose unique key exists. Returns rows inserted."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    # RETURNING counts what was really inserted (rowcount is -1 for this statement on psycopg).
    statement = (
        insert(model)
        .values(rows)
        .on_conflict_do_nothing()
        .returning(*model.__table__.primary_key.columns)
    )
    return len(session.execute(statement).all())


def insert_verdicts(session: Session, msg: VerifiedSamples) -> int:
    """Insert the verdicts of one message unless present; returns how many rows were new."""
    rows = [
        dict(
            run_id=msg.run_id,
            problem_id=msg.problem_id,
            sample_id=v.sample_id,
            phase=msg.phase,
            round=msg.round,
            category=v.category,
            initial_correct=v.initial_correct,
            final_correct=v.final_correct,
            accepted=v.accepted,
            failed_rules=v.failed_rules,
            extracted=v.extracted,
        )
        for v in msg.verdicts
    ]
    return insert_ignore(session, VerdictRow, rows)
