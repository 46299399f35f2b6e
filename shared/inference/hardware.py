"""What the hardware decides: torch threads, the device, and the dtype (bfloat16 only where native).

``inference.dtype: auto`` and ``trainer.bf16: auto`` both resolve here. On a GPU, bfloat16 where
the device supports it. On a CPU, bfloat16 only where the CPU reports AMX or AVX512-BF16 (as
torch's cpuinfo sees it) *and* a short matmul probe in this process finds bfloat16 at least as
fast as float32. The probe is what catches a CPU whose bfloat16 kernels are emulated: an AVX2-only
CPU, or one whose kernels are restricted (``ONEDNN_MAX_CPU_ISA=AVX2``), runs bfloat16 matmuls
about 50 times slower than float32, and a CPU with AVX512-BF16 but no AMX was measured at
0.72-0.89x (docs/benchmarks.md), so neither gains from bfloat16. The emulated case is far from the
threshold; near it (AVX512-BF16 without AMX) the two dtypes generate within 10% of each other, so a
noisy probe that picks either costs little.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import psutil
import torch

from shared.core.sections import InferenceConfig, Threads

log = logging.getLogger(__name__)

# A decoder's MLP projection at a modest batch: the shape generation spends its matmuls on.
PROBE_SHAPE = (64, 576, 1536)


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str  # "float32" | "bfloat16" | "float16" (an explicit setting may name any)
    device: str  # "cpu" | "cuda"
    reason: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass(frozen=True)
class CpuBf16:
    """What decides bfloat16 on a CPU: the ISA flags and the probe's two rates."""

    amx: bool
    avx512_bf16: bool
    fp32_gflops: float
    bf16_gflops: float

    def native(self) -> bool:
        return (self.amx or self.avx512_bf16) and self.bf16_gflops >= self.fp32_gflops

    def describe(self) -> str:
        isa = (("AMX", self.amx), ("AVX512-BF16", self.avx512_bf16))
        flags = ", ".join(name for name, present in isa if present)
        return (
            f"CPU bfloat16 ISA: {flags or 'none'} (torch capability "
            f"{torch.backends.cpu.get_cpu_capability()}); matmul probe bfloat16 "
            f"{self.bf16_gflops:.1f} vs float32 {self.fp32_gflops:.1f} GFLOP/s "
            f"({self.bf16_gflops / self.fp32_gflops:.2f}x)"
        )


def matmul_gflops(dtype: torch.dtype, shape: tuple[int, int, int] = PROBE_SHAPE) -> float:
    """Best of a few timed matmuls of ``shape`` in ``dtype``, on the threads torch uses."""
    m, k, n = shape
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b  # the first call picks and JITs the kernel
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


def probe_cpu() -> CpuBf16:
    """The CPU's bfloat16 flags and measured rates (about 0.05 s; 0.5 s where bf16 is emulated)."""
    return CpuBf16(
        amx=torch.cpu._is_amx_tile_supported(),
        avx512_bf16=torch.cpu._is_avx512_bf16_supported(),
        fp32_gflops=matmul_gflops(torch.float32),
        bf16_gflops=matmul_gflops(torch.bfloat16),
    )


def resolve_device(device: str) -> str:
    """``auto`` is cuda where a GPU is usable, else cpu."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


@cache
def resolve_dtype(dtype: str, device: str = "auto") -> DtypeChoice:
    """The dtype to load weights in (or train in) for the ``dtype`` setting on ``device``."""
    device = resolve_device(device)
    if dtype != "auto":
        return DtypeChoice(dtype, device, "set explicitly")
    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return DtypeChoice("bfloat16", device, "the GPU supports bfloat16")
        return DtypeChoice("float32", device, "the GPU does not support bfloat16")
    return choose_cpu(probe_cpu())


def choose_cpu(cpu: CpuBf16) -> DtypeChoice:
    """bfloat16 where the CPU runs it natively and no slower than float32, else float32."""
    if cpu.native():
        return DtypeChoice("bfloat16", "cpu", f"native: {cpu.describe()}")
    return DtypeChoice("float32", "cpu", f"bfloat16 not faster here: {cpu.describe()}")


# (time, per-core CPU times, this process's CPU seconds) when idle_cores last ran here.
Snapshot = tuple[float, list, float]
_last: Snapshot | None = None
_claim: Path | None = None  # this process's claim while an "idle" job runs
_looked = 0.0  # when rethink_threads last looked


def _snapshot() -> Snapshot:
    own = psutil.Process().cpu_times()
    return time.monotonic(), psutil.cpu_times(percpu=True), own.user + own.system


def _others_busy(a: Snapshot, b: Snapshot, cores: list[int]) -> float:
    """Cores' worth of CPU that other processes used on ``cores`` between two snapshots."""
    (t0, cpus0, own0), (t1, cpus1, own1) = a, b

    def busy(t: Any) -> float:
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    used = sum(busy(cpus1[c]) - busy(cpus0[c]) for c in cores)
    return max(0.0, used - (own1 - own0)) / max(t1 - t0, 1e-3)


def claims_dir() -> Path:
    """Where jobs on this host record the threads they took (one file per process), one folder
    per user (another user's would not be writable). ``DUALPHASE_THREAD_CLAIMS`` moves it (tests
    use their own)."""
    default = Path(tempfile.gettempdir()) / f"dualphase-threads-{os.getuid()}"
    return Path(os.environ.get("DUALPHASE_THREAD_CLAIMS", default))


def claimed_by_others() -> int:
    """Threads that other live processes on this host claimed for jobs still running."""
    total = 0
    for claim in claims_dir().glob("*.threads"):
        pid = int(claim.stem)
        if pid == os.getpid() or not psutil.pid_exists(pid):  # a crashed job's claim is void
            continue
        try:
            total += int(claim.read_text() or 0)
        except FileNotFoundError:  # its job ended since the listing (released outside the lock)
            continue
    return total


def idle_cores(window_s: float = 1.0) -> int:
    """The cores of this process's affinity that other processes leave idle (at least one): what
    a job starting now can use without taking a core from another.

    What the others use is the lesser of two measures: over the last ``window_s``, and since
    this process last asked. A service that asks at each job start thereby sees past a burst at
    that moment (the verifier grading the batch the generator just finished), and one that ran
    beside a busy process sees that it has stopped. Measured load misses a job that started
    a moment ago and is still loading its model, so threads claimed by other jobs
    (``claim_threads``) count too, whichever is more."""
    global _last
    cores = sorted(os.sched_getaffinity(0))
    start = _snapshot()
    time.sleep(window_s)
    now = _snapshot()
    others = _others_busy(start, now, cores)
    if _last is not None:
        others = min(others, _others_busy(_last, now, cores))
    _last = now
    others = max(others, claimed_by_others())
    return max(1, round(len(cores) - others))


def set_threads(threads: Threads) -> int:
    """Set torch's CPU threads; returns how many. torch's default counts the host's cores; 0
    here means the cores this process may use, "idle" those no other process is busy on now
    (``idle_cores``). On a machine shared with other busy processes, fewer threads are much
    faster: a thread team waits for its slowest member."""
    count = idle_cores() if threads == "idle" else threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(count)
    return count


@contextmanager
def claim_threads(threads: Threads) -> Iterator[int]:
    """``set_threads`` for one job, and for "idle" a claim on those threads until the job ends,
    so that a job starting meanwhile on this host leaves them out. Run G of the miniature
    showed why: the trainer and the generator chose 0.4 s apart, before either was busy, and
    took 2 threads each on 2 cores. A lock makes the choices one at a time."""
    if threads != "idle":
        yield set_threads(threads)
        return
    global _claim, _looked
    claims = claims_dir()
    claims.mkdir(parents=True, exist_ok=True)
    claim = claims / f"{os.getpid()}.threads"
    with open(claims / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held while measuring: the next job sees this claim
        count = set_threads("idle")
        claim.write_text(str(count))
    _claim, _looked = claim, time.monotonic()
    try:
        yield count
    finally:
        _claim = None
        claim.unlink(missing_ok=True)


def rethink_threads(every_s: float = 15.0) -> None:
    """Within an "idle" job (``claim_threads``), at most every ``every_s`` seconds: take the
    threads that the others left idle since the last look, and update the claim. A job chooses
    when it starts, so a phase-2 batch that started beside M0's evaluation, or while the
    verifier graded the batch before, kept one thread for minutes after the second core went
    idle; a job that another one joins gives its core back. Called from the thread that runs
    the job (torch's thread count is set per calling thread)."""
    global _last, _looked
    if _claim is None or _last is None or time.monotonic() - _looked < every_s:
        return
    now = _snapshot()
    cores = sorted(os.sched_getaffinity(0))
    others = max(_others_busy(_last, now, cores), claimed_by_others())
    _last, _looked = now, now[0]
    count = max(1, round(len(cores) - others))
    if count == torch.get_num_threads():
        return
    with open(_claim.parent / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _claim.write_text(str(count))
    torch.set_num_threads(count)
    log.info("now on %d torch threads", count)


def inference_dtype(cfg: InferenceConfig) -> dict[str, str]:
    """Resolve (and log) the dtype an in-process backend will load the model in, for /status."""
    if cfg.backend == "openai":
        return {"dtype": "chosen by the model server", "device": "server", "reason": "openai"}
    set_threads(cfg.threads)
    choice = resolve_dtype(cfg.dtype, cfg.device)
    log.info("inference dtype %s on %s: %s", choice.dtype, choice.device, choice.reason)
    return choice.as_dict()
