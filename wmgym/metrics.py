"""Do two simulators rank policies alike? Correlations and SIMPLER's MMRV over per-policy scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of two equally long lists; NaN when either is constant."""
    x, y = _pair(x, y)
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt((dx**2).sum() * (dy**2).sum())
    return float((dx * dy).sum() / denom) if denom > 0 else float("nan")


def ranks(x: Sequence[float]) -> np.ndarray:
    """1-based ranks of ``x``, ties sharing their average rank (as ``scipy.stats.rankdata``)."""
    _, inverse, counts = np.unique(np.asarray(x, float), return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts + 1
    return (first + (counts - 1) / 2)[inverse]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson of the tie-averaged ranks); NaN when constant."""
    x, y = _pair(x, y)
    return pearson(ranks(x), ranks(y))


def mmrv(real: Sequence[float], imagined: Sequence[float], strict: bool = True) -> float:
    """SIMPLER's mean maximum rank violation of imagined vs real policy performance.

    ``MMRV = 1/N sum_i max_j |R_i - R_j| * 1[order_R(i, j) != order_S(i, j)]`` (Li et al.,
    "Evaluating Real-World Robot Manipulation Policies in Simulation", 2024): for each policy,
    the largest real-performance margin by which the imagined twin ranks it on the wrong side
    of another policy; 0 when the twins order every pair alike. Lower is better.

    Args:
        real: Real performance ``R`` per policy (e.g. success rates).
        imagined: Imagined performance ``S`` per policy, same order.
        strict: Compare orders as SIMPLER's reference code does, ``(S_i > S_j) != (R_i > R_j)``:
            a tie in one twin against a strict order in the other counts once per pair. False
            compares signs, ``sign(S_i - S_j) != sign(R_i - R_j)``: such a pair counts for both.

    Returns:
        The MMRV, in the units of ``real``.
    """
    r, s = _pair(real, imagined)
    margin = np.abs(r[:, None] - r[None, :])
    if strict:
        disagree = (s[:, None] > s[None, :]) != (r[:, None] > r[None, :])
    else:
        disagree = np.sign(s[:, None] - s[None, :]) != np.sign(r[:, None] - r[None, :])
    return float(np.max(margin * disagree, axis=1).mean())


def agreement(real: Sequence[float], imagined: Sequence[float]) -> dict[str, float | None]:
    """Pearson, Spearman, MMRV and mean absolute gap of per-policy performance (NaN -> None)."""
    r, s = _pair(real, imagined)
    out = {
        "pearson": pearson(r, s),
        "spearman": spearman(r, s),
        "mmrv": mmrv(r, s),
        "mean_abs_gap": float(np.abs(r - s).mean()),
    }
    return {k: None if np.isnan(v) else round(v, 4) for k, v in out.items()}


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for ``positive`` (ties count one half).

    The probability that a positive scores higher than a negative (Mann-Whitney U); None when
    either class is empty.

    >>> auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
    0.75
    """
    s, y = np.asarray(scores, np.float64), np.asarray(positive, bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"need two equally long lists, got {s.shape}, {y.shape}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    u = ranks(s)[y].sum() - n_pos * (n_pos + 1) / 2
    return round(float(u / (n_pos * n_neg)), 4)


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need two equally long lists of >= 2 values, got {x.shape}, {y.shape}")
    return x, y
