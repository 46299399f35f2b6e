"""`python -m benchmarks.sampling_simulation`: the schedule simulation against closed forms
and the target."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from benchmarks.sampling_simulation import PAPER_SCHEDULE, SimulationConfig, app, simulate
from shared.core.settings import SamplerSettings


@pytest.fixture(scope="module")
def beta_half() -> dict:
    config = SimulationConfig(
        schedules={"paper": PAPER_SCHEDULE, "shipped": SamplerSettings().schedule}
    )
    return {o.name: o for o in simulate(config)}


def test_fixed_solve_probability_matches_the_closed_form() -> None:
    # Beta(3000, 7000) is p = 0.3 to within 0.005: expected samples of (4, 10, 100) are
    # 4 + 10 q^4 + 100 q^14 with q = 0.7, and the ideal's (1 - q^114) / p.
    config = SimulationConfig(problems=1000, trials=200, alpha=3000, beta=7000)
    out = {o.name: o for o in simulate(config)}
    q = 0.7
    assert out["paper"].samples == pytest.approx(4 + 10 * q**4 + 100 * q**14, rel=0.02)
    assert out["paper"].ideal_samples == pytest.approx((1 - q**114) / 0.3, rel=0.02)
    assert out["single pass"].coverage == pytest.approx(0.3, abs=0.01)
    assert out["uniform"].samples == 100


def test_paper_schedule_spends_about_1_8x_the_ideal(beta_half: dict) -> None:
    assert 1.7 < beta_half["paper"].relative < 1.9
    assert beta_half["ideal (one at a time)"].relative == 1.0
    assert beta_half["uniform"].relative > 8  # 100 per problem whatever happens


def test_shipped_schedule_keeps_uniform_coverage_within_1_25x_and_fills_batches(
    beta_half: dict,
) -> None:
    shipped, uniform = beta_half["shipped"], beta_half["uniform"]
    assert sum(SamplerSettings().schedule) == 100
    assert shipped.coverage == uniform.coverage  # same draws, same cap: the same problems
    assert shipped.relative <= 1.25
    assert shipped.smallest_wave >= 16  # every round of 100 problems fills a batch of 16
    assert beta_half["ideal (one at a time)"].smallest_wave < 16  # the ideal cannot


def test_simulation_command_prints_the_table() -> None:
    result = CliRunner().invoke(app, ["--trials", "50", "--schedule", "2,98"])
    assert result.exit_code == 0, result.output
    assert "| paper: 4,10,100 | 3 |" in result.output
    assert "| option 1: 2,98 | 2 |" in result.output
    assert len(re.findall(r"\| \d+\.\d\dx \|", result.output)) == 6
