"""trainer-svc: consumes `training-shards`, trains, publishes `checkpoints`."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from shared.core.budgets import training_warnings
from shared.core.consumer import Consumer
from shared.core.messages import TRAINING_SHARDS, ShardManifest
from shared.core.service import run_service, setup
from shared.core.settings import Settings, SettingsError, load_settings
from shared.inference.hardware import resolve_dtype, set_threads
from shared.inference.memory import GIB, describe, model_shape, plan_errors, training_memory
from shared.inference.model import resolve_model
from trainer_svc.handler import TrainerStats, handle_manifest
from trainer_svc.train import check_sft, use_bf16

log = logging.getLogger(__name__)


def gpu_check(num_gpus: int) -> dict[str, str]:
    """Readiness of the GPUs the settings ask for: a trainer that would fall back to the CPU
    (a CUDA build that does not match the driver, no device passed through) is not ready."""
    if num_gpus == 0:
        return {}
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if seen >= num_gpus:
        return {"gpu": "ok"}
    return {
        "gpu": f"error: trainer.num_gpus is {num_gpus} but torch {torch.__version__} sees {seen} "
        f"usable GPU(s) (CUDA build {torch.version.cuda})"
    }


def memory_check(settings: Settings) -> dict[str, Any]:
    """The training-memory estimate per GPU against the smallest GPU this trainer sees; exits
    with the numbers where the plan cannot fit (before any job is taken)."""
    if not torch.cuda.is_available():
        return {}
    model = resolve_model(settings.inference.model, settings.inference)
    memory = training_memory(model_shape(model), settings.trainer)
    devices = range(max(settings.trainer.num_gpus, 1))
    gib = min(torch.cuda.get_device_properties(i).total_memory for i in devices) / GIB
    for line in memory.lines():
        log.info("training memory estimate: %s", line.strip())
    if errors := plan_errors(memory, gib):
        raise SystemExit(f"trainer-svc: {errors[0]}")
    return {**describe(memory), "gpu_gib": round(gib, 1)}


def main() -> None:
    settings = load_settings()
    try:  # a typo in trainer.sft stops the service now, not each training job later
        check_sft(settings.trainer)
    except SettingsError as exc:
        raise SystemExit(f"trainer-svc: {exc}") from None
    os.nice(settings.trainer.nice)
    if settings.trainer.threads not in (0, "idle"):  # "idle" is chosen for each job
        set_threads(settings.trainer.threads)
    engine, sessions, publisher = setup(settings.common)
    hardware = resolve_dtype("auto")
    precision = {
        "bf16": use_bf16(settings.trainer),
        "device": hardware.device,
        "reason": "set explicitly" if settings.trainer.bf16 != "auto" else hardware.reason,
    }
    log.info("trainer bf16 mixed precision %s: %s", precision["bf16"], precision["reason"])
    for warning in training_warnings(settings):
        log.warning(warning)
    if (gpus := gpu_check(settings.trainer.num_gpus)).get("gpu", "ok") != "ok":
        log.error(gpus["gpu"])
    else:
        precision["memory"] = memory_check(settings)
    stats = TrainerStats()

    def handle(manifest: ShardManifest) -> None:
        handle_manifest(manifest, settings, sessions, publisher.publish, stats)

    consumer = Consumer.subscribe(settings.common, "trainer", TRAINING_SHARDS, handle, publisher)
    run_service(
        "trainer-svc",
        settings.common,
        settings.trainer.port,
        engine,
        publisher,
        [consumer],
        lambda: {**stats.as_dict(), "precision": precision},
        ready_checks=lambda: gpu_check(settings.trainer.num_gpus),
    )
