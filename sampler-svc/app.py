"""sampler-svc: consumes `verified-samples` and `checkpoints`; publishes phase-2 jobs on
`problems` and shard manifests on `training-shards`."""

from __future__ import annotations

from collections.abc import Callable

from sampler_svc.handler import make_handlers
from shared.core.consumer import Consumer
from shared.core.messages import CHECKPOINTS, VERIFIED_SAMPLES, Message
from shared.core.runs import cancelled_runs
from shared.core.service import run_service, setup
from shared.core.settings import load_settings


def main() -> None:
    settings = load_settings()
    engine, sessions, publisher = setup(settings.common)
    on_verdicts, on_checkpoint = make_handlers(settings, sessions, publisher)

    def unless_cancelled(handler: Callable[[Message], None]) -> Callable[[Message], None]:
        """A cancelled run gets nothing more from the sampler: no jobs, no shards."""

        def handle(message: Message) -> None:
            if not cancelled_runs(sessions, [message.run_id]):
                handler(message)

        return handle

    consumers = [
        Consumer.subscribe(
            settings.common, "sampler", VERIFIED_SAMPLES, unless_cancelled(on_verdicts), publisher
        ),
        Consumer.subscribe(
            settings.common, "sampler", CHECKPOINTS, unless_cancelled(on_checkpoint), publisher
        ),
    ]
    run_service("sampler-svc", settings.common, settings.sampler.port, engine, publisher, consumers)
