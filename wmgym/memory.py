"""Peak memory of this process (RSS) and of the GPU, for benchmarks."""

from __future__ import annotations

import platform


def reset_peak_rss() -> bool:
    """Restarts this process's peak-RSS counter (Linux ``VmHWM``); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident memory of a process in MiB (``VmHWM``; ``getrusage`` for ourselves)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    if pid != "self":
        return float("nan")
    import resource  # Unix only

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / (1024**2 if platform.system() == "Darwin" else 1024)


def gpu_reset_peak() -> None:
    """Restarts the CUDA peak-memory counter (no-op without CUDA)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_mb() -> float | None:
    """Peak CUDA memory allocated since the last reset, in MiB (None without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def round_mb(x: float | None) -> float | None:
    """``x`` rounded to 0.1 MiB (None stays None)."""
    return None if x is None else round(x, 1)
