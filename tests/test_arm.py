"""The arm (stage ``oracle``), labelled by its source: the problems' reference solutions, or a
teacher's solutions file of which only those graded correct train; and ``dualphase distill``,
which writes such a file with a teacher model (here the embedded model, with tiny budgets).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from dualphase.cli import app
from dualphase.paper import RunFacts, against_paper
from dualphase.report import load_run
from dualphase.run_story import arm_counts, arm_name
from sampler_svc.sealing import seal_phase1
from shared.core.db import (
    CheckpointRow,
    EvalResult,
    EvalSampleRow,
    GenerationRow,
    Problem,
    RuleCount,
    Run,
    VerdictRow,
    insert_ignore,
    make_engine,
    make_sessionmaker,
)
from shared.core.messages import SamplingParams
from shared.core.settings import (
    CommonSettings,
    EvalSettings,
    InferenceConfig,
    SamplerSettings,
    Settings,
)
from shared.inference import Backend, load_backend
from shared.method import arm
from shared.method.evaluation import SYSTEM_PROMPT
from shared.method.grading import Grader, extract_answer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TEACHER = "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"
# (id, question, gold) of the run's phase-1 problems.
PROBLEMS = [
    ("p0", "Ann has 3 apples and buys 1 more. How many apples does Ann have?", "4"),
    ("p1", "Bo has 9 pens and gives away 2. How many pens does Bo have?", "7"),
    ("p2", "Cy reads 2 pages and then 3 pages. How many pages did Cy read?", "5"),
    ("p3", "Di has 6 cups and breaks 4. How many cups are left?", "2"),
]


@pytest.fixture(scope="module")
def grader() -> Grader:
    with Grader(timeout_s=5.0) as g:
        yield g


def solutions_file(path: Path) -> Path:
    rows = [
        {
            "problem_id": "p0",
            "solution": "3 + 1 = 4.\nThe answer is \\boxed{4}.",
            "teacher": TEACHER,
        },
        {
            "problem_id": "p1",
            "solution": "9 - 2 = 6.\nThe answer is \\boxed{6}.",
            "teacher": TEACHER,
        },
        # No id of the run: matched by its question (case and spacing aside).
        {
            "question": "cy reads 2 pages  and then 3 pages. How many pages did Cy read?",
            "solution": "2 + 3 = 5.\nThe answer is \\boxed{5}.",
            "teacher": TEACHER,
        },
        {
            "problem_id": "p2",
            "solution": "2 + 3 = 5.\nThe answer is  \\boxed{5}.",
            "teacher": TEACHER,
        },
        {
            "problem_id": "elsewhere",
            "question": "Not a problem of the run?",
            "solution": "\\boxed{1}",
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def add_phase1(sessions, run_id: str, settings: Settings) -> None:
    """The run, its problems, and one verdict per problem (no dialogue accepted): phase 1 is
    judged, so the next call seals it."""
    with sessions.begin() as session:
        session.add(Run(id=run_id, config=settings.model_dump(mode="json")))
        session.flush()
        insert_ignore(
            session,
            Problem,
            [
                dict(run_id=run_id, problem_id=p, phase=1, question=q, gold=g)
                for p, q, g in PROBLEMS
            ],
        )
        for p, _, _ in PROBLEMS:
            sample_id = f"{run_id}:{p}:p1:0"
            session.add(
                GenerationRow(
                    run_id=run_id,
                    problem_id=p,
                    sample_id=sample_id,
                    job_id=f"{run_id}:{p}:p1",
                    phase=1,
                    turns=["1", "review", "1"],
                    tokens=[1, 1, 1],
                    model="m0",
                    prompt_version="v1",
                    params=SamplingParams().model_dump(),
                    seed=0,
                )
            )
            session.add(
                VerdictRow(
                    run_id=run_id,
                    problem_id=p,
                    sample_id=sample_id,
                    phase=1,
                    category="RW",
                    initial_correct=True,
                    final_correct=False,
                    accepted=False,
                    failed_rules=[],
                )
            )


def test_the_distilled_arm_trains_only_on_solutions_graded_correct(
    db_url: str, tmp_path: Path
) -> None:
    """Of five file rows: one names no problem of the run, one is wrong (\\boxed{6} for 7), one
    repeats another's text; two train (p0 by id, p2 by question), labelled by their teacher."""
    run_id = f"arm-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        common=CommonSettings(data_dir=tmp_path),
        eval=EvalSettings(benchmarks=["synthetic"]),
        sampler=SamplerSettings(
            oracle=True, arm_solutions=str(solutions_file(tmp_path / "s.jsonl"))
        ),
    )
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    add_phase1(sessions, run_id, settings)
    with sessions.begin() as session:
        manifests = seal_phase1(session, run_id, settings)
    assert [m.stage for m in manifests] == ["phase1", "oracle"]
    rows = [json.loads(line) for line in Path(manifests[1].files[0].path).read_text().splitlines()]
    assert [r["problem_id"] for r in rows] == ["p0", "p2"]
    assert [r["completion"][0]["content"] for r in rows] == [
        "3 + 1 = 4.\nThe answer is \\boxed{4}.",
        "2 + 3 = 5.\nThe answer is \\boxed{5}.",
    ]
    assert {r["source"] for r in rows} == {"oracle"} and len({r["sample_id"] for r in rows}) == 2
    assert manifests[1].base_model == settings.inference.model  # from the base model, like M1

    with sessions.begin() as session:  # the arm evaluated, as eval-svc would store it
        session.add(CheckpointRow(id=f"{run_id}-arm", run_id=run_id, stage="oracle", path=""))
        key = dict(run_id=run_id, checkpoint_id=f"{run_id}-arm", benchmark="synthetic", mode="base")
        session.add(EvalResult(**key, problems=1, samples=1, accuracy=1.0, mean_tokens=3))
        session.add(
            EvalSampleRow(**key, problem_id="s0", sample=0, turns=["4"], tokens=3, correct=True)
        )
    with sessions() as session:
        label = f"distilled ({TEACHER})"
        assert arm_name(session, run_id, session.get_one(Run, run_id).config) == label
        assert load_run(session, run_id).models() == [label]
        counts = {
            r.rule: (r.failed, r.passed)
            for r in session.scalars(select(RuleCount).where(RuleCount.run_id == run_id))
            if r.rule.startswith("arm:")
        }
        assert counts == {
            "arm:matched": (1, 4),
            "arm:graded": (1, 3),
            "arm:decontam": (0, 3),
            "arm:distinct": (1, 2),
            f"arm:teacher:{TEACHER}": (0, 2),
        }
        section = arm_counts(session, run_id)
        assert section.title == f"The arm: {label}"
        facts = RunFacts(session.get_one(Run, run_id).config, arm=label)
    row = next(r for r in against_paper(facts) if r[0] == "distilled baseline: teacher")
    assert row[1:4] == [TEACHER, "DeepSeek-R1-Distill-Qwen-32B", "no"]
    engine.dispose()


def test_the_arm_without_a_file_is_the_oracle_on_reference_solutions(
    grader: Grader, tmp_path: Path
) -> None:
    problems = [
        arm.ProblemRef(p, q, g, f"Reference {g}." if p != "p3" else "") for p, q, g in PROBLEMS
    ]
    rows, counts = arm.reference_rows(problems, drop={"p1"})
    assert [r.problem_id for r in rows] == ["p0", "p2"]
    assert counts == {"reference": (1, 3), "decontam": (1, 2)}
    assert arm.arm_label({"oracle": True}) == "oracle (reference solutions)"
    # A file's solutions of a contaminated problem are left out after grading.
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"problem_id": "p0", "solution": "\\boxed{4}"}) + "\n")
    solutions = arm.read_solutions(one)
    rows, counts = arm.file_rows(problems, solutions, {"p0"}, grader)
    assert rows == [] and counts["graded"] == (0, 1) and counts["decontam"] == (1, 0)
    assert arm.arm_label({"arm_solutions": "t.jsonl", "arm_teacher": "T"}) == "distilled (T)"
    assert arm.arm_label({"arm_solutions": "dir/t.jsonl"}) == "distilled (t.jsonl)"


def test_a_solutions_file_row_without_a_solution_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem_id": "p0", "solution": "\\boxed{1}"}) + "\n")
    path.write_text(path.read_text() + json.dumps({"problem_id": "p1"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'solution'"):
        arm.read_solutions(path)


@pytest.fixture(scope="module")
def backend() -> Backend:
    return load_backend(InferenceConfig(batch_size=8, threads=1))


def test_distill_keeps_the_teachers_answers_graded_correct_that_ended_on_their_own(
    backend: Backend, grader: Grader
) -> None:
    """The embedded model as the teacher, 2 samples of 96 tokens per problem. The gold answers
    are set from a first pass over the same batch (the same samples come back): each problem's
    gold is an answer one of its samples states, so both a kept and a left-out sample occur;
    what the test proves is the filter, not the model's arithmetic."""
    questions = [("a", "What is 2 + 3?"), ("b", "What is 10 - 4?")]
    params = SamplingParams(n=2, temperature=0.6, max_new_tokens=96, seed=0)
    conversations = [
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q}]
        for _, q in questions
    ]
    first = backend.chat(conversations, params)
    golds = []
    for result in first:
        ended = [c for c in result.completions if c.finish_reason == "stop"] or result.completions
        golds.append(extract_answer(ended[0].text) or "none")
    problems = [arm.ProblemRef(p, q, g) for (p, q), g in zip(questions, golds, strict=True)]

    made = arm.distill(backend, grader, problems, params, SYSTEM_PROMPT, "tiny", keep=1)

    samples = [(p, c) for p, r in zip(problems, first, strict=True) for c in r.completions]
    right = [grader.grade(c.text, p.gold).correct for p, c in samples]
    assert made.samples == 4 and made.correct == sum(right)
    expected = {}
    for (p, c), ok in zip(samples, right, strict=True):
        if ok and c.finish_reason == "stop":
            expected.setdefault(p.problem_id, c.text)  # keep=1: the first that ended
    assert made.truncated == sum(
        ok and c.finish_reason != "stop" for (_, c), ok in zip(samples, right, strict=True)
    )
    assert {r["problem_id"]: r["solution"] for r in made.rows} == expected
    assert all(r["teacher"] == "tiny" for r in made.rows)
    assert sum(right) < 4, "every sample right: the test shows no filtering"


def test_distill_command_writes_a_solutions_file_of_correct_answers(tmp_path: Path) -> None:
    problems = tmp_path / "problems.jsonl"
    problems.write_text(
        json.dumps({"id": "a", "question": "What is 2 + 3?", "answer": "5"})
        + "\n"
        + json.dumps({"id": "b", "question": "What is 10 - 4?", "answer": "6"})
        + "\n"
    )
    out = tmp_path / "solutions.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "distill",
            "--teacher",
            "embedded",
            "--name",
            "tiny teacher",
            "--problems",
            str(problems),
            "--out",
            str(out),
            "--samples",
            "2",
            "--max-new-tokens",
            "64",
        ],
        env={"DUALPHASE_INFERENCE__THREADS": "1"},
    )
    assert result.exit_code == 0, result.output
    assert "4 solutions of 2 problems sampled" in result.output and f"wrote {out}" in result.output
    rows = arm.read_solutions(out)  # the file the arm reads
    gold = {"a": "5", "b": "6"}
    with Grader(timeout_s=5.0) as grader:
        for row in rows:
            assert (
                row.teacher == "tiny teacher"
                and grader.grade(row.solution, gold[row.problem_id]).correct
            )
