"""eval-svc: consumes `checkpoints`; evaluates each new checkpoint and the run's base model."""

from __future__ import annotations

import os

from eval_svc.handler import handle
from shared.core.budgets import eval_errors, stop_on_errors
from shared.core.consumer import Consumer
from shared.core.messages import CHECKPOINTS, CheckpointReady
from shared.core.service import run_service, setup
from shared.core.settings import load_settings
from shared.inference import OneModel
from shared.inference.hardware import inference_dtype
from shared.inference.model import context_length


def main() -> None:
    settings = load_settings()
    os.nice(settings.eval.nice)
    engine, sessions, publisher = setup(settings.common)
    context = context_length(settings.inference)
    stop_on_errors("eval-svc", eval_errors(settings, context) if context else [])
    dtype = inference_dtype(settings.inference)  # logged now, shown on /status
    counts = {"evaluations": 0}
    backend_for = OneModel(settings.inference)  # one model in memory: targets come one by one

    def on_message(msg: CheckpointReady) -> None:
        counts["evaluations"] += len(handle(msg, settings, sessions, backend_for))

    consumer = Consumer.subscribe(settings.common, "eval", CHECKPOINTS, on_message, publisher)
    run_service(
        "eval-svc",
        settings.common,
        settings.eval.port,
        engine,
        publisher,
        [consumer],
        lambda: {**counts, "dtype": dtype},
    )
