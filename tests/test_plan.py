"""The GPU plan: the training-memory estimate, trainer-svc refusing at start-up a plan that
cannot fit (with the numbers), and `dualphase run --dry-run` printing the plan without starting
anything."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import Qwen2Config
from typer.testing import CliRunner

from benchmarks.gpu_plan import QWEN25_7B, qwen_shape
from dualphase.cli import app
from shared.core.settings import Settings, TrainerSettings
from shared.inference.memory import GIB, model_shape, plan_errors, training_memory
from trainer_svc.app import memory_check

ROOT = Path(__file__).resolve().parents[1]


def test_a_full_7b_fine_tune_needs_more_than_one_80_gib_gpu() -> None:
    shape = qwen_shape()
    assert shape.parameters == 7_615_616_512  # Qwen2.5-7B, counted on the meta device
    one = training_memory(shape, TrainerSettings(sft={"max_length": 16384}))
    # float32 master weights (4 bytes), gradients and two AdamW moments (12 bytes) a parameter
    assert one.weights == pytest.approx(shape.parameters * 4 / GIB)
    assert one.training_state == pytest.approx(shape.parameters * 12 / GIB)
    [error] = plan_errors(one, 80)
    assert error.startswith(f"training needs about {one.total:.1f} GiB per GPU, over 72.0 GiB")
    assert "trainer.num_gpus" in error and "trainer.lora" in error
    four = training_memory(shape, TrainerSettings(num_gpus=4, sft={"max_length": 16384}))
    assert four.weights == pytest.approx(one.weights / 4) and plan_errors(four, 80) == []
    lora = training_memory(shape, TrainerSettings(lora=True, sft={"max_length": 16384}))
    assert plan_errors(lora, 80) == []


def test_the_trainer_refuses_at_start_up_a_plan_its_gpus_cannot_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "qwen-7b-config-only"
    Qwen2Config(**QWEN25_7B).save_pretrained(model)  # the shape, without any weight
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=80 * GIB)
    )
    settings = Settings(inference={"model": str(model)}, trainer={"sft": {"max_length": 8192}})
    with pytest.raises(SystemExit, match=r"trainer-svc: training needs about 11\d\.\d GiB per GPU"):
        memory_check(settings)
    sharded = settings.model_copy(update={"trainer": TrainerSettings(num_gpus=2)})
    checked = memory_check(sharded)
    assert checked["gpu_gib"] == 80.0 and checked["total_gib"] < 72
    assert model_shape(str(model)).parameters == qwen_shape().parameters


def test_dry_run_prints_the_papers_pool_and_plan_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "never-made"
    monkeypatch.setenv("DUALPHASE_COMMON__DATA_DIR", str(data_dir))
    result = CliRunner().invoke(
        app, ["run", "--config", str(ROOT / "configs" / "paper.yaml"), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "pool deepscaler (agentica-org/DeepScaleR-Preview-Dataset" in text
    assert "10000 problems for phase 1 and 5000 for phase 2" in text
    assert "phase 2 rounds [4, 10, 100]" in text
    assert "evaluation: gsm8k, math500, aime24, amc23, svamp, tabmwp, gaokao2023en" in text
    assert not data_dir.exists(), "a dry run starts nothing and writes nothing"


def test_dry_run_estimates_the_training_memory_of_a_model_it_has(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--dry-run"])  # the demo, the embedded model
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "memory: weights 0.6 GiB + gradients and AdamW state 1.8 GiB" in text
    assert "on 40 GiB GPUs: fits" in text


def test_run_without_config_reads_the_file_dualphase_config_names_else_the_demo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    demo = CliRunner().invoke(app, ["run", "--dry-run"])
    assert demo.exit_code == 0, demo.output
    assert "8 problems for phase 1 and 120 for phase 2" in " ".join(demo.output.split())
    monkeypatch.setenv("DUALPHASE_CONFIG", str(ROOT / "configs" / "miniature.yaml"))
    named = CliRunner().invoke(app, ["run", "--dry-run"])
    assert named.exit_code == 0, named.output
    assert "16 problems for phase 1 and 240 for phase 2" in " ".join(named.output.split())
