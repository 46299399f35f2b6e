"""sampler-svc: consumes `verified-samples` and `checkpoints`; publishes phase-2 jobs on
`problems`, final states on `rejection-sampled`, and shard manifests on `training-shards`.

It also runs the reconciler (``sampler_svc.reconciler``) and serves the admin endpoints
(``sampler_svc.admin``: submit and cancel runs)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from sampler_svc.admin import admin_router
from sampler_svc.handler import make_handlers
from sampler_svc.reconciler import Reconciler
from shared.core.bus import Consumer
from shared.core.messages import (
    CHECKPOINTS,
    VERIFIED_SAMPLES,
    Message,
)
from shared.core.runs import cancelled_runs
from shared.core.service import run_service, setup
from shared.core.settings import load_settings


def main() -> None:
    settings = load_settings()
    engine, sessions, publisher = setup(settings)
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
    # The database is the state: the first pass publishes again whatever a crash may have lost.
    reconciler = Reconciler(settings, sessions, publisher)
    stop = threading.Event()
    threading.Thread(target=reconciler.run, args=(stop,), name="reconciler", daemon=True).start()
    try:
        run_service(
            "sampler-svc",
            settings,
            settings.sampler.port,
            engine,
            publisher,
            consumers,
            reconciler.status,
            [admin_router(settings, sessions, publisher)],
        )
    finally:
        stop.set()
