"""Reports: from a run's rows in the database to Markdown, HTML and PNG files (via the CLI); the
labels, the pairs against M2, the settings against the paper, the prompts."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from dualphase.cli import CONFIGS, app
from dualphase.paper import NOT_STATED, PAPER, RunFacts
from dualphase.report import (
    ReportData,
    ReportRow,
    fallback_hits,
    lengths,
    load_run,
)
from dualphase.report_files import render_markdown
from dualphase.run_story import deviations, prompts
from shared.core.db import (
    CheckpointRow,
    EvalResult,
    EvalSampleRow,
    Problem,
    Run,
    insert_ignore,
    make_engine,
    make_sessionmaker,
    transaction,
)
from shared.core.messages import BASE_CHECKPOINT_ID, baseline_checkpoint_id
from shared.core.settings import CONFIG_ENV, GeneratorSettings, SamplerSettings, Settings
from shared.method.evaluation import SELF_REWARDING_SYSTEM, SYSTEM_PROMPT
from shared.method.markers import checkpoint_prompt, write_prompt_manifest

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
    assert (
        "| benchmark | M0 | M0 think-twice | M0 intrinsic self-correction | M1 | M2 |" in markdown
    )
    assert (
        "| gsm8k | 25.0 ± 10.0 (100 tok) | 40.0 ± 10.0 (100 tok) | 30.0 ± 10.0 (100 tok) "
        "| 50.0 ± 10.0 (300 tok) | 75.0 ± 10.0 (400 tok) |" in markdown
    )
    assert "| mean | 17.5 (100 tok) |" in markdown
    html = (out / "report.html").read_text()
    evaluation = html.split("<h2>Evaluation</h2>")[1].split("</table>")[0]
    assert "<td>M2</td>" not in evaluation and "<th>M2</th>" in evaluation  # models are columns
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
    assert data.models() == ["M0", "M0 think-twice", "M0 intrinsic self-correction", "M1", "M2"]
    # Two benchmarks x 4 problems x 2 samples per model, tokens as written.
    assert sorted(data.lengths["M1"]) == sorted([300 + 10 * p for p in range(4)] * 4)


def test_the_length_section_says_when_the_token_budget_binds() -> None:
    rows = [
        ReportRow(model, "synthetic", 4, 1, 0.5, 0.1, mean, mean)
        for model, mean in (("M0", 92.0), ("M2", 60.0))
    ]
    capped = ReportData("r", rows, lengths={"M0": [96, 96, 80, 96]}, cap=96)
    note = lengths(capped).note
    assert "The cap binds: 75% of M0's answers stopped at the 96-token budget" in note
    assert "no model's mean can exceed 1.04x M0's" in note  # 96 / 92
    roomy = ReportData("r", rows, lengths={"M0": [30, 40, 96, 50]}, cap=400)
    assert "0% of M0's answers reached the 400-token budget." in lengths(roomy).note


def test_right_answers_found_in_unfinished_text_are_counted(sqlite_url: str) -> None:
    run_id = f"fb-{uuid.uuid4().hex[:8]}"
    engine = make_engine(sqlite_url)
    key = dict(run_id=run_id, checkpoint_id=BASE_CHECKPOINT_ID, benchmark="b", mode="base")
    samples = [  # (text, tokens, right): the budget is 10 tokens
        ("So there are 12 then 5", 10, True),  # cut, no stated answer: the fallback's number
        ("The answer is 5", 10, True),  # cut, but it stated its answer
        ("5", 4, True),  # finished
        ("7", 10, False),
    ]
    with transaction(make_sessionmaker(engine)) as session:
        session.add(Run(id=run_id, config={"eval": {"max_new_tokens": 10}}, seed=0))
        session.add(EvalResult(**key, problems=4, samples=1, accuracy=0.75, mean_tokens=8.5))
        for i, (text, tokens, right) in enumerate(samples):
            session.add(
                EvalSampleRow(
                    **key,
                    problem_id=str(i),
                    sample=0,
                    turns=[text],
                    tokens=tokens,
                    extracted="5",
                    correct=right,
                )
            )
    with make_sessionmaker(engine)() as session:
        data = load_run(session, run_id)
    engine.dispose()
    assert data.fallback == {("M0", "b"): (3, 1)}
    assert fallback_hits(data).rows == [["b", "M0", "3", "1"]]


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
            add_model(session, run_id, ck, "base", set(range(right)), 10, "synthetic")
    with make_sessionmaker(engine)() as session:
        markdown = render_markdown(load_run(session, run_id))
    line = next(ln for ln in markdown.splitlines() if "| M1 - M0 |" in ln)
    assert "| synthetic | M1 - M0 | 10 | +70.0 pts" in line
    assert "p=0.016 (McNemar, 7 vs 0 discordant)" in line


def add_model(
    session: Session,
    run_id: str,
    checkpoint_id: str,
    mode: str,
    right: set[int],
    problems: int,
    benchmark: str = "gsm8k",
) -> None:
    """One model's evaluation: problems 0..problems-1, one sample each, right on ``right``."""
    key = dict(run_id=run_id, checkpoint_id=checkpoint_id, benchmark=benchmark, mode=mode)
    summary = dict(key, problems=problems, samples=1, accuracy=len(right) / problems, ci95=0.0)
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
                correct=p in right,
            )
            for p in range(problems)
        ],
    )


SELF_REWARDING_MODEL = "self-rewarding (Xiong et al.)"


def test_m2_is_paired_with_every_baseline_model_mode_and_arm(db_url: str) -> None:
    """M2 right on problems 0-5 of 8. A baseline model right on 0 and evaluated on problems 0-4
    only: paired on those 5, +80 points (4 vs 0 discordant). M0's two baseline modes and the arm
    (reference solutions) each get their row against M2; the arm also against M0."""
    run_id = f"pairs-{uuid.uuid4().hex[:8]}"
    config = {
        "sampler": {"oracle": True},
        "eval": {
            "baseline_models": [
                {"name": SELF_REWARDING_MODEL, "model": "x", "mode": "self-rewarding"}
            ]
        },
    }
    engine = make_engine(db_url)
    with transaction(make_sessionmaker(engine)) as session:
        session.add(Run(id=run_id, config=config))
        for ck, stage in (("m2", "M2"), ("arm", "oracle")):
            session.add(CheckpointRow(id=f"{run_id}-{ck}", run_id=run_id, stage=stage, path=""))
        session.flush()
        add_model(session, run_id, f"{run_id}-m2", "base", set(range(6)), 8)
        add_model(session, run_id, f"{run_id}-arm", "base", set(range(8)), 8)
        add_model(session, run_id, BASE_CHECKPOINT_ID, "base", {0}, 8)
        add_model(session, run_id, BASE_CHECKPOINT_ID, "think-twice", {0, 1}, 8)
        add_model(session, run_id, BASE_CHECKPOINT_ID, "self-rewarding", set(), 8)
        add_model(
            session, run_id, baseline_checkpoint_id(SELF_REWARDING_MODEL), "self-rewarding", {0}, 5
        )
    with make_sessionmaker(engine)() as session:
        markdown = render_markdown(load_run(session, run_id))
    engine.dispose()

    models = "M0 | M0 think-twice | M0 intrinsic self-correction | self-rewarding (Xiong et al.)"
    assert f"| benchmark | {models} | M2 | oracle (reference solutions) |" in markdown
    pairs = {
        line.split(" | ")[1]: line
        for line in markdown.split("## Paired differences")[1].split("## ")[0].splitlines()
        if line.startswith("| gsm8k |")
    }
    assert pairs["M2 - self-rewarding (Xiong et al.)"].startswith(
        "| gsm8k | M2 - self-rewarding (Xiong et al.) | 5 | +80.0 pts"
    )
    assert "(McNemar, 4 vs 0 discordant)" in pairs["M2 - self-rewarding (Xiong et al.)"]
    assert "| 8 | +50.0 pts" in pairs["M2 - M0 think-twice"]
    assert "| 8 | +75.0 pts" in pairs["M2 - M0 intrinsic self-correction"]
    assert "| 8 | -25.0 pts" in pairs["M2 - oracle (reference solutions)"]
    assert "| 8 | +87.5 pts" in pairs["oracle (reference solutions) - M0"]
    assert set(pairs) == {
        "M2 - M0",
        "oracle (reference solutions) - M0",
        "M2 - M0 think-twice",
        "M2 - M0 intrinsic self-correction",
        "M2 - self-rewarding (Xiong et al.)",
        "M2 - oracle (reference solutions)",
    }


def test_the_prompted_self_rewarding_mode_reads_intrinsic_self_correction(sqlite_url: str) -> None:
    run_id = fill_run(sqlite_url)
    engine = make_engine(sqlite_url)
    with make_sessionmaker(engine)() as session:
        markdown = render_markdown(load_run(session, run_id))
    engine.dispose()
    assert "| M0 intrinsic self-correction |" in markdown
    assert "M0 self-rewarding" not in markdown


def paper_rows(sqlite_url: str, settings: Settings, problems: int = 0) -> dict[str, list[str]]:
    """The run report's rows of settings against the paper, by setting."""
    run_id = f"paper-{uuid.uuid4().hex[:8]}"
    engine = make_engine(sqlite_url)
    with transaction(make_sessionmaker(engine)) as session:
        session.add(Run(id=run_id, config=settings.model_dump(mode="json")))
        session.flush()
        rows = [
            dict(
                run_id=run_id,
                problem_id=f"p{i}",
                phase=1,
                question=f"q{i}",
                gold="1",
                dataset="synthetic",
            )
            for i in range(problems)
        ]
        if rows:
            insert_ignore(session, Problem, rows)
    with make_sessionmaker(engine)() as session:
        section = deviations(session, run_id)
    engine.dispose()
    assert section.header == ["setting", "this run", "paper", "deviates", "note"]
    return {row[0]: row[1:4] for row in section.rows}


def test_the_paper_column_says_not_stated_where_the_paper_is_silent(sqlite_url: str) -> None:
    rows = paper_rows(
        sqlite_url,
        Settings(
            generator=GeneratorSettings(temperature=0.7),
            sampler=SamplerSettings(schedule=[4, 10, 100]),
        ),
        problems=3,
    )
    # What the paper leaves open is no deviation, whatever the run chose.
    assert rows["eval.samples (k)"] == ["4", "not stated", ""]
    assert rows["sampler.schedule[0] (n1)"] == ["4", "not stated", ""]
    assert rows["sampler.marker_style"] == ["system", "not stated", ""]
    assert rows["sampler.keep_k"][1:] == ["not stated", ""]
    # What it states, and the run does otherwise, is a deviation.
    assert rows["generator.temperature"] == ["0.7", "0.6", "yes"]
    assert rows["phase-1 problems"] == ["3", "10000", "yes"]
    assert rows["training problems from"] == ["synthetic", "DeepScaleR", "yes"]
    assert rows["distilled baseline: teacher"] == [
        "no distilled arm",
        "DeepSeek-R1-Distill-Qwen-32B",
        "yes",
    ]
    assert rows["self-rewarding baseline"][2] == "yes"  # M0 prompted is not the trained model
    # ... and where the run does what the paper states, none.
    assert rows["sampler.schedule[1:] (n2, n3)"] == ["[10, 100]", "[10, 100]", "no"]
    assert rows["eval.temperature"] == ["0.6", "0.6", "no"]
    assert rows["source markers"] == ["both sources", "both sources", "no"]


def test_configs_paper_yaml_states_what_the_paper_states(monkeypatch: pytest.MonkeyPatch) -> None:
    """dualphase.paper.PAPER is the one place that says what the paper states: the paper's
    config may not drift from it."""
    for name in [n for n in os.environ if n.startswith("DUALPHASE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(CONFIG_ENV, str(CONFIGS / "paper.yaml"))
    facts = RunFacts.of_config(Settings().model_dump(mode="json"))
    stated = [s for s in PAPER if s.in_config and s.paper != NOT_STATED]
    names = {"generator.temperature", "eval.temperature", "inference.model", "phase-1 problems"}
    assert names <= {s.name for s in stated}
    for s in stated:
        assert s.deviates(s.read(facts)) == "no", (s.name, s.read(facts), s.paper)


def test_the_report_prints_the_prompt_of_each_model(sqlite_url: str, tmp_path: Path) -> None:
    """Read from each checkpoint's manifest: M1 under the system style with its marker; M2 of a
    prefix-style run prompted without one; the base model and a baseline model their own."""
    run_id = f"prompts-{uuid.uuid4().hex[:8]}"
    prefix = SamplerSettings(marker_style="prefix")
    system = SamplerSettings()
    for name, stage, sampler in (("m1", "M1", system), ("m2", "M2", prefix)):
        (tmp_path / name).mkdir()
        write_prompt_manifest(tmp_path / name, checkpoint_prompt(stage, "Plain.", sampler))
    config = {
        "eval": {
            "baseline_models": [
                {"name": SELF_REWARDING_MODEL, "model": "x", "mode": "self-rewarding"}
            ]
        }
    }
    engine = make_engine(sqlite_url)
    with transaction(make_sessionmaker(engine)) as session:
        session.add(Run(id=run_id, config=config))
        for name, stage in (("m1", "M1"), ("m2", "M2")):
            session.add(
                CheckpointRow(
                    id=f"{run_id}-{name}", run_id=run_id, stage=stage, path=str(tmp_path / name)
                )
            )
    with make_sessionmaker(engine)() as session:
        section = prompts(session, run_id)
    engine.dispose()
    rows = {row[0]: row[1:] for row in section.rows}
    assert rows["M0 (base model)"][0] == SYSTEM_PROMPT
    assert rows["M1"][:2] == ["Plain. ⏎ [multi-turn long CoT]", "[multi-turn long CoT]"]
    assert rows["M2"][:2] == ["Plain.", ""]
    assert "prompted without a marker" in rows["M2"][2]
    assert rows[SELF_REWARDING_MODEL][0] == " ⏎ ".join(SELF_REWARDING_SYSTEM.splitlines())
