"""Export: a real run's shards and evaluation samples as Parquet configs with a dataset card, read
back with `datasets` and compared with the shard files and the database."""

from __future__ import annotations

import uuid
from pathlib import Path

import datasets
import pytest
import yaml
from browse_run import build_run, settings_for
from conftest import create_schema
from sqlalchemy import select

from dualphase.export import EVAL_FEATURES, SHARD_FEATURES, export_run
from shared.core import shards
from shared.core.db import EvalSampleRow, Run, make_engine, make_sessionmaker
from shared.core.settings import Settings


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings on a database of each kind, data in tmp_path."""
    settings = settings_for(tmp_path)
    if request.param == "postgres":
        settings.common.database_url = request.getfixturevalue("pg_url")
    else:
        settings.common.database_url = f"sqlite:///{tmp_path / 'run.db'}"
        create_schema(settings.common.database_url)
    return settings


def front_matter(card: str) -> dict:
    _, front, _ = card.split("---\n", 2)
    return yaml.safe_load(front)


def test_export_writes_configs_that_load_back_equal_to_the_shards_and_the_database(
    database: Settings, tmp_path: Path
) -> None:
    run_id = build_run(database.common.database_url, tmp_path).run_id
    out = tmp_path / "export"
    export_run(database, run_id, out)

    sessions = make_sessionmaker(make_engine(database.common.database_url))
    with sessions() as session:
        run = session.get(Run, run_id)
        samples = session.scalars(
            select(EvalSampleRow).where(EvalSampleRow.run_id == run_id).order_by(EvalSampleRow.id)
        ).all()
        files = {stage: shards.registered(session, run_id, stage) for stage in ("phase1", "joint")}
    card = (out / "README.md").read_text()
    configs = [c["config_name"] for c in front_matter(card)["configs"]]
    assert configs == ["phase1", "joint", "eval"]

    cache = str(tmp_path / "hf-cache")
    for stage, registered in files.items():
        loaded = datasets.load_dataset(str(out), stage, split="train", cache_dir=cache)
        assert loaded.column_names == list(SHARD_FEATURES)
        paths = [f.path for f in registered]
        rows = [{k: row[k] for k in SHARD_FEATURES} for row in shards.read_rows(paths)]
        assert loaded.to_list() == rows and len(rows) == sum(f.rows for f in registered)
    assert {r["source"] for r in rows} == {"multi-turn", "rejection"}  # the joint shard

    loaded = datasets.load_dataset(
        "parquet", data_files=str(out / "eval" / "*.parquet"), split="train", cache_dir=cache
    )
    assert loaded.column_names == list(EVAL_FEATURES)
    stages = {"base": "M0", f"{run_id}-m1": "M1", f"{run_id}-m2": "M2"}
    expected = [
        {k: getattr(s, k) for k in EVAL_FEATURES if k != "stage"}
        | {"stage": stages[s.checkpoint_id]}
        for s in samples
    ]
    assert [{k: row[k] for k in EVAL_FEATURES} for row in loaded] == expected

    assert f"# dualphase run `{run_id}`" in card
    assert f"- model: `{run.config['inference']['model']}`" in card
    assert "| `joint` |" in card and "| 6 |" in card
    snapshot = card.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(snapshot) == run.config


def test_an_empty_shard_is_named_in_the_card_without_a_config(
    database: Settings, tmp_path: Path
) -> None:
    """An empty Parquet file does not load, so a shard without rows gets no config."""
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    sessions = make_sessionmaker(make_engine(database.common.database_url))
    with sessions.begin() as session:
        session.add(Run(id=run_id, config=database.model_dump(mode="json")))
        session.flush()
        shards.write(session, database.common.data_dir, run_id, "phase1", [])
    export_run(database, run_id, tmp_path / "export")
    card = (tmp_path / "export" / "README.md").read_text()
    assert front_matter(card)["configs"] == []
    assert "| `phase1` |" in card and "| 0 (not exported) |" in card
    assert not (tmp_path / "export" / "phase1").exists()


def test_export_refuses_a_shard_file_changed_since_it_was_registered(
    database: Settings, tmp_path: Path
) -> None:
    run_id = build_run(database.common.database_url, tmp_path).run_id
    with make_sessionmaker(make_engine(database.common.database_url))() as session:
        (joint,) = shards.registered(session, run_id, "joint")
    with open(joint.path, "a") as f:
        f.write('{"prompt": []}\n')
    with pytest.raises(ValueError, match="sha256"):
        export_run(database, run_id, tmp_path / "export")
    with pytest.raises(ValueError, match="run 'run-none' is not in the database"):
        export_run(database, "run-none", tmp_path / "export")
