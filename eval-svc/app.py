"""eval-svc: consumes `checkpoints`; evaluates each new checkpoint and the run's base model."""

from __future__ import annotations

from eval_svc.handler import handle
from shared.bus import Consumer
from shared.hardware import inference_dtype
from shared.messages import CHECKPOINTS, CheckpointReady
from shared.service import run_service, setup
from shared.settings import load_settings


def main() -> None:
    settings = load_settings()
    engine, sessions, publisher = setup(settings)
    dtype = inference_dtype(settings.inference)  # logged now, shown on /status
    counts = {"evaluations": 0}

    def on_message(msg: CheckpointReady) -> None:
        counts["evaluations"] += len(handle(msg, settings, sessions))

    consumer = Consumer(settings.common, CHECKPOINTS, "eval-checkpoints", CheckpointReady,
                        on_message, publisher)  # fmt: skip
    run_service("eval-svc", settings, settings.eval.port, engine, publisher, [consumer],
                lambda: {**counts, "dtype": dtype})  # fmt: skip
