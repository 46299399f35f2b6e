"""The `dualphase` command: run the embedded stack, serve one service, and the tools around it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console

from shared.settings import load_settings

app = typer.Typer(help="Dual-phase self-evolved math reasoning: data, fine-tuning, evaluation.",
                  no_args_is_help=True)
config_app = typer.Typer(help="Settings.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
model_app = typer.Typer(help="Models.", no_args_is_help=True)
bench_app = typer.Typer(help="Simulations and measurements.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
app.add_typer(bench_app, name="bench")
console = Console()

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML settings file (sections as in `config show`).")
]


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective settings as YAML."""
    settings = load_settings(config)
    console.print(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False), end="")


if __name__ == "__main__":
    app()
