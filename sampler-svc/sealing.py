"""Training shards: the phase-1 shard once every phase-1 problem has a verdict, the phase-2
(sequential mode) or joint (phase 1 + phase 2) shard once no phase-2 problem is pending.

Each shard is written once, registered in the database and announced by its manifest; only the
call that writes a shard announces it (the control plane announces it again if that publish was
lost). Rows carry the source marker (``shared.method.markers``) and are checked against the shard
schema (``shared.core.shards``).
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sampler_svc.balance import Phase1Set, build_phase1_set, store_counts
from sampler_svc.decontam import Decontaminator
from shared.core import shards
from shared.core.db import AttemptCount, GenerationRow, Problem, Run, VerdictRow
from shared.core.messages import ShardManifest
from shared.core.runs import sampling_checkpoint
from shared.core.settings import Settings
from shared.datasets import load_benchmarks
from shared.datasets.rows import text_key
from shared.method import arm
from shared.method.grading import Grader
from shared.method.markers import Source, render
from shared.method.prompts import load_prompts


def contaminated(session: Session, run_id: str, settings: Settings) -> set[str]:
    """Problem ids of the run sharing a long n-gram with a problem of a benchmark it evaluates."""
    benchmarks = load_benchmarks(settings.eval, settings.data, whole=True)
    check = Decontaminator.from_benchmarks(benchmarks, settings.sampler.decontam_ngram)
    problems = session.scalars(select(Problem).where(Problem.run_id == run_id)).all()
    return {p.problem_id for p in problems if check.match(p.question)}


def seal_phase1(session: Session, run_id: str, settings: Settings) -> list[ShardManifest]:
    """Write the phase-1 shard (and the oracle arm's) once every phase-1 problem has a verdict.

    The verifier writes verdict rows before the sampler reads its messages, so every message of
    the sampler's backlog can find all verdicts present: only the call that writes the shard
    announces it.
    """
    run = session.get(Run, run_id, with_for_update=True)  # one replica seals, the others wait
    if run is None:
        raise ValueError(f"run {run_id!r} is not in the runs table")
    problems, judged = session.execute(
        select(
            select(func.count())
            .where(Problem.run_id == run_id, Problem.phase == 1)
            .scalar_subquery(),
            select(func.count(func.distinct(VerdictRow.problem_id)))
            .where(VerdictRow.run_id == run_id, VerdictRow.phase == 1)
            .scalar_subquery(),
        )
    ).one()
    if problems == 0 or judged < problems or shards.registered(session, run_id, "phase1"):
        return []
    drop = contaminated(session, run_id, settings)
    phase1 = _phase1_set(session, run, drop, settings)
    store_counts(session, run_id, "phase1:", phase1.counts)
    rows = _rows(session, run_id, phase1.kept, "multi-turn", settings)
    shards.write(session, settings.common.data_dir, run_id, "phase1", rows)
    stages: list[shards.Stage] = ["phase1"]
    if settings.sampler.oracle:
        shards.write(
            session,
            settings.common.data_dir,
            run_id,
            "oracle",
            _oracle_rows(session, run_id, drop, settings),
        )
        stages.append("oracle")
    return [shards.manifest(session, run_id, s, settings.inference.model) for s in stages]


def _phase1_set(session: Session, run: Run, drop: Collection[str], settings: Settings) -> Phase1Set:
    """The balanced phase-1 set of the run, as its settings balance it."""
    sampler = settings.sampler
    return build_phase1_set(
        session, run.id, run.seed, drop, sampler.balance_ratio, sampler.balance_min_right
    )


def _oracle_rows(
    session: Session, run_id: str, drop: Collection[str], settings: Settings
) -> list[dict]:
    """The arm's rows (``shared.method.arm``): the reference solution of every problem of the
    run that has one, or the solutions of ``sampler.arm_solutions`` graded correct against their
    problem's gold answer; decontaminated, without a marker, trained from the base model like M1.
    Its counts go to the report (``arm:`` rows of rule_counts)."""
    problems = [
        arm.ProblemRef(p.problem_id, p.question, p.gold, p.solution)
        for p in session.scalars(
            select(Problem)
            .where(Problem.run_id == run_id)
            .order_by(Problem.phase, Problem.problem_id)
        )
    ]
    config = settings.sampler
    if config.arm_solutions:
        solutions = arm.read_solutions(config.arm_solutions, config.arm_teacher)
        with Grader(settings.verifier.grade_timeout_s, settings.verifier.workers) as grader:
            chosen, counts = arm.file_rows(problems, solutions, drop, grader)
    else:
        chosen, counts = arm.reference_rows(problems, drop)
    store_counts(session, run_id, arm.COUNTS_PREFIX, counts)
    system = load_prompts(settings.generator.prompt_version).system
    return [
        {
            **render(system, r.question, r.solution, "oracle", config),
            "source": "oracle",
            "run_id": run_id,
            "problem_id": r.problem_id,
            "sample_id": r.sample_id,
        }
        for r in chosen
    ]


def seal_phase2(session: Session, run_id: str, settings: Settings) -> list[ShardManifest]:
    """Write the phase-2 (sequential) or joint shard once no phase-2 problem is pending."""
    if sampling_checkpoint(session, run_id) is None:
        return []
    run = session.get_one(Run, run_id, with_for_update=True)
    problems, finished = session.execute(
        select(
            select(func.count())
            .where(Problem.run_id == run_id, Problem.phase == 2)
            .scalar_subquery(),
            select(func.count())
            .where(AttemptCount.run_id == run_id, AttemptCount.state != "pending")
            .scalar_subquery(),
        )
    ).one()
    joint = settings.sampler.mode == "joint"
    stage: shards.Stage = "joint" if joint else "phase2"
    if finished < problems or shards.registered(session, run_id, stage):
        return []
    drop = contaminated(session, run_id, settings)
    solved = session.scalars(
        select(AttemptCount.problem_id)
        .where(AttemptCount.run_id == run_id, AttemptCount.state == "solved")
        .order_by(AttemptCount.problem_id)
    ).all()
    kept = [
        g
        for p in solved
        if p not in drop
        for g in kept_solutions(session, run_id, p, settings.sampler.keep_k)
    ]
    rows = _rows(session, run_id, kept, "rejection", settings)
    if joint:
        phase1 = _phase1_set(session, run, drop, settings)
        rows = _rows(session, run_id, phase1.kept, "multi-turn", settings) + rows
    shards.write(session, settings.common.data_dir, run_id, stage, rows)
    return [shards.manifest(session, run_id, stage, settings.inference.model)]


def kept_solutions(session: Session, run_id: str, problem_id: str, k: int) -> list[GenerationRow]:
    """Up to k accepted phase-2 solutions with distinct normalised text, in sample order."""
    accepted = session.scalars(
        select(VerdictRow.sample_id)
        .where(
            VerdictRow.run_id == run_id,
            VerdictRow.problem_id == problem_id,
            VerdictRow.phase == 2,
            VerdictRow.accepted,
        )
        .order_by(VerdictRow.round, VerdictRow.sample_id)
    ).all()
    gens = generations(session, run_id, accepted)
    kept: dict[str, GenerationRow] = {}
    for sample_id in accepted:
        kept.setdefault(text_key(gens[sample_id].turns[-1]), gens[sample_id])
    return list(kept.values())[:k]


def generations(
    session: Session, run_id: str, sample_ids: Collection[str]
) -> dict[str, GenerationRow]:
    rows = session.scalars(
        select(GenerationRow).where(
            GenerationRow.run_id == run_id, GenerationRow.sample_id.in_(list(sample_ids))
        )
    ).all()
    found = {g.sample_id: g for g in rows}
    if missing := [s for s in sample_ids if s not in found]:
        raise LookupError(f"run {run_id}: verdicts without generation rows: {missing[:5]}")
    return found


def training_text(turns: list[str], source: Source, phase1_row: str) -> str:
    """What a sample trains on: a phase-2 sample's answer; a phase-1 dialogue's whole chain as
    one turn (first answer, review and correction, the rewrite as the summary), or its rewrite
    alone (``sampler.phase1_row``)."""
    if source == "multi-turn" and phase1_row == "chain":
        return "\n\n".join(turn.strip() for turn in turns)
    return turns[-1]


def _rows(
    session: Session,
    run_id: str,
    samples: list[VerdictRow] | list[GenerationRow],
    source: Source,
    settings: Settings,
) -> list[dict]:
    """Shard rows: the completion is the sample's ``training_text``."""
    gens = generations(session, run_id, [s.sample_id for s in samples])
    questions = dict(
        session.execute(
            select(Problem.problem_id, Problem.question).where(Problem.run_id == run_id)
        ).all()
    )
    system = load_prompts(settings.generator.prompt_version).system
    return [
        {
            **render(
                system,
                questions[s.problem_id],
                training_text(gens[s.sample_id].turns, source, settings.sampler.phase1_row),
                source,
                settings.sampler,
            ),
            "source": source,
            "run_id": run_id,
            "problem_id": s.problem_id,
            "sample_id": s.sample_id,
        }
        for s in samples
    ]
