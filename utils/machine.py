"""The machine: cores, idle cores, memory, GPUs, and how many threads dense LAPACK may use.

A leaf module: standard library and numpy; torch is imported by the LAPACK context managers only
(they set torch's thread count), so that `utils.run`, `utils.index` and `utils.targets` can ask
about the machine without loading torch.
"""

from __future__ import annotations

import contextlib
import glob
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np


def gpu_visible() -> bool:
    """Whether a CUDA GPU is visible: torch's answer when torch is loaded already, else whether an
    NVIDIA device node exists and CUDA_VISIBLE_DEVICES does not hide every device (no torch import)."""
    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (getrusage ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_ram() -> int:
    """Bytes of memory available to a new allocation (MemAvailable of /proc/meminfo), huge where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


@contextlib.contextmanager
def single_threaded_lapack():
    """Run dense eigen/singular-value decompositions on one thread.

    MKL's threaded LAPACK (torch's CPU build) is pathological for the few-hundred-wide matrices
    used here: on the 2-core reference machine a 576 x 576 `eigvalsh` takes 0.08 s on one thread
    and 16 s on two under load. Matrix products stay multi-threaded outside this context.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# Matrix size from which eigvalsh may use more than one core. bench/bench_lapack.py on the reference
# machine (2 cores, MKL; docs/benchmarks.md): idle, 2 threads are 1.3-1.4x faster at every n from
# 256 to 4096; while another process keeps a core busy, MKL's threads are 3-10x slower at every n.
# Below 2048 the gain is a few hundredths of a second, the size of the idleness check itself.
LAPACK_THREADS_CROSSOVER = 2048


def _cores() -> int:
    """Cores this process may run on (its CPU affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _running_elsewhere(snapshots: int = 3, interval: float = 0.005, proc: Path = Path("/proc")) -> float | None:
    """Runnable threads of other processes right now: the running count of /proc/loadavg (4th
    field, "running/total") minus this process's threads in state R (/proc/self/task/*/stat),
    median of a few snapshots. None where /proc does not provide them (then the caller falls
    back to the load average)."""
    counts = []
    try:
        for k in range(snapshots):
            if k:
                time.sleep(interval)
            running = int((proc / "loadavg").read_text().split()[3].split("/")[0])
            own = 0
            for stat in (proc / "self" / "task").glob("*/stat"):
                try:
                    text = stat.read_text()
                except OSError:  # the thread ended meanwhile
                    continue
                own += text[text.rindex(")") + 2] == "R"
            counts.append(max(0, running - own))
    except (OSError, ValueError, IndexError):
        return None
    return float(np.median(counts))


def _idle_cores() -> float:
    """Cores no other process is using now: `_cores()` minus other processes' runnable threads.

    This process's own threads do not count, so notebook 05's eigenvalue phase right after its
    forward pass (a 1-minute load average of ~2 on 2 cores) still finds both cores idle; the
    1-minute load average, which counts them and lags by a minute, is only the fallback."""
    elsewhere = _running_elsewhere()
    if elsewhere is not None:
        return _cores() - elsewhere
    try:
        return _cores() - os.getloadavg()[0]
    except OSError:
        return 0.0


def idle_cores() -> int:
    """Whole cores this process may use that no other process is using now (`_idle_cores`, this
    process's own threads not counted), from 0 to the cores of its affinity."""
    return int(max(0.0, min(_cores(), _idle_cores())))


@contextlib.contextmanager
def lapack_threads(n: int, crossover: int | None = None):
    """Threads for a dense n x n eigen/singular-value problem: the idle cores for large n, else one.

    When n >= `crossover` (default LAPACK_THREADS_CROSSOVER): every core (or the number already
    set if larger) when no other process is running, else as many threads as cores are idle
    (`_idle_cores`; one when a single core of two is busy elsewhere, since a preempted MKL thread
    stalls the rest). One thread below the crossover (see `single_threaded_lapack`).
    """
    import torch

    previous = torch.get_num_threads()
    threads = 1
    if n >= (LAPACK_THREADS_CROSSOVER if crossover is None else crossover):
        cores = _cores()
        idle = int(min(cores, max(1.0, _idle_cores())))
        threads = max(previous, cores) if idle >= cores else idle
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
