"""The trainer's settings section: the TRL SFTConfig values of each preset, which ``trainer.sft``
overrides field by field, and the project's own fields (where and how a job runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from shared.core.sections import Section, Threads

# TRL SFTConfig fields of each trainer preset; trainer.sft overrides any of them.
# paper: full fine-tuning of a 7B model on one 8-GPU host (global batch 8 GPUs x 1 x 16 = 128
# sequences with num_gpus: 8), warm-up over 10% of the updates (a float below 1 is a ratio).
# cpu-tiny: a handful of short updates of the embedded 135M model on a CPU. One packed sequence
# per step: padding-free packing flattens a batch into one sequence, and CPU attention over it
# costs the square of the whole batch's length (GPU varlen kernels do not pay that).
SFT_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "learning_rate": 1e-5,
        "num_train_epochs": 3.0,
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 16,
        "max_length": 4096,
        "packing": False,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1,
        "weight_decay": 0.0,
        "activation_checkpointing": True,
        "save_steps": 100,
        "save_total_limit": 2,
        "logging_steps": 10,
        "seed": 42,
    },
    "cpu-tiny": {
        "learning_rate": 1e-4,
        "num_train_epochs": 1.0,
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 4,
        "max_length": 512,
        "packing": True,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "activation_checkpointing": False,
        "save_steps": 2,
        "save_total_limit": 2,
        "logging_steps": 1,
        "seed": 42,
    },
}
# PEFT LoraConfig fields when trainer.lora is on; trainer.lora_config overrides any of them.
LORA_DEFAULTS: dict[str, Any] = {
    "r": 64,
    "lora_alpha": 128,
    "lora_dropout": 0.05,
    "target_modules": "all-linear",
}


class TrainerSettings(Section):
    """trainer-svc: supervised fine-tuning with TRL's SFTTrainer.

    The training itself is TRL's: ``sft`` holds SFTConfig fields, over those of ``preset``. The
    fields here are the project's own: where and how the job runs.
    """

    port: int = Field(8104, description="HTTP port of the status app.")
    preset: Literal["paper", "cpu-tiny"] = Field(
        "paper",
        description="SFTConfig values to start from (SFT_PRESETS): paper, full fine-tuning of a "
        "7B model on GPUs; cpu-tiny, a few short updates of the embedded model on a CPU.",
    )
    sft: dict[str, Any] = Field(
        {},
        description="TRL SFTConfig fields over the preset's, passed to SFTConfig as they are "
        "(e.g. learning_rate, num_train_epochs, max_steps, max_length, packing, "
        "gradient_accumulation_steps, save_steps). The trainer sets output_dir, bf16 (from "
        "trainer.bf16), use_cpu, save_strategy, completion_only_loss, report_to and "
        "disable_tqdm itself; naming one of them here is an error.",
    )
    bf16: Literal["auto"] | bool = Field(
        "auto",
        description="bf16 mixed precision. auto: where the hardware runs bfloat16 natively, by "
        "the rule of inference.dtype auto (never on a CPU that emulates it).",
    )
    attn_implementation: str = Field(
        "auto",
        description="transformers attention kernel of the trained model. auto: flex_attention "
        "on a GPU with packing (it keeps packed rows apart without a dense mask), sdpa otherwise "
        "(flex has no CPU backward). Or name one: sdpa, eager, flex_attention, "
        "flash_attention_2 (needs flash-attn).",
    )
    threads: Threads = Field(
        0,
        description="Torch CPU threads of the trainer: a number (0: every core this process may "
        "run on), or 'idle', "
        "the cores no other process is busy on or has claimed when a training job starts "
        "(hardware.idle_cores): a job that runs alone uses every core, one beside the generator "
        "leaves it its core.",
    )
    nice: int = Field(
        0,
        ge=0,
        le=19,
        description="Scheduling niceness of the trainer process (0-19). Above 0, where services "
        "share a CPU, a core goes to the generator first: its sampling, not the oracle arm's "
        "training, decides when a run ends.",
    )
    lora: bool = Field(False, description="Train a LoRA adapter instead of all weights.")
    lora_config: dict[str, Any] = Field(
        {},
        description="PEFT LoraConfig fields over LORA_DEFAULTS (r 64, lora_alpha 128, "
        "lora_dropout 0.05, target_modules all-linear).",
    )
    merge_lora: bool = Field(
        True,
        description="Save LoRA merged into full weights (loadable as a plain model); "
        "false saves the adapter with a reference to its base model.",
    )
    num_gpus: int = Field(
        0,
        ge=0,
        description="GPUs per training job. More than one launches `accelerate launch` "
        "with the config file below; 0 or 1 trains in the service process.",
    )
    accelerate_config: Path = Field(
        Path("configs/accelerate/fsdp.yaml"),
        description="accelerate config for multi-GPU (fsdp.yaml or deepspeed_zero3.yaml).",
    )

    def sft_fields(self) -> dict[str, Any]:
        """The SFTConfig fields of this trainer: the preset's, then ``sft``'s. A value from an
        environment variable arrives as text; one that reads as JSON (1, 2e-5, true) is that."""
        return {**SFT_PRESETS[self.preset], **{k: _typed(v) for k, v in self.sft.items()}}

    def lora_fields(self) -> dict[str, Any]:
        return {**LORA_DEFAULTS, **{k: _typed(v) for k, v in self.lora_config.items()}}


def _typed(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value
