"""Reports: from a run's rows in the database to Markdown, HTML and PNG files (via the CLI)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dualphase.cli import app
from dualphase.report import load_run, render_markdown
from shared.core.db import (
    CheckpointRow,
    EvalResult,
    EvalSampleRow,
    insert_ignore,
    make_engine,
    make_sessionmaker,
    transaction,
)
from shared.core.messages import BASE_CHECKPOINT_ID

# (checkpoint, mode) -> (accuracy on gsm8k, on math500); tokens grow with the stage.
RESULTS = {
    ("ck-m2", "base"): (0.75, 0.5),
    (BASE_CHECKPOINT_ID, "self-rewarding"): (0.3, 0.2),
    (BASE_CHECKPOINT_ID, "base"): (0.25, 0.1),
    ("ck-m1", "base"): (0.5, 0.25),
    (BASE_CHECKPOINT_ID, "think-twice"): (0.4, 0.2),
}
TOKENS = {BASE_CHECKPOINT_ID: 100, "ck-m1": 300, "ck-m2": 400}


def fill_run(url: str) -> str:
    """A run with M0 (and its two baselines), M1 and M2 evaluated on two benchmarks."""
    run_id = f"rep-{uuid.uuid4().hex[:8]}"
    engine = make_engine(url)
    with transaction(make_sessionmaker(engine)) as session:
        for ck, stage in (("ck-m1", "M1"), ("ck-m2", "M2")):
            session.add(CheckpointRow(id=f"{run_id}-{ck}", run_id=run_id, stage=stage, path="/x"))
        for (ck, mode), accuracies in RESULTS.items():
            checkpoint_id = ck if ck == BASE_CHECKPOINT_ID else f"{run_id}-{ck}"
            for benchmark, accuracy in zip(("gsm8k", "math500"), accuracies, strict=True):
                key = dict(
                    run_id=run_id, checkpoint_id=checkpoint_id, benchmark=benchmark, mode=mode
                )
                insert_ignore(
                    session,
                    EvalResult,
                    [
                        dict(
                            key,
                            problems=4,
                            samples=2,
                            accuracy=accuracy,
                            ci95=0.1,
                            mean_tokens=TOKENS[ck],
                            median_tokens=TOKENS[ck],
                        )
                    ],
                )
                insert_ignore(
                    session,
                    EvalSampleRow,
                    [
                        dict(
                            key,
                            problem_id=str(p),
                            sample=s,
                            turns=["..."],
                            tokens=TOKENS[ck] + 10 * p,
                            extracted="1",
                            correct=p < 2,
                        )
                        for p in range(4)
                        for s in range(2)
                    ],
                )
    engine.dispose()
    return run_id


def test_report_command_writes_markdown_html_and_plots(db_url: str, tmp_path: Path) -> None:
    run_id = fill_run(db_url)
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app, ["report", run_id, "--out", str(out)], env={"DUALPHASE_COMMON__DATABASE_URL": db_url}
    )
    assert result.exit_code == 0, result.output

    markdown = (out / "report.md").read_text()
    # Models in stage order, baselines beside their stage; one row per benchmark and the mean.
    assert "| benchmark | M0 | M0 think-twice | M0 self-rewarding | M1 | M2 |" in markdown
    assert (
        "| gsm8k | 25.0 ± 10.0 (100 tok) | 40.0 ± 10.0 (100 tok) | 30.0 ± 10.0 (100 tok) "
        "| 50.0 ± 10.0 (300 tok) | 75.0 ± 10.0 (400 tok) |" in markdown
    )
    assert "| mean | 17.5 (100 tok) |" in markdown
    html = (out / "report.html").read_text()
    assert "<td>M2</td>" not in html and "<th>M2</th>" in html
    assert '<img src="accuracy.png"' in html and '<img src="lengths.png"' in html
    for name in ("accuracy.png", "lengths.png"):
        with Image.open(out / name) as image:
            image.verify()  # a readable PNG, not just a file with the name
            assert image.format == "PNG" and image.size[0] >= 600


def test_report_lengths_come_from_the_samples(sqlite_url: str) -> None:
    run_id = fill_run(sqlite_url)
    engine = make_engine(sqlite_url)
    with make_sessionmaker(engine)() as session:
        data = load_run(session, run_id)
    engine.dispose()
    assert data.models() == ["M0", "M0 think-twice", "M0 self-rewarding", "M1", "M2"]
    # Two benchmarks x 4 problems x 2 samples per model, tokens as written.
    assert sorted(data.lengths["M1"]) == sorted([300 + 10 * p for p in range(4)] * 4)


def test_report_of_a_run_without_results_names_the_run(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with make_sessionmaker(engine)() as session, pytest.raises(ValueError, match="'nope'"):
        load_run(session, "nope")
    engine.dispose()


def test_the_report_pairs_each_stage_with_the_model_it_improves_on(sqlite_url: str) -> None:
    """M0 right on problems 0-1 of 10, M1 on 0-8: 7 discordant pairs, all for M1, so the exact
    McNemar p-value is 2 * (1/2)^7 = 0.015625 and the difference is +70 points."""
    run_id = "paired"
    engine = make_engine(sqlite_url)
    with transaction(make_sessionmaker(engine)) as session:
        session.add(CheckpointRow(id="ck-m1", run_id=run_id, stage="M1", path="/x"))
        for ck, right in ((BASE_CHECKPOINT_ID, 2), ("ck-m1", 9)):
            key = dict(run_id=run_id, checkpoint_id=ck, benchmark="synthetic", mode="base")
            summary = dict(key, problems=10, samples=1, accuracy=right / 10, ci95=0.0)
            insert_ignore(session, EvalResult, [dict(summary, mean_tokens=5, median_tokens=5)])
            insert_ignore(
                session,
                EvalSampleRow,
                [
                    dict(
                        key,
                        problem_id=str(p),
                        sample=0,
                        turns=["."],
                        tokens=5,
                        extracted="",
                        correct=p < right,
                    )
                    for p in range(10)
                ],
            )
    with make_sessionmaker(engine)() as session:
        markdown = render_markdown(load_run(session, run_id))
    line = next(ln for ln in markdown.splitlines() if "| M1 - M0 |" in ln)
    assert "| synthetic | M1 - M0 | 10 | +70.0 pts" in line
    assert "p=0.016 (McNemar, 7 vs 0 discordant)" in line
