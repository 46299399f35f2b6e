"""Bad input to the command line: one line naming the file, line and field (or the option),
a non-zero exit, no traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dualphase.cli import app


@pytest.fixture(autouse=True)
def _no_config_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUALPHASE_CONFIG", "")  # --config exports it; undone after each test


def one_error_line(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("x: [\n", ":2: not YAML"),
        ("inference:\n  batch_size: -3\n", "field 'inference.batch_size': Input should be"),
        ("inference:\n  batchsize: 3\n", "field 'inference.batchsize': Extra inputs"),
    ],
)
def test_a_bad_config_file_is_named_with_its_line_or_field(
    tmp_path: Path, yaml_text: str, expected: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    line = one_error_line(["config", "show", "--config", str(config)])
    assert str(config) in line and expected in line


def test_a_bad_environment_value_is_named_by_its_variable_not_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "good.yaml"
    config.write_text("sampler:\n  keep_k: 2\n")
    monkeypatch.setenv("DUALPHASE_SAMPLER__PHASES", "3")
    line = one_error_line(["config", "show", "--config", str(config)])
    assert line.startswith("error: DUALPHASE_SAMPLER__PHASES: field 'sampler.phases'"), line
    monkeypatch.setenv("DUALPHASE_SAMPLER__PHASES", "1")  # a value a Literal refused
    result = CliRunner().invoke(app, ["config", "show", "--config", str(config)])
    assert result.exit_code == 0 and "phases: 1" in result.output, result.output


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    line = one_error_line(["config", "show", "--config", str(tmp_path / "missing.yaml")])
    assert "missing.yaml: no such file" in line


def test_eval_names_an_unknown_benchmark_or_mode_before_loading_a_model() -> None:
    line = one_error_line(["eval", "--benchmarks", "nosuch", "--limit", "1"])
    assert "unknown benchmark 'nosuch'" in line
    line = one_error_line(["eval", "--modes", "bogus", "--limit", "1"])
    assert line.startswith("error: --modes: Input should be 'base'")


def test_a_second_run_on_held_ports_names_them_and_writes_nothing(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as held:  # another `dualphase run`'s generator
        port = held.getsockname()[1]
        env = {
            "DUALPHASE_GENERATOR__PORT": str(port),
            "DUALPHASE_COMMON__DATA_DIR": str(tmp_path / "data"),
        }
        result = CliRunner().invoke(app, ["run", "--phase1", "1", "--phase2", "1"], env=env)
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ports in use: ") and f"generator.port {port}" in line
    assert not (tmp_path / "data").exists()
