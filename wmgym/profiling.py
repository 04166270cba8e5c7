"""Where a step's time goes: the heaviest functions in a cProfile run, the top torch ops."""

from __future__ import annotations

import os
import pstats
from typing import Any


def _label(file: str, line: int, name: str) -> str:
    """``package/module.py:function`` for wmgym's own code, else cProfile's usual name."""
    path = file.replace(os.sep, "/")
    if "/wmgym/" in path:
        return f"wmgym/{path.rsplit('/wmgym/', 1)[1]}:{name}"
    return name if file == "~" else f"{os.path.basename(file)}:{line}({name})"


def top_functions(stats: pstats.Stats, total_s: float, *, n: int = 12) -> dict[str, list[dict]]:
    """The functions that took the most time, as shares of ``total_s``.

    Args:
        stats: A cProfile run's statistics.
        total_s: The seconds the shares are of (e.g. the profiled steps' wall time).
        n: Functions per list.

    Returns:
        ``cumulative``: wmgym's own functions by time spent in them and in what they call (they
        nest: a caller's share includes its callees'); ``self``: all functions, torch's
        kernels included, by time spent in their own code.
    """
    rows = stats.stats.items()  # type: ignore[attr-defined]
    total_s = total_s or 1e-12

    def entry(key: tuple[str, int, str], seconds: float, calls: int) -> dict[str, Any]:
        return {"function": _label(*key), "calls": calls, "seconds": round(seconds, 4),
                "share": round(seconds / total_s, 4)}

    own = [(k, v) for k, v in rows if "/wmgym/" in k[0].replace(os.sep, "/")]
    cumulative = sorted(own, key=lambda kv: -kv[1][3])[:n]
    selfish = sorted(rows, key=lambda kv: -kv[1][2])[:n]
    return {"cumulative": [entry(k, v[3], v[1]) for k, v in cumulative],
            "self": [entry(k, v[2], v[1]) for k, v in selfish]}


def top_ops(prof: Any, n: int = 12) -> list[dict]:
    """The ``n`` torch ops with the most self CPU time in a ``torch.profiler`` run."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_ms": round(e.self_cpu_time_total / 1000, 2),
            "share": round(e.self_cpu_time_total / total, 4),
        }
        for e in events[:n]
    ]
