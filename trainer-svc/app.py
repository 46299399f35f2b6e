"""trainer-svc: consumes `training-shards`, trains, publishes `checkpoints`."""

from __future__ import annotations

import logging

from shared.bus import Consumer
from shared.hardware import resolve_dtype, set_threads
from shared.messages import TRAINING_SHARDS, ShardManifest
from shared.service import run_service, setup
from shared.settings import load_settings
from trainer_svc.handler import TrainerStats, handle_manifest
from trainer_svc.train import use_bf16

log = logging.getLogger(__name__)


def main() -> None:
    settings = load_settings()
    if settings.trainer.threads:
        set_threads(settings.trainer.threads)
    engine, sessions, publisher = setup(settings)
    hardware = resolve_dtype("auto")
    precision = {
        "bf16": use_bf16(settings.trainer),
        "device": hardware.device,
        "reason": "set explicitly" if settings.trainer.bf16 != "auto" else hardware.reason,
    }
    log.info("trainer bf16 mixed precision %s: %s", precision["bf16"], precision["reason"])
    stats = TrainerStats()

    def handle(manifest: ShardManifest) -> None:
        handle_manifest(manifest, settings, sessions, publisher.publish, stats)

    consumer = Consumer(settings.common, TRAINING_SHARDS, "trainer", ShardManifest, handle,
                        publisher)  # fmt: skip
    run_service("trainer-svc", settings, settings.trainer.port, engine, publisher, [consumer],
                lambda: {**stats.as_dict(), "precision": precision})  # fmt: skip
