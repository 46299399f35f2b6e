"""Generated tokens per second: sequential generation versus the batched transformers backend.

Both runs use the same in-process model, the same prompts (GSM8K questions from the shared
datasets), greedy decoding and the same max_new_tokens. Sequential is one conversation per
``generate`` call; batched is one ``chat`` call with ``--batch-size`` rows per ``generate`` call.
Each dtype of ``--dtypes`` is measured in turn, in one run, and the line above the table says
what ``inference.dtype: auto`` chooses on this CPU and why (shared/inference/hardware.py).
The compute bound is a matmul rate measured here in that dtype divided by 2 x parameters FLOPs
per generated token.

    python benchmarks/inference.py --prompts 16 --max-new-tokens 32 --batch-size 16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from shared.core.messages import SamplingParams
from shared.core.settings import InferenceConfig
from shared.inference import TransformersBackend, load_backend
from shared.inference.hardware import resolve_dtype, set_threads

GSM8K = Path(__file__).resolve().parents[2] / "shared/datasets/benchmarks/gsm8k/test.jsonl"
INSTRUCTION = "Solve step by step and put the final answer in \\boxed{}."
BF16_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
# Environment variables that restrict the kernels torch, oneDNN and MKL may use (the AVX2
# imitation of docs/benchmarks.md).
ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_name() -> str:
    """The CPU's model name and its flags that matter for bfloat16, plus any ISA restriction."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
        "unknown CPU",
    )
    flags = next(
        (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
    )
    present = [f for f in BF16_FLAGS if f in flags]
    limits = [f"{k}={os.environ[k]}" for k in ISA_ENV if k in os.environ]
    return f"{model}; flags {' '.join(present) or 'none of ' + ' '.join(BF16_FLAGS)}" + (
        f"; restricted by {' '.join(limits)}" if limits else ""
    )


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


def measure(args: argparse.Namespace, dtype: str) -> None:
    backend = load_backend(
        InferenceConfig(batch_size=args.batch_size, threads=args.threads, dtype=dtype)
    )
    assert isinstance(backend, TransformersBackend)
    convs = conversations(args.dataset, args.prompts)
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    backend.chat(convs[:2], params.model_copy(update={"max_new_tokens": 4}))  # warm up

    seq_tokens, seq_s = timed(backend, convs, params, one_by_one=True)
    bat_tokens, bat_s = timed(backend, convs, params, one_by_one=False)
    gflops = matmul_gflops(backend.model.dtype)
    n_params = sum(p.numel() for p in backend.model.parameters())
    bound = gflops * 1e9 / (2 * n_params)
    seq_rate, bat_rate = seq_tokens / seq_s, bat_tokens / bat_s
    print(
        f"| {dtype} | {seq_rate:.1f} | {bat_rate:.1f} | {bat_rate / seq_rate:.1f}x | "
        f"{gflops:.1f} | {bound:.0f} | {bat_rate / bound:.0%} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: all cores")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated dtypes")
    parser.add_argument("--dataset", type=Path, default=GSM8K)
    args = parser.parse_args()

    set_threads(args.threads)
    auto = resolve_dtype("auto", "cpu")
    print(f"CPU: {cpu_name()}")
    print(f"auto chooses {auto.dtype}: {auto.reason}")
    print(
        f"model SmolLM2-135M-Instruct, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores; {args.prompts} prompts, max_new_tokens "
        f"{args.max_new_tokens}, greedy, batch {args.batch_size}"
    )
    print(
        "| dtype | sequential tokens/s | batched tokens/s | speed-up | matmul GFLOP/s "
        "| compute bound tokens/s | batched share of it |"
    )
    print("|---|---|---|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        measure(args, dtype)


if __name__ == "__main__":
    main()
