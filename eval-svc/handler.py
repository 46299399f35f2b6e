"""eval-svc: evaluate every checkpoint announced on ``checkpoints``, and the run's base model.

For one ``CheckpointReady`` message the targets are the checkpoint (modes ``eval.modes``) and,
unless the message is itself the M0 checkpoint, the run's base model under the checkpoint id
``base`` (modes ``eval.modes`` plus the baselines ``eval.baseline_modes``), then each of the run's
baseline models (``eval.baseline_models`` of its config snapshot) under the checkpoint id
``baseline:<name>``, in its own mode and with its own prompt (never a manifest's). What is
already evaluated is skipped, so each is evaluated once per run.

Idempotency: the samples and the summary of one (checkpoint, benchmark, mode) are written in one
transaction with ``insert_ignore``; a (checkpoint, benchmark, mode) that already has its
``eval_results`` row is not evaluated again, so a redelivered message only skips work.

A checkpoint that is the base model under the base model's prompt (M1 when phase 1 kept no row
and its training was skipped) gets a copy of M0's results instead of a second evaluation: the
same weights, prompt and problems give the same answers, and on a CPU the evaluation takes
minutes the generator needs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.core.db import EvalResult, EvalSampleRow, Run, insert_ignore, transaction
from shared.core.messages import BASE_CHECKPOINT_ID, CheckpointReady, baseline_checkpoint_id
from shared.core.sections import BaselineModel
from shared.core.settings import InferenceConfig, Settings
from shared.datasets import load_benchmarks
from shared.inference import OneModel
from shared.inference.hardware import claim_threads
from shared.inference.model import resolve_model
from shared.method.evaluation import SYSTEM_PROMPT, BenchmarkSummary, evaluate
from shared.method.grading import Grader
from shared.method.markers import inference_prompt

log = logging.getLogger(__name__)

EVAL_ACCURACY = Gauge(
    "dualphase_eval_accuracy",
    "pass@1 of the latest evaluation.",
    ["run", "stage", "checkpoint", "benchmark", "mode"],
)
# Rows per INSERT statement: keeps PostgreSQL under its 65535 bind-parameter limit.
INSERT_CHUNK = 1000


@dataclass(frozen=True)
class Target:
    """A model to evaluate and the modes to evaluate it in."""

    checkpoint_id: str
    model: str
    modes: list[str]
    stage: str  # M0 (the base model), M1, M2, oracle, baseline (a baseline model)
    system: str | None = None  # its system prompt; None: its prompt manifest's, else the harness's


def baseline_targets(snapshot: dict[str, Any]) -> list[Target]:
    """The run's baseline models, as its config snapshot names them."""
    models = snapshot.get("eval", {}).get("baseline_models", [])
    models = [BaselineModel.model_validate(b) for b in models]
    return [
        Target(
            baseline_checkpoint_id(b.name), b.model, [b.mode], "baseline", b.system or SYSTEM_PROMPT
        )
        for b in models
    ]


def targets(msg: CheckpointReady, settings: Settings, session: Session) -> list[Target]:
    config = settings.eval
    base_modes = list(dict.fromkeys([*config.modes, *config.baseline_modes]))
    run = session.get(Run, msg.run_id)
    snapshot = run.config if run else {}
    baselines = baseline_targets(snapshot)
    if msg.stage == "M0":
        return [Target(msg.checkpoint_id, msg.path, base_modes, "M0"), *baselines]
    # The model the run started from, as it was configured when the run was submitted.
    base_model = snapshot.get("inference", {}).get("model", settings.inference.model)
    return [
        Target(BASE_CHECKPOINT_ID, base_model, base_modes, "M0"),
        Target(msg.checkpoint_id, msg.path, list(config.modes), msg.stage),
        *baselines,
    ]


def done(session: Session, run_id: str, checkpoint_id: str) -> set[tuple[str, str]]:
    """(benchmark, mode) pairs of this checkpoint that already have a summary."""
    rows = session.execute(
        select(EvalResult.benchmark, EvalResult.mode).where(
            EvalResult.run_id == run_id, EvalResult.checkpoint_id == checkpoint_id
        )
    )
    return {(benchmark, mode) for benchmark, mode in rows}


def _rows(session: Session, model: type, run_id: str, checkpoint_id: str) -> list[dict[str, Any]]:
    """A checkpoint's rows of ``model`` as column values, without the generated ones."""
    columns = [c.name for c in model.__table__.columns if c.name not in ("id", "created_at")]
    found = session.scalars(
        select(model).where(model.run_id == run_id, model.checkpoint_id == checkpoint_id)
    )
    return [{c: getattr(row, c) for c in columns} for row in found]


def copy_results(
    session: Session, run_id: str, source: str, target: str, pairs: set[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Copy the samples and summaries of checkpoint ``source`` for the (benchmark, mode)
    ``pairs`` it has to checkpoint ``target``; the pairs copied."""
    summaries = _rows(session, EvalResult, run_id, source)
    copied = {(r["benchmark"], r["mode"]) for r in summaries} & pairs
    # Samples first, as ``store`` writes them: a summary row says its samples are there.
    samples = _rows(session, EvalSampleRow, run_id, source)
    for model, rows in ((EvalSampleRow, samples), (EvalResult, summaries)):
        keep = [r for r in rows if (r["benchmark"], r["mode"]) in copied]
        keep = [r | {"checkpoint_id": target} for r in keep]
        for chunk in _chunks(keep):
            insert_ignore(session, model, chunk)
    return copied


def is_base(target: Target, base: Target, inference: InferenceConfig) -> bool:
    """Whether ``target`` is ``base``'s model under ``base``'s prompt."""
    resolved = [resolve_model(t.model, inference) for t in (target, base)]
    prompts = [inference_prompt(model, SYSTEM_PROMPT) for model in resolved]
    return resolved[0] == resolved[1] and prompts[0] == prompts[1]


def _chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(rows), INSERT_CHUNK):
        yield rows[i : i + INSERT_CHUNK]


def store(session: Session, run_id: str, checkpoint_id: str, summary: BenchmarkSummary) -> None:
    """The per-sample rows and the summary row of one evaluation."""
    key = dict(
        run_id=run_id, checkpoint_id=checkpoint_id, benchmark=summary.benchmark, mode=summary.mode
    )
    samples = [
        dict(
            key,
            problem_id=r.problem_id,
            sample=r.sample,
            turns=r.turns,
            tokens=r.tokens,
            extracted=r.extracted,
            correct=r.correct,
        )
        for r in summary.results
    ]
    for chunk in _chunks(samples):
        insert_ignore(session, EvalSampleRow, chunk)
    insert_ignore(
        session,
        EvalResult,
        [
            dict(
                key,
                problems=summary.problems,
                samples=summary.samples,
                accuracy=summary.accuracy,
                ci95=summary.ci95,
                mean_tokens=summary.mean_tokens,
                median_tokens=summary.median_tokens,
            )
        ],
    )


def record(
    sessions: sessionmaker[Session], run_id: str, target: Target, summary: BenchmarkSummary
) -> None:
    """Store one benchmark's evaluation, export its accuracy and log it."""
    with transaction(sessions) as session:
        store(session, run_id, target.checkpoint_id, summary)
    labels = (run_id, target.stage, target.checkpoint_id, summary.benchmark, summary.mode)
    EVAL_ACCURACY.labels(*labels).set(summary.accuracy)
    log.info(
        "%s %s %s: pass@1 %.3f, %.0f tokens",
        target.checkpoint_id,
        summary.benchmark,
        summary.mode,
        summary.accuracy,
        summary.mean_tokens,
    )


def handle(
    msg: CheckpointReady,
    settings: Settings,
    sessions: sessionmaker[Session],
    backend_for: OneModel,
) -> list[BenchmarkSummary]:
    """Evaluate what this message calls for and has not been evaluated yet."""
    config, inference = settings.eval, settings.inference
    with sessions() as session:
        plan = [
            (t, done(session, msg.run_id, t.checkpoint_id)) for t in targets(msg, settings, session)
        ]
    benchmarks = load_benchmarks(config, settings.data)
    summaries: list[BenchmarkSummary] = []
    with Grader(config.grade_timeout_s, config.grade_workers) as grader:
        base = plan[0][0]  # the run's base model comes first
        for target, finished in plan:
            missing = {(b, m) for b in benchmarks for m in target.modes} - finished
            trained = target.stage not in ("M0", "baseline")
            if missing and trained and is_base(target, base, inference):
                with transaction(sessions) as session:
                    copied = copy_results(
                        session, msg.run_id, base.checkpoint_id, target.checkpoint_id, missing
                    )
                log.info(
                    "%s is the base model with the base prompt: %d of M0's evaluations copied",
                    target.checkpoint_id,
                    len(copied),
                )
                finished, missing = finished | copied, missing - copied
            if not missing:
                continue
            backend = backend_for(target.model)  # loading one sets inference.threads
            threads = inference.threads if config.threads is None else config.threads
            with claim_threads(threads) as count:
                log.info("%s: %d torch threads", target.checkpoint_id, count)
                system = target.system
                if system is None:  # its manifest's
                    system = inference_prompt(target.model, SYSTEM_PROMPT).system
                for mode in target.modes:
                    todo = {b: p for b, p in benchmarks.items() if (b, mode) not in finished}
                    for summary in evaluate(config, backend, grader, todo, [mode], system=system):
                        record(sessions, msg.run_id, target, summary)
                        summaries.append(summary)
    return summaries
