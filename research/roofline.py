"""The memory floor of an imagined step: cached keys and values read per step vs bandwidth.

    python research/roofline.py --checkpoint checkpoints/WM-Pick-v0 --sim-steps-per-s 30

Every pass of the dynamics transformer reads each layer's cached keys and values for all the
positions it attends to. On a CPU these passes are bound by memory bandwidth, not arithmetic,
so ``bytes read per step / read bandwidth`` is a floor under the transformer's share of an
imagined step that no kernel tuning removes; only fewer passes or a smaller cache do.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

#: Cache precisions by name.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def kv_positions_per_step(cfg: Any, decoding: str = "autoregressive") -> int:
    """Cached positions all passes of one imagined step read.

    Every pass attends to the cache's whole ring (``max_seq_len`` positions: context plus a
    full window, masked where a row holds nothing yet); a step appends its block by ``n + 1``
    single-token passes (``autoregressive``) or by the slot's pass and one pass of the ``n``
    frame tokens (``parallel``).
    """
    if decoding == "autoregressive":
        passes = cfg.n_frame_tokens + 1
    elif decoding == "parallel":
        passes = 2
    else:
        raise ValueError(f"unknown decoding {decoding!r} (expected 'autoregressive' or "
                         f"'parallel')")
    return passes * cfg.max_seq_len


def kv_bytes_per_step(cfg: Any, decoding: str = "autoregressive",
                      bytes_per_value: int = 4) -> int:
    """Bytes of cached keys and values one imagined step reads, over all layers and passes."""
    # K and V of every layer: kv_heads heads of head_dim channels (grouped-query attention
    # shares one key/value head between several query heads)
    per_position = cfg.n_layer * 2 * cfg.kv_heads * cfg.head_dim * bytes_per_value
    return kv_positions_per_step(cfg, decoding) * per_position


def read_bandwidth_gb_s(megabytes: int = 768, repeats: int = 5) -> float:
    """Best streaming read rate of a float32 buffer larger than the caches, GB/s (1e9 B/s).

    Uses torch's current intra-op threads, as the world model does.
    """
    x = torch.ones(megabytes * 2**20 // 4)
    x.sum()  # first touch
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best / 1e9


def memory_floor(cfg: Any, decoding: str, sim_steps_per_s: float,
                 bandwidth_gb_s: float, kv_cache: str = "float32") -> dict[str, float | str]:
    """The cache traffic of one imagined step and the speed it caps imagination at.

    Args:
        cfg: The checkpoint's dynamics config.
        decoding: ``autoregressive`` or ``parallel``.
        sim_steps_per_s: The real twin's steps/s in the same run.
        bandwidth_gb_s: Measured read bandwidth (:func:`read_bandwidth_gb_s`).
        kv_cache: The cache's precision, ``float32`` or ``bfloat16``.

    Returns:
        ``decoding``, ``kv_cache``, ``kv_bytes_per_step``, ``kv_mb_per_step``, ``read_gb_s``,
        ``floor_ms_per_step`` (the reads alone), ``max_steps_per_s`` and ``max_vs_sim``
        (imagination could not beat these with this cache, whatever the rest of the step
        costs).
    """
    nbytes = kv_bytes_per_step(cfg, decoding, DTYPES[kv_cache].itemsize)
    floor_s = nbytes / (bandwidth_gb_s * 1e9)
    return {
        "decoding": decoding,
        "kv_cache": kv_cache,
        "kv_bytes_per_step": nbytes,
        "kv_mb_per_step": round(nbytes / 1e6, 1),
        "read_gb_s": round(bandwidth_gb_s, 1),
        "floor_ms_per_step": round(floor_s * 1e3, 2),
        "max_steps_per_s": round(1 / floor_s, 1),
        "max_vs_sim": round(1 / floor_s / sim_steps_per_s, 1),
    }


def attention_kernels(cfg: Any, batch: int, kv_caches: tuple[str, ...],
                      bandwidth_gb_s: float, repeats: int = 10) -> list[dict[str, float | str]]:
    """One layer's single-token attention over a full window, three ways, per cache precision.

    ``ring``: :func:`~wmgym.model.kv_cache.cached_attention` over the ring as the model holds
    it, keys channel-major (:class:`~wmgym.model.kv_cache.KVCache`). ``ring_row_major``: the
    same over keys stored position-major. ``fused_strided``: PyTorch's
    ``scaled_dot_product_attention`` over the same positions as a slice of a longer buffer.
    Best of
    ``repeats`` calls each, random data, ``batch`` rows; ``floor_ms`` is the call's key and
    value bytes at ``bandwidth_gb_s``.
    """
    import torch.nn.functional as F

    from wmgym.model.kv_cache import cached_attention

    n_head, hd, n = cfg.n_head, cfg.d_model // cfg.n_head, cfg.max_seq_len
    gen = torch.Generator().manual_seed(0)

    def best_ms(fn, *inputs: torch.Tensor) -> float:
        fn(*inputs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(*inputs)
            times.append(time.perf_counter() - start)
        return round(min(times) * 1e3, 2)

    rows = []
    for kv in kv_caches:
        dtype = DTYPES[kv]
        q = torch.randn(batch, n_head, 1, hd, generator=gen)
        k, v = (torch.randn(batch, n_head, n, hd, generator=gen).to(dtype) for _ in range(2))
        k_cm = k.transpose(-1, -2).contiguous().transpose(-1, -2)  # channel-major, same values
        longer = torch.zeros(2, batch, n_head, n + n // 2, hd, dtype=dtype)
        longer[:, :, :, :n] = torch.stack([k, v])
        ks, vs = longer[0, :, :, :n], longer[1, :, :, :n]  # strided views, as the old layout
        nbytes = 2 * k.numel() * k.element_size()
        rows.append({
            "kv_cache": kv,
            "batch": batch,
            "positions": n,
            "ring_ms": best_ms(cached_attention, q, k_cm, v, None),
            "ring_row_major_ms": best_ms(cached_attention, q, k, v, None),
            "fused_strided_ms": best_ms(F.scaled_dot_product_attention, q.to(dtype), ks, vs),
            "floor_ms": round(nbytes / (bandwidth_gb_s * 1e9) * 1e3, 2),
        })
    return rows


if __name__ == "__main__":
    from wmgym.model.world_model import WorldModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--sim-steps-per-s", type=float, required=True,
                        help="the real twin's steps/s on this machine (wmgym bench sim)")
    parser.add_argument("--batch", type=int, default=256)
    cli = parser.parse_args()
    config = WorldModel.load(cli.checkpoint).dynamics.cfg
    bandwidth = read_bandwidth_gb_s()
    print(json.dumps({
        "memory_floor": [memory_floor(config, "autoregressive", cli.sim_steps_per_s, bandwidth, kv)
                         for kv in DTYPES],
        "attention_kernels": attention_kernels(config, cli.batch, tuple(DTYPES), bandwidth),
    }, indent=1))
