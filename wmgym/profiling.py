"""Where an imagined step's time goes: cProfile totals split into parts, top torch ops."""

from __future__ import annotations

import os
import pstats
from typing import Any

#: (file suffix, function) -> label: the functions an imagined step's time is attributed to.
_PROFILED = {
    ("env/vector_env.py", "step"): "vector_env.step",
    ("validation.py", "check_action"): "check_action",
    ("env/core.py", "step"): "core.step",
    ("env/core.py", "reset"): "core.reset",
    ("model/world_model.py", "step"): "model.step",
    ("model/transformer.py", "_frame"): "transformer._frame",
    ("model/transformer.py", "_frame_parallel"): "transformer._frame",
    ("model/transformer.py", "_append"): "transformer._append",
    ("model/transformer.py", "prefill"): "transformer.prefill",
    ("model/transformer.py", "_head_logits"): "transformer._head_logits",
    ("model/transformer.py", "_gumbel"): "transformer._gumbel",
    ("model/transformer.py", "_make_room"): "transformer._make_room",
    ("model/tokenizer.py", "decode_future"): "tokenizer.decode_future",
    ("model/frames.py", "frames_to_obs"): "frames_to_obs",
}


def cumulative(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds of the functions in ``_PROFILED`` (0 for those never called)."""
    out = dict.fromkeys(_PROFILED.values(), 0.0)
    for (file, _, name), (_, _, _, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        for (suffix, fn), label in _PROFILED.items():
            if name == fn and file.replace(os.sep, "/").endswith(suffix):
                out[label] += cumtime
    return out


def time_breakdown(cum: dict[str, float]) -> dict[str, float]:
    """Splits an imagined step's time into parts, as fractions of ``vector_env.step``.

    Args:
        cum: Cumulative seconds per profiled function (see ``_PROFILED``).

    Returns:
        Fractions of the vector env's step time: transformer forwards (one per token, or two
        per frame with parallel decoding), the parallel head, token sampling (lm head,
        Gumbel-argmax, embeddings), per-env Gumbel noise, the sliding window, the frame decoder,
        tensor-to-numpy conversion, autoresets, and the env's own overhead.
    """
    total = cum["vector_env.step"] or 1e-12
    forward = cum["transformer._append"] - cum["transformer.prefill"]  # prefill: in resets
    parts = {
        "transformer_forward": forward,
        "parallel_head": cum["transformer._head_logits"],
        "token_sampling": cum["transformer._frame"]
        - forward
        - cum["transformer._head_logits"]
        - cum["transformer._make_room"],
        "gumbel_noise": cum["transformer._gumbel"],
        "sliding_window": cum["transformer._make_room"],
        "decoder": cum["tokenizer.decode_future"],
        "obs_conversion": cum["core.step"] - cum["model.step"],
        "autoreset": cum["core.reset"],
        "env_overhead": total - cum["core.step"] - cum["core.reset"],
    }
    return {k: round(max(v, 0.0) / total, 4) for k, v in parts.items()}


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
