"""What every `dualphase` command shares: the console, the --config option, reading the settings
and failing with one line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from shared.core.settings import CONFIG_ENV, Settings, SettingsError
from shared.core.settings import load_settings as _load_settings

console = Console()
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# What `run` and `eval` read without --config: the demo, with budgets that suit the embedded model.
DEMO_CONFIG = CONFIGS / "demo.yaml"
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings file (sections as in `config show`)."),
]


def demo_or(config: Path | None) -> Path:
    """What `run` and `eval` read: --config, else the file DUALPHASE_CONFIG names, else the demo
    (whose budgets suit the embedded model, where the bare defaults are the paper's)."""
    return config or Path(os.environ.get(CONFIG_ENV) or DEMO_CONFIG)


def load_settings(config: Path | None = None) -> Settings:
    """The settings, or one line naming the file, line and field that are wrong (exit 2)."""
    try:
        return _load_settings(config)
    except SettingsError as exc:
        fail(str(exc), 2)


def fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
