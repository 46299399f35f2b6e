"""The training-memory estimate (shared/inference/memory.py) for the paper's model on 1 to 8 GPUs,
full fine-tuning and LoRA, at the paper config's row length and at half of it.

    python -m benchmarks.gpu_plan [--gpu-gib 80]

The model is Qwen2.5-7B-Instruct's shape, built from its published configuration values (below)
on the meta device: no weights, no download. docs/gpus.md keeps the table this prints.
"""

from __future__ import annotations

import argparse

from transformers import Qwen2Config

from shared.core.trainer_settings import TrainerSettings
from shared.inference.memory import ModelShape, model_shape, plan_errors, training_memory

# Qwen2.5-7B-Instruct's config.json (hub revision of 2024-09).
QWEN25_7B = dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    tie_word_embeddings=False,
)


def qwen_shape() -> ModelShape:
    return model_shape(Qwen2Config(**QWEN25_7B))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu-gib", type=float, default=80.0)
    args = parser.parse_args()
    shape = qwen_shape()
    print(f"Qwen2.5-7B shape: {shape.parameters:,} parameters; GPUs of {args.gpu_gib:.0f} GiB")
    print("| training | GPUs | max_length | weights | grads + AdamW | activations | total | fits |")
    print("|---|---|---|---|---|---|---|---|")
    for lora in (False, True):
        for gpus in (1, 2, 4, 8):
            for length in (8192, 16384):
                settings = TrainerSettings(num_gpus=gpus, lora=lora, sft={"max_length": length})
                m = training_memory(shape, settings)
                fits = "yes" if not plan_errors(m, args.gpu_gib) else "**no**"
                print(
                    f"| {'LoRA r 64' if lora else 'full'} | {gpus} | {length} | "
                    f"{m.weights:.1f} | {m.training_state:.1f} | {m.activations:.1f} | "
                    f"{m.total:.1f} | {fits} |"
                )


if __name__ == "__main__":
    main()
