"""What happened on the way: the sections of a run's report that come before its final table.

Each section is a small table read from the database: the run's settings against what the paper
states (``dualphase.paper``, the one place in the code that says so), the prompt each
model was evaluated with, the phase-1 categories and what the balance kept, the rejections per
rule, the shards, what the arm trained on, the training of each checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dualphase.paper import RunFacts, against_paper
from shared.core import shards
from shared.core.db import CheckpointRow, GenerationRow, Problem, RuleCount, Run, ShardRow
from shared.core.messages import PHASE1_CATEGORIES
from shared.method import arm
from shared.method.evaluation import SELF_REWARDING_SYSTEM, SYSTEM_PROMPT
from shared.method.markers import PROMPT_MANIFEST


@dataclass
class Section:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


def phase1_categories(session: Session, run_id: str) -> Section:
    """RR/RW/WR/WW of the phase-1 dialogues and how many of each the balanced set kept."""
    counts = _counts(session, run_id, "phase1:")
    rows = []
    categories = [f"category:{c}" for c in get_args(PHASE1_CATEGORIES)]
    for name in (*categories, "balance", "decontam"):
        if name in counts:
            left_out, kept = counts[name]
            rows.append([name.removeprefix("category:"), str(left_out + kept), str(kept)])
    note = (
        "?R, ?W: turn 1 was cut at its token budget before it stated an answer (neither "
        "initial-right nor initial-wrong: never kept); balance: accepted (final answer right, "
        "every rule passed) dialogues; decontam: dialogues whose problem shares a long n-gram "
        "with a benchmark problem (left out)."
    )
    return Section(
        "Phase 1: categories and the balanced set", ["", "dialogues", "kept"], rows, note
    )


def phase1_rows(session: Session, run_id: str) -> Section:
    """How long the kept phase-1 samples are as the whole chain (all three turns) and as the
    rewrite alone (its last turn): ``sampler.phase1_row`` chooses which one trains."""
    files = shards.registered(session, run_id, "phase1")
    # A shard folder moved or deleted since the run leaves this section empty, not the report.
    kept = [
        row["sample_id"] for row in shards.read_rows(f.path for f in files if Path(f.path).exists())
    ]
    tokens = session.scalars(
        select(GenerationRow.tokens).where(
            GenerationRow.run_id == run_id, GenerationRow.sample_id.in_(kept)
        )
    ).all()
    if not tokens:
        return Section("Phase-1 training rows", [], [])
    chosen = (session.get_one(Run, run_id).config.get("sampler") or {}).get("phase1_row", "chain")
    rows = [
        ["chain (first answer, review, rewrite)", f"{sum(map(sum, tokens)) / len(tokens):.0f}"],
        ["rewrite alone", f"{sum(t[-1] for t in tokens) / len(tokens):.0f}"],
    ]
    note = f"Kept dialogues: {len(tokens)}; this run trained on: {chosen} (sampler.phase1_row)."
    return Section("Phase-1 training rows", ["row", "mean tokens"], rows, note)


def rule_rejections(session: Session, run_id: str) -> Section:
    """Samples each rule rejected, over both phases (a sample can fail several rules)."""
    counts = {
        r.rule: (r.failed, r.passed)
        for r in session.scalars(select(RuleCount).where(RuleCount.run_id == run_id))
        if ":" not in r.rule
    }
    rows = [
        [rule, str(failed), str(failed + passed)]
        for rule, (failed, passed) in sorted(counts.items())
    ]
    return Section("Rule filters", ["rule", "rejected", "checked"], rows)


def shard_sizes(session: Session, run_id: str) -> Section:
    shards = session.scalars(
        select(ShardRow).where(ShardRow.run_id == run_id).order_by(ShardRow.id)
    ).all()
    rows = [[_stage_name(session, run_id, s.stage), str(s.rows), s.path] for s in shards]
    return Section("Training shards", ["stage", "rows", "file"], rows)


def training(session: Session, run_id: str) -> Section:
    checkpoints = session.scalars(
        select(CheckpointRow)
        .where(CheckpointRow.run_id == run_id, CheckpointRow.status == "ready")
        .order_by(CheckpointRow.created_at)
    ).all()
    rows = []
    for c in checkpoints:
        t = c.training_config or {}
        if "global_step" not in t:
            continue
        rows.append(
            [
                _stage_name(session, run_id, c.stage),
                str(t.get("global_step", "")),
                f"{t.get('train_loss', 0.0):.4f}",
                str(t.get("tokens", "")),
                f"{t.get('train_seconds', 0.0):.0f}",
                "skipped: empty shard" if "skipped" in (t.get("config") or {}) else "",
            ]
        )
    return Section(
        "Training", ["checkpoint", "updates", "mean loss", "tokens", "seconds", ""], rows
    )


def run_facts(session: Session, run: Run) -> RunFacts:
    per_phase = select(Problem.phase, func.count()).where(Problem.run_id == run.id)
    datasets = session.scalars(
        select(Problem.dataset).where(Problem.run_id == run.id).distinct().order_by(Problem.dataset)
    ).all()
    return RunFacts(
        run.config,
        dict(session.execute(per_phase.group_by(Problem.phase)).all()),
        tuple(d or "unnamed" for d in datasets),
        arm_name(session, run.id, run.config) if _arm_on(run.config) else "",
    )


def deviations(session: Session, run_id: str) -> Section:
    """The run's settings against what the paper states: every deviation, and "not stated"
    where the paper is silent."""
    run = session.get(Run, run_id)
    if run is None:  # evaluation rows alone (a report of results imported without their run)
        return Section("Settings against the paper", [], [])
    note = (
        "What the paper states, and what it leaves open ('not stated': the run's value is its "
        "own choice), against the run's config snapshot and problems; deviates: yes where the "
        "run differs from what the paper states."
    )
    header = ["setting", "this run", "paper", "deviates", "note"]
    rows = against_paper(run_facts(session, run))
    return Section("Settings against the paper", header, rows, note)


def _stage_name(session: Session, run_id: str, stage: str) -> str:
    """A stage as a person reads it: the arm (stage ``oracle``) by its source."""
    if stage != "oracle":
        return stage
    run = session.get(Run, run_id)
    return arm_name(session, run_id, run.config if run else {})


def _arm_on(config: dict[str, Any]) -> bool:
    return bool((config.get("sampler") or {}).get("oracle", False))


def arm_name(session: Session, run_id: str, config: dict[str, Any]) -> str:
    """The label of a run's arm (stage ``oracle``) by its source: its config snapshot, and the
    teachers of the rows that trained where the sampler has counted them."""
    prefix = arm.COUNTS_PREFIX + arm.TEACHER_COUNT
    teachers = [name for name, (_, kept) in _counts(session, run_id, prefix).items() if kept]
    return arm.arm_label(config.get("sampler") or {}, teachers)


def arm_counts(session: Session, run_id: str) -> Section:
    """What the arm trained on: the solutions of its source, and what each step left out."""
    counts = _counts(session, run_id, arm.COUNTS_PREFIX)
    run = session.get(Run, run_id)
    if not counts or run is None:
        return Section("The arm", [], [])
    steps = {
        "reference": "problems with a reference solution",
        "matched": "file rows naming a problem of the run",
        "graded": "graded correct against the gold answer",
        "decontam": "problem not in a benchmark (decontamination)",
        "distinct": "distinct solution texts per problem",
    }
    rows = [
        [what, str(counts[name][0]), str(counts[name][1])]
        for name, what in steps.items()
        if name in counts
    ]
    rows += [
        [f"rows by {name.removeprefix(arm.TEACHER_COUNT)}", "", str(kept)]
        for name, (_, kept) in counts.items()
        if name.startswith(arm.TEACHER_COUNT)
    ]
    note = (
        "The base model fine-tuned on given solutions, trained and evaluated like M1 and M2 "
        "(sampler.oracle): the problems' reference solutions, or a solutions file "
        "(sampler.arm_solutions) of which only the solutions graded correct train."
    )
    title = f"The arm: {arm_name(session, run_id, run.config)}"
    return Section(title, ["step", "left out", "kept"], rows, note)


def prompts(session: Session, run_id: str) -> Section:
    """The system prompt and marker each model was sampled and evaluated with: a trained
    checkpoint's from the prompt manifest beside its weights, the base model's the harness's,
    a baseline model's its protocol's."""
    run = session.get(Run, run_id)
    config = run.config if run else {}
    rows = [["M0 (base model)", _show_text(SYSTEM_PROMPT), "", "the evaluation harness"]]
    checkpoints = session.scalars(
        select(CheckpointRow)
        .where(CheckpointRow.run_id == run_id, CheckpointRow.status == "ready")
        .order_by(CheckpointRow.created_at)
    ).all()
    for c in checkpoints:
        name = arm_name(session, run_id, config) if c.stage == "oracle" else c.stage
        manifest = Path(c.path) / PROMPT_MANIFEST if c.path else None
        if manifest is None or not manifest.is_file():
            where = f"no {PROMPT_MANIFEST} in {c.path}: the plain prompt"
            rows.append([name, _show_text(SYSTEM_PROMPT), "", where])
            continue
        prompt = json.loads(manifest.read_text())
        style = prompt.get("marker_style", "")
        where = f"{PROMPT_MANIFEST}, marker style {style}"
        if style == "prefix":
            where += ": prompted without a marker (its answers start with it)"
        rows.append([name, _show_text(prompt["system"]), prompt.get("marker", ""), where])
    for b in (config.get("eval") or {}).get("baseline_models") or []:
        mode = b.get("mode", "base")
        system = SELF_REWARDING_SYSTEM if mode == "self-rewarding" else b.get("system") or ""
        rows.append([b["name"], _show_text(system or SYSTEM_PROMPT), "", f"its protocol: {mode}"])
    note = (
        "Phase-2 sampling and evaluation prompt each model as shown; think-twice re-asks under "
        "the same system prompt, the self-rewarding mode (on M0: intrinsic self-correction) uses "
        "RLHFlow's prompts. Under the prefix marker style a checkpoint is prompted without a "
        "marker: the marker is what its answers start with. A line break shows as ⏎."
    )
    return Section("Prompts", ["model", "system prompt", "marker", "from"], rows, note)


def _show_text(text: str) -> str:
    return " ⏎ ".join(text.splitlines())


def story(session: Session, run_id: str) -> list[Section]:
    sections = [
        deviations(session, run_id),
        prompts(session, run_id),
        phase1_categories(session, run_id),
        phase1_rows(session, run_id),
        rule_rejections(session, run_id),
        shard_sizes(session, run_id),
        arm_counts(session, run_id),
        training(session, run_id),
    ]
    return [s for s in sections if s.rows or s.note]


def _counts(session: Session, run_id: str, prefix: str) -> dict[str, tuple[int, int]]:
    rows = session.scalars(
        select(RuleCount).where(RuleCount.run_id == run_id, RuleCount.rule.startswith(prefix))
    )
    return {r.rule.removeprefix(prefix): (r.failed, r.passed) for r in rows}
