"""The `dualphase` command: run the embedded stack, serve one service, and the tools around it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
import yaml
from rich.console import Console

from shared.core.messages import SERVICES
from shared.core.settings import Settings, SettingsError
from shared.core.settings import load_settings as _load_settings

app = typer.Typer(
    help="Dual-phase self-evolved math reasoning: data, fine-tuning, evaluation.",
    no_args_is_help=True,
)
config_app = typer.Typer(help="Settings.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
model_app = typer.Typer(help="Models.", no_args_is_help=True)
bench_app = typer.Typer(help="Simulations and measurements.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
app.add_typer(bench_app, name="bench")
console = Console()
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEMO_CONFIG = CONFIGS / "demo.yaml"
# What `init-env` generates into .env instead of the example's placeholders.
SECRETS = (
    "ADMIN_TOKEN",
    "MODEL_API_KEY",
    "POSTGRES_PASSWORD",
    "GRAFANA_DB_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings file (sections as in `config show`)."),
]


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective settings as YAML."""
    settings = load_settings(config)
    console.print(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False), end="")


@app.command()
def run(
    config: ConfigOption = None,
    problems: Annotated[
        Path | None,
        typer.Option(
            help="JSONL problem file (formats of ../shared/datasets) instead of the "
            "synthetic demo problems."
        ),
    ] = None,
    phase1: Annotated[
        int | None, typer.Option(help="Phase-1 problems in the run (default: run.phase1_problems).")
    ] = None,
    phase2: Annotated[
        int | None, typer.Option(help="Phase-2 problems in the run (default: run.phase2_problems).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Run seed: problem draw, balancing, sampling (run.seed).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many minutes.")] = 60,
) -> None:
    """Start the embedded stack, run the whole pipeline on a demo run, print the evaluation."""
    from rich.markdown import Markdown

    from dualphase import report
    from dualphase.embedded import StackError, embedded_stack, follow_run
    from shared.core.bus import Publisher
    from shared.core.db import make_engine, make_sessionmaker
    from shared.core.runs import submit_run
    from shared.datasets.problems import DatasetFormatError, demo_problems, read_problem_file

    settings = load_settings(config or DEMO_CONFIG)
    phase1 = settings.run.phase1_problems if phase1 is None else phase1
    phase2 = settings.run.phase2_problems if phase2 is None else phase2
    seed = settings.run.seed if seed is None else seed
    if problems is not None:
        try:  # all or nothing: a bad line fails before anything starts or is submitted
            specs = read_problem_file(problems)
        except (DatasetFormatError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
    else:
        specs = demo_problems(phase1 + phase2, seed, tuple(settings.eval.synthetic_levels))
    try:
        with embedded_stack(settings) as supervisor:
            sessions = make_sessionmaker(make_engine(settings.common.resolved_database_url()))
            publisher = Publisher(settings.common)
            run_id = submit_run(
                settings, sessions, publisher, specs[:phase1], specs[phase1 : phase1 + phase2], seed
            )
            console.print(f"run [bold]{run_id}[/]: logs in {settings.common.data_dir / 'logs'}")
            finished = follow_run(sessions, run_id, supervisor, timeout * 60)
    except StackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if not finished:
        console.print(f"[red]run {run_id} did not finish in {timeout} minutes")
        raise typer.Exit(1)
    paths = report.report_run(settings, run_id)
    console.print(Markdown(paths[0].read_text().split("![")[0]))
    console.print(f"run {run_id} complete; report in {paths[0].parent}")


@app.command()
def submit(
    problems: Annotated[
        Path, typer.Option(help="JSONL problem file (formats of ../shared/datasets).")
    ],
    phase1: Annotated[
        int | None, typer.Option(help="Phase-1 problems, from the top (default: half).")
    ] = None,
    phase2: Annotated[
        int | None, typer.Option(help="Phase-2 problems after them (default: all the rest).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Run seed: balancing, sampling.")] = 0,
    url: Annotated[
        str,
        typer.Option(help="sampler-svc's address (compose: `docker compose port sampler 8103`)."),
    ] = "http://127.0.0.1:8103",
    env_file: Annotated[
        Path,
        typer.Option(help="File whose ADMIN_TOKEN is sent (DUALPHASE_COMMON__ADMIN_TOKEN wins)."),
    ] = Path(".env"),
) -> None:
    """Start a run on a running stack (compose, or services started with `serve`) through
    sampler-svc's admin endpoint; prints the run id."""
    import os

    import httpx
    from dotenv import dotenv_values

    from shared.datasets.problems import DatasetFormatError, read_problem_file

    try:  # checked here first, so a bad line is named before anything is sent
        count = len(read_problem_file(problems))
    except (DatasetFormatError, OSError) as exc:
        _fail(str(exc), 2)
    first = count // 2 if phase1 is None else phase1
    total = count if phase2 is None else first + phase2
    if total > count:
        _fail(
            f"{problems}: --phase1 {first} and --phase2 {total - first} ask for {total} "
            f"problems, the file has {count}",
            2,
        )
    lines = [line for line in problems.read_text().splitlines() if line.strip()][:total]
    token = os.environ.get("DUALPHASE_COMMON__ADMIN_TOKEN") or (
        dotenv_values(env_file).get("ADMIN_TOKEN") if env_file.is_file() else None
    )
    if not token:
        _fail(
            f"no admin token: ADMIN_TOKEN is not set in {env_file} (`dualphase init-env` "
            "writes one) nor DUALPHASE_COMMON__ADMIN_TOKEN",
            2,
        )
    body = {"problems": "\n".join(lines), "phase1": first, "seed": seed}
    try:
        reply = httpx.post(
            f"{url.rstrip('/')}/runs",
            json=body,
            timeout=60,
            headers={"Authorization": f"Bearer {token}"},
        )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach sampler-svc at {url}: {exc}", 1)
    if reply.status_code != 201:
        detail = (
            reply.json().get("detail")
            if reply.headers.get("content-type", "").startswith("application/json")
            else reply.text[:500]
        )
        _fail(f"POST {url}/runs answered {reply.status_code}: {detail}", 1)
    typer.echo(reply.json()["run_id"])


@app.command("init-env")
def init_env(
    path: Annotated[Path, typer.Option(help="The file to write.")] = Path(".env"),
) -> None:
    """Write compose's .env from .env.example with a random admin token, model-server key and
    database and Grafana passwords (never overwrites an existing file)."""
    import re
    import secrets

    if path.exists():
        _fail(f"{path} exists; not overwritten (delete it to start again)", 2)
    text = (CONFIGS.parent / ".env.example").read_text()
    for key in SECRETS:
        text = re.sub(rf"^{key}=.*$", f"{key}={secrets.token_urlsafe(24)}", text, flags=re.M)
    path.write_text(text)
    path.chmod(0o600)
    console.print(f"{path}: written, with a new {', '.join(SECRETS)}")


def load_settings(config: Path | None = None) -> Settings:
    """The settings, or one line naming the file, line and field that are wrong (exit 2)."""
    try:
        return _load_settings(config)
    except SettingsError as exc:
        _fail(str(exc), 2)


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Create or migrate the database schema to the newest revision."""
    from shared.core.migrations import upgrade

    settings = load_settings(config)
    url = settings.common.resolved_database_url()
    if url.startswith("sqlite"):
        settings.common.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(url)
    console.print(f"database at head: {url}")


@model_app.command("prepare")
def model_prepare(config: ConfigOption = None) -> None:
    """Put the base model (inference.model) where every service finds it, once, and print it:
    the embedded model is converted into inference.model_cache_dir, a hub id is downloaded into
    the Hugging Face cache (HF_HOME), a local folder is checked."""
    from shared.inference.model import prepare_model

    settings = load_settings(config)
    try:
        path = prepare_model(settings.inference)
    except (FileNotFoundError, OSError) as exc:
        _fail(f"inference.model {settings.inference.model!r}: {exc}", 1)
    console.print(path)


@app.command()
def serve(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICES)}.")],
    config: ConfigOption = None,
) -> None:
    """Run one service (its consumer and its status app) until SIGTERM."""
    import importlib

    if name not in SERVICES:
        raise typer.BadParameter(f"unknown service {name!r}; choose from {SERVICES}")
    load_settings(config)
    importlib.import_module(f"{name}_svc.app").main()


@app.command()
def broker(
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (default: a free one).")
    ] = None,
) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) until Ctrl-C."""
    from dualphase.broker import serve_broker

    serve_broker(port)


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
    limit: Annotated[int | None, typer.Option(help="Problems per benchmark (0 = all).")] = None,
    samples: Annotated[int | None, typer.Option(help="Samples per problem (k).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Token budget per turn.")] = None,
    modes: Annotated[
        str | None, typer.Option(help="Comma-separated modes: base, think-twice, self-rewarding.")
    ] = None,
    datasets_dir: Annotated[Path | None, typer.Option(help="Folder of benchmark files.")] = None,
    report_dir: Annotated[
        Path | None,
        typer.Option(help="Also write a report (Markdown, HTML, plots) into this folder."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Evaluate one model on benchmarks without the services and print the table."""
    from pydantic import ValidationError
    from rich.progress import Progress
    from rich.table import Table

    from dualphase import report
    from shared.core.settings import EvalSettings
    from shared.method import evaluation

    settings = load_settings(config)
    overrides = dict(
        benchmarks=_csv(benchmarks),
        limit=limit,
        samples=samples,
        max_new_tokens=max_new_tokens,
        modes=_csv(modes),
        datasets_dir=datasets_dir,
    )
    try:
        eval_settings = EvalSettings.model_validate(
            {**settings.eval.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        _fail(f"--{error['loc'][0]}: {error['msg']}, got {error.get('input')!r}", 2)
    settings = settings.model_copy(update={"eval": eval_settings})
    try:  # a wrong name or a bad file is named before the model is loaded
        evaluation.load_benchmarks(eval_settings)
    except (ValueError, OSError) as exc:  # DatasetFormatError is a ValueError
        _fail(str(exc), 2)
    steps = len(eval_settings.benchmarks) * len(eval_settings.modes)
    with Progress(console=console) as progress:
        task = progress.add_task("evaluating", total=steps)

        def advance(s: evaluation.BenchmarkSummary) -> None:
            progress.update(task, advance=1, description=f"{s.benchmark} {s.mode} done")

        summaries = evaluation.evaluate_model(settings, model, on_done=advance)
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
        for path in report.write_report(data, report_dir):
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
    from dualphase import report

    for path in report.report_run(load_settings(config), run, out):
        console.print(f"wrote {path}")


@bench_app.command("sampling")
def bench_sampling(
    problems: Annotated[int, typer.Option(help="Problems in one simulated run.")] = 100,
    trials: Annotated[int, typer.Option(help="Simulated runs averaged over.")] = 2000,
    alpha: Annotated[float, typer.Option(help="Beta(alpha, beta) of solve probabilities.")] = 0.5,
    beta: Annotated[float, typer.Option(help="Beta(alpha, beta) of solve probabilities.")] = 0.5,
    batch: Annotated[int, typer.Option(help="Samples per generate call (batch check).")] = 16,
    schedule: Annotated[
        list[str] | None,
        typer.Option(help="Extra schedule to compare, e.g. --schedule 2,4,8,16,70 (repeatable)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the draws.")] = 0,
    config: ConfigOption = None,
) -> None:
    """Simulate phase-2 sampling schedules: coverage, samples, samples relative to the ideal."""
    from benchmarks.sampling_simulation import (
        PAPER_SCHEDULE,
        SimulationConfig,
        format_table,
        simulate,
    )

    settings = load_settings(config)
    schedules = {"paper": PAPER_SCHEDULE, "configured": settings.sampler.schedule}
    for text in schedule or []:
        schedules[f"option {len(schedules) - 1}"] = [int(n) for n in text.split(",")]
    sim = SimulationConfig(
        problems=problems,
        trials=trials,
        alpha=alpha,
        beta=beta,
        batch=batch,
        keep_k=settings.sampler.keep_k,
        seed=seed,
        schedules=schedules,
    )
    console.print(f"Beta({alpha}, {beta}) solve probabilities, {problems} problems x {trials} runs")
    # plain echo: rich would wrap the Markdown rows
    typer.echo(format_table(simulate(sim), sim.batch, sim.keep_k))


@bench_app.command("sampling-measured")
def bench_sampling_measured(
    problems: Annotated[int, typer.Option(help="Synthetic problems to sample.")] = 100,
    problem_seed: Annotated[int, typer.Option(help="Seed of the problem draw.")] = 7,
    seed: Annotated[int, typer.Option(help="Run seed: sample j is seeded seed + j.")] = 0,
    cap: Annotated[int, typer.Option(help="Samples per problem of the uniform schedule.")] = 100,
    schedule: Annotated[
        list[str] | None,
        typer.Option(
            help="Schedule to compare (repeatable). Default: the paper's and the configured one."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Drawing processes, one model each.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Write the per-problem streams here.")] = None,
    replay: Annotated[
        Path | None, typer.Option(help="Evaluate the streams of an earlier --out, no drawing.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Measure phase-2 schedules on the configured model: the simulation's table, real samples."""
    import json
    import time

    from benchmarks.sampling_measured import draw_parallel, first_indices, waves_up_to
    from benchmarks.sampling_simulation import PAPER_SCHEDULE, compare, format_table
    from shared.datasets.synthetic import make_problems

    settings = load_settings(config)
    schedules = {"paper": PAPER_SCHEDULE, "configured": settings.sampler.schedule}
    if schedule:
        schedules = {
            f"option {i + 1}": [int(n) for n in text.split(",")] for i, text in enumerate(schedule)
        }
    longest = max(cap, *(sum(s) for s in schedules.values()))  # the stream serves every cap
    if replay:
        saved = json.loads(replay.read_text())
        streams, meta = saved["streams"], saved["meta"]
    else:
        waves = waves_up_to(settings.sampler.schedule, longest)
        began = time.perf_counter()
        streams = draw_parallel(
            settings, make_problems(problems, problem_seed), waves, seed, workers, out
        )
        meta = {
            "problems": problems,
            "problem_seed": problem_seed,
            "seed": seed,
            "waves": waves,
            "model": settings.inference.model,
            "dtype": settings.inference.dtype,
            "batch_size": settings.inference.batch_size,
            "max_new_tokens": settings.generator.max_new_tokens,
            "temperature": settings.generator.temperature,
            "disabled_rules": settings.verifier.disabled_rules,
            "seconds": round(time.perf_counter() - began, 1),
        }
        if out:
            out.write_text(json.dumps({"meta": meta, "streams": streams}) + "\n")
    drawn = sum(len(s["accepted"]) for s in streams)
    tokens = sum(sum(s["tokens"]) for s in streams)
    console.print(
        f"{len(streams)} problems, {drawn} samples ({tokens} tokens) drawn in "
        f"{meta['seconds']} s; {meta}"
    )
    first = first_indices(streams)
    for level in sorted({s["level"] for s in streams}):
        at = sorted(
            int(f)
            for s, f in zip(streams, first[0], strict=True)
            if s["level"] == level and f <= cap
        )
        count = sum(s["level"] == level for s in streams)
        console.print(f"level {level}: {len(at)}/{count} solved within {cap}, first at {at}")
    typer.echo(
        format_table(compare(first, cap, schedules), meta["batch_size"], settings.sampler.keep_k)
    )


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


if __name__ == "__main__":
    app()
