"""`dtype: auto` picks bfloat16 only where the hardware runs it natively."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from shared.core.settings import InferenceConfig, TrainerSettings
from shared.inference import hardware
from shared.inference.hardware import CpuBf16, choose_cpu, resolve_dtype
from trainer_svc.train import attention, sft_config, use_bf16, weights_dtype

# Restricts torch's, oneDNN's and MKL's kernels to AVX2: bfloat16 is then emulated on any CPU.
AVX2_ONLY = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}


@pytest.fixture(autouse=True)
def own_claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thread claims of jobs elsewhere on this host (other tests' services) stay out of these."""
    monkeypatch.setenv("DUALPHASE_THREAD_CLAIMS", str(tmp_path / "claims"))


@pytest.fixture
def fake_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Fake the CPU the detection sees: its ISA flags and the probe's matmul rates."""

    def fake(amx: bool, avx512_bf16: bool, fp32: float, bf16: float) -> None:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        rates = {torch.float32: fp32, torch.bfloat16: bf16}
        monkeypatch.setattr(hardware, "matmul_gflops", lambda dtype: rates[dtype])
        resolve_dtype.cache_clear()

    yield fake
    resolve_dtype.cache_clear()


def test_auto_is_float32_on_a_cpu_without_bf16_instructions(fake_cpu) -> None:
    fake_cpu(amx=False, avx512_bf16=False, fp32=52.0, bf16=1.1)
    choice = resolve_dtype("auto", "cpu")
    assert choice.dtype == "float32"
    assert "none" in choice.reason and "1.1" in choice.reason


def test_auto_is_bfloat16_on_an_amx_cpu(fake_cpu) -> None:
    fake_cpu(amx=True, avx512_bf16=True, fp32=100.0, bf16=300.0)
    choice = resolve_dtype("auto", "cpu")
    assert choice.dtype == "bfloat16"
    assert choice.reason.startswith("native") and "AMX" in choice.reason


def test_auto_is_float32_where_the_bf16_kernels_are_restricted(fake_cpu) -> None:
    # The flags say AMX, but the kernels are held to AVX2 (ONEDNN_MAX_CPU_ISA): emulated.
    fake_cpu(amx=True, avx512_bf16=True, fp32=66.0, bf16=1.7)
    assert resolve_dtype("auto", "cpu").dtype == "float32"


def test_auto_is_float32_where_bf16_is_native_but_slower(fake_cpu) -> None:
    fake_cpu(amx=False, avx512_bf16=True, fp32=107.0, bf16=79.0)
    assert resolve_dtype("auto", "cpu").dtype == "float32"


def test_explicit_dtype_wins_over_the_hardware(fake_cpu) -> None:
    fake_cpu(amx=False, avx512_bf16=False, fp32=52.0, bf16=1.1)
    choice = resolve_dtype("bfloat16", "cpu")
    assert (choice.dtype, choice.reason) == ("bfloat16", "set explicitly")


def test_trainer_bf16_auto_follows_the_same_rule(fake_cpu) -> None:
    fake_cpu(amx=False, avx512_bf16=False, fp32=52.0, bf16=1.1)
    assert use_bf16(TrainerSettings()) is False
    assert use_bf16(TrainerSettings(preset="cpu-tiny")) is False
    assert use_bf16(TrainerSettings(bf16=True)) is True
    fake_cpu(amx=True, avx512_bf16=True, fp32=100.0, bf16=300.0)
    assert use_bf16(TrainerSettings()) is True


def test_bf16_training_keeps_float32_master_weights_except_a_lora_base() -> None:
    # bfloat16 weights round away updates of about 1e-5 of a weight (benchmarks/precision.py):
    # bf16 is autocast over float32 weights; only LoRA's frozen base may be bfloat16.
    assert weights_dtype(TrainerSettings(bf16=True)) is torch.float32
    assert weights_dtype(TrainerSettings(bf16=False)) is torch.float32
    assert weights_dtype(TrainerSettings(bf16=True, lora=True)) is torch.bfloat16
    assert weights_dtype(TrainerSettings(bf16=False, lora=True)) is torch.float32


def test_trainer_config_accepts_bf16_on_a_cpu_only_machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # On a CPU with native bfloat16, trainer.bf16: auto is true; transformers then refused to
    # train ("Your setup doesn't support bf16/gpu") and the job went to the dead-letter topic.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = sft_config(TrainerSettings(bf16=True), tmp_path)
    assert args.bf16 and args.use_cpu


def test_trainer_attention_auto_is_flex_only_on_a_gpu_with_packing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    packed = TrainerSettings(sft={"packing": True})
    assert attention(packed) == "sdpa", "flex has no CPU backward"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert attention(packed) == "flex_attention"
    assert attention(TrainerSettings(preset="cpu-tiny")) == "flex_attention"  # the preset packs
    assert attention(TrainerSettings(sft={"packing": False})) == "sdpa"
    eager = TrainerSettings(sft={"packing": True}, attn_implementation="eager")
    assert attention(eager) == "eager"


def test_choose_cpu_needs_both_the_isa_and_the_probe() -> None:
    assert choose_cpu(CpuBf16(False, False, 10.0, 30.0)).dtype == "float32"
    assert choose_cpu(CpuBf16(False, True, 10.0, 30.0)).dtype == "bfloat16"
    assert choose_cpu(CpuBf16(True, False, 10.0, 9.0)).dtype == "float32"


def test_auto_is_float32_under_the_real_avx2_restriction() -> None:
    """The real detection, in a process whose kernels are held to AVX2, on whatever CPU this is."""
    code = (
        "from shared.inference.hardware import resolve_dtype; c = resolve_dtype('auto', 'cpu'); "
        "print(c.dtype); print(c.reason)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **AVX2_ONLY},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    dtype, reason = out.stdout.splitlines()
    assert dtype == "float32", reason


def test_inference_dtype_reports_the_choice_for_status(fake_cpu) -> None:
    fake_cpu(amx=True, avx512_bf16=True, fp32=100.0, bf16=300.0)
    status = hardware.inference_dtype(InferenceConfig(device="cpu", threads=1))
    assert status["dtype"] == "bfloat16" and status["device"] == "cpu"
    assert "AMX" in status["reason"]
    assert hardware.inference_dtype(InferenceConfig(backend="openai"))["device"] == "server"


def busy_processes(count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` processes that each keep one core busy until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def test_idle_cores_leaves_out_the_cores_other_processes_keep_busy() -> None:
    cores, threads = len(os.sched_getaffinity(0)), torch.get_num_threads()
    spinners = busy_processes(cores)  # every core busy: a job starting now gets the minimum
    try:
        assert hardware.idle_cores(window_s=1.0) == 1
        torch.set_num_threads(cores)
        assert hardware.set_threads("idle") == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)  # the worker's later tests keep their threads
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def test_idle_cores_does_not_count_the_process_itself_and_sees_past_a_burst(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """4 cores. Snapshots of (time, per-core busy seconds, own CPU seconds) fed in order."""
    from collections import namedtuple

    Times = namedtuple("Times", "user idle")  # busy = user

    def snap(t: float, busy: list[float], own: float) -> hardware.Snapshot:
        return t, [Times(b, 0.0) for b in busy], own

    snapshots: list[hardware.Snapshot] = []
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(hardware, "_snapshot", lambda: snapshots.pop(0))
    monkeypatch.setattr(hardware, "_last", None)
    # First call, over 1 s: 1.7 cores busy, 1.5 of them this process: 3.8 idle -> 4.
    snapshots += [snap(0, [0, 0, 0, 0], 0), snap(1, [0.9, 0.8, 0, 0], 1.5)]
    assert hardware.idle_cores(window_s=0) == 4
    # 100 s later: others kept 1.7 cores busy, in the last second as in all 100: 2.3 idle -> 2.
    snapshots += [snap(100, [90, 80, 0, 0], 1.5), snap(101, [90.9, 80.8, 0, 0], 1.5)]
    assert hardware.idle_cores(window_s=0) == 2
    # A burst: 2 cores busy in the last second, but 0.22 on average since the last call -> 4.
    snapshots += [snap(200, [100.9, 90.8, 0, 0], 1.5), snap(201, [101.9, 91.8, 0, 0], 1.5)]
    assert hardware.idle_cores(window_s=0) == 4


def test_threads_claimed_by_a_job_count_while_its_process_lives(tmp_path: Path) -> None:
    """A job that claimed every core but is not busy yet (still loading its model) leaves a job
    starting now one thread; once its process dies, even without releasing, the claim is void."""
    cores = len(os.sched_getaffinity(0))
    job = subprocess.Popen(
        [sys.executable, "-c", CLAIM_EVERY_CORE],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        assert int(job.stdout.readline()) == cores  # claimed, then sleeping
        assert hardware.claimed_by_others() == cores
        assert hardware.idle_cores(window_s=0.2) == 1
    finally:
        job.kill()
        job.wait()
    assert (tmp_path / "claims" / f"{job.pid}.threads").is_file()  # killed: nothing released it
    assert hardware.claimed_by_others() == 0


CLAIM_EVERY_CORE = """
import os, time
from shared.inference import hardware
hardware.idle_cores = lambda: len(os.sched_getaffinity(0))  # as on an idle machine
with hardware.claim_threads("idle") as count:
    print(count, flush=True)
    time.sleep(120)
"""


def test_a_claim_is_released_when_the_job_ends_and_fixed_counts_claim_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hardware, "idle_cores", lambda: 1)
    own = tmp_path / "claims" / f"{os.getpid()}.threads"
    threads = torch.get_num_threads()
    try:
        with hardware.claim_threads("idle") as count:
            assert count == 1 and own.read_text() == "1"
            assert hardware.claimed_by_others() == 0  # its own claim is not another's
        assert not own.exists()
        with hardware.claim_threads(1) as count:
            assert count == 1 and not own.exists()
    finally:
        torch.set_num_threads(threads)


def test_a_running_idle_job_takes_the_core_others_left_and_gives_it_back_when_they_return(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 cores. Snapshots of (time, per-core busy seconds, own CPU seconds) fed in order."""
    from collections import namedtuple

    Times = namedtuple("Times", "user idle")

    def snap(t: float, busy: list[float], own: float) -> hardware.Snapshot:
        return t, [Times(b, 0.0) for b in busy], own

    snapshots: list[hardware.Snapshot] = []
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(hardware, "_snapshot", lambda: snapshots.pop(0))
    monkeypatch.setattr(hardware, "_last", None)
    own = tmp_path / "claims" / f"{os.getpid()}.threads"
    threads = torch.get_num_threads()
    try:
        # It starts beside a process that keeps a core busy: 1 thread.
        snapshots += [snap(0, [0, 0], 0), snap(1, [1, 0], 0)]
        with hardware.claim_threads("idle") as count:
            assert count == 1 and own.read_text() == "1"
            hardware.rethink_threads(every_s=3600)  # not yet time to look: nothing read
            assert torch.get_num_threads() == 1
            # 20 s on, the other process used 1 s of CPU since: the second core is taken.
            snapshots += [snap(21, [2, 20], 20)]
            hardware.rethink_threads(every_s=0)
            assert torch.get_num_threads() == 2 and own.read_text() == "2"
            # Another job comes back and keeps a core busy: the job gives it back.
            snapshots += [snap(41, [22, 38], 38)]
            hardware.rethink_threads(every_s=0)
            assert torch.get_num_threads() == 1 and own.read_text() == "1"
        assert not own.exists()
        hardware.rethink_threads(every_s=0)  # outside a job: nothing to do, nothing read
        assert torch.get_num_threads() == 1 and not snapshots
    finally:
        torch.set_num_threads(threads)
