"""trainer-svc: real SFT of the embedded model on a small real shard, on CPU.

Proves: a fine-tuned checkpoint reloads, generates and fits its shard better than the base model;
a shard already trained is not trained again; training killed with SIGKILL resumes from its last
saved step; a bad shard fails with an error naming file, line and field, goes to the DLQ and into
the database, and the service goes on with the next message.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from kafka import KafkaConsumer
from prometheus_client import REGISTRY
from sqlalchemy import select
from transformers import AutoModelForCausalLM, AutoTokenizer

from shared.core.bus import PermanentError, Publisher, ensure_topics, topic_name
from shared.core.consumer import Consumer
from shared.core.db import CheckpointRow, make_engine, make_sessionmaker
from shared.core.messages import (
    CHECKPOINTS,
    TRAINING_SHARDS,
    CheckpointReady,
    DeadLetter,
    ShardFile,
    ShardManifest,
)
from shared.core.settings import CommonSettings, InferenceConfig, Settings, TrainerSettings
from shared.core.shards import sha256_file, write_jsonl
from shared.inference.model import resolve_model
from trainer_svc.handler import (
    TrainerStats,
    check_shard,
    checkpoint_id,
    handle_manifest,
    train_shard,
)
from trainer_svc.train import (
    TrainJob,
    TrainResult,
    completion_loss,
    last_complete_checkpoint,
    train,
)

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
MATH = DATASETS / "train" / "math_test_full.jsonl"
TIMEOUT_S = 300.0  # hang guard only


def math_rows(n: int, max_chars: int = 400) -> list[dict[str, Any]]:
    """Shard rows from real MATH problems and their reference solutions (short ones)."""
    rows = []
    with MATH.open() as f:
        for line in f:
            item = json.loads(line)
            if len(item["problem"]) + len(item["solution"]) > max_chars:
                continue
            rows.append(
                {
                    "prompt": [
                        {"role": "system", "content": "Solve the problem step by step."},
                        {"role": "user", "content": item["problem"]},
                    ],
                    "completion": [{"role": "assistant", "content": item["solution"]}],
                    "source": "multi-turn",
                    "run_id": "r",
                    "problem_id": str(item["idx"]),
                    "sample_id": f"{item['idx']}-0",
                }
            )
            if len(rows) == n:
                return rows
    raise AssertionError(f"{MATH} has fewer than {n} short problems")


def tiny(**overrides: Any) -> TrainerSettings:
    """The cpu-tiny preset, smaller still: a few updates on 128-token sequences."""
    sft: dict[str, Any] = dict(
        max_length=128,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=3,
        save_steps=100,
    )
    return TrainerSettings(preset="cpu-tiny", sft={**sft, **overrides})


def manifest_for(files: list[ShardFile], shard_id: str = "r:joint") -> ShardManifest:
    return ShardManifest(
        run_id="r", shard_id=shard_id, stage="joint", base_model="embedded", files=files
    )


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a CPU shared with parallel test runs, OpenMP threads spin-waiting
    for each other make two threads several times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Trained:
    settings: Settings
    manifest: ShardManifest
    result: TrainResult
    rows: list[dict[str, Any]]
    progress: list[dict[str, Any]]
    stats: TrainerStats


LABELS = {"run": "run-t", "stage": "m1"}  # the training gauges are per run and stage


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The embedded model fine-tuned once on a 16-row real shard (shared by the module)."""
    data_dir = tmp_path_factory.mktemp("trained")
    rows = math_rows(16)
    shard = write_jsonl(rows, data_dir / "shards" / "joint.jsonl")
    settings = Settings(common=CommonSettings(data_dir=data_dir), trainer=tiny())
    manifest = manifest_for([shard])
    progress: list[dict[str, Any]] = []
    stats = TrainerStats()
    stats.labels = (LABELS["run"], LABELS["stage"])

    def report(update: dict[str, Any]) -> None:
        progress.append(update)
        stats.report(update)

    result = train_shard(manifest, settings, report)
    return Trained(settings, manifest, result, rows, progress, stats)


def test_training_reports_loss_tokens_per_second_and_progress(trained: Trained) -> None:
    assert [p["step"] for p in trained.progress] == [1, 2, 3], "one report per logged update"
    assert all(p["loss"] > 0 and p["tokens_per_s"] > 0 for p in trained.progress)
    current = trained.stats.as_dict()["current"]
    assert current["step"] == current["max_steps"] == 3
    assert REGISTRY.get_sample_value("dualphase_train_step", LABELS) == 3
    assert REGISTRY.get_sample_value("dualphase_train_progress", LABELS) == 1.0
    assert REGISTRY.get_sample_value("dualphase_train_loss", LABELS) == trained.progress[-1]["loss"]
    assert REGISTRY.get_sample_value("dualphase_train_tokens_per_second", LABELS) > 0


def test_fine_tuned_checkpoint_reloads_generates_and_fits_its_shard_better(
    trained: Trained,
) -> None:
    settings, result, rows = trained.settings, trained.result, trained.rows
    assert result.global_step == 3 and result.steps_this_run == 3 and not result.adapter
    assert result.tokens > 0 and result.config["sft"]["packing"] is True

    model = AutoModelForCausalLM.from_pretrained(result.path)
    tokenizer = AutoTokenizer.from_pretrained(result.path)
    prompt = tokenizer.apply_chat_template(
        rows[0]["prompt"], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip(), "the fine-tuned model generates text"

    base = resolve_model("embedded", settings.inference)
    assert completion_loss(result.path, rows) < completion_loss(base, rows)


def test_shard_already_trained_is_not_trained_again(
    trained: Trained,
) -> None:
    settings, manifest, result = trained.settings, trained.manifest, trained.result
    progress: list[dict[str, Any]] = []
    again = train_shard(manifest, settings, progress.append)
    assert again == result
    assert progress == [], "no training step ran"
    assert not (Path(result.path).parent / "steps").exists(), "resumable state is removed"


def test_training_killed_with_sigkill_resumes_from_last_saved_step(tmp_path: Path) -> None:
    shard = write_jsonl(math_rows(16), tmp_path / "shard.jsonl")
    job = TrainJob(
        shard_id="r:joint",
        files=[shard.path],
        output_dir=tmp_path / "out",
        model=resolve_model("embedded", InferenceConfig()),
        settings=tiny(max_steps=4, save_steps=1).model_copy(
            update={"lora": True, "lora_config": {"r": 8, "lora_alpha": 16}}
        ),
    )
    job_file = tmp_path / "job.json"
    job_file.write_text(job.model_dump_json())
    steps_dir = job.output_dir / "steps"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with (tmp_path / "child.log").open("w") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "trainer_svc.train", str(job_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + TIMEOUT_S
        while not (steps_dir / "checkpoint-1" / "trainer_state.json").is_file():
            log_text = (tmp_path / "child.log").read_text
            assert child.poll() is None, f"child exited early: {log_text()}"
            assert time.monotonic() < deadline, "no checkpoint saved in time"
            time.sleep(0.2)
        child.send_signal(signal.SIGKILL)
        child.wait()

    killed_at = last_complete_checkpoint(steps_dir)
    assert killed_at is not None and not (job.output_dir / "DONE").exists()
    saved_step = int(killed_at.name.split("-")[1])
    assert 1 <= saved_step < 4, "killed before training finished"

    result = train(job)
    assert result.resumed_from_step == saved_step
    assert result.steps_this_run == 4 - saved_step, "resumed, not restarted from step 0"
    assert result.global_step == 4
    merged = AutoModelForCausalLM.from_pretrained(result.path)  # LoRA merged: a plain model
    assert not any("lora" in name for name, _ in merged.named_parameters())


def _bad_shard_cases(tmp: Path) -> list[tuple[list[ShardFile], list[str]]]:
    """(manifest files, words the error must contain) for each kind of bad shard."""
    good = write_jsonl(math_rows(3), tmp / "good.jsonl")
    lines = (tmp / "good.jsonl").read_text().splitlines()

    def shard(name: str, text: str) -> ShardFile:
        path = tmp / name
        path.write_text(text)
        return ShardFile(path=str(path), rows=text.count("\n"), sha256=sha256_file(path))

    no_completion = json.loads(lines[1])
    del no_completion["completion"]
    bad_role = json.loads(lines[2])
    bad_role["completion"][0]["role"] = "robot"
    return [
        ([good.model_copy(update={"path": str(tmp / "gone.jsonl")})], ["gone.jsonl", "missing"]),
        ([good.model_copy(update={"sha256": "0" * 64})], ["good.jsonl", "sha256"]),
        ([good.model_copy(update={"rows": 4})], ["good.jsonl", "3 rows", "4"]),
        ([shard("json.jsonl", f"{lines[0]}\n{{not json\n")], ["json.jsonl:2", "JSON"]),
        (
            [shard("field.jsonl", f"{lines[0]}\n{json.dumps(no_completion)}\n")],
            ["field.jsonl:2", "'completion'", "required"],
        ),
        (
            [good, shard("role.jsonl", f"{lines[0]}\n{lines[1]}\n{json.dumps(bad_role)}\n")],
            ["role.jsonl:3", "completion.0.role"],
        ),
        ([], ["no files"]),
    ]


def test_bad_shard_error_names_file_line_and_field(tmp_path: Path) -> None:
    for files, words in _bad_shard_cases(tmp_path):
        with pytest.raises(PermanentError) as caught:
            check_shard(files)
        for word in words:
            assert word in str(caught.value), f"{word!r} not in {caught.value}"


def test_bad_shard_goes_to_dlq_and_database_and_service_goes_on(
    trained: Trained,
    common: CommonSettings,
    pg_url: str,
    tmp_path: Path,
) -> None:
    result = trained.result
    run = f"run-{uuid.uuid4().hex[:8]}"
    # The next message is the already trained shard: it is recorded and published, not retrained.
    good = trained.manifest.model_copy(update={"run_id": run})
    data_dir = trained.settings.common.data_dir
    settings = Settings(
        common=common.model_copy(update={"database_url": pg_url, "data_dir": data_dir}),
        trainer=tiny(),
    )
    bad_file = write_jsonl(math_rows(2), tmp_path / "bad.jsonl")
    bad_file = bad_file.model_copy(update={"sha256": "f" * 64})
    bad = manifest_for([bad_file], shard_id=f"{run}:phase1").model_copy(update={"run_id": run})

    ensure_topics(common, [TRAINING_SHARDS, CHECKPOINTS])
    sessions = make_sessionmaker(make_engine(pg_url))
    publisher = Publisher(common)
    stats = TrainerStats()
    consumer = Consumer(
        common,
        TRAINING_SHARDS,
        f"trainer-{run}",
        ShardManifest,
        lambda m: handle_manifest(m, settings, sessions, publisher.publish, stats),
        publisher,
    )
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        publisher.publish(TRAINING_SHARDS, bad)
        publisher.publish(TRAINING_SHARDS, good)
        letters = read_topic(common, topic_name(common, TRAINING_SHARDS) + ".dlq", DeadLetter, 1)
        ready = read_topic(common, topic_name(common, CHECKPOINTS), CheckpointReady, 1)
    finally:
        consumer.stop()
        thread.join(timeout=30)
        publisher.close()

    assert "bad.jsonl" in letters[0].error and "sha256" in letters[0].error
    assert ready[0].checkpoint_id == checkpoint_id(good) and ready[0].path == result.path
    assert ready[0].stage == "M2"
    with sessions() as session:
        rows = {
            r.id: r
            for r in session.scalars(
                select(CheckpointRow).where(
                    CheckpointRow.id.in_([checkpoint_id(bad), checkpoint_id(good)])
                )
            )
        }
    failed, done = rows[checkpoint_id(bad)], rows[checkpoint_id(good)]
    assert failed.status == "failed" and "bad.jsonl" in failed.error and "sha256" in failed.error
    assert done.status == "ready" and done.path == result.path and done.shard_id == good.shard_id
    assert done.training_config["global_step"] == 3
    assert stats.failed == 1 and stats.skipped == 1 and stats.trained == 0


def read_topic(common: CommonSettings, topic: str, model: type, expected: int) -> list[Any]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=common.kafka_bootstrap, auto_offset_reset="earliest", group_id=None
    )
    found: list[Any] = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while len(found) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                found.extend(model.model_validate_json(r.value) for r in records)
    finally:
        consumer.close()
    assert len(found) >= expected, f"only {len(found)} of {expected} messages on {topic}"
    return found
