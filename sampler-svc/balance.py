"""Phase 1's balance: accepted long CoTs, initial-right : initial-wrong = 1:1.

The paper keeps only dialogues whose final answer is right (RR and WR) and balances those whose
first try was right against those whose first try was wrong, so the model does not learn to
answer wrong on purpose and then "correct" itself.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.core.db import RuleCount, VerdictRow, insert_ignore


@dataclass
class Phase1Set:
    """The balanced phase-1 set and how it was made.

    counts: name -> (failed, passed), stored in ``rule_counts`` as ``phase1:<name>``:
    ``category:RR`` etc. (left out, kept), ``rule:<rule>`` (failed, passed), ``decontam``
    (dropped, not dropped), ``balance`` (accepted but left out to balance, kept).
    """

    kept: list[VerdictRow]
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)


def build_phase1_set(
    session: Session, run_id: str, seed: int, exclude: Collection[str] = ()
) -> Phase1Set:
    """Accepted phase-1 samples, initial-right : initial-wrong = 1:1, drawn with ``seed``.

    Problems in ``exclude`` (decontamination) are dropped before balancing, so 1:1 holds.
    """
    verdicts = session.scalars(
        select(VerdictRow)
        .where(VerdictRow.run_id == run_id, VerdictRow.phase == 1)
        .order_by(VerdictRow.problem_id, VerdictRow.sample_id)
    ).all()
    clean = [v for v in verdicts if v.problem_id not in exclude]
    accepted = [v for v in clean if v.accepted and v.final_correct]
    right = [v for v in accepted if v.initial_correct]
    wrong = [v for v in accepted if not v.initial_correct]
    n = min(len(right), len(wrong))
    rng = random.Random(seed)
    kept = rng.sample(right, n) + rng.sample(wrong, n)
    kept.sort(key=lambda v: (v.problem_id, v.sample_id))

    kept_ids = {v.sample_id for v in kept}
    counts: dict[str, tuple[int, int]] = {
        "decontam": (len(verdicts) - len(clean), len(clean)),
        "balance": (len(accepted) - len(kept), len(kept)),
    }
    for category in ("RR", "RW", "WR", "WW"):
        of_category = [v for v in verdicts if v.category == category]
        in_set = sum(v.sample_id in kept_ids for v in of_category)
        counts[f"category:{category}"] = (len(of_category) - in_set, in_set)
    for rule in sorted({r for v in verdicts for r in v.failed_rules}):
        failed = sum(rule in v.failed_rules for v in verdicts)
        counts[f"rule:{rule}"] = (failed, len(verdicts) - failed)
    return Phase1Set(kept, counts)


def store_counts(
    session: Session, run_id: str, prefix: str, counts: dict[str, tuple[int, int]]
) -> None:
    """Write counts as absolute values (a rebuild overwrites, never adds)."""
    rows = [dict(run_id=run_id, rule=f"{prefix}{name}", failed=0, passed=0) for name in counts]
    insert_ignore(session, RuleCount, rows)
    stored = session.scalars(
        select(RuleCount).where(RuleCount.run_id == run_id, RuleCount.rule.startswith(prefix))
    ).all()
    for row in stored:
        if (name := row.rule.removeprefix(prefix)) in counts:
            row.failed, row.passed = counts[name]
