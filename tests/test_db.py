"""The schema: Alembic migrations match the models, and writes are idempotent."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import func, select
from typer.testing import CliRunner

from dualphase.cli import app
from shared.core.db import Problem, Run, insert_ignore, make_engine, make_sessionmaker
from shared.core.migrations import alembic_config


def test_migrations_create_exactly_the_models_schema(db_url: str) -> None:
    # db_url was made by the migrations (conftest); `check` fails if the models differ from it.
    command.check(alembic_config(db_url))


def test_insert_ignore_makes_a_repeated_write_change_nothing(db_url: str) -> None:
    sessions = make_sessionmaker(make_engine(db_url))
    run_id = f"run-{Path(db_url).name}-{id(sessions)}"
    row = dict(run_id=run_id, problem_id="p1", phase=1, question="1+1?", gold="2")
    with sessions.begin() as s:
        s.add(Run(id=run_id, config={}))
        s.flush()
        assert insert_ignore(s, Problem, [row]) == 1
    with sessions.begin() as s:
        assert insert_ignore(s, Problem, [row, {**row, "problem_id": "p2"}]) == 1
    with sessions() as s:
        count = s.scalar(select(func.count()).select_from(Problem).where(Problem.run_id == run_id))
    assert count == 2


def test_db_upgrade_command_creates_the_sqlite_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUALPHASE_COMMON__DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "dualphase.db").is_file()
    command.check(alembic_config(f"sqlite:///{tmp_path / 'data' / 'dualphase.db'}"))
