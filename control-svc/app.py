"""control-svc: the control plane of the pipeline. It consumes no topic: it reads the database,
re-publishes lost work and marks runs complete (``reconciler``), measures the broker-side and
progress gauges (``collector``), and serves the token-protected admin endpoints (``admin``:
submit and cancel runs) beside the status endpoints."""

from __future__ import annotations

import logging
import signal
import threading

from control_svc.admin import admin_router
from control_svc.reconciler import Reconciler
from shared.core.service import make_app, serve_http, setup
from shared.core.settings import load_settings

log = logging.getLogger(__name__)


def main() -> None:
    settings = load_settings()
    engine, sessions, publisher = setup(settings.common)
    # Each pass opens its own admin and probe clients: their connection chatter is not news.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    reconciler = Reconciler(settings, sessions, publisher)
    app = make_app(
        "control-svc",
        engine,
        publisher,
        [],
        reconciler.status,
        [admin_router(settings, sessions, publisher)],
    )
    server = serve_http(app, settings.common.http_host, settings.control.port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info(
        "control-svc: status on http://%s:%d", settings.common.http_host, settings.control.port
    )
    try:
        reconciler.run(stop)  # a pass at start-up (everything owed is due), then every interval
    finally:
        server.should_exit = True
        publisher.close()
        engine.dispose()
