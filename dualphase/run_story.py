"""What happened on the way: the sections of a run's report that come before its final table.

Each section is a small table read from the database: the phase-1 categories and what the balance
kept, the rejections per rule, the shards, the training of each checkpoint, and the settings in
which the run deviates from the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.core.db import CheckpointRow, RuleCount, Run, ShardRow


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
    for name in ("category:RR", "category:RW", "category:WR", "category:WW", "balance", "decontam"):
        if name in counts:
            left_out, kept = counts[name]
            rows.append([name.removeprefix("category:"), str(left_out + kept), str(kept)])
    note = (
        "balance: accepted (final answer right, every rule passed) dialogues; decontam: "
        "dialogues whose problem shares a long n-gram with a benchmark problem (left out)."
    )
    return Section(
        "Phase 1: categories and the balanced set", ["", "dialogues", "kept"], rows, note
    )


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
    rows = [[s.stage, str(s.rows), s.path] for s in shards]
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
                c.stage,
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


# (section, field) -> the paper's value, for the settings a miniature changes most often.
PAPER = {
    ("sampler", "balance_ratio"): 1.0,
    ("sampler", "balance_min_right"): 0,
    ("sampler", "schedule"): [4, 10, 100],
    ("sampler", "marker_style"): "system",
    ("sampler", "phases"): 2,
    ("verifier", "disabled_rules"): [],
    ("eval", "temperature"): 0.6,
    ("eval", "samples"): 4,
    ("generator", "sampling_example"): "",
    ("generator", "stop_after_answer"): False,
}


def deviations(session: Session, run_id: str) -> Section:
    """Settings of this run that differ from the paper's method, and the evaluated marker."""
    run = session.get(Run, run_id)
    if run is None:  # evaluation rows alone (a report of results imported without their run)
        return Section("Deviations from the paper", [], [])
    config: dict[str, Any] = run.config
    rows = [
        [f"{section}.{name}", _short(config.get(section, {}).get(name)), _short(paper)]
        for (section, name), paper in PAPER.items()
        if config.get(section, {}).get(name) != paper
    ]
    marker = config.get("sampler", {}).get("inference_marker", "multi-turn")
    note = (
        f"Trained checkpoints are sampled and evaluated with the system prompt they were trained "
        f"with, marker '{marker}' where they saw both; the base model with the plain prompt."
    )
    return Section("Deviations from the paper", ["setting", "this run", "paper"], rows, note)


def _short(value: object) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def story(session: Session, run_id: str) -> list[Section]:
    sections = [
        deviations(session, run_id),
        phase1_categories(session, run_id),
        rule_rejections(session, run_id),
        shard_sizes(session, run_id),
        training(session, run_id),
    ]
    return [s for s in sections if s.rows or s.note]


def _counts(session: Session, run_id: str, prefix: str) -> dict[str, tuple[int, int]]:
    rows = session.scalars(
        select(RuleCount).where(RuleCount.run_id == run_id, RuleCount.rule.startswith(prefix))
    )
    return {r.rule.removeprefix(prefix): (r.failed, r.passed) for r in rows}
