"""`dualphase compare RUN_A RUN_B`: one model stage of two runs (an ablation against its base),
paired on the same problems per benchmark; runs evaluated on different problems are refused."""

from __future__ import annotations

import uuid

from typer.testing import CliRunner

from dualphase.cli import app
from shared.core.db import (
    CheckpointRow,
    EvalResult,
    EvalSampleRow,
    Run,
    insert_ignore,
    make_engine,
    make_sessionmaker,
    transaction,
)
from shared.core.settings import SamplerSettings, Settings


def add_run(url: str, mode: str, right: dict[str, set[int]], problems: dict[str, int]) -> str:
    """A run (sampler.mode ``mode``) whose M2 was evaluated on ``problems[bench]`` problems of
    each benchmark, one sample each, right on ``right[bench]``."""
    run_id = f"cmp-{uuid.uuid4().hex[:8]}"
    config = Settings(sampler=SamplerSettings(mode=mode)).model_dump(mode="json")
    engine = make_engine(url)
    with transaction(make_sessionmaker(engine)) as session:
        session.add(Run(id=run_id, config=config))
        session.add(CheckpointRow(id=f"{run_id}-m2", run_id=run_id, stage="M2", path="/x"))
        session.flush()
        for bench, n in problems.items():
            key = dict(run_id=run_id, checkpoint_id=f"{run_id}-m2", benchmark=bench, mode="base")
            accuracy = len(right[bench]) / n
            summary = dict(key, problems=n, samples=1, accuracy=accuracy, mean_tokens=5)
            insert_ignore(session, EvalResult, [summary])
            insert_ignore(
                session,
                EvalSampleRow,
                [
                    dict(key, problem_id=f"q{p}", sample=0, turns=["."], tokens=5)
                    | {"extracted": "", "correct": p in right[bench]}
                    for p in range(n)
                ],
            )
    engine.dispose()
    return run_id


def compare(url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["compare", *args], env={"DUALPHASE_COMMON__DATABASE_URL": url, "COLUMNS": "200"}
    )
    return result.exit_code, result.output


def test_compare_pairs_two_runs_m2_on_the_same_problems(db_url: str) -> None:
    """gsm8k: A right on 0-3 of 10, B on 0-8 (5 vs 0 discordant); svamp: B loses one problem."""
    a = add_run(
        db_url, "joint", {"gsm8k": set(range(4)), "svamp": {0, 1}}, {"gsm8k": 10, "svamp": 4}
    )
    b = add_run(
        db_url, "sequential", {"gsm8k": set(range(9)), "svamp": {0}}, {"gsm8k": 10, "svamp": 4}
    )
    code, output = compare(db_url, a, b)
    assert code == 0, output
    assert f"# M2: run B ({b}) against run A ({a})" in output
    assert "| gsm8k | 40.0 | 90.0 | 10 | +50.0 pts" in output
    assert "p=0.062 (McNemar, 5 vs 0 discordant) |" in output
    assert "| svamp | 50.0 | 25.0 | 4 | -25.0 pts" in output
    assert "| sampler.mode | joint | sequential |" in output  # what the ablation changed


def test_compare_refuses_runs_evaluated_on_different_problems(db_url: str) -> None:
    a = add_run(db_url, "joint", {"gsm8k": {0}, "svamp": {0}}, {"gsm8k": 10, "svamp": 4})
    b = add_run(db_url, "joint", {"gsm8k": {0}, "svamp": {0}}, {"gsm8k": 10, "svamp": 6})
    code, output = compare(db_url, a, b)
    assert code == 2
    [line] = output.strip().splitlines()  # one line, no traceback
    assert line.startswith("error: ") and "different problems of svamp" in line
    assert f"0 problem ids only in {a}, 2 only in {b}" in line


def test_compare_names_a_run_or_stage_that_does_not_exist(db_url: str) -> None:
    a = add_run(db_url, "joint", {"gsm8k": {0}}, {"gsm8k": 2})
    code, output = compare(db_url, a, "no-such-run")
    assert code == 2 and "error: run 'no-such-run' is not in the database" in output
    code, output = compare(db_url, a, a, "--stage", "M1")
    assert code == 2 and f"error: run '{a}' has no evaluation of M1 in mode base" in output
    assert "(evaluated: M2)" in output
