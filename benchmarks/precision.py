"""What bfloat16 does to training the embedded model: the held-out loss after the same training in
three precisions, side by side.

    python -m benchmarks.precision [--rows 96] [--held-out 64] [--epochs 2] [--repeats 1]

The shard is synthetic one-step word problems with their reference solutions (the miniature's
family); the held-out rows are other problems of the same family. Each mode trains the embedded
model with the trainer's own code (``trainer_svc.train.train``, the cpu-tiny preset, the given
epochs) and reports the mean completion loss of the held-out rows, computed in float32 for
every mode, before and after:

- ``float32``: trainer.bf16 false;
- ``bf16``: trainer.bf16 true, as the trainer does it: bf16 autocast over float32 weights;
- ``bf16-weights``: trainer.bf16 true with the weights loaded in bfloat16, as the trainer did
  before it kept float32 master weights (``weights_dtype`` replaced for this mode only).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from shared.core.settings import InferenceConfig, TrainerSettings
from shared.core.shards import write_jsonl
from shared.datasets.synthetic import make_problems
from shared.inference.hardware import resolve_dtype
from shared.inference.model import resolve_model
from shared.method.prompts import load_prompts
from trainer_svc import train as trainer
from trainer_svc.train import TrainJob, completion_loss


def rows(count: int, seed: int) -> list[dict[str, Any]]:
    system = load_prompts("v1").system
    return [
        {
            "prompt": [
                {"role": "system", "content": system},
                {"role": "user", "content": p.question},
            ],
            "completion": [{"role": "assistant", "content": p.solution}],
            "source": "oracle",
            "run_id": "bench",
            "problem_id": p.id,
            "sample_id": f"{p.id}:{seed}",
        }
        for p in make_problems(count, seed=seed, levels=(1,))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--held-out", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    hardware = resolve_dtype("auto")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; auto: {hardware.reason}")
    model = resolve_model("embedded", InferenceConfig())
    held_out = rows(args.held_out, seed=99)
    base = completion_loss(model, held_out)
    print(f"held-out completion loss before training: {base:.4f}")
    with tempfile.TemporaryDirectory() as tmp:
        shard = write_jsonl(rows(args.rows, seed=7), Path(tmp) / "shard.jsonl")
        kept = trainer.weights_dtype
        for repeat in range(args.repeats):
            for mode in ("float32", "bf16", "bf16-weights"):
                settings = TrainerSettings(
                    preset="cpu-tiny",
                    bf16=mode != "float32",
                    sft={"num_train_epochs": args.epochs, "save_steps": 10**6},
                )
                trainer.weights_dtype = (
                    (lambda _s: torch.bfloat16) if mode == "bf16-weights" else kept
                )
                job = TrainJob(
                    shard_id="bench",
                    files=[shard.path],
                    model=model,
                    output_dir=Path(tmp) / f"{mode}-{repeat}",
                    settings=settings,
                )
                began = time.perf_counter()
                result = trainer.train(job)
                seconds = time.perf_counter() - began
                loss = completion_loss(result.path, held_out)
                print(
                    f"{mode}: {result.global_step} updates, train loss {result.train_loss:.4f}, "
                    f"held-out loss {base:.4f} -> {loss:.4f} ({loss - base:+.4f}), {seconds:.0f} s",
                    flush=True,
                )
        trainer.weights_dtype = kept


if __name__ == "__main__":
    main()
