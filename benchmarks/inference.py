"""Generated tokens per second: sequential generation versus the batched transformers backend.

Both runs use the same in-process model, the same prompts (GSM8K questions from the shared
datasets), greedy decoding and the same max_new_tokens. Sequential is one conversation per
``generate`` call; batched is one ``chat`` call with ``--batch-size`` rows per ``generate`` call.
The compute bound is a matmul rate measured here in the model's dtype divided by
2 x parameters FLOPs per generated token.

    python benchmarks/inference.py --prompts 64 --max-new-tokens 64 --batch-size 64 --threads 1 \
        --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from shared.inference import TransformersBackend, load_backend
from shared.messages import SamplingParams
from shared.settings import InferenceConfig

GSM8K = Path(__file__).resolve().parents[2] / "shared/datasets/benchmarks/gsm8k/test.jsonl"
INSTRUCTION = "Solve step by step and put the final answer in \\boxed{}."


def conversations(path: Path, count: int) -> list[list[dict[str, str]]]:
    with open(path) as f:
        rows = [json.loads(line) for _, line in zip(range(count), f, strict=False)]
    return [[{"role": "user", "content": f"{r['question']}\n{INSTRUCTION}"}] for r in rows]


def matmul_gflops(dtype: torch.dtype, size: int = 1024, repeats: int = 20) -> float:
    """Achieved matmul rate of this CPU in ``dtype`` with the threads torch uses."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def timed(backend: TransformersBackend, convs: list, params: SamplingParams, one_by_one: bool):
    start = time.perf_counter()
    if one_by_one:
        results = [r for conv in convs for r in backend.chat([conv], params)]
    else:
        results = backend.chat(convs, params)
    seconds = time.perf_counter() - start
    return sum(c.tokens for r in results for c in r.completions), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: all cores")
    parser.add_argument(
        "--dtype", default="auto", help="auto (the weights': float32) or bfloat16 (AMX CPUs)"
    )
    parser.add_argument("--dataset", type=Path, default=GSM8K)
    args = parser.parse_args()

    backend = load_backend(
        InferenceConfig(batch_size=args.batch_size, threads=args.threads, dtype=args.dtype)
    )
    assert isinstance(backend, TransformersBackend)
    convs = conversations(args.dataset, args.prompts)
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    backend.chat(convs[:2], params.model_copy(update={"max_new_tokens": 4}))  # warm up

    seq_tokens, seq_s = timed(backend, convs, params, one_by_one=True)
    bat_tokens, bat_s = timed(backend, convs, params, one_by_one=False)
    dtype = backend.model.dtype
    gflops = matmul_gflops(dtype)
    n_params = sum(p.numel() for p in backend.model.parameters())
    bound = gflops * 1e9 / (2 * n_params)

    seq_rate, bat_rate = seq_tokens / seq_s, bat_tokens / bat_s
    load = os.getloadavg()[0]
    print(
        f"model {backend.model_id} ({n_params / 1e6:.1f}M parameters), torch threads "
        f"{torch.get_num_threads()}, {dtype}, load average {load:.1f} on {os.cpu_count()} cores"
    )
    print(f"{args.prompts} prompts, max_new_tokens {args.max_new_tokens}, greedy")
    print("| run | generated tokens | seconds | tokens/s |")
    print("|---|---|---|---|")
    print(f"| sequential (1 per generate) | {seq_tokens} | {seq_s:.1f} | {seq_rate:.1f} |")
    print(f"| batched (batch {args.batch_size}) | {bat_tokens} | {bat_s:.1f} | {bat_rate:.1f} |")
    print(
        f"compute bound: {gflops:.1f} GFLOP/s {dtype} matmul / (2 x {n_params / 1e6:.1f}M) = "
        f"{bound:.0f} tokens/s; batched reaches {bat_rate / bound:.0%} of it"
    )
    print(f"speed-up: {bat_rate / seq_rate:.1f}x")


if __name__ == "__main__":
    main()
