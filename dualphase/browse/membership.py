"""Which samples went into which training shard, under which source marker.

Shard membership lives only in the shard files (JSON Lines, one row per kept sample), not in the
database. A run's files are read once and only their provenance fields are kept (sample, problem,
stage, source: a few bytes per kept sample), so the problem list can filter on "kept" in SQL with
an ``IN`` over problem ids. The cache is keyed by the files' registered sha256, so a shard written
later (phase 2 after phase 1) is picked up by the next request.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.core.db import ShardRow
from shared.core.shards import read_rows


@dataclass(frozen=True)
class Placement:
    """One row of a shard: the stage of its shard and its source marker."""

    stage: str
    source: str


@dataclass(frozen=True)
class Membership:
    """Read-only once built: one instance is shared by every request while it is cached."""

    by_sample: dict[str, list[Placement]]
    by_problem: dict[str, list[Placement]]
    missing: list[str]  # registered files not on this disk

    def problems(self, stage: str = "") -> set[str]:
        """Problem ids with a row in the shard of ``stage``, or in any shard."""
        return {p for p, places in self.by_problem.items() if not stage or _in(places, stage)}

    def stages(self) -> list[str]:
        return sorted({p.stage for places in self.by_problem.values() for p in places})


def _in(places: list[Placement], stage: str) -> bool:
    return any(p.stage == stage for p in places)


def membership(session: Session, run_id: str) -> Membership:
    """The shard rows of a run, read from its registered files (cached while they are the same)."""
    files = session.execute(
        select(ShardRow.stage, ShardRow.path, ShardRow.rows, ShardRow.sha256)
        .where(ShardRow.run_id == run_id)
        .order_by(ShardRow.id)
    ).all()
    return _read(tuple((stage, path, rows, sha) for stage, path, rows, sha in files))


@lru_cache(maxsize=16)
def _read(files: tuple[tuple[str, str, int, str], ...]) -> Membership:
    by_sample: dict[str, list[Placement]] = defaultdict(list)
    by_problem: dict[str, list[Placement]] = defaultdict(list)
    missing = []
    for stage, path, _rows, _sha256 in files:  # rows and sha256 key the cache: a new shard
        if not Path(path).is_file():  # a database copied without its shard files
            missing.append(path)
            continue
        for row in read_rows([path]):
            place = Placement(stage, row["source"])
            by_sample[row["sample_id"]].append(place)
            by_problem[row["problem_id"]].append(place)
    return Membership(dict(by_sample), dict(by_problem), missing)
