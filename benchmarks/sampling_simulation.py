"""Simulation of phase-2 sampling schedules: ``python -m benchmarks.sampling_simulation``.

Each problem has a solve probability p drawn from a Beta(alpha, beta) spread. Every schedule is
run on the same problems with the same random draws: a problem's whole future is the index G of
its first correct sample (geometric in p), so a schedule whose rounds have cumulative sizes
c1 < c2 < ... stops after the first round with c >= G, or after its last round. The one-at-a-time
ideal draws until the first correct sample with the same cap, which spends the fewest samples for
that coverage; every schedule is compared with the ideal at its own cap.

The batch check: a round is sent to the generator as one wave of jobs, n samples for every problem
still unsolved. A wave of fewer samples than one generate batch leaves the accelerator idle, so a
schedule "fills batches" when its smallest wave (in expectation over trials) has at least
``batch`` samples. The one-at-a-time ideal sends a wave per sample and fails this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from pydantic import BaseModel, Field

from dualphase.paper import PAPER_LATER_ROUNDS, PAPER_N1_EXAMPLE
from shared.core.settings import load_settings

# The paper's n1 is configurable (its example: 4), then 10, then 100 (dualphase.paper.PAPER).
PAPER_SCHEDULE = [PAPER_N1_EXAMPLE, *PAPER_LATER_ROUNDS]
GROWING_SCHEDULE = [1, 2, 4, 8, 16, 32, 37]


class SimulationConfig(BaseModel):
    """What the simulation runs."""

    problems: int = Field(100, ge=1, description="Problems in one simulated run.")
    trials: int = Field(2000, ge=1, description="Simulated runs averaged over.")
    alpha: float = Field(0.5, gt=0, description="Beta(alpha, beta) spread of solve probabilities.")
    beta: float = Field(0.5, gt=0, description="Beta(alpha, beta) spread of solve probabilities.")
    cap: int = Field(100, ge=1, description="Samples per problem of the uniform schedule.")
    batch: int = Field(16, ge=1, description="Samples a generate call takes (the batch check).")
    keep_k: int = Field(4, ge=1, description="Correct solutions kept per problem.")
    seed: int = Field(0, description="Seed of the draws.")
    schedules: dict[str, list[int]] = Field(
        default_factory=lambda: {"paper": PAPER_SCHEDULE, "growing": GROWING_SCHEDULE},
        description="Round schedules to compare besides uniform, single pass and the ideal.",
    )


@dataclass(frozen=True)
class Outcome:
    """One schedule's averages per simulated run."""

    name: str
    schedule: str
    rounds: int
    coverage: float  # share of problems with at least one correct solution
    samples: float  # samples spent per problem
    ideal_samples: float  # the one-at-a-time ideal with the same cap, per problem
    smallest_wave: float  # samples in the smallest round of a run (expected)
    kept: float | None  # correct solutions kept per solved problem (at most keep_k)

    @property
    def relative(self) -> float:
        return self.samples / self.ideal_samples


def _draws(config: SimulationConfig) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(config.seed)
    p = rng.beta(config.alpha, config.beta, size=(config.trials, config.problems))
    p = np.clip(p, 1e-12, 1.0)  # Beta can return exactly 0.0 in float64
    return p, rng.geometric(p), rng


def run_schedule(
    name: str,
    schedule: list[int],
    first: np.ndarray,
    keep: tuple[np.ndarray, np.random.Generator, int] | None = None,
) -> Outcome:
    """Average outcome of a round schedule over runs (rows) of problems (columns).

    ``first`` holds each problem's index (1-based) of its first correct sample; any value past
    every cap means never solved. ``keep`` = (solve probabilities, rng, k) estimates the correct
    solutions kept; without it (measured indices: later samples were never drawn) kept is None.
    """
    ends = np.cumsum(schedule)
    cap = int(ends[-1])
    last = np.searchsorted(ends, first)  # round holding the first correct sample (len: none)
    solved = last < len(ends)
    spent = ends[np.minimum(last, len(ends) - 1)]
    kept = None
    if keep is not None:
        p, rng, k = keep
        # Samples after the first correct one in its round are correct with probability p each.
        extra = rng.binomial(np.where(solved, spent - first, 0), p)
        kept = float(np.minimum(1 + extra, k)[solved].mean()) if solved.any() else 0.0
    starts = np.concatenate([[0], ends[:-1]])
    waves = [(schedule[r] * (first > starts[r]).sum(axis=1)).mean() for r in range(len(ends))]
    return Outcome(
        name=name,
        schedule=",".join(map(str, schedule)) if len(schedule) <= 12 else f"{schedule[0]} x {cap}",
        rounds=len(schedule),
        coverage=float(solved.mean()),
        samples=float(spent.mean()),
        ideal_samples=float(np.minimum(first, cap).mean()),
        smallest_wave=float(min(waves)),
        kept=kept,
    )


def compare(
    first: np.ndarray,
    cap: int,
    schedules: dict[str, list[int]],
    keep: tuple[np.ndarray, np.random.Generator, int] | None = None,
) -> list[Outcome]:
    """Uniform, single pass, the given schedules and the ideal, on the same first indices."""
    named = {
        "uniform": [cap],
        "single pass": [1],
        **schedules,
        "ideal (one at a time)": [1] * cap,
    }
    return [run_schedule(name, s, first, keep) for name, s in named.items()]


def simulate(config: SimulationConfig) -> list[Outcome]:
    """Every schedule on the same simulated draws."""
    p, first, rng = _draws(config)
    return compare(first, config.cap, config.schedules, (p, rng, config.keep_k))


def format_table(outcomes: list[Outcome], batch: int, keep_k: int) -> str:
    """A Markdown table, samples relative to the ideal printed as N.NNx."""
    lines = [
        "| schedule | rounds | coverage | samples/problem | vs ideal | smallest round "
        f"(batch {batch}) | kept/solved (k={keep_k}) |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        fills = "fills" if o.smallest_wave >= batch else "UNDER"
        kept = "-" if o.kept is None else f"{o.kept:.2f}"
        lines.append(
            f"| {o.name}: {o.schedule} | {o.rounds} | {o.coverage:.1%} | {o.samples:.2f} | "
            f"{o.relative:.2f}x | {o.smallest_wave:.0f} ({fills}) | {kept} |"
        )
    return "\n".join(lines)


app = typer.Typer(add_completion=False)
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML settings file (its sampler schedule).")
]


@app.command()
def main(
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
    typer.echo(f"Beta({alpha}, {beta}) solve probabilities, {problems} problems x {trials} runs")
    # plain echo: rich would wrap the Markdown rows
    typer.echo(format_table(simulate(sim), sim.batch, sim.keep_k))


if __name__ == "__main__":
    app()
