"""Generated tokens per second of the transformers backend's generation modes, side by side.

Modes, all on the same in-process model, the same prompts and greedy decoding:

- ``sequential``: one conversation at a time (``batching: padded`` with batch 1).
- ``padded``: ``batching: padded``: rows sorted by prompt length, ``--batch-size`` rows per
  ``generate`` call, left-padded; a finished row stays in its batch until the longest ends.
- ``continuous``: ``batching: continuous`` (the default, ``shared/inference/decode.py``): a
  finished row leaves the batch at once and waiting rows are merged in.
- ``paged``: transformers' own continuous batching (``generate_batch``: a paged KV cache, a
  finished row's place taken by a waiting one), with at most ``--batch-size`` rows at a time.
- ``growing``: ``continuous`` with a KV cache that writes each step into room kept at its end
  (``GrowingLayer`` below) instead of concatenating the whole cache every step.
- ``static``: the padded batch with a static KV cache and the decode step compiled by
  ``torch.compile`` (compiled in a warm-up outside the timing; its seconds are printed).
- ``compiled``: ``continuous`` with the whole model compiled by ``torch.compile(dynamic=True)``
  (compiled in the warm-up as well).

Workloads:

- ``fixed``: GSM8K questions as one-turn chats; most rows run to ``--max-new-tokens``.
- ``varying``: phase-1 first turns (the generator's system prompt and a GSM8K question) with a
  long budget; rows stop at their end-of-sequence at widely different lengths, which is where
  continuous batching should matter most.

Each mode's greedy text and token count are compared with ``padded``'s ("same tokens").
The compute bound is a matmul rate measured here in the model's dtype divided by
2 x parameters FLOPs per generated token; the CPU, its bfloat16 flags and what
``inference.dtype: auto`` picks head the output.

    python benchmarks/inference.py --workload fixed --prompts 16 --max-new-tokens 32 --batch-size 16
    python benchmarks/inference.py --workload varying --prompts 32 --max-new-tokens 256 \\
        --batch-size 32 --modes padded,continuous,paged
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import Cache
from transformers.cache_utils import DynamicLayer

from shared.core.messages import SamplingParams
from shared.core.settings import InferenceConfig
from shared.datasets import dataset_rows
from shared.inference import Completion, decode, load_backend
from shared.inference.hardware import resolve_dtype, set_threads
from shared.inference.transformers import TransformersBackend
from shared.method.prompts import load_prompts

INSTRUCTION = "Solve step by step and put the final answer in \\boxed{}."
BF16_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
Mode = Callable[[TransformersBackend, list, SamplingParams], list[Completion]]
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


def conversations(path: Path | None, count: int, workload: str) -> list[list[dict[str, str]]]:
    """GSM8K questions: from a JSON Lines file, or else the GSM8K test set of the data settings
    (docs/data.md)."""
    if path is None:
        rows = dataset_rows("gsm8k")[:count]
    else:
        with open(path) as f:
            rows = [json.loads(line) for _, line in zip(range(count), f, strict=False)]
    if workload == "fixed":
        return [[{"role": "user", "content": f"{r['question']}\n{INSTRUCTION}"}] for r in rows]
    system = load_prompts("v1").system
    return [
        [{"role": "system", "content": system}, {"role": "user", "content": r["question"]}]
        for r in rows
    ]


def matmul_gflops(dtype: torch.dtype, size: int = 1024, repeats: int = 20) -> float:
    """Achieved matmul rate of this CPU in ``dtype`` with the threads torch uses."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def through_backend(batching: str, batch_size: int | None = None) -> Mode:
    """A mode that is the backend's own ``chat`` with ``batching`` (and, if given, batch size)."""

    def mode(backend: TransformersBackend, convs: list, params: SamplingParams) -> list[Completion]:
        saved = backend.batching, backend.batch_size
        backend.batching, backend.batch_size = batching, batch_size or backend.batch_size
        try:
            return [r.completions[0] for r in backend.chat(convs, params)]
        finally:
            backend.batching, backend.batch_size = saved

    return mode


def paged(backend: TransformersBackend, convs: list, params: SamplingParams) -> list[Completion]:
    """transformers' continuous batching, at most ``batch_size`` rows decoding at once."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    prompts = [backend._prompt_ids(c) for c in convs]
    page = 256
    pages_per_row = -(-(max(map(len, prompts)) + params.max_new_tokens) // page)
    config = ContinuousBatchingConfig(
        page_size=page,
        num_blocks=pages_per_row * len(prompts),
        max_batch_tokens=max(512, backend.batch_size),
        max_requests_per_batch=backend.batch_size,
    )
    generation = GenerationConfig(
        do_sample=False,
        max_new_tokens=params.max_new_tokens,
        eos_token_id=sorted(backend.eos_ids),
        pad_token_id=backend.tokenizer.pad_token_id,
    )
    with torch.inference_mode():
        outputs = backend.model.generate_batch(
            prompts, generation_config=generation, continuous_batching_config=config
        )
    # Request ids end with the prompt's index.
    by_index = {int(rid.rsplit("_", 1)[1]): o.generated_tokens for rid, o in outputs.items()}
    return [backend._completion(list(by_index[i]), params) for i in range(len(prompts))]


def static(
    backend: TransformersBackend, convs: list, params: SamplingParams, warm_up: bool = False
) -> list[Completion]:
    """The padded batch with a static KV cache (no concatenation per step) and the decode step
    compiled by ``torch.compile`` (inductor's C++ kernels on a CPU). Each batch has fixed shapes
    (rows, prompt length + ``max_new_tokens``), so it compiles once per shape; ``warm_up`` runs
    each batch for three tokens only, to compile outside the timing."""
    from transformers import CompileConfig, StoppingCriteria

    class ThreeTokens(StoppingCriteria):  # two of them from the compiled decode step
        def __init__(self, prompt_length: int) -> None:
            self.end = prompt_length + 3

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.end)

    compile_config = CompileConfig(mode="default", dynamic=False)
    compile_config._compile_all_devices = True  # transformers compiles only on accelerators else
    prompts = sorted(enumerate(backend._prompt_ids(c) for c in convs), key=lambda p: len(p[1]))
    done: dict[int, Completion] = {}
    for start in range(0, len(prompts), backend.batch_size):
        batch = prompts[start : start + backend.batch_size]
        enc = backend.tokenizer.pad({"input_ids": [ids for _, ids in batch]}, return_tensors="pt")
        with torch.inference_mode():
            out = backend.model.generate(
                **enc,
                do_sample=False,
                max_new_tokens=params.max_new_tokens,
                cache_implementation="static",
                compile_config=compile_config,
                stopping_criteria=[ThreeTokens(enc["input_ids"].shape[1])] if warm_up else None,
                pad_token_id=backend.tokenizer.pad_token_id,
                eos_token_id=sorted(backend.eos_ids),
            )
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        for (index, _), ids in zip(batch, new, strict=True):
            done[index] = backend._completion(ids, params)
    return [done[i] for i in range(len(convs))]


def compiled(backend: TransformersBackend, convs: list, params: SamplingParams) -> list[Completion]:
    """Continuous batching with the model compiled by ``torch.compile`` (dynamic shapes, so the
    growing cache and the changing rows do not recompile each step): inductor may fuse the
    element-wise work (norms, rotary, SiLU) that a faster matmul leaves as the cost."""
    eager = backend.model
    backend.model = COMPILED.setdefault(id(eager), torch.compile(eager, dynamic=True))
    try:
        return through_backend("continuous")(backend, convs, params)
    finally:
        backend.model = eager


COMPILED: dict[int, Any] = {}


def growing(backend: TransformersBackend, convs: list, params: SamplingParams) -> list[Completion]:
    """Continuous batching with a KV cache of ``GrowingLayer``s in place of ``DynamicCache``."""
    saved = decode.DynamicCache
    decode.DynamicCache = lambda: Cache(layer_class_to_replicate=GrowingLayer)
    try:
        return through_backend("continuous")(backend, convs, params)
    finally:
        decode.DynamicCache = saved


class GrowingLayer(DynamicLayer):
    """A KV-cache layer that writes each step's keys and values into spare room at its end,
    instead of ``DynamicLayer``'s concatenation, which copies the whole cache every step (12% of
    a bfloat16 step in the AMX profile of docs/benchmarks.md). ``keys``/``values`` are views of
    the positions filled so far; when decode.py's ``_keep`` or ``_merge`` put new tensors in
    their place, the next update copies them once into a fresh buffer."""

    GROW = 64  # positions of room added at a time: one copy per 64 steps, not one per step

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states[:, :, :0], value_states[:, :, :0]
        length, new = self.keys.shape[-2], key_states.shape[-2]
        if not self._owns_views() or length + new > self._buffers[0].shape[-2]:
            self._buffers = tuple(
                self._room(x, length + new + self.GROW) for x in (self.keys, self.values)
            )
        bk, bv = self._buffers
        bk[:, :, length : length + new] = key_states
        bv[:, :, length : length + new] = value_states
        self.keys, self.values = bk[:, :, : length + new], bv[:, :, : length + new]
        self._views = (self.keys, self.values)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """The rows ``indices``, copied with their room (one copy, not two)."""
        if not self._owns_views():
            return super().batch_select_indices(indices)
        length = self.keys.shape[-2]
        self._buffers = tuple(b[indices] for b in self._buffers)
        self.keys, self.values = (b[:, :, :length] for b in self._buffers)
        self._views = (self.keys, self.values)

    def _owns_views(self) -> bool:
        views = getattr(self, "_views", None)
        return views is not None and views[0] is self.keys and views[1] is self.values

    @staticmethod
    def _room(x: torch.Tensor, capacity: int) -> torch.Tensor:
        buffer = x.new_empty(*x.shape[:-2], capacity, x.shape[-1])
        buffer[:, :, : x.shape[-2]] = x
        return buffer


MODES: dict[str, Mode] = {
    "sequential": through_backend("padded", batch_size=1),
    "padded": through_backend("padded"),
    "continuous": through_backend("continuous"),
    "paged": paged,
    "static": static,
    "compiled": compiled,
    "growing": growing,
}


def measure(args: argparse.Namespace, dtype: str) -> None:
    backend = load_backend(
        InferenceConfig(batch_size=args.batch_size, threads=args.threads, dtype=dtype)
    )
    assert isinstance(backend, TransformersBackend)
    convs = conversations(args.dataset, args.prompts, args.workload)
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    gflops = matmul_gflops(backend.model.dtype)
    bound = gflops * 1e9 / (2 * sum(p.numel() for p in backend.model.parameters()))
    runs: dict[str, tuple[list[Completion], float]] = {}
    for name in args.modes.split(","):
        start = time.perf_counter()  # first-call costs (and compilation) out of the timing
        if name == "static":
            static(backend, convs, params, warm_up=True)
        else:
            MODES[name](backend, convs[:2], params.model_copy(update={"max_new_tokens": 4}))
        print(f"{dtype} {name}: warm-up {time.perf_counter() - start:.1f} s", flush=True)
        start = time.perf_counter()
        runs[name] = (MODES[name](backend, convs, params), time.perf_counter() - start)
    for name, (completions, seconds) in runs.items():
        lengths = [c.tokens for c in completions]
        rate = sum(lengths) / seconds
        same = "-"
        if "padded" in runs:
            pairs = zip(completions, runs["padded"][0], strict=True)
            same = f"{sum(a.text == b.text and a.tokens == b.tokens for a, b in pairs)}"
        print(
            f"| {dtype} | {name} | {sum(lengths)} | {min(lengths)}-"
            f"{statistics.median(lengths):.0f}-{max(lengths)} | {seconds:.1f} | {rate:.1f} | "
            f"{rate / bound:.1%} | {same} of {len(completions)} |"
        )
    print(f"compute bound {dtype}: {gflops:.1f} GFLOP/s matmul -> {bound:.0f} tokens/s")
    if args.profile:
        for name in runs:
            where_time_goes(backend, name, convs, params, args.profile)
    backend.close()


def where_time_goes(
    backend: TransformersBackend, name: str, convs: list, params: SamplingParams, rows: int
) -> None:
    """The mode run again under torch's profiler: the ops with the most self CPU time. Shows
    what a faster matmul (bfloat16 on AMX) cannot speed up."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        MODES[name](backend, convs, params)
    print(f"{backend.model.dtype} {name}, profiled (the profiler slows it):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=("fixed", "varying"), default="fixed")
    parser.add_argument("--modes", default="sequential,padded,continuous,paged")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: all cores")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated dtypes")
    parser.add_argument(
        "--dataset", type=Path, default=None, help="GSM8K rows (JSON Lines); default: the hub's"
    )
    parser.add_argument(
        "--profile", type=int, default=0, help="print each mode's N costliest ops (0: none)"
    )
    args = parser.parse_args()

    set_threads(args.threads)
    auto = resolve_dtype("auto", "cpu")
    print(f"CPU: {cpu_name()}")
    print(f"auto chooses {auto.dtype}: {auto.reason}")
    print(
        f"model SmolLM2-135M-Instruct, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores; workload {args.workload}, {args.prompts} prompts, "
        f"max_new_tokens {args.max_new_tokens}, greedy, batch {args.batch_size}"
    )
    print(
        "| dtype | mode | generated tokens | tokens per row min-median-max | seconds | tokens/s "
        "| share of compute bound | same tokens as padded |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        measure(args, dtype)


if __name__ == "__main__":
    main()
