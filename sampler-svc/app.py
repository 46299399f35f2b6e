"""sampler-svc: consumes `verified-samples` and `checkpoints`; publishes phase-2 jobs on
`problems`, final states on `rejection-sampled`, and shard manifests on `training-shards`."""

from __future__ import annotations

from sampler_svc.handler import make_handlers, publish_all, reconcile
from shared.bus import Consumer
from shared.messages import CHECKPOINTS, VERIFIED_SAMPLES, CheckpointReady, VerifiedSamples
from shared.service import run_service, setup
from shared.settings import load_settings


def main() -> None:
    settings = load_settings()
    engine, sessions, publisher = setup(settings)
    # The database is the state: publish again whatever a crash may have lost.
    with sessions.begin() as session:
        publish_all(publisher, reconcile(session, settings))
    on_verdicts, on_checkpoint = make_handlers(settings, sessions, publisher)
    consumers = [
        Consumer(settings.common, VERIFIED_SAMPLES, "sampler", VerifiedSamples, on_verdicts,
                 publisher),
        Consumer(settings.common, CHECKPOINTS, "sampler-checkpoints", CheckpointReady,
                 on_checkpoint, publisher),
    ]  # fmt: skip
    run_service("sampler-svc", settings, settings.sampler.port, engine, publisher, consumers)
