"""Will a training job fit its GPUs? An estimate from the model's shape and the trainer settings,
made before any weight is loaded: trainer-svc refuses a plan that cannot fit at start-up, with
the numbers, and ``dualphase run --dry-run`` prints it.

Per GPU, in bytes (P parameters, trainable T of them, N GPUs sharding them with FSDP):

- weights: P x 4 (float32 master weights; bf16 autocast computes in bfloat16 on top of them), or
  P x 2 for a LoRA run's frozen base (only its adapters are trained in float32);
- gradients and AdamW's two moments: T x 4 x 3;
- sharded over N GPUs under FSDP (weights, gradients and optimizer state alike);
- activations for one sequence of max_length tokens: with activation checkpointing, each layer's
  input (hidden x 2 bytes) plus one layer recomputed in full (about 16 hidden-sized and
  3 intermediate-sized bfloat16 tensors per token); without, every layer in full; plus the
  logits (vocabulary x 2 bytes per token: bfloat16, or float32 in chunks).

The estimate leaves out the CUDA context and allocator fragmentation, hence the headroom.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.core.trainer_settings import TrainerSettings

if TYPE_CHECKING:
    from transformers import PretrainedConfig

GIB = 2**30
HEADROOM = 0.9  # the share of a GPU's memory a plan may fill


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    hidden: int
    intermediate: int
    layers: int
    vocabulary: int


def model_shape(model: str | PretrainedConfig) -> ModelShape:
    """The shape of a model (a folder, a cached hub id, or its config), its parameters counted on
    the meta device (no weight is loaded)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model) if isinstance(model, str) else model
    with init_empty_weights():
        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    return ModelShape(
        parameters=parameters,
        hidden=config.hidden_size,
        intermediate=getattr(config, "intermediate_size", 4 * config.hidden_size),
        layers=config.num_hidden_layers,
        vocabulary=config.vocab_size,
    )


@dataclass(frozen=True)
class TrainingMemory:
    """The estimate per GPU, in GiB, and what it was made for."""

    gpus: int
    weights: float
    training_state: float  # gradients and optimizer moments
    activations: float
    max_length: int
    lora: bool

    @property
    def total(self) -> float:
        return self.weights + self.training_state + self.activations

    def lines(self) -> list[str]:
        sharding = f"sharded over {self.gpus} GPUs (FSDP)" if self.gpus > 1 else "on one GPU"
        kind = "LoRA" if self.lora else "full fine-tuning"
        return [
            f"{kind}, {sharding}, sequences of {self.max_length} tokens, per GPU:",
            f"  weights {self.weights:.1f} GiB + gradients and AdamW state "
            f"{self.training_state:.1f} GiB + activations {self.activations:.1f} GiB "
            f"= {self.total:.1f} GiB",
        ]


def training_memory(shape: ModelShape, settings: TrainerSettings) -> TrainingMemory:
    sft = settings.sft_fields()
    gpus = max(settings.num_gpus, 1)
    if settings.lora:
        lora = settings.lora_fields()
        # an adapter pair per linear layer: about 7 of them per layer (q, k, v, o, gate, up, down)
        trainable = 7 * shape.layers * 2 * int(lora["r"]) * shape.hidden
        weights = shape.parameters * 2 + trainable * 4
    else:
        trainable = shape.parameters
        weights = shape.parameters * 4
    state = trainable * 4 * 3
    tokens = int(sft["max_length"]) * int(sft.get("per_device_train_batch_size", 1))
    layer = tokens * (16 * shape.hidden + 3 * shape.intermediate) * 2
    if sft.get("activation_checkpointing", sft.get("gradient_checkpointing", False)):
        kept = tokens * shape.hidden * 2 * shape.layers + layer
    else:
        kept = layer * shape.layers
    activations = kept + tokens * shape.vocabulary * 2
    return TrainingMemory(
        gpus=gpus,
        weights=weights / gpus / GIB,
        training_state=state / gpus / GIB,
        activations=activations / GIB,
        max_length=int(sft["max_length"]),
        lora=settings.lora,
    )


def plan_errors(memory: TrainingMemory, gpu_gib: float) -> list[str]:
    """Why the plan cannot fit a GPU of ``gpu_gib`` GiB, with the numbers (empty if it fits)."""
    limit = gpu_gib * HEADROOM
    if memory.total <= limit:
        return []
    return [
        f"training needs about {memory.total:.1f} GiB per GPU, over {limit:.1f} GiB "
        f"({HEADROOM:.0%} of {gpu_gib:.0f} GiB): "
        + "; ".join(line.strip() for line in memory.lines())
        + ". Shard it over more GPUs (trainer.num_gpus), train LoRA (trainer.lora), or shorten "
        "trainer.sft.max_length."
    ]


def describe(memory: TrainingMemory) -> dict[str, Any]:
    """For /status and logs."""
    return {
        "gpus": memory.gpus,
        "weights_gib": round(memory.weights, 2),
        "training_state_gib": round(memory.training_state, 2),
        "activations_gib": round(memory.activations, 2),
        "total_gib": round(memory.total, 2),
    }
