"""The service skeleton: a FastAPI status app running beside a consumer loop.

Every service is the same shape: ``main()`` builds its handler and calls ``run_service``; the
consumer runs in the main thread (so SIGTERM finishes the message in hand), the HTTP app in a
daemon thread. The status endpoints are GET only: ``/healthz``, ``/readyz``, ``/status``,
``/metrics``; control-svc also mounts the token-protected admin endpoints (``control_svc.admin``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from shared.core.bus import Publisher, ensure_topics
from shared.core.consumer import Consumer
from shared.core.db import make_engine, make_sessionmaker
from shared.core.messages import ALL_TOPICS
from shared.core.settings import CommonSettings

log = logging.getLogger(__name__)


def make_app(
    name: str,
    engine: Engine,
    publisher: Publisher,
    consumers: list[Consumer],
    status: Callable[[], dict[str, Any]] = dict,
    routers: Sequence[APIRouter] = (),
    ready_checks: Callable[[], dict[str, str]] = dict,
) -> FastAPI:
    """The status app of one service, plus ``routers`` (the admin endpoints). ``ready_checks``
    adds the service's own readiness checks (name -> "ok" or "error: ...")."""
    app = FastAPI(title=name)
    for router in routers:
        app.include_router(router)
    started = time.time()

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"service": name, "alive": True, "uptime_s": round(time.time() - started, 1)}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # readiness reports any failure instead of raising
            checks["database"] = f"error: {exc}"
        checks["broker"] = "ok" if publisher.connected() else "error: not connected"
        checks.update(ready_checks())
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/status")
    def status_endpoint() -> dict[str, Any]:
        body: dict[str, Any] = {"service": name}
        body["consumers"] = [c.status() for c in consumers]
        body.update(status())
        return body

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def serve_http(app: FastAPI, host: str, port: int) -> uvicorn.Server:
    """Start uvicorn in a daemon thread and return the server (set should_exit to stop)."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    threading.Thread(target=server.run, name=f"http:{port}", daemon=True).start()
    return server


def setup(common: CommonSettings) -> tuple[Engine, Any, Publisher]:
    """What every service needs first: logging, the topics, a database engine, a publisher.

    The schema is not migrated here (replicas would race): `dualphase db upgrade`, the compose
    migration service, or the embedded stack does it once before services start.
    """
    logging.basicConfig(
        level=common.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    engine = make_engine(common.resolved_database_url())
    ensure_topics(common, ALL_TOPICS)
    return engine, make_sessionmaker(engine), Publisher(common)


def run_service(
    name: str,
    common: CommonSettings,
    port: int,
    engine: Engine,
    publisher: Publisher,
    consumers: list[Consumer],
    status: Callable[[], dict[str, Any]] = dict,
    routers: Sequence[APIRouter] = (),
    ready_checks: Callable[[], dict[str, str]] = dict,
) -> None:
    """Serve the status app and run the consumers until SIGTERM/SIGINT.

    The first consumer runs in the main thread, where SIGTERM reaches it; the others run in
    threads and are stopped when it returns, each after the message in hand.
    """
    server = serve_http(
        make_app(name, engine, publisher, consumers, status, routers, ready_checks),
        common.http_host,
        port,
    )
    threads = [threading.Thread(target=c.run, name=c.topic) for c in consumers[1:]]
    for thread in threads:
        thread.start()
    log.info("%s: status on http://%s:%d, consuming", name, common.http_host, port)
    try:
        consumers[0].run()
    finally:
        for consumer in consumers[1:]:
            consumer.stop()
        for thread in threads:
            thread.join()
        server.should_exit = True
        publisher.close()
        engine.dispose()
