"""Run reports: what a report says, its data and sections (``report_files.py`` writes it as a
Markdown and an HTML file and two plots).

A run's report tells what happened on the way (``run_story``: the settings against the paper, the
prompts, phase-1 categories, rule rejections, shards, the arm, training), then the benchmark x
model table, then each model's difference to the model it improves on and M2's to every baseline,
paired on the same problems: the mean difference
of per-problem pass@1 with a paired-bootstrap 95% interval and a p-value (exact McNemar where each
problem has one sample, a sign-flip permutation test otherwise; ``shared.method.stats``).

The data comes from the database (``eval_results`` and ``eval_samples`` of one run, with the
stage of each checkpoint from ``checkpoints``) or from in-memory summaries (``dualphase eval``).
A model is labelled by its stage (M0, M1, M2) and, for the baselines, its mode (the self-rewarding
mode on a model not trained for it reads "intrinsic self-correction"); a baseline model
(``eval.baseline_models``) by its name; the arm by its source ("oracle (reference solutions)",
"distilled (<teacher>)"). M2 is paired with every baseline and arm, the arm with M0.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from dualphase.run_story import Section, arm_name, story
from shared.core.db import (
    CheckpointRow,
    EvalResult,
    EvalSampleRow,
    Run,
)
from shared.core.messages import BASE_CHECKPOINT_ID, BASELINE_PREFIX
from shared.method.evaluation import MODES, BenchmarkSummary
from shared.method.stats import format_difference, paired_difference

# Columns in this order: the base model and its baselines, the baseline models, the trained ones.
STAGES = ("M0", "baseline", "M1", "M2", "oracle")
# (improved, baseline): each model against the one it improves on, and M2 against M0. Besides
# these, M2 against every baseline and arm, and every arm against M0 (``comparisons``).
COMPARISONS = (("M1", "M0"), ("M2", "M0"), ("M2", "M1"))
# How a mode reads in a label where the model is not the one its protocol was made for: RLHFlow's
# self-rewarding prompts on a model not trained for them is intrinsic self-correction (their
# paper's name for it); the trained self-rewarding model is a baseline model of its own.
MODE_LABELS = {"self-rewarding": "intrinsic self-correction"}


@dataclass
class ReportRow:
    """One (model, benchmark) cell of the table."""

    model: str
    benchmark: str
    problems: int
    samples: int
    accuracy: float
    ci95: float
    mean_tokens: float
    median_tokens: float


@dataclass
class ReportData:
    title: str
    rows: list[ReportRow]
    lengths: dict[str, list[int]] = field(default_factory=dict)  # model -> tokens per sample
    # (model, benchmark) -> problem id -> share of its samples that are right
    scores: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)  # what happened on the way
    # model -> its kind: "stage" (M0, M1, M2), "baseline" (M0 in a baseline mode, a baseline
    # model), "arm" (the arm, by its source), "variant" (a trained model in another mode)
    kinds: dict[str, str] = field(default_factory=dict)
    cap: int = 0  # eval.max_new_tokens: the longest answer a model could give (0: unknown)
    # (model, benchmark) -> (right samples, of them: cut at the cap with no stated answer)
    fallback: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.rows))

    def benchmarks(self) -> list[str]:
        return list(dict.fromkeys(r.benchmark for r in self.rows))


def model_label(stage: str, mode: str, untrained: bool = True) -> str:
    """``untrained``: the model was not trained for the mode's protocol (a run's models never
    are), so the mode reads as MODE_LABELS says."""
    if mode == "base":
        return stage
    return f"{stage} {MODE_LABELS.get(mode, mode) if untrained else mode}"


class Labels:
    """The report's name of each evaluated model of a run: M0, M1, M2 with the mode where it is
    not ``base``; a baseline model by its name; the arm by its source."""

    def __init__(self, session: Session, run_id: str) -> None:
        self.stages = dict(
            session.execute(
                select(CheckpointRow.id, CheckpointRow.stage).where(CheckpointRow.run_id == run_id)
            ).all()
        )
        run = session.get(Run, run_id)
        self.arm = arm_name(session, run_id, run.config if run else {})

    def stage(self, checkpoint_id: str) -> str:
        if checkpoint_id == BASE_CHECKPOINT_ID:
            return "M0"
        if checkpoint_id.startswith(BASELINE_PREFIX):
            return "baseline"
        return self.stages.get(checkpoint_id, checkpoint_id)

    def label(self, checkpoint_id: str, mode: str) -> str:
        stage = self.stage(checkpoint_id)
        if stage == "baseline":  # evaluated under its own protocol only
            return checkpoint_id.removeprefix(BASELINE_PREFIX)
        return model_label(self.arm if stage == "oracle" else stage, mode)

    def kind(self, checkpoint_id: str, mode: str) -> str:
        stage = self.stage(checkpoint_id)
        if stage == "baseline" or (stage == "M0" and mode != "base"):
            return "baseline"
        if mode != "base":
            return "variant"
        return "arm" if stage == "oracle" else "stage"

    def order(self, checkpoint_id: str, mode: str) -> tuple[int, str, int]:
        return _order(self.stage(checkpoint_id), mode)


def _order(stage: str, mode: str) -> tuple[int, str, int]:
    """Stages in training order, then the modes in their listed order, unknown ones last."""
    stage_rank = STAGES.index(stage) if stage in STAGES else len(STAGES)
    return stage_rank, stage, MODES.index(mode) if mode in MODES else len(MODES)


def from_summaries(summaries: list[BenchmarkSummary], title: str) -> ReportData:
    """Report data from in-memory summaries; the model id stands in for the stage. Any model may
    be evaluated so (a trained self-rewarding one too): a mode is named by its protocol."""
    summaries = sorted(summaries, key=lambda s: _order(s.model, s.mode))
    data = ReportData(title, [])
    for s in summaries:
        # The name without the weights hash.
        label = model_label(s.model.split("@")[0], s.mode, untrained=False)
        data.rows.append(
            ReportRow(
                label,
                s.benchmark,
                s.problems,
                s.samples,
                s.accuracy,
                s.ci95,
                s.mean_tokens,
                s.median_tokens,
            )
        )
        data.lengths.setdefault(label, []).extend(r.tokens for r in s.results)
        data.scores[(label, s.benchmark)] = _per_problem(
            (r.problem_id, r.correct) for r in s.results
        )
    return data


def lengths(data: ReportData) -> Section:
    """The phase-1 effect the paper names: mean response length of M1 (and M2) against M0's on
    the same evaluation problems."""
    cells = {(r.model, r.benchmark): r.mean_tokens for r in data.rows}
    rows = []
    for bench in data.benchmarks():
        base = cells.get(("M0", bench))
        for model in ("M1", "M2"):
            if base and (model, bench) in cells:
                ratio = cells[(model, bench)] / base
                rows.append(
                    [
                        bench,
                        f"{model} / M0",
                        f"{cells[(model, bench)]:.0f} / {base:.0f}",
                        f"{ratio:.2f}x",
                    ]
                )
    note = "Mean generated tokens per answer on the same problems (the paper: phase 1 makes them "
    note += "over 4 times longer)."
    base = data.lengths.get("M0", [])
    if data.cap and base:
        capped = sum(t >= data.cap for t in base) / len(base)
        bound = data.cap / (sum(base) / len(base))
        note += (
            f" The cap binds: {capped:.0%} of M0's answers stopped at the {data.cap}-token "
            f"budget (eval.max_new_tokens), so no model's mean can exceed {bound:.2f}x M0's "
            "here, whatever the method does."
            if capped >= 0.1
            else f" {capped:.0%} of M0's answers reached the {data.cap}-token budget."
        )
    return Section("Response length", ["benchmark", "models", "tokens", "ratio"], rows, note)


STATED = re.compile(r"(?i)\\boxed|answer is")


def fallback_hits(data: ReportData) -> Section:
    """Right answers that stated no answer and were cut at the budget: the harness's last-number
    fallback found the gold number in text that never finished. They count as right (the
    harness's rule), but a model that learns to state its answer loses them."""
    rows = [
        [bench, model, str(right), str(lucky)]
        for (model, bench), (right, lucky) in sorted(
            data.fallback.items(), key=lambda i: i[0][::-1]
        )
        if right
    ]
    note = (
        "Right samples per model (base mode), and how many of them were cut at the token budget "
        "without stating an answer (no \\boxed{}, no 'the answer is'): found by the last-number "
        "fallback in text that never finished."
    )
    return Section(
        "Right answers found in unfinished text",
        ["benchmark", "model", "right", "of them unfinished"],
        rows,
        note,
    )


def _per_problem(samples: Iterable[tuple[str, bool]]) -> dict[str, float]:
    right: dict[str, list[bool]] = defaultdict(list)
    for problem_id, correct in samples:
        right[problem_id].append(correct)
    return {p: sum(c) / len(c) for p, c in right.items()}


def comparisons(data: ReportData) -> list[tuple[str, str]]:
    """(improved, baseline) pairs of the report: COMPARISONS, each arm against M0, and M2
    against every baseline (M0's modes, the baseline models) and every arm."""
    models = data.models()
    pairs = list(COMPARISONS)
    pairs += [(m, "M0") for m in models if data.kinds.get(m) == "arm"]
    pairs += [("M2", m) for m in models if data.kinds.get(m) in ("baseline", "arm")]
    return [(a, b) for a, b in pairs if a in models and b in models]


def paired(data: ReportData) -> Section:
    """Each of ``comparisons`` on every benchmark both models were evaluated on, over the
    problems both were evaluated on."""
    rows = []
    for bench in data.benchmarks():
        for improved, baseline in comparisons(data):
            a, b = data.scores.get((baseline, bench)), data.scores.get((improved, bench))
            if not a or not b:
                continue
            common = sorted(set(a) & set(b))
            if not common:
                continue
            d = paired_difference([a[p] for p in common], [b[p] for p in common])
            rows.append([bench, f"{improved} - {baseline}", str(d.n), format_difference(d)])
    note = (
        "Difference of pass@1 in points on the same problems, its paired-bootstrap 95% interval, "
        "and the p-value of a paired test (McNemar with one sample per problem, else sign-flip)."
    )
    return Section(
        "Paired differences", ["benchmark", "models", "problems", "difference"], rows, note
    )


def load_run(session: Session, run_id: str) -> ReportData:
    """Report data of one run from the database."""
    results = session.scalars(
        select(EvalResult).where(EvalResult.run_id == run_id).order_by(EvalResult.id)
    ).all()
    if not results:
        raise ValueError(f"run {run_id!r}: no rows in eval_results")
    labels = Labels(session, run_id)
    results = sorted(results, key=lambda r: labels.order(r.checkpoint_id, r.mode))
    run = session.get(Run, run_id)
    cap = ((run.config if run else {}).get("eval") or {}).get("max_new_tokens", 0)
    data = ReportData(f"Run {run_id}", [], cap=cap)
    for r in results:
        data.kinds[labels.label(r.checkpoint_id, r.mode)] = labels.kind(r.checkpoint_id, r.mode)
        data.rows.append(
            ReportRow(
                labels.label(r.checkpoint_id, r.mode),
                r.benchmark,
                r.problems,
                r.samples,
                r.accuracy,
                r.ci95,
                r.mean_tokens,
                r.median_tokens,
            )
        )
    samples = session.execute(
        select(EvalSampleRow.checkpoint_id, EvalSampleRow.mode, EvalSampleRow.tokens).where(
            EvalSampleRow.run_id == run_id
        )
    )
    lengths: dict[str, list[int]] = defaultdict(list)
    for checkpoint_id, mode, tokens in samples:
        lengths[labels.label(checkpoint_id, mode)].append(tokens)
    data.lengths = {m: lengths[m] for m in data.models() if m in lengths}
    graded = session.execute(
        select(
            EvalSampleRow.checkpoint_id,
            EvalSampleRow.mode,
            EvalSampleRow.benchmark,
            EvalSampleRow.problem_id,
            EvalSampleRow.correct,
        ).where(EvalSampleRow.run_id == run_id)
    )
    by_cell: dict[tuple[str, str], list[tuple[str, bool]]] = defaultdict(list)
    for checkpoint_id, mode, bench, problem_id, correct in graded:
        by_cell[(labels.label(checkpoint_id, mode), bench)].append((problem_id, correct))
    data.scores = {cell: _per_problem(samples) for cell, samples in by_cell.items()}
    data.fallback = _fallback(session, run_id, labels, cap) if cap else {}
    data.sections = story(session, run_id)
    return data


def _fallback(
    session: Session, run_id: str, labels: Labels, cap: int
) -> dict[tuple[str, str], tuple[int, int]]:
    """(model, benchmark) -> right samples in base mode, and how many are unfinished
    (``fallback_hits``)."""
    right = session.execute(
        select(
            EvalSampleRow.checkpoint_id,
            EvalSampleRow.benchmark,
            EvalSampleRow.turns,
            EvalSampleRow.tokens,
        ).where(EvalSampleRow.run_id == run_id, EvalSampleRow.mode == "base", EvalSampleRow.correct)
    )
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for checkpoint_id, bench, turns, tokens in right:
        cell = counts[(labels.label(checkpoint_id, "base"), bench)]
        cell[0] += 1
        cell[1] += tokens >= cap and not STATED.search(turns[-1])
    return {cell: (n, lucky) for cell, (n, lucky) in counts.items()}
