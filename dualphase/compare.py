"""Two runs, one model stage, paired on the same problems: the ablations of the paper (one phase or
two, joint or sequential, markers on or off, data scale) are separate runs, and this is their
paired comparison (``dualphase compare RUN_A RUN_B``).

Per benchmark, the stage's per-problem pass@1 in run A and in run B must cover the same problem
ids: otherwise the runs were evaluated on different problems and no pairing is honest, and the
comparison stops with an error naming the benchmark and how many ids differ. A benchmark only one
run evaluated is named and left out. The difference is B - A (``shared.method.stats``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dualphase.paper import shorten
from dualphase.report import Labels
from shared.core.db import CheckpointRow, EvalResult, EvalSampleRow, Run
from shared.core.messages import BASE_CHECKPOINT_ID, baseline_checkpoint_id
from shared.method.stats import format_difference, paired_difference

# What says nothing about the method: where services listen and keep files, where data is read.
IGNORED_SECTIONS = ("common", "control", "data")
IGNORED_FIELDS = ("port", "model_cache_dir", "threads", "nice")


class CompareError(ValueError):
    """Runs that cannot be compared: one line saying why."""


@dataclass
class Comparison:
    run_a: str
    run_b: str
    label: str
    rows: list[list[str]]  # benchmark, A, B, problems, B - A
    notes: list[str] = field(default_factory=list)
    settings: list[list[str]] = field(default_factory=list)  # setting, A, B

    HEADER = ("benchmark", "A pass@1 %", "B pass@1 %", "problems", "B - A")


def _checkpoint_ids(session: Session, run_id: str, stage: str) -> list[str]:
    if stage == "M0":
        return [BASE_CHECKPOINT_ID]
    ids = session.scalars(
        select(CheckpointRow.id)
        .where(
            CheckpointRow.run_id == run_id,
            CheckpointRow.stage == stage,
            CheckpointRow.status == "ready",
        )
        .order_by(CheckpointRow.created_at.desc())
    ).all()
    # Not a stage: a baseline model's name (eval.baseline_models).
    return ids[:1] or [baseline_checkpoint_id(stage)]


def stage_scores(
    session: Session, run_id: str, stage: str, mode: str = "base"
) -> tuple[str, dict[str, dict[str, float]]]:
    """The report's label of ``stage`` in ``run_id`` and its per-problem pass@1 per benchmark.
    ``stage``: M0, M1, M2, oracle (the arm), or a baseline model's name."""
    exists = session.get(Run, run_id) is not None or session.scalar(
        select(func.count()).where(EvalResult.run_id == run_id)
    )
    if not exists:
        raise CompareError(f"run {run_id!r} is not in the database")
    ids = _checkpoint_ids(session, run_id, stage)
    samples = session.execute(
        select(EvalSampleRow.benchmark, EvalSampleRow.problem_id, EvalSampleRow.correct).where(
            EvalSampleRow.run_id == run_id,
            EvalSampleRow.checkpoint_id.in_(ids),
            EvalSampleRow.mode == mode,
        )
    ).all()
    if not samples:
        labels = Labels(session, run_id)
        found = session.execute(
            select(EvalResult.checkpoint_id, EvalResult.mode)
            .where(EvalResult.run_id == run_id)
            .distinct()
        ).all()
        have = sorted({labels.label(c, m) for c, m in found}) or ["nothing"]
        raise CompareError(
            f"run {run_id!r} has no evaluation of {stage} in mode {mode} "
            f"(evaluated: {', '.join(have)})"
        )
    right: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for bench, problem_id, correct in samples:
        right[bench][problem_id].append(correct)
    scores = {
        bench: {p: sum(c) / len(c) for p, c in problems.items()}
        for bench, problems in right.items()
    }
    return Labels(session, run_id).label(ids[0], mode), scores


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{section}.{name}": value
        for section, fields in config.items()
        if section not in IGNORED_SECTIONS and isinstance(fields, dict)
        for name, value in fields.items()
        if name not in IGNORED_FIELDS
    }


def setting_differences(a: dict[str, Any], b: dict[str, Any]) -> list[list[str]]:
    """The settings two config snapshots differ in (what the ablation changed)."""
    flat_a, flat_b = _flatten(a), _flatten(b)
    keys = sorted(set(flat_a) | set(flat_b))
    missing = "(not recorded)"
    return [
        [k, _short(flat_a.get(k, missing)), _short(flat_b.get(k, missing))]
        for k in keys
        if flat_a.get(k, missing) != flat_b.get(k, missing)
    ]


def _short(value: object) -> str:
    return shorten(value).replace("|", "/")


def compare_runs(
    session: Session, run_a: str, run_b: str, stage: str = "M2", mode: str = "base"
) -> Comparison:
    """``stage`` of run B against ``stage`` of run A, per benchmark, paired on the problems."""
    label_a, a = stage_scores(session, run_a, stage, mode)
    label_b, b = stage_scores(session, run_b, stage, mode)
    result = Comparison(
        run_a, run_b, label_a if label_a == label_b else f"{label_a} / {label_b}", []
    )
    for bench in sorted(set(a) | set(b)):
        if bench not in b or bench not in a:
            only = run_a if bench in a else run_b
            result.notes.append(f"{bench}: evaluated only in {only}, not compared")
            continue
        only_a, only_b = set(a[bench]) - set(b[bench]), set(b[bench]) - set(a[bench])
        if only_a or only_b:
            raise CompareError(
                f"runs {run_a} and {run_b} were evaluated on different problems of {bench}: "
                f"{len(only_a)} problem ids only in {run_a}, {len(only_b)} only in {run_b} "
                f"(of {len(a[bench])} and {len(b[bench])}); a paired comparison needs the same "
                "problems (the same eval.benchmarks, limits and benchmark files)"
            )
        ids = sorted(a[bench])
        d = paired_difference([a[bench][p] for p in ids], [b[bench][p] for p in ids])
        result.rows.append(
            [
                bench,
                f"{100 * d.mean_a:.1f}",
                f"{100 * d.mean_b:.1f}",
                str(d.n),
                format_difference(d),
            ]
        )
    if not result.rows:
        raise CompareError(f"runs {run_a} and {run_b} have no benchmark in common for {stage}")
    configs = [session.get(Run, r) for r in (run_a, run_b)]
    if all(configs):
        result.settings = setting_differences(configs[0].config, configs[1].config)
    return result


def render(c: Comparison) -> str:
    """The comparison as Markdown, like the report's paired table."""

    def table(header: tuple[str, ...] | list[str], rows: list[list[str]]) -> list[str]:
        return [
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows),
        ]

    lines = [
        f"# {c.label}: run B ({c.run_b}) against run A ({c.run_a})",
        "",
        "Difference of pass@1 in points on the same problems (B - A), its paired-bootstrap 95% "
        "interval, and the p-value of a paired test (McNemar with one sample per problem, else "
        "sign-flip).",
        "",
        *table(Comparison.HEADER, c.rows),
        "",
        *(f"- {note}" for note in c.notes),
    ]
    if c.settings:
        lines += ["", "## Settings that differ", "", *table(["setting", "A", "B"], c.settings)]
    return "\n".join(lines) + "\n"
