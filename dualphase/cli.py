"""The `dualphase` command: run the embedded stack, serve one service, and the tools around it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from dualphase import results_cli
from dualphase.cli_helpers import CONFIGS, ConfigOption, console, demo_or, fail, load_settings
from shared.core.messages import SERVICES
from shared.core.settings import CONFIG_ENV, Settings

app = typer.Typer(
    help="Dual-phase self-evolved math reasoning: data, fine-tuning, evaluation.",
    no_args_is_help=True,
)
config_app = typer.Typer(help="Settings.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
model_app = typer.Typer(help="Models.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: benchmarks and training pools.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
app.add_typer(data_app, name="data")
app.add_typer(results_cli.app)  # eval, grade, report, compare, distill, browse, export
# What `init-env` generates into .env instead of the example's placeholders.
SECRETS = (
    "ADMIN_TOKEN",
    "MODEL_API_KEY",
    "POSTGRES_PASSWORD",
    "GRAFANA_DB_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
)


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
            help="JSONL problem file (a benchmark's format, or question and answer fields) "
            "instead of problems drawn from run.pool."
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
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the plan (data and counts, model, budgets, training and its memory per "
            "GPU, evaluation) and start nothing.",
        ),
    ] = False,
) -> None:
    """Start the embedded stack, run the whole pipeline on a run of problems drawn from run.pool
    (the demo's synthetic problems by default) or read from --problems, print the evaluation."""
    from rich.markdown import Markdown

    from dualphase import report_files
    from dualphase.embedded import StackError, embedded_stack, follow_run
    from shared.core.bus import Publisher
    from shared.core.db import make_engine, make_sessionmaker
    from shared.core.runs import submit_run
    from shared.datasets.problems import DatasetFormatError, draw_problems, read_problem_file

    settings = load_settings(demo_or(config))
    phase1 = settings.run.phase1_problems if phase1 is None else phase1
    phase2 = settings.run.phase2_problems if phase2 is None else phase2
    seed = settings.run.seed if seed is None else seed
    if dry_run:
        print_plan(settings, problems, phase1, phase2, seed)
        return
    if problems is not None:
        try:  # all or nothing: a bad line fails before anything starts or is submitted
            specs = read_problem_file(problems)
        except (DatasetFormatError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
    else:
        try:  # drawn from run.pool with the run seed, before anything starts
            specs = draw_problems(settings, phase1, phase2, seed)
        except (ValueError, OSError) as exc:  # names the pool's dataset id and the setting
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
    if settings.sampler.oracle and settings.sampler.arm_solutions:
        from shared.method.arm import read_solutions

        try:  # the arm's file is read when phase 1 is sealed: a bad line fails it now
            read_solutions(settings.sampler.arm_solutions)
        except (DatasetFormatError, OSError) as exc:
            typer.echo(f"error: sampler.arm_solutions: {exc}", err=True)
            raise typer.Exit(2) from exc
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
    paths = report_files.report_run(settings, run_id)
    console.print(Markdown(paths[0].read_text().split("![")[0]))
    console.print(f"run {run_id} complete; report in {paths[0].parent}")


def print_plan(
    settings: Settings, problems: Path | None, phase1: int, phase2: int, seed: int
) -> None:
    """`run --dry-run`: the plan, read from the settings and the model's config only (offline:
    a model that is not here yet is named, not downloaded)."""
    import os

    from dualphase.plan import plan_lines
    from shared.datasets.problems import pool_draw

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if problems is not None:
        data = [f"{problems}: the first {phase1} problems for phase 1, the next {phase2} phase 2"]
    else:
        draw = pool_draw(settings, phase1, phase2, seed)
        where = f" ({draw.hub_id}, {draw.config}/{draw.split}, revision {draw.revision})"
        data = [
            f"pool {draw.pool}{where if draw.hub_id else ' (made here)'}: {draw.phase1} problems "
            f"for phase 1 and {draw.phase2} for phase 2, drawn with seed {draw.seed}"
        ]
    console.print(f"dualphase run --dry-run (nothing started); config {os.environ.get(CONFIG_ENV)}")
    for line in plan_lines(settings, data):
        console.print(line, highlight=False, markup=False)


@app.command()
def submit(
    problems: Annotated[
        Path | None,
        typer.Option(
            help="JSONL problem file (a benchmark's format, or question and answer fields); "
            "without it, the problems are drawn from run.pool with the run seed."
        ),
    ] = None,
    phase1: Annotated[
        int | None,
        typer.Option(
            help="Phase-1 problems: from the top of the file (default: half), or drawn "
            "(default: run.phase1_problems)."
        ),
    ] = None,
    phase2: Annotated[
        int | None,
        typer.Option(
            help="Phase-2 problems after them (default: the rest of the file, or "
            "run.phase2_problems)."
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Run seed: problem draw, balancing, sampling (run.seed).")
    ] = None,
    url: Annotated[
        str,
        typer.Option(help="control-svc's address (compose: `docker compose port control 8106`)."),
    ] = "http://127.0.0.1:8106",
    env_file: Annotated[
        Path,
        typer.Option(help="File whose ADMIN_TOKEN is sent (DUALPHASE_CONTROL__ADMIN_TOKEN wins)."),
    ] = Path(".env"),
    config: ConfigOption = None,
) -> None:
    """Start a run on a running stack (compose, or services started with `serve`) through
    control-svc's admin endpoint; prints the run id. Without --problems the problems are drawn
    here from run.pool (--config), from local copies (data.local_dir), the cache or the hub."""
    import json
    import os

    import httpx
    from dotenv import dotenv_values

    from shared.datasets.problems import DatasetFormatError, draw_problems, read_problem_file

    settings = load_settings(config)
    seed = settings.run.seed if seed is None else seed
    if problems is None:
        try:
            specs = draw_problems(settings, phase1, phase2, seed)
        except (ValueError, OSError) as exc:  # names the pool's dataset id and the setting
            fail(str(exc), 2)
        first = settings.run.phase1_problems if phase1 is None else phase1
        lines = [
            json.dumps(
                {
                    "id": s.id,
                    "question": s.question,
                    "gold": s.gold,
                    "dataset": s.dataset,
                    "solution": s.solution,
                },
                ensure_ascii=False,
            )
            for s in specs
        ]
    else:
        try:  # checked here first, so a bad line is named before anything is sent
            count = len(read_problem_file(problems))
        except (DatasetFormatError, OSError) as exc:
            fail(str(exc), 2)
        first = count // 2 if phase1 is None else phase1
        total = count if phase2 is None else first + phase2
        if total > count:
            fail(
                f"{problems}: --phase1 {first} and --phase2 {total - first} ask for {total} "
                f"problems, the file has {count}",
                2,
            )
        lines = [line for line in problems.read_text().splitlines() if line.strip()][:total]
    token = os.environ.get("DUALPHASE_CONTROL__ADMIN_TOKEN") or (
        dotenv_values(env_file).get("ADMIN_TOKEN") if env_file.is_file() else None
    )
    if not token:
        fail(
            f"no admin token: ADMIN_TOKEN is not set in {env_file} (`dualphase init-env` "
            "writes one) nor DUALPHASE_CONTROL__ADMIN_TOKEN",
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
        fail(f"cannot reach control-svc at {url}: {exc}", 1)
    if reply.status_code != 201:
        detail = (
            reply.json().get("detail")
            if reply.headers.get("content-type", "").startswith("application/json")
            else reply.text[:500]
        )
        fail(f"POST {url}/runs answered {reply.status_code}: {detail}", 1)
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
        fail(f"{path} exists; not overwritten (delete it to start again)", 2)
    text = (CONFIGS.parent / ".env.example").read_text()
    for key in SECRETS:
        text = re.sub(rf"^{key}=.*$", f"{key}={secrets.token_urlsafe(24)}", text, flags=re.M)
    path.write_text(text)
    path.chmod(0o600)
    console.print(f"{path}: written, with a new {', '.join(SECRETS)}")


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


@data_app.command("prepare")
def data_prepare(config: ConfigOption = None) -> None:
    """Put every benchmark of eval.benchmarks and the training pool of run.pool into the cache
    (data.cache_dir) once, from local copies (data.local_dir) or the hub at their pinned
    revisions, and print what each has; the services then read the cache offline."""
    from shared.datasets import POOLS, is_synthetic, prepare

    settings = load_settings(config)
    pool = POOLS.get(settings.run.pool)
    names = [*settings.eval.benchmarks, *(pool.exclude if pool else ()), settings.run.pool]
    failed = 0
    for name in dict.fromkeys(names):
        if is_synthetic(name):
            typer.echo(f"{name}: made here, nothing to fetch")
            continue
        try:
            (got,) = prepare([name], settings.data)
        except (ValueError, OSError) as exc:  # names the dataset id and the setting
            typer.echo(f"error: {exc}", err=True)
            failed += 1
            continue
        source = got.source
        typer.echo(
            f"{name}: {got.rows} rows of {source.hub_id} ({source.config}/{source.split}, "
            f"revision {source.revision}) from {got.origin}"
        )
    typer.echo(f"cache: {settings.data.cache_dir}")
    if failed:
        raise typer.Exit(1)


@model_app.command("prepare")
def model_prepare(config: ConfigOption = None) -> None:
    """Put the base model (inference.model) and the baseline models (eval.baseline_models)
    where every service finds them, once, and print each: the embedded model is converted into
    inference.model_cache_dir, a hub id is downloaded into the Hugging Face cache (HF_HOME), a
    local folder is checked."""
    from shared.inference.model import prepare_model

    settings = load_settings(config)
    models = {"inference.model": settings.inference.model}
    models |= {f"eval.baseline_models {b.name!r}": b.model for b in settings.eval.baseline_models}
    for setting, model in models.items():
        try:
            path = prepare_model(settings.inference.model_copy(update={"model": model}))
        except OSError as exc:  # FileNotFoundError included
            fail(f"{setting} {model!r}: {exc}", 1)
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


if __name__ == "__main__":
    app()
