"""Supervised fine-tuning of one shard with TRL's SFTTrainer: full weights or a LoRA adapter.

The shard format is ``shared.core.shards.ShardSample`` (the sampler writes it, this module
reads it).

Resume
------
Everything for one shard lives in ``output_dir``: ``steps/checkpoint-N`` (resumable state, every
``save_steps`` updates), ``model/`` (the final weights or adapter) and ``DONE`` (the result as
JSON, written atomically last). A run that finds ``DONE`` returns it without training; a run that
finds a complete ``checkpoint-N`` resumes from step N.

Run ``python -m trainer_svc.train JOB.json`` (or under ``accelerate launch`` for several GPUs)
to train the ``TrainJob`` in that file; it writes ``progress.json`` beside the checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel
from pydantic import BaseModel, Field
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from trl import SFTConfig, SFTTrainer

from shared.core import shards
from shared.core.settings import SettingsError, TrainerSettings
from shared.inference.hardware import resolve_dtype

DONE = "DONE"
PROGRESS = "progress.json"


class TrainJob(BaseModel):
    """One training run: what to train on, where to start, where to write."""

    shard_id: str
    files: list[str] = Field(description="Validated shard files.")
    model: str = Field(description="Local folder (or hub id) of the model training starts from.")
    output_dir: Path = Field(description="Checkpoints, final model and DONE marker of this shard.")
    settings: TrainerSettings


class TrainResult(BaseModel):
    """What a finished run produced (also the content of the DONE marker)."""

    shard_id: str
    path: str = Field(description="Folder of the final model (merged weights) or adapter.")
    adapter: bool = Field(description="True: `path` holds a LoRA adapter of `base_model`.")
    base_model: str = Field(description="The model training started from.")
    global_step: int
    resumed_from_step: int = Field(description="Step of the checkpoint resumed from (0: fresh).")
    steps_this_run: int = Field(description="Updates done by the process that finished.")
    train_loss: float = Field(description="Mean training loss of the process that finished.")
    tokens: int = Field(description="Tokens (no padding) trained on by that process.")
    tokens_per_s: float = Field(description="tokens / training wall time of that process.")
    train_seconds: float
    config: dict[str, Any] = Field(
        description="The trainer settings used, with the effective SFTConfig fields as sft."
    )


def read_done(output_dir: Path) -> TrainResult | None:
    """The result of a shard already trained, or None."""
    marker = output_dir / DONE
    return TrainResult.model_validate_json(marker.read_text()) if marker.is_file() else None


def write_json_atomic(path: Path, text: str) -> None:
    # A reader (or a restart after a crash) sees the old file or the new one, never half of one.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def last_complete_checkpoint(steps_dir: Path) -> Path | None:
    """The newest checkpoint-N whose trainer state was written (it is saved last). Newer,
    incomplete ones (a kill during saving) are removed so they are neither resumed nor kept."""
    found = sorted(steps_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for ckpt in reversed(found):
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            return ckpt
        except (OSError, ValueError):
            shutil.rmtree(ckpt, ignore_errors=True)
    return None


def load_shard(files: list[str]) -> Dataset:
    """The shard as a prompt-completion dataset, provenance columns removed.

    Built in memory, not with ``load_dataset("json")``, which writes an Arrow cache under HF_HOME:
    compose mounts HF_HOME's volume read-only (``models:/models:ro``), where every training job
    failed. A shard is read once per job, so a cache would only fill a disk.
    """
    rows = shards.read_rows(files)
    return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])


def load_model(path: str, dtype: torch.dtype, attention: str = "sdpa") -> PreTrainedModel:
    """A causal LM; an adapter checkpoint (sequential mode after LoRA) is merged into its base."""
    if (Path(path) / "adapter_config.json").is_file():
        peft = AutoPeftModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attention
        )
        return peft.merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attention)


def weights_dtype(settings: TrainerSettings) -> torch.dtype:
    """The dtype the trained weights live in: float32 for full fine-tuning whatever the precision.
    bf16 mixed precision computes in bfloat16 under autocast, but an update (learning rate x
    gradient, about 1e-5 of a weight) survives only in float32 weights: bfloat16's 8 mantissa
    bits round most of it away (benchmarks/precision.py measures it). LoRA's frozen base may be
    bfloat16; PEFT keeps its adapters in float32."""
    return torch.bfloat16 if settings.lora and use_bf16(settings) else torch.float32


def use_bf16(settings: TrainerSettings) -> bool:
    """bf16 mixed precision: as set, or (auto) where the hardware runs bfloat16 natively."""
    if settings.bf16 == "auto":
        return resolve_dtype("auto").dtype == "bfloat16"
    return settings.bf16


def attention(settings: TrainerSettings) -> str:
    """The attention kernel: as set, or (auto) flex_attention where it pays (a GPU, packing)."""
    if settings.attn_implementation != "auto":
        return settings.attn_implementation
    packing = settings.sft_fields().get("packing", False)
    return "flex_attention" if torch.cuda.is_available() and packing else "sdpa"


# Fields the trainer owns: where it writes, what it trains on, how it reports.
OWN_FIELDS = {
    "output_dir",
    "bf16",
    "use_cpu",
    "save_strategy",
    "completion_only_loss",
    "report_to",
    "disable_tqdm",
}
SFT_FIELDS = {f.name for f in dataclasses.fields(SFTConfig) if f.init}


def check_sft(settings: TrainerSettings) -> None:
    """A SettingsError naming the first trainer.sft key that SFTConfig does not take, or that the
    trainer sets itself (checked when the trainer starts, before a job fails on it)."""
    for key in settings.sft:
        if key in OWN_FIELDS:
            raise SettingsError(
                f"trainer.sft.{key}: set by the trainer itself (trainer.bf16 for bf16)"
            )
        if key not in SFT_FIELDS:
            raise SettingsError(f"trainer.sft.{key}: not a field of TRL's SFTConfig")
    unknown = set(settings.lora_config) - {f.name for f in dataclasses.fields(LoraConfig)}
    if unknown:
        raise SettingsError(
            f"trainer.lora_config.{sorted(unknown)[0]}: not a field of PEFT's LoraConfig"
        )


def sft_config(settings: TrainerSettings, steps_dir: Path) -> SFTConfig:
    check_sft(settings)
    return SFTConfig(
        **settings.sft_fields(),
        output_dir=str(steps_dir),
        bf16=use_bf16(settings),
        # transformers refuses bf16 without a GPU unless told the run is on the CPU.
        use_cpu=not torch.cuda.is_available(),
        save_strategy="steps",
        completion_only_loss=True,
        report_to="none",
        disable_tqdm=True,
    )


def lora_config(settings: TrainerSettings) -> LoraConfig | None:
    return LoraConfig(**settings.lora_fields(), task_type="CAUSAL_LM") if settings.lora else None


class ProgressCallback(TrainerCallback):
    """Reports step, loss and tokens/s (on the main process) and counts this process's work."""

    def __init__(self, report: Callable[[dict[str, Any]], None]) -> None:
        self.report = report
        self.steps = 0
        self.tokens = 0
        self.started = self.last_time = time.perf_counter()
        self.last_tokens = 0
        self.train_seconds = 0.0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.started = self.last_time = time.perf_counter()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.steps += 1
        # Timed up to the last update: the checkpoint the Trainer saves after it is not training.
        self.train_seconds = time.perf_counter() - self.started

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        # TRL logs num_tokens: non-padding tokens seen by this process since it started.
        if not logs or "num_tokens" not in logs:
            return
        now, tokens = time.perf_counter(), int(logs["num_tokens"])
        rate = (tokens - self.last_tokens) / max(now - self.last_time, 1e-9)
        self.tokens, self.last_tokens, self.last_time = tokens, tokens, now
        if state.is_world_process_zero and "loss" in logs:
            self.report(
                {
                    "step": state.global_step,
                    "max_steps": state.max_steps,
                    "epoch": state.epoch,
                    "loss": logs["loss"],
                    "tokens_per_s": rate,
                    "tokens": tokens,
                }
            )


def train(job: TrainJob, report: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train one shard (or return its earlier result), save the model, write DONE."""
    if done := read_done(job.output_dir):
        return done
    settings = job.settings
    steps_dir = job.output_dir / "steps"
    steps_dir.mkdir(parents=True, exist_ok=True)
    resume = last_complete_checkpoint(steps_dir)

    args = sft_config(settings, steps_dir)
    dtype = weights_dtype(settings)
    tokenizer = AutoTokenizer.from_pretrained(job.model)
    callback = ProgressCallback(report or (lambda progress: None))
    trainer = SFTTrainer(
        model=load_model(job.model, dtype, attention(settings)),
        args=args,
        train_dataset=load_shard(job.files),
        processing_class=tokenizer,
        peft_config=lora_config(settings),
        callbacks=[callback],
    )
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    final_dir = job.output_dir / "model"
    adapter = settings.lora and not settings.merge_lora
    save_final(trainer, job, final_dir, dtype)
    result = TrainResult(
        shard_id=job.shard_id,
        path=str(final_dir.resolve()),
        adapter=adapter,
        base_model=job.model,
        global_step=output.global_step,
        resumed_from_step=int(resume.name.split("-")[1]) if resume else 0,
        steps_this_run=callback.steps,
        train_loss=output.training_loss,
        tokens=callback.tokens,
        tokens_per_s=callback.tokens / max(callback.train_seconds, 1e-9),
        train_seconds=callback.train_seconds,
        config=settings.model_dump(mode="json") | {"sft": settings.sft_fields()},
    )
    if trainer.accelerator.is_main_process:
        write_json_atomic(job.output_dir / DONE, result.model_dump_json(indent=1))
        # The resumable state (optimizer included, about 3x the model) is no longer needed.
        shutil.rmtree(steps_dir, ignore_errors=True)
    return result


def save_final(trainer: SFTTrainer, job: TrainJob, final_dir: Path, dtype: torch.dtype) -> None:
    """Save the model to ``final_dir`` via a temporary folder, so a crash leaves no half model.

    Full fine-tuning saves the weights; LoRA saves the adapter (whose config names its base
    model) and, with ``merge_lora``, merges it into the base weights on the main process."""
    tmp = job.output_dir / "model.tmp"
    if trainer.accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    if use_bf16(job.settings):  # float32 master weights, served in the precision it trained in
        trainer.model.config.dtype = torch.bfloat16
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # every rank takes part (FSDP gathers the weights)
    if not trainer.accelerator.is_main_process:
        return
    if job.settings.lora and job.settings.merge_lora:
        merged = PeftModel.from_pretrained(load_model(job.model, dtype), str(tmp))
        shutil.rmtree(tmp)
        merged.merge_and_unload().save_pretrained(tmp)
        trainer.processing_class.save_pretrained(tmp)
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(tmp, final_dir)


def completion_loss(model_dir: str, rows: list[dict[str, Any]]) -> float:
    """Mean loss of a model (in float32) on the completion tokens of shard rows: how well it fits
    them (benchmarks/precision.py, tests/test_trainer.py)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    losses = []
    for row in rows:
        prompt = tokenizer.apply_chat_template(
            row["prompt"], add_generation_prompt=True, tokenize=False
        )
        full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        ids = tokenizer(full, return_tensors="pt", add_special_tokens=False)["input_ids"]
        labels = ids.clone()
        labels[0, : len(tokenizer(prompt, add_special_tokens=False)["input_ids"])] = -100
        with torch.no_grad():
            losses.append(model(input_ids=ids, labels=labels).loss.item())
    return sum(losses) / len(losses)


def write_progress(output_dir: Path) -> Callable[[dict[str, Any]], None]:
    """A report function that keeps the latest progress in ``output_dir/progress.json`` (read by
    the service while an ``accelerate launch`` child trains)."""
    return lambda progress: write_json_atomic(output_dir / PROGRESS, json.dumps(progress))


if __name__ == "__main__":
    train_job = TrainJob.model_validate_json(Path(sys.argv[1]).read_text())
    train(train_job, write_progress(train_job.output_dir))
