"""A run's report as files: Markdown and HTML (``report.py`` gathers what they say) and two plots
(accuracy per stage, response length per stage). ``dualphase report RUN`` and the end of
``dualphase run`` call ``report_run``."""

from __future__ import annotations

import html
from pathlib import Path

from matplotlib.figure import Figure

# Columns in this order: the base model and its baselines, the baseline models, the trained ones.
from dualphase.report import ReportData, fallback_hits, lengths, load_run, paired
from dualphase.run_story import Section
from shared.core.db import (
    make_engine,
    make_sessionmaker,
)
from shared.core.settings import Settings


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
    lines += _markdown_section(fallback_hits(data))
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
{_html_section(fallback_hits(data))}
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
