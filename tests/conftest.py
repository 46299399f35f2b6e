"""Shared fixtures: a real broker, real databases, and settings that keep tests apart.

- `broker`: one embedded Tansu broker for the whole session; its bootstrap "127.0.0.1:PORT".
- `pg_url`: a fresh PostgreSQL database for the session (dropped afterwards), schema made.
  Shared by the session's tests: use unique run ids.
- `sqlite_url`: a fresh SQLite file per test, schema made.
- `db_url`: parametrized, runs a test once on SQLite and once on PostgreSQL.
- `common`: CommonSettings on the broker with a topic prefix unique to the test. Make consumer
  group ids unique too (e.g. `common.topic_prefix + "verifier"`): on Tansu a group that was
  subscribed to another topic before never gets partitions.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dualphase.broker import EmbeddedBroker
from shared.core import migrations
from shared.core.db import Base, make_engine
from shared.core.settings import CommonSettings

# Server where the per-session test database is created (trust auth, as on the dev machine and CI).
POSTGRES = os.environ.get("DUALPHASE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")


def create_schema(url: str) -> None:
    """The schema by the Alembic migrations once they exist, else straight from the models."""
    if any(p.name != "__init__.py" for p in (migrations.HERE / "versions").glob("*.py")):
        migrations.upgrade(url)
        return
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    with EmbeddedBroker() as running:
        yield running.bootstrap


def new_database() -> Iterator[str]:
    """A database of its own with the schema, dropped afterwards."""
    name = f"dualphase_test_{uuid.uuid4().hex[:12]}"
    admin = POSTGRES.replace("postgresql+psycopg", "postgresql") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{POSTGRES}/{name}"
    create_schema(url)
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    yield from new_database()


@pytest.fixture
def own_pg_url() -> Iterator[str]:
    """For a whole stack: its reconciler would otherwise pick up the unfinished runs that earlier
    tests of the session left in the shared database and finish them first."""
    yield from new_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'test.db'}"
    create_schema(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("pg_url" if request.param == "postgres" else "sqlite_url")


@pytest.fixture
def common(broker: str, tmp_path: Path) -> CommonSettings:
    return CommonSettings(
        data_dir=tmp_path,
        kafka_bootstrap=broker,
        topic_prefix=f"t{uuid.uuid4().hex[:8]}-",
        partitions=2,
        session_timeout_ms=6000,  # Tansu's group joins take about half of it
        retry_backoff_s=0.05,
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with slow tests first, so that under `make test`'s two workers (whole files each,
    in this order: `--no-loadscope-reorder`) the longest ones do not start last and run alone."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: file order otherwise kept
