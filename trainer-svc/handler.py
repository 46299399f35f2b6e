"""trainer-svc logic: check a shard, train on it, record the checkpoint and publish it.

One ``ShardManifest`` is one training job:

1. ``check_shard``: every file exists, has the manifest's sha256 and row count, and every row
   is a valid ``ShardSample``; otherwise a ``PermanentError`` names the file, line and field (the
   bus sends the message to the DLQ and goes on; the checkpoint row says ``failed`` and why).
2. ``train_shard``: train in this process (CPU or one GPU) or under ``accelerate launch`` (more
   than one GPU). Joint mode and sequential mode differ only in ``manifest.base_model``: the base
   model, or the phase-1 checkpoint that the sampler names.
3. ``handle_manifest``: record the checkpoint in the database, then publish it on ``checkpoints``.

Idempotency: the model of a shard is written under a folder keyed by the shard id, with a DONE
marker written last. A redelivered manifest whose shard has DONE is not trained again: its
checkpoint is recorded and published again (the first delivery may have crashed in between). A
restart during training resumes from the last saved step.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from shared.core import shards
from shared.core.bus import RETRYABLE, PermanentError
from shared.core.db import CheckpointRow, insert_ignore
from shared.core.messages import CHECKPOINTS, CheckpointReady, Message, ShardFile, ShardManifest
from shared.core.settings import Settings, TrainerSettings
from shared.inference.hardware import claim_threads
from shared.inference.model import resolve_model
from shared.method.markers import checkpoint_prompt, write_prompt_manifest
from shared.method.prompts import load_prompts
from trainer_svc.train import PROGRESS, TrainJob, TrainResult, read_done, train

log = logging.getLogger(__name__)

# Labelled by run and stage (M1, M2, oracle), so two runs or two stages are told apart.
TRAIN_LOSS = Gauge(
    "dualphase_train_loss", "Training loss at the latest logged update.", ["run", "stage"]
)
TRAIN_TOKENS_PER_S = Gauge(
    "dualphase_train_tokens_per_second",
    "Training tokens (no padding) per second, latest log.",
    ["run", "stage"],
)
TRAIN_PROGRESS = Gauge(
    "dualphase_train_progress", "Share of the current job's updates done.", ["run", "stage"]
)
TRAIN_STEP = Gauge("dualphase_train_step", "Update step of the training job.", ["run", "stage"])
TRAIN_JOBS = Counter(
    "dualphase_train_jobs",
    "Training jobs finished, by outcome (trained, skipped, failed).",
    ["outcome"],
)


@dataclass
class TrainerStats:
    """What /status shows: job counts and the progress of the job in hand."""

    trained: int = 0
    skipped: int = 0
    failed: int = 0
    current: dict[str, Any] = field(default_factory=dict)
    labels: tuple[str, str] = ("", "")  # run and stage of the job in hand

    def report(self, progress: dict[str, Any]) -> None:
        """Progress callback of a training run (see trainer_svc.train.ProgressCallback)."""
        self.current.update(progress)
        TRAIN_LOSS.labels(*self.labels).set(progress["loss"])
        TRAIN_TOKENS_PER_S.labels(*self.labels).set(progress["tokens_per_s"])
        TRAIN_STEP.labels(*self.labels).set(progress["step"])
        TRAIN_PROGRESS.labels(*self.labels).set(progress["step"] / max(progress["max_steps"], 1))

    def as_dict(self) -> dict[str, Any]:
        return {
            "trained": self.trained,
            "skipped": self.skipped,
            "failed": self.failed,
            "current": dict(self.current),
        }


def check_shard(files: list[ShardFile]) -> None:
    """Raise PermanentError naming the file, line and field of the first problem found."""
    if not files:
        raise PermanentError("shard manifest lists no files")
    for file in files:
        try:
            shards.verify(file)  # exists, sha256, row count
        except (OSError, ValueError) as error:
            raise PermanentError(str(error)) from error
        with open(file.path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                try:
                    shards.ShardSample.model_validate_json(line)
                except ValidationError as error:
                    raise PermanentError(f"{file.path}:{number}: {_describe(error)}") from error


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"field '{where}': {first['msg']}" if where else first["msg"]


def checkpoint_id(manifest: ShardManifest) -> str:
    return f"{manifest.shard_id}:{checkpoint_stage(manifest)}"


def checkpoint_stage(manifest: ShardManifest) -> str:
    """Phase-1 data makes M1; phase-2 data (sequential) and merged data (joint) make M2."""
    return {"phase1": "M1", "oracle": "oracle"}.get(manifest.stage, "M2")


def output_dir(data_dir: Path, manifest: ShardManifest) -> Path:
    return Path(data_dir).resolve() / "checkpoints" / manifest.shard_id.replace(":", "-")


def train_shard(
    manifest: ShardManifest, settings: Settings, report: Callable[[dict[str, Any]], None]
) -> TrainResult:
    """Check the shard, then train (or return the earlier result of the same shard)."""
    out = output_dir(settings.common.data_dir, manifest)
    if done := read_done(out):
        return done
    check_shard(manifest.files)
    model = resolve_model(manifest.base_model, settings.inference)
    if not any(f.rows for f in manifest.files):
        # Nothing survived filtering and balancing (a tiny model may never be wrong-then-right):
        # the next stage starts from the unchanged model rather than the pipeline stopping here.
        log.warning("shard %s has no rows: the checkpoint is the base model", manifest.shard_id)
        return TrainResult(
            shard_id=manifest.shard_id,
            path=model,
            adapter=False,
            base_model=model,
            global_step=0,
            resumed_from_step=0,
            steps_this_run=0,
            train_loss=0.0,
            tokens=0,
            tokens_per_s=0.0,
            train_seconds=0.0,
            config={"skipped": "empty shard"},
        )
    job = TrainJob(
        shard_id=manifest.shard_id,
        files=[f.path for f in manifest.files],
        model=model,
        output_dir=out,
        settings=settings.trainer,
    )
    if settings.trainer.num_gpus > 1:
        return launch_accelerate(job, settings.trainer, report)
    with claim_threads(settings.trainer.threads) as threads:
        log.info("%s: %d torch threads", manifest.shard_id, threads)
        return train(job, report)


def launch_accelerate(
    job: TrainJob, settings: TrainerSettings, report: Callable[[dict[str, Any]], None]
) -> TrainResult:
    """Train under ``accelerate launch`` (one process per GPU), relaying the child's progress."""
    job.output_dir.mkdir(parents=True, exist_ok=True)
    job_file = job.output_dir / "job.json"
    job_file.write_text(job.model_dump_json())
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(settings.accelerate_config),
        "--num_processes",
        str(settings.num_gpus),
        "-m",
        "trainer_svc.train",
        str(job_file),
    ]
    child = subprocess.Popen(command)
    while child.poll() is None:
        time.sleep(2)
        progress = job.output_dir / PROGRESS
        if progress.is_file():
            report(json.loads(progress.read_text()))
    result = read_done(job.output_dir)
    if child.returncode != 0 or result is None:
        raise RuntimeError(f"accelerate launch exited with code {child.returncode}: {command}")
    return result


def write_checkpoint_prompt(model_dir: Path, manifest: ShardManifest, settings: Settings) -> None:
    """Beside the weights: the prompt the checkpoint is sampled and evaluated with. It follows
    from its stage and the settings, not from the sources its shard happened to hold."""
    system = load_prompts(settings.generator.prompt_version).system
    prompt = checkpoint_prompt(checkpoint_stage(manifest), system, settings.sampler)
    write_prompt_manifest(model_dir, prompt)


def handle_manifest(
    manifest: ShardManifest,
    settings: Settings,
    sessions: sessionmaker[Session],
    publish: Callable[[str, Message], None],
    stats: TrainerStats,
) -> None:
    """Train one shard; record the checkpoint (training -> ready or failed) and publish it."""
    ckpt_id = checkpoint_id(manifest)
    with sessions.begin() as session:
        insert_ignore(
            session,
            CheckpointRow,
            [
                dict(
                    id=ckpt_id,
                    run_id=manifest.run_id,
                    stage=checkpoint_stage(manifest),
                    path="",
                    parent_id=manifest.parent_checkpoint_id,
                    shard_id=manifest.shard_id,
                    status="training",
                    error="",
                    training_config={},
                )
            ],
        )
    already_done = read_done(output_dir(settings.common.data_dir, manifest)) is not None
    stats.current = {"shard_id": manifest.shard_id, "checkpoint_id": ckpt_id}
    stats.labels = (manifest.run_id, checkpoint_stage(manifest))
    try:
        result = train_shard(manifest, settings, stats.report)
    except RETRYABLE:
        raise
    except Exception as error:
        with sessions.begin() as session:
            row = session.get_one(CheckpointRow, ckpt_id)
            row.status, row.error = "failed", f"{type(error).__name__}: {error}"
        stats.failed += 1
        TRAIN_JOBS.labels("failed").inc()
        raise
    finally:
        stats.current = {}
    if "skipped" not in result.config:  # a trained model: the prompt it is used with, beside it
        write_checkpoint_prompt(Path(result.path), manifest, settings)
    with sessions.begin() as session:
        row = session.get_one(CheckpointRow, ckpt_id)
        row.path, row.status, row.error = result.path, "ready", ""
        row.training_config = {
            **result.model_dump(mode="json"),
            "base_model": manifest.base_model,
            "files": [f.model_dump() for f in manifest.files],
        }
    if already_done:
        stats.skipped += 1
    else:
        stats.trained += 1
    TRAIN_JOBS.labels("skipped" if already_done else "trained").inc()
    publish(
        CHECKPOINTS,
        CheckpointReady(
            run_id=manifest.run_id,
            checkpoint_id=ckpt_id,
            stage=checkpoint_stage(manifest),
            path=result.path,
            parent_checkpoint_id=manifest.parent_checkpoint_id,
            shard_id=manifest.shard_id,
        ),
    )
