"""The data browser: a real run's problems filtered and paged in SQL (SQLite and PostgreSQL), one
problem's turns, verdicts and shard rows, M2's fixed and broken problems, model text escaped, the
router behind a caller's dependency, and a person's visit in headless Chromium."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from browse_run import SCRIPT, BuiltRun, build_run, settings_for
from conftest import create_schema
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from dualphase.browse import browse_router, create_app, evaluation, queries, serve_browser
from dualphase.browse.membership import membership
from dualphase.browse.queries import ProblemFilter
from dualphase.report import load_run
from dualphase.run_story import story
from shared.core.db import make_engine, make_sessionmaker
from shared.core.runs import run_progress
from shared.method.stats import paired_difference

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHASE1 = ["add-1", "add-2", "add-3", "add-4", "add-5", "add-6"]
PHASE2 = ["mul-1", "mul-2", "mul-3", "mul-4"]


@dataclass
class Built:
    url: str
    run: BuiltRun
    sessions: sessionmaker[Session]

    @property
    def run_id(self) -> str:
        return self.run.run_id


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """One finished run per database, shared by this file's tests (they only read it)."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{folder / 'run.db'}"
        create_schema(url)
    return Built(url, build_run(url, folder), make_sessionmaker(make_engine(url)))


def listed(built: Built, size: int = 50, **filters: str | int) -> list[str]:
    with built.sessions() as session:
        member = membership(session, built.run_id)
        page = queries.problem_page(session, built.run_id, ProblemFilter(**filters), member, size)
    return [line.problem_id for line in page.lines]


def test_each_filter_narrows_the_problem_list_in_sql(built: Built) -> None:
    assert listed(built) == PHASE1 + PHASE2
    assert listed(built, category="WR") == ["add-3"]
    assert listed(built, verdict="accepted") == ["add-1", "add-3", "mul-1", "mul-2", "mul-4"]
    assert listed(built, verdict="rejected", phase="2") == ["mul-2", "mul-3", "mul-4"]
    assert listed(built, rule="explicit_answer") == ["add-6"]
    assert listed(built, rule="not_truncated") == ["add-2"]
    assert listed(built, kept="yes") == ["add-1", "add-3", "mul-1", "mul-2", "mul-4"]
    assert listed(built, kept="no") == ["add-2", "add-4", "add-5", "add-6", "mul-3"]
    assert listed(built, stage="phase1") == ["add-1", "add-3"]
    assert listed(built, kept="no", stage="phase1", phase="2") == PHASE2
    assert listed(built, q="EGGS") == PHASE2  # case-insensitive on both databases


def test_a_rule_filter_matches_whole_rule_names_and_text_search_escapes_wildcards(
    built: Built,
) -> None:
    assert listed(built, rule="truncated") == []  # a part of "not_truncated" is not a rule
    assert listed(built, rule="not%truncated") == []
    assert listed(built, q="%") == []
    assert listed(built, q="_") == []


def test_sample_filters_hold_for_one_sample_together(built: Built) -> None:
    # add-6's dialogue is RR and rejected by explicit_answer; no WW sample fails that rule.
    assert listed(built, category="RR", verdict="rejected", rule="explicit_answer") == ["add-6"]
    assert listed(built, category="WW", rule="explicit_answer") == []


def test_pages_are_cut_in_sql_in_submission_order(built: Built) -> None:
    with built.sessions() as session:
        member = membership(session, built.run_id)
        page = queries.problem_page(session, built.run_id, ProblemFilter(page=2), member, 3)
    assert [line.problem_id for line in page.lines] == ["add-4", "add-5", "add-6"]
    assert (page.total, page.pages) == (10, 4)
    assert listed(built, size=3, page=4) == ["mul-4"]


def test_a_problem_shows_its_dialogue_verdicts_and_shard_rows(built: Built) -> None:
    with built.sessions() as session:
        member = membership(session, built.run_id)
        add3 = queries.problem_detail(session, built.run_id, "add-3", member)
        mul2 = queries.problem_detail(session, built.run_id, "mul-2", member)
    (dialogue,) = add3.samples
    assert [label for label, *_ in dialogue.turns()] == ["solve", "review", "rewrite"]
    assert dialogue.verdict.category == "WR" and dialogue.verdict.accepted
    assert {(p.stage, p.source) for p in dialogue.placements} == {
        ("phase1", "multi-turn"),
        ("joint", "multi-turn"),
    }
    assert [s.verdict.accepted for s in mul2.samples] == [False, False, True, False, False]
    kept = [s for s in mul2.samples if s.placements]
    assert [(p.stage, p.source) for s in kept for p in s.placements] == [("joint", "rejection")]
    assert mul2.attempts.state == "solved" and mul2.attempts.attempts == 5


def test_m2_fixed_and_broke_are_the_discordant_pairs_of_the_report(built: Built) -> None:
    with built.sessions() as session:
        m2 = evaluation.m2_checkpoint(session, built.run_id)
        (gsm8k,) = evaluation.discordant(session, built.run_id, m2)
        data = load_run(session, built.run_id)
    m0_scores, m2_scores = data.scores[("M0", "gsm8k")], data.scores[("M2", "gsm8k")]
    common = sorted(set(m0_scores) & set(m2_scores))
    d = paired_difference([m0_scores[p] for p in common], [m2_scores[p] for p in common])
    assert (len(gsm8k.fixed), len(gsm8k.broke)) == (d.b_only, d.a_only) == (2, 1)
    assert [p.problem_id for p in gsm8k.fixed] == ["g2", "g3"]
    assert [p.problem_id for p in gsm8k.broke] == ["g0"]


def test_model_text_is_escaped_on_every_page_that_shows_it(built: Built) -> None:
    client = TestClient(create_app(built.sessions))
    page = client.get(f"/runs/{built.run_id}/problems/{built.run.script_problem}")
    assert page.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert SCRIPT not in page.text
    assert client.get(f"/runs/{built.run_id}/problems/nope").status_code == 404
    assert client.get("/runs/nope").status_code == 404


def test_the_router_mounts_behind_the_callers_dependency(built: Built) -> None:
    def admin(authorization: str = Header("")) -> None:
        if authorization != "Bearer secret":
            raise HTTPException(401, "admin token required")

    app = FastAPI()
    app.include_router(browse_router(built.sessions, [Depends(admin)]), prefix="/browse")
    client = TestClient(app)
    assert client.get(f"/browse/runs/{built.run_id}").status_code == 401
    page = client.get(f"/browse/runs/{built.run_id}", headers={"Authorization": "Bearer secret"})
    assert page.status_code == 200
    assert f'/browse/runs/{built.run_id}/problems"' in page.text  # links keep the prefix


def test_serve_browser_refuses_a_run_that_is_not_in_the_database(built: Built) -> None:
    settings = settings_for(Path("."))
    settings.common.database_url = built.url
    with pytest.raises(ValueError, match="run 'run-none' is not in the database"):
        serve_browser(settings, port=1, run_id="run-none")


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The app on a free port of 127.0.0.1 in a thread, as ``serve_browser`` serves it."""
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


def table(page: object, selector: str) -> list[list[str]]:
    """The text of a table's body cells, row by row (the header row left out)."""
    rows = page.locator(f"{selector} tr").all()[1:]
    return [[cell.strip() for cell in row.locator("td").all_inner_texts()] for row in rows]


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install chromium)"
)
def test_a_person_browses_a_run_in_headless_chromium(built: Built) -> None:
    from playwright.sync_api import sync_playwright

    progress = run_progress(built.sessions, built.run_id)
    with built.sessions() as session:
        sections = story(session, built.run_id)
    dialogs: list[str] = []
    with serving(create_app(built.sessions)) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(base)
        page.get_by_role("link", name=built.run_id).click()

        # The stage counts are the progress bars' and the report's.
        shown = {name: (int(done), int(total)) for name, done, total, _ in table(page, "#stages")}
        assert shown == progress
        for s in sections:
            section = page.locator(
                "section.story", has=page.get_by_role("heading", name=s.title, exact=True)
            )
            if s.rows:
                assert table(section, "table") == s.rows

        page.get_by_role("link", name="Problems", exact=True).click()
        assert page.locator("#total").inner_text().startswith("10 problems")
        page.select_option("select[name=rule]", "explicit_answer")
        page.get_by_role("button", name="filter").click()
        assert page.locator("#total").inner_text().startswith("1 problem,")
        assert [row[0] for row in table(page, "#problems")] == [built.run.rejected_problem]

        page.get_by_role("link", name=built.run.rejected_problem).click()
        text = page.locator("body").inner_text()
        assert "rule failed: explicit_answer" in text
        for turn in ("solve", "review", "rewrite"):
            assert page.get_by_text(turn, exact=True).count() == 1
        assert "We end with 10 apples in all." in text  # the last turn itself

        page.get_by_role("link", name="problems", exact=True).click()
        page.fill("input[name=q]", "3 rows")
        page.get_by_role("button", name="filter").click()
        page.get_by_role("link", name=built.run.script_problem).click()
        assert page.get_by_text(SCRIPT).count() == 1  # shown as text ...
        assert page.locator(".sample script").count() == 0  # ... not parsed as an element
        browser.close()
    assert dialogs == []  # alert(1) never ran
