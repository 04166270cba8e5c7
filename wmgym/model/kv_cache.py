"""Rotary embeddings and the key/value cache of the dynamics transformer.

Layout of one row of the cache (all rows share the physical positions they are written at)::

    ... stale ... [context (Nc)] [slot + frame] [slot + frame] ... | free ... capacity
                  ^ start[b]                                      ^ end

Every row's live content is contiguous and ends at the common ``end``, so a pass writes all
rows' new keys at the same positions (plain slices) and one RoPE table serves the whole batch.
Keys are stored rotated at ``physical position + offset``. Attention only sees differences of
positions, so a row can be moved without touching its frames' keys:

* when a row's window of frames is full, its oldest frame is dropped by moving its *context*
  one frame forward (``start += frame``) and writing the context's keys there, rotated afresh
  from a copy kept unrotated (``ctx_k``): ``Nc`` positions per dropped frame instead of
  rewriting the whole window;
* when ``end`` reaches the capacity, every row's content moves to the front in one copy
  (``compact``) and ``offset`` grows by the distance moved, so no key is rotated again. With
  ``spare`` free frames of capacity that happens once every ``spare`` frames.

A restarted row's context goes right before ``end``; rows that started at different times then
have different ``start`` and attention masks what lies before each row's start.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_inv_freq(head_dim: int, theta: float) -> Tensor:
    """The ``head_dim // 2`` rotary frequencies, float64."""
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """``cos, sin`` of shape ``(seq_len, head_dim // 2)`` for positions ``0 .. seq_len - 1``."""
    return rope_at(torch.arange(seq_len), rope_inv_freq(head_dim, theta))


def rope_at(positions: Tensor, inv_freq: Tensor, dtype: torch.dtype = torch.float32
            ) -> tuple[Tensor, Tensor]:
    """``cos, sin`` of shape ``(*positions.shape, head_dim // 2)`` at any integer positions.

    The angles are computed in float64, so positions far beyond the training length (a long
    rollout's) rotate as accurately as small ones.
    """
    angles = positions.to(torch.float64).unsqueeze(-1) * inv_freq.to(positions.device)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor | None = None) -> Tensor:
    """Rotate ``x (..., L, head_dim)`` by position; ``cos, sin`` are ``(L, head_dim // 2)``.

    With ``out`` (same shape and dtype as ``x``, may be a strided view) the result is written in
    place.
    """
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    if out is None:
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    torch.mul(x1, cos, out=out[..., :h]).addcmul_(x2, sin, value=-1)
    torch.mul(x2, cos, out=out[..., h:]).addcmul_(x1, sin)
    return out


class KVCache:
    """Preallocated rotated keys and values of every layer for a batch of rollouts.

    ``k, v`` are ``(n_layer, B, n_head, capacity, head_dim)`` in ``kv_dtype`` (default: the
    model's ``dtype``; bfloat16 halves what every pass reads). Row ``b`` holds positions
    ``[start[b], end)``: its context, then ``n_frames[b]`` (slot + frame) blocks. ``ctx_k`` and
    ``ctx_v`` keep each row's context keys (unrotated, ``dtype``) and values for moving it.

    With ``memory_len`` (models with a parallel head), ``memory (B, memory_len, d)`` holds the
    final hidden states the head reads: the context's, then the latest frame's tokens' (valid
    where ``has_prev``). With ``state_dim``, ``state (B, state_dim)`` holds each rollout's latest
    state, normalised, and ``delta`` its last change (valid where ``has_state``);
    ``last_hidden (B, d)`` and ``last_absolute (B, state_dim)`` keep the latest frame's final
    hidden state and the plain state head's (normalised) reading of it.

    Args:
        n_layer: Transformer blocks.
        batch_size: Rollouts.
        n_head: Attention heads.
        max_len: The longest a row's content gets: context plus a full window of blocks.
        head_dim: Channels per head.
        device: Where the buffers live.
        dtype: The model's dtype (``ctx_k``, ``memory``).
        n_ctx: Context tokens per row.
        block: Positions per (slot + frame) block.
        spare: Free blocks of capacity beyond ``max_len``: a compaction every ``spare`` frames.
        memory_len: See above (0: none).
        state_dim: See above (0: none).
        kv_dtype: dtype of ``k`` and ``v`` (``None``: ``dtype``).
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device | str, dtype: torch.dtype, n_ctx: int, block: int,
                 spare: int = 8, memory_len: int = 0, state_dim: int = 0,
                 kv_dtype: torch.dtype | None = None) -> None:
        if not 0 < n_ctx <= max_len or block < 1 or spare < 1:
            raise ValueError(f"bad cache layout: n_ctx={n_ctx}, block={block}, spare={spare}, "
                             f"max_len={max_len}")
        self.capacity = max_len + spare * block
        shape = (n_layer, batch_size, n_head, self.capacity, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=kv_dtype or dtype)
        self.v = torch.zeros_like(self.k)
        self.ctx_k = torch.zeros(n_layer, batch_size, n_head, n_ctx, head_dim, device=device,
                                 dtype=dtype)
        self.ctx_v = torch.zeros_like(self.ctx_k, dtype=self.k.dtype)
        self.capturing = False  # a prefill in progress: keep the context's keys unrotated
        self.batch_size, self.max_len, self.n_ctx, self.block = batch_size, max_len, n_ctx, block
        self.start = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.n_frames = torch.zeros_like(self.start)
        self.rows = torch.arange(batch_size, device=device)
        self.positions = torch.arange(self.capacity, device=device)
        self.end = 0  # where the next tokens go, common to all rows (host int)
        self.offset = 0  # RoPE position of physical position p is p + offset (host int)
        self.start_min = 0  # min(start), on the host: where attention starts reading
        self.uniform = True  # all rows start at start_min: attention needs no mask
        self.noise: Tensor | None = None  # per-frame sampling noise buffer, made on first use
        self.memory = (torch.zeros(batch_size, memory_len, n_head * head_dim, device=device,
                                   dtype=dtype) if memory_len else None)
        self.has_prev = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.state = torch.zeros(batch_size, state_dim, device=device)
        self.delta = torch.zeros_like(self.state)
        self.has_state = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.last_hidden: Tensor | None = None
        self.last_absolute: Tensor | None = None

    @property
    def lengths(self) -> Tensor:
        """Positions each row holds, ``(B,)``: its context plus its frames' blocks."""
        return self.end - self.start

    def sync(self) -> None:
        """Refresh the host-side ``start_min`` and ``uniform`` from ``start``."""
        self.start_min = int(self.start.min())
        self.uniform = bool((self.start == self.start_min).all())

    def clear(self) -> None:
        """Empty every row (a full prefill follows)."""
        self.start.zero_()
        self.n_frames.zero_()
        self.end = self.offset = self.start_min = 0
        self.uniform = True

    def append(self, layer: int, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor
               ) -> tuple[Tensor, Tensor]:
        """Store a pass's ``t`` new keys (rotated here) and values ``(B, H, t, hd)`` at ``end``.

        Returns the layer's keys and values from ``start_min`` to the new tokens included.
        """
        t = k.shape[2]
        new = slice(self.end, self.end + t)
        if self.capturing:
            self.ctx_k[layer, :, :, new] = k
            self.ctx_v[layer, :, :, new] = v
        if self.k.dtype == k.dtype:
            apply_rope(k, cos, sin, out=self.k[layer, :, :, new])
        else:  # rotate in the model's precision, round once
            self.k[layer, :, :, new] = apply_rope(k, cos, sin)
        self.v[layer, :, :, new] = v
        span = slice(self.start_min, self.end + t)
        return self.k[layer, :, :, span], self.v[layer, :, :, span]

    def attn_mask(self, t: int) -> Tensor | None:
        """What a pass of ``t`` new tokens per row may see of ``[start_min, end + t)``.

        ``None`` when it sees everything (one token, all rows aligned) or when the pass is a
        plain causal one (nothing cached yet); else ``(t, L)``, or ``(B, 1, t, L)`` when rows
        start at different positions.
        """
        if self.uniform and (t == 1 or self.end == self.start_min):
            return None
        keys = self.positions[self.start_min : self.end + t]
        mask = keys <= self.end + self.positions[:t, None]  # (t, L): causal among the new ones
        if self.uniform:
            return mask
        return (mask & (keys >= self.start[:, None, None]))[:, None]

    def compact(self) -> None:
        """Move every row's content to the front of the buffers; positions keep their RoPE."""
        lo, n = self.start_min, self.end - self.start_min
        if lo == 0:
            raise RuntimeError("KV cache full: no row has dropped a frame to make room")
        for buf in (self.k, self.v):  # front to back in chunks that never overlap their source
            for s in range(0, n, lo):
                e = min(s + lo, n)
                buf[:, :, :, s:e].copy_(buf[:, :, :, lo + s : lo + e])
        self.start -= lo
        self.end, self.offset, self.start_min = n, self.offset + lo, 0

    def place_context(self, rows: Tensor | None, inv_freq: Tensor) -> None:
        """Write the context of ``rows`` (all if ``None``) at ``[start, start + n_ctx)``.

        Its keys are rotated from ``ctx_k`` at those positions (plus ``offset``).
        """
        nc = self.n_ctx
        if rows is None and self.uniform:
            s = self.start_min
            cos, sin = rope_at(self.positions[s : s + nc] + self.offset, inv_freq,
                               self.ctx_k.dtype)
            if self.k.dtype == self.ctx_k.dtype:
                apply_rope(self.ctx_k, cos, sin, out=self.k[:, :, :, s : s + nc])
            else:
                self.k[:, :, :, s : s + nc] = apply_rope(self.ctx_k, cos, sin)
            self.v[:, :, :, s : s + nc] = self.ctx_v
            return
        rows = self.rows if rows is None else rows
        pos = self.start[rows, None] + self.positions[:nc]  # (r, nc)
        cos, sin = rope_at(pos + self.offset, inv_freq, self.ctx_k.dtype)
        rot = apply_rope(self.ctx_k[:, rows], cos[:, None], sin[:, None])  # (layer, r, H, nc, hd)
        index = (slice(None), rows[:, None], slice(None), pos)  # -> (r, nc, layer, H, hd)
        self.k[index] = rot.permute(1, 3, 0, 2, 4).to(self.k.dtype)
        self.v[index] = self.ctx_v[:, rows].permute(1, 3, 0, 2, 4)
