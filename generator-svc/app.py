"""generator-svc: consumes `problems`, generates, publishes `dialogues`."""

from __future__ import annotations

from functools import lru_cache

from generator_svc.handler import GeneratorStats, handle_jobs
from shared.bus import Consumer
from shared.hardware import inference_dtype
from shared.inference import Backend, load_backend
from shared.messages import PROBLEMS, ProblemJob
from shared.prompts import load_prompts
from shared.service import run_service, setup
from shared.settings import load_settings


def main() -> None:
    settings = load_settings()
    engine, sessions, publisher = setup(settings)
    dtype = inference_dtype(settings.inference)  # logged now, shown on /status
    prompts = load_prompts(settings.generator.prompt_version)
    stats = GeneratorStats()

    # One model in memory at a time: jobs of a phase all name the same model.
    @lru_cache(maxsize=1)
    def backend_for(model: str) -> Backend:
        return load_backend(settings.inference, model or None)

    def handle(jobs: list[ProblemJob]) -> None:
        handle_jobs(jobs, sessions, backend_for, prompts, publisher.publish, stats)

    consumer = Consumer(
        settings.common, PROBLEMS, "generator", ProblemJob, handle, publisher,
        batch_size=settings.inference.batch_size,
    )  # fmt: skip
    run_service(
        "generator-svc", settings, settings.generator.port, engine, publisher, [consumer],
        lambda: {**stats.as_dict(), "dtype": dtype},
    )  # fmt: skip
