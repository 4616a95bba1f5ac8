"""How many CPU threads to use on a machine that other programs may be using too.

PyTorch's CPU ops each end at an OpenMP barrier. When one of our threads shares its core with another
busy program, the scheduler takes that core away for whole time slices (milliseconds), and every
barrier then waits for it: a FusionMamba forward pass with 2 threads beside one busy process took 5x
longer than with 1 thread (benchmarks/model_speed.py --load 1, README "Threads"). The remedy is to
run no more threads than there are idle cores; `auto_threads` measures that.
"""
from __future__ import annotations

import os
import time


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies summed over all CPUs from /proc/stat; nice time counts as free: niced work
    yields to us. None where /proc/stat is unavailable (not Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0.0] * 8)[:8]
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return total - idle - iowait - nice, total


def idle_cpus(sample_seconds: float = 0.1) -> float | None:
    """CPUs left idle by other programs over a short sample (None where it cannot be measured)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(sample_seconds)
    second = _cpu_times()
    busy, total = second[0] - first[0], second[1] - first[1]
    if total <= 0:
        return None
    return (os.cpu_count() or 1) * (1.0 - busy / total)


def auto_threads(sample_seconds: float = 0.1) -> int:
    """Threads to use now: the idle CPUs (rounded, at least 1, at most the usable ones); all usable CPUs
    where idleness cannot be measured."""
    cpus = usable_cpus()
    idle = idle_cpus(sample_seconds)
    if idle is None:
        return cpus
    return max(1, min(cpus, int(idle + 0.25)))


def choose_threads(requested: int | None = None) -> int:
    """The thread count to use: `requested` if given, else OMP_NUM_THREADS if set, else auto_threads()."""
    if requested is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        requested = int(env) if env.isdigit() and int(env) > 0 else auto_threads()
    if requested < 1:
        raise ValueError(f"threads must be at least 1, got {requested}")
    return requested


def configure_threads(requested: int | None = None) -> int:
    """Set torch's (and so the numba scan's) thread count to choose_threads(requested); returns it."""
    import torch

    threads = choose_threads(requested)
    torch.set_num_threads(threads)
    return threads
