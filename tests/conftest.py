"""Shared fixtures: a real broker, real databases, and settings that keep tests apart.

- `broker`: one embedded Tansu broker for the whole session; its bootstrap "127.0.0.1:PORT".
- `pg_url`: a fresh PostgreSQL database for the session (dropped afterwards), schema made.
  Shared by the session's tests: use unique run ids.
- `sqlite_url`: a fresh SQLite file per test, schema made.
- `db_url`: parametrized, runs a test once on SQLite and once on PostgreSQL.
- `common`: CommonSettings on the broker with a topic prefix unique to the test. Make consumer
  group ids unique too (e.g. `common.topic_prefix + "verifier"`): on Tansu a group that was
  subscribed to another topic before never gets partitions.
- `hub_copy`: a folder of local copies of every dataset of shared/datasets/sources.py, laid out as
  the hub lays out each repository (written once a session from ../shared/datasets, field names
  as the hub's); `data_settings`: DataSettings reading it (data.local_dir), with a session cache.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dualphase.broker import EmbeddedBroker
from shared.core import migrations
from shared.core.db import Base, make_engine
from shared.core.settings import CONFIG_ENV, CommonSettings, DataSettings

# No dataset or model hub is reachable from the test machines: a load that would try one fails at
# once (HF_HUB_OFFLINE) instead of retrying for half a minute. Datasets come from `hub_copy`.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite's settings are its own, never those of a config file the shell exported.
os.environ.pop(CONFIG_ENV, None)
# The real benchmark files beside the repository (the Qwen2.5-Math harness layout).
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# Server where the per-session test database is created (trust auth, as on the dev machine and CI).
POSTGRES = os.environ.get("DUALPHASE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")


@pytest.fixture(autouse=True)
def no_config_file(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts without a config file: a command run in-process (`run`, `eval`) exports
    the one it read to DUALPHASE_CONFIG for the services it starts, and it must not become the
    settings of the next test in the same worker. Removed again after the test: a module-scoped
    fixture is built before this one runs, and CI's test_measured_sampling read the demo's
    config that way (left by `dualphase run --dry-run` in an earlier file)."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    yield
    os.environ.pop(CONFIG_ENV, None)


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


def _harness(source: Path, name: str) -> list[dict]:
    path = source / "benchmarks" / name / "test.jsonl"
    return [json.loads(line) for line in path.open()]


def _parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _keep(rows: list[dict], *fields: str, **extra: object) -> list[dict]:
    return [{**{f: row[f] for f in fields}, **extra} for row in rows]


def write_hub_copy(root: Path, source: Path = SHARED_DATASETS) -> Path:
    """Every dataset of shared/datasets/sources.py at <root>/<hub id>/<its file>, built from the
    harness files under ``source`` (benchmarks/<name>/test.jsonl, train/math_test_full.jsonl)
    with the fields the hub's copy has (docs/data.md). DeepScaleR has no copy here:
    its stand-in holds the MATH test problems in its layout (problem, answer, solution)."""
    from shared.datasets.rows import last_boxed

    gsm8k = root / "openai" / "gsm8k"
    _parquet(
        gsm8k / "main" / "test-00000-of-00001.parquet",
        _keep(_harness(source, "gsm8k"), "question", "answer"),
    )
    # The hub's card declares its configs; a copy with it must read the same.
    (gsm8k / "README.md").write_text(
        "---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n"
        "    path: main/train-*\n  - split: test\n    path: main/test-*\n---\n# GSM8K\n"
    )
    _jsonl(root / "HuggingFaceH4" / "MATH-500" / "test.jsonl", _harness(source, "math500"))
    _parquet(
        root / "HuggingFaceH4" / "aime_2024" / "data" / "train-00000-of-00001.parquet",
        _keep(
            _harness(source, "aime24"), "id", "problem", "solution", "answer", "url", year="2024"
        ),
    )
    _parquet(
        root / "math-ai" / "amc23" / "test-00000-of-00001.parquet",
        _keep(_harness(source, "amc23"), "id", "question", "answer", "url"),
    )
    _parquet(
        root / "tongyx361" / "svamp" / "data" / "test-00000-of-00001.parquet",
        _keep(_harness(source, "svamp"), "ID", "Body", "Question", "Equation", "Answer", "Type"),
    )
    tabmwp = root / "Arietem" / "tabmwp" / "problems_test1k.json"
    tabmwp.parent.mkdir(parents=True, exist_ok=True)
    keyed = {
        row["pid"]: {k: v for k, v in row.items() if k != "pid"}
        for row in _harness(source, "tabmwp")
    }
    tabmwp.write_text(json.dumps(keyed, indent=2))
    _jsonl(
        root / "MARIO-Math-Reasoning" / "Gaokao2023-Math-En" / "Gaokao2023-Math-En.jsonl",
        _keep(_harness(source, "gaokao2023en"), "question", "answer", "lang", "source"),
    )
    math = [json.loads(line) for line in (source / "train" / "math_test_full.jsonl").open()]
    _parquet(
        root / "DigitalLearningGmbH" / "MATH-lighteval" / "data" / "test-00000-of-00001.parquet",
        _keep(math, "problem", "level", "solution", "type"),
    )
    deepscaler = root / "agentica-org" / "DeepScaleR-Preview-Dataset" / "deepscaler.json"
    deepscaler.parent.mkdir(parents=True, exist_ok=True)
    stand_in = [
        {"problem": r["problem"], "answer": last_boxed(r["solution"]), "solution": r["solution"]}
        for r in math
    ]
    deepscaler.write_text(json.dumps(stand_in, indent=1))
    return root


@pytest.fixture(scope="session")
def hub_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hub_copy(tmp_path_factory.mktemp("hub"))


@pytest.fixture(scope="session")
def data_settings(hub_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> DataSettings:
    return DataSettings(local_dir=hub_copy, cache_dir=tmp_path_factory.mktemp("datasets-cache"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with slow tests first, so that under `make test`'s two workers (whole files each,
    in this order: `--no-loadscope-reorder`) the longest ones do not start last and run alone."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: file order otherwise kept
