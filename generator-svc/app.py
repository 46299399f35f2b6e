"""generator-svc: consumes `problems`, generates, publishes `dialogues`."""

from __future__ import annotations

import logging

from generator_svc.handler import GeneratorStats, handle_jobs
from shared.core.budgets import generator_errors, stop_on_errors
from shared.core.consumer import Consumer
from shared.core.messages import PROBLEMS, ProblemJob
from shared.core.service import run_service, setup
from shared.core.settings import load_settings
from shared.inference import OneModel
from shared.inference.hardware import claim_threads, inference_dtype
from shared.inference.model import context_length
from shared.method.prompts import load_prompts

log = logging.getLogger(__name__)


def main() -> None:
    settings = load_settings()
    engine, sessions, publisher = setup(settings.common)
    context = context_length(settings.inference)
    stop_on_errors("generator-svc", generator_errors(settings, context) if context else [])
    dtype = inference_dtype(settings.inference)  # logged now, shown on /status
    prompts = load_prompts(settings.generator.prompt_version)
    stats = GeneratorStats()

    # One model in memory at a time: jobs of a phase all name the same model.
    backend_for = OneModel(settings.inference)

    def handle(jobs: list[ProblemJob]) -> None:
        with claim_threads(settings.inference.threads) as threads:  # "idle": for each batch
            log.info("%d jobs on %d torch threads", len(jobs), threads)
            handle_jobs(
                jobs,
                sessions,
                backend_for,
                prompts,
                publisher.publish,
                stats,
                settings.generator,
            )

    consumer = Consumer.subscribe(
        settings.common, "generator", PROBLEMS, handle, publisher, settings.inference.batch_size
    )
    run_service(
        "generator-svc",
        settings.common,
        settings.generator.port,
        engine,
        publisher,
        [consumer],
        lambda: {**stats.as_dict(), "dtype": dtype},
    )
