"""A read-only data browser: runs -> one run -> its problems -> one problem, and the evaluation.

Plain HTML rendered on the server (Jinja2, autoescaped: model text is untrusted and shows as
text), no JavaScript. ``browse_router`` is the pages as an ``APIRouter`` to mount on any FastAPI
app, behind the dependencies the caller passes (an admin-token check, say):

    app.include_router(browse_router(sessions, [Depends(require_admin)]), prefix="/browse")

``serve_browser`` serves them alone on 127.0.0.1 (``dualphase browse``). The run page's counts
are the run report's own (``dualphase.run_story``) and the progress bars' (``run_progress``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import jinja2
import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.params import Depends
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker

from dualphase.browse import evaluation, queries
from dualphase.browse.membership import membership
from dualphase.browse.queries import CATEGORIES, ProblemFilter
from dualphase.run_story import story
from shared.core.db import Run, make_engine, make_sessionmaker
from shared.core.runs import run_progress
from shared.core.settings import Settings

DEFAULT_PORT = 8110  # the services use 8101-8106
PAIRS_PER_PAGE = 20
TEMPLATES = Path(__file__).parent / "templates"


def _templates() -> Jinja2Templates:
    # Autoescape every template whatever its name: turns and answers are the model's text.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return Jinja2Templates(env=env)


def _run(session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise HTTPException(404, f"no run {run_id!r}")
    return run


def browse_router(
    sessions: sessionmaker[Session], dependencies: Sequence[Depends] = ()
) -> APIRouter:
    """The browser's pages; every route runs ``dependencies`` first (e.g. an admin check)."""
    router = APIRouter(dependencies=list(dependencies))
    templates = _templates()

    def render(request: Request, name: str, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context)

    @router.get("/", response_class=HTMLResponse, name="browse_runs")
    def runs_page(request: Request) -> HTMLResponse:
        with sessions() as session:
            return render(request, "runs.html", runs=queries.runs(session))

    @router.get("/runs/{run_id}", response_class=HTMLResponse, name="browse_run")
    def run_page(request: Request, run_id: str) -> HTMLResponse:
        with sessions() as session:
            run = _run(session, run_id)
            sections, member = story(session, run_id), membership(session, run_id)
        progress = run_progress(sessions, run_id)
        return render(
            request, "run.html", run=run, progress=progress, sections=sections, member=member
        )

    @router.get("/runs/{run_id}/problems", response_class=HTMLResponse, name="browse_problems")
    def problems_page(
        request: Request, run_id: str, f: Annotated[ProblemFilter, Query()]
    ) -> HTMLResponse:
        with sessions() as session:
            run = _run(session, run_id)
            member = membership(session, run_id)
            listed = queries.problem_page(session, run_id, f, member)
            rules = queries.rule_names(session, run_id)
        return render(
            request,
            "problems.html",
            run=run,
            f=f,
            listed=listed,
            rules=rules,
            stages=member.stages(),
            categories=CATEGORIES,
            missing=member.missing,
        )

    @router.get(
        "/runs/{run_id}/problems/{problem_id:path}",
        response_class=HTMLResponse,
        name="browse_problem",
    )
    def problem_page(request: Request, run_id: str, problem_id: str) -> HTMLResponse:
        with sessions() as session:
            run = _run(session, run_id)
            member = membership(session, run_id)
            detail = queries.problem_detail(session, run_id, problem_id, member)
        if detail is None:
            raise HTTPException(404, f"run {run_id!r} has no problem {problem_id!r}")
        return render(request, "problem.html", run=run, d=detail, missing=member.missing)

    @router.get("/runs/{run_id}/eval", response_class=HTMLResponse, name="browse_eval")
    def eval_page(request: Request, run_id: str) -> HTMLResponse:
        with sessions() as session:
            run = _run(session, run_id)
            m2 = evaluation.m2_checkpoint(session, run_id)
            benchmarks = evaluation.discordant(session, run_id, m2) if m2 else []
        return render(request, "eval.html", run=run, m2=m2, benchmarks=benchmarks)

    @router.get(
        "/runs/{run_id}/eval/{benchmark}", response_class=HTMLResponse, name="browse_benchmark"
    )
    def benchmark_page(
        request: Request, run_id: str, benchmark: str, page: Annotated[int, Query(ge=1)] = 1
    ) -> HTMLResponse:
        with sessions() as session:
            run = _run(session, run_id)
            m2 = evaluation.m2_checkpoint(session, run_id)
            found = evaluation.discordant(session, run_id, m2, benchmark) if m2 else []
            if not found:
                raise HTTPException(404, f"run {run_id!r}: no M0 and M2 samples on {benchmark!r}")
            (bench,) = found
            pairs = [("fixed", p) for p in bench.fixed] + [("broke", p) for p in bench.broke]
            start = (page - 1) * PAIRS_PER_PAGE
            shown = pairs[start : start + PAIRS_PER_PAGE]
            answers = evaluation.answers(
                session, run_id, benchmark, m2, [p.problem_id for _, p in shown]
            )
        return render(
            request,
            "benchmark.html",
            run=run,
            bench=bench,
            shown=shown,
            answers=answers,
            page=page,
            pages=max(1, -(-len(pairs) // PAIRS_PER_PAGE)),
        )

    return router


def create_app(sessions: sessionmaker[Session]) -> FastAPI:
    """The browser alone, at the root of its own app (no API docs: the pages are the interface)."""
    app = FastAPI(title="dualphase browse", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(browse_router(sessions))
    return app


def serve_browser(
    settings: Settings, host: str = "127.0.0.1", port: int = DEFAULT_PORT, run_id: str | None = None
) -> None:
    """Serve the browser until interrupted, printing the URL to open (the run's page if given).

    Raises ValueError if ``run_id`` is not in the database. The CLI command
    ``dualphase browse [RUN] [--port N] [--config FILE]`` calls it as
    ``serve_browser(load_settings(config), port=port, run_id=run)`` (port default DEFAULT_PORT).
    """
    database = settings.common.resolved_database_url()
    sessions = make_sessionmaker(make_engine(database))
    url = f"http://{host}:{port}/"
    if run_id is not None:
        with sessions() as session:
            if session.get(Run, run_id) is None:
                raise ValueError(f"run {run_id!r} is not in the database {database}")
        url += f"runs/{run_id}"
    print(f"dualphase browse: {url}", flush=True)
    uvicorn.run(create_app(sessions), host=host, port=port, log_level="warning")
