"""Bad problem input end to end: `dualphase run --problems FILE` and `POST /runs` reject a file
with a malformed line, a missing answer, a duplicate or bytes that are not UTF-8, with an error
naming the file, the line and the field, and nothing of it reaches the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from control_svc.admin import SOURCE, admin_router
from shared.core.bus import Publisher, ensure_topics
from shared.core.db import Problem, Run, make_engine, make_sessionmaker
from shared.core.messages import ALL_TOPICS
from shared.core.service import make_app
from shared.core.settings import CONFIG_ENV, CommonSettings, ControlSettings, Settings

GOOD = '{"id": "p1", "question": "Ann has 2 apples and gets 3 more. How many?", "answer": "5"}'
GOOD2 = '{"id": "p2", "question": "Ben has 7 cards and gives 4 away. How many?", "answer": "3"}'

HEADERS = {"Authorization": "Bearer t", "Content-Type": "application/json"}
# name -> (file bytes, bad line, what the error must name)
BAD = {
    "malformed line": (f'{GOOD}\n{{"id": "p2", "question": "x?" "answer": "1"}}\n', 2, "not JSON"),
    "missing answer": (f'{GOOD}\n{GOOD2}\n{{"id": "p3", "question": "Why?"}}\n', 3, "'answer'"),
    "empty question": (
        f'{GOOD}\n{{"id": "p3", "question": " ", "answer": "1"}}\n',
        2,
        "'question'",
    ),
    "duplicate id": (f"{GOOD}\n{GOOD2}\n{GOOD2.replace('Ben', 'Cy')}\n", 3, "field 'id'"),
    "duplicate question": (f"{GOOD}\n{GOOD.replace('p1', 'p9')}\n", 2, "field 'question'"),
    "not UTF-8": (
        f"{GOOD}\n".encode() + b'{"id": "p2", "question": "caf\xe9?", "answer": "1"}\n',
        2,
        "not UTF-8",
    ),
}


def run_rows(db_url: str) -> tuple[int, int]:
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as s:
            return (
                s.scalar(select(func.count()).select_from(Run)) or 0,
                s.scalar(select(func.count()).select_from(Problem)) or 0,
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize("case", list(BAD))
def test_dualphase_run_rejects_a_bad_problem_file_naming_file_line_and_field(
    case: str, db_url: str, tmp_path: Path
) -> None:
    content, line, names = BAD[case]
    path = tmp_path / "problems.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALPHASE_")}
    env.pop(CONFIG_ENV, None)
    env |= {
        "DUALPHASE_COMMON__DATA_DIR": str(tmp_path / "data"),
        "DUALPHASE_COMMON__DATABASE_URL": db_url,
    }
    before = run_rows(db_url)
    done = subprocess.run(
        [sys.executable, "-m", "dualphase.cli", "run", "--problems", str(path), "--timeout", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    error = done.stderr.strip()
    assert error.startswith(f"error: {path}:{line}: "), error
    assert names in error, error
    assert "Traceback" not in done.stderr
    assert run_rows(db_url) == before  # no run, no problem: nothing partial
    assert not (tmp_path / "data" / "logs").exists()  # no service was started


@pytest.mark.parametrize("case", list(BAD))
def test_post_runs_rejects_bad_problems_naming_line_and_field(
    case: str, common: CommonSettings, db_url: str
) -> None:
    content, line, names = BAD[case]
    # JSON cannot carry raw bytes: a client sends them as lone surrogates (Python's way).
    text = content.decode("utf-8", "surrogateescape") if isinstance(content, bytes) else content
    settings = Settings(
        common=common.model_copy(update={"database_url": db_url}),
        control=ControlSettings(admin_token="t"),
    )
    ensure_topics(common, ALL_TOPICS)
    engine = make_engine(db_url)
    publisher = Publisher(settings.common)
    router = admin_router(settings, make_sessionmaker(engine), publisher)
    client = TestClient(make_app("control-svc", engine, publisher, [], routers=[router]))
    before = run_rows(db_url)
    body = json.dumps({"problems": text, "phase1": 1})  # \udce9 travels as an escape
    try:
        reply = client.post("/runs", content=body, headers=HEADERS)
    finally:
        publisher.close()
        engine.dispose()
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert detail.startswith(f"{SOURCE}:{line}: ") and names in detail, detail
    assert run_rows(db_url) == before


def test_post_runs_rejects_a_body_that_is_not_utf8_and_creates_nothing(
    common: CommonSettings, sqlite_url: str
) -> None:
    settings = Settings(
        common=common.model_copy(update={"database_url": sqlite_url}),
        control=ControlSettings(admin_token="t"),
    )
    engine = make_engine(sqlite_url)
    publisher = Publisher(settings.common)
    router = admin_router(settings, make_sessionmaker(engine), publisher)
    client = TestClient(make_app("control-svc", engine, publisher, [], routers=[router]))
    body = b'{"problems": [{"question": "caf\xe9?", "answer": "1"}]}'
    try:
        reply = client.post("/runs", content=body, headers=HEADERS)
    finally:
        publisher.close()
        engine.dispose()
    assert reply.status_code == 400, reply.text  # FastAPI: the body is not JSON (not UTF-8)
    assert "parsing the body" in reply.json()["detail"]
    assert run_rows(sqlite_url) == (0, 0)
