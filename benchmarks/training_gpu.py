"""Trainer throughput on a GPU: tokens per second and model FLOPs utilisation (MFU).

    python -m benchmarks.training_gpu --tokenizer DIR [--math FILE] [--rows 4000]
        [--max-length 4096] [--batch 8] [--steps 30] [--peak-tflops 989.4]

Builds a model of the Qwen2.5-0.5B shape from its configuration alone (random weights, no
download), saves it beside the given tokenizer, and trains it with the project's own trainer
(``trainer_svc.train.train``: TRL's SFTTrainer, bf16, loss on the completion) on real MATH
problems and reference solutions, once with packing (best-fit decreasing, padding-free) and once
padded, alternating in one process so the ratio is taken side by side.

Tokens per second are non-padding tokens over training time, read from the trainer's own
progress reports after the first logging interval (kernel warm-up excluded). MFU counts
6 * N + 12 * L * d * s FLOPs per token (N: parameters of the matrix products, lm_head
included; L layers, d hidden size, s the mean row length, which is what attention spans
when packed rows do not see each other) against ``--peak-tflops`` (the H200's dense bf16
figure by default). Writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from benchmarks.training import MATH, math_rows
from shared.core.settings import TrainerSettings
from shared.core.shards import write_jsonl
from trainer_svc.train import TrainJob, train

# Qwen2.5-0.5B's config.json (the public model card's values): built here, never downloaded.
QWEN25_05B = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    hidden_act="silu",
)


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that take part in a matrix product per token: every Linear (lm_head included,
    though tied to the embedding, which itself is a lookup)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def build_model(tokenizer_dir: str, out: Path) -> tuple[int, int]:
    config = Qwen2Config(**QWEN25_05B)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return sum(p.numel() for p in model.parameters()), matmul_params(model)


def one_run(model: str, shard: str, out: Path, mode: str, args: argparse.Namespace) -> dict:
    """One training run; mode is "packing" or "padded", "+gc" adds gradient checkpointing,
    "+flex" uses flex_attention instead of sdpa."""
    packing = mode.startswith("packing")
    rates: list[float] = []
    settings = TrainerSettings(
        preset="paper",
        sft={
            "packing": packing,
            "max_length": args.max_length,
            "per_device_train_batch_size": args.batch,
            "gradient_accumulation_steps": 1,
            "activation_checkpointing": "+gc" in mode,
            "max_steps": args.steps,
            "logging_steps": args.logging_steps,
            "learning_rate": 1e-5,
            "save_steps": 10**6,
        },
        attn_implementation="flex_attention" if "+flex" in mode else "sdpa",  # not auto: named
        bf16="auto",  # bf16 on a GPU that supports it (the H200 does)
    )
    job = TrainJob(shard_id="bench", files=[shard], model=model, output_dir=out, settings=settings)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train(job, report=lambda progress: rates.append(progress["tokens_per_s"]))
    steady = rates[1:] or rates  # the first interval carries kernel selection and warm-up
    return {
        "packing": packing,
        "steps": result.global_step,
        "tokens": result.tokens,
        "train_seconds": round(result.train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "tokens_per_s_overall": round(result.tokens_per_s, 1),
        "tokens_per_s_steady": round(statistics.median(steady), 1),
        "interval_rates": [round(r, 1) for r in rates],
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)
        if torch.cuda.is_available()
        else None,
        "loss": round(result.train_loss, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="Folder with a tokenizer to save.")
    parser.add_argument("--math", type=Path, default=MATH, help="MATH problems (JSON Lines).")
    parser.add_argument("--rows", type=int, default=4000, help="Rows in the shard.")
    parser.add_argument("--max-length", type=int, default=4096, help="Tokens per sequence.")
    parser.add_argument("--batch", type=int, default=8, help="Sequences per step.")
    parser.add_argument("--steps", type=int, default=30, help="Updates per run.")
    parser.add_argument("--logging-steps", type=int, default=5)
    parser.add_argument(
        "--modes",
        default="packing,packing+gc,padded",
        help="Runs in order: packing or padded; +gc: checkpointing; +flex: flex_attention.",
    )
    parser.add_argument("--peak-tflops", type=float, default=989.4, help="Dense bf16 peak.")
    parser.add_argument("--out", type=Path, default=Path("training_gpu.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "qwen2.5-0.5b-shape"
        total, matmul = build_model(args.tokenizer, model_dir)
        rows = math_rows(args.rows, args.math)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        lengths = [
            len(
                tokenizer(
                    tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False)
                ).input_ids
            )
            for r in rows[:500]
        ]
        mean_len = statistics.mean(lengths)
        shard = write_jsonl(rows, Path(tmp) / "shard.jsonl").path
        flops_per_token = 6 * matmul + 12 * QWEN25_05B["num_hidden_layers"] * 896 * mean_len
        runs = []
        for mode in args.modes.split(","):
            run = one_run(str(model_dir), shard, Path(tmp) / mode, mode, args)
            run["mode"] = mode
            run["tflops"] = round(run["tokens_per_s_steady"] * flops_per_token / 1e12, 1)
            run["mfu"] = round(run["tflops"] / args.peak_tflops, 3)
            runs.append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)",
        "torch": torch.__version__,
        "parameters": total,
        "matmul_parameters": matmul,
        "mean_row_tokens": round(mean_len, 1),
        "flops_per_token": flops_per_token,
        "peak_tflops": args.peak_tflops,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "runs": runs,
    }
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
