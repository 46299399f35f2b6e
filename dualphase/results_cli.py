"""`dualphase` commands about what a run made: evaluate a model, grade answers, write a run's
report, compare two runs, browse its data, export it as a dataset; and distill a teacher's
solutions for the arm."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dualphase.browse import DEFAULT_PORT
from dualphase.cli_helpers import ConfigOption, console, demo_or, fail, load_settings

app = typer.Typer()


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


@app.command("eval")
def eval_command(
    model: Annotated[
        str | None,
        typer.Option(help="Model folder or hub id (default: the configured one, 'embedded')."),
    ] = None,
    benchmarks: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated benchmarks, e.g. gsm8k,math500 (default: eval.benchmarks)."
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Problems per benchmark (0 = all; over eval.limits too).")
    ] = None,
    samples: Annotated[int | None, typer.Option(help="Samples per problem (k).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Token budget per turn.")] = None,
    modes: Annotated[
        str | None, typer.Option(help="Comma-separated modes: base, think-twice, self-rewarding.")
    ] = None,
    report_dir: Annotated[
        Path | None,
        typer.Option(help="Also write a report (Markdown, HTML, plots) into this folder."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Evaluate one model on benchmarks without the services and print the table (without
    --config: configs/demo.yaml, whose budgets suit the embedded model; configs/paper.yaml for
    a 7B model)."""
    import time

    from pydantic import ValidationError
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from dualphase import report, report_files
    from shared.core.settings import EvalSettings
    from shared.datasets import load_benchmarks
    from shared.method import evaluation

    settings = load_settings(demo_or(config))
    overrides = dict(
        benchmarks=_csv(benchmarks),
        limit=limit,
        limits=None if limit is None else {},  # --limit holds for every benchmark
        samples=samples,
        max_new_tokens=max_new_tokens,
        modes=_csv(modes),
    )
    try:
        eval_settings = EvalSettings.model_validate(
            {**settings.eval.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        fail(f"--{error['loc'][0]}: {error['msg']}, got {error.get('input')!r}", 2)
    settings = settings.model_copy(update={"eval": eval_settings})
    try:  # a wrong name or a bad file is named before the model is loaded
        problems = load_benchmarks(eval_settings, settings.data)
    except (ValueError, OSError) as exc:  # DatasetFormatError is a ValueError
        fail(str(exc), 2)
    columns = (
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bars: dict[tuple[str, str], TaskID] = {}
        began: dict[tuple[str, str], float] = {}

        def advance(benchmark: str, mode: str, done: int, total: int, tokens: int) -> None:
            """One bar per benchmark and mode: problems done, tokens/s, time left."""
            key = (benchmark, mode)
            if key not in bars:
                bars[key] = progress.add_task(f"{benchmark} {mode}", total=total, rate="")
            if done == 0:  # the benchmark starts now
                began[key] = time.monotonic()
                progress.reset(bars[key], total=total)
                return
            rate = tokens / max(time.monotonic() - began[key], 1e-9)
            progress.update(bars[key], completed=done, rate=f"{rate:.0f} tok/s")

        for mode in eval_settings.modes:  # every bar shows before the model loads
            for name, items in problems.items():
                bars[name, mode] = progress.add_task(f"{name} {mode}", total=len(items), rate="")
        summaries = evaluation.evaluate_model(settings, model, on_progress=advance)
    table = Table(title=f"pass@1 of {summaries[0].model}", caption="n: problems, k: samples")
    for column in (
        "benchmark",
        "mode",
        "n",
        "k",
        "pass@1 %",
        "95% CI",
        "mean tok",
        "median tok",
        "n/min",
    ):
        table.add_column(column, justify="left" if column in ("benchmark", "mode") else "right")
    for s in summaries:
        table.add_row(
            s.benchmark,
            s.mode,
            str(s.problems),
            str(s.samples),
            f"{100 * s.accuracy:.1f}",
            f"± {100 * s.ci95:.1f}",
            f"{s.mean_tokens:.0f}",
            f"{s.median_tokens:.0f}",
            f"{60 * s.problems / s.seconds:.1f}",
        )
    console.print(table)
    if report_dir is not None:
        data = report.from_summaries(summaries, f"Evaluation of {summaries[0].model}")
        for path in report_files.write_report(data, report_dir):
            console.print(f"wrote {path}")


@app.command("report")
def report_command(
    run: Annotated[str, typer.Argument(help="Run id.")],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: <data_dir>/reports/<run>).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Write the Markdown and HTML report with plots of one run's evaluation results."""
    from dualphase import report_files

    for path in report_files.report_run(load_settings(config), run, out):
        console.print(f"wrote {path}")


@app.command()
def grade(
    file: Annotated[
        Path, typer.Argument(help="JSONL rows with `gold`, `response`, optional `dataset`.")
    ],
    timeout: Annotated[float, typer.Option(help="Hard time limit per answer, seconds.")] = 5.0,
    workers: Annotated[int, typer.Option(help="Grading worker processes.")] = 1,
) -> None:
    """Grade responses: one JSON line per row (extracted, correct, seconds) on standard output."""
    import json

    from shared.datasets.jsonl import DatasetFormatError, read_jsonl
    from shared.datasets.rows import format_number
    from shared.method.grading import Grader

    items, datasets = [], []
    try:
        for lineno, row in read_jsonl(file):
            for field in ("gold", "response"):
                if row.get(field) is None:
                    raise DatasetFormatError(f"{file}:{lineno}: field '{field}' is missing")
            gold = row["gold"]
            items.append(
                (str(row["response"]), gold if isinstance(gold, str) else format_number(gold))
            )
            datasets.append(row.get("dataset", ""))
    except (DatasetFormatError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    with Grader(timeout_s=timeout, workers=workers) as grader:
        for dataset, g in zip(datasets, grader.grade_many(items), strict=True):
            line = {"extracted": g.extracted, "correct": g.correct, "seconds": round(g.seconds, 6)}
            typer.echo(
                json.dumps(
                    line
                    | ({"dataset": dataset} if dataset else {})
                    | ({"error": g.error} if g.error else {})
                )
            )


@app.command()
def browse(
    run: Annotated[
        str | None, typer.Argument(help="Run to open (default: the list of runs).")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to listen on (keep it local).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = DEFAULT_PORT,
    config: ConfigOption = None,
) -> None:
    """Browse a run's data in the browser (read-only): stages, problems, every turn and sample
    with its verdict and rules, shards, what M2 fixed and broke. Serves until Ctrl-C."""
    from dualphase.browse import serve_browser

    try:
        serve_browser(load_settings(config), host, port, run)
    except ValueError as exc:
        fail(str(exc), 2)


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="Run id.")],
    to: Annotated[Path, typer.Option(help="Folder to write the dataset into.")],
    push_to_hub: Annotated[
        str | None, typer.Option(help="Also push it to this Hugging Face dataset repo (user/name).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Write a run's training shards and evaluation samples as Hugging Face datasets (Parquet,
    one config each, with a dataset card)."""
    from dualphase.export import export_run

    try:
        paths = export_run(load_settings(config), run, to, push_to_hub)
    except (ValueError, OSError) as exc:
        fail(str(exc), 2)
    for path in paths:
        console.print(f"wrote {path}")


@app.command()
def compare(
    run_a: Annotated[str, typer.Argument(help="Run id of A (e.g. the paper's setting).")],
    run_b: Annotated[str, typer.Argument(help="Run id of B (e.g. the ablation).")],
    stage: Annotated[
        str, typer.Option(help="Model to pair: M0, M1, M2, oracle (the arm) or a baseline name.")
    ] = "M2",
    mode: Annotated[str, typer.Option(help="Evaluation mode of that model.")] = "base",
    config: ConfigOption = None,
) -> None:
    """Pair one model stage of two runs on the same problems of each benchmark (an ablation:
    one phase or two, joint or sequential, markers on or off, data scale) and print the paired
    differences B - A and the settings the runs differ in. Runs evaluated on different problems
    are refused."""
    from dualphase.compare import CompareError, compare_runs, render
    from shared.core.db import make_engine, make_sessionmaker

    settings = load_settings(config)
    engine = make_engine(settings.common.resolved_database_url())
    try:
        with make_sessionmaker(engine)() as session:
            result = compare_runs(session, run_a, run_b, stage, mode)
    except CompareError as exc:
        fail(str(exc), 2)
    finally:
        engine.dispose()
    typer.echo(render(result), nl=False)


@app.command()
def distill(
    teacher: Annotated[
        str, typer.Option(help="The teacher model: hub id or folder (inference.backend serves it).")
    ],
    problems: Annotated[
        Path, typer.Option(help="JSONL problem file (a format of shared/datasets).")
    ],
    out: Annotated[Path, typer.Option(help="The solutions file to write (JSON Lines).")],
    name: Annotated[
        str | None, typer.Option(help="The teacher's name in the report (default: --teacher).")
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="Solutions sampled per problem.")] = 4,
    keep: Annotated[int, typer.Option(min=1, help="Correct solutions kept per problem.")] = 1,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Token budget per solution (default: generator's).")
    ] = None,
    limit: Annotated[int, typer.Option(min=0, help="First N problems only (0 = all).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of sample 0; sample i uses seed + i.")] = 0,
    config: ConfigOption = None,
) -> None:
    """Sample a teacher's solutions of a problem file and keep those graded correct against the
    gold answer: the solutions file of the distilled arm (sampler.arm_solutions)."""
    from shared.core.messages import SamplingParams
    from shared.core.shards import write_jsonl
    from shared.datasets.problems import DatasetFormatError, read_problem_file
    from shared.inference import load_backend
    from shared.method import arm
    from shared.method.evaluation import SYSTEM_PROMPT
    from shared.method.grading import Grader

    settings = load_settings(config)
    try:
        specs = read_problem_file(problems)
    except (DatasetFormatError, OSError) as exc:
        fail(str(exc), 2)
    specs = specs[:limit] if limit else specs
    refs = [arm.ProblemRef(p.id, p.question, p.gold) for p in specs]
    generator = settings.generator
    params = SamplingParams(
        n=samples,
        temperature=generator.temperature,
        top_p=generator.top_p,
        max_new_tokens=max_new_tokens or generator.max_new_tokens,
        seed=seed,
    )
    backend = load_backend(settings.inference, teacher)
    try:
        with Grader(settings.verifier.grade_timeout_s, settings.verifier.workers) as grader:
            made = arm.distill(backend, grader, refs, params, SYSTEM_PROMPT, name or teacher, keep)
    finally:
        backend.close()
    write_jsonl(made.rows, out)
    solved = len({r["problem_id"] for r in made.rows})
    typer.echo(
        f"{made.samples} solutions of {len(refs)} problems sampled, {made.correct} graded correct "
        f"({made.truncated} of them cut at the token budget, left out); {len(made.rows)} kept "
        f"for {solved} problems: wrote {out}"
    )
