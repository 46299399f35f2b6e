"""Phase-2 sampling with and without a shared prefill, side by side.

Phase 2 draws ``n`` samples of each prompt. ``decode.generate`` prefills each distinct prompt
once and copies its cache to its ``n`` rows (``shared``); ``each`` is the earlier prefill, one
row per sample. The workload is the demo's phase-2 sampling: its generator prompt, worked
example and answer-line stop, ``--jobs`` one-step synthetic problems x ``--n`` samples. Modes
alternate, ``--repeats`` times each; every mode's texts are compared with the first's.

    python benchmarks/prefill.py --jobs 32 --n 4 --threads 2 --batch-sizes 32,64 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import DynamicCache

from benchmarks.inference import cpu_name
from shared.core.messages import SamplingParams
from shared.core.settings import load_settings
from shared.datasets.synthetic import make_problems
from shared.inference import decode, load_backend
from shared.method.markers import InferencePrompt
from shared.method.prompts import load_prompts

DEMO = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
SHARED = decode._prefill


def prefill_each(model: Any, rows: list[decode.Row], pad_id: int) -> decode.Batch:
    """The prefill before sharing: every row's prompt computed on its own row."""
    length = max(len(row.prompt) for row in rows)
    pads = [length - len(row.prompt) for row in rows]
    ids = torch.tensor([[pad_id] * p + row.prompt for p, row in zip(pads, rows, strict=True)])
    mask = torch.tensor([[0] * p + [1] * (length - p) for p in pads])
    ids, mask = ids.to(model.device), mask.to(model.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    return decode.Batch(rows, cache, mask, decode._forward(model, ids, mask, cache, positions))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="32,64")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    settings = load_settings(DEMO)
    settings.inference.threads = args.threads
    backend = load_backend(settings.inference)
    gen = settings.generator
    prompt = InferencePrompt(load_prompts(gen.prompt_version).system)
    problems = make_problems(args.jobs, 0, (1,))
    convs = [prompt.conversation(p.question, gen.sampling_example) for p in problems]
    params = SamplingParams(
        n=args.n,
        temperature=gen.temperature,
        max_new_tokens=gen.max_new_tokens,
        seed=0,
        stop_after_answer=gen.stop_after_answer,
    )
    print(f"{cpu_name()}; torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})")
    print(
        f"dtype {backend.dtype.dtype}; {args.jobs} prompts x {args.n} samples, "
        f"{args.threads} threads"
    )
    print(
        "| prefill | batch | seconds | tokens | tokens/s | same texts |\n|---|---|---|---|---|---|"
    )
    first: list[str] | None = None
    for _ in range(args.repeats):
        for batch in map(int, args.batch_sizes.split(",")):
            for name, prefill in (("each", prefill_each), ("shared", SHARED)):
                decode._prefill, backend.batch_size = prefill, batch
                began = time.perf_counter()
                results = backend.chat(convs, params)
                seconds = time.perf_counter() - began
                done = [c for r in results for c in r.completions]
                got = [c.text for c in done]
                first = first or got
                tokens = sum(c.tokens for c in done)
                print(
                    f"| {name} | {batch} | {seconds:.1f} | {tokens} | {tokens / seconds:.1f} "
                    f"| {got == first} |",
                    flush=True,
                )
    decode._prefill = SHARED


if __name__ == "__main__":
    main()
