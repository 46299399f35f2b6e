"""Training shards: JSON Lines files that `datasets` loads, registered in the database.

The sampler writes them (``write``), the trainer reads them; both check rows against
``ShardSample``. A shard is one or more JSON Lines files (UTF-8, one JSON object per line, no blank
lines). Each row is one training sample in TRL's *conversational prompt-completion* format, plus
provenance::

    {"prompt": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}],
     "completion": [{"role": "assistant", "content": "..."}],
     "source": "multi-turn" | "rejection",
     "run_id": "...", "problem_id": "...", "sample_id": "..."}

- ``prompt``: one or more messages with role ``system`` or ``user`` (the source marker, when
  rendered as a system prompt, is already in it).
- ``completion``: one or more ``assistant`` messages; the loss is computed on these only.
- ``source``, ``run_id``, ``problem_id``, ``sample_id``: provenance; removed before training.
- Other keys are allowed and ignored.

The row count and sha256 of every file go into the ``shards`` table and into the manifest
published on ``training-shards``; the trainer checks them before training. The files are loaded
with ``datasets.load_dataset("json", data_files=...)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.core.db import CheckpointRow, ShardRow, insert_ignore
from shared.core.messages import ShardFile, ShardManifest
from shared.core.runs import sampling_checkpoint

Stage = Literal["phase1", "phase2", "joint", "oracle"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class ShardSample(BaseModel):
    """One line of a shard file (see the module docstring)."""

    model_config = ConfigDict(extra="ignore")

    prompt: list[ChatMessage] = Field(min_length=1)
    completion: list[ChatMessage] = Field(min_length=1)
    source: Literal["multi-turn", "rejection", "oracle"]
    run_id: str
    problem_id: str
    sample_id: str


def shard_id(run_id: str, stage: Stage) -> str:
    return f"{run_id}:{stage}"


def shard_path(data_dir: Path, run_id: str, stage: Stage) -> Path:
    return Path(data_dir).resolve() / "shards" / run_id / f"{stage}.jsonl"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> ShardFile:
    """Write rows atomically (temp file + rename), so a reader never sees half a shard."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return ShardFile(path=str(path), rows=len(rows), sha256=sha256_file(path))


def write(
    session: Session, data_dir: Path, run_id: str, stage: Stage, rows: list[dict]
) -> list[ShardFile]:
    """Check every row against ``ShardSample``, write the shard file and register it."""
    for row in rows:
        ShardSample.model_validate(row)
    files = [write_jsonl(rows, shard_path(data_dir, run_id, stage))]
    register(session, run_id, stage, files)
    return files


def register(session: Session, run_id: str, stage: Stage, files: list[ShardFile]) -> None:
    """Record the files of a shard (a second call with the same files changes nothing)."""
    sid = shard_id(run_id, stage)
    insert_ignore(
        session,
        ShardRow,
        [
            dict(
                run_id=run_id, shard_id=sid, stage=stage, path=f.path, rows=f.rows, sha256=f.sha256
            )
            for f in files
        ],
    )


def registered(session: Session, run_id: str, stage: Stage) -> list[ShardFile]:
    """The files recorded for a shard (empty if it was never written)."""
    rows = session.scalars(
        select(ShardRow).where(ShardRow.shard_id == shard_id(run_id, stage)).order_by(ShardRow.id)
    ).all()
    return [ShardFile(path=r.path, rows=r.rows, sha256=r.sha256) for r in rows]


def manifest(session: Session, run_id: str, stage: Stage, base_model: str) -> ShardManifest:
    """The announcement of a registered shard. Training starts from ``base_model`` (M0), except
    for a sequential phase-2 shard, which continues from the run's M1."""
    files = registered(session, run_id, stage)
    start, parent = base_model, ""
    if stage == "phase2":
        m1 = sampling_checkpoint(session, run_id)
        assert m1 is not None  # a phase-2 shard is sealed after M1's samples
        start, parent = m1.path, m1.id
    return ShardManifest(
        run_id=run_id,
        shard_id=shard_id(run_id, stage),
        stage=stage,
        base_model=start,
        parent_checkpoint_id=parent,
        files=files,
    )


def trained(session: Session, shard: str) -> bool:
    """Whether a checkpoint was trained on the shard (ready) or failed on it (an operator's case,
    not a retry's). A row left at ``training`` by a trainer that crashed does not count."""
    return bool(
        session.scalar(
            select(func.count()).where(
                CheckpointRow.shard_id == shard, CheckpointRow.status.in_(["ready", "failed"])
            )
        )
    )


def verify(file: ShardFile) -> None:
    """Raise if a shard file is missing or differs from its manifest entry (rows or sha256)."""
    path = Path(file.path)
    if not path.is_file():
        raise FileNotFoundError(f"shard file {path} is missing")
    if (digest := sha256_file(path)) != file.sha256:
        raise ValueError(f"shard file {path}: sha256 {digest} != manifest {file.sha256}")
    with path.open() as f:
        rows = sum(1 for line in f if line.strip())
    if rows != file.rows:
        raise ValueError(f"shard file {path}: {rows} rows != manifest {file.rows}")


def read_rows(paths: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Every row of a shard's files (their paths), in order."""
    for path in paths:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    yield json.loads(line)
