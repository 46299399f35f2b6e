"""Training shards: the phase-1 shard once every phase-1 problem has a verdict, the phase-2
(sequential mode) or joint (phase 1 + phase 2) shard once no phase-2 problem is pending.

Each shard is written once, registered in the database and announced by its manifest; the
reconciler announces it ``again`` when that publish was lost. Rows carry the source marker
(``shared.method.markers``) and are checked against the shard schema (``shared.core.shards``).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sampler_svc.balance import build_phase1_set, store_counts
from sampler_svc.decontam import Decontaminator
from sampler_svc.rounds import generations, kept_solutions, sampling_checkpoint
from shared.core import shards
from shared.core.db import AttemptCount, CheckpointRow, GenerationRow, Problem, Run, VerdictRow
from shared.core.messages import Message, ShardManifest
from shared.core.settings import Settings
from shared.method.markers import Source, render
from shared.method.prompts import load_prompts


def contaminated(session: Session, run_id: str, settings: Settings) -> set[str]:
    """Problem ids of the run sharing a long n-gram with a benchmark problem."""
    check = Decontaminator.from_folder(settings.eval.datasets_dir, settings.sampler.decontam_ngram)
    problems = session.scalars(select(Problem).where(Problem.run_id == run_id)).all()
    return {p.problem_id for p in problems if check.match(p.question)}


def seal_phase1(
    session: Session, run_id: str, settings: Settings, again: bool = False
) -> list[Message]:
    """Write the phase-1 shard once every phase-1 problem has a verdict; its manifest.

    The verifier writes verdict rows before the sampler reads its messages, so every message of
    the sampler's backlog can find all verdicts present: only the call that writes the shard
    announces it, unless ``again`` (the reconciler re-announces a shard whose publish was lost).
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
    if problems == 0 or judged < problems:
        return []
    files = shards.registered(session, run_id, "phase1")
    if not files:
        phase1 = build_phase1_set(
            session,
            run_id,
            run.seed,
            contaminated(session, run_id, settings),
            settings.sampler.balance_ratio,
            settings.sampler.balance_min_right,
        )
        store_counts(session, run_id, "phase1:", phase1.counts)
        rows = _rows(session, run_id, phase1.kept, "multi-turn", settings)
        files = shards.write(session, settings.common.data_dir, run_id, "phase1", rows)
        out = [shards.manifest(run_id, "phase1", files, settings.inference.model)]
    else:
        out = [shards.manifest(run_id, "phase1", files, settings.inference.model)] if again else []
    if settings.sampler.oracle:
        out += seal_oracle(session, run_id, settings, again)
    return [m for manifest in out for m in _unless_trained(session, manifest)]


def seal_oracle(session: Session, run_id: str, settings: Settings, again: bool) -> list[Message]:
    """The oracle arm's shard: the reference solution of every problem of the run that has one
    (decontaminated), without a marker, trained from the base model like M1."""
    files = shards.registered(session, run_id, "oracle")
    if not files:
        drop = contaminated(session, run_id, settings)
        problems = session.scalars(
            select(Problem)
            .where(Problem.run_id == run_id, Problem.solution != "")
            .order_by(Problem.phase, Problem.problem_id)
        ).all()
        system = load_prompts(settings.generator.prompt_version).system
        rows = [
            {
                **render(system, p.question, p.solution, "oracle", settings.sampler),
                "source": "oracle",
                "run_id": run_id,
                "problem_id": p.problem_id,
                "sample_id": f"{p.problem_id}:oracle",
            }
            for p in problems
            if p.problem_id not in drop
        ]
        files = shards.write(session, settings.common.data_dir, run_id, "oracle", rows)
    elif not again:
        return []
    return [shards.manifest(run_id, "oracle", files, settings.inference.model)]


def seal_phase2(
    session: Session, run_id: str, settings: Settings, again: bool = False
) -> list[Message]:
    """Write the phase-2 (sequential) or joint shard once no phase-2 problem is pending; its
    manifest, announced by the call that writes the shard or ``again`` (as ``seal_phase1``)."""
    checkpoint = sampling_checkpoint(session, run_id)
    if checkpoint is None:
        return []
    run = session.get(Run, run_id, with_for_update=True)
    assert run is not None
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
    if finished < problems:
        return []
    joint = settings.sampler.mode == "joint"
    stage: shards.Stage = "joint" if joint else "phase2"
    files = shards.registered(session, run_id, stage)
    if not files:
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
            phase1 = build_phase1_set(
                session,
                run_id,
                run.seed,
                drop,
                settings.sampler.balance_ratio,
                settings.sampler.balance_min_right,
            )
            rows = _rows(session, run_id, phase1.kept, "multi-turn", settings) + rows
        files = shards.write(session, settings.common.data_dir, run_id, stage, rows)
    elif not again:
        return []
    base, parent = (settings.inference.model, "") if joint else (checkpoint.path, checkpoint.id)
    return _unless_trained(session, shards.manifest(run_id, stage, files, base, parent))


def _unless_trained(session: Session, manifest: ShardManifest) -> list[Message]:
    """The manifest, unless a checkpoint was trained on it (ready) or failed on it (an operator's
    case, not a retry's). A row left at ``training`` by a trainer that crashed does not count:
    the manifest is announced again, or that checkpoint would never be trained."""
    trained = session.scalar(
        select(func.count()).where(
            CheckpointRow.shard_id == manifest.shard_id,
            CheckpointRow.status.in_(["ready", "failed"]),
        )
    )
    return [] if trained else [manifest]


def _rows(
    session: Session,
    run_id: str,
    samples: list[VerdictRow] | list[GenerationRow],
    source: Source,
    settings: Settings,
) -> list[dict]:
    """Shard rows: the last turn is the completion (the long CoT, or the single answer)."""
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
                gens[s.sample_id].turns[-1],
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
