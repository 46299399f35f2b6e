"""Training throughput: tokens per second with packing versus without, on the same real shard.

    python benchmarks/training.py [--rows 32] [--max-length 512] [--batch 4] [--repeats 1]

Builds one shard from real MATH problems and reference solutions (the MATH pool's dataset,
docs/data.md, or ``--math FILE`` in benchmarks/training_gpu.py), then
trains the embedded model for one epoch over it with TRL's SFTTrainer (full fine-tuning, fp32,
CPU, the cpu-tiny preset otherwise), once without packing (each batch padded to its longest
row) and once with packing (best-fit decreasing, padding-free), alternating, ``--repeats``
times. Tokens per second = non-padding tokens trained on / training-loop wall time. Writes the
"## Training" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from shared.core.settings import InferenceConfig, TrainerSettings
from shared.core.shards import write_jsonl
from shared.inference.model import resolve_model
from trainer_svc.train import TrainJob, TrainResult, train

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
MATH: Path | None = None  # the MATH pool's dataset (shared/datasets), unless a file is given


def math_rows(n: int, path: Path | None = MATH) -> list[dict[str, Any]]:
    """The first n MATH problems as shard rows: real, and of very different lengths. From a
    JSON Lines file of MATH rows, or else the MATH test set of the data settings (docs/data.md)."""
    from shared.datasets import dataset_rows

    if path is not None:
        items = [json.loads(line) for line in path.open()][:n]
    else:
        items = [{**row, "idx": i} for i, row in enumerate(dataset_rows("math")[:n])]
    return [
        {
            "prompt": [
                {"role": "system", "content": "Solve the problem step by step."},
                {"role": "user", "content": item["problem"]},
            ],
            "completion": [{"role": "assistant", "content": item["solution"]}],
            "source": "multi-turn",
            "run_id": "bench",
            "problem_id": str(item["idx"]),
            "sample_id": f"{item['idx']}-0",
        }
        for item in items
    ]


def train_once(shard: str, model: str, out: Path, settings: TrainerSettings) -> TrainResult:
    job = TrainJob(shard_id="bench", files=[shard], model=model, output_dir=out, settings=settings)
    return train(job)


def write_docs(table: str, command: str) -> None:
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    section = (
        "## Training\n\n"
        "Tokens per second of TRL's SFTTrainer with packing versus without, on the same shard "
        "(the first N problems of the real MATH set with their reference solutions as "
        "completions, so row lengths vary widely), one epoch each, the embedded SmolLM2-135M "
        "fully fine-tuned in fp32 on CPU, one torch thread, loss on the completion only. Both "
        "modes get the same `batch` x `max_length` token slots per update: without packing a "
        "batch of `batch` rows, each padded to the batch's longest; with packing (best-fit "
        "decreasing, padding-free) `batch` packed sequences, one per step with gradient "
        "accumulation, so no compute goes to padding. Tokens = non-padding tokens; time = the "
        "training loop "
        "(model loading and saving excluded). Runs alternate in one process, so the ratio is "
        "the figure to read: the 2-core machine was shared with other work.\n\n"
        f"Command: `{command}`\n\n{table}\n\n"
    )
    pattern = re.compile(r"^## Training\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    DOCS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32, help="Rows in the shard.")
    parser.add_argument("--max-length", type=int, default=512, help="Tokens per sequence.")
    parser.add_argument("--batch", type=int, default=4, help="Sequences per update.")
    parser.add_argument("--repeats", type=int, default=1, help="Runs of each mode.")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadiest on a shared CPU)."
    )
    parser.add_argument("--no-write-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    model = resolve_model("embedded", InferenceConfig())
    results: dict[bool, list[TrainResult]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        shard = write_jsonl(math_rows(args.rows), Path(tmp) / "shard.jsonl").path
        for repeat in range(args.repeats):
            for packing in (False, True):
                # The same batch x max_length token slots per update in both modes: padded rows,
                # or packed sequences one per step (see SFT_PRESETS in shared/core/sections.py).
                settings = TrainerSettings(
                    preset="cpu-tiny",
                    sft={
                        "packing": packing,
                        "max_length": args.max_length,
                        "per_device_train_batch_size": 1 if packing else args.batch,
                        "gradient_accumulation_steps": args.batch if packing else 1,
                        "num_train_epochs": 1.0,
                        "save_steps": 10**6,
                    },
                )
                result = train_once(shard, model, Path(tmp) / f"{packing}-{repeat}", settings)
                results[packing].append(result)
                print(
                    f"packing={packing}: {result.tokens} tokens, {result.global_step} steps, "
                    f"{result.train_seconds:.1f} s, {result.tokens_per_s:.1f} tokens/s",
                    file=sys.stderr,
                )

    def median(packing: bool, key: str) -> float:
        return statistics.median(getattr(r, key) for r in results[packing])

    ratio = median(True, "tokens_per_s") / median(False, "tokens_per_s")
    lines = ["| mode | tokens | updates | seconds | tokens/s |", "|---|---|---|---|---|"]
    for packing in (False, True):
        lines.append(
            f"| {'packing' if packing else 'no packing'} | {median(packing, 'tokens'):.0f} | "
            f"{median(packing, 'global_step'):.0f} | {median(packing, 'train_seconds'):.1f} | "
            f"{median(packing, 'tokens_per_s'):.1f} |"
        )
    lines.append(
        f"\nPacking / no packing: **{ratio:.2f}x** tokens per second "
        f"(median of {args.repeats} run(s) each; target >= 1.5x)."
    )
    table = "\n".join(lines)
    print(table)
    if not args.no_write_docs:
        write_docs(table, "python " + " ".join(["benchmarks/training.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
