"""Action checks shared by both twins: bad input raises, out-of-bounds input is clipped."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces


def check_action(action, space: spaces.Box, batch: int | None = None) -> np.ndarray:
    """Validates an action (or a batch of them) and clips it to the space's bounds.

    Args:
        action: Array-like of shape ``space.shape``, or ``(batch, *space.shape)`` when ``batch``
            is given.
        space: The action space.
        batch: Number of sub-environments for a batched action, or None for one action.

    Returns:
        The action as float32, clipped to ``[space.low, space.high]`` (Gymnasium's rule).

    Raises:
        ValueError: The action has the wrong shape, is not numeric, or holds NaN or inf.

    """
    expected = space.shape if batch is None else (batch, *space.shape)
    try:
        arr = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"action must be numeric with shape {expected}, got {action!r}") from e
    if arr.shape != expected:
        raise ValueError(f"action has shape {arr.shape}, expected {expected}")
    if not np.all(np.isfinite(arr)):
        bad = "NaN" if np.isnan(arr).any() else "inf"
        raise ValueError(f"action contains {bad}: {arr.tolist()}")
    return np.clip(arr, space.low, space.high).astype(np.float32)


def check_render_mode(render_mode: str | None, modes: tuple[str, ...] = ("rgb_array",)) -> None:
    """Raises ValueError unless ``render_mode`` is None or one of ``modes``."""
    if render_mode is not None and render_mode not in modes:
        raise ValueError(f"render_mode must be None or one of {modes}, got {render_mode!r}")
