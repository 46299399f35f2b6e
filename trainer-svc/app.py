"""trainer-svc: consumes `training-shards`, trains, publishes `checkpoints`."""

from __future__ import annotations

import torch

from shared.bus import Consumer
from shared.messages import TRAINING_SHARDS, ShardManifest
from shared.service import run_service, setup
from shared.settings import load_settings
from trainer_svc.handler import TrainerStats, handle_manifest


def main() -> None:
    settings = load_settings()
    if settings.trainer.threads:
        torch.set_num_threads(settings.trainer.threads)
    engine, sessions, publisher = setup(settings)
    stats = TrainerStats()

    def handle(manifest: ShardManifest) -> None:
        handle_manifest(manifest, settings, sessions, publisher.publish, stats)

    consumer = Consumer(settings.common, TRAINING_SHARDS, "trainer", ShardManifest, handle,
                        publisher)  # fmt: skip
    run_service("trainer-svc", settings, settings.trainer.port, engine, publisher, [consumer],
                stats.as_dict)  # fmt: skip
