"""A run's data as Hugging Face datasets: its training shards and its evaluation samples.

``export_run`` writes one Parquet config per shard stage (the rows as the trainer read them:
prompt and completion chat lists with their provenance) and one for the graded evaluation
samples, and a dataset card (README.md) whose YAML front matter names the configs, so that

    datasets.load_dataset(str(folder), "joint", split="train")

loads a config from the folder, or from the Hub after ``push_to_hub``. Rows are streamed from the
shard files and the database into Arrow and then Parquet, never held in memory all at once. A
table with no rows (phase 1 of a model too small to keep any dialogue) gets no config: an empty
Parquet file does not load; the card lists it with 0 rows.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from datasets import Dataset, Features, List, Value
from huggingface_hub import HfApi
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dualphase.report import Labels
from shared.core import shards
from shared.core.db import (
    EvalResult,
    EvalSampleRow,
    Problem,
    Run,
    ShardRow,
    make_engine,
    make_sessionmaker,
)
from shared.core.messages import ShardFile
from shared.core.settings import Settings

CHAT = List({"role": Value("string"), "content": Value("string")})
SHARD_FEATURES = Features(
    {
        "prompt": CHAT,
        "completion": CHAT,
        "source": Value("string"),
        "run_id": Value("string"),
        "problem_id": Value("string"),
        "sample_id": Value("string"),
    }
)
EVAL_FEATURES = Features(
    {
        "run_id": Value("string"),
        "checkpoint_id": Value("string"),
        "stage": Value("string"),
        "benchmark": Value("string"),
        "mode": Value("string"),
        "problem_id": Value("string"),
        "sample": Value("int32"),
        "turns": List(Value("string")),
        "tokens": Value("int32"),
        "extracted": Value("string"),
        "correct": Value("bool"),
    }
)
EVAL_CONFIG = "eval"
WHAT = {
    "phase1": "phase 1: the balanced long chains of thought of the three-turn dialogues",
    "phase2": "phase 2: rejection-sampled solutions of M1 (sequential mode)",
    "joint": "phase 1 and phase 2 merged under their source markers (M2's training data)",
    "oracle": "the arm, the base model fine-tuned on given solutions",  # + its source, see card
    EVAL_CONFIG: "every graded evaluation sample of every model and mode",
}


def _shard_rows(files: list[ShardFile]) -> Iterator[dict[str, Any]]:
    for row in shards.read_rows(f.path for f in files):  # other keys of a row are allowed: left out
        yield {name: row[name] for name in SHARD_FEATURES}


def _eval_rows(url: str, run_id: str, labels: Labels) -> Iterator[dict[str, Any]]:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        rows = session.scalars(
            select(EvalSampleRow)
            .where(EvalSampleRow.run_id == run_id)
            .order_by(EvalSampleRow.id)
            .execution_options(yield_per=500)
        )
        for r in rows:
            row = {name: getattr(r, name) for name in EVAL_FEATURES if name != "stage"}
            yield row | {"stage": labels.stage(r.checkpoint_id)}
    engine.dispose()


def _write(path: Path, generator: Any, kwargs: dict[str, Any], features: Features) -> None:
    # A fresh cache per export: datasets would reuse an older Arrow file of the same generator.
    with tempfile.TemporaryDirectory() as cache:
        data = Dataset.from_generator(
            generator, features=features, gen_kwargs=kwargs, cache_dir=cache
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        data.to_parquet(str(path))


def export_run(
    settings: Settings, run_id: str, to: Path, push_to_hub: str | None = None
) -> list[Path]:
    """Write the run's shards and evaluation samples as Parquet configs with a dataset card into
    ``to``; push the folder to the Hub dataset repo ``push_to_hub`` (created private if new).
    Returns the files written. Raises ValueError for an unknown run, and what ``shards.verify``
    raises for a shard file that differs from its registration."""
    url = settings.common.resolved_database_url()
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise ValueError(f"run {run_id!r} is not in the database {url}")
        files = session.scalars(
            select(ShardRow).where(ShardRow.run_id == run_id).order_by(ShardRow.id)
        ).all()
        labels = Labels(session, run_id)
        n_eval = session.scalar(select(func.count()).where(EvalSampleRow.run_id == run_id))
        facts = _facts(session, run, labels)
    engine.dispose()
    by_stage: dict[str, list[ShardFile]] = {}
    for row in files:
        file = ShardFile(path=row.path, rows=row.rows, sha256=row.sha256)
        shards.verify(file)  # the rows exported are the rows the trainer checked and read
        by_stage.setdefault(row.stage, []).append(file)
    counts = {stage: sum(f.rows for f in fs) for stage, fs in by_stage.items()}
    counts[EVAL_CONFIG] = n_eval or 0
    to.mkdir(parents=True, exist_ok=True)
    written = []
    for stage, fs in by_stage.items():
        if counts[stage]:
            path = to / stage / "train.parquet"
            _write(path, _shard_rows, {"files": fs}, SHARD_FEATURES)
            written.append(path)
    if counts[EVAL_CONFIG]:
        path = to / EVAL_CONFIG / "train.parquet"
        _write(path, _eval_rows, {"url": url, "run_id": run_id, "labels": labels}, EVAL_FEATURES)
        written.append(path)
    card = to / "README.md"
    card.write_text(dataset_card(run, counts, facts), encoding="utf-8")
    written.append(card)
    if push_to_hub:
        _push(to, push_to_hub)
    return written


def _facts(session: Session, run: Run, labels: Labels) -> dict[str, Any]:
    """What the card says about the run beyond its rows: problems per phase, the results (each
    model as the run's report names it), the arm's source."""
    per_phase = select(Problem.phase, func.count()).where(Problem.run_id == run.id)
    phases = dict(session.execute(per_phase.group_by(Problem.phase)).all())
    results = session.scalars(
        select(EvalResult).where(EvalResult.run_id == run.id).order_by(EvalResult.id)
    )
    rows = [
        [labels.label(r.checkpoint_id, r.mode), r.benchmark, r.mode, r.problems]
        + [r.samples, f"{100 * r.accuracy:.1f}"]
        for r in results
    ]
    return {"phases": phases, "results": rows, "arm": labels.arm}


def _what(config: str, facts: dict[str, Any]) -> str:
    what = WHAT.get(config, config)
    return f"{what}: {facts['arm']}" if config == "oracle" else what


def dataset_card(run: Run, counts: dict[str, int], facts: dict[str, Any]) -> str:
    """README.md: YAML front matter (the configs and their files), then what the data is."""
    configs = [
        {"config_name": name, "data_files": [{"split": "train", "path": f"{name}/*.parquet"}]}
        for name, rows in counts.items()
        if rows
    ]
    front = {
        "pretty_name": f"dualphase run {run.id}",
        "tags": ["math", "reasoning", "synthetic", "self-improvement"],
        "configs": configs,
    }
    model = run.config.get("inference", {}).get("model", "")
    example = configs[0]["config_name"] if configs else EVAL_CONFIG
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# dualphase run `{run.id}`",
        "",
        'Data made by a run of dualphase, an implementation of "Dual-Phase LLM Reasoning: '
        "Self-Evolved Mathematical Frameworks\": the model's own filtered long chains of thought "
        "(phase 1) and rejection-sampled solutions (phase 2), and its evaluation samples.",
        "",
        f"- model: `{model}`",
        f"- run status: {run.status}, created {run.created_at:%Y-%m-%d %H:%M}, seed {run.seed}",
        f"- problems: {facts['phases'].get(1, 0)} in phase 1, {facts['phases'].get(2, 0)} in "
        "phase 2",
        "",
        "## Configurations",
        "",
        "| config | what | rows |",
        "|---|---|---|",
        *(
            f"| `{name}` | {_what(name, facts)} | {rows}{'' if rows else ' (not exported)'} |"
            for name, rows in counts.items()
        ),
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'data = load_dataset("<this folder or Hub repo>", "{example}", split="train")',
        "```",
        "",
    ]
    if facts["results"]:
        lines += [
            "## Evaluation results",
            "",
            "| model | benchmark | mode | problems | samples | pass@1 (%) |",
            "|---|---|---|---|---|---|",
            *("| " + " | ".join(str(c) for c in row) + " |" for row in facts["results"]),
            "",
        ]
    lines += [
        "## Settings snapshot",
        "",
        "The run's settings at submission (`runs.config`):",
        "",
        "```yaml",
        yaml.safe_dump(run.config, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _push(folder: Path, repo: str) -> None:
    api = HfApi()
    api.create_repo(repo, repo_type="dataset", private=True, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="dataset")
