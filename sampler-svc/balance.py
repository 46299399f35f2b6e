"""Phase 1's balance: accepted long CoTs, initial-right : initial-wrong = 1:1.

The paper keeps only dialogues whose final answer is right (RR and WR) and balances those whose
first try was right against those whose first try was wrong, so the model does not learn to
answer wrong on purpose and then "correct" itself.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import get_args

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.core.db import RuleCount, VerdictRow, insert_ignore
from shared.core.messages import PHASE1_CATEGORIES


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
    session: Session,
    run_id: str,
    seed: int,
    exclude: Collection[str] = (),
    ratio: float = 1.0,
    min_right: int = 0,
) -> Phase1Set:
    """Accepted phase-1 samples, initial-right : initial-wrong = 1:1, drawn with ``seed``.

    Problems in ``exclude`` (decontamination) are dropped before balancing, so 1:1 holds.
    ``ratio`` and ``min_right`` (``SamplerSettings.balance_*``) relax the paper's balance for a
    model that rarely self-corrects: ``ratio`` initial-right per initial-wrong, and at least
    ``min_right`` initial-right samples whatever the initial-wrong count.
    """
    verdicts = session.scalars(
        select(VerdictRow)
        .where(VerdictRow.run_id == run_id, VerdictRow.phase == 1)
        .order_by(VerdictRow.problem_id, VerdictRow.sample_id)
    ).all()
    clean = [v for v in verdicts if v.problem_id not in exclude]
    accepted = [v for v in clean if v.accepted and v.final_correct]
    # A first try cut before it stated an answer (?R) is neither right nor wrong: left out.
    right = [v for v in accepted if v.initial_correct is True]
    wrong = [v for v in accepted if v.initial_correct is False]
    n_wrong, n_right = balanced_counts(len(right), len(wrong), ratio, min_right)
    rng = random.Random(seed)
    kept = rng.sample(right, n_right) + rng.sample(wrong, n_wrong)
    kept.sort(key=lambda v: (v.problem_id, v.sample_id))

    kept_ids = {v.sample_id for v in kept}
    counts: dict[str, tuple[int, int]] = {
        "decontam": (len(verdicts) - len(clean), len(clean)),
        "balance": (len(accepted) - len(kept), len(kept)),
    }
    for category in get_args(PHASE1_CATEGORIES):
        of_category = [v for v in verdicts if v.category == category]
        in_set = sum(v.sample_id in kept_ids for v in of_category)
        counts[f"category:{category}"] = (len(of_category) - in_set, in_set)
    for rule in sorted({r for v in verdicts for r in v.failed_rules}):
        failed = sum(rule in v.failed_rules for v in verdicts)
        counts[f"rule:{rule}"] = (failed, len(verdicts) - failed)
    return Phase1Set(kept, counts)


def balanced_counts(right: int, wrong: int, ratio: float, min_right: int) -> tuple[int, int]:
    """(initial-wrong, initial-right) samples to keep out of those available: ``ratio`` right
    per wrong (1 = the paper's 1:1), at least ``min_right`` right ones when there are."""
    n_wrong = min(wrong, math.floor(right / ratio))
    n_right = min(right, max(round(ratio * n_wrong), min_right))
    return n_wrong, n_right


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
