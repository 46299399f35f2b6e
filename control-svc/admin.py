"""Admin endpoints, mounted on control-svc's app: submit a run, cancel a run.

Both need ``Authorization: Bearer <control.admin_token>``: a missing or wrong token gets 401; with
no token configured the endpoints are disabled and answer 403. The status endpoints of every
service stay GET only.

    curl -X POST localhost:8106/runs -H "Authorization: Bearer $TOKEN" \\
         -H 'Content-Type: application/json' \\
         -d '{"problems": [{"question": "1+1?", "answer": "2"}, ...], "phase1": 12, "seed": 0}'
    curl -X POST localhost:8106/runs/run-1a2b3c4d/cancel -H "Authorization: Bearer $TOKEN"

Problems are read all or nothing, with the errors of a problem file
(``shared.datasets.problems``): the first bad problem answers 422 naming the line and the
field, and no run is created.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from shared.core.bus import Publisher
from shared.core.runs import cancel_run, submit_run
from shared.core.settings import ControlSettings, Settings
from shared.datasets.problems import DatasetFormatError, parse_problems

# Errors name this as the "file": `POST /runs problems:3: field 'answer': no gold answer`.
SOURCE = "POST /runs problems"
# Module level: FastAPI resolves the (postponed) annotations in the module's namespace.
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


class RunRequest(BaseModel):
    """The body of ``POST /runs``."""

    problems: list[dict[str, Any]] | str = Field(
        description="Problems as a JSON list of objects, or as JSONL text: rows of a benchmark's "
        "format (shared/datasets), or question or problem; answer, gold or a boxed solution; id."
    )
    phase1: int | None = Field(
        None,
        ge=0,
        description="The first this many problems are phase 1, the rest phase 2 "
        "(default: half, rounded down).",
    )
    seed: int = Field(0, description="Run seed (balancing, sampling).")


def problem_bytes(problems: list[dict[str, Any]] | str) -> bytes:
    """The problems as JSONL bytes, line i being problem i, for ``parse_problems``."""
    if isinstance(problems, str):
        # JSON text cannot carry bytes that are not UTF-8, but it can carry a lone surrogate
        # (\udcff, how Python smuggles such bytes): encoded as is, its line fails as not UTF-8.
        return problems.encode("utf-8", "surrogatepass")
    return "\n".join(json.dumps(p) for p in problems).encode()


def require_token(settings: ControlSettings) -> Callable[[Credentials], None]:
    """A FastAPI dependency: 403 while no token is configured, 401 for a missing or wrong one."""

    def authorize(credentials: Credentials) -> None:
        token = settings.admin_token
        if not token:
            raise HTTPException(403, "admin endpoints are disabled: set control.admin_token")
        if credentials is None or not secrets.compare_digest(
            credentials.credentials.encode(), token.encode()
        ):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    return authorize


def admin_router(
    settings: Settings, sessions: sessionmaker[Session], publisher: Publisher
) -> APIRouter:
    """Submit and cancel; a submitted run records ``settings`` as its config snapshot."""
    router = APIRouter(dependencies=[Depends(require_token(settings.control))], tags=["admin"])

    @router.post("/runs", status_code=201)
    def submit(body: RunRequest) -> dict[str, str]:
        """Record a run and its problems and publish its phase-1 jobs; returns the run id."""
        try:
            specs = parse_problems(problem_bytes(body.problems), SOURCE)
        except DatasetFormatError as error:
            raise HTTPException(422, str(error)) from None
        phase1 = len(specs) // 2 if body.phase1 is None else body.phase1
        if phase1 > len(specs):
            raise HTTPException(422, f"field 'phase1': {phase1} but only {len(specs)} problems")
        run_id = submit_run(
            settings, sessions, publisher, specs[:phase1], specs[phase1:], body.seed
        )
        return {"run_id": run_id}

    @router.post("/runs/{run_id}/cancel")
    def cancel(run_id: str) -> dict[str, str]:
        """Cancel a run: the generator skips its jobs, the sampler publishes nothing more."""
        try:
            status = cancel_run(sessions, run_id)
        except KeyError:
            raise HTTPException(404, f"no run {run_id!r}") from None
        return {"run_id": run_id, "status": status}

    return router
