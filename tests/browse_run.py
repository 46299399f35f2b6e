"""A small finished run in a database, made by the project's own code wherever it is cheap.

The generator's model is the only stand-in: its texts are written here, right or wrong by plan.
Everything after it is the real code: the verifier's grading (math-verify) and rule filters, its
rule counts, the sampler's balance, rounds and shards (files on disk, registered), phase 2 started
by the M1 checkpoint message. Training and evaluation are rows as trainer-svc and eval-svc write
them. Used by tests/test_browse.py and tests/test_export.py.
"""

from __future__ import annotations

import functools
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from generator_svc.handler import generation_rows, job_params
from sampler_svc import handler as sampler
from shared.core import runs
from shared.core.db import (
    CheckpointRow,
    EvalResult,
    EvalSampleRow,
    GenerationRow,
    Problem,
    Run,
    insert_ignore,
    insert_verdicts,
    make_engine,
    make_sessionmaker,
)
from shared.core.messages import (
    BASE_CHECKPOINT_ID,
    CheckpointReady,
    Dialogue,
    Generation,
    ProblemJob,
    VerifiedSamples,
)
from shared.core.settings import (
    CommonSettings,
    DataSettings,
    GeneratorSettings,
    SamplerSettings,
    Settings,
)
from shared.method.grading import Grader
from verifier_svc.app import _add_rule_counts
from verifier_svc.handler import verify_dialogue

CHECKS = "Let me verify each step. I check the arithmetic again and confirm it is right."
SCRIPT = "<script>alert(1)</script>"

# Phase 1: problem -> (turn-1 right, final right, how the final turn fails a rule if it does)
PHASE1 = {
    "add-1": (True, True, ""),
    "add-2": (True, True, ""),
    "add-3": (False, True, ""),
    "add-4": (True, False, ""),
    "add-5": (False, False, ""),
    "add-6": (True, True, "no_answer"),  # right number, no explicit answer: explicit_answer
}
# Phase 2 (schedule [2, 3]): problem -> right/wrong per sample, round after round.
PHASE2 = {
    "mul-1": [True, True],
    "mul-2": [False, False, True, False, False],
    "mul-3": [False, False, False, False, False],  # exhausted; one sample carries SCRIPT
    "mul-4": [False, True],
}


GENERATOR = GeneratorSettings()  # the sampling parameters stored with each generation


@dataclass
class BuiltRun:
    run_id: str
    settings: Settings
    script_problem: str = "mul-3"
    rejected_problem: str = "add-6"  # its dialogue fails explicit_answer


@functools.cache
def local_datasets() -> DataSettings:
    """The benchmarks the sampler's decontamination reads: local copies in the hub's layout,
    written once per process (conftest.write_hub_copy)."""
    from conftest import write_hub_copy

    root = Path(tempfile.mkdtemp(prefix="browse-run-datasets-"))
    return DataSettings(local_dir=write_hub_copy(root / "hub"), cache_dir=root / "cache")


def settings_for(data_dir: Path) -> Settings:
    return Settings(
        common=CommonSettings(data_dir=data_dir),
        sampler=SamplerSettings(schedule=[2, 3]),
        data=local_datasets(),
    )


def _gold(problem_id: str) -> str:
    a = int(problem_id.split("-")[1])
    return str(a + 4) if problem_id.startswith("add") else str(a * 6)


def _question(problem_id: str) -> str:
    a = int(problem_id.split("-")[1])
    if problem_id.startswith("add"):
        return f"Ana has {a} apples and buys 4 more. How many apples does she have?"
    return f"A box holds {a} rows of 6 eggs. How many eggs are in the box?"


def _answer(gold: str, right: bool) -> str:
    return f"\\boxed{{{gold if right else int(gold) + 7}}}"


def _store(session: Session, job: ProblemJob, samples: list[tuple[list[str], str]]) -> Dialogue:
    """What the generator writes and publishes: one row per sample of the job."""
    gens = [
        Generation(
            sample_id=f"{job.job_id}:{i}",
            turns=turns,
            tokens=[40 + 3 * len(t.split()) for t in turns],
            finish_reasons=["stop"] * (len(turns) - 1) + [finish],
            seed=job.seed + i,
        )
        for i, (turns, finish) in enumerate(samples)
    ]
    model = job.model or "smollm2"
    insert_ignore(session, GenerationRow, generation_rows(job, gens, model, "v1", GENERATOR))
    return Dialogue(
        run_id=job.run_id,
        problem_id=job.problem_id,
        job_id=job.job_id,
        phase=job.phase,
        round=job.round,
        gold=job.gold,
        model=model,
        prompt_version="v1",
        params=job_params(job, GENERATOR),
        samples=gens,
    )


def _verify_and_sample(
    session: Session, dialogue: Dialogue, grader: Grader, settings: Settings
) -> list:
    """The verifier's message handling, then the sampler's: what the sampler would publish."""
    out: VerifiedSamples = verify_dialogue(dialogue, grader, settings.verifier)
    if insert_verdicts(session, out) == len(out.verdicts):
        _add_rule_counts(session, out, settings.verifier)
    return sampler.on_verdicts(session, out, settings)


def _phase1_turns(problem_id: str) -> list[str]:
    first, final, fails = PHASE1[problem_id]
    gold = _gold(problem_id)
    last = f"Solving step by step. {CHECKS} So the final answer is {_answer(gold, final)}."
    if fails == "no_answer":
        last = f"Solving step by step. {CHECKS} We end with {gold} apples in all."
    return [f"First attempt: the answer is {_answer(gold, first)}.", "Review: step 1 holds.", last]


def _phase2_text(problem_id: str, right: bool, k: int) -> str:
    gold = _gold(problem_id)
    note = f" I wrote {SCRIPT} here." if problem_id == "mul-3" and k == 0 else ""
    return f"Multiply the rows by 6 (sample {k}).{note} The answer is {_answer(gold, right)}."


def build_run(url: str, data_dir: Path) -> BuiltRun:
    """Phase 1, M1, phase 2 and the joint shard, M2, and M0/M1/M2 evaluated on gsm8k."""
    settings = settings_for(data_dir)
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    sessions = make_sessionmaker(make_engine(url))
    with sessions.begin() as session:
        session.add(Run(id=run_id, config=settings.model_dump(mode="json"), seed=3))
        session.flush()
        problems = [(1, p) for p in PHASE1] + [(2, p) for p in PHASE2]
        insert_ignore(
            session,
            Problem,
            [
                dict(
                    run_id=run_id,
                    problem_id=p,
                    phase=phase,
                    question=_question(p),
                    gold=_gold(p),
                    dataset="synthetic",
                    source=f"synthetic:{p}",
                )
                for phase, p in problems
            ],
        )
    with Grader(timeout_s=10) as grader:
        with sessions.begin() as session:
            phase1 = session.scalars(
                select(Problem).where(Problem.run_id == run_id, Problem.phase == 1)
            ).all()
            for problem in phase1:
                job = runs.problem_job(run_id, 3, problem)
                finish = "length" if problem.problem_id == "add-2" else "stop"
                dialogue = _store(session, job, [(_phase1_turns(problem.problem_id), finish)])
                _verify_and_sample(session, dialogue, grader, settings)
        m1 = CheckpointReady(
            run_id=run_id, checkpoint_id=f"{run_id}-m1", stage="M1", path=str(data_dir / "m1")
        )
        with sessions.begin() as session:
            jobs = sampler.on_checkpoint(session, m1, settings)
        drawn = {p: 0 for p in PHASE2}
        while jobs:
            job = jobs.pop(0)
            plan = PHASE2[job.problem_id]
            n = job.n
            texts = [
                ([_phase2_text(job.problem_id, right, drawn[job.problem_id] + k)], "stop")
                for k, right in enumerate(plan[drawn[job.problem_id] : drawn[job.problem_id] + n])
            ]
            drawn[job.problem_id] += n
            with sessions.begin() as session:
                dialogue = _store(session, job, texts)
                out = _verify_and_sample(session, dialogue, grader, settings)
            jobs += [m for m in out if isinstance(m, ProblemJob)]
    with sessions.begin() as session:
        _trained_and_evaluated(session, run_id)
    return BuiltRun(run_id, settings)


# gsm8k problem -> (M0 right, M1 right, M2 right): M2 fixes g2 and g3, breaks g0.
EVAL = {"g0": (1, 1, 0), "g1": (1, 1, 1), "g2": (0, 1, 1), "g3": (0, 0, 1), "g4": (0, 0, 0)}


def _trained_and_evaluated(session: Session, run_id: str) -> None:
    m1 = session.get(CheckpointRow, f"{run_id}-m1")
    m1.training_config = dict(global_step=4, train_loss=1.25, tokens=900, train_seconds=12.0)
    session.add(
        CheckpointRow(
            id=f"{run_id}-m2",
            run_id=run_id,
            stage="M2",
            path="/ckpt/m2",
            parent_id=f"{run_id}-m1",
            shard_id=f"{run_id}:joint",
            training_config=dict(global_step=6, train_loss=0.75, tokens=1300, train_seconds=20.0),
        )
    )
    for stage, checkpoint in enumerate((BASE_CHECKPOINT_ID, f"{run_id}-m1", f"{run_id}-m2")):
        right = {p: plan[stage] for p, plan in EVAL.items()}
        key = dict(run_id=run_id, checkpoint_id=checkpoint, benchmark="gsm8k", mode="base")
        insert_ignore(
            session,
            EvalSampleRow,
            [
                dict(
                    key,
                    problem_id=p,
                    sample=0,
                    turns=[f"Stage {stage} on {p}: the answer is \\boxed{{{10 + ok}}}."],
                    tokens=50 + 20 * stage,
                    extracted=str(10 + ok),
                    correct=bool(ok),
                )
                for p, ok in right.items()
            ],
        )
        accuracy = sum(right.values()) / len(right)
        insert_ignore(
            session,
            EvalResult,
            [dict(key, problems=5, samples=1, accuracy=accuracy, mean_tokens=50 + 20 * stage)],
        )
