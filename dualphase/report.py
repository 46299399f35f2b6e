"""Run reports: a Markdown and an HTML file and two plots.

A run's report tells what happened on the way (``run_story``: deviations from the paper, phase-1
categories, rule rejections, shards, training), then the benchmark x model table, then each
model's difference to the model it improves on, paired on the same problems: the mean difference
of per-problem pass@1 with a paired-bootstrap 95% interval and a p-value (exact McNemar where each
problem has one sample, a sign-flip permutation test otherwise; ``shared.method.stats``).

The data comes from the database (``eval_results`` and ``eval_samples`` of one run, with the
stage of each checkpoint from ``checkpoints``) or from in-memory summaries (``dualphase eval``).
A model is labelled by its stage (M0, M1, M2) and, for the baselines, its mode.
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from sqlalchemy import select
from sqlalchemy.orm import Session

from dualphase.run_story import Section, story
from shared.core.db import CheckpointRow, EvalResult, EvalSampleRow, make_engine, make_sessionmaker
from shared.core.messages import BASE_CHECKPOINT_ID
from shared.core.settings import Settings
from shared.method.evaluation import MODES, BenchmarkSummary
from shared.method.stats import format_difference, paired_difference

STAGES = ("M0", "M1", "M2", "oracle")
# (improved, baseline): each model against the one it improves on, and M2 against M0.
COMPARISONS = (("M1", "M0"), ("M2", "M0"), ("M2", "M1"), ("oracle", "M0"))


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

    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.rows))

    def benchmarks(self) -> list[str]:
        return list(dict.fromkeys(r.benchmark for r in self.rows))


def model_label(stage: str, mode: str) -> str:
    return stage if mode == "base" else f"{stage} {mode}"


def _order(stage: str, mode: str) -> tuple[int, str, int]:
    """Stages in training order, then the modes in their listed order, unknown ones last."""
    stage_rank = STAGES.index(stage) if stage in STAGES else len(STAGES)
    return stage_rank, stage, MODES.index(mode) if mode in MODES else len(MODES)


def from_summaries(summaries: list[BenchmarkSummary], title: str) -> ReportData:
    """Report data from in-memory summaries; the model id stands in for the stage."""
    summaries = sorted(summaries, key=lambda s: _order(s.model, s.mode))
    data = ReportData(title, [])
    for s in summaries:
        label = model_label(s.model.split("@")[0], s.mode)  # the name without the weights hash
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
    return Section("Response length", ["benchmark", "models", "tokens", "ratio"], rows, note)


def _per_problem(samples: Iterable[tuple[str, bool]]) -> dict[str, float]:
    right: dict[str, list[bool]] = defaultdict(list)
    for problem_id, correct in samples:
        right[problem_id].append(correct)
    return {p: sum(c) / len(c) for p, c in right.items()}


def paired(data: ReportData) -> Section:
    """Each comparison of COMPARISONS on every benchmark both models were evaluated on."""
    rows = []
    for bench in data.benchmarks():
        for improved, baseline in COMPARISONS:
            a, b = data.scores.get((baseline, bench)), data.scores.get((improved, bench))
            if not a or not b:
                continue
            common = sorted(set(a) & set(b))
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
    stages = dict(
        session.execute(
            select(CheckpointRow.id, CheckpointRow.stage).where(CheckpointRow.run_id == run_id)
        ).all()
    )
    stages.setdefault(BASE_CHECKPOINT_ID, "M0")

    def stage(checkpoint_id: str) -> str:
        return stages.get(checkpoint_id, checkpoint_id)

    results = sorted(results, key=lambda r: _order(stage(r.checkpoint_id), r.mode))
    data = ReportData(f"Run {run_id}", [])
    for r in results:
        data.rows.append(
            ReportRow(
                model_label(stage(r.checkpoint_id), r.mode),
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
        lengths[model_label(stage(checkpoint_id), mode)].append(tokens)
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
        by_cell[(model_label(stage(checkpoint_id), mode), bench)].append((problem_id, correct))
    data.scores = {cell: _per_problem(samples) for cell, samples in by_cell.items()}
    data.sections = story(session, run_id)
    return data


def _table(data: ReportData) -> tuple[list[str], list[list[str]]]:
    """Header and body: one row per benchmark plus the mean, one column per model."""
    cells = {(r.model, r.benchmark): r for r in data.rows}
    models = data.models()
    body = []
    for bench in data.benchmarks():
        row = [bench]
        for m in models:
            r = cells.get((m, bench))
            row.append(
                f"{100 * r.accuracy:.1f} ± {100 * r.ci95:.1f} ({r.mean_tokens:.0f} tok)"
                if r
                else "-"
            )
        body.append(row)
    mean_row = ["mean"]
    for m in models:
        rows = [r for r in data.rows if r.model == m]
        acc = sum(r.accuracy for r in rows) / len(rows)
        tok = sum(r.mean_tokens for r in rows) / len(rows)
        mean_row.append(f"{100 * acc:.1f} ({tok:.0f} tok)")
    body.append(mean_row)
    return ["benchmark", *models], body


_NOTE = (
    "Cells: pass@1 in % (mean accuracy over the samples of each problem) ± the 95% confidence "
    "interval over problems, and the mean response length in generated tokens (all turns)."
)


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _markdown_section(section: Section) -> list[str]:
    lines = [f"## {section.title}", ""]
    if section.note:
        lines += [section.note, ""]
    if section.rows:
        lines += [*_markdown_table(section.header, section.rows), ""]
    return lines


def render_markdown(data: ReportData) -> str:
    header, body = _table(data)
    lines = [f"# {data.title}", ""]
    for section in data.sections:
        lines += _markdown_section(section)
    lines += ["## Evaluation", "", _NOTE, "", *_markdown_table(header, body), ""]
    lines += _markdown_section(paired(data))
    lines += _markdown_section(lengths(data))
    lines += [
        "",
        "![accuracy per stage](accuracy.png)",
        "",
        "![response length per stage](lengths.png)",
        "",
    ]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _html_section(section: Section) -> str:
    note = f"<p>{html.escape(section.note)}</p>" if section.note else ""
    table = _html_table(section.header, section.rows) if section.rows else ""
    return f"<h2>{html.escape(section.title)}</h2>{note}{table}"


def render_html(data: ReportData) -> str:
    header, body = _table(data)
    story_html = "".join(_html_section(s) for s in data.sections)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(data.title)}</title>
<style>body{{font-family:sans-serif}} td,th{{border:1px solid #ccc;padding:4px 8px}}
table{{border-collapse:collapse}}</style></head>
<body><h1>{html.escape(data.title)}</h1>{story_html}
<h2>Evaluation</h2><p>{html.escape(_NOTE)}</p>
{_html_table(header, body)}
{_html_section(paired(data))}
{_html_section(lengths(data))}
<h2>Accuracy per stage</h2><img src="accuracy.png" alt="accuracy per stage">
<h2>Response length per stage</h2><img src="lengths.png" alt="response length per stage">
</body></html>
"""


def plot_accuracy(data: ReportData, path: Path) -> None:
    """Grouped bars: one group per benchmark, one bar per model, 95% CI as error bars."""
    models, benchmarks = data.models(), data.benchmarks()
    cells = {(r.model, r.benchmark): r for r in data.rows}
    fig = Figure(figsize=(max(6.0, 1.3 * len(benchmarks) + 2), 4))
    ax = fig.subplots()
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        xs = [b + i * width for b, bench in enumerate(benchmarks) if (m, bench) in cells]
        rows = [cells[(m, bench)] for bench in benchmarks if (m, bench) in cells]
        ax.bar(
            xs,
            [100 * r.accuracy for r in rows],
            width,
            label=m,
            yerr=[100 * r.ci95 for r in rows],
            capsize=2,
        )
    ax.set_xticks([b + 0.4 - width / 2 for b in range(len(benchmarks))], benchmarks)
    ax.set_ylabel("pass@1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize="small")
    ax.set_title("Accuracy per stage")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_lengths(data: ReportData, path: Path) -> None:
    """Box plots of the tokens per sample, one per model, all benchmarks together."""
    models = [m for m in data.models() if data.lengths.get(m)]
    fig = Figure(figsize=(max(6.0, 1.5 * len(models)), 4))
    ax = fig.subplots()
    ax.boxplot([data.lengths[m] for m in models], tick_labels=models)
    ax.set_ylabel("response length (tokens)")
    ax.set_title("Response length per stage")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_report(data: ReportData, out_dir: Path) -> list[Path]:
    """Write report.md, report.html, accuracy.png and lengths.png into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / n for n in ("report.md", "report.html", "accuracy.png", "lengths.png")]
    paths[0].write_text(render_markdown(data))
    paths[1].write_text(render_html(data))
    plot_accuracy(data, paths[2])
    plot_lengths(data, paths[3])
    return paths


def report_run(settings: Settings, run_id: str, out_dir: Path | None = None) -> list[Path]:
    """The report of one run from the database, by default in ``<data_dir>/reports/<run>``."""
    engine = make_engine(settings.common.resolved_database_url())
    with make_sessionmaker(engine)() as session:
        data = load_run(session, run_id)
    engine.dispose()
    return write_report(data, out_dir or settings.common.data_dir / "reports" / run_id)
